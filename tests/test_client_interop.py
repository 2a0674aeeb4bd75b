"""Our client library with the real notary and docker CLIs, on tufnotary-server and on the
reference notary-server.

Every test runs once per server (one server of each kind for the module) with a GUN of its
own. What one client publishes, the others must read exactly: `notary list` in a new trust
dir, `docker trust inspect`, `DOCKER_CONTENT_TRUST=1 docker pull` (which prints the resolved
digest, then fails for want of a daemon) and a new `Repository` on a TrustDir of its own.
Keys move between the clients through their trust directories.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.clients import (
    DOCKER_HINT,
    NOTARY_HINT,
    PASSPHRASE,
    DockerCLI,
    ListedDelegation,
    ListedTarget,
    NotaryCLI,
    expect_failure,
    fetch_json,
    key_id,
    require_cli,
    server_key,
    signature_valid,
)
from support.reference import running_reference_server
from support.server import ServerInfo, running_server
from tufnotary.client.images import (
    DigestMismatch,
    ImageNotSigned,
    Policy,
    RequiredSignerMissing,
    VerifiedImage,
)
from tufnotary.client.remote import NotFoundError, RejectedError
from tufnotary.client.repository import Repository, TargetNotFound
from tufnotary.client.rootcert import root_certificate
from tufnotary.client.trustdir import (
    DELEGATION_ENV,
    REPOSITORY_ENV,
    ROOT_ENV,
    Passphrases,
    TrustDir,
)
from tufnotary.client.updater import RELEASES, RepositoryNotFound
from tufnotary.metadata.keys import Key, common_name
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS, TIMESTAMP, FileMeta
from tufnotary.metadata.signing import PrivateKey

pytestmark = pytest.mark.e2e

SERVERS = ("tufnotary", "reference")
GUN_NAME_MAX = 43  # "example.com/interop/" + 43: the 64 characters a certificate CN may have
LONG_GUN = "registry.example.com/interop/" + "a" * 60 + "/image"  # 95 characters
# cryptography warns when it reads such a GUN from a certificate's common name
SIGNATURE_METHODS = {"ecdsa": "ecdsa", "ed25519": "eddsa", "rsa": "rsapss"}
ALL_PATHS = '"" <all paths>'  # how `notary delegation list` shows the paths [""]
PASSPHRASES = Passphrases(
    env=dict.fromkeys(
        (
            *ROOT_ENV,
            "NOTARY_TARGETS_PASSPHRASE",
            "NOTARY_SNAPSHOT_PASSPHRASE",
            DELEGATION_ENV,
            REPOSITORY_ENV,
        ),
        PASSPHRASE,
    )
)


def manifest(name: str) -> bytes:
    """A distinct stand-in for an image manifest."""
    return json.dumps({"schemaVersion": 2, "name": name}).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def docker_meta(data: bytes) -> FileMeta:
    """A tag as docker signs it: the manifest's length and sha256 only."""
    return FileMeta(len(data), {"sha256": hashlib.sha256(data).digest()})


# -- servers and clients ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    """(notary, docker) executables."""
    return require_cli("notary", NOTARY_HINT), require_cli("docker", DOCKER_HINT)


@pytest.fixture(scope="module", params=SERVERS)
def server_kind(request: pytest.FixtureRequest) -> str:
    """Which server the tests run against: "tufnotary" or "reference"."""
    return str(request.param)


@pytest.fixture(scope="module")
def server(
    server_kind: str, binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerInfo]:
    """tufnotary-server or the reference notary-server, shared by the module's tests."""
    directory = tmp_path_factory.mktemp(f"interop-{server_kind}")
    launch = running_reference_server if server_kind == "reference" else running_server
    with launch(directory) as info:
        yield info


