"""`tufnotary-server import --from-notary`: the reference notary-server as the source, populated
by the real notary CLI, imported into tufnotary-server by the command as a user runs it.

One source and one destination for the module: OWNED and MANAGED are imported once
(`first_import`), then re-imported, read by switched clients and rotated by their owners, in
the order of this file; every other test uses GUNs of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from support.clients import (
    DOCKER_HINT,
    NOTARY_HINT,
    DockerCLI,
    ListedTarget,
    NotaryCLI,
    describe,
    expect_failure,
    fetch_bytes,
    key_id,
    require_cli,
    run_command,
    server_key,
)
from support.reference import running_reference_server
from support.server import ServerInfo, running_server, server_environment
from support.tamper import Repository, TrustServer
from tufnotary.importer import notary_api
from tufnotary.importer.outcome import Refused
from tufnotary.metadata.model import ROOT, TARGETS
from tufnotary.server.migrate import upgrade
from tufnotary.server.storage import Stores
from tufnotary.server.tls import ensure_self_signed

pytestmark = pytest.mark.e2e

OWNED = "registry.example.com/import/owned"  # the owner signs the snapshot
MANAGED = "registry.example.com/import/managed"  # the source signs the snapshot
DOCKER_MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()


@dataclass(frozen=True)
class World:
    source: ServerInfo
    ours: ServerInfo
    owner: NotaryCLI  # the owner's notary, with the source as server
    notary: str
    base: Path

    def import_(
        self, *args: str, source: str | None = None, ca: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`tufnotary-server import --from-notary SOURCE ...` into ours, as a user runs it."""
        command = [sys.executable, "-m", "tufnotary.server.cli", "import"]
        command += ["--data-dir", str(self.ours.data_dir), "--server-url", self.ours.url]
        command += ["--from-notary", source or self.source.url]
        command += ["--tlscacert", str(ca or self.source.ca_cert), *args]
        return subprocess.run(
            command,
            env=server_environment({}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def client(self, name: str, server: ServerInfo | None = None) -> NotaryCLI:
        """A notary CLI with trust dir `name` (new, or kept from earlier) for ``server``."""
        return NotaryCLI.for_server(server or self.ours, self.base / name, self.notary)

    def switched(self, cli: NotaryCLI) -> NotaryCLI:
        """The same trust dir, with `-s` pointing at ours."""
        return NotaryCLI(self.ours.url, self.ours.ca_cert, cli.trust_dir, cli.binary)

    def rows(self, gun: str) -> list[tuple[str, int, str]]:
        """(role, version, sha256) of every file of ``gun`` in our database."""
        with sqlite3.connect(self.ours.data_dir / "tufnotary.db") as db:
            query = "SELECT role, version, sha256 FROM tuf_files WHERE gun = ? ORDER BY 1, 2"
            return list(db.execute(query, (gun,)))


def write(directory: Path, name: str, content: bytes) -> Path:
    path = directory / name
    path.write_bytes(content)
    return path


def listed(name: str, content: bytes, role: str = "targets") -> ListedTarget:
    return ListedTarget(name, hashlib.sha256(content).hexdigest(), len(content), role)


def delegate_key(directory: Path) -> tuple[Path, Path]:
    """An EC P-256 key for a delegate: (private PEM, public PEM)."""
    private = ec.generate_private_key(ec.SECP256R1())
    key = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return write(directory, "delegate.key", key), write(directory, "delegate.pub", public)


def populate(owner: NotaryCLI, files: Path) -> None:
    """OWNED: 3 root versions (targets key, then root key rotated), a delegation with a
    target; MANAGED: snapshot handed to the source, two targets (one a docker tag)."""
    owner.run("init", "-p", OWNED)
    owner.run("add", "-p", OWNED, "one", str(write(files, "one", b"one\n")))
    key, public = delegate_key(files)
    owner.run("delegation", "add", "-p", OWNED, "targets/releases", str(public), "--all-paths")
    owner.run("key", "import", str(key), "--role", "targets/releases")
    release = write(files, "release", b"release\n")
    owner.run("add", "-p", OWNED, "release", str(release), "--roles", "targets/releases")
    owner.run("key", "rotate", OWNED, "targets")
    owner.run("key", "rotate", OWNED, "root", input="yes\n")

    owner.run("init", "-p", MANAGED)
    owner.run("key", "rotate", MANAGED, "snapshot", "-r")
    owner.run("add", "-p", MANAGED, "v1", str(write(files, "manifest", DOCKER_MANIFEST)))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    notary = require_cli("notary", NOTARY_HINT)
    base = tmp_path_factory.mktemp("import-api")
    (base / "ours").mkdir()
    with (
        running_reference_server(base / "source") as source,
        running_server(base / "ours") as ours,
    ):
        owner = NotaryCLI.for_server(source, base / "owner", notary)
        populate(owner, base)
        yield World(source, ours, owner, notary, base)


def served(server: ServerInfo, gun: str, names: list[str]) -> dict[str, bytes]:
    return {name: fetch_bytes(server, gun, f"{name}.json") for name in names}


@pytest.fixture(scope="module")
def first_import(world: World) -> subprocess.CompletedProcess[str]:
    """The import of OWNED and MANAGED, once for the module."""
    result = world.import_(OWNED, MANAGED)
    assert result.returncode == 0, describe(result)
    return result


def test_import_stores_every_root_and_the_current_roles_unchanged(
    world: World, first_import: subprocess.CompletedProcess[str]
) -> None:
    result = first_import

    names = ["1.root", "2.root", "3.root", "root", "timestamp", "snapshot", "targets"]
    names.append("targets/releases")
    assert served(world.ours, OWNED, names) == served(world.source, OWNED, names)
    assert {role for role, _, _ in world.rows(OWNED)} == {
        "root",
        "timestamp",
        "snapshot",
        "targets",
        "targets/releases",
    }
    names = ["1.root", "2.root", "root", "timestamp", "snapshot", "targets"]
    assert served(world.ours, MANAGED, names) == served(world.source, MANAGED, names)

    out = result.stdout
    assert f"{OWNED}: verified 7 files (root 3" in out
    assert "added: root 1, root 2, root 3, snapshot" in out
    assert "the imported timestamp expires at" in out
    assert f"notary -s {world.ours.url} key rotate {OWNED} timestamp -r" in out
    assert f"notary -s {world.source.url} key rotate {MANAGED} snapshot\n" in out
    with sqlite3.connect(world.ours.data_dir / "tufnotary.db") as db:
        query = "SELECT actor, detail FROM audit_log WHERE action = 'import' AND gun = ?"
        ((actor, detail),) = db.execute(query, (OWNED,)).fetchall()
    assert actor == "cli"
    assert json.loads(detail)["source"] == world.source.url
    assert "root 3" in json.loads(detail)["verified"]
    feed = requests.get(
        f"{world.ours.url}/v2/_trust/changefeed?change_id=0&records=100",
        verify=world.ours.ca_cert,
        timeout=10,
    ).json()["records"]
    assert {(r["GUN"], r["Category"]) for r in feed} == {
        (OWNED, "update"),
        (MANAGED, "update"),
    }


@pytest.mark.usefixtures("first_import")
def test_re_running_adds_nothing(world: World) -> None:
    before = world.rows(OWNED) + world.rows(MANAGED)
    result = world.import_()  # every GUN of the source's changefeed
    assert result.returncode == 0, describe(result)
    assert "the source's changefeed lists 2 GUNs" in result.stderr
    assert result.stdout.count("added: nothing new") == 2, result.stdout
    assert world.rows(OWNED) + world.rows(MANAGED) == before


@pytest.mark.usefixtures("first_import")
def test_clients_switch_and_the_owner_rotates_the_timestamp_key(world: World) -> None:
    owner = world.switched(world.owner)  # the source's cache, pointed at ours
    expected = {
        "one": listed("one", b"one\n"),
        "release": listed("release", b"release\n", "targets/releases"),
    }
    assert owner.list_targets(OWNED) == expected

    two = write(world.base, "two", b"two\n")
    refused = owner.run("add", "-p", OWNED, "two", str(two), check=False)
    expect_failure(refused, f"notary key rotate {OWNED} timestamp -r")
    assert world.client("reader-before").list_targets(OWNED) == expected

    owner.run("key", "rotate", OWNED, "timestamp", "-r")
    owner.run("publish", OWNED)  # the change staged by the refused publish
    expected["two"] = listed("two", b"two\n")
    assert world.client("reader-after").list_targets(OWNED) == expected
    assert owner.list_targets(OWNED) == expected
    timestamp = json.loads(fetch_bytes(world.ours, OWNED, "timestamp.json"))
    root = json.loads(fetch_bytes(world.ours, OWNED, "root.json"))
    assert root["signed"]["version"] == 4
    assert [s["keyid"] for s in timestamp["signatures"]] == root["signed"]["roles"]["timestamp"][
        "keyids"
    ]

    result = world.import_(OWNED)  # the owner moved: the source is behind
    assert result.returncode == 1
    assert "newer than the source's 3: the owner has moved it here already" in result.stdout


@pytest.mark.usefixtures("first_import")
def test_server_signed_snapshot_taken_over_then_handed_to_this_server(world: World) -> None:
    owner = world.switched(world.owner)
    v2 = write(world.base, "v2", b"v2\n")
    refused = owner.run("add", "-p", MANAGED, "v2", str(v2), check=False)
    expect_failure(refused)
    owner.run("reset", MANAGED, "--all")

    # the steps `import` printed for a snapshot the source signs
    world.owner.run("key", "rotate", MANAGED, "snapshot")
    result = world.import_(MANAGED)
    assert result.returncode == 0, describe(result)
    assert "added: root 3, snapshot" in result.stdout
    tufnotary = [sys.executable, "-m", "tufnotary.client.cli", "-s", world.ours.url]
    tufnotary += ["--tlscacert", str(world.ours.ca_cert), "-d", str(owner.trust_dir)]
    run_command([*tufnotary, "key", "rotate", MANAGED, "timestamp"], owner.env)
    owner.run("key", "rotate", MANAGED, "snapshot", "-r")
    owner.run("add", "-p", MANAGED, "v2", str(v2))

    expected = {"v1": listed("v1", DOCKER_MANIFEST), "v2": listed("v2", b"v2\n")}
    assert world.client("managed-reader").list_targets(MANAGED) == expected
    root = json.loads(fetch_bytes(world.ours, MANAGED, "root.json"))["signed"]
    assert root["version"] == 5
    for role in ("timestamp", "snapshot"):
        assert root["roles"][role]["keyids"] == [key_id(server_key(world.ours, MANAGED, role))]

    docker = DockerCLI.for_server(world.ours, world.base / "docker", require_docker())
    pull = docker.run("pull", f"{MANAGED}:v1", env={"DOCKER_CONTENT_TRUST": "1"}, check=False)
    digest = hashlib.sha256(DOCKER_MANIFEST).hexdigest()
    assert f"{MANAGED}:v1@sha256:{digest}" in expect_failure(pull)


def require_docker() -> str:
    return require_cli("docker", DOCKER_HINT)


# -- a tampering source ------------------------------------------------------------------------


@contextmanager
def tampering(
    upstream: ServerInfo,
    replaced: Mapping[str, bytes],
    tls_dir: Path,
    changefeed: list[object] | None = None,
) -> Iterator[tuple[str, Path]]:
    """An HTTPS server passing GETs through to ``upstream`` but answering the paths (after
    ``/_trust/tuf/``, without ``.json``) in ``replaced`` with those bytes, and the changefeed
    with ``changefeed`` as its records if given; yields (URL, CA)."""

    @Request.application
    def app(request: Request) -> Response:
        name = request.path.split("/_trust/tuf/", 1)[-1].removesuffix(".json")
        if "/_trust/tuf/" in request.path and name in replaced:
            return Response(replaced[name])
        if request.path == "/v2/_trust/changefeed" and changefeed is not None:
            return Response(json.dumps({"count": len(changefeed), "records": changefeed}))
        answer = requests.get(upstream.url + request.full_path, verify=upstream.ca_cert, timeout=10)
        return Response(answer.content, status=answer.status_code)

    tls = ensure_self_signed(tls_dir)
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, ssl_context=(str(tls.cert), str(tls.key))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", tls.ca_cert
    finally:
        server.shutdown()
        thread.join()


def bad_signature(document: bytes) -> bytes:
    """``document`` with the first byte of its first signature flipped."""
    data = json.loads(document)
    signature = bytearray(base64.b64decode(data["signatures"][0]["sig"]))
    signature[0] ^= 0xFF
    data["signatures"][0]["sig"] = base64.b64encode(bytes(signature)).decode()
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("timestamp", "valid signatures did not meet threshold for timestamp"),
        ("2.root", "root version 2 is not signed by trusted root version 1"),
    ],
)
def test_a_bad_signature_is_refused_and_nothing_stored(
    world: World, name: str, reason: str, tmp_path: Path
) -> None:
    gun = f"registry.example.com/import/tampered-{name.replace('.', '-')}"
    world.owner.run("init", "-p", gun)
    world.owner.run("key", "rotate", gun, "targets")  # a second root version
    replaced = {name: bad_signature(fetch_bytes(world.source, gun, f"{name}.json"))}
    with tampering(world.source, replaced, tmp_path) as (url, ca):
        result = world.import_(gun, source=url, ca=ca)
    assert result.returncode == 1, describe(result)
    assert f"{gun}: REFUSED, nothing stored: {reason}" in result.stdout
    assert world.rows(gun) == []


