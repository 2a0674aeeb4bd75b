"""Retention (`tufnotary-server prune`) on SQLite, PostgreSQL and MariaDB: what is kept (root
versions, what the current timestamp reaches, the newest of each role, the last N), what goes,
the audit trail of each batch, and a publish racing a prune."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from support.api import Server
from support.repo import RepoBuilder
from support.server import free_port
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    Metadata,
    Snapshot,
    Timestamp,
)
from tufnotary.server import prune
from tufnotary.server.cli import main
from tufnotary.server.context import server_context
from tufnotary.server.storage import Stores
from tufnotary.server.storage.models import TufFileRow
from tufnotary.server.storage.retention import RetentionStore, StoredVersion
from tufnotary.server.storage.runlock import exclusive

GUN = "example.com/team/app"
RELEASES = "targets/releases"


def _publish(server: Server, repo: RepoBuilder, name: str, *roles: str) -> None:
    """Add target ``name`` to each of ``roles`` and publish them (the server signs the
    snapshot and timestamp)."""
    files = {}
    for role in roles:
        repo.add_target(name, name.encode(), role)
        files[role] = repo.targets_bytes(role)
    response = server.upload(repo.gun, files)
    assert response.status_code == 200, response.data


def _new_repo(server: Server, gun: str = GUN) -> RepoBuilder:
    """Root 1 and 2, targets 2-8, targets/releases 1-5, snapshot and timestamp 1-8."""
    repo = server.new_repo(gun, server_snapshot=True)
    repo.add_delegation(RELEASES, [""])
    _publish(server, repo, "v0", TARGETS, RELEASES)
    repo.root.version += 1
    response = server.upload(gun, {ROOT: repo.root_bytes(), TARGETS: repo.targets_bytes()})
    assert response.status_code == 200, response.data
    for tag in ("v1", "v2", "v3", "v4"):
        _publish(server, repo, tag, TARGETS, RELEASES)
    return repo


def _versions(stores: Stores, gun: str = GUN) -> dict[str, list[int]]:
    """Every stored version of every role, roots included."""
    found: dict[str, list[int]] = {}
    for role in (ROOT, TARGETS, RELEASES, SNAPSHOT, TIMESTAMP):
        version = 1
        while version < 20:
            if stores.metadata.by_version(gun, role, version) is not None:
                found.setdefault(role, []).append(version)
            version += 1
    return found


def _served_chain_resolves(server: Server, gun: str = GUN) -> None:
    """What a client fetches now is all there: timestamp -> snapshot -> every role it names."""
    timestamp = server.get(gun, "timestamp.json")
    assert timestamp.status_code == 200
    entry = Metadata.from_bytes(timestamp.data, Timestamp).signed.meta[SNAPSHOT]
    snapshot = server.get(gun, f"snapshot.{entry.sha256_hex}.json")
    assert snapshot.status_code == 200
    for role, meta in Metadata.from_bytes(snapshot.data, Snapshot).signed.meta.items():
        response = server.get(gun, f"{role}.{meta.sha256_hex}.json")
        assert response.status_code == 200, role
        assert hashlib.sha256(response.data).hexdigest() == meta.sha256_hex


def test_plan_keeps_current_newest_and_last_n() -> None:
    stored = [StoredVersion(TARGETS, v) for v in range(1, 11)]
    stored += [StoredVersion(RELEASES, v) for v in range(1, 6)]
    stored += [StoredVersion(ROOT, v) for v in range(1, 6)]
    # targets 7 is current (8-10 are above it); releases is named by no snapshot
    current = prune.Current({TARGETS: 7}, "")
    gun_plan = prune.plan(GUN, stored, current, keep=2)
    removed = {role.role: sorted(v.version for v in role.removed) for role in gun_plan.roles}
    assert removed == {TARGETS: [1, 2, 3, 4], RELEASES: [1, 2]}
    assert prune.plan(GUN, stored, current, keep=6).roles == ()


def test_prune_keeps_what_clients_need(database_url: str, tmp_path: Path) -> None:
    server = Server.start(tmp_path / "data", database_url)
    _new_repo(server)
    other = _new_repo(server, "example.com/team/other")
    stores = server_context(server.app).stores
    before = _versions(stores)
    assert before == {
        ROOT: [1, 2],
        TARGETS: [2, 3, 4, 5, 6, 7, 8],
        RELEASES: [1, 2, 3, 4, 5],
        SNAPSHOT: [1, 2, 3, 4, 5, 6, 7],
        TIMESTAMP: [1, 2, 3, 4, 5, 6, 7],
    }
    retention = RetentionStore(stores.database)

    dry = prune.prune(stores.metadata, retention, [GUN], 1, dry_run=True)
    assert dry.removed == 0 and _versions(stores) == before
    assert [plan.count for plan in dry.plans] == [5 + 3 + 5 + 5]

    report = prune.prune(stores.metadata, retention, [GUN], 1, batch=4)
    assert report.plans == dry.plans and report.removed == 18
    assert _versions(stores) == {
        ROOT: [1, 2],
        TARGETS: [7, 8],
        RELEASES: [4, 5],
        SNAPSHOT: [6, 7],
        TIMESTAMP: [6, 7],
    }
    _served_chain_resolves(server)
    assert _versions(stores, other.gun) == before  # not named: untouched
    audits = [r for r in stores.audit.records(gun=GUN) if r.action == "prune"]
    assert len(audits) == 5  # 18 rows, 4 per transaction
    assert sum(c["count"] for r in audits for c in r.detail["removed"].values()) == 18
    assert {r.actor for r in audits} == {"cli"} and all(r.detail["keep"] == 1 for r in audits)

    again = prune.prune(stores.metadata, retention, [GUN], 1)
    assert again.plans == [] and again.removed == 0
    # publishing goes on, and a version below what was stored is still refused
    _publish(server, server.repos[GUN], "v5", TARGETS)
    _served_chain_resolves(server)
    repo = server.repos[GUN]
    repo.targets[TARGETS].version = 3
    assert server.upload(GUN, {TARGETS: repo.targets_bytes(TARGETS)}).status_code == 400


def test_publish_racing_a_prune_keeps_what_it_made_current(
    database_url: str, tmp_path: Path
) -> None:
    """A publish between a GUN's plan and its removal: nothing it made current goes."""
    server = Server.start(tmp_path / "data", database_url)
    repo = _new_repo(server)
    stores = server_context(server.app).stores

    def publish_meanwhile(_plan: prune.GunPlan) -> None:
        _publish(server, repo, "raced", TARGETS, RELEASES)

    report = prune.prune(
        stores.metadata, RetentionStore(stores.database), [GUN], 0, progress=publish_meanwhile
    )
    assert report.removed == 6 + 4 + 6 + 6
    assert _versions(stores) == {
        ROOT: [1, 2],
        TARGETS: [8, 9],
        RELEASES: [5, 6],
        SNAPSHOT: [7, 8],
        TIMESTAMP: [7, 8],
    }
    _served_chain_resolves(server)
    assert b"raced" in server.get(GUN, "targets/releases.json").data


