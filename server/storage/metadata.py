"""TUF metadata files and the changefeed (spec 1.8, 2.9 and 5.1).

Every method runs in one transaction and returns plain frozen dataclasses; a version clash,
including one lost to a concurrent writer, raises :class:`VersionConflict` on every engine.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tufnotary.metadata.model import TIMESTAMP
from tufnotary.server.storage.audit import AuditEntry, append_audit, audit_row
from tufnotary.server.storage.engine import StorageError, Store
from tufnotary.server.storage.models import AuditRow, ChangefeedRow, TufFileRow, columns


class VersionConflict(StorageError):
    """A stored version of a role is >= a new one, or two new files share role and version."""


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
    """A metadata file to store, with the SHA-256 (lower-case hex) of its bytes."""

    role: str
    version: int
    data: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())


@dataclass(frozen=True)
class GunRead:
    """One consistent read of a GUN: its change signal (what :meth:`MetadataStore.signal`
    returns), the newest file of some roles, and the file asked for by checksum or version."""

    signal: tuple[int, str] | None
    latest: dict[str, StoredFile]
    found: StoredFile | None = None


@dataclass(frozen=True)
class ChangefeedEntry:
    """A changefeed record; category is ``update`` or ``deletion``."""

    id: int
    created_at: datetime
    gun: str
    version: int
    sha256: str
    category: str


_FILE_COLUMNS = columns(TufFileRow, StoredFile)
_CHANGE_COLUMNS = columns(ChangefeedRow, ChangefeedEntry)
# MetadataStore.signal, also run by storage/signals.py on every cached read: its constants are
# written in the SQL, not bound (each bound value costs the driver a conversion per run).
SIGNAL = (
    sa.select(TufFileRow.id, TufFileRow.sha256)
    .where(
        TufFileRow.gun == sa.bindparam("gun"), TufFileRow.role == sa.literal_column("'timestamp'")
    )
    .order_by(TufFileRow.version.desc())
    .limit(sa.literal_column("1"))
)
_GUN, _ROLE = sa.bindparam("gun"), sa.bindparam("role")
# Built once: composing a statement per call costs more than running it on a warm connection.
_FILES = sa.select(*_FILE_COLUMNS).where(TufFileRow.gun == _GUN, TufFileRow.role == _ROLE)
_LATEST = _FILES.order_by(TufFileRow.version.desc()).limit(1)
_BY_CHECKSUM = _FILES.where(TufFileRow.sha256 == sa.bindparam("sha256")).limit(1)
_BY_VERSION = _FILES.where(TufFileRow.version == sa.bindparam("version")).limit(1)
_INSERT_CHANGE = sa.insert(ChangefeedRow)
_TIMESTAMPS_LOCKED = (
    sa.select(TufFileRow.id)
    .where(TufFileRow.gun == _GUN, TufFileRow.role == TIMESTAMP)
    .with_for_update()
)
_LOOKUP_BATCH = 500  # (gun, role, version) triples per query: SQLite's bound-parameter limit


@functools.lru_cache(maxsize=16)
def _gun_read(roles: int, asked: str | None) -> sa.CompoundSelect:
    """``part`` 0: the newest row of each role bound as ``role0``, ``role1``... (and ``gun``),
    one index lookup each; ``part`` 1: the row of ``role`` whose ``asked`` column (``sha256``
    or ``version``) is bound ``value``. Roles are bound, so that a few statements serve all."""
    newest = [
        sa.select(sa.literal_column("0").label("part"), TufFileRow.id, *_FILE_COLUMNS)
        .where(TufFileRow.gun == _GUN, TufFileRow.role == sa.bindparam(f"role{index}"))
        .order_by(TufFileRow.version.desc())
        .limit(1)
        .subquery()
        .select()
        for index in range(roles)
    ]
    if asked is None:
        return sa.union_all(*newest)
    found = (
        sa.select(sa.literal_column("1").label("part"), TufFileRow.id, *_FILE_COLUMNS)
        .where(
            TufFileRow.gun == _GUN,
            TufFileRow.role == _ROLE,
            getattr(TufFileRow, asked) == sa.bindparam("value"),
        )
        .limit(1)
        .subquery()
        .select()
    )
    return sa.union_all(*newest, found)


@functools.lru_cache(maxsize=64)
def _newer(roles: int) -> sa.CompoundSelect:
    """A row of role ``r{i}`` at version ``v{i}`` or higher, i < ``roles`` (bound: ``gun``,
    ``r0``, ``v0``...): one range lookup in the (gun, role, version) index per role, so that
    the check costs the same however many versions a repository holds."""
    return sa.union_all(
        *(
            sa.select(TufFileRow.role, TufFileRow.version)
            .where(
                TufFileRow.gun == _GUN,
                TufFileRow.role == sa.bindparam(f"r{i}"),
                TufFileRow.version >= sa.bindparam(f"v{i}"),
            )
            .order_by(TufFileRow.version.desc())  # the planner takes the version index
            .limit(1)
            .subquery()
            .select()
            for i in range(roles)
        )
    )


_BASE = sa.select(TufFileRow.id).where(
    TufFileRow.gun == _GUN,
    TufFileRow.role == TIMESTAMP,
    TufFileRow.sha256 == sa.bindparam("base"),
)
"""The timestamp an update was made from, bound as ``base`` (its sha256)."""
_ROW_SHARED = (
    sa.select(TufFileRow.id)
    .where(TufFileRow.id == sa.bindparam("id"))
    .with_for_update(read=True, key_share=True)
)
"""A row locked against deletion until the transaction ends (by primary key: on MariaDB a
record lock only, no gap lock that concurrent inserts would deadlock on)."""


def _bound(table: sa.Table, names: Sequence[str], suffix: str = "") -> list[sa.BindParameter[Any]]:
    """Typed bound parameters for ``table``'s columns ``names``, named ``name + suffix``."""
    return [sa.bindparam(name + suffix, type_=table.c[name].type) for name in names]


