"""ChangeSignals (server/storage/signals.py) always agrees with MetadataStore.signal: after
writes through this process's pool, through another engine (another worker or server) and, on
SQLite, through another process; the SQLite shortcut (no query while data_version is unchanged)
never hides a commit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from tufnotary.server.storage import Stores
from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.metadata import NewFile
from tufnotary.server.storage.signals import ChangeSignals

GUN = "example.com/signals"


def timestamp(version: int) -> NewFile:
    return NewFile("timestamp", version, f"timestamp {version}".encode())


def test_signals_follow_every_write(store: Stores, migrated_url: str) -> None:
    signals = ChangeSignals(store.database, store.metadata)
    other = Stores.from_url(migrated_url)  # another worker or server on the same database
    try:
        assert signals.read(GUN) is None
        assert signals.read(GUN) is None  # remembered on SQLite: still exact
        store.metadata.update_many(GUN, [timestamp(1)])
        first = signals.read(GUN)
        assert first is not None and first == store.metadata.signal(GUN)
        assert signals.read(GUN) == first
        other.metadata.update_many(GUN, [timestamp(2)])
        second = signals.read(GUN)
        assert second == other.metadata.signal(GUN) and second != first
        other.metadata.delete_gun(GUN)
        assert signals.read(GUN) is None
        store.metadata.update_many(GUN, [timestamp(3)])
        assert signals.read(GUN) == store.metadata.signal(GUN) not in (None, first, second)
    finally:
        other.engine.dispose()


def test_sqlite_commit_by_another_process_is_seen(store: Stores, migrated_url: str) -> None:
    if not migrated_url.startswith("sqlite"):
        pytest.skip("the data_version shortcut is SQLite's")
    signals = ChangeSignals(store.database, store.metadata)
    store.metadata.update_many(GUN, [timestamp(1)])
    assert signals.read(GUN) is not None
    script = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
        "db.execute(\"DELETE FROM tuf_files WHERE role = 'timestamp'\"); db.commit()"
    )
    database = sa.make_url(migrated_url).database
    subprocess.run([sys.executable, "-c", script, database], check=True, timeout=30)
    assert signals.read(GUN) is None


def test_a_dropped_connection_fails_one_read_then_reconnects(
    store: Stores, migrated_url: str
) -> None:
    if not migrated_url.startswith("postgresql"):
        pytest.skip("PostgreSQL can drop a client's connections")
    signals = ChangeSignals(store.database, store.metadata)
    assert signals.read(GUN) is None
    admin = sa.create_engine(migrated_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    admin.dispose()
    with pytest.raises(StorageError):
        signals.read(GUN)
    store.metadata.update_many(GUN, [timestamp(1)])
    assert signals.read(GUN) == store.metadata.signal(GUN) is not None
