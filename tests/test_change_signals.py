"""ChangeSignals (server/storage/signals.py) always agrees with MetadataStore.signal: after
writes through this process's pool, through another engine (another worker or server) and, on
SQLite, through another process; the SQLite shortcut (no query while data_version is unchanged)
never hides a commit. On PostgreSQL, migration 0008's triggers notify every write that may change
a signal, and the LISTEN shortcut (server/storage/listener.py) forgets what they name, never
keeps an answer a notification may have overtaken, and falls back to queries without them."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from support.databases import scratch_database
from tufnotary.server.migrate import downgrade, upgrade
from tufnotary.server.storage import Stores, signals
from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.metadata import NewFile
from tufnotary.server.storage.signals import ChangeSignals, Signal

GUN = "example.com/signals"
OTHER_GUN = "example.com/other"
FOREVER = 3600.0  # a staleness bound no test reaches: only notifications show changes
DEADLINE = 10.0  # seconds a notification may take to arrive on a busy machine


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


# -- PostgreSQL: LISTEN/NOTIFY -------------------------------------------------------------------


@pytest.fixture
def postgresql_url(postgresql_admin: tuple[sa.Connection, sa.URL]) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database."""
    with scratch_database(*postgresql_admin) as database:
        upgrade(database)
        yield database


@pytest.fixture
def stores(postgresql_url: str) -> Iterator[tuple[Stores, Stores]]:
    """The stores of this server, and of another worker or server, on one PostgreSQL."""
    ours, theirs = Stores.from_url(postgresql_url), Stores.from_url(postgresql_url)
    yield ours, theirs
    ours.engine.dispose()
    theirs.engine.dispose()


