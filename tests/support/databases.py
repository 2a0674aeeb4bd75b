"""Throwaway databases on the PostgreSQL and MariaDB servers the tests use."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


@contextmanager
def scratch_database(admin: sa.Connection, url: sa.URL) -> Iterator[str]:
    """A new, empty database on the server ``admin`` is connected to (``url`` is that admin
    connection's URL); yields its URL and drops it afterwards."""
    name = f"tufnotary_test_{secrets.token_hex(6)}"
    admin.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
        admin.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