def test_a_rolled_back_timestamp_is_refused_and_nothing_stored(
    world: World, tmp_path: Path
) -> None:
    gun = "registry.example.com/import/rolled-back"
    world.owner.run("init", "-p", gun)
    old = fetch_bytes(world.source, gun, "timestamp.json")
    world.owner.run("add", "-p", gun, "new", str(write(tmp_path, "new", b"new\n")))
    assert world.import_(gun).returncode == 0
    stored = world.rows(gun)

    with tampering(world.source, {"timestamp": old}, tmp_path) as (url, ca):
        result = world.import_(gun, source=url, ca=ca)
    assert result.returncode == 1, describe(result)
    assert "REFUSED, nothing stored: timestamp version 1 is lower than" in result.stdout
    assert world.rows(gun) == stored


def test_pinned_root_keys_must_sign_the_newest_root(world: World) -> None:
    gun = "registry.example.com/import/pinned"
    world.owner.run("init", "-p", gun)
    (root_key,) = json.loads(fetch_bytes(world.source, gun, "root.json"))["signed"]["roles"][
        "root"
    ]["keyids"]

    wrong = world.import_("--root-key-id", f"{gun}={'0' * 64}", gun)
    assert wrong.returncode == 1, describe(wrong)
    assert "is not signed by the pinned root keys" in wrong.stdout
    assert world.rows(gun) == []

    right = world.import_("--root-key-id", f"{gun}={root_key}", gun)
    assert right.returncode == 0, describe(right)
    assert {role for role, _, _ in world.rows(gun)} == {"root", "targets", "snapshot", "timestamp"}


