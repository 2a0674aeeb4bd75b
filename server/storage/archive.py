"""Whole tables in and out, for the backup archive: rows as dicts of column values.

An export reads every table in one snapshot; a restore writes every table in one transaction,
into a database that holds none of the data restored (see :meth:`ArchiveStore.occupied`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tufnotary.server.storage.audit import AuditEntry, append_audit
from tufnotary.server.storage.engine import Database, StorageError
from tufnotary.server.storage.models import (
    AuditRow,
    Base,
    ChangefeedRow,
    RealmGroupMemberRow,
    RealmRuleRow,
    RealmUserRow,
    ServerKeyRow,
    TokenKeyRow,
    TufFileRow,
)

_TABLES: dict[str, type[Base]] = {
    model.__tablename__: model
    for model in (
        TufFileRow,
        ChangefeedRow,
        ServerKeyRow,
        TokenKeyRow,
        RealmUserRow,
        RealmGroupMemberRow,
        RealmRuleRow,
        AuditRow,
    )
}
TRUST_TABLES = ("tuf_files", "changefeed", "server_keys")
"""Tables a restore always requires empty."""
APPENDED = "audit_log"
"""The table whose restored rows are appended (new ids, their times kept), never refused."""
_SERIAL = ("changefeed", "realm_rules")  # ids restored as they were; PostgreSQL's sequences follow
_BATCH_ROWS, _BATCH_BYTES = 500, 2 << 20  # MariaDB: hex-encoded under max_allowed_packet


class DatabaseNotEmpty(StorageError):
    """A restore would mix with data the database holds already."""


Rows = Iterator[dict[str, Any]]


class ArchiveStore:
    """Reads and writes whole tables for export and restore."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def export(
        self,
        tables: Sequence[tuple[str, Sequence[str]]],
        guns: Sequence[str] | None,
        sink: Callable[[str, Rows], None],
    ) -> None:
        """Hand ``sink`` each table's rows (the named columns, primary-key order; only rows of
        ``guns`` in tables with a ``gun`` column, when given), all read in one snapshot."""
        with self._db.snapshot("export") as connection:
            for table, names in tables:
                model = _TABLES[table]
                query = sa.select(*(model.__table__.c[name] for name in names)).order_by(
                    *model.__table__.primary_key.columns
                )
                if guns is not None and "gun" in model.__table__.c:
                    query = query.where(model.__table__.c.gun.in_(guns))
                rows = connection.execution_options(yield_per=_BATCH_ROWS).execute(query)
                sink(table, (dict(row._mapping) for row in rows))

    def unknown_guns(self, guns: Sequence[str]) -> list[str]:
        """The GUNs of ``guns`` without a stored version, changefeed entry or server key."""
        known: set[str] = set()
        with self._db.transaction("known GUNs") as connection:
            for model in (TufFileRow, ChangefeedRow, ServerKeyRow):
                query = sa.select(model.gun).where(model.gun.in_(guns)).distinct()
                known.update(connection.execute(query).scalars())
        return [gun for gun in guns if gun not in known]

    def occupied(self, tables: Iterable[str]) -> list[str]:
        """Which of the tables a restore of ``tables`` requires empty hold rows."""
        with self._db.transaction("emptiness check") as connection:
            return _occupied(connection, tables)

    def restore(
        self, tables: Iterator[tuple[str, Rows]], names: Sequence[str], audit: AuditEntry
    ) -> dict[str, int]:
        """Insert the rows of ``tables`` (whose names are ``names``) and record ``audit``, all
        or nothing in one transaction; DatabaseNotEmpty if :meth:`occupied` finds rows, and
        any exception from the rows' iterators undoes everything. Returns rows per table."""
        counts: dict[str, int] = {}
        with self._db.transaction("restore", write=True) as connection:
            if connection.dialect.name == "postgresql":
                locked = ", ".join(_TABLES)
                connection.exec_driver_sql(f"LOCK TABLE {locked} IN EXCLUSIVE MODE")
            occupied = _occupied(connection, names)
            if occupied:
                raise DatabaseNotEmpty(f"the database holds rows in {', '.join(occupied)}")
            for table, rows in tables:
                counts[table] = _insert(connection, _TABLES[table], rows)
            if connection.dialect.name == "postgresql":
                for table in _SERIAL:
                    connection.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                    )
            append_audit(connection, audit, datetime.now(UTC))
        return counts


def _occupied(connection: Connection, tables: Iterable[str]) -> list[str]:
    required = dict.fromkeys([*TRUST_TABLES, *tables])
    required.pop(APPENDED, None)
    return [
        table
        for table in required
        if connection.execute(sa.select(sa.literal(1)).select_from(_TABLES[table]).limit(1)).first()
    ]


def _insert(connection: Connection, model: type[Base], rows: Rows) -> int:
    """Insert ``rows`` in batches of bounded size; audit rows get new ids."""
    statement, count, size = sa.insert(model), 0, 0
    batch: list[dict[str, Any]] = []
    for row in rows:
        if model is AuditRow:
            row.pop("id")
        batch.append(row)
        size += sum(len(value) for value in row.values() if isinstance(value, bytes | str))
        if len(batch) >= _BATCH_ROWS or size >= _BATCH_BYTES:
            connection.execute(statement, batch)
            count, batch, size = count + len(batch), [], 0
    if batch:
        connection.execute(statement, batch)
    return count + len(batch)
