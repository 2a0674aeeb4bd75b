"""The database engine and the one transaction helper every store runs in.

Database failures raise :class:`StorageError`; a clash with a stored row (a version, a name),
including one lost to a concurrent writer, raises the store's own subclass of it on every engine.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DisconnectionError, IntegrityError, SQLAlchemyError

from tufnotary.server.storage.models import MYSQL

_SQLITE_READ = "tufnotary_sqlite_read"  # execution option: SQLite read, needs no write lock
_RETURNED = "tufnotary_returned"  # connection record info: when it was last returned to the pool
_RAW_DIALECTS = ("sqlite", "postgresql")  # read_rows runs raw statements on these
PING_AFTER_IDLE = 5.0  # seconds a pooled connection may sit idle before it is pinged on checkout


class StorageError(Exception):
    """A database failure; the message is safe to log."""


def make_engine(url: str) -> Engine:
    """Create an engine: psycopg 3 for PostgreSQL, PyMySQL (utf8mb4) for MySQL/MariaDB, and
    SQLite in WAL mode whose write transactions take the write lock at BEGIN."""
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername in MYSQL:
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    if parsed.get_backend_name() in MYSQL and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    engine = sa.create_engine(parsed)
    sa.event.listen(engine, "checkout", functools.partial(_ping_if_idle, engine.dialect))
    sa.event.listen(engine, "checkin", _note_return)
    if engine.dialect.name == "sqlite":
        _create_private(parsed.database)
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _create_private(database: str | None) -> None:
    """Create a missing SQLite file with mode 0600: it holds password hashes and encrypted keys,
    and SQLite gives its WAL and shared-memory files the database file's mode.

    An existing file is never opened: closing a descriptor of it would drop the POSIX locks
    SQLite holds on it through another engine of this process (then "disk I/O error").
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    with suppress(OSError):  # exists already; a missing directory is reported on connect
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _ping_if_idle(dialect: Dialect, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pre-ping a pooled connection only if it sat idle for PING_AFTER_IDLE seconds: a ping per
    checkout would double the round trips of every short read. A dead connection is replaced;
    after a database restart, a connection used just before it fails one request, and the
    pool then reconnects all of them."""
    if time.monotonic() - record.info.get(_RETURNED, 0.0) < PING_AFTER_IDLE:
        return
    try:
        dialect.do_ping(dbapi_connection)
    except Exception as error:
        if dialect.is_disconnect(error, dbapi_connection, None):
            raise DisconnectionError(str(error)) from error  # the pool connects anew
        raise


def _note_return(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED] = time.monotonic()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's begin event issues BEGIN itself
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "foreign_keys = ON"):
        dbapi_connection.execute(f"PRAGMA {pragma}")


def _sqlite_begin(connection: Connection) -> None:
    # Readers run single statements in autocommit mode; writers lock at BEGIN so that two
    # writers never deadlock upgrading a read lock ("database is locked").
    if not connection.get_execution_options().get(_SQLITE_READ):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _is_unique_violation(orig: BaseException | None) -> bool:
    """Whether the DB-API error ``orig`` is a unique-index violation."""
    return (
        getattr(orig, "sqlstate", None) == "23505"  # PostgreSQL
        or getattr(orig, "sqlite_errorname", None)
        in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")
        or (orig is not None and bool(orig.args) and orig.args[0] in (1022, 1062))  # MySQL
    )


def describe_error(action: str, error: Exception) -> str:
    """A one-line message for a SQLAlchemy error or the DB-API error under it."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{action} failed: {type(cause).__name__}: {lines[0][:200] if lines else ''}"


class Database:
    """An engine and the transaction helper the stores share."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Reads run in autocommit on PostgreSQL: under READ COMMITTED each statement sees its
        # own snapshot anyway, and this saves the BEGIN and ROLLBACK round trips.
        self._autocommit = engine.dialect.name == "postgresql"
        autocommit = {"isolation_level": "AUTOCOMMIT"} if self._autocommit else {}
        self._read_options: dict[str, Any] = {_SQLITE_READ: True, **autocommit}
        self._committed: list[Callable[[], None]] = []
        self._raw = engine.dialect.name in _RAW_DIALECTS
        self._compiled: dict[Any, RawStatement] = {}

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every write transaction of this process has committed."""
        self._committed.append(callback)

    def read_rows(
        self, action: str, statement: sa.Select[Any] | sa.CompoundSelect, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of a read-only ``statement``, which the caller builds once and reuses.

        On SQLite and PostgreSQL it is compiled once and runs on a pooled DB-API connection
        (in autocommit), without SQLAlchemy's per-statement work; the columns' result
        processors still convert the values. Elsewhere it runs as :meth:`transaction` runs it.
        """
        if not self._raw:
            with self.transaction(action) as connection:
                return [tuple(row) for row in connection.execute(statement, params)]
        return self._run(action, statement, params)

    def write_rows(
        self,
        action: str,
        statement: sa.Select[Any] | sa.CompoundSelect,
        params: dict[str, Any],
        clash: type[StorageError],
    ) -> list[tuple[Any, ...]]:
        """The rows of ``statement``, which writes (data-modifying CTEs) and is atomic by itself;
        the caller builds it once and reuses it. Errors and commit callbacks as in
        :meth:`transaction` with ``write`` and ``clash``.

        On PostgreSQL it runs as :meth:`read_rows` runs reads, its parameters bound through
        their types (one round trip: no BEGIN or COMMIT; the commit is as durable); elsewhere
        in a transaction.
        """
        if not self._autocommit:
            with self.transaction(action, write=True, clash=clash) as connection:
                return [tuple(row) for row in connection.execute(statement, params)]
        rows = self._run(action, statement, params, clash)
        self._after_commit()
        return rows

    def _run(
        self,
        action: str,
        statement: sa.Select[Any] | sa.CompoundSelect,
        params: dict[str, Any],
        clash: type[StorageError] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run ``statement`` (compiled once) on a pooled DB-API connection, in autocommit on
        PostgreSQL; a connection that failed otherwise than by a clash is not reused."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            raw = RawStatement(self.engine.dialect, statement, typed=clash is not None)
            compiled = self._compiled.setdefault(statement, raw)
        try:
            pooled = self.engine.raw_connection()
        except SQLAlchemyError as error:
            raise StorageError(describe_error(action, error)) from error
        connection = pooled.dbapi_connection
        try:
            if self._autocommit:  # else the pool's reset would cost a ROLLBACK round trip
                connection.autocommit = True
            rows = compiled.rows(connection, params)
            if self._autocommit:
                connection.autocommit = False
            return rows
        except Exception as error:  # the DB-API's own errors
            if clash is not None and _is_unique_violation(error):
                connection.autocommit = False  # the statement failed alone: no transaction left
                raise _clashed(action, clash) from error
            pooled.invalidate()  # broken, or in a state unknown: closed, not reused
            raise StorageError(describe_error(action, error)) from error
        finally:
            pooled.close()

    def _after_commit(self) -> None:
        for callback in self._committed:
            callback()

    @contextmanager
    def transaction(
        self, action: str, *, write: bool = False, clash: type[StorageError] | None = None
    ) -> Iterator[Connection]:
        """One transaction; SQLAlchemy errors become StorageError, and unique violations
        become ``clash`` if given."""
        try:
            if write:
                with self.engine.begin() as connection:
                    yield connection
            else:
                with self.engine.connect() as connection:
                    yield connection.execution_options(**self._read_options)
            if write:
                self._after_commit()
        except IntegrityError as error:
            if clash is not None and _is_unique_violation(error.orig):
                raise _clashed(action, clash) from error
            raise StorageError(describe_error(action, error)) from error
        except SQLAlchemyError as error:
            raise StorageError(describe_error(action, error)) from error

    @contextmanager
    def snapshot(self, action: str) -> Iterator[Connection]:
        """A read-only transaction whose reads all see the database as of its first read
        (REPEATABLE READ; a deferred BEGIN on SQLite), without blocking writers."""
        try:
            with self.engine.connect() as connection:
                if self.engine.dialect.name == "sqlite":
                    connection = connection.execution_options(**{_SQLITE_READ: True})
                    connection.exec_driver_sql("BEGIN")
                else:
                    connection = connection.execution_options(isolation_level="REPEATABLE READ")
                yield connection
        except SQLAlchemyError as error:
            raise StorageError(describe_error(action, error)) from error


def _clashed(action: str, clash: type[StorageError]) -> StorageError:
    return clash(f"{action}: a concurrent writer stored it first")


class RawStatement:
    """A statement compiled once for one dialect (SQLite or PostgreSQL), run on a DB-API
    connection: its SQL, how to pass its parameters, and the result processor of each column.

    ``typed``: the parameters go through their types' bind processors (a timestamp needs
    one); otherwise they are passed as given, as reads bind only strings and numbers.
    """

    def __init__(
        self, dialect: Dialect, statement: sa.Select[Any] | sa.CompoundSelect, typed: bool = False
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        self._sql = compiled.string
        self._order = compiled.positiontup if dialect.positional else None
        binds = (
            (name, bind.type.dialect_impl(dialect).bind_processor(dialect))
            for name, bind in (compiled.binds.items() if typed else ())
        )
        self._binds = [(name, process) for name, process in binds if process is not None]
        self._defaults = dict(compiled.params)  # the values bound in the statement
        for name, process in self._binds:
            if self._defaults.get(name) is not None:
                self._defaults[name] = process(self._defaults[name])
        processors = (
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        )
        self._processors = [(i, p) for i, p in enumerate(processors) if p is not None]

    def rows(self, connection: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run on ``connection`` (its transaction state as the caller set it); the rows."""
        values = {**self._defaults, **params}
        for name, process in self._binds:
            if name in params:
                values[name] = process(params[name])
        bound = values if self._order is None else [values[name] for name in self._order]
        cursor = connection.execute(self._sql, bound)
        found = cursor.fetchall()
        cursor.close()
        if not self._processors:
            return found
        rows = []
        for row in found:
            converted = list(row)
            for index, process in self._processors:
                converted[index] = process(converted[index])
            rows.append(tuple(converted))
        return rows


class Store:
    """Base of the stores: each keeps one kind of data on the shared :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self._db = database
