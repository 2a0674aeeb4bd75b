"""The change signal of a GUN, read cheaply on every cached read (server/fastpath.py).

The signal is what :meth:`MetadataStore.signal` returns: (row id, sha256) of the GUN's newest
timestamp, which changes with every write that changes what the GUN serves. This reader asks
the same question on one dedicated DB-API connection per process, without SQLAlchemy's
per-call machinery:

* SQLite: ``PRAGMA data_version`` first. It changes when any other connection, in this process
  or another, commits; while it has not, nothing was written and the signals read since the
  last change are still exact, so no query runs. A change forgets them all.
* PostgreSQL: the indexed query itself, in autocommit (psycopg prepares it after a few runs):
  another server's commit is seen by the next read, so one round trip stays.
* Anything else (MySQL/MariaDB, an in-memory SQLite database): the store's own query.
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tufnotary.server.storage.engine import Database, StorageError
from tufnotary.server.storage.metadata import MetadataStore
from tufnotary.server.storage.models import TufFileRow

Signal = tuple[int, str] | None

KNOWN_LIMIT = 65536
"""Signals remembered between two SQLite commits; more forget them all (a query each)."""

_QUERY = (
    f"SELECT id, sha256 FROM {TufFileRow.__tablename__} WHERE gun = {{}} AND role = 'timestamp'"
    " ORDER BY version DESC LIMIT 1"
)
_PARAMETER = {"sqlite": "?", "postgresql": "%s"}


class ChangeSignals:
    """Reads GUN change signals for one process (thread-safe; one connection, one at a time)."""

    def __init__(self, database: Database, store: MetadataStore) -> None:
        self._db, self._store = database, store
        dialect = database.engine.dialect.name
        file_backed = database.engine.url.database not in (None, "", ":memory:")
        self._sqlite = dialect == "sqlite"
        self._raw = dialect == "postgresql" or (self._sqlite and file_backed)
        self._query = _QUERY.format(_PARAMETER.get(dialect, ""))
        self._lock = threading.Lock()
        self._connection: Any = None
        self._pid = 0
        self._version: int | None = None  # SQLite data_version the known signals belong to
        self._known: dict[str, Signal] = {}

    def read(self, gun: str) -> Signal:
        """The GUN's current signal; StorageError if the database cannot be read."""
        if not self._raw:
            return self._store.signal(gun)
        with self._lock:
            try:
                return self._read(gun)
            except Exception as error:  # the DB-API's errors: drop the connection, report
                self._drop()
                if isinstance(error, StorageError):
                    raise
                raise StorageError(f"signal failed: {type(error).__name__}: {error}") from error

    def _read(self, gun: str) -> Signal:
        connection = self._connect()
        if self._sqlite:
            (version,) = connection.execute("PRAGMA data_version").fetchone()
            if version != self._version or len(self._known) >= KNOWN_LIMIT:
                self._known.clear()
                self._version = version
            elif gun in self._known:
                return self._known[gun]
        # Read after data_version: the row is at least as new as the version it is kept under.
        cursor = connection.execute(self._query, (gun,))
        row = cursor.fetchone()
        cursor.close()
        signal = None if row is None else (row[0], row[1])
        if self._sqlite:
            self._known[gun] = signal
        return signal

    def _connect(self) -> Any:
        """The dedicated connection, opened by this process (never one inherited by fork)."""
        if self._connection is None or self._pid != os.getpid():
            try:
                pooled = self._db.engine.raw_connection()  # with the engine's connect settings
            except SQLAlchemyError as error:
                raise StorageError(f"signal failed: {error}") from error
            pooled.detach()  # ours for good: not returned to the pool
            connection = pooled.dbapi_connection
            if not self._sqlite:
                connection.autocommit = True
            self._connection, self._pid = connection, os.getpid()
            self._version, self._known = None, {}
        return self._connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._version, self._known = None, {}
        if connection is not None and self._pid == os.getpid():
            with suppress(Exception):  # already broken: nothing more to release
                connection.close()
