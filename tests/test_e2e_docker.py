"""The real docker CLI (`docker trust`, no daemon) against tufnotary-server over TLS.

Tags are signed the way `docker trust sign` would (it needs a daemon): with the notary CLI
working in docker's trust dir, writing the tag into `targets/releases` and `targets/<signer>`.
One server per module; every test uses its own repository (GUN) and docker config.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.clients import (
    DOCKER_HINT,
    NOTARY_HINT,
    DockerCLI,
    ListedTarget,
    NotaryCLI,
    ecdsa_public_key,
    expect_failure,
    fetch_json,
    http_get,
    key_id,
    pem_body,
    require_cli,
    role_key,
    server_key,
    sha256_b64,
    signature_valid,
)
from support.server import ServerInfo, running_server

pytestmark = pytest.mark.e2e

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "1" * 64,
            "size": 1234,
        },
        "layers": [],
    },
    indent=3,
).encode()


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    """(docker, notary) executables."""
    return require_cli("docker", DOCKER_HINT), require_cli("notary", NOTARY_HINT)


@pytest.fixture(scope="module")
def server(
    binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerInfo]:
    with running_server(tmp_path_factory.mktemp("docker-e2e-server")) as info:
        yield info


@pytest.fixture
def docker(server: ServerInfo, tmp_path: Path, binaries: tuple[str, str]) -> DockerCLI:
    """A docker CLI with its own (empty) DOCKER_CONFIG and HOME."""
    return DockerCLI.for_server(server, tmp_path / "docker-home", binaries[0])


@pytest.fixture
def notary_binary(binaries: tuple[str, str]) -> str:
    return binaries[1]


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository (and GUN) of this test's own."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"registry.example.com/e2e/{name}"


def generate_signer(docker: DockerCLI, name: str, key_dir: Path) -> str:
    """`docker trust key generate NAME --dir DIR`; the new key's id."""
    key_dir.mkdir(parents=True, exist_ok=True)
    docker.run("trust", "key", "generate", name, "--dir", str(key_dir))
    public = ecdsa_public_key(pem_body((key_dir / f"{name}.pub").read_bytes()))
    signer_id = key_id(public)
    assert (docker.trust_dir / "private" / f"{signer_id}.key").is_file()
    return signer_id


def delegation(targets: dict[str, Any], role: str) -> dict[str, Any]:
    (entry,) = [r for r in targets["signed"]["delegations"]["roles"] if r["name"] == role]
    return entry


def sign_tag(docker: DockerCLI, notary_binary: str, repo: str, tag: str, signer: str) -> Path:
    """Sign `repo:tag` as `signer` the way `docker trust sign` does; the manifest stand-in."""
    manifest = docker.home / f"manifest-{tag}.json"
    manifest.write_bytes(MANIFEST)
    roles = ("--roles", "targets/releases", "--roles", f"targets/{signer}")
    docker.notary(notary_binary).run("add", "-p", repo, tag, str(manifest), *roles)
    return manifest


def trusted_pull(docker: DockerCLI, ref: str) -> str:
    """Output of `DOCKER_CONTENT_TRUST=1 docker pull REF` (fails later: there is no daemon)."""
    result = docker.run("pull", ref, env={"DOCKER_CONTENT_TRUST": "1"}, check=False)
    return expect_failure(result)