def test_an_unreachable_source_stops_the_import(world: World) -> None:
    gun = "registry.example.com/import/unreachable"
    result = world.import_(gun, "other/gun", source="https://127.0.0.1:1")
    expect_failure(result, "stopped after 0 of 2 GUNs: cannot reach", "run the same command again")
    assert world.rows(gun) == []


def test_credentials_are_never_sent_to_a_plain_http_source(world: World) -> None:
    gun = "registry.example.com/import/plain"
    result = world.import_(
        "--username", "alice", "--password", "pw", gun, source="http://127.0.0.1:1"
    )
    assert result.returncode == 2, describe(result)
    assert "is not https: --username/--password/--token would travel in clear" in result.stderr
    assert world.rows(gun) == []


def test_a_gun_with_other_trust_data_here_is_refused_and_the_others_imported(
    world: World,
) -> None:
    clash, fine = "registry.example.com/import/clash", "registry.example.com/import/fine"
    world.client("ours-owner").run("init", "-p", clash)  # a repository of the same name here
    for gun in (clash, fine):
        world.owner.run("init", "-p", gun)
    ours = world.rows(clash)

    result = world.import_(clash, fine)
    assert result.returncode == 1, describe(result)
    assert f"{clash}: REFUSED, nothing stored: import into {clash}: root version 1" in result.stdout
    assert f"this server holds other trust data for {clash}" in result.stdout
    assert f"{fine}: verified 4 files" in result.stdout
    assert world.rows(clash) == ours


