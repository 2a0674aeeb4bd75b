"""Throwaway databases on the PostgreSQL and MariaDB servers the tests use, and copies of a
migrated database (a migration costs 0.1 s on SQLite and 1-2 s on MariaDB, a copy less)."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager

import sqlalchemy as sa

from tufnotary.server.storage.engine import make_engine


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


def copy_database(template: str, url: str) -> None:
    """Make the empty database ``url`` a copy of ``template`` on the same server: SQLite's
    backup API, or on MariaDB the template's CREATE TABLE statements and rows. (A PostgreSQL
    migration is faster than CREATE DATABASE ... TEMPLATE.)"""
    source, target = sa.make_url(template), sa.make_url(url)
    if source.get_backend_name() == "sqlite":
        with (
            closing(sqlite3.connect(str(source.database))) as reader,
            closing(sqlite3.connect(str(target.database))) as writer,
        ):
            reader.backup(writer)
    else:
        _copy_tables(str(source.database), url)


def _copy_tables(template: str, url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            tables = connection.exec_driver_sql(f"SHOW TABLES FROM `{template}`").scalars().all()
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            for table in tables:
                create = connection.exec_driver_sql(f"SHOW CREATE TABLE `{template}`.`{table}`")
                connection.exec_driver_sql(create.one()[1])
                connection.exec_driver_sql(
                    f"INSERT INTO `{table}` SELECT * FROM `{template}`.`{table}`"
                )
            connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
    finally:
        engine.dispose()
