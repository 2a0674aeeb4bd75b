"""One runner at a time across processes and hosts sharing a database: PostgreSQL advisory
locks, MariaDB/MySQL ``GET_LOCK``, and for SQLite a file lock next to the database file.

Each lock lives in a database session (or an open file) that the holder keeps for as long as
it runs, so a holder that dies releases it with its connection; nobody waits for a lock.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tufnotary.server.storage.engine import StorageError, describe_error
from tufnotary.server.storage.models import MYSQL

_PREFIX = "tufnotary."


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[bool]:
    """Hold the lock ``name`` of this database while the block runs: yields True, or at once
    False when another process or thread holds it (then the block should do nothing)."""
    if engine.dialect.name == "sqlite":
        with _file_lock(engine, name) as held:
            yield held
        return
    try:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(describe_error(f"lock {name}", exc)) from exc
    key = f"{engine.url.database}/{name}"
    held = False
    try:
        held = _lock_call(connection, key, take=True)
        yield held
    finally:
        if held:  # at once: the server notices a closed session only later (MariaDB)
            with suppress(StorageError):  # the session's end below releases it anyway
                _lock_call(connection, key, take=False)
        connection.invalidate()  # ends the session, and with it any lock left
        connection.close()


def _lock_call(connection: Connection, key: str, *, take: bool) -> bool:
    """Take (without waiting) or release the lock ``key`` (database/name: MariaDB's lock names
    are server-wide) in this session; whether it succeeded."""
    digest = hashlib.sha256(key.encode()).digest()
    try:
        if connection.dialect.name in MYSQL:
            call = "GET_LOCK(:name, 0)" if take else "RELEASE_LOCK(:name)"
            params: dict[str, object] = {"name": _PREFIX + digest.hex()[:40]}
        else:
            call = "pg_try_advisory_lock(:name)" if take else "pg_advisory_unlock(:name)"
            params = {"name": int.from_bytes(digest[:8], signed=True)}
        return bool(connection.execute(sa.text(f"SELECT {call}"), params).scalar())
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(describe_error(f"lock {key}", exc)) from exc


@contextmanager
def _file_lock(engine: Engine, name: str) -> Iterator[bool]:
    database = engine.url.database
    if not database or database == ":memory:":
        raise StorageError(f"lock {name}: an in-memory SQLite database has no lock file")
    path = Path(f"{database}.{name}.lock")
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
