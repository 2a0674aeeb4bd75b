"""The real notary CLI (Debian notary 0.7) against tufnotary-server over TLS.

One server per module; every test uses its own GUN and trust dirs, so tests are independent.
Outcomes are checked on both sides: what the CLI prints and what the server stores and serves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.clients import (
    NOTARY_HINT,
    ListedDelegation,
    ListedTarget,
    NotaryCLI,
    canonical,
    ecdsa_public_key,
    ecdsa_sign,
    expect_failure,
    fetch_bytes,
    fetch_json,
    http_get,
    key_id,
    require_cli,
    role_key,
    server_key,
    sha256_b64,
    sha512_b64,
    signature_valid,
    trust_url,
)
from support.server import ServerInfo, running_server

pytestmark = pytest.mark.e2e

ROLES = ("root", "targets", "snapshot", "timestamp")
NewClient = Callable[[str], NotaryCLI]


@pytest.fixture(scope="module")
def notary_binary() -> str:
    return require_cli("notary", NOTARY_HINT)


@pytest.fixture(scope="module")
def server(notary_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    with running_server(tmp_path_factory.mktemp("notary-e2e-server")) as info:
        yield info


@pytest.fixture
def new_client(server: ServerInfo, tmp_path: Path, notary_binary: str) -> NewClient:
    """A notary CLI with a new, empty trust dir named `name` (a separate user or machine)."""

    def make(name: str) -> NotaryCLI:
        return NotaryCLI.for_server(server, tmp_path / name, notary_binary)

    return make


@pytest.fixture
def gun(request: pytest.FixtureRequest) -> str:
    """A GUN of this test's own."""
    return "example.com/e2e/" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")


def write(directory: Path, name: str, content: bytes) -> Path:
    path = directory / name
    path.write_bytes(content)
    return path


def hexdigest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions(server: ServerInfo, gun: str) -> dict[str, int]:
    """Version of each top-level role as served now."""
    return {role: fetch_json(server, gun, f"{role}.json")["signed"]["version"] for role in ROLES}


def file_meta(data: bytes) -> dict[str, Any]:
    """A target / meta entry as notary writes it for `data`."""
    return {"hashes": {"sha256": sha256_b64(data), "sha512": sha512_b64(data)}, "length": len(data)}


