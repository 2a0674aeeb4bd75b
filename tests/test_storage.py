"""Stores and migrations on SQLite, PostgreSQL and MariaDB (spec 1.8, 2.9, 5.1)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tufnotary.server.migrate import downgrade, upgrade
from tufnotary.server.storage import Stores
from tufnotary.server.storage import engine as storage_engine
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.engine import StorageError, make_engine
from tufnotary.server.storage.keys import StoredKey, TokenKey
from tufnotary.server.storage.metadata import NewFile, StoredFile, VersionConflict
from tufnotary.server.storage.models import Base, ServerKeyRow, TufFileRow, columns

GUN = "example.com/team/app"
TABLES = {"tuf_files", "changefeed", "server_keys", "token_keys"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new(role: str, version: int, data: bytes | None = None) -> NewFile:
    return NewFile(role, version, f"{role} v{version}".encode() if data is None else data)


def newest(store: Stores, role: str) -> StoredFile:
    """The latest version of a role of GUN, which must exist."""
    file = store.metadata.latest(GUN, role)
    assert file is not None
    return file


def insert_timestamp(connection: sa.Connection, version: int, data: bytes) -> None:
    """A timestamp row of GUN written directly, as another writer's transaction would."""
    row = dict(gun=GUN, role="timestamp", version=version, sha256=sha256(data), data=data)
    connection.execute(sa.insert(TufFileRow).values(created_at=datetime.now(UTC), **row))


def versions(store: Stores, gun: str = GUN) -> dict[str, int | None]:
    """The latest version of every top-level role (None when absent)."""
    latest = {
        role: store.metadata.latest(gun, role)
        for role in ("root", "targets", "snapshot", "timestamp")
    }
    return {role: None if file is None else file.version for role, file in latest.items()}


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        assert set(sa.inspect(engine).get_table_names()) >= TABLES
        downgrade(engine)
        assert not set(sa.inspect(engine).get_table_names()) & TABLES
        upgrade(database_url)
        assert set(sa.inspect(engine).get_table_names()) >= TABLES
        store = Stores.on(engine)
        store.metadata.update_many(GUN, [new("root", 1)])
        assert store.metadata.latest(GUN, "root") is not None
    finally:
        engine.dispose()


def test_migration_matches_models(store: Stores) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_reads(store: Stores) -> None:
    before = datetime.now(UTC)
    store.metadata.update_many(GUN, [new("root", 1), new("targets", 1), new("targets", 2)])
    after = datetime.now(UTC)

    latest = newest(store, "targets")
    assert latest == StoredFile(
        GUN, "targets", 2, sha256(b"targets v2"), b"targets v2", latest.created_at
    )
    assert latest.created_at.tzinfo == UTC
    assert before <= latest.created_at <= after
    assert store.metadata.by_version(GUN, "targets", 1) == StoredFile(
        GUN, "targets", 1, sha256(b"targets v1"), b"targets v1", latest.created_at
    )
    assert store.metadata.by_checksum(
        GUN, "targets", sha256(b"targets v1")
    ) == store.metadata.by_version(GUN, "targets", 1)
    assert store.metadata.by_checksum(GUN, "root", sha256(b"targets v1")) is None
    assert store.metadata.by_checksum(GUN, "targets", sha256(b"targets v1").upper()) is None
    assert store.metadata.by_checksum(GUN, "targets", "ü" * 64) is None
    assert store.metadata.by_version(GUN, "targets", 3) is None
    assert store.metadata.latest(GUN, "snapshot") is None
    assert store.metadata.latest("example.com/team/other", "targets") is None


def test_conflict_rules_and_version_skipping(store: Stores) -> None:
    store.metadata.update_many(GUN, [new("targets", 3)])
    for batch in (
        [new("targets", 3, b"same version")],
        [new("targets", 2)],
        [new("targets", 4), new("targets", 2)],
        [new("targets", 5), new("targets", 5, b"duplicate in one batch")],
    ):
        with pytest.raises(VersionConflict):
            store.metadata.update_many(GUN, batch)
        assert versions(store)["targets"] == 3

    store.metadata.update_many(GUN, [new("targets", 7)])
    with pytest.raises(VersionConflict):
        store.metadata.update_many(GUN, [new("targets", 5)])
    store.metadata.update_many(GUN, [new("targets", 9), new("targets", 8)])
    assert [store.metadata.by_version(GUN, "targets", v) is not None for v in (3, 5, 7, 8, 9)] == [
        True,
        False,
        True,
        True,
        True,
    ]