class Statements:
    """Counts the statements a ChangeSignals sends on its dedicated connection."""

    def __init__(self, reader: ChangeSignals) -> None:
        self.count = 0
        self.connection: Any = reader._connection
        self.original = self.connection.execute
        self.connection.execute = self._execute

    def _execute(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self.original(*args, **kwargs)


def listening(store: Stores, staleness: float = FOREVER) -> tuple[ChangeSignals, Statements]:
    """A ChangeSignals that has remembered GUN's signal, and its statements from then on."""
    reader = ChangeSignals(store.database, store.metadata, staleness)
    assert reader.read(GUN) == store.metadata.signal(GUN)
    return reader, Statements(reader)


def seen(reader: ChangeSignals, expected: Signal, gun: str = GUN) -> None:
    """Reads of ``gun`` reach ``expected`` before DEADLINE (a notification is on its way)."""
    deadline = time.monotonic() + DEADLINE
    while (signal := reader.read(gun)) != expected:
        assert time.monotonic() < deadline, f"still {signal}, expected {expected}"
        time.sleep(0.005)


def test_notified_writes_are_seen_and_the_rest_needs_no_query(
    stores: tuple[Stores, Stores],
) -> None:
    ours, theirs = stores
    theirs.metadata.update_many(GUN, [timestamp(1)])
    reader, statements = listening(ours)
    assert [reader.read(GUN) for _ in range(50)] == [ours.metadata.signal(GUN)] * 50
    assert statements.count == 0
    writes: list[Callable[[], Any]] = [
        lambda: theirs.metadata.update_many(GUN, [timestamp(2)]),  # publish, re-sign, rotation
        lambda: theirs.metadata.add_versions(GUN, [timestamp(5), timestamp(4)]),  # import
        lambda: theirs.metadata.update_many(GUN, [NewFile("targets", 1, b"t")]),  # no signal
        lambda: theirs.metadata.delete_gun(GUN),
        lambda: theirs.metadata.update_many(GUN, [timestamp(1)]),  # published anew
    ]
    for write in writes:
        statements.count = 0
        write()
        seen(reader, theirs.metadata.signal(GUN))
        assert reader.read(GUN) == theirs.metadata.signal(GUN)
        assert statements.count <= 1  # the query after the notification, then remembered


def test_writes_of_this_process_are_seen_at_once(stores: tuple[Stores, Stores]) -> None:
    """A commit through the reader's own database forgets every signal before it returns."""
    ours, _ = stores
    reader, _ = listening(ours)
    writes: list[Callable[[], Any]] = [
        lambda: ours.metadata.update_many(GUN, [timestamp(1)]),
        lambda: ours.metadata.delete_gun(GUN),
        lambda: ours.metadata.add_versions(GUN, [timestamp(2)]),
    ]
    for write in writes:
        assert reader.read(GUN) == ours.metadata.signal(GUN)  # remembered
        write()
        assert GUN not in reader._known  # forgotten by the commit, before any notification
        assert reader.read(GUN) == ours.metadata.signal(GUN)


def test_pruning_and_other_statements_are_notified(stores: tuple[Stores, Stores]) -> None:
    ours, theirs = stores
    theirs.metadata.update_many(GUN, [timestamp(1), timestamp(2)])
    theirs.metadata.update_many(OTHER_GUN, [timestamp(1)])
    reader, _ = listening(ours)
    assert reader.read(OTHER_GUN) is not None
    with theirs.engine.begin() as connection:  # as `prune` removes versions, and by hand
        connection.exec_driver_sql(
            f"DELETE FROM tuf_files WHERE gun = '{GUN}' AND role = 'timestamp' AND version = 2"
        )
    seen(reader, theirs.metadata.signal(GUN))
    with theirs.engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE tuf_files SET sha256 = 'x' WHERE gun = '{OTHER_GUN}'")
    seen(reader, theirs.metadata.signal(OTHER_GUN), OTHER_GUN)
    with theirs.engine.begin() as connection:
        connection.exec_driver_sql("TRUNCATE tuf_files")
    seen(reader, None)
    seen(reader, None, OTHER_GUN)


def test_a_notification_during_the_query_keeps_its_answer_unremembered(
    stores: tuple[Stores, Stores],
) -> None:
    """A write commits while the query runs, after its snapshot: the answer is old, and its
    notification arrives before the answer is returned; it must not be remembered."""
    ours, theirs = stores
    theirs.metadata.update_many(GUN, [timestamp(1)])
    reader = ChangeSignals(ours.database, ours.metadata, FOREVER)
    reader.read(OTHER_GUN)  # connected and listening; GUN not remembered
    statements = Statements(reader)
    old = theirs.metadata.signal(GUN)

    def racing(*args: Any, **kwargs: Any) -> Any:
        answer = statements.original(*args, **kwargs)  # the old signal
        theirs.metadata.update_many(GUN, [timestamp(2)])
        statements.original("SELECT 1")  # delivers the notification, still within this read
        return answer

    statements.connection.execute = racing
    assert reader.read(GUN) == old
    statements.connection.execute = statements.original
    assert reader.read(GUN) == theirs.metadata.signal(GUN) != old


def test_a_killed_listener_falls_back_to_queries_and_recovers(
    stores: tuple[Stores, Stores], postgresql_url: str
) -> None:
    ours, theirs = stores
    theirs.metadata.update_many(GUN, [timestamp(1)])
    reader, statements = listening(ours)
    pid = statements.connection.info.backend_pid
    admin = sa.create_engine(postgresql_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 10000)")
    admin.dispose()
    deadline = time.monotonic() + DEADLINE
    with pytest.raises(StorageError):  # the closed connection is noticed, not a stale answer
        while time.monotonic() < deadline:
            assert reader.read(GUN) == ours.metadata.signal(GUN)  # nothing written yet
            time.sleep(0.005)
    theirs.metadata.update_many(GUN, [timestamp(2)])
    assert reader.read(GUN) == theirs.metadata.signal(GUN)  # a new connection, queried
    statements = Statements(reader)
    assert reader.read(GUN) == theirs.metadata.signal(GUN)
    assert statements.count == 0  # remembered again: the new connection listens
    theirs.metadata.update_many(GUN, [timestamp(3)])
    seen(reader, theirs.metadata.signal(GUN))


def test_a_listener_no_request_reads_still_takes_its_notifications(
    stores: tuple[Stores, Stores], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL keeps each notification until every listener took it: a worker that serves no
    reads drains its listener in the background instead of letting the queue fill."""
    monkeypatch.setattr(signals, "DRAIN_INTERVAL", 0.02)
    ours, theirs = stores
    theirs.metadata.update_many(GUN, [timestamp(1)])
    reader, _ = listening(ours)
    assert GUN in reader._known
    theirs.metadata.update_many(GUN, [timestamp(2)])
    deadline = time.monotonic() + DEADLINE
    while GUN in reader._known:  # forgotten by the drain: no read is made here
        assert time.monotonic() < deadline, "the notification was never taken"
        time.sleep(0.01)
    assert reader.read(GUN) == theirs.metadata.signal(GUN)


def test_staleness_bounds_what_is_remembered(stores: tuple[Stores, Stores]) -> None:
    """A remembered signal is answered only within ``staleness`` of the last query; then a
    query runs, which sees every commit (notified or not)."""
    ours, _ = stores
    reader, statements = listening(ours, staleness=0.05)
    time.sleep(0.05)
    assert reader.read(GUN) == ours.metadata.signal(GUN)
    assert statements.count == 1


def test_without_the_triggers_every_read_queries(
    stores: tuple[Stores, Stores], postgresql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, theirs = stores
    monkeypatch.setattr(signals, "LISTEN_RETRY", 0.0)
    downgrade(postgresql_url, "0007")
    reader, statements = listening(ours)
    theirs.metadata.update_many(GUN, [timestamp(1)])  # not notified: seen by the next query
    assert reader.read(GUN) == theirs.metadata.signal(GUN) is not None
    assert statements.count >= 1
    upgrade(postgresql_url)
    reader.read(GUN)  # listens again (LISTEN_RETRY passed)
    statements.count = 0
    assert reader.read(GUN) == theirs.metadata.signal(GUN)
    assert statements.count == 0


def test_migration_0008_notifies_and_downgrades(postgresql_url: str) -> None:
    """The triggers notify a GUN per statement that inserts its timestamp or deletes its rows,
    nothing for other inserts, '' for UPDATE and TRUNCATE; the downgrade removes them."""
    store = Stores.from_url(postgresql_url)
    listener = psycopg.connect(postgresql_url, autocommit=True)
    try:
        listener.execute("LISTEN tufnotary_signal")

        def notified() -> list[str]:
            listener.execute("SELECT 1")  # delivers every notification committed before it
            return [notify.payload for notify in listener.notifies(timeout=0)]

        store.metadata.update_many(GUN, [NewFile("root", 1, b"r"), timestamp(1)])
        store.metadata.add_versions(GUN, [timestamp(3), timestamp(2)])
        assert notified() == [GUN, GUN]  # one per transaction and GUN
        store.metadata.update_many(GUN, [NewFile("targets", 1, b"t")])
        assert notified() == []
        store.metadata.update_many(OTHER_GUN, [timestamp(1)])
        store.metadata.delete_gun(GUN)
        assert notified() == [OTHER_GUN, GUN]
        with store.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE tuf_files SET data = data")
            connection.exec_driver_sql("TRUNCATE tuf_files")
        assert notified() == [""]
        downgrade(postgresql_url, "0007")
        store.metadata.update_many(GUN, [timestamp(1)])
        assert notified() == []
        upgrade(postgresql_url)
        store.metadata.delete_gun(GUN)
        assert notified() == [GUN]
    finally:
        listener.close()
        store.engine.dispose()
