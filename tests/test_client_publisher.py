"""Publishing with the client library: staged changes, signing, refusals that lose nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.api import Server, serving
from tufnotary.client.changes import ChangeError, Changelist, StagedChange
from tufnotary.client.publisher import MissingKeysError, RepositoryExists
from tufnotary.client.remote import RejectedError
from tufnotary.client.repository import Repository, TargetNotFound
from tufnotary.client.trustdir import Passphrases, TrustDir
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
from tufnotary.metadata.signing import PrivateKey
from tufnotary.metadata.verify import verify_threshold

GUN = "registry.example.com/team/app"
PASSPHRASES = Passphrases(
    env={
        "NOTARY_ROOT_PASSPHRASE": "root-pass",
        "NOTARY_TARGETS_PASSPHRASE": "targets-pass",
        "NOTARY_SNAPSHOT_PASSPHRASE": "snapshot-pass",
        "NOTARY_DELEGATION_PASSPHRASE": "delegation-pass",
    }
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    app_server = Server.start(tmp_path / "server")
    with serving(app_server.app) as url:
        yield app_server, url


def _repo(url: str, folder: Path, gun: str = GUN) -> Repository:
    return Repository(gun, url, TrustDir(folder, PASSPHRASES), verify=False)


def _served(server: Server, name: str, signed_class: type) -> Metadata:  # type: ignore[type-arg]
    response = server.get(GUN, name)
    assert response.status_code == 200, response.data
    return Metadata.from_bytes(response.data, signed_class)


@pytest.mark.parametrize("server_snapshot", [False, True])
def test_initialize_and_publish_like_the_go_client(
    server: tuple[Server, str], tmp_path: Path, server_snapshot: bool
) -> None:
    app_server, url = server
    repo = _repo(url, tmp_path / "trust")
    repo.initialize(server_snapshot=server_snapshot)
    root = _served(app_server, "root.json", Root)
    assert root.signed.version == 1
    assert _served(app_server, "targets.json", Targets).signed.version == 2
    snapshot = _served(app_server, "snapshot.json", Snapshot)
    snapshot_key = root.signed.keys[root.signed.roles[SNAPSHOT].keyids[0]]
    verify_threshold(snapshot, {snapshot_key.key_id: snapshot_key}, 1, SNAPSHOT)
    assert snapshot.signed.version == (1 if server_snapshot else 2)
    with pytest.raises(RepositoryExists):
        _repo(url, tmp_path / "other").initialize()

    content = tmp_path / "manifest.json"
    content.write_bytes(b'{"schemaVersion":2}')
    meta = repo.add_file("1.4", content)
    assert repo.publish() == [TARGETS]
    served = _served(app_server, "targets.json", Targets).signed
    assert served.version == 3
    assert served.targets["1.4"].to_dict() == meta.to_dict()
    assert repo.staged() == []
    fresh = _repo(url, tmp_path / "fresh")
    assert [(t.name, t.role, t.sha256) for t in fresh.targets()] == [
        ("1.4", TARGETS, meta.sha256_hex)
    ]
    assert fresh.lookup("1.4").meta.length == len(b'{"schemaVersion":2}')
    with pytest.raises(TargetNotFound):
        fresh.lookup("1.5")


def test_delegate_publishes_and_owner_rotates_keys(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    app_server, url = server
    owner = _repo(url, tmp_path / "owner")
    owner.initialize()
    delegate_dir = TrustDir(tmp_path / "delegate", PASSPHRASES)
    delegate_key = delegate_dir.generate_key("targets/releases")
    owner.add_delegation("targets/releases", [delegate_key.public], ["releases/"])
    assert owner.publish() == [TARGETS]
    delegate = Repository(GUN, url, delegate_dir, verify=False)
    delegate.add_target("releases/v1", FileMeta.of(b"one"), roles=["targets/releases"])
    # the delegate holds no snapshot key, and this repository's snapshot is client-held
    with pytest.raises(MissingKeysError, match="snapshot"):
        delegate.publish()
    assert len(delegate.staged()) == 1
    owner.rotate_key(SNAPSHOT, server_managed=True)
    assert delegate.publish() == ["targets/releases"]
    assert [(t.name, t.role) for t in owner.targets()] == [("releases/v1", "targets/releases")]

    for role in (TARGETS, ROOT, TIMESTAMP):
        owner.rotate_key(role)
    root = _served(app_server, "root.json", Root).signed
    assert root.version == 5
    timestamp = _served(app_server, "timestamp.json", Timestamp)
    timestamp_key = root.keys[root.roles[TIMESTAMP].keyids[0]]
    verify_threshold(timestamp, {timestamp_key.key_id: timestamp_key}, 1, TIMESTAMP)
    # a client that trusted root version 1 follows the rotations
    assert [(t.name, t.role) for t in delegate.targets()] == [("releases/v1", "targets/releases")]
    assert delegate.trustdir.read_metadata(GUN, ROOT) == app_server.get(GUN, "root.json").data


def test_refused_publish_keeps_the_staged_changes(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    app_server, url = server
    owner = _repo(url, tmp_path / "owner")
    owner.initialize(server_snapshot=True)
    key = owner.trustdir.generate_key("targets/qa")
    owner.add_delegation("targets/qa", [key.public], ["qa/"])
    owner.publish()
    owner.add_target("prod/v1", FileMeta.of(b"x"), roles=["targets/qa"])
    before = app_server.get(GUN, "timestamp.json").data
    with pytest.raises(RejectedError) as refused:
        owner.publish()
    assert refused.value.status == 400 and refused.value.code == "INVALID_UPDATE"
    assert "outside the paths" in str(refused.value)
    assert [change.name for change in owner.staged()] == ["prod/v1"]
    assert app_server.get(GUN, "timestamp.json").data == before
    owner.reset()
    assert owner.staged() == []


def test_missing_targets_key_is_reported_before_anything_is_sent(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    app_server, url = server
    _repo(url, tmp_path / "owner").initialize()
    stranger = _repo(url, tmp_path / "stranger")
    stranger.add_target("v1", FileMeta.of(b"x"))
    with pytest.raises(MissingKeysError, match="targets key"):
        stranger.publish()
    assert _served(app_server, "timestamp.json", Timestamp).signed.version == 1


def test_witness_resigns_a_delegation_unchanged(server: tuple[Server, str], tmp_path: Path) -> None:
    app_server, url = server
    owner = _repo(url, tmp_path / "owner")
    owner.initialize()
    key = owner.trustdir.generate_key("targets/releases")
    owner.add_delegation("targets/releases", [key.public], [""])
    owner.add_target("v1", FileMeta.of(b"x"), roles=["targets/releases"])
    owner.publish()
    first = _served(app_server, "targets/releases.json", Targets).signed
    assert owner.witness(["targets/releases"]) == ["targets/releases"]
    again = _served(app_server, "targets/releases.json", Targets).signed
    assert again.version == first.version + 1 and again.targets == first.targets


# -- changes ------------------------------------------------------------------------------------


def test_changelist_round_trip(tmp_path: Path) -> None:
    changes = Changelist(tmp_path)
    key = PrivateKey.generate().public
    staged = [
        StagedChange.add_target("v1", FileMeta.of(b"x")),
        StagedChange.add_delegation("targets/a", [key], ["a/"], threshold=1),
        StagedChange.remove_target("v0", "targets/a"),
    ]
    for change in staged:
        changes.add(change)
    assert Changelist(tmp_path).load() == staged
    assert (
        json.loads((tmp_path / "tufnotary-changes.json").read_text())[0]["action"] == "add-target"
    )


def test_delegation_changes() -> None:
    one, two = PrivateKey.generate().public, PrivateKey.generate().public
    targets = Targets(1, "2030-01-01T00:00:00Z")
    StagedChange.add_delegation("targets/a", [one], ["a/"]).apply(targets)
    StagedChange.add_delegation("targets/a", [two], ["b/"], threshold=2).apply(targets)
    entry = targets.delegations.role("targets/a")
    assert entry is not None
    assert (entry.keyids, entry.paths, entry.threshold) == (
        [one.key_id, two.key_id],
        ["a/", "b/"],
        2,
    )
    with pytest.raises(ChangeError, match="needs 3 signatures"):
        StagedChange.add_delegation("targets/a", [], [], threshold=3).apply(targets)
    with pytest.raises(ChangeError):
        StagedChange.add_delegation("targets/a", [one], [], threshold=0)
    with pytest.raises(ChangeError):
        StagedChange.add_delegation("targets/Bad", [one], [])
    StagedChange.remove_delegation("targets/a").apply(targets)
    assert targets.delegations.roles == [] and targets.delegations.keys == {}


def test_delegation_with_threshold_two_is_signed_by_two_signers(
    server: tuple[Server, str], tmp_path: Path
) -> None:
    """notary#841: each signer adds a signature to the same version before it is published."""
    app_server, url = server
    owner = _repo(url, tmp_path / "owner")
    owner.initialize(server_snapshot=True)
    alice = _repo(url, tmp_path / "alice")
    bob = _repo(url, tmp_path / "bob")
    keys = [signer.trustdir.generate_key("targets/releases").public for signer in (alice, bob)]
    owner.add_delegation("targets/releases", keys, [""], threshold=2)
    owner.publish()

    alice.add_target("1.4", FileMeta.of(b"manifest"), roles=["targets/releases"])
    with pytest.raises(MissingKeysError, match="cosign"):
        alice.publish()  # one key of two: refused before anything is sent, nothing is lost
    assert len(alice.staged()) == 1
    half_signed = alice.sign_role("targets/releases")
    with pytest.raises(RejectedError, match="threshold"):
        alice.publish_signed({"targets/releases": half_signed})
    signed = bob.cosign("targets/releases", half_signed)
    assert len(Metadata.from_bytes(signed, Targets).signatures) == 2
    with pytest.raises(MissingKeysError):
        owner.cosign("targets/releases", half_signed)  # the owner holds neither key
    assert alice.publish_signed({"targets/releases": signed}) == ["targets/releases"]
    assert alice.staged() == []
    assert app_server.get(GUN, "targets/releases.json").data == signed
    image = _repo(url, tmp_path / "deployer").verify_image("1.4")
    assert (image.role, image.digest) == (
        "targets/releases",
        "sha256:" + FileMeta.of(b"manifest").sha256_hex,  # type: ignore[operator]
    )