def test_conflict_on_one_role_writes_nothing(store: Stores) -> None:
    roles = ("root", "targets", "snapshot", "timestamp")
    store.metadata.update_many(
        GUN, [new(role, 1) for role in roles], AuditEntry("a", "upload", GUN, {})
    )
    with pytest.raises(VersionConflict, match="root version 1 is stored, new is 1"):
        store.metadata.update_many(
            GUN,
            [new("targets", 2), new("snapshot", 2), new("timestamp", 2), new("root", 1, b"x")],
            AuditEntry("b", "upload", GUN, {}),
        )
    assert versions(store) == dict.fromkeys(roles, 1)
    assert [change.version for change in store.metadata.changes(None, 0, 100)] == [1]
    assert [record.actor for record in store.audit.records()] == ["a"]


def test_an_update_stores_its_rows_audit_and_changes_together(store: Stores) -> None:
    audit = AuditEntry("alice", "upload", GUN, {"stored": {"timestamp": 1}}, "::1", "req-1")
    files = [new("targets", 1), new("targets/a", 1), new("snapshot", 1), new("timestamp", 1)]
    changes = store.metadata.update_many(GUN, files, audit)
    stored = {role: newest(store, role) for role in ("targets", "targets/a", "snapshot")}
    assert {role: file.data for role, file in stored.items()} == {
        role: f"{role} v1".encode() for role in stored
    }
    (record,) = store.audit.records()
    assert (record.actor, record.action, record.gun, record.detail) == (
        "alice",
        "upload",
        GUN,
        {"stored": {"timestamp": 1}},
    )
    assert (record.address, record.request_id) == ("::1", "req-1")
    assert record.created_at == changes[0].created_at == stored["snapshot"].created_at
    assert store.metadata.changes(GUN, 0, 10) == changes


def test_timestamps_write_changes(store: Stores) -> None:
    changes = store.metadata.update_many(
        GUN, [new("root", 1), new("targets", 1), new("snapshot", 1), new("timestamp", 1)]
    )
    assert [(c.gun, c.version, c.sha256, c.category) for c in changes] == [
        (GUN, 1, sha256(b"timestamp v1"), "update")
    ]
    assert changes[0].created_at == newest(store, "timestamp").created_at
    assert store.metadata.changes(None, 0, 100) == changes
    assert store.metadata.update_many(GUN, [new("targets", 2), new("snapshot", 2)]) == []
    assert store.metadata.update_many(GUN, []) == []
    assert store.metadata.changes(None, 0, 100) == changes


def test_delete_gun_removes_exactly_that_gun(store: Stores) -> None:
    others = ("x/ab", "x/a/b", "X/A", "x/a ")
    for gun in ("x/a", *others):
        store.metadata.update_many(gun, [new("root", 1), new("timestamp", 1)])
    key = StoredKey("k" * 64, "x/a", "timestamp", "ecdsa", b"pub", b"priv", datetime.now(UTC), None)
    store.keys.add_key(key)

    assert store.metadata.delete_gun("x/a") == 2
    assert versions(store, "x/a") == dict.fromkeys(("root", "targets", "snapshot", "timestamp"))
    for gun in others:
        assert versions(store, gun)["root"] == 1
    changes = store.metadata.changes(None, 0, 100)
    assert len(changes) == 6
    assert (changes[-1].gun, changes[-1].version, changes[-1].sha256) == ("x/a", 0, "")
    assert changes[-1].category == "deletion"

    assert store.metadata.delete_gun("x/a") == 0
    assert store.metadata.delete_gun("never/published") == 0
    assert store.metadata.changes(None, 0, 100) == changes
    assert store.keys.get_key(key.key_id) == key
    store.metadata.update_many("x/a", [new("root", 1)])
    assert versions(store, "x/a")["root"] == 1


