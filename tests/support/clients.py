"""Drive the real `notary` and `docker` CLIs against a test server, and check what they wrote.

Both wrappers scrub NOTARY_* / DOCKER_* from the inherited environment and point HOME into the
test's own directory, so nothing reads or touches the developer's ~/.notary or ~/.docker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from support.server import ServerInfo

CLI_TIMEOUT = 120.0
PASSPHRASE = "e2e-passphrase-0123"
NOTARY_HINT = "install the Debian package notary"
DOCKER_HINT = "install the docker CLI (docker-ce-cli; `docker trust` needs no daemon)"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# -- locating and running binaries -------------------------------------------------------------


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_cli(name: str, hint: str) -> str:
    """Absolute path of CLI `name`; skip the test without it (fail it when CI=true)."""
    path = shutil.which(name)
    if path is None:
        _unavailable(f"the `{name}` CLI is not on PATH: {hint}")
    return path


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """The command, its exit status and its output, for assertion messages."""
    return (
        f"$ {shlex.join(str(a) for a in result.args)}\n"
        f"exit status {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
    )


def run_command(
    command: list[str],
    env: Mapping[str, str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run `command`; with `check`, fail the test (showing output) on a non-zero exit."""
    try:
        result = subprocess.run(
            command,
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"timed out after {timeout:.0f}s: $ {shlex.join(command)}\n"
            f"--- stdout ---\n{exc.stdout!r}\n--- stderr ---\n{exc.stderr!r}"
        ) from None
    if check and result.returncode != 0:
        raise AssertionError(f"command failed:\n{describe(result)}")
    return result