def test_hostile_names_in_the_source_changefeed_are_refused_and_the_others_imported(
    world: World, tmp_path: Path
) -> None:
    fine = "registry.example.com/import/listed-fine"
    world.owner.run("init", "-p", fine)
    hostile = ["registry.example.com/../../evil", "a" * 300, "registry.example.com/\x1b[2Jbad"]
    records = [
        {"ID": str(n), "GUN": gun, "Version": 1, "Category": "update"}
        for n, gun in enumerate([*hostile, fine], 1)
    ]
    with tampering(world.source, {}, tmp_path, records) as (url, ca):
        result = world.import_(source=url, ca=ca)
    assert result.returncode == 1, describe(result)
    assert f"{hostile[0]}: REFUSED, nothing stored: invalid repository name: contains '..'" in (
        result.stdout
    )
    assert f"{hostile[1]}: REFUSED, nothing stored: invalid repository name: longer than 255" in (
        result.stdout
    )
    assert "'registry.example.com/\\x1b[2Jbad': REFUSED" in result.stdout
    assert "\x1b" not in result.stdout + result.stderr
    assert f"{fine}: verified 4 files" in result.stdout
    assert world.rows(hostile[0]) == [] and world.rows(fine) != []

    for bad, reason in (
        ([1], "holds a malformed record: 1"),
        ([records[0]] * 1000, "does not move on"),
    ):
        with tampering(world.source, {}, tmp_path, bad) as (url, ca):
            result = world.import_(source=url, ca=ca)
        expect_failure(result, f"cannot list the source's GUNs: the source's changefeed {reason}")