def test_changes_paging(store: Stores) -> None:
    for version in (1, 2, 3):
        store.metadata.update_many("g/one", [new("timestamp", version)])
        store.metadata.update_many("g/two", [new("timestamp", version)])
    every = store.metadata.changes(None, 0, 100)
    ids = [change.id for change in every]
    assert ids == sorted(set(ids)) and len(ids) == 6
    assert [(c.gun, c.version) for c in every] == [
        ("g/one", 1),
        ("g/two", 1),
        ("g/one", 2),
        ("g/two", 2),
        ("g/one", 3),
        ("g/two", 3),
    ]

    def page(gun: str | None, change_id: int, records: int) -> list[int]:
        return [change.id for change in store.metadata.changes(gun, change_id, records)]

    assert page(None, 0, 2) == ids[:2]
    assert page(None, ids[1], 2) == ids[2:4]
    assert page(None, ids[5], 2) == []
    assert page(None, -1, 2) == ids[4:]
    assert page(None, -1, -2) == ids[4:]
    assert page(None, 0, -2) == ids[4:]
    assert page(None, ids[4], -2) == ids[2:4]
    assert page(None, ids[0], -5) == []
    assert page(None, 0, 0) == []
    assert page("g/two", 0, 100) == ids[1::2]
    assert page("g/two", ids[1], 1) == [ids[3]]
    assert page("g/two", -1, 1) == [ids[5]]
    assert page("g/two", ids[5], -5) == [ids[1], ids[3]]
    assert page("g/tw", 0, 100) == []
    assert page("G/TWO", 0, 100) == []


def test_five_mib_blob_round_trips(store: Stores) -> None:
    data = os.urandom(5 * 1024 * 1024)
    store.metadata.update_many(GUN, [NewFile("targets", 1, data)])
    stored = store.metadata.latest(GUN, "targets")
    assert stored is not None
    assert stored.data == data
    assert stored.sha256 == sha256(data)
    assert store.metadata.by_checksum(GUN, "targets", sha256(data)) == stored


def test_guns_are_exact_and_unicode(store: Stores) -> None:
    guns = ("example.com/App", "example.com/app", "example.com/app ", "example.com/ünïcødé")
    for gun in guns:
        store.metadata.update_many(gun, [NewFile("root", 1, gun.encode()), new("timestamp", 1)])
    for gun in guns:
        stored = store.metadata.latest(gun, "root")
        assert stored is not None
        assert (stored.gun, stored.data) == (gun, gun.encode())
        assert [change.gun for change in store.metadata.changes(gun, 0, 100)] == [gun]
    assert store.metadata.latest("EXAMPLE.COM/APP", "root") is None
    assert store.metadata.latest("example.com/app", "Root") is None
    assert store.metadata.latest("example.com/unicode", "root") is None