def expect_failure(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert `result` failed and its output mentions every needle; return that output."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"expected a failure:\n{describe(result)}"
    for needle in needles:
        assert needle in output, f"{needle!r} not in the output:\n{describe(result)}"
    return output


def _base_environment(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTARY_", "DOCKER_")) and k not in {"HOME", "XDG_CONFIG_HOME"}
    }
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    return env


# -- notary -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListedTarget:
    """One row of `notary list`."""

    name: str
    sha256: str  # hex
    size: int
    role: str


@dataclass(frozen=True)
class ListedDelegation:
    """One row of `notary delegation list`."""

    role: str
    paths: str
    key_ids: tuple[str, ...]
    threshold: int


@dataclass
class NotaryCLI:
    """The notary CLI with its own trust dir, talking to `server_url` over TLS."""

    server_url: str
    ca_cert: Path
    trust_dir: Path
    binary: str = "notary"
    passphrase: str = PASSPHRASE
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        self.env = _base_environment(self.trust_dir.parent / f".home-{self.trust_dir.name}")
        for role in ("ROOT", "TARGETS", "SNAPSHOT", "DELEGATION"):
            self.env[f"NOTARY_{role}_PASSPHRASE"] = self.passphrase

    @classmethod
    def for_server(cls, server: ServerInfo, trust_dir: Path, binary: str = "notary") -> NotaryCLI:
        return cls(server.url, server.ca_cert, trust_dir, binary)

    def command(self, *args: str) -> list[str]:
        return [
            self.binary,
            "-s",
            self.server_url,
            "--tlscacert",
            str(self.ca_cert),
            "-d",
            str(self.trust_dir),
            *args,
        ]

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`notary -s URL --tlscacert CA -d TRUSTDIR *args`."""
        return run_command(self.command(*args), self.env, input=input, check=check)

    def list_targets(self, gun: str, *extra: str) -> dict[str, ListedTarget]:
        """`notary list GUN` as {name: row}; {} for an empty repository."""
        result = self.run("list", gun, *extra)
        rows: dict[str, ListedTarget] = {}
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) != 4 or not _HEX64.match(fields[1]):
                continue  # header, ruler, blank line or "No targets present"
            name, digest, size, role = fields
            rows[name] = ListedTarget(name, digest, int(size), role)
        if not rows:
            assert "No targets" in result.stdout + result.stderr, describe(result)
        return rows

    def lookup(self, gun: str, name: str) -> tuple[str, int]:
        """`notary lookup GUN NAME` as (sha256 hex, size)."""
        result = self.run("lookup", gun, name)
        match = re.fullmatch(
            rf"{re.escape(name)} sha256:([0-9a-f]{{64}}) (\d+)", result.stdout.strip()
        )
        assert match, describe(result)
        return match[1], int(match[2])

    def delegations(self, gun: str) -> dict[str, ListedDelegation]:
        """`notary delegation list GUN` as {role: row}."""
        result = self.run("delegation", "list", gun)
        rows: dict[str, ListedDelegation] = {}
        for line in result.stdout.splitlines():
            fields = line.split()
            if not fields or not fields[0].startswith("targets/"):
                continue
            key_ids = tuple(f for f in fields if _HEX64.match(f))
            first_key = fields.index(key_ids[0])
            rows[fields[0]] = ListedDelegation(
                fields[0], " ".join(fields[1:first_key]), key_ids, int(fields[-1])
            )
        return rows

    def cached(self, gun: str, role: str) -> dict[str, Any]:
        """The client's cached copy of `role` for `gun` (tuf/<gun>/metadata/<role>.json)."""
        path = self.trust_dir / "tuf" / gun / "metadata" / f"{role}.json"
        return json.loads(path.read_bytes())


# -- docker -------------------------------------------------------------------------------------


@dataclass
class DockerCLI:
    """The docker CLI with its own DOCKER_CONFIG (CA, trust dir) and no daemon."""

    server_url: str
    ca_cert: Path
    home: Path
    binary: str = "docker"
    passphrase: str = PASSPHRASE
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = _base_environment(self.home)
        host = urlsplit(self.server_url).netloc  # 127.0.0.1:<port>
        tls_dir = self.config_dir / "tls" / host
        tls_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca_cert, tls_dir / "ca.crt")
        self.env |= {
            "DOCKER_CONFIG": str(self.config_dir),
            "DOCKER_CONTENT_TRUST_SERVER": self.server_url,
            "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE": self.passphrase,
            "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE": self.passphrase,
            # never reach a real daemon, even if one runs on this machine
            "DOCKER_HOST": f"unix://{self.home / 'no-daemon.sock'}",
            "DOCKER_CLI_HINTS": "false",
        }

    @classmethod
    def for_server(cls, server: ServerInfo, home: Path, binary: str = "docker") -> DockerCLI:
        return cls(server.url, server.ca_cert, home, binary)

    @property
    def config_dir(self) -> Path:
        return self.home / ".docker"

    @property
    def trust_dir(self) -> Path:
        return self.config_dir / "trust"

    def run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`docker *args` with this client's environment (plus `env`)."""
        return run_command(
            [self.binary, *args], self.env | dict(env or {}), input=input, check=check
        )

    def inspect(self, repo: str) -> dict[str, Any]:
        """`docker trust inspect REPO`, the single repository object of its JSON."""
        result = self.run("trust", "inspect", repo)
        data = json.loads(result.stdout)
        assert isinstance(data, list) and len(data) == 1, describe(result)
        return data[0]

    def notary(self, notary_binary: str = "notary") -> NotaryCLI:
        """A notary CLI working in this docker client's trust dir (what `trust sign` would do)."""
        notary = NotaryCLI(self.server_url, self.ca_cert, self.trust_dir, notary_binary)
        notary.passphrase = self.passphrase
        return notary


# -- the server over HTTP -----------------------------------------------------------------------


def trust_url(server: ServerInfo, gun: str, path: str) -> str:
    """https://.../v2/<gun percent-encoded>/_trust/<path>."""
    return f"{server.url}/v2/{quote(gun, safe='/:')}/_trust/{path}"


def http_get(server: ServerInfo, gun: str, path: str) -> requests.Response:
    """GET /v2/<gun>/_trust/<path> with TLS verified against the server's CA."""
    return requests.get(trust_url(server, gun, path), verify=str(server.ca_cert), timeout=30)


