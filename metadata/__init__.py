"""Notary's TUF dialect, shared by the server and the client: no HTTP, no SQL, no files."""