_NEW_FILE = ("role", "version", "sha256", "data")
_AUDIT = tuple(column.key for column in AuditRow.__table__.c if column.key != "id")


@functools.lru_cache(maxsize=64)
def _update_statement(roles: int, files: int, audited: bool, based: bool) -> sa.CompoundSelect:
    """An update as one statement, for PostgreSQL (data-modifying CTEs): ``_newer(roles)``
    (and if ``based``, ``_BASE``), and only if it finds nothing (and the base), the ``files``
    new rows (bound: ``created_at``, ``gun``, ``role0``, ``version0``, ``sha2560``, ``data0``...),
    the audit entry if ``audited`` (bound: its columns) and a changefeed row per new timestamp.
    Its rows: the stored (role, version) that clashes, ("timestamp", NULL...) if the base is
    gone, or (NULL, version, sha256, id) of each changefeed row added."""
    files_table, changes_table = TufFileRow.__table__, ChangefeedRow.__table__
    stored = _newer(roles).cte("stored")
    clear = ~sa.exists(stored.select())
    gone = None
    if based:
        base = _BASE.with_for_update(read=True, key_share=True).cte("base")
        clear = sa.and_(clear, sa.exists(base.select()))
        gone = sa.select(sa.literal(TIMESTAMP), sa.null(), sa.null(), sa.null()).where(
            ~sa.exists(base.select())
        )
    new = sa.union_all(
        *(
            sa.select(
                *_bound(files_table, ("created_at",)), _GUN, *_bound(files_table, _NEW_FILE, f"{i}")
            ).where(clear)
            for i in range(files)
        )
    )
    inserted = (
        sa.insert(TufFileRow)
        .from_select(["created_at", "gun", *_NEW_FILE], new)
        .returning(TufFileRow.role, TufFileRow.version, TufFileRow.sha256)
        .cte("inserted")
    )
    changes = (
        sa.insert(ChangefeedRow)
        .from_select(
            ["created_at", "gun", "version", "sha256", "category"],
            sa.select(
                *_bound(changes_table, ("created_at",)),
                _GUN,
                inserted.c.version,
                inserted.c.sha256,
                sa.literal("update"),
            )
            .where(inserted.c.role == "timestamp")
            .order_by(inserted.c.version),
        )
        .returning(ChangefeedRow.version, ChangefeedRow.sha256, ChangefeedRow.id)
        .cte("changes")
    )
    outcome = sa.union_all(
        sa.select(stored.c.role, stored.c.version, sa.null(), sa.null()),
        sa.select(sa.null(), changes.c.version, changes.c.sha256, changes.c.id),
        *([] if gone is None else [gone]),
    )
    if audited:
        audit_table = AuditRow.__table__
        audit = sa.insert(AuditRow).from_select(
            _AUDIT, sa.select(*_bound(audit_table, _AUDIT, "_audit")).where(clear)
        )
        outcome = outcome.add_cte(audit.cte("audit"))
    return outcome


