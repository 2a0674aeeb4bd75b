"""Concurrent publishers and readers against the real multi-process server, on three engines.

Real HTTPS requests from a thread pool to `tufnotary-server serve --workers 4`; one server (and
one fresh database) per engine, shared by the tests of this module, each on its own GUNs.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from support.api import multipart
from support.databases import scratch_database
from support.repo import RepoBuilder, signed_bytes
from support.server import ServerInfo, running_server
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    FileMeta,
    Metadata,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tufnotary.metadata.verify import verify_root, verify_threshold
from tufnotary.server.migrate import upgrade

pytestmark = pytest.mark.engines

WORKERS = 4
PUBLISHERS = 16  # scenario 1 and 3
WRITERS, PUBLISHES_EACH, MAX_ATTEMPTS = 4, 5, 60  # scenario 2
READERS, READS_EACH = 6, 4  # scenario 4
TIMEOUT = 60.0
T = TypeVar("T")


# -- the server and an HTTP client for it -------------------------------------------------------


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(e, marks=pytest.mark.engines) for e in ("sqlite", "postgresql", "mariadb")
    ],
)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A new, migrated database on each engine: conftest's ``migrated_url``, module-scoped so
    that one server per engine serves every test here (a server start costs ~2 s)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tufnotary.db'}"
        upgrade(url)
        yield url
        return
    with scratch_database(*request.getfixturevalue(f"{request.param}_admin")) as url:
        upgrade(url)
        yield url


# Every server of this module shares its engine's database, so they share the key passphrase.
PASSPHRASE = {"TUFNOTARY_KEY_PASSPHRASE": "concurrency tests"}


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """The server with 4 worker processes on ``database``."""
    tmp_path = tmp_path_factory.mktemp("server")
    args = ("--workers", str(WORKERS), "--database", database)
    with running_server(tmp_path, *args, env=PASSPHRASE) as info:
        yield info


@dataclass(frozen=True)
class State:
    """A consistent view of one GUN, read like the Go client: timestamp -> snapshot -> targets."""

    timestamp: Metadata[Timestamp]
    snapshot_data: bytes
    snapshot: Snapshot
    targets_data: bytes
    targets: Targets


@dataclass(frozen=True)
class Client:
    """HTTPS requests to the running server (one connection per request: thread-safe)."""

    info: ServerInfo

    def request(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> requests.Response:
        return requests.request(
            method,
            self.info.url + path,
            data=body,
            headers=headers,
            verify=str(self.info.ca_cert),
            timeout=TIMEOUT,
        )

    def get(self, gun: str, name: str) -> requests.Response:
        return self.request("GET", f"/v2/{gun}/_trust/tuf/{name}")

    def data(self, gun: str, name: str) -> bytes:
        response = self.get(gun, name)
        assert response.status_code == 200, (name, response.status_code, response.text)
        return response.content

    def upload(self, gun: str, files: dict[str, bytes]) -> requests.Response:
        body, content_type = multipart(files.items())
        return self.request(
            "POST", f"/v2/{gun}/_trust/tuf/", body, **{"Content-Type": content_type}
        )

    def key(self, gun: str, role: str) -> Key:
        response = self.get(gun, f"{role}.key")
        assert response.status_code == 200, response.text
        return Key.from_dict(response.json())

    def changes(self, gun: str | None = None) -> list[dict[str, Any]]:
        base = f"/v2/{gun}/_trust/changefeed" if gun else "/v2/_trust/changefeed"
        response = self.request("GET", f"{base}?change_id=0&records=1000")
        assert response.status_code == 200, response.text
        records: list[dict[str, Any]] = response.json()["records"]
        assert len(records) < 1000
        return records

    def state(self, gun: str) -> State:
        """Current metadata by checksum, starting from the current timestamp; hashes checked."""
        timestamp = Metadata.from_bytes(self.data(gun, "timestamp.json"), Timestamp)
        entry = timestamp.signed.meta[SNAPSHOT]
        snapshot_data = self.data(gun, f"snapshot.{entry.sha256_hex}.json")
        entry.verify(snapshot_data, SNAPSHOT)
        snapshot = Metadata.from_bytes(snapshot_data, Snapshot).signed
        entry = snapshot.meta[TARGETS]
        targets_data = self.data(gun, f"targets.{entry.sha256_hex}.json")
        entry.verify(targets_data, TARGETS)
        targets = Metadata.from_bytes(targets_data, Targets).signed
        return State(timestamp, snapshot_data, snapshot, targets_data, targets)

    def outcome(self, response: requests.Response) -> str:
        """``200``, or the status and error code, e.g. ``400 VERSION``; 500s fail with the log."""
        if response.status_code == 200:
            return "200"
        assert response.status_code < 500, (
            f"{response.status_code} {response.text}\n--- server log ---\n"
            f"{self.info.log.read_text()[-4000:]}"
        )
        errors = response.json()["errors"]
        return f"{response.status_code} {errors[0]['code']}"


@pytest.fixture
def client(server: ServerInfo) -> Client:
    """A client of this engine's server."""
    return Client(server)


