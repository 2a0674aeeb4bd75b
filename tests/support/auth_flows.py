"""The end-to-end flows every auth mode runs against a real server: alice may push and pull
``registry.example.com/...``, bob may only pull; with the real notary and docker CLIs, and a
runner for our own CLI."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from click.testing import CliRunner

from support.clients import (
    DOCKER_HINT,
    NOTARY_HINT,
    PASSPHRASE,
    DockerCLI,
    NotaryCLI,
    ecdsa_public_key,
    expect_failure,
    key_id,
    pem_body,
    require_cli,
)
from support.server import ServerInfo
from tufnotary.client.cli import cli

REFUSED = "not authorized to perform this operation: server returned 401"


def basic(user: str, password: str) -> str:
    """The value of an HTTP Basic credential (``NOTARY_AUTH``, docker's ``auth``)."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def notary_flow(server: ServerInfo, base: Path, gun: str, password: str) -> None:
    """alice creates ``gun`` with notary and publishes; bob reads it, and with alice's keys
    the server refuses his upload; after alice deletes it, bob finds no trust data."""
    binary = require_cli("notary", NOTARY_HINT)

    def notary_as(user: str, home: str = "") -> NotaryCLI:
        notary = NotaryCLI.for_server(server, base / (home or user), binary)
        notary.env["NOTARY_AUTH"] = basic(user, password)
        return notary

    alice = notary_as("alice")
    alice.run("init", "-p", gun)
    target = base / "artifact"
    target.write_bytes(b"payload")
    alice.run("add", "-p", gun, "v1", str(target))
    assert set(alice.list_targets(gun)) == {"v1"}
    alice.run("key", "rotate", gun, "snapshot", "-r")

    assert set(notary_as("bob").list_targets(gun)) == {"v1"}
    # bob with alice's keys: the signing works, the server refuses the upload
    refused = notary_as("bob", home="alice").run("add", "-p", gun, "v2", str(target), check=False)
    expect_failure(refused, REFUSED)
    assert set(alice.list_targets(gun)) == {"v1"}

    alice.run("delete", gun, "--remote")
    fresh = notary_as("bob", home="fresh")
    expect_failure(fresh.run("list", gun, check=False), "does not have trust data")


def docker_flow(server: ServerInfo, base: Path, repo: str, password: str) -> None:
    """alice adds a signer to ``repo`` with docker trust; bob inspects it, and with alice's
    trust data the server refuses his signer."""
    binary = require_cli("docker", DOCKER_HINT)

    def docker_as(user: str, home: str = "") -> DockerCLI:
        docker = DockerCLI.for_server(server, base / f"docker-{home or user}", binary)
        config = {"auths": {"registry.example.com": {"auth": basic(user, password)}}}
        (docker.config_dir / "config.json").write_text(json.dumps(config))
        return docker

    alice = docker_as("alice")
    key_dir = base / "keys"
    key_dir.mkdir()
    alice.run("trust", "key", "generate", "signer1", "--dir", str(key_dir))
    signer_id = key_id(ecdsa_public_key(pem_body((key_dir / "signer1.pub").read_bytes())))
    alice.run("trust", "signer", "add", "--key", str(key_dir / "signer1.pub"), "signer1", repo)

    inspected = docker_as("bob").inspect(repo)
    assert [s["Name"] for s in inspected["Signers"]] == ["signer1"]
    assert signer_id in [k["ID"] for s in inspected["Signers"] for k in s["Keys"]]
    # bob with alice's keys: the signing works, the server refuses the upload
    bob_with_keys = docker_as("bob", home="bob-with-keys")
    shutil.copytree(alice.trust_dir, bob_with_keys.trust_dir)
    bob_with_keys.run("trust", "key", "generate", "signer2", "--dir", str(key_dir))
    signer2 = str(key_dir / "signer2.pub")
    refused = bob_with_keys.run(
        "trust", "signer", "add", "--key", signer2, "signer2", repo, check=False
    )
    expect_failure(refused, REFUSED)
    signers = docker_as("bob", home="bob-2").inspect(repo)["Signers"]
    assert [s["Name"] for s in signers] == ["signer1"]


def run_our_cli(
    server: ServerInfo,
    trust_dir: Path,
    *args: str,
    expect: int = 0,
    env: Mapping[str, str] | None = None,
) -> str:
    """``tufnotary -s URL --tlscacert CA -d TRUST_DIR *args`` in-process, with the key
    passphrases set; asserts its exit status and returns stdout + stderr."""
    variables = {
        "NOTARY_ROOT_PASSPHRASE": PASSPHRASE,
        "NOTARY_TARGETS_PASSPHRASE": PASSPHRASE,
        "NOTARY_SNAPSHOT_PASSPHRASE": PASSPHRASE,
        **(env or {}),
    }
    base = ["-s", server.url, "--tlscacert", str(server.ca_cert), "-d", str(trust_dir)]
    result = CliRunner().invoke(cli, [*base, *args], env=variables)
    output = result.stdout + result.stderr
    assert result.exit_code == expect, f"{args}: exit {result.exit_code}\n{output}"
    return output