def test_concurrent_writers_exactly_one_wins(migrated_url: str, store: Stores) -> None:
    store.metadata.update_many(GUN, [new("snapshot", 1), new("timestamp", 1)])
    writers = [Stores.from_url(migrated_url) for _ in range(8)]
    barrier = threading.Barrier(len(writers), timeout=30)

    def publish(index: int) -> VersionConflict | None:
        writers[index].metadata.ping()  # connect before the race
        barrier.wait()
        batch = [
            new(role, 2, f"{role} from {index}".encode()) for role in ("snapshot", "timestamp")
        ]
        batch.append(new(f"targets/w{index}", 1))  # clashes with nothing: stored only if won
        audit = AuditEntry(f"writer {index}", "upload", GUN, {})
        try:
            writers[index].metadata.update_many(GUN, batch, audit)
        except VersionConflict as conflict:
            return conflict
        return None

    try:
        with ThreadPoolExecutor(len(writers)) as pool:
            outcomes = list(pool.map(publish, range(len(writers))))
    finally:
        for writer in writers:
            writer.engine.dispose()

    winners = [index for index, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1
    assert sum(isinstance(outcome, VersionConflict) for outcome in outcomes) == 7
    for role in ("snapshot", "timestamp"):
        assert newest(store, role).data == f"{role} from {winners[0]}".encode()
    assert [change.version for change in store.metadata.changes(GUN, 0, 100)] == [1, 2]
    delegated = [i for i in range(8) if store.metadata.latest(GUN, f"targets/w{i}") is not None]
    assert delegated == winners
    assert [record.actor for record in store.audit.records()] == [f"writer {winners[0]}"]


def test_unique_index_stops_a_racing_writer(migrated_url: str, store: Stores) -> None:
    store.metadata.update_many(GUN, [new("timestamp", 1)])
    rival = Stores.from_url(migrated_url)
    outcomes: list[StorageError | None] = []

    def publish() -> None:
        try:
            store.metadata.update_many(GUN, [new("timestamp", 2, b"loser")])
        except StorageError as error:
            outcomes.append(error)
        else:
            outcomes.append(None)

    try:
        with rival.engine.begin() as connection:
            insert_timestamp(connection, 2, b"winner")
            thread = threading.Thread(target=publish)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waits on the uncommitted row (SQLite: on the write lock)
        thread.join(30)
    finally:
        rival.engine.dispose()

    assert len(outcomes) == 1
    assert isinstance(outcomes[0], VersionConflict)
    if store.engine.dialect.name != "sqlite":  # SQLite writers are serialised at BEGIN
        cause = outcomes[0].__cause__  # PostgreSQL: the DB-API's own (no SQLAlchemy around it)
        unique = store.engine.dialect.loaded_dbapi.IntegrityError
        assert isinstance(getattr(cause, "orig", cause), unique)
    assert newest(store, "timestamp").data == b"winner"
    assert [change.version for change in store.metadata.changes(GUN, 0, 100)] == [1]


def test_server_keys(store: Stores) -> None:
    start = datetime(2024, 6, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))

    def key(name: str, seconds: int, **changes: str) -> StoredKey:
        fields = {"gun": GUN, "role": "timestamp", "algorithm": "ecdsa", **changes}
        return StoredKey(
            key_id=name * 64,
            public=f"public {name}".encode(),
            private=b"\x00encrypted " + name.encode(),
            created_at=start + timedelta(seconds=seconds),
            last_used=None,
            **fields,
        )

    older, newer = key("a", 0), key("b", 1)
    ed25519, snapshot, other_gun = (
        key("c", 2, algorithm="ed25519"),
        key("d", 3, role="snapshot"),
        key("e", 4, gun="example.com/other"),
    )
    for stored in (newer, older, ed25519, snapshot, other_gun):
        store.keys.add_key(stored)

    fetched = store.keys.get_key(older.key_id)
    assert fetched is not None
    assert fetched == older and fetched.created_at.tzinfo == UTC
    assert store.keys.get_key("f" * 64) is None
    assert store.keys.keys_for(GUN, "timestamp") == [older, newer, ed25519]
    assert store.keys.keys_for(GUN, "snapshot") == [snapshot]
    assert store.keys.unused_key(GUN, "timestamp", "ecdsa") == newer

    before = datetime.now(UTC)
    store.keys.mark_key_used(newer.key_id)
    used = store.keys.get_key(newer.key_id)
    assert used is not None and used.last_used is not None
    assert before <= used.last_used <= datetime.now(UTC)
    assert store.keys.unused_key(GUN, "timestamp", "ecdsa") == older
    store.keys.mark_key_used(newer.key_id)
    assert store.keys.get_key(newer.key_id) == used

    store.keys.mark_key_used(older.key_id)
    assert store.keys.unused_key(GUN, "timestamp", "ecdsa") is None
    assert store.keys.unused_key(GUN, "timestamp", "ed25519") == ed25519
    with pytest.raises(StorageError):
        store.keys.add_key(older)

    # a key registered by URI is handed out whatever its algorithm; the audit goes with it
    registered = dataclasses.replace(
        key("f", 5, algorithm="rsa"), private=None, uri="awskms:arn:aws:kms:key/f"
    )
    store.keys.add_key(registered, AuditEntry("cli", "key-add", GUN, {"key_id": "f" * 64}))
    assert store.keys.unused_key(GUN, "timestamp", "ecdsa") == registered
    assert [record.action for record in store.audit.records(gun=GUN)] == ["key-add"]
    listed = [stored.key_id for stored in store.keys.all_keys(GUN)]
    assert listed == [k.key_id for k in (snapshot, older, newer, ed25519, registered)]
    assert store.keys.all_keys() == [other_gun, *store.keys.all_keys(GUN)]  # by GUN