def gun_for(label: str) -> str:
    """A GUN no other test uses on the shared server (root certificate CNs allow 64 bytes)."""
    return f"example.com/{label}/{secrets.token_hex(4)}"


def in_parallel(count: int, task: Callable[[int, threading.Barrier], T]) -> list[T]:
    """Run ``task(index, barrier)`` on ``count`` threads; the barrier is shared by all."""
    barrier = threading.Barrier(count, timeout=TIMEOUT)

    def run(index: int) -> T:
        try:
            return task(index, barrier)
        except BaseException:
            barrier.abort()  # the others stop waiting for this thread
            raise

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(run, index) for index in range(count)]
    errors = [error for future in futures if (error := future.exception()) is not None]
    # report the thread that failed first, not the ones its abort woke up
    errors.sort(key=lambda error: isinstance(error, threading.BrokenBarrierError))
    if errors:
        raise errors[0]
    return [future.result() for future in futures]


# -- building updates ---------------------------------------------------------------------------


def new_repo(client: Client, gun: str, *, server_snapshot: bool) -> RepoBuilder:
    """A repository published as docker (server-held snapshot) or ``notary init -p`` does."""
    snapshot_key = client.key(gun, SNAPSHOT) if server_snapshot else None
    repo = RepoBuilder(gun, client.key(gun, TIMESTAMP), snapshot_key)
    response = client.upload(gun, repo.first_publish())
    assert client.outcome(response) == "200", response.text
    return repo


def next_update(repo: RepoBuilder, state: State, name: str) -> dict[str, bytes]:
    """``state``'s targets plus target ``name`` at the next version, signed with the real key;
    with a client-held snapshot key also the next snapshot listing it."""
    base = state.targets
    targets = Targets(
        base.version + 1,
        base.expires,
        {**base.targets, name: FileMeta.of(name.encode())},
        base.delegations,
    )
    files = {TARGETS: signed_bytes(targets, (repo.targets_key, None))}
    if repo.snapshot_private is not None:
        meta = {**state.snapshot.meta, TARGETS: FileMeta.of(files[TARGETS])}
        snapshot = Snapshot(state.snapshot.version + 1, state.snapshot.expires, meta)
        files[SNAPSHOT] = signed_bytes(snapshot, (repo.snapshot_private, None))
    return files


def check_signed(repo: RepoBuilder, state: State) -> None:
    """Snapshot and timestamp are signed with the keys the root lists (server or client)."""
    verify_threshold(state.timestamp, {repo.timestamp_key.key_id: repo.timestamp_key}, 1, TIMESTAMP)
    snapshot = Metadata.from_bytes(state.snapshot_data, Snapshot)
    verify_threshold(snapshot, {repo.snapshot_key.key_id: repo.snapshot_key}, 1, SNAPSHOT)


@dataclass(frozen=True)
class Accepted:
    """A publish the server accepted: the target it added, the targets version and bytes."""

    name: str
    version: int
    targets: bytes