@pytest.fixture
def gun(request: pytest.FixtureRequest) -> str:
    """A GUN of this test's own, short enough for our root certificates (see LONG_GUN)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    if len(name) > GUN_NAME_MAX:
        name = f"{name[: GUN_NAME_MAX - 9]}-{sha256(name.encode())[:8]}"
    return f"example.com/interop/{name}"


@dataclass
class Lab:
    """Clients of one server, each in its own directory under `root`."""

    server: ServerInfo
    root: Path
    notary_binary: str
    docker_binary: str
    _fresh: Iterator[int] = field(default_factory=itertools.count)

    @property
    def verify(self) -> str:
        return str(self.server.ca_cert)

    def trustdir(self, where: str | Path) -> TrustDir:
        return TrustDir(self.root / where, PASSPHRASES)

    def repo(self, gun: str, where: str | Path) -> Repository:
        """Our library on the TrustDir `where` (a name under `root`, or a path)."""
        return Repository(gun, self.server.url, self.trustdir(where), verify=self.verify)

    def notary(self, where: str | Path) -> NotaryCLI:
        return NotaryCLI.for_server(self.server, self.root / where, self.notary_binary)

    def docker(self, name: str) -> DockerCLI:
        return DockerCLI.for_server(self.server, self.root / name, self.docker_binary)

    def new_repo(self, gun: str) -> Repository:
        """Our library with an empty TrustDir: trusts the current root on first use."""
        return self.repo(gun, f"reader-{next(self._fresh)}")

    def new_notary(self) -> NotaryCLI:
        return self.notary(f"notary-reader-{next(self._fresh)}")


@pytest.fixture
def lab(server: ServerInfo, tmp_path: Path, binaries: tuple[str, str]) -> Lab:
    return Lab(server, tmp_path, *binaries)


# -- what readers must see -------------------------------------------------------------------


@dataclass
class Expected:
    """The signed content of a repository: role -> {target name: manifest}, the roles in
    notary's search order (targets first, then its delegations as listed)."""

    roles: dict[str, dict[str, bytes]] = field(default_factory=lambda: {TARGETS: {}})

    def sign(self, role: str, targets: dict[str, bytes]) -> None:
        self.roles.setdefault(role, {}).update(targets)

    def listing(self) -> dict[str, ListedTarget]:
        """`notary list`: a name signed higher up shadows the same name further down."""
        rows: dict[str, ListedTarget] = {}
        for role, targets in self.roles.items():
            for name, data in targets.items():
                rows.setdefault(name, ListedTarget(name, sha256(data), len(data), role))
        return rows

    def docker_image(self, gun: str, tag: str) -> VerifiedImage | None:
        """What docker resolves `tag` to: targets/releases first, then targets."""
        for role in (RELEASES, TARGETS):
            data = self.roles.get(role, {}).get(tag)
            if data is not None:
                return VerifiedImage(gun, tag, f"sha256:{sha256(data)}", role, len(data))
        return None


def listed(repo: Repository) -> dict[str, ListedTarget]:
    """Our `Repository.targets()` in the shape of `notary list` rows."""
    rows = {}
    for target in repo.targets():
        assert target.sha256 is not None, target
        rows[target.name] = ListedTarget(
            target.name, target.sha256, target.meta.length, target.role
        )
    return rows


def check_readers(lab: Lab, gun: str, expected: Expected) -> Repository:
    """A new notary trust dir and a new Repository list exactly `expected`; the Repository
    resolves each name by docker's rule, with and without the digest. Returns it."""
    listing = expected.listing()
    assert lab.new_notary().list_targets(gun) == listing
    reader = lab.new_repo(gun)
    assert listed(reader) == listing
    for name in listing:
        image = expected.docker_image(gun, name)
        if image is None:
            with pytest.raises(ImageNotSigned):
                reader.verify_image(name)
        else:
            assert reader.verify_image(name) == image
            assert reader.verify_image(name, digest=image.digest) == image
    return reader


def versions(server: ServerInfo, gun: str, *roles: str) -> dict[str, int]:
    """The served version of each role."""
    return {role: fetch_json(server, gun, f"{role}.json")["signed"]["version"] for role in roles}


def root_keyids(server: ServerInfo, gun: str) -> dict[str, list[str]]:
    """The key ids of each base role in the served root."""
    roles = fetch_json(server, gun, "root.json")["signed"]["roles"]
    return {role: roles[role]["keyids"] for role in (ROOT, TARGETS, SNAPSHOT, TIMESTAMP)}


def signed_by(server: ServerInfo, gun: str, role: str, key: Key | dict[str, Any]) -> bool:
    """Whether the served `role` carries a valid signature by `key`."""
    key_dict = key.to_dict() if isinstance(key, Key) else key
    return signature_valid(fetch_json(server, gun, f"{role}.json"), key_dict)


def trusted_pull(docker: DockerCLI, ref: str) -> str:
    """Output of `DOCKER_CONTENT_TRUST=1 docker pull REF` (it fails later: no daemon)."""
    return expect_failure(docker.run("pull", ref, env={"DOCKER_CONTENT_TRUST": "1"}, check=False))


def inspect_rows(docker: DockerCLI, gun: str) -> dict[str, Any]:
    """`docker trust inspect`, signed tags sorted (docker's order of equal tags is unstable)."""
    data = docker.inspect(gun)
    data["SignedTags"].sort(key=lambda row: (row["SignedTag"], row["Digest"]))
    return data