def served_requests(
    server: ServerInfo, path_suffix: str, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Access-log records of requests whose path ends with `path_suffix` (waits for one)."""
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for line in server.log.read_text(errors="replace").splitlines():
            if not line.startswith("{") or path_suffix not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line still being written
            if str(record.get("path", "")).endswith(path_suffix):
                records.append(record)
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def check_snapshot_covers(server: ServerInfo, gun: str, *roles: str) -> dict[str, Any]:
    """The served snapshot lists the served bytes of `roles`; the timestamp lists the snapshot."""
    snapshot_bytes = fetch_bytes(server, gun, "snapshot.json")
    snapshot = json.loads(snapshot_bytes)
    for role in roles:
        data = fetch_bytes(server, gun, f"{role}.json")
        meta = snapshot["signed"]["meta"][role]
        assert meta["length"] == len(data), role
        assert meta["hashes"]["sha256"] == sha256_b64(data), role
    timestamp = fetch_json(server, gun, "timestamp.json")
    assert timestamp["signed"]["meta"]["snapshot"]["hashes"]["sha256"] == sha256_b64(snapshot_bytes)
    return snapshot


def generate_ec_key(directory: Path) -> tuple[Path, Path, dict[str, Any]]:
    """An EC P-256 key: (private PEM, public PEM, notary `ecdsa` key dict)."""
    private = ec.generate_private_key(ec.SECP256R1())
    key_pem = write(
        directory,
        "delegate-key.pem",
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub_pem = write(
        directory,
        "delegate-pub.pem",
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return key_pem, pub_pem, ecdsa_public_key(spki)


# -- basic publishing -----------------------------------------------------------------------------


def test_init_add_addhash_list_lookup_verify_remove(
    server: ServerInfo, new_client: NewClient, gun: str, tmp_path: Path
) -> None:
    owner = new_client("owner")
    owner.run("init", "-p", gun)
    # first publish: root 1 as created, targets and snapshot re-signed as 2, server timestamp 1
    assert versions(server, gun) == {"root": 1, "targets": 2, "snapshot": 2, "timestamp": 1}
    root = fetch_json(server, gun, "root.json")
    timestamp_key = server_key(server, gun, "timestamp")
    assert root["signed"]["roles"]["timestamp"]["keyids"] == [key_id(timestamp_key)]
    assert signature_valid(fetch_json(server, gun, "timestamp.json"), timestamp_key)
    assert signature_valid(root, role_key(root, "root"))
    assert signature_valid(fetch_json(server, gun, "snapshot.json"), role_key(root, "snapshot"))

    content = b"hello from the e2e test\n"
    owner.run("add", "-p", gun, "app.bin", str(write(tmp_path, "app.bin", content)))
    blob = bytes(range(256)) * 5
    both = ("--sha256", hexdigest(blob), "--sha512", hashlib.sha512(blob).hexdigest())
    owner.run("addhash", "-p", gun, "blob", str(len(blob)), *both)
    owner.run("addhash", "-p", gun, "only256", "42", "--sha256", "ab" * 32)

    expected = {
        "app.bin": ListedTarget("app.bin", hexdigest(content), len(content), "targets"),
        "blob": ListedTarget("blob", hexdigest(blob), len(blob), "targets"),
        "only256": ListedTarget("only256", "ab" * 32, 42, "targets"),
    }
    assert owner.list_targets(gun) == expected

    targets = fetch_json(server, gun, "targets.json")
    assert targets["signed"]["version"] == 5  # 2 + one publish per auto-published change
    assert targets["signed"]["targets"] == {
        "app.bin": file_meta(content),
        "blob": file_meta(blob),
        "only256": {"hashes": {"sha256": base64.b64encode(b"\xab" * 32).decode()}, "length": 42},
    }
    assert signature_valid(targets, role_key(root, "targets"))
    assert versions(server, gun) == {"root": 1, "targets": 5, "snapshot": 5, "timestamp": 4}
    check_snapshot_covers(server, gun, "root", "targets")

    assert owner.lookup(gun, "blob") == (hexdigest(blob), len(blob))
    assert owner.lookup(gun, "app.bin") == (hexdigest(content), len(content))
    lookup_missing = owner.run("lookup", gun, "nope", check=False)
    expect_failure(lookup_missing)

    verified = owner.run("verify", gun, "app.bin", input=content.decode())
    assert verified.stdout == content.decode()  # verify echoes the verified content
    tampered = owner.run("verify", gun, "app.bin", input="tampered\n", check=False)
    expect_failure(tampered, "did not match")

    reader = new_client("reader")  # a fresh trust dir: bootstraps trust from the server
    assert reader.list_targets(gun) == expected
    assert reader.cached(gun, "root") == root

    owner.run("remove", "-p", gun, "blob")
    after = reader.list_targets(gun)
    assert after == {k: v for k, v in expected.items() if k != "blob"}
    assert fetch_json(server, gun, "targets.json")["signed"]["version"] == 6
    assert "blob" not in fetch_json(server, gun, "targets.json")["signed"]["targets"]


def test_staged_changes_status_reset_and_publish(
    server: ServerInfo, new_client: NewClient, gun: str, tmp_path: Path
) -> None:
    owner = new_client("owner")
    owner.run("init", "-p", gun)
    first = write(tmp_path, "first.txt", b"first\n")
    second = write(tmp_path, "second.txt", b"second target\n")

    owner.run("add", gun, "first", str(first))  # staged, not published
    status = owner.run("status", gun).stdout
    assert re.search(r"^0\s+create\s+targets\s+target\s+first$", status, re.M), status
    assert fetch_json(server, gun, "targets.json")["signed"]["targets"] == {}

    owner.run("reset", gun, "--all")
    assert "No unpublished changes" in owner.run("status", gun).stdout
    owner.run("publish", gun)  # nothing staged: only a re-signed snapshot goes up
    assert versions(server, gun) == {"root": 1, "targets": 2, "snapshot": 3, "timestamp": 2}
    assert new_client("after-reset").list_targets(gun) == {}

    owner.run("add", gun, "first", str(first))
    owner.run("add", gun, "second", str(second))
    status = owner.run("status", gun).stdout
    assert re.search(r"^1\s+create\s+targets\s+target\s+second$", status, re.M), status
    published = owner.run("publish", gun)
    assert "Successfully published changes" in published.stdout + published.stderr
    assert "No unpublished changes" in owner.run("status", gun).stdout
    # both staged changes went up in one publish
    assert versions(server, gun) == {"root": 1, "targets": 3, "snapshot": 4, "timestamp": 3}
    assert new_client("reader").list_targets(gun) == {
        "first": ListedTarget("first", hexdigest(b"first\n"), 6, "targets"),
        "second": ListedTarget("second", hexdigest(b"second target\n"), 14, "targets"),
    }


# -- server-managed keys --------------------------------------------------------------------------


def test_server_managed_snapshot_and_timestamp_rotation(
    server: ServerInfo, new_client: NewClient, gun: str, tmp_path: Path
) -> None:
    owner = new_client("owner")
    owner.run("init", "-p", gun)
    one = b"one\n"
    owner.run("add", "-p", gun, "one", str(write(tmp_path, "one", one)))
    client_snapshot_id = fetch_json(server, gun, "root.json")["signed"]["roles"]["snapshot"]

    owner.run("key", "rotate", gun, "snapshot", "-r")
    root = fetch_json(server, gun, "root.json")
    assert root["signed"]["version"] == 2
    snapshot_key = server_key(server, gun, "snapshot")
    assert server_key(server, gun, "snapshot") == snapshot_key  # stable once root lists it
    assert root["signed"]["roles"]["snapshot"]["keyids"] == [key_id(snapshot_key)]
    assert root["signed"]["roles"]["snapshot"] != client_snapshot_id
    assert signature_valid(fetch_json(server, gun, "snapshot.json"), snapshot_key)

    two = b"two two\n"
    before = versions(server, gun)
    owner.run("add", "-p", gun, "two", str(write(tmp_path, "two", two)))  # uploads targets only
    after = versions(server, gun)
    assert after == before | {
        "targets": before["targets"] + 1,
        "snapshot": before["snapshot"] + 1,
        "timestamp": before["timestamp"] + 1,
    }
    snapshot = check_snapshot_covers(server, gun, "root", "targets")
    assert signature_valid(snapshot, snapshot_key)
    expected = {
        "one": ListedTarget("one", hexdigest(one), len(one), "targets"),
        "two": ListedTarget("two", hexdigest(two), len(two), "targets"),
    }
    assert new_client("reader-1").list_targets(gun) == expected

    old_timestamp_key = server_key(server, gun, "timestamp")
    owner.run("key", "rotate", gun, "timestamp", "-r")
    new_timestamp_key = server_key(server, gun, "timestamp")
    assert key_id(new_timestamp_key) != key_id(old_timestamp_key)
    root = fetch_json(server, gun, "root.json")
    assert root["signed"]["version"] == 3
    assert root["signed"]["roles"]["timestamp"]["keyids"] == [key_id(new_timestamp_key)]
    timestamp = fetch_json(server, gun, "timestamp.json")
    assert signature_valid(timestamp, new_timestamp_key)
    assert not signature_valid(timestamp, old_timestamp_key)
    check_snapshot_covers(server, gun, "root", "targets")
    assert new_client("reader-2").list_targets(gun) == expected

    three = b"three\n"
    owner.run("add", "-p", gun, "three", str(write(tmp_path, "three", three)))
    assert signature_valid(fetch_json(server, gun, "snapshot.json"), snapshot_key)
    assert signature_valid(fetch_json(server, gun, "timestamp.json"), new_timestamp_key)
    assert set(new_client("reader-3").list_targets(gun)) == {"one", "two", "three"}


# -- client key rotations -------------------------------------------------------------------------


def test_targets_and_root_rotation_fresh_and_cached_clients(
    server: ServerInfo, new_client: NewClient, gun: str, tmp_path: Path
) -> None:
    owner = new_client("owner")
    owner.run("init", "-p", gun)
    one = b"payload one\n"
    owner.run("add", "-p", gun, "one", str(write(tmp_path, "one", one)))
    expected = {"one": ListedTarget("one", hexdigest(one), len(one), "targets")}

    cached = new_client("cached")  # caches root v1 before any rotation
    assert cached.list_targets(gun) == expected
    assert cached.cached(gun, "root")["signed"]["version"] == 1
    root1 = fetch_json(server, gun, "root.json")

    owner.run("key", "rotate", gun, "targets")
    root2 = fetch_json(server, gun, "root.json")
    assert root2["signed"]["version"] == 2
    assert role_key(root2, "targets") != role_key(root1, "targets")
    targets = fetch_json(server, gun, "targets.json")
    assert signature_valid(targets, role_key(root2, "targets"))
    assert not signature_valid(targets, role_key(root1, "targets"))

    declined = owner.run("key", "rotate", gun, "root", input="no\n")  # aborts, exit 0
    assert "Successfully rotated" not in declined.stdout + declined.stderr
    assert fetch_json(server, gun, "root.json")["signed"]["version"] == 2

    owner.run("key", "rotate", gun, "root", input="yes\n")
    owner.run("key", "rotate", gun, "root", input="yes\n")
    root3 = fetch_json(server, gun, "3.root.json")
    root4 = fetch_json(server, gun, "root.json")
    assert fetch_json(server, gun, "4.root.json") == root4
    assert fetch_json(server, gun, "1.root.json") == root1  # old versions stay readable
    assert root4["signed"]["version"] == 4
    root_keys = [role_key(r, "root") for r in (root2, root3, root4)]
    assert len({key_id(k) for k in root_keys}) == 3  # a new root key each time
    for previous, current in ((root2, root3), (root3, root4)):
        # a root rotation is signed by the old and the new root key
        assert len(current["signatures"]) == 2
        assert signature_valid(current, role_key(previous, "root"))
        assert signature_valid(current, role_key(current, "root"))
        assert role_key(current, "root")["keytype"] == "ecdsa-x509"

    assert new_client("fresh").list_targets(gun) == expected

    versioned = f"{gun}/_trust/tuf/2.root.json"
    assert not served_requests(server, versioned, timeout=0)
    assert cached.list_targets(gun) == expected  # walks root 1 -> 4 through N.root.json
    assert cached.cached(gun, "root") == root4
    chain = served_requests(server, versioned)
    assert chain and all(record["status"] == 200 for record in chain), chain

    two = b"after rotations\n"
    owner.run("add", "-p", gun, "two", str(write(tmp_path, "two", two)))
    assert cached.list_targets(gun)["two"] == ListedTarget(
        "two", hexdigest(two), len(two), "targets"
    )
    assert signature_valid(fetch_json(server, gun, "targets.json"), role_key(root4, "targets"))


# -- delegations ----------------------------------------------------------------------------------


def test_delegation_by_public_key_publish_witness_remove(
    server: ServerInfo, new_client: NewClient, gun: str, tmp_path: Path
) -> None:
    owner = new_client("owner")
    owner.run("init", "-p", gun)
    owner.run("key", "rotate", gun, "snapshot", "-r")  # delegates cannot sign the snapshot
    key_pem, pub_pem, public = generate_ec_key(tmp_path)
    delegate_id = key_id(public)

    owner.run("delegation", "add", "-p", gun, "targets/releases", str(pub_pem), "--all-paths")
    delegations = fetch_json(server, gun, "targets.json")["signed"]["delegations"]
    assert delegations["roles"] == [
        {"keyids": [delegate_id], "name": "targets/releases", "paths": [""], "threshold": 1}
    ]
    assert delegations["keys"] == {delegate_id: public}
    assert owner.delegations(gun) == {
        "targets/releases": ListedDelegation(
            "targets/releases", '"" <all paths>', (delegate_id,), 1
        )
    }

    delegate = new_client("delegate")
    delegate.run("key", "import", str(key_pem), "--role", "targets/releases")
    assert delegate_id in delegate.run("key", "list").stdout
    release = b"release tarball\n" * 64
    release_file = write(tmp_path, "release.tgz", release)
    delegate.run("add", "-p", gun, "release.tgz", str(release_file), "--roles", "targets/releases")
    releases = fetch_json(server, gun, "targets/releases.json")
    assert releases["signed"]["version"] == 1
    assert releases["signed"]["targets"] == {"release.tgz": file_meta(release)}
    assert signature_valid(releases, public)
    snapshot = check_snapshot_covers(server, gun, "root", "targets", "targets/releases")
    assert signature_valid(snapshot, server_key(server, gun, "snapshot"))

    own = b"owner file\n"
    owner.run("add", "-p", gun, "owner.txt", str(write(tmp_path, "owner.txt", own)))
    expected = {
        "owner.txt": ListedTarget("owner.txt", hexdigest(own), len(own), "targets"),
        "release.tgz": ListedTarget(
            "release.tgz", hexdigest(release), len(release), "targets/releases"
        ),
    }
    assert new_client("reader").list_targets(gun) == expected
    assert owner.list_targets(gun) == expected
    assert set(new_client("reader-2").list_targets(gun, "--roles", "targets/releases")) == {
        "release.tgz"
    }

    witnessed = delegate.run("witness", "-p", gun, "targets/releases")
    assert "targets/releases" in witnessed.stdout
    rewitnessed = fetch_json(server, gun, "targets/releases.json")
    assert rewitnessed["signed"]["version"] == 2
    assert rewitnessed["signed"]["targets"] == releases["signed"]["targets"]
    assert signature_valid(rewitnessed, public)
    check_snapshot_covers(server, gun, "root", "targets", "targets/releases")

    owner.run("delegation", "remove", "-p", gun, "targets/releases", input="yes\n")
    delegations = fetch_json(server, gun, "targets.json")["signed"]["delegations"]
    assert not delegations["roles"]  # the Go client writes null for the emptied list
    assert owner.delegations(gun) == {}
    assert new_client("reader-3").list_targets(gun) == {"owner.txt": expected["owner.txt"]}


def test_delegation_by_certificate_with_restricted_paths(
    server: ServerInfo, new_client: NewClient, gun: str, tmp_path: Path
) -> None:
    openssl = require_cli("openssl", "install the Debian package openssl")
    key_pem, cert_pem = tmp_path / "qa-key.pem", tmp_path / "qa-cert.pem"
    request = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650"
    outputs = ["-keyout", str(key_pem), "-out", str(cert_pem)]
    subprocess.run(
        [openssl, *request.split(), "-subj", "/CN=targets-qa", *outputs],
        check=True,
        capture_output=True,
        timeout=60,
    )
    cert_key = {
        "keytype": "ecdsa-x509",
        "keyval": {"private": None, "public": base64.b64encode(cert_pem.read_bytes()).decode()},
    }
    cert_id = key_id(cert_key)
    bare_spki = (
        x509.load_pem_x509_certificate(cert_pem.read_bytes())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    canonical_id = key_id(ecdsa_public_key(bare_spki))

    owner = new_client("owner")
    owner.run("init", "-p", gun)
    owner.run("key", "rotate", gun, "snapshot", "-r")
    owner.run("delegation", "add", "-p", gun, "targets/qa", str(cert_pem), "--paths", "qa/")
    delegations = fetch_json(server, gun, "targets.json")["signed"]["delegations"]
    assert delegations["roles"] == [
        {"keyids": [cert_id], "name": "targets/qa", "paths": ["qa/"], "threshold": 1}
    ]
    assert delegations["keys"][cert_id]["keytype"] == "ecdsa-x509"
    assert key_id(delegations["keys"][cert_id]) == cert_id
    # the CLI shows the canonical id of the bare public key, not the certificate's id
    assert owner.delegations(gun) == {
        "targets/qa": ListedDelegation("targets/qa", "qa/", (canonical_id,), 1)
    }

    delegate = new_client("delegate")
    delegate.run("key", "import", str(key_pem), "--role", "targets/qa")
    tool = b"qa tool\n"
    tool_file = write(tmp_path, "tool", tool)
    delegate.run("add", "-p", gun, "qa/tool", str(tool_file), "--roles", "targets/qa")
    qa_bytes = fetch_bytes(server, gun, "targets/qa.json")
    qa = json.loads(qa_bytes)
    assert qa["signed"]["targets"] == {"qa/tool": file_meta(tool)}
    assert signature_valid(qa, delegations["keys"][cert_id])

    # the CLI itself refuses a target outside the delegation's paths
    refused = delegate.run(
        "add", "-p", gun, "outside", str(tool_file), "--roles", "targets/qa", check=False
    )
    expect_failure(refused, "Could not add all targets")
    assert fetch_bytes(server, gun, "targets/qa.json") == qa_bytes

    # ... and so does the server, for an upload signed correctly by the delegate's key
    private = serialization.load_pem_private_key(key_pem.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    outside = post_delegation(server, gun, qa, private, cert_id, "outside", tool)
    assert outside.status_code == 400, outside.text
    assert outside.json()["errors"][0]["code"] == "INVALID_UPDATE", outside.text
    assert fetch_bytes(server, gun, "targets/qa.json") == qa_bytes
    # control: the same upload with an in-path target is accepted
    inside = post_delegation(server, gun, qa, private, cert_id, "qa/crafted", tool)
    assert inside.status_code == 200, inside.text
    listed = new_client("reader").list_targets(gun)
    assert listed == {
        "qa/tool": ListedTarget("qa/tool", hexdigest(tool), len(tool), "targets/qa"),
        "qa/crafted": ListedTarget("qa/crafted", hexdigest(tool), len(tool), "targets/qa"),
    }


def post_delegation(
    server: ServerInfo,
    gun: str,
    current: dict[str, Any],
    private: ec.EllipticCurvePrivateKey,
    keyid: str,
    name: str,
    content: bytes,
) -> requests.Response:
    """Upload the next version of delegation `targets/qa` with target `name` added."""
    signed = json.loads(json.dumps(current["signed"]))
    signed["version"] += 1
    signed["targets"][name] = file_meta(content)
    signature = {"keyid": keyid, "method": "ecdsa", "sig": ecdsa_sign(private, canonical(signed))}
    body = b'{"signed":' + canonical(signed) + b',"signatures":' + canonical([signature]) + b"}"
    return requests.post(
        trust_url(server, gun, "tuf/"),
        files=[("files", ("targets/qa", body, "application/octet-stream"))],
        verify=str(server.ca_cert),
        timeout=30,
    )


# -- deletion and GUN forms -----------------------------------------------------------------------


def test_delete_remote_and_changefeed(
    server: ServerInfo, new_client: NewClient, gun: str, tmp_path: Path
) -> None:
    owner = new_client("owner")
    owner.run("init", "-p", gun)
    owner.run("add", "-p", gun, "doomed", str(write(tmp_path, "doomed", b"doomed\n")))
    last_timestamp = fetch_bytes(server, gun, "timestamp.json")

    deleted = owner.run("delete", "--remote", gun)
    assert "Successfully deleted local and remote trust data" in deleted.stdout + deleted.stderr
    assert not (owner.trust_dir / "tuf" / gun).exists()
    for role in ("root", "timestamp", "targets", "snapshot"):
        response = http_get(server, gun, f"tuf/{role}.json")
        assert response.status_code == 404, (role, response.text)
        assert response.json()["errors"][0]["code"] == "METADATA_NOT_FOUND"

    response = http_get(server, gun, "changefeed?change_id=0&records=100")
    assert response.status_code == 200, response.text
    feed = response.json()
    records = feed["records"]
    assert feed["count"] == len(records) == 3
    assert all(r["GUN"] == gun and isinstance(r["ID"], str) for r in records)
    assert [(r["Category"], r["Version"]) for r in records] == [
        ("update", 1),
        ("update", 2),
        ("deletion", 0),
    ]
    assert records[1]["SHA256"] == hexdigest(last_timestamp)
    assert records[-1]["SHA256"] == ""

    gone = new_client("reader").run("list", gun, check=False)
    expect_failure(gone, "does not have trust data")


@pytest.mark.parametrize("odd_gun", ["localhost:5000/team/app", "example.com/ünïcødé/app"])
def test_gun_with_port_segments_and_unicode(
    server: ServerInfo, new_client: NewClient, odd_gun: str, tmp_path: Path
) -> None:
    owner = new_client("owner")
    owner.run("init", "-p", odd_gun)
    data = b"odd gun\n"
    owner.run("add", "-p", odd_gun, "thing", str(write(tmp_path, "thing", data)))

    root = fetch_json(server, odd_gun, "root.json")
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(role_key(root, "root")["keyval"]["public"])
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == odd_gun
    assert versions(server, odd_gun)["targets"] == 3
    expected = {"thing": ListedTarget("thing", hexdigest(data), len(data), "targets")}
    reader = new_client("reader")
    assert reader.list_targets(odd_gun) == expected
    assert reader.lookup(odd_gun, "thing") == (hexdigest(data), len(data))
    assert reader.cached(odd_gun, "root") == root
    feed = http_get(server, odd_gun, "changefeed?change_id=0&records=100").json()
    assert [r["GUN"] for r in feed["records"]] == [odd_gun, odd_gun]