def check_record(client: Client, gun: str, record: dict[str, Any]) -> str:
    """A changefeed record's timestamp and the snapshot it lists are readable by checksum and by
    version; returns the SHA-256 of the targets that snapshot lists."""
    timestamp_data = client.data(gun, f"{record['Version']}.timestamp.json")
    assert hashlib.sha256(timestamp_data).hexdigest() == record["SHA256"]
    assert client.data(gun, f"timestamp.{record['SHA256']}.json") == timestamp_data
    timestamp = Metadata.from_bytes(timestamp_data, Timestamp).signed
    assert timestamp.version == record["Version"]
    entry = timestamp.meta[SNAPSHOT]
    snapshot_data = client.data(gun, f"snapshot.{entry.sha256_hex}.json")
    entry.verify(snapshot_data, SNAPSHOT)
    snapshot = Metadata.from_bytes(snapshot_data, Snapshot).signed
    assert client.data(gun, f"{snapshot.version}.snapshot.json") == snapshot_data
    sha256 = snapshot.meta[TARGETS].sha256_hex
    assert sha256 is not None
    return sha256


def publish_with_retries(client: Client, repo: RepoBuilder, name: str) -> Accepted:
    """Read the current state, add target ``name``, publish; re-read and retry on VERSION."""
    for _attempt in range(MAX_ATTEMPTS):
        state = client.state(repo.gun)
        files = next_update(repo, state, name)
        outcome = client.outcome(client.upload(repo.gun, files))
        if outcome == "200":
            return Accepted(name, state.targets.version + 1, files[TARGETS])
        assert outcome == "400 VERSION", outcome
    pytest.fail(f"{name}: no success in {MAX_ATTEMPTS} attempts")


# -- 1. many publishers race on one GUN ---------------------------------------------------------


@pytest.mark.parametrize(
    "server_snapshot", [True, False], ids=["server-snapshot", "client-snapshot"]
)
def test_one_of_many_racing_publishers_wins(client: Client, server_snapshot: bool) -> None:
    """16 valid updates to the same next version: one is stored, the others are 400 VERSION."""
    gun = gun_for("race")
    repo = new_repo(client, gun, server_snapshot=server_snapshot)
    before = client.state(gun)
    feed_before = client.changes(gun)

    def publish(index: int, barrier: threading.Barrier) -> tuple[dict[str, bytes], str]:
        files = next_update(repo, before, f"racer-{index}")
        body, content_type = multipart(files.items())
        barrier.wait()
        response = client.request(
            "POST", f"/v2/{gun}/_trust/tuf/", body, **{"Content-Type": content_type}
        )
        return files, client.outcome(response)

    results = in_parallel(PUBLISHERS, publish)
    outcomes = [outcome for _, outcome in results]
    assert sorted(outcomes) == ["200"] + ["400 VERSION"] * (PUBLISHERS - 1), outcomes
    winner = next(files for files, outcome in results if outcome == "200")

    after = client.state(gun)
    assert client.data(gun, "targets.json") == winner[TARGETS] == after.targets_data
    assert after.targets.version == before.targets.version + 1
    assert client.data(gun, "snapshot.json") == after.snapshot_data
    after.snapshot.meta[TARGETS].verify(winner[TARGETS], TARGETS)
    if not server_snapshot:
        assert after.snapshot_data == winner[SNAPSHOT]
    assert after.snapshot.version == before.snapshot.version + 1
    assert after.timestamp.signed.version == before.timestamp.signed.version + 1
    check_signed(repo, after)
    feed = client.changes(gun)
    assert feed[: len(feed_before)] == feed_before
    (record,) = feed[len(feed_before) :]
    timestamp_data = client.data(gun, "timestamp.json")
    assert (record["Version"], record["SHA256"], record["Category"]) == (
        after.timestamp.signed.version,
        hashlib.sha256(timestamp_data).hexdigest(),
        "update",
    )