def test_signer_add_sign_pull_inspect_revoke(
    server: ServerInfo, docker: DockerCLI, notary_binary: str, repo: str, tmp_path: Path
) -> None:
    alice_id = generate_signer(docker, "alice", tmp_path / "keys")
    added = docker.run(
        "trust", "signer", "add", "--key", str(tmp_path / "keys" / "alice.pub"), "alice", repo
    )
    assert f"Successfully added signer: alice to {repo}" in added.stdout

    # a new repository with a server-managed snapshot: root 1, targets 2, server snapshot 1
    root = fetch_json(server, repo, "root.json")
    targets = fetch_json(server, repo, "targets.json")
    snapshot = fetch_json(server, repo, "snapshot.json")
    assert root["signed"]["version"] == 1
    assert targets["signed"]["version"] == 2
    assert snapshot["signed"]["version"] == 1
    assert fetch_json(server, repo, "timestamp.json")["signed"]["version"] == 1
    for role in ("snapshot", "timestamp"):
        held = server_key(server, repo, role)
        assert root["signed"]["roles"][role]["keyids"] == [key_id(held)], role
    assert signature_valid(snapshot, server_key(server, repo, "snapshot"))
    assert signature_valid(targets, role_key(root, "targets"))
    for role in ("targets/alice", "targets/releases"):
        assert delegation(targets, role) == {
            "keyids": [alice_id],
            "name": role,
            "paths": [""],
            "threshold": 1,
        }
    root_id = root["signed"]["roles"]["root"]["keyids"][0]
    targets_id = root["signed"]["roles"]["targets"]["keyids"][0]
    administrative = [
        {"Name": "Root", "Keys": [{"ID": root_id}]},
        {"Name": "Repository", "Keys": [{"ID": targets_id}]},
    ]
    assert docker.inspect(repo) == {
        "Name": repo,
        "SignedTags": [],
        "Signers": [{"Name": "alice", "Keys": [{"ID": alice_id}]}],
        "AdministrativeKeys": administrative,
    }

    manifest = sign_tag(docker, notary_binary, repo, "v1", "alice")
    digest = hashlib.sha256(MANIFEST).hexdigest()
    alice_key = role_key(targets, "targets/alice")
    for role in ("targets/releases", "targets/alice"):
        signed_role = fetch_json(server, repo, f"{role}.json")
        assert signed_role["signed"]["targets"]["v1"]["hashes"]["sha256"] == sha256_b64(MANIFEST)
        assert signed_role["signed"]["targets"]["v1"]["length"] == manifest.stat().st_size
        assert signature_valid(signed_role, alice_key), role

    pulled = trusted_pull(docker, f"{repo}:v1")
    assert f"{repo}:v1@sha256:{digest}" in pulled

    assert docker.inspect(repo) == {
        "Name": repo,
        "SignedTags": [{"SignedTag": "v1", "Digest": digest, "Signers": ["alice"]}],
        "Signers": [{"Name": "alice", "Keys": [{"ID": alice_id}]}],
        "AdministrativeKeys": administrative,
    }
    pretty = docker.run("trust", "inspect", "--pretty", repo).stdout
    assert re.search(rf"^v1\s+{digest}\s+alice$", pretty, re.M), pretty

    signer_roles = ("targets/releases", "targets/alice")
    before = {r: fetch_json(server, repo, f"{r}.json")["signed"]["version"] for r in signer_roles}
    revoked = docker.run("trust", "revoke", "-y", f"{repo}:v1")
    assert f"Successfully deleted signature for {repo}:v1" in revoked.stdout
    for role, version in before.items():
        signed_role = fetch_json(server, repo, f"{role}.json")
        assert "v1" not in signed_role["signed"]["targets"], role
        assert signed_role["signed"]["version"] == version + 1, role
        assert signature_valid(signed_role, alice_key), role
    assert docker.inspect(repo)["SignedTags"] == []
    assert "No valid trust data for v1" in trusted_pull(docker, f"{repo}:v1")


