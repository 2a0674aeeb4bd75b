"""The `tufnotary` command line against our real server: in-process (CliRunner) for most steps,
the installed script in a subprocess for the deploy gate, and the real notary CLI both ways."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.clients import NOTARY_HINT, PASSPHRASE, NotaryCLI, require_cli
from support.server import ServerInfo, free_port, running_server
from support.tamper import Stalled, TrustServer, failing
from tufnotary.client.cli import cli
from tufnotary.client.images import ImageReference
from tufnotary.metadata.model import TIMESTAMP
from tufnotary.server.tls import ensure_self_signed

SCRIPT = Path(sys.executable).with_name("tufnotary")
PASSPHRASE_VARIABLES = (
    "NOTARY_ROOT_PASSPHRASE",
    "NOTARY_TARGETS_PASSPHRASE",
    "NOTARY_SNAPSHOT_PASSPHRASE",
    "NOTARY_DELEGATION_PASSPHRASE",
)
RELEASES = "targets/releases"
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Outcome:
    """Exit status and output of one run, in-process or not."""

    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"

    def json(self) -> object:
        return json.loads(self.stdout)


def _environment(**extra: str) -> dict[str, str]:
    """os.environ without notary/docker/tufnotary settings, with every passphrase set."""
    prefixes = ("NOTARY_", "DOCKER_", "TUFNOTARY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return env | dict.fromkeys(PASSPHRASE_VARIABLES, PASSPHRASE) | extra


@dataclass
class Tool:
    """`tufnotary -s URL --tlscacert CA -d TRUST_DIR ...` for one person's trust dir."""

    server: ServerInfo
    trust_dir: Path

    def args(self, *args: str) -> list[str]:
        return [
            "-s",
            self.server.url,
            "--tlscacert",
            str(self.server.ca_cert),
            "-d",
            str(self.trust_dir),
            *args,
        ]

    def __call__(
        self, *args: str, input: str | bytes | None = None, expect: int = 0, **env: str
    ) -> Outcome:
        """In-process with click's CliRunner; asserts the exit status."""
        variables = {**dict.fromkeys(PASSPHRASE_VARIABLES, PASSPHRASE), **env}
        result = CliRunner().invoke(cli, self.args(*args), input=input, env=variables)
        outcome = Outcome(result.exit_code, result.stdout, result.stderr)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{args}: {outcome}") from result.exception
        assert outcome.code == expect, f"{args}: {outcome}"
        return outcome

    def run(
        self, *args: str, input: str = "", expect: int = 0, bare: bool = False, **env: str
    ) -> Outcome:
        """The installed `tufnotary` script in a subprocess (``bare``: without -s, --tlscacert
        and -d); asserts the exit status."""
        if not SCRIPT.exists():
            pytest.skip(f"{SCRIPT} is not installed: pip install -e . first")
        result = subprocess.run(
            [str(SCRIPT), *(args if bare else self.args(*args))],
            input=input,
            capture_output=True,
            text=True,
            env=_environment(**env),
            timeout=60,
            check=False,
        )
        outcome = Outcome(result.returncode, result.stdout, result.stderr)
        assert outcome.code == expect, f"{args}: {outcome}"
        return outcome


