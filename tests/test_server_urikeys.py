"""Server keys an operator registers (`tufnotary-server key add`), held outside the database.

With the default key_backend a registered key is handed out before a new one is made (on
every engine).

With key_backend 'uri' (set by `serve` flags, with the PKCS#11 flags for hsm: keys) the server
hands out only registered keys: an EC key in a SoftHSM2 token and an Ed25519 key behind
securesystemslib's file2: scheme. The real notary CLI publishes, rotates onto them and
verifies; the database holds public keys and URIs only; `key list` and `key remove` show and
drop keys, audited; a role with no registered key left is refused with the command to run.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from support.api import Server
from support.clients import (
    NOTARY_HINT,
    NotaryCLI,
    expect_failure,
    fetch_json,
    key_id,
    require_cli,
    server_key,
    signature_valid,
)
from support.server import running_server, server_environment
from support.softhsm import MODULE, SoftHSM
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import ROOT, SNAPSHOT, TIMESTAMP, Metadata, Timestamp
from tufnotary.metadata.verify import verify_threshold
from tufnotary.server import keyregistry
from tufnotary.server.context import server_context

pytestmark = pytest.mark.e2e

GUN = "registry.example.com/kms/server-keys"


def _server_cli(
    data_dir: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tufnotary.server.cli", *args, "--data-dir", str(data_dir)]
    return subprocess.run(
        command, env=server_environment(env), capture_output=True, text=True, timeout=120
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _file_key(directory: Path) -> tuple[str, Path, ed25519.Ed25519PrivateKey]:
    """An Ed25519 key in a PKCS#8 file: its file2: URI, its public key file, the key."""
    private = ed25519.Ed25519PrivateKey.generate()
    path = directory / "timestamp-ed25519.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = directory / "timestamp-ed25519.pub"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return f"file2:{path}", public, private


def _rows(database: Path) -> list[dict[str, object]]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM server_keys")]