def test_token_keys_move_to_their_table_and_back(database_url: str) -> None:
    """Revision 0005 moves the realm's token-signing keys (GUN '', role 'token-signing') from
    server_keys to token_keys with their bytes unchanged; its downgrade moves them back."""
    created = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    token = TokenKey("t" * 64, "ecdsa", b"token public", b"\x00token private", created)
    server_key = StoredKey("s" * 64, GUN, "timestamp", "ecdsa", b"pub", b"priv", created, None)
    as_row = {**dataclasses.asdict(token), "gun": "", "role": "token-signing", "last_used": None}
    engine = make_engine(database_url)
    stores = Stores.on(engine)
    try:
        upgrade(engine, "0004")
        with engine.begin() as connection:
            before_uri = {k: v for k, v in dataclasses.asdict(server_key).items() if k != "uri"}
            for row in (as_row, before_uri):
                connection.execute(sa.insert(ServerKeyRow).values(**row))
        upgrade(engine)
        assert stores.token_keys.all() == [token]
        assert stores.keys.get_key(token.key_id) is None
        assert stores.keys.get_key(server_key.key_id) == server_key
        assert stores.keys.newest_keys() == [server_key, token.as_stored()]

        downgrade(engine, "0004")
        assert "token_keys" not in sa.inspect(engine).get_table_names()
        before_uris = [c for c in columns(ServerKeyRow, StoredKey) if c.key != "uri"]  # 0006
        with engine.connect() as connection:
            query = sa.select(*before_uris).order_by(ServerKeyRow.key_id)
            rows = [StoredKey(**row._mapping) for row in connection.execute(query)]
        assert rows == [server_key, StoredKey(**as_row)]
    finally:
        engine.dispose()


def test_token_keys(store: Stores) -> None:
    created = datetime.now(UTC)
    older, newer = (
        TokenKey(name * 64, "ecdsa", b"public", name.encode(), created + timedelta(seconds=i))
        for i, name in enumerate("ba")
    )
    store.token_keys.add(newer)
    store.token_keys.add(older)
    assert store.token_keys.all() == [older, newer]
    assert store.token_keys.get(newer.key_id) == newer
    assert store.keys.newest_keys() == [newer.as_stored()]
    retire = AuditEntry("admin", "token-key-retire", None, {"key_id": older.key_id})
    assert store.token_keys.delete(older.key_id, retire)
    assert not store.token_keys.delete(older.key_id, retire)
    assert store.token_keys.get(older.key_id) is None
    assert [record.action for record in store.audit.records()] == ["token-key-retire"]
    with pytest.raises(StorageError):
        store.token_keys.add(newer)


def test_ping_needs_the_schema(database_url: str) -> None:
    store = Stores.from_url(database_url)
    try:
        with pytest.raises(StorageError, match="ping failed"):
            store.metadata.ping()
        upgrade(store.engine)
        store.metadata.ping()
    finally:
        store.engine.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://user@db.example/notary", "postgresql+psycopg"),
        ("postgresql+psycopg://user@db.example/notary", "postgresql+psycopg"),
        ("mysql://user@db.example/notary", "mysql+pymysql"),
        ("mariadb://user@db.example/notary", "mariadb+pymysql"),
    ],
)
def test_make_engine_picks_drivers(url: str, driver: str) -> None:
    engine = make_engine(url)
    assert engine.url.drivername == driver
    if driver.endswith("pymysql"):
        assert engine.url.query["charset"] == "utf8mb4"


def test_sqlite_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'settings.db'}")
    try:
        with engine.connect() as connection:
            pragmas = [
                connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            ]
        assert pragmas == ["wal", 30000, 1]
    finally:
        engine.dispose()