def notary_keys(notary: NotaryCLI) -> dict[str, str]:
    """`notary key list` as {role: key id} (one key per role)."""
    rows = {}
    for line in notary.run("key", "list").stdout.splitlines():
        fields = line.split()
        ids = [f for f in fields if re.fullmatch(r"[0-9a-f]{64}", f)]
        if ids:
            assert fields[0] not in rows, line
            rows[fields[0]] = ids[0]
    return rows


def docker_key(public_pem: Path) -> Key:
    """The `ecdsa` key of a public key PEM written by `docker trust key generate`."""
    public = serialization.load_pem_public_key(public_pem.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey), public
    return Key.from_public_key(public)


# -- our library publishes; notary and new clients read ---------------------------------------


@pytest.mark.parametrize(
    "server_snapshot", [False, True], ids=["client-snapshot", "server-snapshot"]
)
def test_library_lifecycle_read_by_notary_and_new_clients(
    lab: Lab, gun: str, server_snapshot: bool, tmp_path: Path
) -> None:
    """Initialize, publish, delegate, rotate every key kind, delete: after each step new
    notary and library clients see exactly what was signed, and cached ones follow."""
    server = lab.server
    owner = lab.repo(gun, "owner")
    follower = lab.repo(gun, "follower")  # keeps its cache through every rotation
    follower_notary = lab.notary("follower-notary")
    expected = Expected()

    def check() -> Repository:
        reader = check_readers(lab, gun, expected)
        assert follower_notary.list_targets(gun) == expected.listing()
        assert listed(follower) == expected.listing()
        return reader

    owner.initialize(server_snapshot=server_snapshot)
    first_snapshot = 1 if server_snapshot else 2  # the server's own, or the client's version 2
    assert versions(server, gun, ROOT, TARGETS, SNAPSHOT) == {
        ROOT: 1,
        TARGETS: 2,
        SNAPSHOT: first_snapshot,
    }
    keyids = root_keyids(server, gun)
    assert keyids[TIMESTAMP] == [key_id(server_key(server, gun, TIMESTAMP))]
    assert (keyids[SNAPSHOT] == [key_id(server_key(server, gun, SNAPSHOT))]) == server_snapshot
    held = sorted(info.role for info in owner.trustdir.list_keys())
    assert held == sorted([ROOT, TARGETS] + ([] if server_snapshot else [SNAPSHOT]))
    assert check().refresh().root.version == 1

    image_file = tmp_path / "v1.json"
    image_file.write_bytes(manifest("targets-v1"))
    meta = owner.add_file("v1", image_file)
    assert meta == FileMeta.of(manifest("targets-v1"))
    owner.add_target("v2", docker_meta(manifest("targets-v2")))
    assert owner.publish() == [TARGETS]
    expected.sign(TARGETS, {"v1": manifest("targets-v1"), "v2": manifest("targets-v2")})
    assert versions(server, gun, ROOT, TARGETS) == {ROOT: 1, TARGETS: 3}
    check()

    old_targets = fetch_json(server, gun, "root.json")["signed"]["keys"][keyids[TARGETS][0]]
    new_targets = owner.rotate_key(TARGETS)
    assert root_keyids(server, gun)[TARGETS] == [new_targets.key_id]
    assert versions(server, gun, ROOT, TARGETS) == {ROOT: 2, TARGETS: 4}
    assert signed_by(server, gun, TARGETS, new_targets)
    assert not signed_by(server, gun, TARGETS, old_targets)
    check()

    new_snapshot = owner.rotate_key(SNAPSHOT, server_managed=True)
    assert new_snapshot.key_id == key_id(server_key(server, gun, SNAPSHOT))
    assert root_keyids(server, gun)[SNAPSHOT] == [new_snapshot.key_id]
    assert versions(server, gun, ROOT, TARGETS) == {ROOT: 3, TARGETS: 4}
    assert signed_by(server, gun, SNAPSHOT, new_snapshot)
    check()

    # a delegate whose TrustDir holds nothing but the delegation key
    delegate = lab.repo(gun, "delegate")
    releases_key = delegate.trustdir.generate_key(RELEASES)
    owner.add_delegation(RELEASES, [releases_key.public], [""])
    assert owner.publish() == [TARGETS]
    assert lab.new_notary().delegations(gun) == {
        RELEASES: ListedDelegation(RELEASES, ALL_PATHS, (releases_key.public.key_id,), 1)
    }
    delegate.add_target("v1", docker_meta(manifest("releases-v1")), roles=[RELEASES])
    delegate.add_target("v3", FileMeta.of(manifest("releases-v3")), roles=[RELEASES])
    assert delegate.publish() == [RELEASES]
    assert [info.key_id for info in delegate.trustdir.list_keys()] == [releases_key.public.key_id]
    expected.sign(RELEASES, {"v1": manifest("releases-v1"), "v3": manifest("releases-v3")})
    assert versions(server, gun, ROOT, TARGETS, RELEASES) == {ROOT: 3, TARGETS: 5, RELEASES: 1}
    assert signed_by(server, gun, RELEASES, releases_key.public)
    reader = check()
    assert reader.lookup("v1").role == TARGETS  # notary's lookup: targets before delegations
    assert reader.lookup("v1", roles=[RELEASES]).sha256 == sha256(manifest("releases-v1"))
    assert delegate.witness([RELEASES]) == [RELEASES]  # re-signed as it is
    assert versions(server, gun, RELEASES) == {RELEASES: 2}
    check()

    old_root = fetch_json(server, gun, "root.json")
    old_root_key = old_root["signed"]["keys"][keyids[ROOT][0]]
    new_root = owner.rotate_key(ROOT)
    assert new_root.keytype == "ecdsa-x509"
    assert root_keyids(server, gun)[ROOT] == [new_root.key_id]
    assert versions(server, gun, ROOT, TARGETS) == {ROOT: 4, TARGETS: 5}
    assert signed_by(server, gun, ROOT, new_root)
    assert signed_by(server, gun, ROOT, old_root_key)  # the old root vouches for the new one
    assert check().refresh().root.version == 4
    assert follower.refresh().root.version == 4
    assert follower_notary.cached(gun, ROOT)["signed"]["version"] == 4

    new_timestamp = owner.rotate_key(TIMESTAMP)
    assert new_timestamp.key_id == key_id(server_key(server, gun, TIMESTAMP))
    assert root_keyids(server, gun)[TIMESTAMP] == [new_timestamp.key_id]
    assert signed_by(server, gun, TIMESTAMP, new_timestamp)
    assert check().refresh().root.version == 5

    # both sides keep publishing under the new root
    owner.remove_target("v2")
    assert owner.publish() == [TARGETS]
    delegate.add_target("v4", FileMeta.of(manifest("releases-v4")), roles=[RELEASES])
    assert delegate.publish() == [RELEASES]
    del expected.roles[TARGETS]["v2"]
    expected.sign(RELEASES, {"v4": manifest("releases-v4")})
    assert versions(server, gun, ROOT, TARGETS, RELEASES) == {ROOT: 5, TARGETS: 6, RELEASES: 3}
    check()

    owner.delete(remote=True)
    missing = lab.new_notary().run("list", gun, check=False)
    expect_failure(missing, f"does not have trust data for {gun}")
    with pytest.raises(RepositoryNotFound):
        lab.new_repo(gun).targets()
    # notary falls back to its cached timestamp when the server has none (spec 4.2); we fail
    # closed, and answer from the cache only when asked to (offline)
    assert follower_notary.list_targets(gun) == expected.listing()
    with pytest.raises(NotFoundError):
        follower.targets()
    offline = Repository(gun, lab.server.url, follower.trustdir, offline=True)
    assert listed(offline) == expected.listing()


