"""Re-signing ahead of expiry (`tufnotary-server resign`, the optional thread in `serve`) on
SQLite, PostgreSQL and MariaDB: what is due is re-signed and audited, what the server cannot
sign is reported, the soonest expiries reach /metrics, and one runner at a time holds the lock
across processes."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from support.api import Server
from support.server import free_port
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS, TIMESTAMP, Metadata, Timestamp
from tufnotary.metadata.verify import verify_threshold
from tufnotary.server import resign
from tufnotary.server.cli import main
from tufnotary.server.context import server_context
from tufnotary.server.expirygauge import RECORD_AGE, SOONEST_EXPIRY
from tufnotary.server.service import Requester, TrustService
from tufnotary.server.storage.engine import make_engine
from tufnotary.server.storage.expiry import ExpiryStore
from tufnotary.server.storage.runlock import exclusive

SERVER_SNAPSHOT = "example.com/team/server-snapshot"
CLIENT_SNAPSHOT = "example.com/team/client-snapshot"
PASSPHRASE = {"TUFNOTARY_KEY_PASSPHRASE": "test passphrase"}


def _server(tmp_path: Path, database_url: str, **settings: int) -> Server:
    server = Server.start(tmp_path / "data", database_url, **settings)
    server.new_repo(SERVER_SNAPSHOT, server_snapshot=True)
    server.new_repo(CLIENT_SNAPSHOT)
    return server


def _within(server: Server, margin: timedelta) -> TrustService:
    """The app's service with ``margin`` as its refresh margin (what the command builds)."""
    base = server_context(server.app).service
    return TrustService(base.store, base.audit, base.keys, base.limits, margin)


def _served_timestamp(server: Server, gun: str) -> Metadata[Timestamp]:
    response = server.get(gun, "timestamp.json")
    assert response.status_code == 200
    return Metadata.from_bytes(response.data, Timestamp)


def test_resign_pass(database_url: str, tmp_path: Path) -> None:
    server = _server(tmp_path, database_url)
    stores = server_context(server.app).stores
    by = Requester("tester")

    nothing_due = resign.run_pass(stores, _within(server, resign.DEFAULT_WITHIN), by)
    assert nothing_due is not None and nothing_due.ok
    assert (nothing_due.checked, nothing_due.resigned) == (2, {})

    report = resign.run_pass(stores, _within(server, timedelta(days=15)), by)
    assert report is not None and report.ok
    assert report.resigned == {SERVER_SNAPSHOT: {TIMESTAMP: 2}, CLIENT_SNAPSHOT: {TIMESTAMP: 2}}
    served = _served_timestamp(server, SERVER_SNAPSHOT)
    assert served.signed.version == 2
    key = server.repos[SERVER_SNAPSHOT].timestamp_key
    verify_threshold(served, {key.key_id: key}, 1, TIMESTAMP)
    audits = [r for r in stores.audit.records(actor="tester") if r.action == "resign"]
    assert {(r.gun, r.detail["stored"][TIMESTAMP]) for r in audits} == {
        (SERVER_SNAPSHOT, 2),
        (CLIENT_SNAPSHOT, 2),
    }

    # within four years the snapshots are due too: only the server-held one is re-signed
    years = resign.run_pass(stores, _within(server, timedelta(days=4 * 365)), by)
    assert years is not None and not years.ok
    assert years.resigned == {
        SERVER_SNAPSHOT: {SNAPSHOT: 2, TIMESTAMP: 3},
        CLIENT_SNAPSHOT: {TIMESTAMP: 3},
    }
    assert years.due == {CLIENT_SNAPSHOT: [SNAPSHOT]}

    recorded = {entry.role: entry for entry in ExpiryStore(stores.database).soonest()}
    assert set(recorded) == {TIMESTAMP, SNAPSHOT, TARGETS, ROOT}
    now = datetime.now(UTC)
    assert now + timedelta(days=13) < recorded[TIMESTAMP].expires_at <= now + timedelta(days=14)
    assert recorded[SNAPSHOT].gun == CLIENT_SNAPSHOT  # the client's snapshot expires first
    metrics = server.client.get("/metrics").data.decode()
    gauge = re.search(
        r'tufnotary_metadata_soonest_expiry_seconds\{role="timestamp"\} (\S+)', metrics
    )
    assert gauge is not None and 13 * 86400 < float(gauge[1]) <= 14 * 86400
    assert "tufnotary_metadata_expiry_record_age_seconds " in metrics


