"""Database schema and the metadata store (spec 1.8, 2.9 and 5.1).

Every method runs in one transaction and returns plain frozen dataclasses. Database failures
raise :class:`StorageError`; a version clash, including one lost to a concurrent writer, raises
:class:`VersionConflict` on every engine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DisconnectionError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

_MYSQL = ("mysql", "mariadb")
_SQLITE_READ = "tufnotary_sqlite_read"  # execution option: SQLite read, needs no write lock
_RETURNED = "tufnotary_returned"  # connection record info: when it was last returned to the pool
PING_AFTER_IDLE = 5.0  # seconds a pooled connection may sit idle before it is pinged on checkout


class ExactString(TypeDecorator[str]):
    """``VARCHAR(length)`` compared byte-exactly (case and trailing spaces count) on every engine.

    MySQL/MariaDB collations are case-insensitive or pad with spaces, so there the text is stored
    as UTF-8 in ``VARBINARY(4 * length)``.
    """

    impl = sa.String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.VARBINARY(4 * self.length))
        return dialect.type_descriptor(sa.String(self.length))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | bytes | None:
        if value is not None and dialect.name in _MYSQL:
            return value.encode("utf-8")
        return value

    def process_result_value(self, value: str | bytes | None, dialect: Dialect) -> str | None:
        return value.decode("utf-8") if isinstance(value, bytes) else value


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamp stored as naive UTC with microseconds, returned timezone-aware."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is the schema the Alembic migrations create."""