def test_signer_remove(
    server: ServerInfo, docker: DockerCLI, notary_binary: str, repo: str, tmp_path: Path
) -> None:
    bob_id = generate_signer(docker, "bob", tmp_path / "keys")
    docker.run("trust", "signer", "add", "--key", str(tmp_path / "keys" / "bob.pub"), "bob", repo)
    sign_tag(docker, notary_binary, repo, "v1", "bob")
    targets_before = http_get(server, repo, "tuf/targets.json").content

    forced = docker.run("trust", "signer", "remove", "-f", "bob", repo)
    assert f'Removing signer "bob" from {repo}' in forced.stdout
    if any(s["Name"] == "bob" for s in docker.inspect(repo)["Signers"]):
        # docker 28.2.2: `signer remove -f` exits 0 but neither asks, removes nor publishes
        assert http_get(server, repo, "tuf/targets.json").content == targets_before
        confirmed = docker.run("trust", "signer", "remove", "bob", repo, input="y\n")
        assert f"Successfully removed bob from {repo}" in confirmed.stdout

    assert docker.inspect(repo)["Signers"] == []
    targets = fetch_json(server, repo, "targets.json")
    assert targets["signed"]["version"] == json.loads(targets_before)["signed"]["version"] + 1
    roles = {r["name"]: r for r in targets["signed"]["delegations"]["roles"]}
    assert "targets/bob" not in roles
    # bob's key leaves targets/releases too; it was the only one (Go writes null for the list)
    assert bob_id in delegation(json.loads(targets_before), "targets/releases")["keyids"]
    assert not roles["targets/releases"]["keyids"]
    unknown = docker.run("trust", "signer", "remove", "-f", "carol", repo, check=False)
    expect_failure(unknown, f"no signer carol for repository {repo}")


def test_inspect_unknown_repository(server: ServerInfo, docker: DockerCLI, repo: str) -> None:
    assert http_get(server, repo, "tuf/root.json").status_code == 404
    for extra in ((), ("--pretty",)):
        result = docker.run("trust", "inspect", *extra, repo, check=False)
        output = expect_failure(result).lower()
        assert f"no signatures or cannot access {repo}" in output or (
            f"does not have trust data for {repo}" in output
        ), output


def test_repository_created_by_notary_is_inspected_by_docker(
    server: ServerInfo, docker: DockerCLI, notary_binary: str, repo: str, tmp_path: Path
) -> None:
    notary = NotaryCLI.for_server(server, tmp_path / "notary-trust", notary_binary)
    notary.run("init", "-p", repo)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(MANIFEST)
    notary.run("add", "-p", repo, "latest", str(manifest))
    root = fetch_json(server, repo, "root.json")
    digest = hashlib.sha256(MANIFEST).hexdigest()

    assert docker.inspect(repo) == {
        "Name": repo,
        "SignedTags": [{"SignedTag": "latest", "Digest": digest, "Signers": ["Repo Admin"]}],
        "Signers": [],
        "AdministrativeKeys": [
            {"Name": "Root", "Keys": [{"ID": root["signed"]["roles"]["root"]["keyids"][0]}]},
            {
                "Name": "Repository",
                "Keys": [{"ID": root["signed"]["roles"]["targets"]["keyids"][0]}],
            },
        ],
    }
    assert f"{repo}:latest@sha256:{digest}" in trusted_pull(docker, f"{repo}:latest")


def test_repository_created_by_docker_is_listed_by_notary(
    server: ServerInfo, docker: DockerCLI, notary_binary: str, repo: str, tmp_path: Path
) -> None:
    alice_id = generate_signer(docker, "alice", tmp_path / "keys")
    docker.run(
        "trust", "signer", "add", "--key", str(tmp_path / "keys" / "alice.pub"), "alice", repo
    )
    sign_tag(docker, notary_binary, repo, "v2", "alice")
    digest = hashlib.sha256(MANIFEST).hexdigest()

    reader = NotaryCLI.for_server(server, tmp_path / "notary-reader", notary_binary)
    listed = reader.list_targets(repo)
    assert set(listed) == {"v2"}
    assert (listed["v2"].sha256, listed["v2"].size) == (digest, len(MANIFEST))
    assert listed["v2"].role in {"targets/releases", "targets/alice"}
    assert reader.list_targets(repo, "--roles", "targets/releases") == {
        "v2": ListedTarget("v2", digest, len(MANIFEST), "targets/releases")
    }
    assert reader.lookup(repo, "v2") == (digest, len(MANIFEST))
    delegations = reader.delegations(repo)
    assert set(delegations) == {"targets/alice", "targets/releases"}
    assert all(d.key_ids == (alice_id,) and d.threshold == 1 for d in delegations.values())
