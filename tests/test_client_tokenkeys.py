"""Publishers' keys in a PKCS#11 token (SoftHSM2), used through securesystemslib's HSM signer.

The token's keys are made inside it (sensitive, not extractable). A root key and a delegation
key in the token sign a repository that the real notary and docker CLIs then verify; key
status and rotations work with them; nothing private reaches the trust directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from support.clients import DOCKER_HINT, NOTARY_HINT, DockerCLI, NotaryCLI, require_cli
from support.server import ServerInfo, running_server
from support.softhsm import PIN, SoftHSM
from tufnotary.client.cli import cli
from tufnotary.client.rootcert import root_certificate
from tufnotary.client.tokenkeys import (
    PIN_ENV,
    NotExportable,
    PinRequired,
    Pins,
    PublicKeyNeeded,
    TokenFailure,
    TokenKeyMismatch,
    UnsupportedKeyURI,
)
from tufnotary.client.trustdir import TrustDir
from tufnotary.metadata.keys import ECDSA, ECDSA_X509, Key, root_certificate_key
from tufnotary.metadata.signing import ECDSA_METHOD, PrivateKey, verify_signature

GUN = "registry.example.com/hsm/app"
RELEASES = "targets/releases"
PASSPHRASE = "token-tests-passphrase"


def _private_material(trust_dir: Path) -> list[Path]:
    """Files of the trust directory that hold a private key."""
    return [
        path
        for path in trust_dir.rglob("*")
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    ]


def test_token_key_signs_in_wire_form_and_makes_root_certificate(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    trustdir = TrustDir(tmp_path / "trust", pins=Pins({PIN_ENV: PIN}))
    uri = softhsm.new_key()
    record = trustdir.token_keys.register(uri, "root", None, None)
    assert record.public.keytype == ECDSA and record.backend == "PKCS#11 token"
    signer = trustdir.load_key(record.key_id)
    signature = signer.sign(b"message")
    assert signature.method == ECDSA_METHOD and len(signature.value) == 64  # raw r||s, not DER
    assert signature.keyid == record.key_id
    assert verify_signature(record.public, signature, b"message")

    certificate = root_certificate(signer, GUN)  # built here, signed by the token
    assert certificate.keytype == ECDSA_X509 and certificate.canonical_id == record.key_id
    assert root_certificate_key(certificate, GUN, None) == certificate  # notary's checks pass
    signed_as_cert = signer.sign(b"root", certificate.key_id)
    assert verify_signature(certificate, signed_as_cert, b"root")

    # only the public record is stored, and it names the key the way notary does
    stored = json.loads(trustdir.token_keys.path(record.key_id).read_bytes())
    assert set(stored) == {"key_id", "role", "gun", "uri", "keytype", "public_key", "created"}
    assert (
        stored["key_id"]
        == Key.from_dict(
            {"keytype": stored["keytype"], "keyval": {"public": stored["public_key"]}}
        ).key_id
    )
    assert _private_material(trustdir.path) == []
    assert [(i.key_id, i.uri) for i in trustdir.list_keys()] == [(record.key_id, uri)]
    with pytest.raises(NotExportable):
        trustdir.export_key(record.key_id)
    trustdir.remove_key(record.key_id)  # forgets the reference; the token keeps its key
    assert trustdir.list_keys() == []


def test_token_key_failures_are_refused(softhsm: SoftHSM, tmp_path: Path) -> None:
    uri = softhsm.new_key()
    without_pin = TrustDir(tmp_path / "a", pins=Pins({}))
    with pytest.raises(PinRequired):
        without_pin.token_keys.register(uri, "root", None, None)
    wrong_pin = TrustDir(tmp_path / "b", pins=Pins({PIN_ENV: "000000"}))
    with pytest.raises(TokenFailure, match="PinIncorrect"):
        wrong_pin.token_keys.register(uri, "root", None, None)
    trustdir = TrustDir(tmp_path / "c", pins=Pins({PIN_ENV: PIN}))
    with pytest.raises(TokenFailure):
        trustdir.token_keys.register(softhsm.uri(99), "root", None, None)  # no such key
    other = PrivateKey.generate().public
    with pytest.raises(TokenKeyMismatch):  # the URI's key does not sign as this public key
        trustdir.token_keys.register(uri, "root", None, other)
    with pytest.raises(UnsupportedKeyURI):
        trustdir.token_keys.register("file2:/tmp/key", "root", None, other)
    with pytest.raises(PublicKeyNeeded):
        trustdir.token_keys.register("awskms:arn:aws:kms:key/1", "targets", GUN, None)
    for directory in ("a", "b", "c"):
        assert not (tmp_path / directory / "token_keys").exists()  # nothing registered


@dataclass
class Tool:
    """`tufnotary` in-process for one trust directory, the token's PIN in the environment."""

    server: ServerInfo
    trust_dir: Path

    def __call__(self, *args: str | Path, expect: int = 0) -> Any:
        env = {
            PIN_ENV: PIN,
            "NOTARY_ROOT_PASSPHRASE": PASSPHRASE,
            "NOTARY_TARGETS_PASSPHRASE": PASSPHRASE,
            "NOTARY_SNAPSHOT_PASSPHRASE": PASSPHRASE,
        }
        common = ["-s", self.server.url, "--tlscacert", str(self.server.ca_cert)]
        argv = [*common, "-d", str(self.trust_dir), "--json", *map(str, args)]
        result = CliRunner().invoke(cli, argv, env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{args}: {result.stderr}") from result.exception
        assert result.exit_code == expect, f"{args}: {result.stdout}{result.stderr}"
        return json.loads(result.stdout) if expect == 0 else result.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    with running_server(tmp_path_factory.mktemp("hsm-server")) as info:
        yield info


def test_root_and_delegation_keys_in_token_verified_by_notary_and_docker(
    softhsm: SoftHSM, server: ServerInfo, tmp_path: Path
) -> None:
    notary_binary = require_cli("notary", NOTARY_HINT)
    docker_binary = require_cli("docker", DOCKER_HINT)
    tool = Tool(server, tmp_path / "owner")
    root_uri, releases_uri, new_root_uri = (softhsm.new_key() for _ in range(3))
    root = tool("key", "import", "--uri", root_uri, "--role", "root")
    assert root["backend"] == "PKCS#11 token"
    initialized = tool("init", GUN)
    assert initialized["root_key_id"] == root["key_id"] and initialized["root_key_reused"]

    releases_pem = tmp_path / "releases.pem"
    releases = tool("key", "import", "--uri", releases_uri, "--role", RELEASES, "-o", releases_pem)
    tool("delegation", "add", GUN, RELEASES, str(releases_pem), "--all-paths", "-p")
    digest = hashlib.sha256(b"manifest v1").hexdigest()
    tool("addhash", GUN, "v1", "11", "--sha256", digest, "-r", RELEASES, "-p")

    notary = NotaryCLI.for_server(server, tmp_path / "notary", notary_binary)
    listed = notary.list_targets(GUN)
    assert (listed["v1"].sha256, listed["v1"].role) == (digest, RELEASES)
    docker = DockerCLI.for_server(server, tmp_path / "docker-home", docker_binary)
    inspected = docker.inspect(GUN)
    assert [(t["SignedTag"], t["Digest"]) for t in inspected["SignedTags"]] == [("v1", digest)]
    (admin_root,) = [k for k in inspected["AdministrativeKeys"] if k["Name"] == "Root"]
    root_cert_id = admin_root["Keys"][0]["ID"]

    status = {role["role"]: role for role in tool("key", "status", GUN)["roles"]}
    assert [(k["key_id"], k["location"], k["where"]) for k in status["root"]["keys"]] == [
        (root_cert_id, "token", root_uri)
    ]
    assert status["root"]["keys"][0]["age_days"] == 0  # from the certificate's notBefore
    assert [(k["key_id"], k["location"]) for k in status[RELEASES]["keys"]] == [
        (releases["key_id"], "token")
    ]
    assert status["targets"]["keys"][0]["location"] == "file"
    assert status["timestamp"]["keys"][0]["location"] == "server"
    assert all(role["warnings"] == [] for role in status.values())
    assert status[RELEASES]["expires"] is not None

    # root rotation from one token key to another: the old one signs too; notary follows
    new_root = tool("key", "import", "--uri", new_root_uri, "--role", "root")
    rotated = tool("key", "rotate", GUN, "root", "--key", new_root["key_id"])
    digest2 = hashlib.sha256(b"manifest v2").hexdigest()
    tool("addhash", GUN, "v2", "11", "--sha256", digest2, "-r", RELEASES, "-p")
    assert set(notary.list_targets(GUN)) == {"v1", "v2"}
    inspected = docker.inspect(GUN)
    (admin_root,) = [k for k in inspected["AdministrativeKeys"] if k["Name"] == "Root"]
    assert admin_root["Keys"] == [{"ID": rotated["key_id"]}]
    assert {t["SignedTag"] for t in inspected["SignedTags"]} == {"v1", "v2"}

    # targets rotated to a token key, which then signs the targets role
    targets_key = tool("key", "import", "--uri", softhsm.new_key(), "--role", "targets", GUN)
    tool("key", "rotate", GUN, "targets", "--key", targets_key["key_id"])
    digest3 = hashlib.sha256(b"manifest v3").hexdigest()
    tool("addhash", GUN, "v3", "11", "--sha256", digest3, "-p")
    listed = notary.list_targets(GUN)
    assert (listed["v3"].sha256, listed["v3"].role) == (digest3, "targets")
    status = {role["role"]: role for role in tool("key", "status", GUN)["roles"]}
    assert [(k["key_id"], k["location"]) for k in status["targets"]["keys"]] == [
        (targets_key["key_id"], "token")
    ]

    # the token keys' private halves are nowhere in the trust directory
    files = _private_material(tool.trust_dir)
    assert len(files) == 2  # the first targets and the snapshot key files, nothing else
    token_ids = {root["key_id"], releases["key_id"], new_root["key_id"], targets_key["key_id"]}
    assert not any(path.stem in token_ids for path in files)


def test_key_status_warns_about_old_keys(server: ServerInfo, tmp_path: Path) -> None:
    tool = Tool(server, tmp_path / "owner")
    gun = "registry.example.com/hsm/aged"
    tool("init", gun, "--server-snapshot")
    targets = tool("key", "rotate", gun, "targets")["key_id"]
    status = {role["role"]: role for role in tool("key", "status", gun, "--max-age", "1")["roles"]}
    assert status["targets"]["warnings"] == []
    old = next((tool.trust_dir / "private").glob(f"{targets}.key"))
    aged = old.stat().st_mtime - 3 * 86400
    os.utime(old, (aged, aged))
    status = {role["role"]: role for role in tool("key", "status", gun, "--max-age", "1")["roles"]}
    (warning,) = status["targets"]["warnings"]
    assert "is 3 days old (over 1)" in warning and f"key rotate {gun} targets" in warning
    assert status["snapshot"]["keys"][0]["location"] == "server"
    assert status["snapshot"]["warnings"] == status["root"]["warnings"] == []
    # the server's keys are aged by what the server says (X-Tufnotary-Key-Created)
    for role in ("snapshot", "timestamp"):
        (held,) = status[role]["keys"]
        assert held["location"] == "server" and held["age_days"] == 0 and held["created"]
    with sqlite3.connect(server.data_dir / "tufnotary.db") as database:
        database.execute(
            "UPDATE server_keys SET created_at = datetime(created_at, '-100 days') WHERE gun = ?",
            (gun,),
        )
    status = {role["role"]: role for role in tool("key", "status", gun)["roles"]}
    for role in ("snapshot", "timestamp"):
        assert status[role]["keys"][0]["age_days"] == 100
        (warning,) = status[role]["warnings"]
        assert "is 100 days old (over 90)" in warning
        assert f"tufnotary key rotate {gun} {role} -r" in warning
    assert status["targets"]["warnings"] == []  # 3 days: under the default 365
    status = {r["role"]: r for r in tool("key", "status", gun, "--max-server-age", "101")["roles"]}
    assert status["timestamp"]["warnings"] == []
    offline = {r["role"]: r for r in tool("key", "status", gun, "--offline")["roles"]}
    assert offline["timestamp"]["keys"][0]["age_days"] is None  # the server is not asked
