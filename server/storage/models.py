"""The database schema as SQLAlchemy 2 typed models; ``Base.metadata`` is what the Alembic
migrations create."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

MYSQL = ("mysql", "mariadb")


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
        if dialect.name in MYSQL:
            return dialect.type_descriptor(mysql.VARBINARY(4 * self.length))
        return dialect.type_descriptor(sa.String(self.length))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | bytes | None:
        if value is not None and dialect.name in MYSQL:
            return value.encode("utf-8")
        return value

    def process_result_value(self, value: str | bytes | None, dialect: Dialect) -> str | None:
        return value.decode("utf-8") if isinstance(value, bytes) else value

    # Elsewhere the text is stored as given: no processor (a call per value on every read).
    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        return super().bind_processor(dialect) if dialect.name in MYSQL else None

    def result_processor(self, dialect: Dialect, coltype: Any) -> Callable[[Any], Any] | None:
        return super().result_processor(dialect, coltype) if dialect.name in MYSQL else None


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamp stored as naive UTC with microseconds, returned timezone-aware."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL:
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
_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL)


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


class TokenKeyRow(Base):
    """A token-signing key of the built-in realm."""

    __tablename__ = "token_keys"

    key_id: Mapped[str] = mapped_column(ExactString(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(sa.String(20))
    public: Mapped[bytes] = mapped_column(_BLOB)
    private: Mapped[bytes] = mapped_column(_BLOB)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


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


class SoonestExpiryRow(Base):
    """Per role, the soonest expiry of any GUN's current metadata, as the last resign pass
    found it (read by the ``tufnotary_metadata_soonest_expiry_seconds`` gauge)."""

    __tablename__ = "soonest_expiry"

    role: Mapped[str] = mapped_column(ExactString(255), primary_key=True)
    gun: Mapped[str] = mapped_column(ExactString(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())


def columns(model: type[Base], record: type) -> list[Any]:
    """The model's columns named like the dataclass ``record``'s fields, in field order."""
    return [getattr(model, field.name) for field in dataclasses.fields(record)]
