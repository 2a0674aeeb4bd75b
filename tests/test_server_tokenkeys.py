"""Server-held timestamp and snapshot keys made inside a PKCS#11 token (SoftHSM2).

A real `tufnotary-server serve` with key_backend pkcs11 serves repositories that the real
notary and docker CLIs publish and verify, across a timestamp key rotation and a restart;
the database holds only public keys and URIs, neither it nor the log holds the PIN, and the
server refuses to start when the token cannot sign.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from support.clients import (
    DOCKER_HINT,
    NOTARY_HINT,
    DockerCLI,
    NotaryCLI,
    expect_failure,
    fetch_json,
    key_id,
    require_cli,
    server_key,
    signature_valid,
)
from support.server import free_port, running_server, serve_command, server_environment
from support.softhsm import MODULE, SoftHSM
from tufnotary.metadata.keys import Key, b64decode

pytestmark = pytest.mark.e2e

GUN = "registry.example.com/hsm/server-keys"
SERVER_ROLES = ("snapshot", "timestamp")


def _env(softhsm: SoftHSM, pin_file: Path) -> dict[str, str]:
    pin_file.write_text(softhsm.pin + "\n")
    pin_file.chmod(0o600)
    return {
        "TUFNOTARY_KEY_BACKEND": "pkcs11",
        "TUFNOTARY_PKCS11_MODULE": str(MODULE),
        "TUFNOTARY_PKCS11_TOKEN_LABEL": softhsm.label,
        "TUFNOTARY_PKCS11_PIN_FILE": str(pin_file),
        "TUFNOTARY_LOG_LEVEL": "debug",
    }


def _key_rows(database: Path) -> list[dict[str, object]]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM server_keys")]


def _token_key(uri: str) -> tuple[bytes, dict[str, bool]]:
    """The public key (DER SPKI) of the token key behind ``uri`` and its private half's
    protection attributes, read from the token."""
    import pkcs11

    from support.softhsm import PIN

    parsed = urlparse(uri)
    label = dict(parse_qsl(parsed.query))["label"]
    token = pkcs11.lib(str(MODULE)).get_token(token_label=label)
    with token.open(user_pin=PIN) as session:
        key_number = int(parsed.path).to_bytes(8, "big")
        public = session.get_key(object_class=pkcs11.ObjectClass.PUBLIC_KEY, id=key_number)
        private = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, id=key_number)
        from pkcs11.util.ec import encode_ec_public_key

        attributes = {
            name: bool(private[getattr(pkcs11.Attribute, name)])
            for name in ("TOKEN", "SENSITIVE", "EXTRACTABLE")
        }
        return encode_ec_public_key(public), attributes


def _destroy_token_key(uri: str) -> None:
    import pkcs11

    from support.softhsm import PIN

    parsed = urlparse(uri)
    token = pkcs11.lib(str(MODULE)).get_token(token_label=dict(parse_qsl(parsed.query))["label"])
    with token.open(rw=True, user_pin=PIN) as session:
        key_number = int(parsed.path).to_bytes(8, "big")
        session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, id=key_number).destroy()


def _published_key(document_key: dict[str, object]) -> bytes:
    keyval = document_key["keyval"]
    assert isinstance(keyval, dict)
    return b64decode(keyval["public"], "public")


def test_token_keys_serve_rotate_restart_verified_by_notary_and_docker(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    notary_binary = require_cli("notary", NOTARY_HINT)
    docker_binary = require_cli("docker", DOCKER_HINT)
    env = _env(softhsm, tmp_path / "pin")
    target = tmp_path / "app.bin"
    target.write_bytes(b"application v1\n")

    with running_server(tmp_path, env=env) as server:
        owner = NotaryCLI.for_server(server, tmp_path / "owner", notary_binary)
        owner.run("init", "-p", GUN)
        owner.run("key", "rotate", GUN, "snapshot", "-r")  # snapshot key held by the server too
        owner.run("add", "-p", GUN, "v1", str(target))
        old_timestamp = server_key(server, GUN, "timestamp")
        owner.run("key", "rotate", GUN, "timestamp", "-r")
        new_timestamp = server_key(server, GUN, "timestamp")
        assert key_id(new_timestamp) != key_id(old_timestamp)
        assert signature_valid(fetch_json(server, GUN, "timestamp.json"), new_timestamp)
        metrics = requests.get(f"{server.url}/metrics", verify=str(server.ca_cert), timeout=30)
        ages = [line for line in metrics.text.splitlines() if line.startswith("tufnotary_server_")]
        assert {line.split()[0] for line in ages} == {
            f'tufnotary_server_key_age_seconds{{role="{role}"}}' for role in SERVER_ROLES
        }
        assert all(0 <= float(line.split()[1]) < 3600 for line in ages)

    with running_server(tmp_path, env=env) as server:  # restarted on the same data
        owner = NotaryCLI(server.url, server.ca_cert, tmp_path / "owner", notary_binary)
        target.write_bytes(b"application v2\n")
        owner.run("add", "-p", GUN, "v2", str(target))  # signed by the token keys after restart
        reader = NotaryCLI.for_server(server, tmp_path / "reader", notary_binary)
        assert set(reader.list_targets(GUN)) == {"v1", "v2"}
        docker = DockerCLI.for_server(server, tmp_path / "docker-home", docker_binary)
        inspected = docker.inspect(GUN)
        digest = hashlib.sha256(b"application v2\n").hexdigest()
        assert ("v2", digest) in {(t["SignedTag"], t["Digest"]) for t in inspected["SignedTags"]}
        root = fetch_json(server, GUN, "root.json")["signed"]
        for role in SERVER_ROLES:
            (listed,) = root["roles"][role]["keyids"]
            assert signature_valid(fetch_json(server, GUN, f"{role}.json"), root["keys"][listed])
        log = server.log.read_bytes()

    # the database: public key and URI only; each key's public key is the token's
    rows = {row["key_id"]: row for row in _key_rows(server.data_dir / "tufnotary.db")}
    assert set(rows) == {root["roles"][role]["keyids"][0] for role in SERVER_ROLES} | {
        key_id(old_timestamp)
    }
    for key_id_, row in rows.items():
        assert row["private"] is None
        assert isinstance(row["uri"], str) and row["uri"].startswith("hsm:")
        public, attributes = _token_key(row["uri"])
        assert attributes == {"TOKEN": True, "SENSITIVE": True, "EXTRACTABLE": False}
        assert row["public"] == public
        assert Key("ecdsa", public).key_id == key_id_
        if key_id_ in root["keys"]:
            assert _published_key(root["keys"][key_id_]) == public
    for row in rows.values():  # every column: the key's id, names, public key, URI, times
        assert set(row) == {
            "key_id", "gun", "role", "algorithm", "public", "private", "created_at",
            "last_used", "uri",
        }  # fmt: skip
    pin = softhsm.pin.encode()
    assert pin not in (server.data_dir / "tufnotary.db").read_bytes()
    assert pin not in log and b"PRIVATE KEY" not in log
    assert serialization.load_der_public_key(public)  # the token's key is a real EC key


def _start(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`serve` expected to refuse to start: its result."""
    command = serve_command(free_port(), tmp_path / "data")
    return subprocess.run(
        command, env=server_environment(env), capture_output=True, text=True, timeout=120
    )