def test_a_root_chain_over_the_cap_is_refused_and_nothing_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source that keeps rotating its root (every version validly signed) is not followed
    without bound: past ROOT_CHAIN_CAP bytes the GUN is refused."""
    gun = "registry.example.com/import/rotating"
    url = f"sqlite:///{tmp_path / 'ours.db'}"
    upgrade(url)
    stores = Stores.from_url(url)
    with TrustServer().running() as source:
        repository = Repository(source, gun)
        repository.publish(TARGETS)
        for _ in range(3):
            repository.rotate_root_key()
        repository.publish_snapshot()
        root_size = len(repository.root)
        monkeypatch.setattr(notary_api, "ROOT_CHAIN_CAP", int(root_size * 2.5))
        (refused,) = notary_api.import_from_api(stores.metadata, source.remote(), [gun])
        assert isinstance(refused, Refused)
        assert refused.reason.startswith(f"{gun}: the source's root versions 1-3 take more than")
        assert stores.metadata.latest(gun, ROOT) is None
        monkeypatch.setattr(notary_api, "ROOT_CHAIN_CAP", root_size * 4)
        (imported,) = notary_api.import_from_api(stores.metadata, source.remote(), [gun])
        assert not isinstance(imported, Refused), imported
        assert imported.fetched.trusted.root.version == 4
    stores.engine.dispose()
