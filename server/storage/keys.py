"""Server-held signing keys: the timestamp and snapshot keys of each GUN (``server_keys``) and
the built-in realm's token-signing keys (``token_keys``). Private keys are opaque here (the
caller encrypts them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tufnotary.server.storage.audit import AuditEntry, append_audit
from tufnotary.server.storage.engine import Database, Store
from tufnotary.server.storage.models import ServerKeyRow, TokenKeyRow, columns

TOKEN_KEY_GUN, TOKEN_KEY_ROLE = "", "token-signing"
"""The GUN and role a token-signing key is presented (and its private key encrypted) under."""


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
class TokenKey:
    """A token-signing key of the built-in realm; ``private`` is opaque."""

    key_id: str
    algorithm: str
    public: bytes
    private: bytes
    created_at: datetime

    def as_stored(self) -> StoredKey:
        """This key as a StoredKey of GUN TOKEN_KEY_GUN and role TOKEN_KEY_ROLE."""
        fields = dataclasses.asdict(self)
        return StoredKey(gun=TOKEN_KEY_GUN, role=TOKEN_KEY_ROLE, last_used=None, **fields)


_KEY_COLUMNS = columns(ServerKeyRow, StoredKey)
_TOKEN_COLUMNS = columns(TokenKeyRow, TokenKey)
_NEWEST_TOKEN = (
    sa.select(*_TOKEN_COLUMNS)
    .order_by(TokenKeyRow.created_at.desc(), TokenKeyRow.key_id.desc())
    .limit(1)
)


class ServerKeyStore(Store):
    """The timestamp and snapshot keys of each GUN; re-encryption covers token keys too."""

    def add_key(self, key: StoredKey, audit: AuditEntry | None = None) -> None:
        """Store a new server key (and record ``audit``)."""
        _insert(self._db, ServerKeyRow, key, audit)

    def add_keys(self, keys: Sequence[StoredKey], audit: AuditEntry) -> None:
        """Store new server keys and record ``audit``, all or none."""
        with self._db.transaction(f"add {len(keys)} keys", write=True) as connection:
            if keys:
                connection.execute(
                    sa.insert(ServerKeyRow), [dataclasses.asdict(key) for key in keys]
                )
            append_audit(connection, audit, datetime.now(UTC))

    def _keys(self, action: str, query: sa.Select[Any]) -> list[StoredKey]:
        with self._db.transaction(action) as connection:
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

    def all_keys(self, gun: str | None = None) -> list[StoredKey]:
        """Every server key (of ``gun``), by GUN, role and age."""
        query = sa.select(*_KEY_COLUMNS).order_by(
            ServerKeyRow.gun, ServerKeyRow.role, ServerKeyRow.created_at, ServerKeyRow.key_id
        )
        if gun is not None:
            query = query.where(ServerKeyRow.gun == gun)
        return self._keys("all_keys", query)

    def unused_key(self, gun: str, role: str, algorithm: str) -> StoredKey | None:
        """The newest key of a GUN's role that was never used, with this algorithm or in a
        token or key manager (of any algorithm: an operator registered it)."""
        query = (
            sa.select(*_KEY_COLUMNS)
            .where(
                ServerKeyRow.gun == gun,
                ServerKeyRow.role == role,
                sa.or_(ServerKeyRow.algorithm == algorithm, ServerKeyRow.uri.is_not(None)),
                ServerKeyRow.last_used.is_(None),
            )
            .order_by(ServerKeyRow.created_at.desc(), ServerKeyRow.key_id.desc())
            .limit(1)
        )
        found = self._keys("unused_key", query)
        return found[0] if found else None

    def mark_key_used(self, key_id: str) -> None:
        """Record the first use of a key (later calls change nothing)."""
        with self._db.transaction(f"mark key {key_id} used", write=True) as connection:
            connection.execute(
                sa.update(ServerKeyRow)
                .where(ServerKeyRow.key_id == key_id, ServerKeyRow.last_used.is_(None))
                .values(last_used=datetime.now(UTC))
            )

    def delete_key(self, key_id: str, audit: AuditEntry | None = None) -> bool:
        """Remove a key (and record ``audit``); False if there was none."""
        with self._db.transaction(f"delete key {key_id}", write=True) as connection:
            return _delete(connection, ServerKeyRow, key_id, audit)

    def newest_keys(self) -> list[StoredKey]:
        """The newest key of each role (timestamp, snapshot, and TOKEN_KEY_ROLE), by role."""
        with self._db.transaction("newest keys") as connection:
            roles = connection.execute(
                sa.select(ServerKeyRow.role).distinct().order_by(ServerKeyRow.role)
            ).scalars()
            newest = [
                StoredKey(
                    **connection.execute(
                        sa.select(*_KEY_COLUMNS)
                        .where(ServerKeyRow.role == role)
                        .order_by(ServerKeyRow.created_at.desc(), ServerKeyRow.key_id.desc())
                        .limit(1)
                    )
                    .one()
                    ._mapping
                )
                for role in list(roles)
            ]
            token = connection.execute(_NEWEST_TOKEN).first()
        if token is not None:
            newest.append(TokenKey(**token._mapping).as_stored())
        return sorted(newest, key=lambda key: key.role)

    def current_key_ages(self) -> dict[str, datetime]:
        """Per role, when the oldest current key was made: a GUN's current key of a role is
        its newest key that has signed."""
        current = (
            sa.select(ServerKeyRow.role, sa.func.max(ServerKeyRow.created_at).label("created"))
            .where(ServerKeyRow.last_used.is_not(None))
            .group_by(ServerKeyRow.gun, ServerKeyRow.role)
            .subquery()
        )
        query = sa.select(current.c.role, sa.func.min(current.c.created)).group_by(current.c.role)
        with self._db.transaction("key ages") as connection:
            return {role: created for role, created in connection.execute(query)}

    def replace_private_keys(
        self, reencrypt: Callable[[StoredKey], bytes], audit: AuditEntry
    ) -> int:
        """Replace every key's ``private`` (token keys too, presented by
        :meth:`TokenKey.as_stored`) by ``reencrypt(key)`` and record ``audit`` (its detail
        gains the count), all in one transaction that keeps other writers from adding keys
        meanwhile; an exception from ``reencrypt`` changes nothing. Returns the count."""
        now = datetime.now(UTC)
        with self._db.transaction("re-encryption of the keys", write=True) as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("LOCK TABLE server_keys, token_keys IN EXCLUSIVE MODE")
            query = (
                sa.select(*_KEY_COLUMNS)
                .where(ServerKeyRow.private.is_not(None))  # keys in a token have no private part
                .order_by(ServerKeyRow.key_id)
                .with_for_update()
            )
            keys = [StoredKey(**row._mapping) for row in connection.execute(query)]
            tokens = sa.select(*_TOKEN_COLUMNS).order_by(TokenKeyRow.key_id).with_for_update()
            keys += [TokenKey(**row._mapping).as_stored() for row in connection.execute(tokens)]
            for key in keys:
                model = TokenKeyRow if key.role == TOKEN_KEY_ROLE else ServerKeyRow
                connection.execute(
                    sa.update(model)
                    .where(model.key_id == key.key_id)
                    .values(private=reencrypt(key))
                )
            detail = {**audit.detail, "keys": len(keys)}
            append_audit(connection, dataclasses.replace(audit, detail=detail), now)
        return len(keys)


class TokenKeyStore(Store):
    """The built-in realm's token-signing keys."""

    def add(self, key: TokenKey) -> None:
        """Store a new token-signing key."""
        _insert(self._db, TokenKeyRow, key)

    def get(self, key_id: str) -> TokenKey | None:
        """The token-signing key with this id."""
        query = sa.select(*_TOKEN_COLUMNS).where(TokenKeyRow.key_id == key_id)
        with self._db.transaction("token key") as connection:
            row = connection.execute(query).first()
        return None if row is None else TokenKey(**row._mapping)

    def all(self) -> list[TokenKey]:
        """Every token-signing key, oldest first (the last one signs)."""
        query = sa.select(*_TOKEN_COLUMNS).order_by(TokenKeyRow.created_at, TokenKeyRow.key_id)
        with self._db.transaction("token keys") as connection:
            return [TokenKey(**row._mapping) for row in connection.execute(query)]

    def delete(self, key_id: str, audit: AuditEntry) -> bool:
        """Remove a token-signing key and record ``audit``; False if there was none."""
        with self._db.transaction(f"delete token key {key_id}", write=True) as connection:
            return _delete(connection, TokenKeyRow, key_id, audit)


def _insert(
    database: Database,
    model: type[ServerKeyRow] | type[TokenKeyRow],
    key: StoredKey | TokenKey,
    audit: AuditEntry | None = None,
) -> None:
    with database.transaction(f"add key {key.key_id}", write=True) as connection:
        connection.execute(sa.insert(model).values(**dataclasses.asdict(key)))
        if audit is not None:
            append_audit(connection, audit, datetime.now(UTC))


def _delete(
    connection: Connection,
    model: type[ServerKeyRow] | type[TokenKeyRow],
    key_id: str,
    audit: AuditEntry | None,
) -> bool:
    removed = connection.execute(sa.delete(model).where(model.key_id == key_id)).rowcount
    if removed and audit is not None:
        append_audit(connection, audit, datetime.now(UTC))
    return bool(removed)