def test_racing_first_publishes_of_one_gun(client: Client) -> None:
    """16 clients create the same new repository at once: one root wins, nothing breaks."""
    gun = gun_for("first")

    def create(index: int, barrier: threading.Barrier) -> tuple[RepoBuilder, str]:
        barrier.wait()
        repo = RepoBuilder(gun, client.key(gun, TIMESTAMP), client.key(gun, SNAPSHOT))
        files = repo.first_publish()
        barrier.wait()
        return repo, client.outcome(client.upload(gun, files))

    results = in_parallel(PUBLISHERS, create)
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count("200") == 1, outcomes
    # losers lost on the version, or found the winner's root and could not rotate from it
    assert set(outcomes) <= {"200", "400 VERSION", "400 INVALID_UPDATE"}, outcomes
    winner = next(repo for repo, outcome in results if outcome == "200")
    assert client.data(gun, "root.json") == winner.files[ROOT]
    state = client.state(gun)
    assert state.targets_data == winner.files[TARGETS]
    check_signed(winner, state)
    assert client.key(gun, TIMESTAMP) == winner.timestamp_key
    assert client.key(gun, SNAPSHOT) == winner.snapshot_key
    assert [r["Version"] for r in client.changes(gun)] == [1]


# -- 2. read-modify-write loops under contention ------------------------------------------------


@pytest.mark.parametrize(
    "server_snapshot", [True, False], ids=["server-snapshot", "client-snapshot"]
)
def test_contending_read_modify_write_loses_nothing(client: Client, server_snapshot: bool) -> None:
    """4 writers x 5 publishes, re-reading after VERSION; a reader walks the chain meanwhile."""
    gun = gun_for("loop")
    repo = new_repo(client, gun, server_snapshot=server_snapshot)
    first = client.state(gun)
    done = threading.Event()

    def write(index: int, barrier: threading.Barrier) -> list[Accepted]:
        barrier.wait()
        return [
            publish_with_retries(client, repo, f"writer-{index}/release-{number}")
            for number in range(PUBLISHES_EACH)
        ]

    def read() -> list[int]:
        """Timestamp versions seen by repeated client walks while the writers run."""
        seen = []
        while not done.is_set():
            state = client.state(gun)
            check_signed(repo, state)
            seen.append(state.timestamp.signed.version)
            time.sleep(0.2)
        return seen

    with ThreadPoolExecutor(1) as reader_pool:
        reader = reader_pool.submit(read)
        try:
            accepted = [a for batch in in_parallel(WRITERS, write) for a in batch]
        finally:
            done.set()
        seen = reader.result()
    assert seen == sorted(seen), "a reader saw the timestamp version go backwards"

    total = WRITERS * PUBLISHES_EACH
    assert len(accepted) == total
    versions = sorted(a.version for a in accepted)
    assert versions == list(range(first.targets.version + 1, first.targets.version + total + 1))
    final = client.state(gun)
    assert final.targets.version == versions[-1]
    assert client.data(gun, "targets.json") == final.targets_data
    assert set(final.targets.targets) == {a.name for a in accepted}
    check_signed(repo, final)

    # one changefeed record per stored timestamp, versions consecutive and in order
    feed = client.changes(gun)
    assert [record["Version"] for record in feed] == list(range(1, total + 2))
    assert [int(record["ID"]) for record in feed] == sorted(int(r["ID"]) for r in feed)

    def check_accepted(accepted: Accepted) -> None:
        """An accepted targets version is stored verbatim, by version and by checksum."""
        sha256 = hashlib.sha256(accepted.targets).hexdigest()
        assert client.data(gun, f"{accepted.version}.targets.json") == accepted.targets
        assert client.data(gun, f"targets.{sha256}.json") == accepted.targets

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(check_accepted, accepted))
        listed = set(pool.map(partial(check_record, client, gun), feed))
    # each timestamp reaches the first targets or one accepted version, and each is reached
    expected = {hashlib.sha256(first.targets_data).hexdigest()}
    assert listed == expected | {hashlib.sha256(a.targets).hexdigest() for a in accepted}


# -- 3. many publishers, each to its own GUN ----------------------------------------------------