def test_registered_keys_are_handed_out_and_sign_for_notary(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    notary_binary = require_cli("notary", NOTARY_HINT)
    data_dir = tmp_path / "data"
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    pkcs11 = {
        "TUFNOTARY_KEY_BACKEND": "uri",
        "TUFNOTARY_PKCS11_MODULE": str(MODULE),
        "TUFNOTARY_PKCS11_TOKEN_LABEL": softhsm.label,
        "TUFNOTARY_PKCS11_PIN_FILE": str(pin_file),
    }
    flags = (
        *("--key-backend", "uri", "--pkcs11-module", str(MODULE)),
        *("--pkcs11-token-label", softhsm.label, "--pkcs11-pin-file", str(pin_file)),
    )
    timestamp_uri, snapshot_uri = softhsm.new_key(), softhsm.new_key()
    file_uri, file_public, file_private = _file_key(tmp_path)

    _ok(_server_cli(data_dir, {}, "migrate"))
    # registered before the repository exists: hsm: public keys are read from the token
    for role, uri in (("timestamp", timestamp_uri), ("snapshot", snapshot_uri)):
        said = _ok(
            _server_cli(data_dir, pkcs11, "key", "add", "--gun", GUN, "--role", role, "--uri", uri)
        )
        assert f"{role} key " in said and "registered" in said
    mistyped = _server_cli(
        data_dir, {}, "key", "add", "--gun", GUN, "--role", "timestamp", "--uri", "file2:/no/such"
    )
    expect_failure(mistyped, "public key of file2:/no/such is needed", "--public-key")
    no_pin = _server_cli(
        data_dir, {}, "key", "add", "--gun", GUN, "--role", "timestamp", "--uri", timestamp_uri
    )
    expect_failure(no_pin, "is needed", "pkcs11_")
    (tmp_path / "other").mkdir()
    _, other_public, _ = _file_key(tmp_path / "other")
    wrong_public = _server_cli(
        data_dir,
        {},
        *("key", "add", "--gun", GUN, "--role", "timestamp"),
        *("--uri", file_uri, "--public-key", str(other_public)),
    )
    expect_failure(wrong_public, file_uri, "did not sign")

    with running_server(tmp_path, *flags) as server:
        owner = NotaryCLI.for_server(server, tmp_path / "owner", notary_binary)
        owner.run("init", "-p", GUN)
        timestamp = server_key(server, GUN, "timestamp")
        owner.run("key", "rotate", GUN, "snapshot", "-r")  # the registered snapshot key
        target = tmp_path / "app.bin"
        target.write_bytes(b"application v1\n")
        owner.run("add", "-p", GUN, "v1", str(target))

        # the Ed25519 file key, registered while serving, is the next timestamp key
        said = _ok(
            _server_cli(
                data_dir,
                {},
                *("key", "add", "--gun", GUN, "--role", "timestamp"),
                *("--uri", file_uri, "--public-key", str(file_public)),
            )
        )
        assert "registered" in said
        owner.run("key", "rotate", GUN, "timestamp", "-r")
        rotated = server_key(server, GUN, "timestamp")
        assert rotated["keytype"] == "ed25519"
        raw = file_private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert rotated["keyval"]["public"] == base64.b64encode(raw).decode()
        target.write_bytes(b"application v2\n")
        owner.run("add", "-p", GUN, "v2", str(target))

        reader = NotaryCLI.for_server(server, tmp_path / "reader", notary_binary)
        assert set(reader.list_targets(GUN)) == {"v1", "v2"}
        root = fetch_json(server, GUN, "root.json")["signed"]
        for role in ("snapshot", "timestamp"):
            (listed,) = root["roles"][role]["keyids"]
            assert signature_valid(fetch_json(server, GUN, f"{role}.json"), root["keys"][listed])
        assert root["roles"]["timestamp"]["keyids"] == [key_id(rotated)]

        # nothing registered is left for the timestamp role: refused, naming the command
        refused = requests.post(
            f"{server.url}/v2/{GUN}/_trust/tuf/timestamp.key",
            verify=str(server.ca_cert),
            timeout=30,
        )
        assert refused.status_code == 500
        assert "tufnotary-server key add --gun" in refused.json()["errors"][0]["detail"]
        other = requests.get(
            f"{server.url}/v2/{GUN}-other/_trust/tuf/timestamp.key",
            verify=str(server.ca_cert),
            timeout=30,
        )
        assert other.status_code == 500 and "no unused timestamp key" in other.text
        log = server.log.read_bytes()

    listed = [
        json.loads(line)
        for line in _ok(_server_cli(data_dir, {}, "key", "list", GUN, "--json")).splitlines()
        if line.startswith("{")
    ]
    assert {(entry["role"], entry["uri"]) for entry in listed} == {
        ("timestamp", timestamp_uri),
        ("snapshot", snapshot_uri),
        ("timestamp", file_uri),
    }
    assert all(entry["first_used"] for entry in listed)
    current = _server_cli(data_dir, {}, "key", "remove", key_id(rotated))
    expect_failure(current, "current root lists key", "rotate it first")
    _ok(_server_cli(data_dir, {}, "key", "remove", key_id(timestamp)))  # rotated away
    rows = {row["key_id"]: row for row in _rows(data_dir / "tufnotary.db")}
    assert key_id(timestamp) not in rows and len(rows) == 2
    assert all(row["private"] is None and row["uri"] for row in rows.values())
    audit = _ok(_server_cli(data_dir, {}, "audit", "--gun", GUN))
    assert audit.count("key-add") == 3 and audit.count("key-remove") == 1
    database = (data_dir / "tufnotary.db").read_bytes()
    for secret in (softhsm.pin.encode(), b"PRIVATE KEY"):
        assert secret not in database and secret not in log


def test_key_backend_flags_are_settings(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    pkcs11 = _server_cli(data_dir, {}, "serve", "--key-backend", "pkcs11")
    assert pkcs11.returncode == 2
    assert (
        "pkcs11_module, pkcs11_token_label, exactly one of pkcs11_pin, pkcs11_pin_file: required "
        "with key_backend 'pkcs11' (from command line)"
    ) in pkcs11.stderr
    partial = _server_cli(
        data_dir, {}, "serve", "--key-backend", "uri", "--pkcs11-token-label", "signing"
    )
    assert partial.returncode == 2
    assert "pkcs11_module" in partial.stderr and "key_backend 'uri'" in partial.stderr
    missing = _server_cli(
        data_dir,
        {},
        *("serve", "--key-backend", "pkcs11", "--pkcs11-module", str(tmp_path / "no.so")),
        *("--pkcs11-token-label", "signing", "--pkcs11-pin-file", str(tmp_path / "no-pin")),
    )
    expect_failure(missing, "pkcs11_pin_file: cannot read", str(tmp_path / "no-pin"))


def test_a_registered_key_is_handed_out_before_a_new_one(database_url: str, tmp_path: Path) -> None:
    """key_backend 'database' (the default): a rotation hands out the registered file2: key
    (Ed25519 while the server makes ECDSA keys), which then signs the timestamp."""
    server = Server.start(tmp_path / "data", database_url)
    stores = server_context(server.app).stores
    repo = server.new_repo(GUN)
    uri, public_file, _ = _file_key(tmp_path)
    public = Key.from_public_key(serialization.load_pem_public_key(public_file.read_bytes()))
    with pytest.raises(keyregistry.RegistryError, match=r"public key of .* is needed"):
        keyregistry.register(stores, GUN, "timestamp", uri, None, None)
    with pytest.raises(keyregistry.RegistryError, match="only snapshot and timestamp"):
        keyregistry.register(stores, GUN, "targets", uri, public, None)
    with pytest.raises(keyregistry.RegistryError, match="invalid repository name: contains"):
        keyregistry.register(stores, "example.com/../x", "timestamp", uri, public, None)
    registered = keyregistry.register(stores, GUN, "timestamp", uri, public, None)
    with pytest.raises(keyregistry.RegistryError, match="already a timestamp key of"):
        keyregistry.register(stores, f"{GUN}-2", "timestamp", uri, public, None)

    rotated = server.server_key(GUN, "timestamp", method="POST")
    assert rotated == public and registered.key_id == public.key_id
    assert server.server_key(GUN, "timestamp", method="POST") == public  # until it signs
    repo.root.keys[public.key_id] = public
    repo.root.roles[TIMESTAMP].keyids = [public.key_id]
    repo.root.version += 1
    files = {ROOT: repo.root_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert server.upload(GUN, files).status_code == 200
    timestamp = Metadata.from_bytes(server.get(GUN, "timestamp.json").data, Timestamp)
    verify_threshold(timestamp, {public.key_id: public}, 1, TIMESTAMP)
    assert timestamp.signatures[0].method == "eddsa"
    new = server.server_key(GUN, "timestamp", method="POST")  # used: a new key is made
    assert new.keytype == "ecdsa"
    with pytest.raises(keyregistry.RegistryError, match="current root lists key"):
        keyregistry.remove(stores, public.key_id)
    assert keyregistry.remove(stores, new.key_id).key_id == new.key_id
    actions = [record.action for record in stores.audit.records(gun=GUN)]
    assert actions.count("key-add") == 1 and actions.count("key-remove") == 1
