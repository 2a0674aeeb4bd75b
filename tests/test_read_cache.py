"""The per-worker cache of metadata reads is never stale (server/fastpath.py).

Two apps on one database are two workers (or two servers) with their own caches: a write made
through one is seen by the very next read through the other on SQLite, and on PostgreSQL once
its notification has arrived (the apps remember signals for a minute here: only notifications
show them a write); a test with two real `serve` processes on one PostgreSQL database shows
that writes are seen within the default staleness bound, over HTTPS.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from werkzeug.test import TestResponse

from support.api import Server, multipart
from support.databases import scratch_database
from support.repo import RepoBuilder
from support.server import running_server
from support.token_issuer import ISSUER, SERVICE, TokenPKI, repository_access
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS, TIMESTAMP, Metadata, Timestamp
from tufnotary.metadata.verify import verify_threshold
from tufnotary.server.config import Settings
from tufnotary.server.context import server_context
from tufnotary.server.fastpath import FastReads
from tufnotary.server.migrate import upgrade

GUN = "registry.example.com/cache/app"
DEADLINE = 10.0  # seconds a notification may take to arrive on a busy machine
SERVERS = ("postgresql", "mariadb")


@pytest.fixture
def postgresql_url(postgresql_admin: tuple[sa.Connection, sa.URL]) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database."""
    with scratch_database(*postgresql_admin) as database:
        upgrade(database)
        yield database