def test_resign_command(database_url: str, tmp_path: Path) -> None:
    _server(tmp_path, database_url)
    runner = CliRunner(env=PASSPHRASE)
    args = ["resign", "--database", database_url]

    quiet = runner.invoke(main, args)
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout.splitlines() == [
        "resign: 2 repositories checked, 0 re-signed, 0 still expiring soon, 0 failed"
    ]
    one = runner.invoke(main, [*args, "--within", "15d", SERVER_SNAPSHOT])
    assert one.exit_code == 0, one.output
    assert f"{SERVER_SNAPSHOT}: re-signed timestamp 2" in one.stdout
    assert "1 repositories checked, 1 re-signed" in one.stdout

    due = runner.invoke(main, [*args, "--within", "208w"])
    assert due.exit_code == 1
    assert f"{CLIENT_SNAPSHOT}: snapshot: still expiring within" in due.stdout
    assert "still expire soon or failed" in due.stderr

    bad = runner.invoke(main, [*args, "--within", "soon"])
    assert bad.exit_code == 2 and "not a duration" in bad.stderr


_HOLDER = """
import sys
from tufnotary.server.storage.engine import make_engine
from tufnotary.server.storage.runlock import exclusive
with exclusive(make_engine(sys.argv[1]), "resign") as held:
    print("held" if held else "busy", flush=True)
    sys.stdin.readline()
"""


def test_one_runner_across_processes(database_url: str, tmp_path: Path) -> None:
    server = _server(tmp_path, database_url)
    stores = server_context(server.app).stores
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, database_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with exclusive(stores.engine, resign.LOCK) as held:
            assert not held
        assert resign.run_pass(stores, _within(server, timedelta(days=15)), Requester("x")) is None
        result = CliRunner(env=PASSPHRASE).invoke(
            main, ["resign", "--database", database_url, "--within", "15d"]
        )
        assert result.exit_code == 0 and "another resign pass is running" in result.stdout
        assert _served_timestamp(server, SERVER_SNAPSHOT).signed.version == 1
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    with exclusive(stores.engine, resign.LOCK) as held:
        assert held
        with exclusive(stores.engine, resign.LOCK) as again:  # another session, same process
            assert not again


def test_a_released_lock_is_free_at_once(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        for _ in range(20):  # MariaDB notices a closed session late: release it explicitly
            with exclusive(engine, resign.LOCK) as held:
                assert held
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_background_pass_in_serve(database_url: str, tmp_path: Path) -> None:
    """With resign_interval set, a worker's thread runs a pass and records the expiries."""
    _server(tmp_path, database_url)
    server = Server.start(tmp_path / "data", database_url, resign_interval=3600)
    expiry = ExpiryStore(server_context(server.app).stores.database)
    deadline = time.monotonic() + 60
    while not expiry.soonest() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {entry.role for entry in expiry.soonest()} == {TIMESTAMP, SNAPSHOT, TARGETS, ROOT}


def test_alert_rules_watch_the_exported_gauges() -> None:
    rules = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "tufnotary-rules.yaml"
    (group,) = yaml.safe_load(rules.read_text())["groups"]
    expressions = " ".join(rule["expr"] for rule in group["rules"])
    assert SOONEST_EXPIRY in expressions and RECORD_AGE in expressions
    assert all(rule["alert"] and rule["labels"]["severity"] for rule in group["rules"])


def test_resign_on_an_unusable_database_says_so_in_one_line(database_url: str) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    cases = {closed: "is unusable: connection failed"}
    if not database_url.startswith("sqlite"):  # SQLite is migrated, as serve does
        cases[database_url] = "is not at the latest schema (at none"
    for url, message in cases.items():
        result = CliRunner(env=PASSPHRASE).invoke(main, ["resign", "--database", url])
        assert result.exit_code == 1, result.output
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
