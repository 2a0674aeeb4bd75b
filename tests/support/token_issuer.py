"""A small Docker-registry-style token service for tests (spec 1.9, 4.7).

`TokenPKI` makes a CA and a token-signing certificate it issued (the bundle the server trusts
holds both) and mints JWTs with any header or claims. `TokenIssuer` serves
`GET /token?service=..&scope=..` over HTTPS in a thread: HTTP basic users with allowed actions
per repository, anonymous callers get no access.
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tufnotary.server.auth import libtrust_key_id

ISSUER = "tufnotary-test-issuer"
SERVICE = "tufnotary-test"
TOKEN_LIFETIME = 300


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    path_length: int | None = None,
    key_usage: x509.KeyUsage | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(signing_key, hashes.SHA256())


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@dataclass
class SigningKey:
    """A token-signing key and its certificate chain (leaf first, root excluded)."""

    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]

    @property
    def kid(self) -> str:
        return libtrust_key_id(self.key.public_key())

    def jwk(self) -> dict[str, Any]:
        return json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))


@dataclass
class TokenPKI:
    """A CA, the signing key it certified, and the root bundle file (CA + signing cert)."""

    directory: Path
    ca_key: ec.EllipticCurvePrivateKey = field(init=False)
    ca: x509.Certificate = field(init=False)
    signer: SigningKey = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _certificate("token test CA", self.ca_key, None, ca=True)
        self.signer = self.issue("token signer")
        pem = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.ca, self.signer.chain[0])
        )
        self.bundle.write_bytes(pem)

    @property
    def bundle(self) -> Path:
        return self.directory / "token-roots.pem"

    def issue(
        self,
        subject: str,
        *,
        by: SigningKey | None = None,
        ca: bool = False,
        path_length: int | None = None,
        key_usage: x509.KeyUsage | None = None,
        **validity: datetime.datetime,
    ) -> SigningKey:
        """A new P-256 key certified by this CA, or by the intermediate ``by`` (whose chain
        then follows); optionally a CA, with key usage or other validity bounds."""
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = (by.chain[0], by.key) if by else (self.ca, self.ca_key)
        cert = _certificate(
            subject,
            key,
            issuer,
            ca=ca,
            path_length=path_length,
            key_usage=key_usage,
            **validity,  # type: ignore[arg-type]
        )
        return SigningKey(key, [cert, *(by.chain if by else [])])

    def mint(
        self,
        access: list[dict[str, Any]],
        *,
        subject: str = "alice",
        signer: SigningKey | None = None,
        key_by: str = "x5c",
        algorithm: str = "ES256",
        secret: Any = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A JWT for `access`; claims default to a valid token of ISSUER for SERVICE.

        `key_by` is x5c, kid, jwk or none (no key reference); `secret` replaces the signing key.
        """
        signer = signer or self.signer
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        } | claims
        header: dict[str, Any] = {"typ": "JWT"}
        if key_by == "x5c":
            header["x5c"] = [der_b64(c) for c in signer.chain]
        elif key_by == "kid":
            header["kid"] = signer.kid
        elif key_by == "jwk":
            header["jwk"] = signer.jwk()
        header |= dict(headers or {})
        key = signer.key if secret is None else secret
        return jwt.encode(payload, key, algorithm=algorithm, headers=header)


def repository_access(gun: str, *actions: str) -> list[dict[str, Any]]:
    return [{"type": "repository", "name": gun, "actions": list(actions)}]


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """`type:name:a,b` (the name may contain ':') as (type, name, actions)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, [a for a in actions.split(",") if a]


@dataclass
class User:
    password: str
    grants: dict[str, set[str]]  # GUN (or "*" for every GUN) -> allowed actions ("*" = all)

    def allowed(self, kind: str, name: str, wanted: list[str]) -> list[str]:
        if kind != "repository":
            return []
        allowed = self.grants.get(name, set()) | self.grants.get("*", set())
        return wanted if "*" in allowed else [a for a in wanted if a in allowed]


@dataclass
class TokenIssuer:
    """`GET /token` over HTTPS, answered from `users`; `requests` records (user, scopes)."""

    pki: TokenPKI
    users: dict[str, User]
    requests: list[tuple[str, list[str]]] = field(default_factory=list)
    url: str = ""

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def answer(self, authorization: str | None, query: Mapping[str, list[str]]) -> tuple[int, Any]:
        user_name = ""
        user = User("", {})
        if authorization:
            scheme, _, encoded = authorization.partition(" ")
            try:
                name, _, password = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                return 400, {"error": "unreadable basic credentials"}
            known = self.users.get(name)
            if scheme.lower() != "basic" or known is None or known.password != password:
                return 401, {"error": "wrong user name or password"}
            user_name, user = name, known
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        self.requests.append((user_name, scopes))
        if query.get("service", [""])[0] != SERVICE:
            return 400, {"error": "unknown service"}
        access = []
        for scope in scopes:
            kind, name, wanted = parse_scope(scope)
            granted = user.allowed(kind, name, wanted)
            if granted:
                access.append({"type": kind, "name": name, "actions": granted})
        token = self.pki.mint(access, subject=user_name)
        return 200, {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME}


@contextmanager
def running_issuer(
    pki: TokenPKI, users: dict[str, User], cert: Path, key: Path
) -> Iterator[TokenIssuer]:
    """Serve a TokenIssuer on https://127.0.0.1:<free port> with `cert`/`key` until exit."""
    issuer = TokenIssuer(pki, users)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/token":
                status, body = 404, {"error": "not found"}
            else:
                status, body = issuer.answer(
                    self.headers.get("Authorization"), parse_qs(parts.query)
                )
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    issuer.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