def table(outcome: Outcome) -> list[list[str]]:
    """The rows of a table printed on stdout (header and ruler dropped), split on 2+ spaces."""
    lines = [line for line in outcome.stdout.splitlines() if line.strip()]
    rulers = [i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"}]
    assert len(rulers) == 1, str(outcome)
    return [re.split(r" {2,}", line.strip()) for line in lines[rulers[0] + 1 :]]


def public_key_pem(path: Path) -> tuple[Path, Path]:
    """A new P-256 key as (unencrypted private PEM, public PEM) files next to ``path``."""
    private = ec.generate_private_key(ec.SECP256R1())
    key = path.with_suffix(".key")
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    with running_server(tmp_path_factory.mktemp("cli-server")) as info:
        yield info


@pytest.fixture
def tool(server: ServerInfo, tmp_path: Path) -> Tool:
    """The repository owner's CLI (its own trust dir)."""
    return Tool(server, tmp_path / "owner")


def test_targets_stage_publish_list_lookup_verify(tool: Tool, tmp_path: Path) -> None:
    gun = "example.com/cli/targets"
    tool("list", gun, expect=1)
    out = tool("init", gun)
    assert f"Initialized {gun}" in out.stdout
    assert tool("list", gun).stdout.strip() == "No targets present in this repository."
    content = b"release one\n"
    digest = hashlib.sha256(content).hexdigest()
    (tmp_path / "artifact").write_bytes(content)
    tool("add", gun, "v1", str(tmp_path / "artifact"))
    assert table(tool("status", gun)) == [["0", "create", "targets", "target", "v1"]]
    assert tool("--json", "status", gun).json() == {
        "gun": gun,
        "changes": [{"action": "add-target", "role": "targets", "name": "v1"}],
    }
    assert "Published" in tool("publish", gun).stdout
    assert "No unpublished changes" in tool("publish", gun).stdout

    assert table(tool("list", gun)) == [["v1", digest, str(len(content)), "targets"]]
    listed = tool("list", gun, "--json").json()  # --json after the subcommand works too
    assert listed == [
        {
            "name": "v1",
            "role": "targets",
            "length": len(content),
            "digest": f"sha256:{digest}",
            "hashes": {"sha256": digest, "sha512": hashlib.sha512(content).hexdigest()},
        }
    ]
    assert tool("lookup", gun, "v1").stdout == f"v1 sha256:{digest} {len(content)}\n"
    missing = tool("lookup", gun, "v9", expect=1)
    assert missing.stderr.startswith("tufnotary: error: ") and f"tufnotary list {gun}" in (
        missing.stderr
    )

    # verify: the content on stdin is written through when it matches, refused when it does not
    assert tool("verify", gun, "v1", input=content).stdout == content.decode()
    bad = tool("verify", gun, "v1", input=b"release two\n", expect=1)
    assert bad.stdout == "" and "does not match" in bad.stderr
    assert tool("--json", "verify", gun, "v1", input=content).json()["verified"] is True

    # addhash with --publish, remove, status/reset
    manifest = hashlib.sha256(b"manifest").hexdigest()
    tool("addhash", gun, "v2", "1234", "--sha256", manifest, "-p")
    tool("remove", gun, "v1")
    tool("addhash", gun, "v3", "10", "--sha256", manifest)
    assert [row[1:] for row in table(tool("status", gun))] == [
        ["delete", "targets", "target", "v1"],
        ["create", "targets", "target", "v3"],
    ]
    assert "Dropped 2" in tool("reset", gun).stdout
    assert "No unpublished changes" in tool("status", gun).stdout
    tool("remove", gun, "v1", "--publish")
    assert table(tool("list", gun)) == [["v2", manifest, "1234", "targets"]]


def test_delegations_keys_and_rotation(server: ServerInfo, tool: Tool, tmp_path: Path) -> None:
    gun = "example.com/cli/delegation"
    tool("init", gun)
    delegate_key, delegate_pub = public_key_pem(tmp_path / "delegate.pub")
    added = tool("delegation", "add", gun, RELEASES, str(delegate_pub), "--all-paths", "-p")
    assert "published" in added.stdout
    (entry,) = tool("--json", "delegation", "list", gun).json()
    assert entry["role"] == RELEASES and entry["paths"] == [""] and entry["threshold"] == 1
    assert table(tool("delegation", "list", gun)) == [
        [RELEASES, '"" <all paths>', entry["keyids"][0], "1"]
    ]

    delegate = Tool(server, tmp_path / "delegate")
    imported = delegate.run("key", "import", str(delegate_key), "--role", RELEASES)
    assert entry["keyids"][0] in imported.stdout
    (tmp_path / "build").write_bytes(b"build 7")
    # The owner holds the snapshot key: the delegate cannot publish alone, and is told so.
    refused = delegate("add", gun, "b7", str(tmp_path / "build"), "-r", RELEASES, "-p", expect=1)
    assert refused.stderr.startswith("tufnotary: error: cannot sign snapshot")
    assert f"tufnotary key rotate {gun} snapshot -r" in refused.stderr
    delegate("reset", gun)
    rotated = tool("--json", "key", "rotate", gun, "snapshot", "-r").json()
    assert rotated["role"] == "snapshot" and rotated["server_managed"] is True
    delegate("add", gun, "b7", str(tmp_path / "build"), "--roles", RELEASES, "-p")

    b7 = hashlib.sha256(b"build 7").hexdigest()
    assert table(tool("list", gun)) == [["b7", b7, "7", RELEASES]]
    assert table(tool("list", gun, "-r", "targets")) == [["b7", b7, "7", RELEASES]]  # subtree
    assert table(tool("list", gun, "-r", RELEASES)) == [["b7", b7, "7", RELEASES]]
    targets_key = tool("--json", "key", "rotate", gun, "targets").json()["key_id"]
    keys = tool("--json", "key", "list").json()
    assert {"key_id": targets_key, "role": "targets", "gun": gun} in [
        {k: item[k] for k in ("key_id", "role", "gun")} for item in keys
    ]
    assert "Re-signed and published targets/releases" in delegate("witness", gun, RELEASES).stdout
    # a newcomer (no cache: trust on first use) sees the same after both rotations
    newcomer = Tool(server, tmp_path / "newcomer")
    assert table(newcomer("list", gun)) == [["b7", b7, "7", RELEASES]]

    tool("delegation", "remove", gun, RELEASES, "-p")
    assert tool("delegation", "list", gun).stdout.startswith("No delegations")
    assert newcomer("list", gun).stdout.strip() == "No targets present in this repository."


def test_threshold_two_sign_cosign_publish(server: ServerInfo, tool: Tool, tmp_path: Path) -> None:
    """Two signers each add a signature to the same version of a threshold-2 delegation."""
    gun = "example.com/cli/threshold"
    tool("init", gun, "--server-snapshot")
    alice_key, alice_pub = public_key_pem(tmp_path / "alice.pub")
    bob_key, bob_pub = public_key_pem(tmp_path / "bob.pub")
    tool(
        "delegation",
        "add",
        gun,
        RELEASES,
        str(alice_pub),
        str(bob_pub),
        "--all-paths",
        "--threshold",
        "2",
        "-p",
    )
    alice, bob = Tool(server, tmp_path / "alice"), Tool(server, tmp_path / "bob")
    alice("key", "import", str(alice_key), "--role", RELEASES)
    bob("key", "import", str(bob_key), "--role", RELEASES)
    alice("addhash", gun, "1.4", "42", "--sha256", "ab" * 32, "-r", RELEASES)
    refused = alice("publish", gun, expect=1)
    assert f"tufnotary sign {gun} {RELEASES}" in refused.stderr
    document = tmp_path / "releases.json"
    alice("sign", gun, RELEASES, "-o", str(document))
    alice("publish", gun, "--signed", RELEASES, str(document), expect=1)  # one of two
    bob("cosign", gun, RELEASES, str(document))
    alice("publish", gun, "--signed", RELEASES, str(document))
    assert alice("status", gun).stdout.startswith("No unpublished changes")
    gate = Tool(server, tmp_path / "gate")
    trusted = gate("--json", "verify-image", f"{gun}:1.4", "--require-role", RELEASES).json()
    assert trusted["digest"] == "sha256:" + "ab" * 32


def test_key_generate_export_import(server: ServerInfo, tool: Tool, tmp_path: Path) -> None:
    generated = tool(
        "--json", "key", "generate", "ed25519", "--role", "targets/ci", "-o", str(tmp_path / "p")
    ).json()
    assert generated["algorithm"] == "ed25519" and HEX64.fullmatch(generated["key_id"])
    assert (tmp_path / "p").read_text() == generated["public_key"]
    assert "BEGIN PUBLIC KEY" in generated["public_key"]
    exported = tool("key", "export", generated["key_id"])
    assert "role: targets/ci" in exported.stdout and "ENCRYPTED PRIVATE KEY" in exported.stdout
    (tmp_path / "export.pem").write_text(exported.stdout)
    other = Tool(server, tmp_path / "other")
    other("key", "import", str(tmp_path / "export.pem"))
    assert table(other("key", "list")) == [
        ["targets/ci", generated["key_id"], str(tmp_path / "other" / "private")]
    ]
    tool("key", "generate", "--role", "targets", expect=2)  # needs --gun
    tool("key", "remove", generated["key_id"], expect=2)  # not a terminal: needs --yes
    tool("key", "remove", generated["key_id"], "--yes")
    tool("key", "export", generated["key_id"], expect=1)


def test_delegation_key_removal_verified_by_notary(
    server: ServerInfo, tool: Tool, tmp_path: Path
) -> None:
    """`delegation remove GUN ROLE KEYID`: staged, published, and the key is gone for notary."""
    notary_binary = require_cli("notary", NOTARY_HINT)
    gun = "example.com/cli/delegation-keys"
    tool("init", gun)
    first_key, first = public_key_pem(tmp_path / "first.pub")
    _, second = public_key_pem(tmp_path / "second.pub")
    tool("delegation", "add", gun, RELEASES, str(first), str(second), "--all-paths", "-p")
    (entry,) = tool("--json", "delegation", "list", gun).json()
    gone, kept = entry["keyids"]
    unknown = tool("delegation", "remove", gun, RELEASES, "ab" * 32, "-p", expect=1)
    assert f"{RELEASES} lists no key {'ab' * 32}" in unknown.stderr
    tool("reset", gun)
    every = tool("delegation", "remove", gun, RELEASES, gone, kept, "-p", expect=1)
    assert "would leave 0" in every.stderr and "remove the whole delegation" in every.stderr
    tool("reset", gun)

    staged = tool("delegation", "remove", gun, RELEASES, gone)
    assert f"Removal of keys {gone} from delegation {RELEASES} staged" in staged.stdout
    assert f"Published {gun} (targets" in tool("publish", gun).stdout
    (entry,) = tool("--json", "delegation", "list", gun).json()
    assert entry["keyids"] == [kept] and entry["paths"] == [""]
    notary = NotaryCLI.for_server(server, tmp_path / "notary", notary_binary)
    assert notary.delegations(gun)[RELEASES].key_ids == (kept,)
    # the removed key no longer counts for the role: its holder cannot sign for it
    holder = Tool(server, tmp_path / "holder")
    holder("key", "import", str(first_key), "--role", RELEASES)
    (tmp_path / "build").write_bytes(b"build 8")
    refused = holder("add", gun, "b8", str(tmp_path / "build"), "-r", RELEASES, "-p", expect=1)
    assert f"cannot sign {RELEASES}: it needs 1 key(s) and this trust directory holds 0" in (
        refused.stderr
    )


def test_verify_image_deploy_gate(server: ServerInfo, tool: Tool, tmp_path: Path) -> None:
    """The README flow: CI signs a manifest digest, the deploy step verifies it."""
    gun = "registry.example.com/team/app"
    manifest = b'{"schemaVersion":2,"config":{"digest":"sha256:...app 1.4"}}'
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    size = str(len(manifest))
    # CI: create the repository, a releases key held by CI, and sign 1.4 like docker does
    ci = Tool(server, tmp_path / "ci")
    ci.run("init", gun)
    key = ci.run("--json", "key", "generate", "--role", RELEASES, "-o", str(tmp_path / "r.pub"))
    ci.run("delegation", "add", gun, RELEASES, str(tmp_path / "r.pub"), "--all-paths", "-p")
    hexdigest = digest.removeprefix("sha256:")
    ci.run("addhash", gun, "1.4", size, "--sha256", hexdigest, "-r", f"{RELEASES},targets", "-p")
    ci.run("addhash", gun, "1.3-rc", "99", "--sha256", "ab" * 32, "-p")  # targets only

    deploy = Tool(server, tmp_path / "deploy")  # a fresh runner: first use of the repository
    ok = deploy.run("verify-image", f"{gun}:1.4", "--require-role", RELEASES)
    assert ok.stdout == f"trusted: {gun}:1.4 -> {digest} (signed by {RELEASES})\n"
    as_json = deploy.run(
        "--json", "verify-image", f"{gun}:1.4@{digest}", "--require-role", RELEASES
    )
    assert as_json.json() == {
        "gun": gun,
        "tag": "1.4",
        "digest": digest,
        "role": RELEASES,
        "length": len(manifest),
        "trusted": True,
    }
    assert json.loads(key.stdout)["key_id"] in ci.run("delegation", "list", gun).stdout
    by_digest = deploy.run("verify-image", f"{gun}@{digest}", "--require-role", RELEASES)
    assert by_digest.stdout.startswith(f"trusted: {gun}:1.4 -> {digest}")

    wrong = deploy.run("verify-image", f"{gun}:1.4", "--digest", "sha256:" + "0" * 64, expect=1)
    assert wrong.stdout == "" and "not the signed digest" in wrong.stderr
    unknown = deploy.run("--json", "verify-image", f"{gun}:2.0", expect=1)
    assert unknown.json()["trusted"] is False and "2.0" in unknown.stderr
    assert unknown.json()["reason"] == "ImageNotSigned"
    unsigned = deploy.run("verify-image", f"{gun}:1.3-rc", "--require-role", RELEASES, expect=1)
    assert f"required signer {RELEASES} does not sign 1.3-rc (only targets" in unsigned.stderr
    nobody = deploy.run("verify-image", f"{gun}:2.0", "--require-role", RELEASES, expect=1)
    assert "2.0: the tag is not signed" in nobody.stderr
    plain = deploy.run("verify-image", f"{gun}:1.3-rc")  # docker's rule accepts targets
    assert plain.stdout.endswith("(signed by targets)\n")
    usage = deploy.run("verify-image", f"{gun}:1.4", "--digest", "sha1:00", expect=2)
    assert "--digest" in usage.stderr
    deploy.run("verify-image", f"{gun}:1.4", "--require-role", "releases", expect=2)
    deploy.run("verify-image", expect=2)

    # untrusted transport or no server: exit 1 with what to do
    no_ca = deploy.run(
        "verify-image",
        f"{gun}:1.4",
        expect=1,
        bare=True,
        TUFNOTARY_SERVER=server.url,
        TUFNOTARY_TRUST_DIR=str(tmp_path / "x"),
    )
    assert no_ca.stderr.startswith(
        f"tufnotary: error: not trusted: TLS connection to the trust server {server.url} failed"
    )
    assert "--tlscacert" in no_ca.stderr and no_ca.stderr.count("\n") == 1
    down = deploy.run("-s", f"https://127.0.0.1:{free_port()}", "verify-image", gun, expect=1)
    assert "not trusted: cannot reach the trust server" in down.stderr
    # root pinning: a wrong certificate id refuses the repository on first use
    pinned = Tool(server, tmp_path / "pinned")
    refused = pinned.run("verify-image", f"{gun}:1.4", "--pin-cert-id", "0" * 64, expect=1)
    assert "--pin-cert-id" in refused.stderr


def test_errors_and_progress(server: ServerInfo, tool: Tool, tmp_path: Path) -> None:
    gun = "example.com/cli/errors"
    no_passphrase = tool("init", gun, expect=1, NOTARY_ROOT_PASSPHRASE="")
    assert no_passphrase.stderr.startswith("tufnotary: error: a passphrase is needed for the root")
    assert "NOTARY_ROOT_PASSPHRASE" in no_passphrase.stderr
    tool("publish", "example.com/cli/never", expect=0)  # nothing staged, nothing to do
    (tmp_path / "f").write_text("x")
    tool("add", "example.com/cli/never", "t", str(tmp_path / "f"), "-p", expect=1)
    tool("list", "a/../b", expect=2)
    tool("add", gun, "t", str(tmp_path / "f"), "-r", "releases", expect=2)
    tool("add", gun, "t", str(tmp_path / "missing"), expect=2)
    tool("addhash", gun, "t", "5", expect=2)  # no hash
    tool("addhash", gun, "t", "5", "--sha256", "abc", expect=2)
    tool("key", "rotate", gun, "targets", "-r", expect=2)
    tool("nonsense", expect=2)

    # progress goes to stderr, stdout stays JSON
    slow = tool.run("--json", "init", gun, TUFNOTARY_PROGRESS_DELAY="0")
    assert slow.json() | {"root_key_id": "", "root_key_reused": False} == {
        "gun": gun,
        "server": server.url,
        "initialized": True,
        "root_key_id": "",
        "root_key_reused": False,
    }
    assert f"initializing {gun} on {server.url} ..." in slow.stderr
    assert f"initializing {gun} on {server.url}: done" in slow.stderr
    quiet = tool.run("list", gun)  # default delay: a fast update shows nothing
    assert quiet.stderr == ""
    exists = tool.run("init", gun, expect=1)
    assert "already exists" in exists.stderr and exists.stderr.count("\n") == 1


@pytest.fixture
def misbehaving() -> Iterator[TrustServer]:
    """A real plain-HTTP server whose answers a test sets per file name (503, stalls...)."""
    with TrustServer().running() as running:
        try:
            yield running
        finally:
            for hook in running.hooks.values():
                if isinstance(hook, Stalled):
                    hook.release.set()


def signed_repository(tool: Tool, gun: str) -> Tool:
    """``gun`` with tag 1.4 signed, and a deploy gate whose trust dir has it cached."""
    tool("init", gun)
    tool("addhash", gun, "1.4", "3", "--sha256", "ab" * 32, "-p")
    deploy = Tool(tool.server, tool.trust_dir.with_name("deploy"))
    assert deploy("verify-image", f"{gun}:1.4").stdout.startswith("trusted:")
    return deploy


def test_reads_fail_closed_with_a_warm_cache(
    tool: Tool, tmp_path: Path, misbehaving: TrustServer
) -> None:
    gun = "example.com/cli/fail-closed"
    deploy = signed_repository(tool, gun)
    wrong_ca = ensure_self_signed(tmp_path / "other").ca_cert
    bad_ca = tmp_path / "bad-ca.pem"
    bad_ca.write_text("not a certificate\n")
    down = f"https://127.0.0.1:{free_port()}"
    cases = [
        (("-s", down), "ServerUnreachable", f"cannot reach the trust server {down}"),
        (("--tlscacert", str(wrong_ca)), "TLSError", f"check that {wrong_ca} holds the CA"),
        (("--tlscacert", str(bad_ca)), "CAFileError", f"the CA file {bad_ca} cannot be used"),
        (("-s", misbehaving.url), "ServerError", "failed to answer (503)"),
        (("-s", misbehaving.url, "--timeout", "0.3"), "ServerTimeout", "within 0.3 seconds"),
    ]
    for args, reason, needle in cases:
        misbehaving.hooks[TIMESTAMP] = Stalled() if reason == "ServerTimeout" else failing(503)
        out = deploy("--json", "verify-image", f"{gun}:1.4", *args, expect=1)
        assert out.json() == {
            "gun": gun,
            "tag": "1.4",
            "digest": None,
            "trusted": False,
            "reason": reason,
            "error": out.stderr.removeprefix("tufnotary: error: ").strip(),
        }, reason
        assert out.stderr.startswith("tufnotary: error: not trusted: "), out
        assert needle in out.stderr and out.stderr.count("\n") == 1, out
        assert "cannot reach" not in out.stderr or reason == "ServerUnreachable", out
        for read in (("list", gun), ("lookup", gun, "1.4"), ("verify", gun, "1.4")):
            refused = deploy(*read, *args, input=b"abc", expect=1)
            assert needle in refused.stderr and refused.stdout == "", refused

    misbehaving.hooks[TIMESTAMP] = failing(400)  # a refused read changed nothing: no claim
    rejected = deploy("list", gun, "-s", misbehaving.url, expect=1)
    assert "server rejected the request (400" in rejected.stderr
    assert "nothing was changed" not in rejected.stderr


def test_offline_uses_the_cache_and_says_so(tool: Tool, tmp_path: Path) -> None:
    gun = "example.com/cli/offline"
    deploy = signed_repository(tool, gun)
    down = ("-s", f"https://127.0.0.1:{free_port()}")
    gate = deploy("--json", "verify-image", f"{gun}:1.4", "--offline", *down)
    assert gate.json()["trusted"] is True and gate.json()["offline"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", gate.json()["cached_at"])
    note = f"tufnotary: warning: offline: trust data of {gun} from the cache, last updated from "
    assert gate.stderr.startswith(note) and gate.json()["cached_at"] in gate.stderr
    assert " ago (" in gate.stderr
    listed = deploy("list", gun, "--offline", *down)
    assert table(listed) == [["1.4", "ab" * 32, "3", "targets"]] and note in listed.stderr
    assert deploy("lookup", gun, "1.4", "--offline", *down).stdout.startswith("1.4 sha256:abab")
    never = Tool(tool.server, tmp_path / "never")
    refused = never("verify-image", f"{gun}:1.4", "--offline", expect=1)
    assert f"offline: the cache holds no verified root of {gun}" in refused.stderr
    assert "run once without --offline" in refused.stderr


def test_verbose_anywhere_and_failed_publish_keeps_staged_changes(tool: Tool) -> None:
    gun = "example.com/cli/verbose"
    tool("init", gun)
    info = f"tufnotary: info: {gun}: trusted root 1, timestamp "
    for args in (("-v", "list", gun), ("list", "-v", gun), ("list", gun, "--verbose")):
        assert info in tool(*args).stderr, args
    assert info in tool("delegation", "-v", "list", gun).stderr
    assert tool("list", gun).stderr == ""

    tool("addhash", gun, "2.0", "3", "--sha256", "cd" * 32)
    down = f"https://127.0.0.1:{free_port()}"
    failed = tool("publish", gun, "-s", down, expect=1)
    assert f"cannot reach the trust server {down}" in failed.stderr
    assert "not trusted" not in failed.stderr
    assert failed.stderr.rstrip().endswith(
        f"the 1 staged change(s) are kept: `tufnotary publish {gun}` tries again, "
        f"`tufnotary reset {gun}` drops them"
    )
    assert table(tool("status", gun)) == [["0", "create", "targets", "target", "2.0"]]


def test_init_reuses_the_root_key_unless_asked_for_a_new_one(tool: Tool) -> None:
    first = tool("--json", "init", "example.com/cli/root-a").json()
    assert first["root_key_reused"] is False
    second = tool("init", "example.com/cli/root-b")
    assert f"(root key found, using: {first['root_key_id']})" in second.stdout
    roots = [k["key_id"] for k in tool("--json", "key", "list").json() if k["role"] == "root"]
    assert roots == [first["root_key_id"]]
    tool("addhash", "example.com/cli/root-b", "v1", "3", "--sha256", "ab" * 32, "-p")
    reader = Tool(tool.server, tool.trust_dir.with_name("reader"))
    assert table(reader("list", "example.com/cli/root-b")) == [["v1", "ab" * 32, "3", "targets"]]

    third = tool("--json", "init", "example.com/cli/root-c", "--new-root-key").json()
    assert third["root_key_reused"] is False and third["root_key_id"] != first["root_key_id"]
    ambiguous = tool("init", "example.com/cli/root-d", expect=1)
    assert "--root-key" in ambiguous.stderr and first["root_key_id"] in ambiguous.stderr
    chosen = tool("--json", "init", "example.com/cli/root-d", "--root-key", third["root_key_id"])
    assert chosen.json()["root_key_id"] == third["root_key_id"]
    tool("init", "example.com/cli/root-e", "--root-key", "x", "--new-root-key", expect=2)


def test_reference_parsing() -> None:
    digest = "sha256:" + "ab" * 32
    cases = {
        "registry.example.com/team/app:1.4": ("registry.example.com/team/app", "1.4", None),
        f"registry.example.com:5000/app@{digest}": ("registry.example.com:5000/app", None, digest),
        f"localhost/app:v1@{digest}": ("localhost/app", "v1", digest),
        "ubuntu": ("docker.io/library/ubuntu", None, None),
        "team/app:2": ("docker.io/team/app", "2", None),
    }
    for text, expected in cases.items():
        assert ImageReference.parse(text) == ImageReference(*expected), text
    for bad in ("app:", f"app@{digest[:-1]}", "a//b:1"):
        with pytest.raises(Exception):  # noqa: B017 - ValueError or click.BadParameter
            ImageReference.parse(bad)


@pytest.mark.e2e
def test_notary_cli_interoperates(server: ServerInfo, tool: Tool, tmp_path: Path) -> None:
    binary = require_cli("notary", NOTARY_HINT)
    ours, theirs = "example.com/cli/ours", "example.com/cli/theirs"
    (tmp_path / "ours").write_bytes(b"published by tufnotary")
    tool("init", ours)
    custom = '{"z":[1,{"b":"<&>"}],"a":"\u00e9"}'  # signed in canonical form, as Go verifies
    tool("add", ours, "v1", str(tmp_path / "ours"), "--custom", custom, "-p")
    served = requests.get(
        f"{server.url}/v2/{ours}/_trust/tuf/targets.json", verify=str(server.ca_cert), timeout=10
    )
    assert served.json()["signed"]["targets"]["v1"]["custom"] == json.loads(custom)
    assert b'"custom":{"a":"\xc3\xa9","z":[1,{"b":"\\u003c\\u0026\\u003e"}]}' in served.content
    tool("add", ours, "bad", str(tmp_path / "ours"), "--custom", '{"n":1.5}', expect=2)
    notary = NotaryCLI.for_server(server, tmp_path / "notary", binary)
    listed = notary.list_targets(ours)
    assert listed["v1"].sha256 == hashlib.sha256(b"published by tufnotary").hexdigest()
    assert listed["v1"].role == "targets"

    (tmp_path / "theirs").write_bytes(b"published by notary")
    notary.run("init", "-p", theirs)
    notary.run("add", "-p", theirs, "v2", str(tmp_path / "theirs"))
    digest = hashlib.sha256(b"published by notary").hexdigest()
    assert table(tool("list", theirs)) == [["v2", digest, "19", "targets"]]
    assert notary.lookup(theirs, "v2") == (digest, 19)
    gate = tool.run("verify-image", f"{theirs}:v2", "--digest", f"sha256:{digest}")
    assert gate.stdout.endswith(f"-> sha256:{digest} (signed by targets)\n")
