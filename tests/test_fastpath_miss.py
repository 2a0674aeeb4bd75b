"""A read the fast path answers on a cache miss (server/fastpath.py) is the response the API's
handler renders: same status, headers and body, on every engine; and a current timestamp
due to be re-signed is never answered from what was read before it was due."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from werkzeug.test import TestResponse

from support.api import Server, error_of
from tufnotary.metadata.model import (
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    Metadata,
    Timestamp,
    format_expires,
)
from tufnotary.server.fastpath import FastReads
from tufnotary.server.storage.engine import make_engine

GUN = "registry.example.com/fast/app"
UNKNOWN = "registry.example.com/fast/unknown"


def reads(repo_files: dict[str, bytes]) -> list[tuple[str, str, dict[str, str]]]:
    """(GUN, file name, request headers) of every kind of read the fast path answers."""
    found: list[tuple[str, str, dict[str, str]]] = []
    for role, data in repo_files.items():
        sha256 = hashlib.sha256(data).hexdigest()
        found += [
            (GUN, f"{role}.json", {}),
            (GUN, f"{role}.{sha256}.json", {}),
            (GUN, f"{role}.{sha256.upper()}.json", {}),
            (GUN, f"{role}.{sha256}.json", {"If-None-Match": f'W/"{sha256}"'}),
            (GUN, f"{role}.json", {"If-None-Match": f'"{sha256}"'}),
        ]
    sha256 = hashlib.sha256(b"nothing").hexdigest()
    found += [
        (GUN, "1.root.json", {}),
        (GUN, "2.targets.json", {}),
        (GUN, "7.root.json", {}),
        (GUN, "0.root.json", {}),
        (GUN, "99999999999.root.json", {}),
        (GUN, f"root.{sha256}.json", {}),
        (GUN, "targets/releases.json", {}),
        (UNKNOWN, "timestamp.json", {}),
        (UNKNOWN, "root.json", {}),
        (UNKNOWN, f"root.{sha256}.json", {}),
        (UNKNOWN, "1.root.json", {}),
    ]
    return found


def comparable(response: TestResponse) -> tuple[str, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.to_wsgi_list() if k != "X-Request-ID"]
    return response.status, headers, response.data


@pytest.mark.parametrize("server_snapshot", [False, True])
def test_a_miss_answered_by_the_fast_path_is_what_the_handler_renders(
    database_url: str, tmp_path: Path, server_snapshot: bool
) -> None:
    fast = Server.start(tmp_path / "fast", database_url)
    handler = Server.start(tmp_path / "handler", database_url, response_cache_bytes=0)
    repo = fast.new_repo(GUN, server_snapshot=server_snapshot)
    for index in range(40):  # targets.json large enough to be sent compressed to some
        repo.add_target(f"tag-{index:02d}", str(index).encode())
    files = {TARGETS: repo.targets_bytes()}
    if not server_snapshot:
        files[SNAPSHOT] = repo.snapshot_bytes()
    assert fast.upload(GUN, files).status_code == 200
    current = {role: handler.get(GUN, f"{role}.json").data for role in (TIMESTAMP, SNAPSHOT)}
    reads_: FastReads = fast.app.wsgi_app  # type: ignore[assignment]
    files = {**repo.files, **current}
    for method in ("GET", "HEAD"):
        for gun, name, headers in reads(files):
            path = fast.tuf(gun, name)
            assert not reads_.cached(path) or method == "HEAD" or headers, path
            rendered = handler.client.open(path, method=method, headers=headers)
            answered = fast.client.open(path, method=method, headers=headers)
            assert reads_.cached(path), path  # the fast path answered (and kept) it
            assert comparable(answered) == comparable(rendered), (method, name, headers)
            again = fast.client.open(path, method=method, headers=headers)  # a hit
            assert comparable(again) == comparable(rendered), (method, name, headers)
            assert answered.status_code in (200, 304, 404)


def test_a_timestamp_due_to_be_resigned_is_resigned_by_the_next_read(
    database_url: str, tmp_path: Path
) -> None:
    one = Server.start(tmp_path / "one", database_url)
    other = Server.start(tmp_path / "other", database_url)
    repo = one.new_repo(GUN)
    margin = timedelta(seconds=max(one.settings.cache_max_age_current, 60))
    expires = (datetime.now(UTC) + margin + timedelta(seconds=3)).replace(microsecond=0)
    repo.snapshot.expires = format_expires(expires)  # re-signed by reads 3 s from now
    assert one.upload(GUN, {SNAPSHOT: repo.snapshot_bytes()}).status_code == 200

    def served_version() -> int:
        response = other.get(GUN, "timestamp.json")
        assert response.status_code == 200
        return Metadata.from_bytes(response.data, Timestamp).signed.version

    first = served_version()
    assert served_version() == first  # not due yet: cached, not re-signed
    time.sleep(max(0.0, (expires - margin - datetime.now(UTC)).total_seconds()) + 0.5)
    resigned = served_version()  # due: the service re-signs before answering
    assert resigned > first
    assert served_version() > resigned  # the client's snapshot stays due: each read re-signs


def test_a_database_error_is_answered_by_the_api(database_url: str, tmp_path: Path) -> None:
    server = Server.start(tmp_path, database_url)
    server.new_repo(GUN)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE tuf_files RENAME TO tuf_files_gone"))
    engine.dispose()
    response = server.get(GUN, "timestamp.json")
    assert response.status_code == 503
    assert error_of(response)["code"] == "UNAVAILABLE"
    reads_: FastReads = server.app.wsgi_app  # type: ignore[assignment]
    assert not reads_.cached(server.tuf(GUN, "timestamp.json"))


def test_an_encoded_slash_is_refused_even_when_the_decoded_path_is_cached(tmp_path: Path) -> None:
    server = Server.start(tmp_path)
    server.new_repo(GUN)
    assert server.get(GUN, "root.json").status_code == 200
    reads_: FastReads = server.app.wsgi_app  # type: ignore[assignment]
    assert reads_.cached(server.tuf(GUN, "root.json"))
    encoded = server.tuf(GUN.replace("/app", "%2Fapp"), "root.json")
    response = server.client.get(encoded)
    assert response.status_code == 400 and error_of(response)["code"] == "INVALID_GUN"
