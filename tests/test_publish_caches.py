"""What publishes keep between requests stays correct: decrypted server keys (per GUN and role,
new keys after a rotation), the parsed files of a publish, the one-query read of a repository's
state, and failed publishes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support.api import Server, error_of
from support.repo import RepoBuilder
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    Metadata,
    Snapshot,
    Timestamp,
)
from tufnotary.metadata.verify import verify_threshold
from tufnotary.server.context import server_context
from tufnotary.server.service import TrustService
from tufnotary.server.storage import Stores
from tufnotary.server.storage.metadata import NewFile
from tufnotary.server.updates import no_timestamp_key

GUN = "example.com/team/app"


def _service(server: Server) -> TrustService:
    service = server_context(server.app).service
    assert isinstance(service, TrustService)
    return service


def _count_decryptions(server: Server) -> list[bytes]:
    """The contexts of every private-key decryption ``server`` makes from now on (the real
    decryption still runs)."""
    vault = _service(server).keys._vault
    contexts: list[bytes] = []
    decrypt: Callable[[bytes, bytes], bytes] = vault.decrypt

    def counted(blob: bytes, context: bytes) -> bytes:
        contexts.append(context)
        return decrypt(blob, context)

    vault.decrypt = counted  # type: ignore[method-assign]
    return contexts


def _publish_target(server: Server, repo: RepoBuilder, name: str) -> None:
    repo.add_target(name, name.encode())
    files = {TARGETS: repo.targets_bytes()}
    if repo.snapshot_private is not None:
        files[SNAPSHOT] = repo.snapshot_bytes()
    response = server.upload(GUN, files)
    assert response.status_code == 200, response.data


def _timestamp_signers(server: Server, gun: str = GUN) -> list[str]:
    response = server.get(gun, "timestamp.json")
    assert response.status_code == 200
    return [s.keyid for s in Metadata.from_bytes(response.data, Timestamp).signatures]


def test_each_server_key_is_decrypted_once_per_worker(tmp_path: Path) -> None:
    first = Server.start(tmp_path)
    repo = first.new_repo(GUN, server_snapshot=True)
    second = Server.start(tmp_path)  # another worker on the same database: nothing cached
    contexts = _count_decryptions(second)
    for index in range(3):
        _publish_target(second, repo, f"v{index}")
    roles = sorted(context.split(b"\0")[2] for context in contexts)
    assert roles == [b"snapshot", b"timestamp"]
    assert _timestamp_signers(second) == [repo.timestamp_key.key_id]


def test_a_cached_key_never_signs_for_another_gun(tmp_path: Path) -> None:
    server = Server.start(tmp_path)
    repo = server.new_repo(GUN)
    _publish_target(server, repo, "v1")  # the timestamp key of GUN is decrypted and cached
    other = "example.com/team/other"
    # the other GUN's root names GUN's timestamp key: the server holds no key for it there
    borrowed = RepoBuilder(other, repo.timestamp_key)
    response = server.upload(other, borrowed.first_publish())
    assert response.status_code == 400
    assert error_of(response)["detail"]["Error"]["Msg"] == no_timestamp_key(other)
    assert server.get(other, "timestamp.json").status_code == 404


def test_rotation_signs_with_the_new_key_in_a_worker_with_the_old_one_cached(
    tmp_path: Path,
) -> None:
    first = Server.start(tmp_path)
    repo = first.new_repo(GUN)
    second = Server.start(tmp_path)
    _publish_target(second, repo, "v1")  # second caches the old timestamp key
    old = repo.timestamp_key
    rotated = first.server_key(GUN, TIMESTAMP, method="POST")
    repo.root.keys[rotated.key_id] = rotated
    repo.root.roles[TIMESTAMP].keyids = [rotated.key_id]
    repo.root.version = 2
    response = second.upload(GUN, {ROOT: repo.root_bytes(), SNAPSHOT: repo.snapshot_bytes()})
    assert response.status_code == 200, response.data
    assert _timestamp_signers(second) == [rotated.key_id] != [old.key_id]
    timestamp = Metadata.from_bytes(second.get(GUN, "timestamp.json").data, Timestamp)
    verify_threshold(timestamp, {rotated.key_id: rotated}, 1, TIMESTAMP)


def test_a_newer_unreached_root_is_not_taken_for_the_current_one(tmp_path: Path) -> None:
    """The publish reads the newest timestamp, snapshot and root in one query; a newest root
    the snapshot does not list must not stand in for the one it lists."""
    server = Server.start(tmp_path)
    repo = server.new_repo(GUN)
    current_root = repo.files[ROOT]
    repo.root.version = 2
    unreached = repo.root_bytes()
    repo.files[ROOT] = current_root
    _service(server).store.update_many(GUN, [NewFile(ROOT, 2, unreached)])
    _publish_target(server, repo, "v1")  # the client's snapshot lists root version 1
    assert server.get(GUN, "root.json").data == current_root


@pytest.mark.parametrize("version", ["same", "lower"])
def test_a_publish_refused_by_storage_leaves_everything_as_it_was(
    tmp_path: Path, version: str
) -> None:
    server = Server.start(tmp_path)
    repo = server.new_repo(GUN)
    _publish_target(server, repo, "v1")
    before = {role: server.get(GUN, f"{role}.json").data for role in (TARGETS, TIMESTAMP)}
    repo.add_target("v2", b"v2")
    repo.targets[TARGETS].version -= 1 if version == "same" else 2
    response = server.upload(GUN, {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()})
    assert response.status_code == 400, response.data
    assert {role: server.get(GUN, f"{role}.json").data for role in before} == before
    repo.targets[TARGETS].version += 2 if version == "same" else 3
    _publish_target(server, repo, "v3")
    assert server.get(GUN, "targets.json").data == repo.files[TARGETS]


@pytest.mark.parametrize(
    "server_snapshot", [False, True], ids=["client-snapshot", "server-snapshot"]
)
def test_a_publish_keeps_its_snapshot_and_timestamp_as_parsing_them_gives(
    tmp_path: Path, server_snapshot: bool
) -> None:
    server = Server.start(tmp_path)
    repo = server.new_repo(GUN, server_snapshot=server_snapshot)
    _publish_target(server, repo, "v1")
    service = _service(server)
    for role, signed_class in ((SNAPSHOT, Snapshot), (TIMESTAMP, Timestamp)):
        stored = service.store.latest(GUN, role)  # read straight from storage: nothing parsed
        assert stored is not None
        kept = service._parsed.get((role, stored.sha256))
        assert kept == Metadata.from_bytes(stored.data, signed_class).signed


@pytest.mark.parametrize(
    "server_snapshot", [False, True], ids=["client-snapshot", "server-snapshot"]
)
def test_workers_publishing_in_turn_build_on_each_others_files(
    tmp_path: Path, migrated_url: str, server_snapshot: bool
) -> None:
    """Each worker keeps the parsed files of its own publishes: the next publish through the
    other worker must still build on the newest stored state. (Reads query the change signal
    every time: with a staleness window, another worker's publish is seen once its
    notification arrives, which may be after the next read.)"""
    workers = [Server.start(tmp_path, migrated_url, read_staleness_ms=0) for _ in range(2)]
    repo = workers[0].new_repo(GUN, server_snapshot=server_snapshot)
    for index in range(4):
        worker = workers[index % 2]
        _publish_target(worker, repo, f"v{index}")
        for reader in workers:
            timestamp = Metadata.from_bytes(reader.get(GUN, "timestamp.json").data, Timestamp)
            snapshot_data = reader.get(GUN, "snapshot.json").data
            assert timestamp.signed.version == index + 2
            timestamp.signed.meta[SNAPSHOT].verify(snapshot_data, "snapshot")
            snapshot = Metadata.from_bytes(snapshot_data, Snapshot).signed
            snapshot.meta[TARGETS].verify(repo.files[TARGETS], "targets")
            assert reader.get(GUN, "targets.json").data == repo.files[TARGETS]


def test_latest_of_reads_the_newest_file_of_each_role(store: Stores) -> None:
    store.metadata.update_many(GUN, [NewFile(TARGETS, v, f"t{v}".encode()) for v in (1, 2, 5)])
    store.metadata.update_many(GUN, [NewFile(ROOT, 1, b"r1"), NewFile(SNAPSHOT, 3, b"s3")])
    store.metadata.update_many("example.com/team/other", [NewFile(TARGETS, 9, b"other")])
    newest = store.metadata.latest_of(GUN, (TIMESTAMP, TARGETS, ROOT, SNAPSHOT))
    assert {role: (f.version, f.data) for role, f in newest.items()} == {
        TARGETS: (5, b"t5"),
        ROOT: (1, b"r1"),
        SNAPSHOT: (3, b"s3"),
    }
    assert store.metadata.latest_of("example.com/none", (TIMESTAMP, ROOT)) == {}


_GEVENT_WAITS = """
from gevent import monkey
monkey.patch_all()
import psycopg.waiting  # imported after the patch: psycopg alone would pick its gevent poll wait
from tufnotary.server.worker import blocking_psycopg_waits
blocking_psycopg_waits()
print(psycopg.waiting.wait is psycopg.waiting.wait_c)
"""


def test_a_worker_keeps_the_c_wait_of_psycopg_whatever_the_import_order() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _GEVENT_WAITS], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["True"], result.stderr


def test_server_signed_files_are_go_wire_bytes_signed_once_per_key(tmp_path: Path) -> None:
    """The server encodes what it signs once, for every key and the wire: the stored bytes are
    what re-encoding the parsed file gives, and a key root lists twice signs once."""
    server = Server.start(tmp_path)
    repo = RepoBuilder(GUN, server.server_key(GUN, "timestamp"), server.server_key(GUN, "snapshot"))
    for role in (SNAPSHOT, TIMESTAMP):
        keys = repo.root.roles[role].keyids
        repo.root.roles[role].keyids = keys + keys
    assert server.upload(GUN, repo.first_publish()).status_code == 200
    for role, signed_class in ((SNAPSHOT, Snapshot), (TIMESTAMP, Timestamp)):
        data = server.get(GUN, f"{role}.json").data
        metadata = Metadata.from_bytes(data, signed_class)
        assert [signature.keyid for signature in metadata.signatures] == [
            repo.root.roles[role].keyids[0]
        ]
        assert metadata.to_bytes() == data
        verify_threshold(metadata, repo.root.role_keys(role), 1, role)