def test_out_of_path_targets_never_reach_readers(lab: Lab, gun: str, server_kind: str) -> None:
    """A delegate's target outside its paths: tufnotary refuses the upload (decision 12), the
    reference stores it; no reader shows it either way."""
    owner = lab.repo(gun, "owner")
    owner.initialize(server_snapshot=True)
    delegate = lab.repo(gun, "delegate")
    qa_key = delegate.trustdir.generate_key("targets/qa")
    owner.add_delegation("targets/qa", [qa_key.public], ["qa/"])
    owner.publish()
    delegate.add_target("qa/one", FileMeta.of(manifest("qa-one")), roles=["targets/qa"])
    delegate.publish()
    expected = Expected()
    expected.sign("targets/qa", {"qa/one": manifest("qa-one")})
    assert lab.new_notary().delegations(gun) == {
        "targets/qa": ListedDelegation("targets/qa", "qa/", (qa_key.public.key_id,), 1)
    }

    delegate.add_target("outside", FileMeta.of(manifest("outside")), roles=["targets/qa"])
    if server_kind == "reference":
        assert delegate.publish() == ["targets/qa"]
        assert "outside" in fetch_json(lab.server, gun, "targets/qa.json")["signed"]["targets"]
    else:
        with pytest.raises(RejectedError) as refused:
            delegate.publish()
        assert (refused.value.status, refused.value.code) == (400, "INVALID_UPDATE")
        assert "outside the paths delegated to targets/qa" in str(refused.value)
        delegate.reset()
    reader = check_readers(lab, gun, expected)
    with pytest.raises(TargetNotFound):
        reader.lookup("outside", roles=["targets/qa"])
    qa_only = Policy(required_roles=["targets/qa"])
    with pytest.raises(ImageNotSigned):  # no role signs it within its paths
        reader.verify_image("outside", policy=qa_only)
    assert reader.verify_image("qa/one", policy=qa_only).role == "targets/qa"