def test_refuses_to_start_without_a_working_token(softhsm: SoftHSM, tmp_path: Path) -> None:
    env = _env(softhsm, tmp_path / "pin")
    wrong_pin = "987650"
    (tmp_path / "wrong-pin").write_text(wrong_pin)
    refused = _start(tmp_path, env | {"TUFNOTARY_PKCS11_PIN_FILE": str(tmp_path / "wrong-pin")})
    output = expect_failure(refused, "refused the login", "pkcs11_pin")
    assert wrong_pin not in output and softhsm.pin not in output
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    missing = _start(tmp_path, env | {"TUFNOTARY_PKCS11_TOKEN_LABEL": "no-such-token"})
    expect_failure(missing, "'no-such-token' not found", "pkcs11_token_label")
    no_module = _start(tmp_path, env | {"TUFNOTARY_PKCS11_MODULE": str(tmp_path / "no.so")})
    expect_failure(no_module, "does not load", "pkcs11_module")

    with running_server(tmp_path, env=env) as server:
        published = server_key(server, GUN, "timestamp")  # made in the token now
    (row,) = _key_rows(server.data_dir / "tufnotary.db")
    assert row["key_id"] == key_id(published) and row["private"] is None
    _destroy_token_key(str(row["uri"]))
    gone = _start(tmp_path, env)
    expect_failure(gone, "key_backend pkcs11:", str(row["uri"]))
