"""The audit log: who wrote what, when and from where."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tufnotary.server.storage.engine import Store
from tufnotary.server.storage.models import AuditRow, columns


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


_COLUMNS = columns(AuditRow, AuditRecord)
_INSERT = sa.insert(AuditRow)


def audit_row(audit: AuditEntry, now: datetime) -> dict[str, Any]:
    """The ``audit_log`` row of ``audit``, recorded at ``now``."""
    values = dataclasses.asdict(audit)
    values["detail"] = json.dumps(audit.detail, sort_keys=True, ensure_ascii=False)
    return {**values, "created_at": now}


def append_audit(connection: Connection, audit: AuditEntry, now: datetime) -> None:
    """Record ``audit`` in the caller's transaction (so the write and its record go together)."""
    connection.execute(_INSERT, audit_row(audit, now))


class AuditLog(Store):
    """Reads the audit log and records writes made outside the other stores."""

    def record(self, audit: AuditEntry) -> None:
        """Record a write made elsewhere (token keys, a re-encryption...)."""
        with self._db.transaction(f"audit of {audit.action}", write=True) as connection:
            append_audit(connection, audit, datetime.now(UTC))

    def records(
        self,
        *,
        gun: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        """Recorded writes, oldest first, filtered by GUN, actor and time (``until`` excluded)."""
        query = sa.select(*_COLUMNS).order_by(AuditRow.id.desc()).limit(limit)
        for column, value in ((AuditRow.gun, gun), (AuditRow.actor, actor)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(AuditRow.created_at >= since)
        if until is not None:
            query = query.where(AuditRow.created_at < until)
        with self._db.transaction("audit log") as connection:
            rows = [row._mapping for row in connection.execute(query)]
        return [AuditRecord(**{**row, "detail": json.loads(row["detail"])}) for row in rows[::-1]]