def test_parallel_first_publishes_to_different_guns(client: Client) -> None:
    """16 new repositories created at once with server-held snapshot keys, like docker does."""
    prefix = gun_for("guns")
    feed_before = client.changes()

    def create(index: int, barrier: threading.Barrier) -> tuple[RepoBuilder, str]:
        gun = f"{prefix}/repo-{index}"
        barrier.wait()
        repo = RepoBuilder(gun, client.key(gun, TIMESTAMP), client.key(gun, SNAPSHOT))
        files = repo.first_publish()
        barrier.wait()
        return repo, client.outcome(client.upload(gun, files))

    results = in_parallel(PUBLISHERS, create)
    assert [outcome for _, outcome in results] == ["200"] * PUBLISHERS
    repos = [repo for repo, _ in results]
    server_keys = [key.key_id for r in repos for key in (r.timestamp_key, r.snapshot_key)]
    assert len(set(server_keys)) == 2 * PUBLISHERS  # no key handed out to two GUNs

    def verify(repo: RepoBuilder) -> dict[str, Any]:
        gun = repo.gun
        root_data = client.data(gun, "root.json")
        assert root_data == repo.files[ROOT]
        verify_root(Metadata.from_bytes(root_data, Root), gun)
        state = client.state(gun)
        assert state.targets_data == repo.files[TARGETS] == client.data(gun, "targets.json")
        assert (state.timestamp.signed.version, state.snapshot.version) == (1, 1)
        state.snapshot.meta[ROOT].verify(root_data, ROOT)
        check_signed(repo, state)
        (record,) = client.changes(gun)
        return record

    with ThreadPoolExecutor(WORKERS) as pool:
        records = list(pool.map(verify, repos))
    assert {r["GUN"] for r in records} == {repo.gun for repo in repos}
    new = client.changes()[len(feed_before) :]
    assert sorted(new, key=lambda r: int(r["ID"])) == sorted(records, key=lambda r: int(r["ID"]))


# -- 4. readers racing to re-sign ---------------------------------------------------------------


def test_parallel_readers_racing_to_resign(database: str, tmp_path: Path) -> None:
    """With a cache max age beyond the timestamp's lifetime every GET of timestamp.json re-signs
    (spec 2.8): racing readers are all served a valid timestamp, and a publisher gets through."""
    env = {"TUFNOTARY_CACHE_MAX_AGE_CURRENT": str(365 * 24 * 3600), **PASSPHRASE}
    args = ("--workers", "2", "--database", database)  # two racing processes suffice
    with running_server(tmp_path, *args, env=env) as info:
        client = Client(info)
        gun = gun_for("resign")
        repo = new_repo(client, gun, server_snapshot=True)
        timestamp_keys = {repo.timestamp_key.key_id: repo.timestamp_key}
        snapshot_keys = {repo.snapshot_key.key_id: repo.snapshot_key}

        def read(index: int) -> list[int]:
            seen = []
            for number in range(READS_EACH):
                if (index + number) % 2:
                    snapshot = Metadata.from_bytes(client.data(gun, "snapshot.json"), Snapshot)
                    verify_threshold(snapshot, snapshot_keys, 1, SNAPSHOT)
                    continue
                timestamp = Metadata.from_bytes(client.data(gun, "timestamp.json"), Timestamp)
                verify_threshold(timestamp, timestamp_keys, 1, TIMESTAMP)
                snapshot_sha256 = timestamp.signed.meta[SNAPSHOT].sha256_hex
                assert client.get(gun, f"snapshot.{snapshot_sha256}.json").status_code == 200
                seen.append(timestamp.signed.version)
            return seen

        def task(index: int, barrier: threading.Barrier) -> list[Any]:
            barrier.wait()
            if index < READERS:
                return read(index)
            return [publish_with_retries(client, repo, f"during-{n}") for n in range(3)]

        *seen, accepted = in_parallel(READERS + 1, task)
        for versions in seen:
            assert versions == sorted(versions), "a reader saw the timestamp version go backwards"
        final = client.state(gun)
        assert set(final.targets.targets) == {a.name for a in accepted}
        check_signed(repo, final)
        feed = client.changes(gun)
        assert [record["Version"] for record in feed] == list(range(1, len(feed) + 1))
        assert len(feed) > READERS  # the readers did re-sign

        def check(record: dict[str, Any]) -> None:
            """Each stored timestamp is readable and lists a stored snapshot."""
            data = client.data(gun, f"timestamp.{record['SHA256']}.json")
            timestamp = Metadata.from_bytes(data, Timestamp).signed
            assert timestamp.version == record["Version"]
            client.data(gun, f"snapshot.{timestamp.meta[SNAPSHOT].sha256_hex}.json")

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(check, feed))