@pytest.fixture(
    params=["sqlite", *(pytest.param(name, marks=pytest.mark.engines) for name in SERVERS)]
)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Two apps (two workers' caches) on one fresh database; on PostgreSQL they remember signals
    for a minute, so only a notification shows them a write."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
        yield Server.start(tmp_path / "a", url), Server.start(tmp_path / "b", url)
        return
    with scratch_database(*request.getfixturevalue(f"{request.param}_admin")) as url:
        upgrade(url)
        one, other = (Server.start(tmp_path / n, url, read_staleness_ms=60_000) for n in "ab")
        yield one, other


def read_until(
    server: Server, gun: str, name: str, done: Callable[[TestResponse], bool]
) -> TestResponse:
    """Read ``name`` until ``done``: at once on SQLite and MariaDB, on PostgreSQL within
    DEADLINE."""
    postgresql = server.settings.effective_database_url.startswith("postgresql")
    deadline = time.monotonic() + (DEADLINE if postgresql else 0.0)
    while not done(response := server.get(gun, name)):
        assert time.monotonic() < deadline, (name, response.status_code)
        time.sleep(0.005)
    return response


def cached(server: Server, gun: str, name: str) -> bool:
    reads: FastReads = server.app.wsgi_app  # type: ignore[assignment]
    return reads.cached(server.tuf(gun, name))


def warm(server: Server, gun: str, *names: str) -> dict[str, bytes]:
    """Read each file twice (the second read is served from the cache); their bodies."""
    bodies = {}
    for name in names:
        first = server.get(gun, name)
        assert server.get(gun, name).data == first.data
        assert cached(server, gun, name), name
        bodies[name] = first.data
    return bodies


def publish_target(server: Server, repo: RepoBuilder, name: str) -> None:
    repo.add_target(name, name.encode())
    files = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert server.upload(repo.gun, files).status_code == 200


def test_publish_on_one_worker_is_seen_by_the_other(pair: tuple[Server, Server]) -> None:
    one, other = pair
    repo = one.new_repo(GUN)
    names = ("timestamp.json", "snapshot.json", "targets.json", "root.json")
    before = warm(other, GUN, *names)
    publish_target(one, repo, "v2")
    read_until(other, GUN, "targets.json", lambda r: r.data == repo.files[TARGETS])
    after = {name: other.get(GUN, name).data for name in names}
    assert after["targets.json"] == repo.files[TARGETS] != before["targets.json"]
    assert after["root.json"] == before["root.json"]
    for role in ("timestamp", "snapshot"):
        assert after[f"{role}.json"] != before[f"{role}.json"]
    timestamp = Metadata.from_bytes(after["timestamp.json"], Timestamp).signed
    timestamp.meta[SNAPSHOT].verify(after["snapshot.json"], SNAPSHOT)


def test_unknown_repository_404_is_cached_until_it_is_published(
    pair: tuple[Server, Server],
) -> None:
    one, other = pair
    assert other.get(GUN, "timestamp.json").status_code == 404
    assert other.get(GUN, "timestamp.json").status_code == 404
    assert cached(other, GUN, "timestamp.json")
    repo = one.new_repo(GUN)
    response = read_until(other, GUN, "targets.json", lambda r: r.status_code == 200)
    assert response.data == repo.files[TARGETS]
    assert other.get(GUN, "timestamp.json").status_code == 200


def test_delete_and_republish_is_seen_by_every_read(pair: tuple[Server, Server]) -> None:
    one, other = pair
    old = one.new_repo(GUN)
    old_root = old.files[ROOT]
    by_checksum = f"root.{hashlib.sha256(old_root).hexdigest()}.json"
    names = ("timestamp.json", "root.json", "1.root.json", by_checksum)
    warm(other, GUN, *names)
    assert one.client.delete(one.tuf(GUN)).status_code == 200
    read_until(other, GUN, "timestamp.json", lambda r: r.status_code == 404)
    for name in names:
        assert other.get(GUN, name).status_code == 404, name
    new = RepoBuilder(GUN, one.server_key(GUN, "timestamp"))
    assert one.upload(GUN, new.first_publish()).status_code == 200
    read_until(other, GUN, "1.root.json", lambda r: r.status_code == 200)
    assert other.get(GUN, "1.root.json").data == new.files[ROOT] != old_root
    assert other.get(GUN, "root.json").data == new.files[ROOT]
    assert other.get(GUN, by_checksum).status_code == 404


def test_timestamp_key_rotation_is_seen(pair: tuple[Server, Server]) -> None:
    one, other = pair
    repo = one.new_repo(GUN)
    warm(other, GUN, "timestamp.json", "root.json")
    rotated = one.server_key(GUN, "timestamp", method="POST")
    assert other.server_key(GUN, "timestamp") == repo.timestamp_key  # root lists the old key
    repo.root.keys[rotated.key_id] = rotated
    repo.root.roles[TIMESTAMP].keyids = [rotated.key_id]
    repo.root.version = 2
    files = {ROOT: repo.root_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert one.upload(GUN, files).status_code == 200
    read_until(other, GUN, "root.json", lambda r: r.data == repo.files[ROOT])
    timestamp = Metadata.from_bytes(other.get(GUN, "timestamp.json").data, Timestamp)
    verify_threshold(timestamp, {rotated.key_id: rotated}, 1, TIMESTAMP)
    assert other.server_key(GUN, "timestamp") == rotated


def test_server_resign_is_seen(pair: tuple[Server, Server]) -> None:
    one, other = pair
    one.new_repo(GUN, server_snapshot=True)
    before = warm(other, GUN, "timestamp.json", "snapshot.json")
    server_context(one.app).service.refresh_margin = timedelta(days=365 * 4)  # all expiring
    resigned = one.get(GUN, "timestamp.json").data
    assert resigned != before["timestamp.json"]
    read_until(other, GUN, "timestamp.json", lambda r: r.data == resigned)
    timestamp = Metadata.from_bytes(resigned, Timestamp).signed
    snapshot = other.get(GUN, "snapshot.json").data
    assert snapshot != before["snapshot.json"]
    timestamp.meta[SNAPSHOT].verify(snapshot, SNAPSHOT)


def test_cached_answers_keep_conditional_requests_head_and_gzip(tmp_path: Path) -> None:
    server = Server.start(tmp_path)
    repo = server.new_repo(GUN)
    for index in range(100):  # targets large enough to be compressed
        repo.add_target(f"tag-{index:03d}", str(index).encode())
    files = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert server.upload(GUN, files).status_code == 200
    body = warm(server, GUN, "targets.json")["targets.json"]
    sha256 = hashlib.sha256(body).hexdigest()
    hit = server.get(GUN, "targets.json")
    assert hit.headers["ETag"] == f'"{sha256}"' and hit.headers["Cache-Control"]
    assert hit.headers["X-Request-ID"] and hit.headers["Vary"] == "Accept-Encoding"
    url = server.tuf(GUN, "targets.json")
    assert server.client.get(url, headers={"If-None-Match": f'"{sha256}"'}).status_code == 304
    head = server.client.head(url)
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(body))
    zipped = server.client.get(url, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip" and len(zipped.data) < len(body)
    assert gzip.decompress(zipped.data) == body
    assert zipped.headers["ETag"] == f'W/"{sha256}"'


def test_cached_answers_need_a_valid_token(tmp_path: Path) -> None:
    pki = TokenPKI(tmp_path / "pki")
    settings = {"token_realm": "https://auth.example.com/token", "token_service": SERVICE}
    server = Server.start(
        tmp_path / "server",
        auth_mode="token",
        token_issuer=ISSUER,
        token_rootcertbundle=pki.bundle,
        **settings,
    )
    token = pki.mint(repository_access(GUN, "pull", "push"))
    headers = {"Authorization": f"Bearer {token}"}
    path = server.tuf(GUN, "timestamp.json")
    for _ in range(2):
        assert server.client.get(path, headers=headers).status_code == 404
    assert cached(server, GUN, "timestamp.json")
    refused = server.client.get(path)
    assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers
    other = pki.mint(repository_access("registry.example.com/other", "pull"))
    assert server.client.get(path, headers={"Authorization": f"Bearer {other}"}).status_code == 401


# -- two real servers on one PostgreSQL database -------------------------------------------------


class Remote:
    """HTTPS access to one running server."""

    def __init__(self, url: str, ca_cert: Path) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False  # else REQUESTS_CA_BUNDLE beats .verify
        self.session.verify = str(ca_cert)
        self.session.headers["Connection"] = "close"  # new connections reach every worker

    def tuf(self, name: str = "") -> str:
        return f"{self.url}/v2/{GUN}/_trust/tuf/{name}"

    def get(self, name: str) -> requests.Response:
        return self.session.get(self.tuf(name), timeout=30)

    def upload(self, files: dict[str, bytes]) -> None:
        body, content_type = multipart(files.items())
        headers = {"Content-Type": content_type}
        response = self.session.post(self.tuf(), data=body, headers=headers, timeout=30)
        assert response.status_code == 200, response.text


@pytest.mark.engines
def test_two_servers_on_one_postgresql(tmp_path: Path, postgresql_url: str) -> None:
    """Every worker of the other server sees a write once the staleness bound has passed."""
    bound = Settings().read_staleness_ms / 1000
    args = ("--database", postgresql_url, "--workers", "2")
    env = {"TUFNOTARY_KEY_PASSPHRASE": "test passphrase"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        running_server(tmp_path / "a", *args, env=env) as a,
        running_server(tmp_path / "b", *args, env=env) as b,
    ):
        one, other = Remote(a.url, a.ca_cert), Remote(b.url, b.ca_cert)
        key = Key.from_dict(json.loads(one.get("timestamp.key").content))
        repo = RepoBuilder(GUN, key)
        assert other.get("targets.json").status_code == 404
        one.upload(repo.first_publish())
        time.sleep(bound)
        for _ in range(6):  # every worker of the other server caches the current files
            assert other.get("targets.json").content == repo.files[TARGETS]
        for index in range(3):
            repo.add_target(f"v{index}", b"x")
            one.upload({TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()})
            time.sleep(bound)
            assert other.get("targets.json").content == repo.files[TARGETS]
        assert one.session.delete(one.tuf(), timeout=30).status_code == 200
        time.sleep(bound)
        assert other.get("targets.json").status_code == 404
