"""Importing trust data from other notary deployments into this server (operator commands).

The one part that may use both the client (to fetch and verify as a client does) and the
server (to store); only the server's command shell, server/cli.py, imports it.
"""
