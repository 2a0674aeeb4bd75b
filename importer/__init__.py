"""Imports from Notary deployments into tufnotary-server's storage."""