def fetch_bytes(server: ServerInfo, gun: str, filename: str) -> bytes:
    """Bytes of tuf/<filename> (e.g. `root.json`, `targets/releases.json`); must be 200."""
    response = http_get(server, gun, f"tuf/{filename}")
    assert response.status_code == 200, (filename, response.status_code, response.text)
    return response.content


def fetch_json(server: ServerInfo, gun: str, filename: str) -> dict[str, Any]:
    return json.loads(fetch_bytes(server, gun, filename))


def server_key(server: ServerInfo, gun: str, role: str) -> dict[str, Any]:
    """GET tuf/<role>.key: the server-held public key as {"keytype", "keyval"}."""
    response = http_get(server, gun, f"tuf/{role}.key")
    assert response.status_code == 200, response.text
    return response.json()


# -- TUF checks made independently of the server's code -----------------------------------------


def canonical(value: Any) -> bytes:
    """Notary's canonical JSON (what is signed and what key ids hash)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(key: Mapping[str, Any]) -> str:
    """Key id: hex sha256 of the canonical {"keytype", "keyval": {"private": null, "public"}}."""
    body = {
        "keytype": key["keytype"],
        "keyval": {"private": None, "public": key["keyval"]["public"]},
    }
    return hashlib.sha256(canonical(body)).hexdigest()


def pem_body(pem: bytes) -> bytes:
    """DER inside a PEM block, ignoring Notary's `role:`/`gun:` header lines."""
    lines = pem.decode().splitlines()
    payload = [line for line in lines if line and not line.startswith("-----") and ":" not in line]
    return base64.b64decode("".join(payload))


def ecdsa_public_key(spki_der: bytes) -> dict[str, Any]:
    """The `ecdsa` key dict for a DER SubjectPublicKeyInfo."""
    return {
        "keytype": "ecdsa",
        "keyval": {"private": None, "public": base64.b64encode(spki_der).decode()},
    }


def _public_key(key: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    raw = base64.b64decode(key["keyval"]["public"])
    keytype = key["keytype"]
    if keytype == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if keytype == "ecdsa":
        loaded = serialization.load_der_public_key(raw)
    elif keytype == "ecdsa-x509":
        loaded = x509.load_pem_x509_certificate(raw).public_key()
    else:
        raise AssertionError(f"unexpected key type {keytype}")
    assert isinstance(loaded, ec.EllipticCurvePublicKey)
    return loaded


def signature_valid(document: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
    """Whether `document` carries a valid signature by `key` under that key's id."""
    message = canonical(document["signed"])
    public = _public_key(key)
    for sig in document["signatures"]:
        if sig["keyid"] != key_id(key):
            continue
        raw = base64.b64decode(sig["sig"])
        try:
            if isinstance(public, ed25519.Ed25519PublicKey):
                assert sig["method"] == "eddsa", sig
                public.verify(raw, message)
            else:
                assert sig["method"] == "ecdsa" and len(raw) == 64, sig
                der = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
                public.verify(der, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True
    return False


def ecdsa_sign(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> str:
    """Base64 of the raw r||s ECDSA P-256 / SHA-256 signature of `message`, as Notary signs."""
    r, s = decode_dss_signature(private_key.sign(message, ec.ECDSA(hashes.SHA256())))
    return base64.b64encode(r.to_bytes(32) + s.to_bytes(32)).decode()


def role_key(root_or_targets: Mapping[str, Any], role: str) -> dict[str, Any]:
    """The single key of `role` in a root (roles map) or targets (delegations) document."""
    signed = root_or_targets["signed"]
    if "roles" in signed:
        keys, key_ids = signed["keys"], signed["roles"][role]["keyids"]
    else:
        delegations = signed["delegations"]
        keys = delegations["keys"]
        (entry,) = [r for r in delegations["roles"] if r["name"] == role]
        key_ids = entry["keyids"]
    assert len(key_ids) == 1, key_ids
    return keys[key_ids[0]]


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def sha512_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha512(data).digest()).decode()
