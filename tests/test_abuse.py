"""Issue 9, items 2 and 3: signature floods and JSON memory blow-ups against a real server,
with the limits that refuse them (per-role sizes, JSON values, signatures, large uploads)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.abuse import LiveRepo, array_bomb, cpu_spent, signature_flood, workers_usage
from support.api import Server, error_of
from support.repo import root_certificate
from support.server import running_server
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS, TIMESTAMP, RoleKeys
from tufnotary.metadata.signing import PrivateKey
from tufnotary.server.context import server_context
from tufnotary.server.slots import UploadSlots

GUN = "example.com/abuse/app"
MIB = 1024 * 1024


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveRepo]:
    with running_server(tmp_path, "--log-level", "error") as info:
        yield LiveRepo.publish(info, GUN)


def test_signature_flood_is_refused_before_any_hashing(live: LiveRepo) -> None:
    # ~1.5 MiB of targets and ~10,000 bogus signatures naming the real targets key: checking
    # each re-hashed the targets, about 10 s of CPU on the development machine.
    flood = signature_flood(live.repo, 3 * MIB)
    before = workers_usage(live.info.process.pid)
    response = live.upload({TARGETS: flood})
    spent = cpu_spent(before, workers_usage(live.info.process.pid))
    assert spent < 3.0, f"the flood cost the server {spent:.1f} s of CPU"
    assert response.status_code == 400
    detail = response.json()["errors"][0]["detail"]
    assert detail["Name"] == "ErrBadTargets"
    assert detail["Error"]["Msg"].startswith("targets carries ")
    assert detail["Error"]["Msg"].endswith(" signatures but has only 1 keys")


def test_array_bombs_are_refused_without_blowing_up_memory(live: LiveRepo) -> None:
    # 8 MiB of [],[],... decodes to ~180 MiB of Python objects; 8 at once across 2 workers
    # of 4 threads took each worker past 500 MiB.
    bomb = array_bomb(8 * MIB)
    before = workers_usage(live.info.process.pid)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: live.post(TARGETS, bomb), range(8)))
    after = workers_usage(live.info.process.pid)
    growth = max(after[pid].peak_rss_mib - before[pid].peak_rss_mib for pid in after)
    assert growth < 200, f"a worker grew by {growth:.0f} MiB"
    assert set(answers) == {"413 TOO_LARGE"}
    response = live.upload({TARGETS: bomb})
    assert response.json()["errors"][0]["detail"] == (
        "targets: more than 4000000 JSON values (max_json_values)"
    )


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server.start(
        tmp_path,
        max_snapshot_bytes=4000,
        max_timestamp_bytes=2000,
        max_root_bytes=8000,
        max_targets_bytes=20_000,
    )


def test_per_role_size_caps(server: Server) -> None:
    repo = server.new_repo(GUN)
    for role, size in ((SNAPSHOT, 4001), (TIMESTAMP, 2001), (TARGETS, 20_001)):
        response = server.upload(GUN, {role: b" " * size})
        assert response.status_code == 413, role
        assert error_of(response) == {
            "code": "TOO_LARGE",
            "message": "The request is larger than this server accepts.",
            "detail": f"{role} is larger than {size - 1} bytes",
        }
    assert server.upload(GUN, {"targets/releases": b" " * 20_001}).status_code == 413
    for index in range(60):  # targets may be larger than the other roles
        repo.add_target(f"file-{index}", str(index).encode())
    files = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert len(files[TARGETS]) > 8000
    response = server.upload(GUN, files)
    assert response.status_code == 200, response.data


def test_a_role_carries_at_most_one_signature_per_key(server: Server) -> None:
    repo = server.new_repo(GUN)
    repo.add_target("a", b"a")
    document = json.loads(repo.targets_bytes())
    document["signatures"] *= 2  # the same valid signature twice
    response = server.upload(GUN, {TARGETS: json.dumps(document).encode()})
    assert error_of(response)["detail"] == {
        "Name": "ErrBadTargets",
        "Error": {"Msg": "targets carries 2 signatures but has only 1 keys"},
    }


def test_root_rotation_carries_old_and_new_signatures_and_no_more(server: Server) -> None:
    repo = server.new_repo(GUN)
    old = (repo.root_key, repo.root_cert.key_id)
    new_key = PrivateKey.generate()
    new_cert = Key.from_certificates([root_certificate(new_key, GUN)])
    del repo.root.keys[repo.root_cert.key_id]
    repo.root.keys[new_cert.key_id] = new_cert
    repo.root.roles[ROOT] = RoleKeys([new_cert.key_id], 1)
    repo.root.version = 2
    repo.root_key, repo.root_cert = new_key, new_cert
    stranger = (PrivateKey.generate(), None)
    too_many = {ROOT: repo.root_bytes(old, stranger), SNAPSHOT: repo.snapshot_bytes()}
    assert error_of(server.upload(GUN, too_many))["detail"] == {
        "Name": "ErrBadRoot",
        "Error": {"Msg": "root carries 3 signatures but has only 2 keys"},
    }
    rotated = {ROOT: repo.root_bytes(old), SNAPSHOT: repo.snapshot_bytes(bump=False)}
    response = server.upload(GUN, rotated)
    assert response.status_code == 200, response.data


def test_large_uploads_beyond_the_slots_get_503_with_retry_after(server: Server) -> None:
    slots: UploadSlots = server_context(server.app).upload_slots
    slots.wait = 0.2
    repo = server.new_repo(GUN)
    repo.add_target("big", b"x")
    files = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    other = UploadSlots(slots.paths[0].parent, len(slots.paths), 0, 0.1)
    with other.hold(), other.hold():  # both slots held, as by two other workers
        slots.threshold = 0
        busy = server.upload(GUN, files)
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "1"
    assert error_of(busy)["code"] == "UNAVAILABLE"
    assert server.upload(GUN, files).status_code == 200  # slots free again