class MetadataStore(Store):
    """Stored TUF metadata files and the changefeed of their timestamps."""

    def _file(self, action: str, query: sa.Select[Any], **params: Any) -> StoredFile | None:
        with self._db.transaction(action) as connection:
            row = connection.execute(query, params).first()
        return None if row is None else StoredFile(**row._mapping)

    def latest(self, gun: str, role: str) -> StoredFile | None:
        """The highest stored version of a role."""
        return self._file("latest", _LATEST, gun=gun, role=role)

    def latest_of(self, gun: str, roles: Sequence[str]) -> dict[str, StoredFile]:
        """The highest stored version of each of ``roles`` that has one, in one query."""
        return self._read(gun, tuple(roles)).latest

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
        with self._db.transaction("signal") as connection:
            row = connection.execute(SIGNAL, {"gun": gun}).first()
        return None if row is None else (row[0], row[1])

    def read_gun(
        self, gun: str, roles: Sequence[str], asked: tuple[str, str, str | int] | None = None
    ) -> GunRead:
        """In one statement: the signal of ``gun``, the newest file of ``roles`` and of the
        timestamp and, if ``asked`` is (role, "sha256" or "version", value), that file."""
        return self._read(gun, (TIMESTAMP, *(role for role in roles if role != TIMESTAMP)), asked)

    def _read(
        self, gun: str, roles: tuple[str, ...], asked: tuple[str, str, str | int] | None = None
    ) -> GunRead:
        params: dict[str, Any] = {"gun": gun}
        params.update((f"role{index}", role) for index, role in enumerate(roles))
        if asked is not None:
            params["role"], params["value"] = asked[0], asked[2]
        query = _gun_read(len(roles), None if asked is None else asked[1])
        latest, found, signal = {}, None, None
        for part, row_id, *values in self._db.read_rows("read", query, params):
            file = StoredFile(*values)
            if part:
                found = file
            else:
                latest[file.role] = file
                if file.role == TIMESTAMP:
                    signal = (row_id, file.sha256)
        return GunRead(signal, latest, found)

    def update_many(
        self,
        gun: str,
        files: Sequence[NewFile],
        audit: AuditEntry | None = None,
        base: str | None = None,
    ) -> list[ChangefeedEntry]:
        """Store all files (and the audit entry) or none (spec 2.9); returns the changefeed
        rows of the timestamps. ``base``: the sha256 of the timestamp the files were made
        from, which must still be stored (else :class:`VersionConflict`): a deletion of the
        GUN between the read and this write would otherwise leave a repository without root.

        Concurrent writers: the version check sees what was committed when it ran, and two
        writers of one (role, version) clash on the unique index, the second getting
        :class:`VersionConflict`; every publish adds the next timestamp version, so of two
        publishes from the same state one always loses. On PostgreSQL all of it is one
        statement (one round trip, no BEGIN or COMMIT), elsewhere one transaction.
        """
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
                "sha256": file.sha256,
                "data": file.data,
            }
            for file in sorted(files, key=lambda file: (file.role, file.version))
        ]
        check: dict[str, Any] = {"gun": gun}
        for i, role in enumerate(sorted(lowest)):
            check |= {f"r{i}": role, f"v{i}": lowest[role]}
        if base is not None:
            check["base"] = base
        if rows and self._db.engine.dialect.name == "postgresql":
            return self._update_in_one_statement(gun, rows, check, lowest, audit, now)
        with self._db.transaction(
            f"update of {gun}", write=True, clash=VersionConflict
        ) as connection:
            if base is not None:
                found = connection.execute(_BASE, check).scalar()
                if found is None or connection.execute(_ROW_SHARED, {"id": found}).first() is None:
                    raise _base_gone(gun)
            if rows:
                stored = connection.execute(_newer(len(lowest)), check).first()
                if stored is not None:
                    raise _conflict(gun, stored.role, stored.version, lowest)
                connection.execute(sa.insert(TufFileRow), rows)
            if audit is not None:
                append_audit(connection, audit, now)
            return [
                _append_change(connection, gun, row["version"], row["sha256"], "update", now)
                for row in rows
                if row["role"] == "timestamp"
            ]

    def _update_in_one_statement(
        self,
        gun: str,
        rows: Sequence[dict[str, Any]],
        check: dict[str, Any],
        lowest: dict[str, int],
        audit: AuditEntry | None,
        now: datetime,
    ) -> list[ChangefeedEntry]:
        """update_many in one round trip (PostgreSQL): check, inserts and commit together."""
        params = dict(check, created_at=now)
        for i, row in enumerate(rows):
            params |= {f"{name}{i}": row[name] for name in _NEW_FILE}
        if audit is not None:
            params |= {f"{name}_audit": value for name, value in audit_row(audit, now).items()}
        statement = _update_statement(len(lowest), len(rows), audit is not None, "base" in check)
        outcome = self._db.write_rows(f"update of {gun}", statement, params, VersionConflict)
        changes = []
        for role, version, sha256, change_id in outcome:
            if version is None:
                raise _base_gone(gun)
            if change_id is None:
                raise _conflict(gun, role, version, lowest)
            changes.append(ChangefeedEntry(change_id, now, gun, version, sha256, "update"))
        return sorted(changes, key=lambda change: change.id)

    def add_versions(
        self, gun: str, files: Sequence[NewFile], audit: AuditEntry | None = None
    ) -> list[NewFile]:
        """Store the files whose (role, version) is not stored yet, all or none, with a
        changefeed row per new timestamp; returns the files added, in insert order.

        For imports and restores: versions may arrive in any order and below what is stored.
        A stored version with other bytes raises :class:`VersionConflict` (history differs).
        """
        wanted = {(file.role, file.version): file for file in files}
        if len(wanted) != len(files):
            raise VersionConflict(f"import into {gun}: two files with the same role and version")
        now = datetime.now(UTC)
        rows = [
            dict(created_at=now, gun=gun, role=file.role, version=file.version)
            | {"sha256": file.sha256, "data": file.data}
            for _, file in sorted(wanted.items())
        ]
        with self._db.transaction(
            f"import into {gun}", write=True, clash=VersionConflict
        ) as connection:
            added = add_missing_versions(connection, rows, "import into ")
            if audit is not None:
                append_audit(connection, audit, now)
        return [wanted[row["role"], row["version"]] for row in added]

    def delete_gun(self, gun: str, audit: AuditEntry | None = None) -> int:
        """Delete every stored file of exactly this GUN (and record ``audit``); returns the
        number of rows removed."""
        now = datetime.now(UTC)
        with self._db.transaction(f"delete of {gun}", write=True) as connection:
            # Waits for updates holding a timestamp (_BASE); the DELETE then sees their rows.
            connection.execute(_TIMESTAMPS_LOCKED, {"gun": gun}).all()
            removed = connection.execute(
                sa.delete(TufFileRow).where(TufFileRow.gun == gun)
            ).rowcount
            if removed:
                _append_change(connection, gun, 0, "", "deletion", now)
            if audit is not None:
                append_audit(connection, audit, now)
        return removed

    def changes(self, gun: str | None, change_id: int, records: int) -> list[ChangefeedEntry]:
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
        with self._db.transaction("changefeed") as connection:
            found = [ChangefeedEntry(**row._mapping) for row in connection.execute(query)]
        return found[::-1] if backwards else found

    def ping(self) -> None:
        """Raise StorageError unless ``tuf_files`` can be read (health check)."""
        with self._db.transaction("ping") as connection:
            connection.execute(sa.select(TufFileRow.id).limit(1)).all()