class TufFileRow(Base):
    """One stored version of one role's metadata file."""

    __tablename__ = "tuf_files"
    __table_args__ = (
        sa.UniqueConstraint("gun", "role", "version", name="uq_tuf_files_gun_role_version"),
        sa.Index("ix_tuf_files_gun_role_sha256", "gun", "role", "sha256"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    gun: Mapped[str] = mapped_column(ExactString(255))
    role: Mapped[str] = mapped_column(ExactString(255))
    version: Mapped[int]
    sha256: Mapped[str] = mapped_column(ExactString(64))
    data: Mapped[bytes] = mapped_column(_BLOB)


class ChangefeedRow(Base):
    """One changefeed record: a timestamp was stored, or a GUN was deleted."""

    __tablename__ = "changefeed"
    __table_args__ = (sa.Index("idx_changefeed_gun", "gun"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    gun: Mapped[str] = mapped_column(ExactString(255))
    version: Mapped[int]
    # VARCHAR, not CHAR: PostgreSQL would return a deletion's '' padded to 64 spaces.
    sha256: Mapped[str] = mapped_column(sa.String(64), server_default="")
    category: Mapped[str] = mapped_column(sa.String(20))


class ServerKeyRow(Base):
    """A server-managed signing key (timestamp or snapshot) of one GUN."""

    __tablename__ = "server_keys"
    __table_args__ = (sa.Index("ix_server_keys_gun_role", "gun", "role"),)

    key_id: Mapped[str] = mapped_column(ExactString(64), primary_key=True)
    gun: Mapped[str] = mapped_column(ExactString(255))
    role: Mapped[str] = mapped_column(ExactString(255))
    algorithm: Mapped[str] = mapped_column(sa.String(20))
    public: Mapped[bytes] = mapped_column(_BLOB)
    private: Mapped[bytes | None] = mapped_column(_BLOB)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime())
    uri: Mapped[str | None] = mapped_column(sa.String(1024))


class AuditRow(Base):
    """One write made through the API or the command line: who, what, when, from where."""

    __tablename__ = "audit_log"
    __table_args__ = (
        sa.Index("ix_audit_log_gun", "gun"),
        sa.Index("ix_audit_log_actor", "actor"),
        sa.Index("ix_audit_log_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(ExactString(255))
    action: Mapped[str] = mapped_column(sa.String(32))
    gun: Mapped[str | None] = mapped_column(ExactString(255))
    detail: Mapped[str] = mapped_column(sa.Text())
    address: Mapped[str] = mapped_column(sa.String(64))
    request_id: Mapped[str] = mapped_column(sa.String(64))


class RealmUserRow(Base):
    """A user of the built-in token realm (auth_mode ``builtin``) with a bcrypt hash."""

    __tablename__ = "realm_users"

    name: Mapped[str] = mapped_column(ExactString(255), primary_key=True)
    password_hash: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RealmGroupMemberRow(Base):
    """A user's membership of a group of the built-in realm."""

    __tablename__ = "realm_group_members"
    __table_args__ = (sa.Index("ix_realm_group_members_user_name", "user_name"),)

    group_name: Mapped[str] = mapped_column(ExactString(255), primary_key=True)
    user_name: Mapped[str] = mapped_column(ExactString(255), primary_key=True)


class RealmRuleRow(Base):
    """An access rule of the built-in realm: subject, GUN glob pattern, comma-joined actions."""

    __tablename__ = "realm_rules"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(ExactString(255))
    pattern: Mapped[str] = mapped_column(ExactString(255))
    actions: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RateEventRow(Base):
    """One counted event of a rate-limit bucket, counting until ``expires_at``."""

    __tablename__ = "rate_events"
    __table_args__ = (
        sa.Index("ix_rate_events_bucket_expires_at", "bucket", "expires_at"),
        sa.Index("ix_rate_events_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(ExactString(300))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class StoredFile:
    """A stored metadata file."""

    gun: str
    role: str
    version: int
    sha256: str
    data: bytes
    created_at: datetime


@dataclass(frozen=True)
class NewFile:
    """A metadata file to store; its sha256 is computed by the store."""

    role: str
    version: int
    data: bytes


@dataclass(frozen=True)
class Change:
    """A changefeed record; category is ``update`` or ``deletion``."""

    id: int
    created_at: datetime
    gun: str
    version: int
    sha256: str
    category: str


@dataclass(frozen=True)
class StoredKey:
    """A server-managed key; ``private`` is opaque (encrypted by the caller), or None for a
    key in a token or key manager, which ``uri`` names."""

    key_id: str
    gun: str
    role: str
    algorithm: str
    public: bytes
    private: bytes | None
    created_at: datetime
    last_used: datetime | None
    uri: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """A write to record: ``detail`` is JSON-serialisable (roles and versions, key ids...)."""

    actor: str
    action: str
    gun: str | None
    detail: dict[str, Any]
    address: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class AuditRecord:
    """A recorded write."""

    id: int
    created_at: datetime
    actor: str
    action: str
    gun: str | None
    detail: dict[str, Any]
    address: str
    request_id: str


@dataclass(frozen=True)
class RealmUser:
    """A user of the built-in realm (without the password hash) and its groups."""

    name: str
    groups: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class StoredRule:
    """An access rule stored in the database; ``actions`` comma-joined."""

    id: int
    subject: str
    pattern: str
    actions: str
    created_at: datetime


class StorageError(Exception):
    """A database failure; the message is safe to log."""


class VersionConflict(StorageError):
    """A stored version of a role is >= a new one, or two new files share role and version."""


def make_engine(url: str) -> Engine:
    """Create an engine: psycopg 3 for PostgreSQL, PyMySQL (utf8mb4) for MySQL/MariaDB, and
    SQLite in WAL mode whose write transactions take the write lock at BEGIN."""
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername in _MYSQL:
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    if parsed.get_backend_name() in _MYSQL and "charset" not in parsed.query:
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
    and SQLite gives its WAL and shared-memory files the database file's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    with suppress(OSError):  # a missing directory is reported by SQLite on connect
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))


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


def _columns(model: type[Base], record: type) -> list[Any]:
    """The model's columns named like the dataclass fields, in field order."""
    return [getattr(model, field.name) for field in dataclasses.fields(record)]


_FILE_COLUMNS = _columns(TufFileRow, StoredFile)
_CHANGE_COLUMNS = _columns(ChangefeedRow, Change)
_KEY_COLUMNS = _columns(ServerKeyRow, StoredKey)
_AUDIT_COLUMNS = _columns(AuditRow, AuditRecord)
_RULE_COLUMNS = _columns(RealmRuleRow, StoredRule)
_SIGNAL = (
    sa.select(TufFileRow.id, TufFileRow.sha256)
    .where(TufFileRow.gun == sa.bindparam("gun"), TufFileRow.role == "timestamp")
    .order_by(TufFileRow.version.desc())
    .limit(1)
)
_GUN, _ROLE = sa.bindparam("gun"), sa.bindparam("role")
# Built once: composing a statement per call costs more than running it on a warm connection.
_FILES = sa.select(*_FILE_COLUMNS).where(TufFileRow.gun == _GUN, TufFileRow.role == _ROLE)
_LATEST = _FILES.order_by(TufFileRow.version.desc()).limit(1)
_BY_CHECKSUM = _FILES.where(TufFileRow.sha256 == sa.bindparam("sha256")).limit(1)
_BY_VERSION = _FILES.where(TufFileRow.version == sa.bindparam("version")).limit(1)
_INSERT_CHANGE = sa.insert(ChangefeedRow)
_INSERT_AUDIT = sa.insert(AuditRow)


@functools.lru_cache(maxsize=64)
def _latest_of(roles: tuple[str, ...]) -> sa.CompoundSelect:
    """The newest row of each of ``roles`` (bound: ``gun``), one index lookup each."""
    return sa.union_all(
        *(
            sa.select(*_FILE_COLUMNS)
            .where(TufFileRow.gun == _GUN, TufFileRow.role == role)
            .order_by(TufFileRow.version.desc())
            .limit(1)
            .subquery()
            .select()
            for role in roles
        )
    )


@functools.lru_cache(maxsize=256)
def _newer(roles: tuple[str, ...]) -> sa.Select[Any]:
    """A row of ``roles[i]`` at version ``v{i}`` or higher (bound: ``gun``, ``v0``...)."""
    return (
        sa.select(TufFileRow.role, TufFileRow.version)
        .where(
            TufFileRow.gun == _GUN,
            sa.or_(
                *(
                    sa.and_(TufFileRow.role == role, TufFileRow.version >= sa.bindparam(f"v{i}"))
                    for i, role in enumerate(roles)
                )
            ),
        )
        .limit(1)
    )


def _is_unique_violation(error: IntegrityError) -> bool:
    orig = error.orig
    return (
        getattr(orig, "sqlstate", None) == "23505"  # PostgreSQL
        or getattr(orig, "sqlite_errorname", None)
        in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")
        or (orig is not None and bool(orig.args) and orig.args[0] in (1022, 1062))  # MySQL
    )


def _describe(action: str, error: SQLAlchemyError) -> str:
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{action} failed: {type(cause).__name__}: {lines[0][:200] if lines else ''}"


class MetadataStore:
    """TUF metadata, changefeed and server keys in one SQL database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Reads run in autocommit on PostgreSQL: under READ COMMITTED each statement sees its
        # own snapshot anyway, and this saves the BEGIN and ROLLBACK round trips.
        autocommit = (
            {"isolation_level": "AUTOCOMMIT"} if engine.dialect.name == "postgresql" else {}
        )
        self._read_options: dict[str, Any] = {_SQLITE_READ: True, **autocommit}

    @classmethod
    def from_url(cls, url: str) -> MetadataStore:
        """A store on a new engine for ``url`` (see :func:`make_engine`)."""
        return cls(make_engine(url))

    @contextmanager
    def _transaction(
        self, action: str, *, write: bool = False, conflicts: bool = False
    ) -> Iterator[Connection]:
        """One transaction; SQLAlchemy errors become StorageError (unique violations become
        VersionConflict when ``conflicts``)."""
        try:
            if write:
                with self.engine.begin() as connection:
                    yield connection
            else:
                with self.engine.connect() as connection:
                    yield connection.execution_options(**self._read_options)
        except IntegrityError as error:
            if conflicts and _is_unique_violation(error):
                raise VersionConflict(f"{action}: a concurrent writer stored it first") from error
            raise StorageError(_describe(action, error)) from error
        except SQLAlchemyError as error:
            raise StorageError(_describe(action, error)) from error

    def _file(self, action: str, query: sa.Select[Any], **params: Any) -> StoredFile | None:
        with self._transaction(action) as connection:
            row = connection.execute(query, params).first()
        return None if row is None else StoredFile(**row._mapping)

    def latest(self, gun: str, role: str) -> StoredFile | None:
        """The highest stored version of a role."""
        return self._file("latest", _LATEST, gun=gun, role=role)

    def latest_of(self, gun: str, roles: Sequence[str]) -> dict[str, StoredFile]:
        """The highest stored version of each of ``roles`` that has one, in one query."""
        with self._transaction("latest") as connection:
            rows = connection.execute(_latest_of(tuple(roles)), {"gun": gun}).all()
        return {row.role: StoredFile(**row._mapping) for row in rows}

    def by_checksum(self, gun: str, role: str, sha256: str) -> StoredFile | None:
        """The stored version of a role whose bytes have this SHA-256 (lower-case hex)."""
        return self._file("by_checksum", _BY_CHECKSUM, gun=gun, role=role, sha256=sha256)

    def by_version(self, gun: str, role: str, version: int) -> StoredFile | None:
        """One stored version of a role."""
        return self._file("by_version", _BY_VERSION, gun=gun, role=role, version=version)

    def signal(self, gun: str) -> tuple[int, str] | None:
        """(row id, sha256) of the highest stored timestamp of ``gun``, or None: it changes with
        every write that changes what the GUN serves (a publish, a re-sign, a deletion).

        Every such write stores a new timestamp row (or removes them all); the checksum guards
        against a row id reused after a deletion.
        """
        with self._transaction("signal") as connection:
            row = connection.execute(_SIGNAL, {"gun": gun}).first()
        return None if row is None else (row[0], row[1])

    def update_many(
        self, gun: str, files: Sequence[NewFile], audit: AuditEntry | None = None
    ) -> list[Change]:
        """Store all files (and the audit entry) or none (spec 2.9); returns the changefeed
        rows of the timestamps."""
        if len({(file.role, file.version) for file in files}) != len(files):
            raise VersionConflict(f"update of {gun}: two files with the same role and version")
        lowest: dict[str, int] = {}
        for file in files:
            lowest[file.role] = min(file.version, lowest.get(file.role, file.version))
        now = datetime.now(UTC)
        # A fixed insert order makes concurrent batches wait on each other instead of deadlocking.
        rows: list[dict[str, Any]] = [
            {
                "created_at": now,
                "gun": gun,
                "role": file.role,
                "version": file.version,
                "sha256": hashlib.sha256(file.data).hexdigest(),
                "data": file.data,
            }
            for file in sorted(files, key=lambda file: (file.role, file.version))
        ]
        # One round trip each: the version check of every role, then all the rows.
        roles = tuple(sorted(lowest))
        versions = {f"v{i}": lowest[role] for i, role in enumerate(roles)}
        with self._transaction(f"update of {gun}", write=True, conflicts=True) as connection:
            if lowest:
                stored = connection.execute(_newer(roles), {"gun": gun, **versions}).first()
                if stored is not None:
                    raise VersionConflict(
                        f"update of {gun}: {stored.role} version {stored.version} is stored, "
                        f"new is {lowest[stored.role]}"
                    )
                connection.execute(sa.insert(TufFileRow), rows)
            if audit is not None:
                _append_audit(connection, audit, now)
            return [
                _append_change(connection, gun, row["version"], row["sha256"], "update", now)
                for row in rows
                if row["role"] == "timestamp"
            ]

    def delete_gun(self, gun: str, audit: AuditEntry | None = None) -> int:
        """Delete every stored file of exactly this GUN (and record ``audit``); returns the
        number of rows removed."""
        now = datetime.now(UTC)
        with self._transaction(f"delete of {gun}", write=True) as connection:
            removed = connection.execute(
                sa.delete(TufFileRow).where(TufFileRow.gun == gun)
            ).rowcount
            if removed:
                _append_change(connection, gun, 0, "", "deletion", now)
            if audit is not None:
                _append_audit(connection, audit, now)
        return removed

    def record(self, audit: AuditEntry) -> None:
        """Record a write made elsewhere (server keys, users)."""
        with self._transaction(f"audit of {audit.action}", write=True) as connection:
            _append_audit(connection, audit, datetime.now(UTC))

    def audit_log(
        self,
        *,
        gun: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """Recorded writes, oldest first, filtered by GUN, actor and time (``until`` excluded)."""
        query = sa.select(*_AUDIT_COLUMNS).order_by(AuditRow.id.desc()).limit(limit)
        for column, value in ((AuditRow.gun, gun), (AuditRow.actor, actor)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(AuditRow.created_at >= since)
        if until is not None:
            query = query.where(AuditRow.created_at < until)
        with self._transaction("audit log") as connection:
            rows = [row._mapping for row in connection.execute(query)]
        return [AuditRecord(**{**row, "detail": json.loads(row["detail"])}) for row in rows[::-1]]

    def changes(self, gun: str | None, change_id: int, records: int) -> list[Change]:
        """A page of the changefeed, oldest first (spec 1.8)."""
        backwards = change_id < 0 or records < 0
        query = sa.select(*_CHANGE_COLUMNS).limit(abs(records))
        if gun is not None:
            query = query.where(ChangefeedRow.gun == gun)
        if not backwards:
            query = query.where(ChangefeedRow.id > change_id).order_by(ChangefeedRow.id)
        else:
            if change_id > 0:
                query = query.where(ChangefeedRow.id < change_id)
            query = query.order_by(ChangefeedRow.id.desc())
        with self._transaction("changefeed") as connection:
            found = [Change(**row._mapping) for row in connection.execute(query)]
        return found[::-1] if backwards else found

    def add_key(self, key: StoredKey) -> None:
        """Store a new server key."""
        with self._transaction(f"add key {key.key_id}", write=True) as connection:
            connection.execute(sa.insert(ServerKeyRow).values(**dataclasses.asdict(key)))

    def _keys(self, action: str, query: sa.Select[Any]) -> list[StoredKey]:
        with self._transaction(action) as connection:
            return [StoredKey(**row._mapping) for row in connection.execute(query)]

    def get_key(self, key_id: str) -> StoredKey | None:
        """The key with this id."""
        query = sa.select(*_KEY_COLUMNS).where(ServerKeyRow.key_id == key_id)
        found = self._keys("get_key", query)
        return found[0] if found else None

    def keys_for(self, gun: str, role: str) -> list[StoredKey]:
        """All keys of a GUN's role, oldest first."""
        query = (
            sa.select(*_KEY_COLUMNS)
            .where(ServerKeyRow.gun == gun, ServerKeyRow.role == role)
            .order_by(ServerKeyRow.created_at, ServerKeyRow.key_id)
        )
        return self._keys("keys_for", query)

    def unused_key(self, gun: str, role: str, algorithm: str) -> StoredKey | None:
        """The newest key of a GUN's role with this algorithm that was never used."""
        query = (
            sa.select(*_KEY_COLUMNS)
            .where(
                ServerKeyRow.gun == gun,
                ServerKeyRow.role == role,
                ServerKeyRow.algorithm == algorithm,
                ServerKeyRow.last_used.is_(None),
            )
            .order_by(ServerKeyRow.created_at.desc(), ServerKeyRow.key_id.desc())
            .limit(1)
        )
        found = self._keys("unused_key", query)
        return found[0] if found else None

    def mark_key_used(self, key_id: str) -> None:
        """Record the first use of a key (later calls change nothing)."""
        with self._transaction(f"mark key {key_id} used", write=True) as connection:
            connection.execute(
                sa.update(ServerKeyRow)
                .where(ServerKeyRow.key_id == key_id, ServerKeyRow.last_used.is_(None))
                .values(last_used=datetime.now(UTC))
            )

    def delete_key(self, key_id: str, audit: AuditEntry | None = None) -> bool:
        """Remove a key (and record ``audit``); False if there was none."""
        now = datetime.now(UTC)
        with self._transaction(f"delete key {key_id}", write=True) as connection:
            removed = connection.execute(
                sa.delete(ServerKeyRow).where(ServerKeyRow.key_id == key_id)
            ).rowcount
            if removed and audit is not None:
                _append_audit(connection, audit, now)
        return bool(removed)

    def newest_keys(self) -> list[StoredKey]:
        """The newest key of each role (timestamp, snapshot, token-signing...), by role."""
        with self._transaction("newest keys") as connection:
            roles = connection.execute(
                sa.select(ServerKeyRow.role).distinct().order_by(ServerKeyRow.role)
            ).scalars()
            newest = [
                connection.execute(
                    sa.select(*_KEY_COLUMNS)
                    .where(ServerKeyRow.role == role)
                    .order_by(ServerKeyRow.created_at.desc(), ServerKeyRow.key_id.desc())
                    .limit(1)
                ).one()
                for role in list(roles)
            ]
        return [StoredKey(**row._mapping) for row in newest]

    def current_key_ages(self) -> dict[str, datetime]:
        """Per role, when the oldest current key was made: a GUN's current key of a role is
        its newest key that has signed (token-signing keys, of GUN '', are left out)."""
        current = (
            sa.select(ServerKeyRow.role, sa.func.max(ServerKeyRow.created_at).label("created"))
            .where(ServerKeyRow.last_used.is_not(None), ServerKeyRow.gun != "")
            .group_by(ServerKeyRow.gun, ServerKeyRow.role)
            .subquery()
        )
        query = sa.select(current.c.role, sa.func.min(current.c.created)).group_by(current.c.role)
        with self._transaction("key ages") as connection:
            return {role: created for role, created in connection.execute(query)}

    def replace_private_keys(
        self, reencrypt: Callable[[StoredKey], bytes], audit: AuditEntry
    ) -> int:
        """Replace every key's ``private`` by ``reencrypt(key)`` and record ``audit`` (its
        detail gains the count), all in one transaction that keeps other writers from adding
        keys meanwhile; an exception from ``reencrypt`` changes nothing. Returns the count."""
        now = datetime.now(UTC)
        with self._transaction("re-encryption of the keys", write=True) as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("LOCK TABLE server_keys IN EXCLUSIVE MODE")
            query = (
                sa.select(*_KEY_COLUMNS)
                .where(ServerKeyRow.private.is_not(None))  # keys in a token have no private part
                .order_by(ServerKeyRow.key_id)
                .with_for_update()
            )
            keys = [StoredKey(**row._mapping) for row in connection.execute(query)]
            for key in keys:
                connection.execute(
                    sa.update(ServerKeyRow)
                    .where(ServerKeyRow.key_id == key.key_id)
                    .values(private=reencrypt(key))
                )
            detail = {**audit.detail, "keys": len(keys)}
            _append_audit(connection, dataclasses.replace(audit, detail=detail), now)
        return len(keys)

    # -- users, groups and rules of the built-in realm ---------------------------------------

    def add_user(
        self, name: str, password_hash: str, groups: Sequence[str], audit: AuditEntry
    ) -> None:
        """Create a user with its group memberships; VersionConflict if the name is taken."""
        now = datetime.now(UTC)
        with self._transaction(f"add user {name}", write=True, conflicts=True) as connection:
            connection.execute(
                sa.insert(RealmUserRow).values(
                    name=name, password_hash=password_hash, created_at=now
                )
            )
            for group in dict.fromkeys(groups):
                connection.execute(
                    sa.insert(RealmGroupMemberRow).values(group_name=group, user_name=name)
                )
            _append_audit(connection, audit, now)

    def set_password(self, name: str, password_hash: str, audit: AuditEntry) -> bool:
        """Replace a user's hash; False if there is no such user."""
        now = datetime.now(UTC)
        with self._transaction(f"password of {name}", write=True) as connection:
            changed = connection.execute(
                sa.update(RealmUserRow)
                .where(RealmUserRow.name == name)
                .values(password_hash=password_hash)
            ).rowcount
            if changed:
                _append_audit(connection, audit, now)
        return bool(changed)

    def remove_user(self, name: str, audit: AuditEntry) -> bool:
        """Delete a user and its memberships; False if there is no such user."""
        now = datetime.now(UTC)
        with self._transaction(f"remove user {name}", write=True) as connection:
            removed = connection.execute(
                sa.delete(RealmUserRow).where(RealmUserRow.name == name)
            ).rowcount
            connection.execute(
                sa.delete(RealmGroupMemberRow).where(RealmGroupMemberRow.user_name == name)
            )
            if removed:
                _append_audit(connection, audit, now)
        return bool(removed)

    def set_member(self, group: str, user: str, member: bool, audit: AuditEntry) -> bool:
        """Add ``user`` to ``group`` (or, ``member=False``, remove); False if nothing changed."""
        now = datetime.now(UTC)
        row = (RealmGroupMemberRow.group_name == group, RealmGroupMemberRow.user_name == user)
        with self._transaction(f"membership of {user} in {group}", write=True) as connection:
            present = connection.execute(sa.select(RealmGroupMemberRow.user_name).where(*row))
            if (present.first() is not None) == member:
                return False
            if member:
                connection.execute(
                    sa.insert(RealmGroupMemberRow).values(group_name=group, user_name=user)
                )
            else:
                connection.execute(sa.delete(RealmGroupMemberRow).where(*row))
            _append_audit(connection, audit, now)
        return True

    def password_hash(self, name: str) -> str | None:
        """The bcrypt hash of a database user, or None."""
        query = sa.select(RealmUserRow.password_hash).where(RealmUserRow.name == name)
        with self._transaction("password hash") as connection:
            return connection.execute(query).scalar()

    def groups_of(self, name: str) -> list[str]:
        """The groups a user (database or htpasswd) is a member of."""
        query = (
            sa.select(RealmGroupMemberRow.group_name)
            .where(RealmGroupMemberRow.user_name == name)
            .order_by(RealmGroupMemberRow.group_name)
        )
        with self._transaction("groups") as connection:
            return list(connection.execute(query).scalars())

    def realm_users(self) -> list[RealmUser]:
        """Every database user with its groups, by name."""
        with self._transaction("users") as connection:
            users = connection.execute(
                sa.select(RealmUserRow.name, RealmUserRow.created_at).order_by(RealmUserRow.name)
            ).all()
            members = connection.execute(
                sa.select(RealmGroupMemberRow.user_name, RealmGroupMemberRow.group_name)
            ).all()
        groups: dict[str, list[str]] = {}
        for user, group in members:
            groups.setdefault(user, []).append(group)
        return [RealmUser(n, tuple(sorted(groups.get(n, []))), at) for n, at in users]

    def add_rule(self, subject: str, pattern: str, actions: str, audit: AuditEntry) -> int:
        """Store a rule and record ``audit`` (its detail gains the rule id); returns the id."""
        now = datetime.now(UTC)
        with self._transaction("add rule", write=True) as connection:
            result = connection.execute(
                sa.insert(RealmRuleRow).values(
                    subject=subject, pattern=pattern, actions=actions, created_at=now
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            rule_id = int(key[0])
            detail = {**audit.detail, "rule": rule_id}
            _append_audit(connection, dataclasses.replace(audit, detail=detail), now)
        return rule_id

    def remove_rule(self, rule_id: int, audit: AuditEntry) -> StoredRule | None:
        """Delete a rule and record ``audit`` (its detail gains the rule); None if absent."""
        now = datetime.now(UTC)
        with self._transaction(f"remove rule {rule_id}", write=True) as connection:
            row = connection.execute(
                sa.select(*_RULE_COLUMNS).where(RealmRuleRow.id == rule_id)
            ).first()
            if row is None:
                return None
            rule = StoredRule(**row._mapping)
            connection.execute(sa.delete(RealmRuleRow).where(RealmRuleRow.id == rule_id))
            detail = {**audit.detail, "subject": rule.subject, "pattern": rule.pattern}
            detail["actions"] = rule.actions
            _append_audit(connection, dataclasses.replace(audit, detail=detail), now)
        return rule

    def rules(self, subjects: Sequence[str] | None = None) -> list[StoredRule]:
        """Stored rules by id, optionally only those of ``subjects``."""
        query = sa.select(*_RULE_COLUMNS).order_by(RealmRuleRow.id)
        if subjects is not None:
            query = query.where(RealmRuleRow.subject.in_(list(subjects)))
        with self._transaction("rules") as connection:
            return [StoredRule(**row._mapping) for row in connection.execute(query)]

    def rate_events(self, bucket: str, now: datetime, limit: int) -> list[datetime]:
        """When the newest ``limit`` unexpired events of ``bucket`` expire, latest first."""
        query = (
            sa.select(RateEventRow.expires_at)
            .where(RateEventRow.bucket == bucket, RateEventRow.expires_at > now)
            .order_by(RateEventRow.expires_at.desc())
            .limit(limit)
        )
        with self._transaction("rate events") as connection:
            return list(connection.scalars(query))

    def add_rate_events(self, buckets: Sequence[str], now: datetime, expires_at: datetime) -> None:
        """Count one event in each bucket until ``expires_at``; forget every expired event."""
        with self._transaction("add rate events", write=True) as connection:
            connection.execute(sa.delete(RateEventRow).where(RateEventRow.expires_at <= now))
            connection.execute(
                sa.insert(RateEventRow), [{"bucket": b, "expires_at": expires_at} for b in buckets]
            )

    def ping(self) -> None:
        """Raise StorageError unless ``tuf_files`` can be read (health check)."""
        with self._transaction("ping") as connection:
            connection.execute(sa.select(TufFileRow.id).limit(1)).all()


def _append_change(
    connection: Connection, gun: str, version: int, sha256: str, category: str, now: datetime
) -> Change:
    row = dict(created_at=now, gun=gun, version=version, sha256=sha256, category=category)
    result = connection.execute(_INSERT_CHANGE, row)
    key = result.inserted_primary_key
    assert key is not None  # a single-row INSERT always reports its key
    return Change(key[0], now, gun, version, sha256, category)


def _append_audit(connection: Connection, audit: AuditEntry, now: datetime) -> None:
    values = dataclasses.asdict(audit)
    values["detail"] = json.dumps(audit.detail, sort_keys=True, ensure_ascii=False)
    connection.execute(_INSERT_AUDIT, {**values, "created_at": now})