# -- notary and docker publish; our library reads ----------------------------------------------


def test_notary_published_repository_read_by_library(lab: Lab, gun: str, tmp_path: Path) -> None:
    """notary init/add/delegation add/delegate publish/rotations: ours reads and verifies."""
    owner = lab.notary("owner")
    files = {}
    for name in ("targets-v1", "releases-v1", "releases-v2", "qa-img", "targets-v5"):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_bytes(manifest(name))
    owner.run("init", "-p", gun)
    owner.run("add", "-p", gun, "v1", str(files["targets-v1"]))
    owner.run("key", "rotate", gun, SNAPSHOT, "-r")  # delegates cannot sign the snapshot

    # a delegate holding a bare key for targets/releases and a certificate's for targets/qa
    delegate = lab.notary("delegate")
    releases_key, qa_key = PrivateKey.generate(), PrivateKey.generate()
    public_pem = releases_key.crypto_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "rel.pem").write_bytes(public_pem)
    (tmp_path / "qa.crt").write_bytes(root_certificate(qa_key, "qa-signer").public)
    for role, key in ((RELEASES, releases_key), ("targets/qa", qa_key)):
        private_pem = tmp_path / f"{role.replace('/', '-')}.key"
        private_pem.write_bytes(
            key.crypto_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        delegate.run("key", "import", str(private_pem), "--role", role)
    owner.run("delegation", "add", "-p", gun, RELEASES, str(tmp_path / "rel.pem"), "--all-paths")
    owner.run(
        "delegation", "add", "-p", gun, "targets/qa", str(tmp_path / "qa.crt"), "--paths", "qa/"
    )
    delegate.run("add", "-p", gun, "v1", str(files["releases-v1"]), "--roles", RELEASES)
    delegate.run("add", "-p", gun, "v2", str(files["releases-v2"]), "--roles", RELEASES)
    delegate.run("add", "-p", gun, "qa/img", str(files["qa-img"]), "--roles", "targets/qa")

    expected = Expected()
    expected.sign(TARGETS, {"v1": manifest("targets-v1")})
    expected.sign(RELEASES, {"v1": manifest("releases-v1"), "v2": manifest("releases-v2")})
    expected.sign("targets/qa", {"qa/img": manifest("qa-img")})
    follower = lab.new_repo(gun)  # reads now, and again after notary rotated its keys
    reader = check_readers(lab, gun, expected)
    assert listed(follower) == expected.listing()
    hit = reader.lookup("v1")
    assert hit == reader.lookup("v1", roles=[TARGETS])
    assert (hit.sha256, hit.meta.length) == lab.new_notary().lookup(gun, "v1")
    assert hit.sha256 == sha256(manifest("targets-v1"))
    assert reader.lookup("v1", roles=[RELEASES, TARGETS]).role == RELEASES
    hit = reader.lookup("qa/img", roles=["targets/qa"])
    assert (hit.role, hit.sha256) == ("targets/qa", sha256(manifest("qa-img")))
    with pytest.raises(TargetNotFound):
        reader.lookup("missing")
    with pytest.raises(DigestMismatch):
        reader.verify_image("v1", digest=f"sha256:{sha256(manifest('targets-v1'))}")
    # docker's rule ignores other delegations; a policy naming the role accepts them
    with pytest.raises(ImageNotSigned):
        reader.verify_image("qa/img")
    qa_image = reader.verify_image("qa/img", policy=Policy(required_roles=["targets/qa"]))
    assert qa_image.digest == f"sha256:{sha256(manifest('qa-img'))}"
    with pytest.raises(RequiredSignerMissing):
        reader.verify_image("v2", policy=Policy(required_roles=[RELEASES, "targets/qa"]))

    owner.run("key", "rotate", gun, TARGETS)
    owner.run("key", "rotate", gun, ROOT, input="yes\n")
    owner.run("add", "-p", gun, "v5", str(files["targets-v5"]))
    expected.sign(TARGETS, {"v5": manifest("targets-v5")})
    root_version = versions(lab.server, gun, ROOT)[ROOT]
    assert root_version == 4  # snapshot rotation, targets rotation, root rotation
    assert check_readers(lab, gun, expected).refresh().root.version == root_version
    assert listed(follower) == expected.listing()
    assert follower.refresh().root.version == root_version


def test_docker_created_repository_read_by_library(lab: Lab, gun: str, tmp_path: Path) -> None:
    """docker trust signer add creates the repository; a tag signed in docker's trust dir is
    verified by ours; ours on docker's trust dir signs as the repository admin."""
    docker = lab.docker("docker")
    keys = tmp_path / "keys"
    keys.mkdir()
    docker.run("trust", "key", "generate", "alice", "--dir", str(keys))
    alice = docker_key(keys / "alice.pub")
    docker.run("trust", "signer", "add", "--key", str(keys / "alice.pub"), "alice", gun)
    # sign the tag as `docker trust sign` would (it needs a daemon): releases and the signer
    image = tmp_path / "manifest.json"
    image.write_bytes(manifest("docker-v1"))
    roles = ("--roles", RELEASES, "--roles", "targets/alice")
    docker.notary(lab.notary_binary).run("add", "-p", gun, "v1", str(image), *roles)

    reader = lab.new_repo(gun)
    digest = f"sha256:{sha256(manifest('docker-v1'))}"
    v1 = VerifiedImage(gun, "v1", digest, RELEASES, len(manifest("docker-v1")))
    assert reader.verify_image("v1") == v1
    both = Policy(required_roles=["targets/alice", RELEASES])
    assert reader.verify_image("v1", digest, both).role == "targets/alice"
    assert listed(reader) == lab.new_notary().list_targets(gun)
    for role in (RELEASES, "targets/alice"):
        assert [(t.name, t.role, t.sha256) for t in reader.targets(roles=[role])] == [
            ("v1", role, digest.removeprefix("sha256:"))
        ]
    trusted = reader.refresh()
    assert sorted(trusted.delegated_roles(TARGETS)) == ["targets/alice", RELEASES]
    assert trusted.snapshot is not None
    docker_view = docker.inspect(gun)
    assert docker_view["Signers"] == [{"Name": "alice", "Keys": [{"ID": alice.key_id}]}]
    assert docker_view["AdministrativeKeys"] == [
        {"Name": "Root", "Keys": [{"ID": trusted.root.roles[ROOT].keyids[0]}]},
        {"Name": "Repository", "Keys": [{"ID": trusted.root.roles[TARGETS].keyids[0]}]},
    ]

    # ours, on docker's trust dir, signs a tag with the repository key docker created
    admin = lab.repo(gun, docker.trust_dir)
    admin.add_target("admin", docker_meta(manifest("docker-admin")))
    assert admin.publish() == [TARGETS]
    admin_digest = sha256(manifest("docker-admin"))
    assert {"SignedTag": "admin", "Digest": admin_digest, "Signers": ["Repo Admin"]} in (
        docker.inspect(gun)["SignedTags"]
    )
    assert f"{gun}:admin@sha256:{admin_digest}" in trusted_pull(docker, f"{gun}:admin")
    assert f"{gun}:v1@{digest}" in trusted_pull(docker, f"{gun}:v1")
    assert lab.new_repo(gun).verify_image("admin").digest == f"sha256:{admin_digest}"


# -- docker reads what our library published ---------------------------------------------------


def test_docker_inspects_and_pulls_what_library_signed(lab: Lab, gun: str) -> None:
    """Ours signs tags into targets, targets/releases and targets/alice: docker trust inspect
    lists them and trusted pulls resolve them to the same digests as ours."""
    owner = lab.repo(gun, "owner")
    owner.initialize(server_snapshot=True)
    delegate = lab.repo(gun, "alice")
    alice = delegate.trustdir.generate_key("targets/alice").public
    owner.add_delegation(RELEASES, [alice], [""])
    owner.add_delegation("targets/alice", [alice], [""])
    owner.add_target("v1", docker_meta(manifest("targets-v1")))
    owner.add_target("admin", docker_meta(manifest("admin")))
    assert owner.publish() == [TARGETS]
    delegate.add_target(
        "v1", docker_meta(manifest("releases-v1")), roles=[RELEASES, "targets/alice"]
    )
    delegate.add_target("beta", docker_meta(manifest("beta")), roles=["targets/alice"])
    assert delegate.publish() == ["targets/alice", RELEASES]

    docker = lab.docker("docker")
    keyids = root_keyids(lab.server, gun)
    assert inspect_rows(docker, gun) == {
        "Name": gun,
        "SignedTags": sorted(
            [
                {
                    "SignedTag": "admin",
                    "Digest": sha256(manifest("admin")),
                    "Signers": ["Repo Admin"],
                },
                {
                    "SignedTag": "v1",
                    "Digest": sha256(manifest("releases-v1")),
                    "Signers": ["alice"],
                },
                {
                    "SignedTag": "v1",
                    "Digest": sha256(manifest("targets-v1")),
                    "Signers": ["Repo Admin"],
                },
            ],
            key=lambda row: (row["SignedTag"], row["Digest"]),
        ),
        "Signers": [{"Name": "alice", "Keys": [{"ID": alice.key_id}]}],
        "AdministrativeKeys": [
            {"Name": "Root", "Keys": [{"ID": keyids[ROOT][0]}]},
            {"Name": "Repository", "Keys": [{"ID": keyids[TARGETS][0]}]},
        ],
    }
    reader = lab.new_repo(gun)
    for tag, role, name in (("v1", RELEASES, "releases-v1"), ("admin", TARGETS, "admin")):
        digest = f"sha256:{sha256(manifest(name))}"
        assert f"{gun}:{tag}@{digest}" in trusted_pull(docker, f"{gun}:{tag}")
        assert reader.verify_image(tag) == VerifiedImage(
            gun, tag, digest, role, len(manifest(name))
        )
    # beta is only in targets/alice: neither docker nor our docker rule accepts it
    assert "No trust data for beta" in trusted_pull(docker, f"{gun}:beta")
    with pytest.raises(ImageNotSigned):
        reader.verify_image("beta")


# -- keys move between the clients --------------------------------------------------------------


def test_docker_generated_key_signs_for_library(lab: Lab, gun: str, tmp_path: Path) -> None:
    """A key from `docker trust key generate` signs, through ours on $DOCKER_CONFIG/trust."""
    docker = lab.docker("docker")
    docker.run("trust", "key", "generate", "carol", "--dir", str(tmp_path))
    carol = docker_key(tmp_path / "carol.pub")
    owner = lab.repo(gun, "owner")
    owner.initialize(server_snapshot=True)
    owner.add_delegation(RELEASES, [carol], [""])
    owner.add_delegation("targets/carol", [carol], [""])
    owner.publish()

    signer = lab.repo(gun, docker.trust_dir)
    assert [(k.key_id, k.role) for k in signer.trustdir.list_keys()] == [(carol.key_id, "carol")]
    signer.add_target("v1", docker_meta(manifest("carol-v1")), roles=[RELEASES, "targets/carol"])
    assert signer.publish() == ["targets/carol", RELEASES]
    assert [k.key_id for k in signer.trustdir.list_keys()] == [carol.key_id]  # no key added
    assert signed_by(lab.server, gun, RELEASES, carol)

    digest = sha256(manifest("carol-v1"))
    assert docker.inspect(gun)["SignedTags"] == [
        {"SignedTag": "v1", "Digest": digest, "Signers": ["carol"]}
    ]
    assert f"{gun}:v1@sha256:{digest}" in trusted_pull(docker, f"{gun}:v1")
    expected = Expected({TARGETS: {}, RELEASES: {"v1": manifest("carol-v1")}})
    expected.sign("targets/carol", {"v1": manifest("carol-v1")})
    check_readers(lab, gun, expected)


def test_library_publishes_with_keys_notary_created(lab: Lab, gun: str, tmp_path: Path) -> None:
    """Ours on a notary trust dir publishes and rotates with the keys `notary init` made; that
    notary client keeps publishing afterwards."""
    notary = lab.notary("notary")
    image = tmp_path / "notary.json"
    image.write_bytes(manifest("notary"))
    notary.run("init", "-p", gun)
    notary.run("add", "-p", gun, "n1", str(image))
    created = {info.role: info.key_id for info in lab.trustdir(notary.trust_dir).list_keys()}
    held_snapshot = root_keyids(lab.server, gun)[SNAPSHOT][0]
    assert created[SNAPSHOT] == held_snapshot

    ours = lab.repo(gun, notary.trust_dir)
    ours.add_target("o1", FileMeta.of(manifest("ours-1")))
    assert ours.publish() == [TARGETS]
    assert signed_by(
        lab.server,
        gun,
        SNAPSHOT,
        fetch_json(lab.server, gun, "root.json")["signed"]["keys"][held_snapshot],
    )
    notary.run("add", "-p", gun, "n2", str(image))
    expected = Expected()
    expected.sign(
        TARGETS, {"n1": manifest("notary"), "o1": manifest("ours-1"), "n2": manifest("notary")}
    )
    check_readers(lab, gun, expected)

    new_targets = ours.rotate_key(TARGETS)
    new_root = ours.rotate_key(ROOT)
    assert versions(lab.server, gun, ROOT) == {ROOT: 3}
    assert root_keyids(lab.server, gun)[ROOT] == [new_root.key_id]
    notary.run("add", "-p", gun, "n3", str(image))  # notary signs with the keys ours made
    assert signed_by(lab.server, gun, TARGETS, new_targets)
    expected.sign(TARGETS, {"n3": manifest("notary")})
    check_readers(lab, gun, expected)
    assert notary.list_targets(gun) == expected.listing()


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519", "rsa"])
def test_notary_publishes_with_keys_library_generated(
    lab: Lab, gun: str, tmp_path: Path, algorithm: str
) -> None:
    """`notary -d OURS` publishes with the root, targets and snapshot keys ours generated, and
    a delegate's notary with the delegation key ours generated."""
    owner = lab.repo(gun, "owner")
    owner.initialize()
    owner.add_target("o1", FileMeta.of(manifest("ours-1")))
    owner.publish()
    owner_notary = lab.notary("owner")
    held = {info.role: info.key_id for info in owner.trustdir.list_keys()}
    assert notary_keys(owner_notary) == held
    keyids = root_keyids(lab.server, gun)
    assert [held[TARGETS]] == keyids[TARGETS] and [held[SNAPSHOT]] == keyids[SNAPSHOT]

    image = tmp_path / "notary.json"
    image.write_bytes(manifest("notary"))
    owner_notary.run("add", "-p", gun, "n1", str(image))  # signs targets and the snapshot
    assert versions(lab.server, gun, TARGETS, SNAPSHOT) == {TARGETS: 4, SNAPSHOT: 4}

    owner.rotate_key(SNAPSHOT, server_managed=True)
    delegate = lab.trustdir("delegate")
    releases_key = delegate.generate_key(RELEASES, algorithm=algorithm).public
    owner.add_delegation(RELEASES, [releases_key], [""])
    owner.publish()
    lab.notary("delegate").run("add", "-p", gun, "r1", str(image), "--roles", RELEASES)
    signatures = fetch_json(lab.server, gun, f"{RELEASES}.json")["signatures"]
    assert [(sig["keyid"], sig["method"]) for sig in signatures] == [
        (releases_key.key_id, SIGNATURE_METHODS[algorithm])
    ]  # valid: the readers below verify it

    expected = Expected()
    expected.sign(TARGETS, {"o1": manifest("ours-1"), "n1": manifest("notary")})
    expected.sign(RELEASES, {"r1": manifest("notary")})
    check_readers(lab, gun, expected)


# -- known bugs of our client ---------------------------------------------------------------------


def test_library_reads_long_gun_created_by_notary(lab: Lab, tmp_path: Path) -> None:
    """notary makes root certificates for GUNs over 64 characters; ours verifies them."""
    gun = f"{LONG_GUN}/notary"
    notary = lab.notary("notary")
    notary.run("init", "-p", gun)
    image = tmp_path / "v1.json"
    image.write_bytes(manifest("long-v1"))
    notary.run("add", "-p", gun, "v1", str(image))
    root = lab.new_repo(gun).refresh().root
    (certificate,) = root.keys[root.roles[ROOT].keyids[0]].certificates()
    assert common_name(certificate) == gun
    expected = Expected({TARGETS: {"v1": manifest("long-v1")}})
    check_readers(lab, gun, expected)


def test_library_initializes_long_gun(lab: Lab) -> None:
    """Ours creates a repository whose GUN is longer than 64 characters, as notary does."""
    gun = f"{LONG_GUN}/ours"
    owner = lab.repo(gun, "owner")
    owner.initialize()
    owner.add_target("v1", FileMeta.of(manifest("long-v1")))
    owner.publish()
    check_readers(lab, gun, Expected({TARGETS: {"v1": manifest("long-v1")}}))


def test_library_rotates_root_of_long_gun(lab: Lab) -> None:
    """Ours, on notary's trust dir, rotates the root key of a GUN over 64 characters."""
    gun = f"{LONG_GUN}/rotate"
    notary = lab.notary("notary")
    notary.run("init", "-p", gun)
    new_root = lab.repo(gun, notary.trust_dir).rotate_key(ROOT)
    assert root_keyids(lab.server, gun)[ROOT] == [new_root.key_id]
    assert notary.list_targets(gun) == {}


def test_rotations_drop_replaced_keys_from_root(lab: Lab, gun: str) -> None:
    """After ours rotates targets, snapshot and timestamp keys, root lists only keys in use."""
    owner = lab.repo(gun, "owner")
    owner.initialize()
    for role, server_managed in ((TARGETS, False), (SNAPSHOT, True), (TIMESTAMP, True)):
        owner.rotate_key(role, server_managed=server_managed)
    root = fetch_json(lab.server, gun, "root.json")["signed"]
    in_use = {keyid for role in root["roles"].values() for keyid in role["keyids"]}
    assert sorted(root["keys"]) == sorted(in_use)
