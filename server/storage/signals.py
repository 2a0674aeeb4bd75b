"""The change signal of a GUN, read cheaply on every cached read (server/fastpath.py).

The signal is what :meth:`MetadataStore.signal` returns: (row id, sha256) of the GUN's newest
timestamp, which changes with every write that changes what the GUN serves. This reader asks
the same question on one dedicated DB-API connection per process, without SQLAlchemy's
per-call machinery, and remembers the answers while it can tell that they still hold:

* SQLite: ``PRAGMA data_version`` first. It changes when any other connection, in this process
  or another, commits; while it has not, nothing was written and the signals read since the
  last change are still exact, so no query runs. A change forgets them all.
* PostgreSQL, with ``staleness`` > 0: the connection LISTENs for the GUNs that writes change
  (server/storage/listener.py), and each notification forgets its GUN. Remembered signals are
  answered with no query while the connection has answered a statement within ``staleness``
  seconds; otherwise the indexed query runs (in autocommit; psycopg prepares it after a few
  runs) and restarts that window. A write through any other connection is thus seen within
  ``staleness`` seconds, and through this process's own pool by the next read (a commit
  forgets every signal). Without migration 0008's triggers, or with ``staleness`` 0, every
  read queries, and another server's commit is seen by the next read.
* Anything else (MySQL/MariaDB, an in-memory SQLite database): the store's own query.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from contextlib import suppress
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from tufnotary.server.storage.engine import Database, RawStatement, StorageError
from tufnotary.server.storage.listener import Forget, Listener
from tufnotary.server.storage.metadata import SIGNAL, MetadataStore

Signal = tuple[int, str] | None

KNOWN_LIMIT = 65536
"""Signals remembered at most; more forget them all (a query each)."""
LISTEN_RETRY = 60.0
"""Seconds until LISTEN is tried again on PostgreSQL when the triggers were missing."""
DRAIN_INTERVAL = 5.0
"""Seconds between reads of the notifications of a listener that no request reads: PostgreSQL
keeps every notification until each listener has taken it, and a full queue refuses writes."""


class Watch(Protocol):
    """Tells, on one connection, whether remembered signals still hold."""

    def current(self) -> bool:
        """Forget what changed; whether the rest may be answered now."""
        ...

    def mark(self) -> Any:
        """Note the state before a query."""
        ...

    def settled(self, mark: Any) -> bool:
        """Whether the answer of the query begun at ``mark`` may be remembered."""
        ...


class DataVersion:
    """SQLite: any other connection's commit changes ``PRAGMA data_version``."""

    def __init__(self, connection: Any, forget: Forget) -> None:
        self._connection, self._forget = connection, forget
        self._version: int | None = None  # the one the remembered signals belong to

    def current(self) -> bool:
        (version,) = self._connection.execute("PRAGMA data_version").fetchone()
        if version != self._version:
            self._forget("")
            self._version = version
        return True

    def mark(self) -> None:
        return None

    def settled(self, mark: None) -> bool:
        return True  # read after data_version: at least as new as the version it is kept under


class ChangeSignals:
    """Reads GUN change signals for one process (thread-safe; one connection, one at a time).

    ``staleness``: seconds a write through another connection may go unseen on PostgreSQL
    (0: none, a query per read).
    """

    def __init__(self, database: Database, store: MetadataStore, staleness: float = 0.0) -> None:
        self._db, self._store = database, store
        dialect = database.engine.dialect.name
        file_backed = database.engine.url.database not in (None, "", ":memory:")
        self._sqlite = dialect == "sqlite"
        self._raw = dialect == "postgresql" or (self._sqlite and file_backed)
        self._staleness = staleness if dialect == "postgresql" else 0.0
        self._query = RawStatement(database.engine.dialect, SIGNAL)
        self._lock = threading.Lock()
        self._connection: Any = None
        self._pid = 0
        self._watch: Watch | None = None
        self._listen_at = 0.0  # time.monotonic() of the next LISTEN attempt
        self._drainer_pid = 0  # the process whose drain thread runs
        self._known: dict[str, Signal] = {}
        if self._staleness:
            database.on_commit(self._committed)

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
        watch = self._watch
        if watch is not None and watch.current() and gun in self._known:
            return self._known[gun]
        mark = None if watch is None else watch.mark()
        rows = self._query.rows(connection, {"gun": gun})
        signal = (rows[0][0], rows[0][1]) if rows else None
        if watch is not None and watch.settled(mark):
            if len(self._known) >= KNOWN_LIMIT:
                self._known.clear()
            self._known[gun] = signal
        return signal

    def _connect(self) -> Any:
        """The dedicated connection, opened by this process (never one inherited by fork), with
        its watch."""
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
            self._known, self._listen_at = {}, 0.0
            self._watch = DataVersion(connection, self._forget) if self._sqlite else None
        if self._watch is None and self._staleness and time.monotonic() >= self._listen_at:
            self._listen_at = time.monotonic() + LISTEN_RETRY
            self._watch = Listener.start(self._connection, self._staleness, self._forget)
            if self._watch is not None and self._drainer_pid != self._pid:
                self._drainer_pid = self._pid
                threading.Thread(
                    target=_drain_while_alive, args=(weakref.ref(self),), daemon=True
                ).start()
        return self._connection

    def drain(self) -> None:
        """Take the notifications that arrived since the last read (see DRAIN_INTERVAL)."""
        with self._lock:
            if isinstance(self._watch, Listener) and self._pid == os.getpid():
                try:
                    self._watch.current()
                except Exception:  # broken: the next read reconnects
                    self._drop()

    def _committed(self) -> None:
        """A write of this process committed: forget every signal at once (the notification,
        which names the GUN, may come later), so that this process reads its own writes."""
        with self._lock:
            if isinstance(self._watch, Listener):
                self._watch.changed("")

    def _forget(self, gun: str) -> None:
        """Forget the remembered signal of ``gun`` ('': of every GUN)."""
        if gun:
            self._known.pop(gun, None)
        else:
            self._known.clear()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._watch, self._known = None, {}
        if connection is not None and self._pid == os.getpid():
            with suppress(Exception):  # already broken: nothing more to release
                connection.close()


def _drain_while_alive(signals: weakref.ref[ChangeSignals]) -> None:
    """Drain the listener every DRAIN_INTERVAL seconds until its ChangeSignals is gone (a
    greenlet in a gevent worker)."""
    while True:
        time.sleep(DRAIN_INTERVAL)
        reader = signals()
        if reader is None:
            return
        reader.drain()
        del reader