def add_missing_versions(
    connection: Connection, rows: Sequence[dict[str, Any]], context: str = ""
) -> list[dict[str, Any]]:
    """Insert the ``tuf_files`` rows whose (gun, role, version) is not stored, and a changefeed
    ``update`` (at the row's ``created_at``) per added timestamp; returns the rows added. A
    version stored with other bytes raises VersionConflict, its message led by ``context``."""
    key = sa.tuple_(TufFileRow.gun, TufFileRow.role, TufFileRow.version)
    query = sa.select(TufFileRow.gun, TufFileRow.role, TufFileRow.version, TufFileRow.sha256)
    stored: dict[tuple[str, str, int], str] = {}
    for start in range(0, len(rows), _LOOKUP_BATCH):
        batch = rows[start : start + _LOOKUP_BATCH]
        wanted = [(row["gun"], row["role"], row["version"]) for row in batch]
        found = connection.execute(query.where(key.in_(wanted)))
        stored.update(((gun, role, version), digest) for gun, role, version, digest in found)
    added = []
    for row in rows:
        digest = stored.get((row["gun"], row["role"], row["version"]))
        if digest is None:
            added.append(row)
        elif digest != row["sha256"]:
            raise VersionConflict(
                f"{context}{row['gun']}: {row['role']} version {row['version']} is stored with "
                "other bytes"
            )
    if added:
        connection.execute(sa.insert(TufFileRow), added)
    changes = [
        {name: row[name] for name in ("created_at", "gun", "version", "sha256")}
        | {"category": "update"}
        for row in added
        if row["role"] == "timestamp"
    ]
    if changes:
        connection.execute(_INSERT_CHANGE, changes)
    return added


def _base_gone(gun: str) -> VersionConflict:
    return VersionConflict(f"update of {gun}: the timestamp it was made from is not stored")


def _conflict(gun: str, role: str, version: int, lowest: dict[str, int]) -> VersionConflict:
    return VersionConflict(
        f"update of {gun}: {role} version {version} is stored, new is {lowest[role]}"
    )


def _append_change(
    connection: Connection, gun: str, version: int, sha256: str, category: str, now: datetime
) -> ChangefeedEntry:
    row = dict(created_at=now, gun=gun, version=version, sha256=sha256, category=category)
    result = connection.execute(_INSERT_CHANGE, row)
    key = result.inserted_primary_key
    assert key is not None  # a single-row INSERT always reports its key
    return ChangefeedEntry(key[0], now, gun, version, sha256, category)