def test_repository_deleted_and_created_anew_meanwhile_is_left_alone(
    database_url: str, tmp_path: Path
) -> None:
    """A GUN deleted and published anew (versions from 1 again) between its plan and its
    removal: the new repository's versions stay, and the GUN is reported skipped."""
    server = Server.start(tmp_path / "data", database_url)
    _new_repo(server)
    stores = server_context(server.app).stores

    def replace_meanwhile(_plan: prune.GunPlan) -> None:
        assert server.client.delete(server.tuf(GUN)).status_code == 200
        _new_repo(server)

    report = prune.prune(
        stores.metadata, RetentionStore(stores.database), [GUN], 0, progress=replace_meanwhile
    )
    assert report.removed == 0
    assert report.skipped == {GUN: f"{GUN} was deleted while it was being pruned"}
    assert _versions(stores)[TIMESTAMP] == [1, 2, 3, 4, 5, 6, 7]
    _served_chain_resolves(server)


def test_prune_command(database_url: str, tmp_path: Path) -> None:
    server = Server.start(tmp_path / "data", database_url)
    _new_repo(server)
    runner = CliRunner()
    args = ["prune", "--database", database_url, "--keep", "2"]

    dry = runner.invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"{GUN}: would remove targets: 4 versions (2-5), 3 kept" in dry.stdout
    assert "prune: 1 repositories, 14 versions would be removed, 0 skipped" in dry.stdout

    done = runner.invoke(main, [*args, GUN])
    assert done.exit_code == 0, done.output
    assert f"{GUN}: removing snapshot: 4 versions (1-4), 3 kept" in done.stdout
    assert "prune: 1 repositories, 14 removed, 0 skipped" in done.stdout
    _served_chain_resolves(server)

    unknown = runner.invoke(main, [*args, "example.com/team/none", GUN])
    assert unknown.exit_code == 1, unknown.output
    assert "example.com/team/none: skipped: no trust data stored" in unknown.stderr
    assert "prune: 0 repositories, 0 removed, 1 skipped" in unknown.stdout

    usage = runner.invoke(main, ["prune", "--database", database_url])
    assert usage.exit_code == 2 and "--keep" in usage.stderr


def test_unreadable_repository_is_skipped_whole(database_url: str, tmp_path: Path) -> None:
    """A GUN whose current timestamp names no stored snapshot: nothing of it goes, exit 1."""
    server = Server.start(tmp_path / "data", database_url)
    _new_repo(server)
    _new_repo(server, "example.com/team/other")
    stores = server_context(server.app).stores
    with stores.engine.begin() as connection:
        connection.execute(
            sa.delete(TufFileRow).where(
                TufFileRow.gun == GUN, TufFileRow.role == SNAPSHOT, TufFileRow.version == 7
            )
        )
    before = _versions(stores)

    result = CliRunner().invoke(main, ["prune", "--database", database_url, "--keep", "0"])
    assert result.exit_code == 1
    assert f"{GUN}: skipped: {GUN}: the current timestamp names no stored snapshot" in result.stderr
    assert "prune: 1 repositories, 22 removed, 1 skipped" in result.stdout
    assert _versions(stores) == before


def test_one_prune_at_a_time(database_url: str, tmp_path: Path) -> None:
    server = Server.start(tmp_path / "data", database_url)
    _new_repo(server)
    stores = server_context(server.app).stores
    args = ["prune", "--database", database_url, "--keep", "0"]
    with exclusive(stores.engine, "prune") as held:
        assert held
        busy = CliRunner().invoke(main, args)
        assert busy.exit_code == 0 and "another prune is running; nothing done" in busy.stdout
    assert "prune: 1 repositories, 22 removed" in CliRunner().invoke(main, args).stdout


def test_prune_on_an_unusable_database_says_so_in_one_line(database_url: str) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    cases = {closed: "is unusable: connection failed"}
    if not database_url.startswith("sqlite"):  # SQLite is migrated, as serve does
        cases[database_url] = "is not at the latest schema (at none"
    for url, message in cases.items():
        result = CliRunner().invoke(main, ["prune", "--database", url, "--keep", "0"])
        assert result.exit_code == 1, result.output
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
