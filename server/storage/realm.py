"""The built-in realm's users (with bcrypt hashes), group memberships and access rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from tufnotary.server.storage.audit import AuditEntry, append_audit
from tufnotary.server.storage.engine import StorageError, Store
from tufnotary.server.storage.models import (
    RealmGroupMemberRow,
    RealmRuleRow,
    RealmUserRow,
    columns,
)


class UserExists(StorageError):
    """A user of this name is stored already."""


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


_RULE_COLUMNS = columns(RealmRuleRow, StoredRule)


class RealmStore(Store):
    """Users, groups and rules of the built-in realm; every write records its audit entry."""

    def add_user(
        self, name: str, password_hash: str, groups: Sequence[str], audit: AuditEntry
    ) -> None:
        """Create a user with its group memberships; UserExists if the name is taken."""
        now = datetime.now(UTC)
        with self._db.transaction(f"add user {name}", write=True, clash=UserExists) as connection:
            connection.execute(
                sa.insert(RealmUserRow).values(
                    name=name, password_hash=password_hash, created_at=now
                )
            )
            for group in dict.fromkeys(groups):
                connection.execute(
                    sa.insert(RealmGroupMemberRow).values(group_name=group, user_name=name)
                )
            append_audit(connection, audit, now)

    def set_password(self, name: str, password_hash: str, audit: AuditEntry) -> bool:
        """Replace a user's hash; False if there is no such user."""
        now = datetime.now(UTC)
        with self._db.transaction(f"password of {name}", write=True) as connection:
            changed = connection.execute(
                sa.update(RealmUserRow)
                .where(RealmUserRow.name == name)
                .values(password_hash=password_hash)
            ).rowcount
            if changed:
                append_audit(connection, audit, now)
        return bool(changed)

    def remove_user(self, name: str, audit: AuditEntry) -> bool:
        """Delete a user and its memberships; False if there is no such user."""
        now = datetime.now(UTC)
        with self._db.transaction(f"remove user {name}", write=True) as connection:
            removed = connection.execute(
                sa.delete(RealmUserRow).where(RealmUserRow.name == name)
            ).rowcount
            connection.execute(
                sa.delete(RealmGroupMemberRow).where(RealmGroupMemberRow.user_name == name)
            )
            if removed:
                append_audit(connection, audit, now)
        return bool(removed)

    def set_member(self, group: str, user: str, member: bool, audit: AuditEntry) -> bool:
        """Add ``user`` to ``group`` (or, ``member=False``, remove); False if nothing changed."""
        now = datetime.now(UTC)
        row = (RealmGroupMemberRow.group_name == group, RealmGroupMemberRow.user_name == user)
        with self._db.transaction(f"membership of {user} in {group}", write=True) as connection:
            present = connection.execute(sa.select(RealmGroupMemberRow.user_name).where(*row))
            if (present.first() is not None) == member:
                return False
            if member:
                connection.execute(
                    sa.insert(RealmGroupMemberRow).values(group_name=group, user_name=user)
                )
            else:
                connection.execute(sa.delete(RealmGroupMemberRow).where(*row))
            append_audit(connection, audit, now)
        return True

    def password_hash(self, name: str) -> str | None:
        """The bcrypt hash of a database user, or None."""
        query = sa.select(RealmUserRow.password_hash).where(RealmUserRow.name == name)
        with self._db.transaction("password hash") as connection:
            return connection.execute(query).scalar()

    def groups_of(self, name: str) -> list[str]:
        """The groups a user (database or htpasswd) is a member of."""
        query = (
            sa.select(RealmGroupMemberRow.group_name)
            .where(RealmGroupMemberRow.user_name == name)
            .order_by(RealmGroupMemberRow.group_name)
        )
        with self._db.transaction("groups") as connection:
            return list(connection.execute(query).scalars())

    def realm_users(self) -> list[RealmUser]:
        """Every database user with its groups, by name."""
        with self._db.transaction("users") as connection:
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
        with self._db.transaction("add rule", write=True) as connection:
            result = connection.execute(
                sa.insert(RealmRuleRow).values(
                    subject=subject, pattern=pattern, actions=actions, created_at=now
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            rule_id = int(key[0])
            detail = {**audit.detail, "rule": rule_id}
            append_audit(connection, dataclasses.replace(audit, detail=detail), now)
        return rule_id

    def remove_rule(self, rule_id: int, audit: AuditEntry) -> StoredRule | None:
        """Delete a rule and record ``audit`` (its detail gains the rule); None if absent."""
        now = datetime.now(UTC)
        with self._db.transaction(f"remove rule {rule_id}", write=True) as connection:
            row = connection.execute(
                sa.select(*_RULE_COLUMNS).where(RealmRuleRow.id == rule_id)
            ).first()
            if row is None:
                return None
            rule = StoredRule(**row._mapping)
            connection.execute(sa.delete(RealmRuleRow).where(RealmRuleRow.id == rule_id))
            detail = {**audit.detail, "subject": rule.subject, "pattern": rule.pattern}
            detail["actions"] = rule.actions
            append_audit(connection, dataclasses.replace(audit, detail=detail), now)
        return rule

    def rules(self, subjects: Sequence[str] | None = None) -> list[StoredRule]:
        """Stored rules by id, optionally only those of ``subjects``."""
        query = sa.select(*_RULE_COLUMNS).order_by(RealmRuleRow.id)
        if subjects is not None:
            query = query.where(RealmRuleRow.subject.in_(list(subjects)))
        with self._db.transaction("rules") as connection:
            return [StoredRule(**row._mapping) for row in connection.execute(query)]
