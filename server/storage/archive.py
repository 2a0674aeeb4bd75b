"""Whole tables in and out, for the backup archive: rows as dicts of column values.

An export reads every table in one snapshot; a restore writes every table in one transaction,
into a database that holds none of the data restored (see :meth:`ArchiveStore.occupied`), or
merges the trust data into what is stored, adding only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tufnotary.server.storage.audit import AuditEntry, append_audit
from tufnotary.server.storage.engine import StorageError, Store
from tufnotary.server.storage.metadata import add_missing_versions
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


class ServerKeyDiffers(StorageError):
    """A merged server key is stored already as another key (of another GUN, role or public
    key)."""


Rows = Iterator[dict[str, Any]]


class ArchiveStore(Store):
    """Reads and writes whole tables for export and restore."""

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

    def occupied(self, tables: Iterable[str], merge: bool = False) -> list[str]:
        """Which of the tables a restore of ``tables`` requires empty hold rows."""
        with self._db.transaction("emptiness check") as connection:
            return _occupied(connection, tables, merge)

    def restore(
        self,
        tables: Iterator[tuple[str, Rows]],
        names: Sequence[str],
        audit: AuditEntry,
        *,
        merge: bool = False,
    ) -> dict[str, int]:
        """Insert the rows of ``tables`` (whose names are ``names``) and record ``audit``, all
        or nothing in one transaction; DatabaseNotEmpty if :meth:`occupied` finds rows, and
        any exception from the rows' iterators undoes everything. Returns rows added per table.

        With ``merge``, trust data may be stored already: versions and server keys not stored
        yet are added (a changefeed record, with new id, per added timestamp; the archived
        changefeed is not used), identical ones skipped; a version stored with other bytes
        raises VersionConflict, a key stored as another key ServerKeyDiffers.
        """
        counts: dict[str, int] = {}
        with self._db.transaction("restore", write=True) as connection:
            if connection.dialect.name == "postgresql":
                locked = ", ".join(_TABLES)
                connection.exec_driver_sql(f"LOCK TABLE {locked} IN EXCLUSIVE MODE")
            occupied = _occupied(connection, names, merge)
            if occupied:
                raise DatabaseNotEmpty(f"the database holds rows in {', '.join(occupied)}")
            for table, rows in tables:
                merger = _MERGERS.get(table) if merge else None
                model = _TABLES[table]
                counts[table] = (
                    merger(connection, rows) if merger else _insert(connection, model, rows)
                )
            if connection.dialect.name == "postgresql":
                for table in _SERIAL:
                    if table in names and not (merge and table in TRUST_TABLES):
                        connection.exec_driver_sql(
                            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                        )
            append_audit(connection, audit, datetime.now(UTC))
        return counts


def _occupied(connection: Connection, tables: Iterable[str], merge: bool) -> list[str]:
    required = dict.fromkeys([*TRUST_TABLES, *tables])
    for table in (APPENDED, *(TRUST_TABLES if merge else ())):
        required.pop(table, None)
    return [
        table
        for table in required
        if connection.execute(sa.select(sa.literal(1)).select_from(_TABLES[table]).limit(1)).first()
    ]


def _batches(rows: Rows) -> Iterator[list[dict[str, Any]]]:
    """``rows`` in lists of at most _BATCH_ROWS rows or about _BATCH_BYTES bytes."""
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        batch.append(row)
        size += sum(len(value) for value in row.values() if isinstance(value, bytes | str))
        if len(batch) >= _BATCH_ROWS or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _insert(connection: Connection, model: type[Base], rows: Rows) -> int:
    """Insert every row; audit rows get new ids."""
    count = 0
    for batch in _batches(rows):
        if model is AuditRow:
            for row in batch:
                row.pop("id")
        connection.execute(sa.insert(model), batch)
        count += len(batch)
    return count


def _merge_files(connection: Connection, rows: Rows) -> int:
    """Add the versions not stored yet, with a changefeed record per added timestamp."""
    return sum(len(add_missing_versions(connection, batch)) for batch in _batches(rows))


def _merge_keys(connection: Connection, rows: Rows) -> int:
    """Add the server keys not stored yet; a stored one must be the same key of the same role."""
    count = 0
    same = ("gun", "role", "algorithm", "public")
    for batch in _batches(rows):
        query = sa.select(ServerKeyRow.key_id, *(ServerKeyRow.__table__.c[name] for name in same))
        found = connection.execute(
            query.where(ServerKeyRow.key_id.in_([r["key_id"] for r in batch]))
        )
        stored = {row.key_id: tuple(row)[1:] for row in found}
        added = []
        for row in batch:
            if row["key_id"] not in stored:
                added.append(row)
            elif stored[row["key_id"]] != tuple(row[name] for name in same):
                raise ServerKeyDiffers(f"server key {row['key_id']} is stored as another key")
        if added:
            connection.execute(sa.insert(ServerKeyRow), added)
        count += len(added)
    return count


def _skip(_connection: Connection, rows: Rows) -> int:
    """Read the rows (their member is still verified) and add none."""
    for _row in rows:
        pass
    return 0


_MERGERS: dict[str, Callable[[Connection, Rows], int]] = {
    "tuf_files": _merge_files,
    "changefeed": _skip,
    "server_keys": _merge_keys,
}