def test_rate_events_count_until_they_expire_and_are_then_deleted(store: Stores) -> None:
    now = datetime.now(UTC)
    later = now + timedelta(seconds=60)
    store.rate_events.add(["login-user:alice", "login-address:192.0.2.1"], now, later)
    store.rate_events.add(["login-user:alice"], now, later + timedelta(seconds=1))
    store.rate_events.add(["login-user:ALICE"], now, later)  # names are exact
    newest = store.rate_events.recent("login-user:alice", now, 10)
    assert newest == [later + timedelta(seconds=1), later]
    assert store.rate_events.recent("login-user:alice", now, 1) == [later + timedelta(seconds=1)]
    assert store.rate_events.recent("login-user:alice", later, 10) == [later + timedelta(seconds=1)]
    # the next event deletes every expired one: the table holds one window at most
    store.rate_events.add(
        ["key-create:192.0.2.1"], later + timedelta(seconds=2), later + timedelta(hours=1)
    )
    with store.engine.connect() as connection:
        left = connection.execute(sa.text("SELECT COUNT(*) FROM rate_events")).scalar()
    assert left == 1


def test_dropped_connections_are_replaced(
    store: Stores, migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle pooled connection is pinged and replaced; one used just before the database
    dropped it fails a single call, then the pool reconnects."""
    if not migrated_url.startswith("postgresql"):
        pytest.skip("PostgreSQL can drop a client's connections")
    admin = sa.create_engine(migrated_url, isolation_level="AUTOCOMMIT")

    def drop_connections() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    assert store.metadata.signal("x") is None
    drop_connections()
    monkeypatch.setattr(storage_engine, "PING_AFTER_IDLE", 0.0)
    assert store.metadata.signal("x") is None
    drop_connections()
    monkeypatch.setattr(storage_engine, "PING_AFTER_IDLE", 3600.0)
    with pytest.raises(StorageError):
        store.metadata.signal("x")
    assert store.metadata.signal("x") is None
    admin.dispose()


def test_add_versions_adds_only_what_is_missing(store: Stores) -> None:
    first = [new("root", 1), new("timestamp", 2), new("timestamp", 1), new("targets", 4)]
    added = store.metadata.add_versions(GUN, first)
    assert [(f.role, f.version) for f in added] == [
        ("root", 1),
        ("targets", 4),
        ("timestamp", 1),
        ("timestamp", 2),
    ]
    assert [c.version for c in store.metadata.changes(GUN, 0, 10)] == [1, 2]
    # Re-running adds nothing; new versions (also below the newest stored) are added.
    assert store.metadata.add_versions(GUN, first) == []
    assert store.metadata.add_versions(GUN, [new("targets", 4), new("targets", 3)]) == [
        new("targets", 3)
    ]
    assert versions(store) == {"root": 1, "targets": 4, "snapshot": None, "timestamp": 2}


def test_add_versions_refuses_other_history_and_writes_nothing(store: Stores) -> None:
    store.metadata.add_versions(GUN, [new("root", 1)])
    with pytest.raises(VersionConflict, match="root version 1 is stored with other bytes"):
        store.metadata.add_versions(GUN, [new("targets", 1), new("root", 1, b"other")])
    assert versions(store)["targets"] is None
    with pytest.raises(VersionConflict):
        store.metadata.add_versions(GUN, [new("targets", 1), new("targets", 1)])


def test_new_files_carry_their_checksum() -> None:
    assert new("root", 1).sha256 == sha256(b"root v1")
    assert new("root", 1) == new("root", 1) != new("root", 1, b"other")


def test_commit_callbacks_follow_every_stored_update(store: Stores) -> None:
    """The read caches and change signals learn of a write through on_commit: it runs once
    the update is committed, before update_many returns."""
    seen: list[tuple[int, str] | None] = []
    store.database.on_commit(lambda: seen.append(store.metadata.signal(GUN)))
    store.metadata.update_many(GUN, [new("root", 1), new("timestamp", 1)])
    assert seen == [store.metadata.signal(GUN)] != [None]
    store.metadata.update_many(GUN, [new("timestamp", 2)])
    assert seen[1:] == [store.metadata.signal(GUN)] != seen[:1]


def test_a_failed_update_reports_its_cause_and_writes_nothing(store: Stores) -> None:
    if store.engine.dialect.name == "sqlite":
        pytest.skip("SQLite does not enforce the length of a VARCHAR")
    long_gun = "example.com/" + "x" * 1100  # longer than the column, also in bytes on MariaDB
    with pytest.raises(StorageError, match=f"^update of {long_gun} failed: ") as failure:
        store.metadata.update_many(long_gun, [new("root", 1), new("timestamp", 1)])
    assert not isinstance(failure.value, VersionConflict)
    assert "\n" not in str(failure.value)
    store.metadata.update_many(GUN, [new("timestamp", 1)])  # the pool serves another connection
    assert store.metadata.changes(None, 0, 10)[0].gun == GUN


def test_an_update_on_a_dropped_connection_fails_once(
    store: Stores, migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write on a pooled connection the database dropped fails alone, with a StorageError;
    that connection is discarded, not returned to the pool: the next write succeeds."""
    if not migrated_url.startswith("postgresql"):
        pytest.skip("PostgreSQL can drop a client's connections")
    admin = sa.create_engine(migrated_url, isolation_level="AUTOCOMMIT")
    monkeypatch.setattr(storage_engine, "PING_AFTER_IDLE", 3600.0)
    store.metadata.update_many(GUN, [new("timestamp", 1)])
    with admin.connect() as connection:
        connection.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(StorageError, match=f"^update of {GUN} failed: ") as failure:
        store.metadata.update_many(GUN, [new("timestamp", 2)])
    assert not isinstance(failure.value, VersionConflict)
    store.metadata.update_many(GUN, [new("timestamp", 2)])
    assert [change.version for change in store.metadata.changes(GUN, 0, 10)] == [1, 2]
    admin.dispose()


def test_update_times_are_utc_in_any_session_time_zone(database_url: str) -> None:
    """Stored times are UTC whatever the database session's time zone (PostgreSQL: the one
    statement of an update binds its time as UTC, as SQLAlchemy's types do)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the session time zone is PostgreSQL's")
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    name = sa.make_url(database_url).database
    with admin.connect() as connection:
        connection.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Tokyo'")
    admin.dispose()
    upgrade(database_url)
    store = Stores.from_url(database_url)
    try:
        before = datetime.now(UTC)
        audit = AuditEntry("alice", "upload", GUN, {}, "::1", "req-1")
        (change,) = store.metadata.update_many(GUN, [new("timestamp", 1)], audit)
        after = datetime.now(UTC)
        assert before <= newest(store, "timestamp").created_at == change.created_at <= after
        assert before <= store.audit.records()[0].created_at <= after
        assert before <= store.metadata.changes(GUN, 0, 1)[0].created_at <= after
    finally:
        store.engine.dispose()


def test_migration_0009_compresses_new_metadata_with_lz4(database_url: str) -> None:
    """On PostgreSQL built with lz4, large metadata files are stored lz4-compressed from
    revision 0009 on; its downgrade restores the server's default for new ones."""
    if not database_url.startswith("postgresql"):
        pytest.skip("column compression is PostgreSQL's")
    engine = make_engine(database_url)
    store = Stores.on(engine)
    large = b"".join(b'"sha256:%064d": {"length": %d},' % (i, i) for i in range(2000))

    def stored_with(version: int) -> tuple[str, bytes]:
        query = "SELECT pg_column_compression(data), data FROM tuf_files WHERE version = %(v)s"
        with engine.connect() as connection:
            method, data = connection.exec_driver_sql(query, {"v": version}).one()
        return method, data

    try:
        upgrade(engine)
        with engine.connect() as connection:
            methods = connection.exec_driver_sql(
                "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
            ).scalar()
            default = connection.exec_driver_sql("SHOW default_toast_compression").scalar()
        if methods is None or "lz4" not in methods:
            pytest.skip("needs PostgreSQL 14+ built with lz4")
        store.metadata.update_many(GUN, [new("targets", 1, large)])
        assert stored_with(1) == ("lz4", large)
        downgrade(engine, "0008")
        store.metadata.update_many(GUN, [new("targets", 2, large)])
        assert stored_with(2) == (default, large)
        assert stored_with(1) == ("lz4", large)  # stored values keep their compression
        upgrade(engine)
        store.metadata.update_many(GUN, [new("targets", 3, large)])
        assert stored_with(3) == ("lz4", large)
    finally:
        engine.dispose()


def test_an_update_needs_the_timestamp_it_was_made_from(store: Stores) -> None:
    store.metadata.update_many(GUN, [new("root", 1), new("timestamp", 1)])
    base = newest(store, "timestamp").sha256
    store.metadata.delete_gun(GUN)
    with pytest.raises(VersionConflict, match="timestamp it was made from"):
        store.metadata.update_many(GUN, [new("targets", 2), new("timestamp", 2)], base=base)
    assert set(versions(store).values()) == {None}
    store.metadata.update_many(GUN, [new("root", 1), new("timestamp", 1, b"another history")])
    with pytest.raises(VersionConflict, match="timestamp it was made from"):
        store.metadata.update_many(GUN, [new("targets", 2), new("timestamp", 2)], base=base)
    again = newest(store, "timestamp").sha256
    store.metadata.update_many(GUN, [new("targets", 2), new("timestamp", 2)], base=again)
    assert versions(store) == {"root": 1, "targets": 2, "snapshot": None, "timestamp": 2}


def _rival_waits_for(
    rival: Stores, action: Callable[[sa.Connection], None], wait: Callable[[], None]
) -> None:
    """Run ``action`` in an open transaction of ``rival``, then ``wait`` in a thread, which
    must block until the transaction commits; re-raise what the thread raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            wait()
        except BaseException as error:
            errors.append(error)

    try:
        with rival.engine.begin() as connection:
            action(connection)
            thread = threading.Thread(target=run)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # blocked by the open transaction
        thread.join(30)
    finally:
        rival.engine.dispose()
    if errors:
        raise errors[0]


def test_a_deletion_waits_for_an_update_and_removes_its_rows(
    migrated_url: str, store: Stores
) -> None:
    store.metadata.update_many(GUN, [new("root", 1), new("timestamp", 1)])
    base = newest(store, "timestamp")

    def update_in_flight(connection: sa.Connection) -> None:  # what update_many holds
        lock = sa.select(TufFileRow.id).where(TufFileRow.id == base_id(connection, base))
        connection.execute(lock.with_for_update(read=True, key_share=True)).all()
        insert_timestamp(connection, 2, b"t2")

    _rival_waits_for(
        Stores.from_url(migrated_url), update_in_flight, lambda: store.metadata.delete_gun(GUN)
    )
    assert set(versions(store).values()) == {None}


def test_an_update_waits_for_a_deletion_and_then_stores_nothing(
    migrated_url: str, store: Stores
) -> None:
    store.metadata.update_many(GUN, [new("root", 1), new("timestamp", 1)])
    base = newest(store, "timestamp").sha256

    def deletion_in_flight(connection: sa.Connection) -> None:  # what delete_gun holds
        timestamps = sa.select(TufFileRow.id).where(
            TufFileRow.gun == GUN, TufFileRow.role == "timestamp"
        )
        connection.execute(timestamps.with_for_update()).all()
        connection.execute(sa.delete(TufFileRow).where(TufFileRow.gun == GUN))

    def update() -> None:
        store.metadata.update_many(GUN, [new("targets", 2), new("timestamp", 2)], base=base)

    with pytest.raises(VersionConflict, match="timestamp it was made from"):
        _rival_waits_for(Stores.from_url(migrated_url), deletion_in_flight, update)
    assert set(versions(store).values()) == {None}


def base_id(connection: sa.Connection, file: StoredFile) -> int:
    found = connection.execute(
        sa.select(TufFileRow.id).where(
            TufFileRow.gun == file.gun,
            TufFileRow.role == file.role,
            TufFileRow.sha256 == file.sha256,
        )
    ).scalar_one()
    return int(found)
