"""Hostile uploads: mutated documents get a clear 4xx and change nothing, never a 500."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.api import Server, error_of
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS

GUN = "example.com/fuzz/app"
REPLACEMENTS: list[Any] = [
    None, 1.5, -1, 0, 2**63, True, "", "x" * 5000, "\ud800", [], {}, [[[[]]]], {"a": None},
    "2030-01-01T00:00:00Z", "not-base64!", "AAAA", ["root"], [{"keyid": 1}],
]  # fmt: skip


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _mutated(document: Any, path: tuple[Any, ...], replacement: Any, delete: bool) -> Any:
    if not path:
        return replacement
    copy = json.loads(json.dumps(document))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return copy


def _byte_mutations(data: bytes, rng: random.Random) -> Iterator[bytes]:
    yield data[: rng.randrange(len(data))]
    flipped = bytearray(data)
    flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    yield bytes(flipped)
    cut = rng.randrange(len(data))
    yield data[:cut] + bytes(rng.randrange(256) for _ in range(8)) + data[cut:]
    yield b"[" * 100_000 + b"]" * 100_000
    yield data + b"garbage"


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server.start(tmp_path)


def test_mutated_uploads_never_fail_the_server(server: Server) -> None:
    repo = server.new_repo(GUN)
    repo.add_delegation("targets/releases", ["v"])
    repo.add_target("v1", b"content")
    originals = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    originals[ROOT] = repo.files[ROOT]
    before = server.get(GUN, "timestamp.json").data
    rng = random.Random(20261126)
    statuses: dict[int, int] = {}
    cases = 0
    for role, data in originals.items():
        document = json.loads(data)
        paths = list(_paths(document))
        for path in rng.sample(paths, min(len(paths), 40)):
            replacement = rng.choice(REPLACEMENTS)
            mutated = _mutated(document, path, replacement, delete=rng.random() < 0.3)
            body = json.dumps(mutated, separators=(",", ":")).encode("utf-8", "surrogatepass")
            others = {name: other for name, other in originals.items() if name != role}
            for files in ({role: body}, {**others, role: body}):
                response = server.upload(GUN, files)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code in (200, 400), (role, path, response.data)
                if response.status_code == 400:
                    assert error_of(response)["code"]
                cases += 1
        for body in _byte_mutations(data, rng):
            response = server.upload(GUN, {role: body})
            assert response.status_code == 400, (role, body[:80], response.data)
            cases += 1
    assert cases > 150 and statuses.get(400, 0) > 100
    if 200 not in statuses:  # nothing was accepted, so nothing may have changed
        assert server.get(GUN, "timestamp.json").data == before


def test_hostile_paths_and_methods(server: Server) -> None:
    for path in (
        "/v2/" + "a/" * 200 + "_trust/tuf/root.json",
        "/v2/%00/_trust/tuf/root.json",
        "/v2/x/_trust/tuf/" + "targets/" * 100 + "a.json",
        "/v2/x/_trust/tuf/99999999999999999999999.root.json",
        "/v2/x/_trust/changefeed?records=99999999999999999999",
        "/v2/_trust/changefeed?change_id=-99999999999",
    ):
        response = server.client.get(path)
        assert response.status_code in (301, 400, 404), (path, response.status_code)
        if response.status_code != 301:
            assert error_of(response)["code"]
