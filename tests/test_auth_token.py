"""Token authentication (spec 1.9): JWT checks and the challenge in-process, then the real
notary and docker CLIs and our own client end to end against a token service."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from support.api import Server, error_of, multipart, serving
from support.auth_flows import docker_flow, notary_flow, run_our_cli
from support.server import ServerInfo, running_server
from support.token_issuer import (
    ISSUER,
    SERVICE,
    SigningKey,
    TokenIssuer,
    TokenPKI,
    User,
    der_b64,
    repository_access,
    running_issuer,
)
from tufnotary.client.remote import ForeignRealmError, Remote, UnauthorizedError
from tufnotary.metadata.keys import key_usage
from tufnotary.server.auth import TokenAuth, is_loopback, libtrust_key_id
from tufnotary.server.config import ConfigError, Settings
from tufnotary.server.context import request_state, server_context
from tufnotary.server.tls import ensure_self_signed

GUN = "registry.example.com/team/app"
REALM = "https://auth.example.com/token"
HEX = "a" * 64


@pytest.fixture
def pki(tmp_path: Path) -> TokenPKI:
    return TokenPKI(tmp_path / "pki")


def _token_server(tmp_path: Path, pki: TokenPKI, **settings: Any) -> Server:
    return Server.start(
        tmp_path / "server",
        auth_mode="token",
        token_realm=REALM,
        token_service=SERVICE,
        token_issuer=ISSUER,
        token_rootcertbundle=pki.bundle,
        **settings,
    )


@pytest.fixture
def server(tmp_path: Path, pki: TokenPKI) -> Server:
    return _token_server(tmp_path, pki)


def _open(server: Server, path: str, token: str | None = None, method: str = "GET") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return server.client.open(path, method=method, headers=headers)


def _challenge(scope: str, error: str | None = None) -> str:
    value = f'Bearer realm="{REALM}",service="{SERVICE}",scope="{scope}"'
    return value + (f',error="{error}"' if error else "")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": SERVICE, "exp": now + 300, "nbf": now - 1}
    return claims | {"access": repository_access(GUN, "pull")} | overrides


def _other_ca_key(subject: str) -> SigningKey:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    return SigningKey(key, [leaf, ca])


# -- the challenge --------------------------------------------------------------------------------


def test_challenge_without_token_is_byte_exact(server: Server) -> None:
    response = _open(server, server.tuf(GUN, "root.json"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == _challenge(f"repository:{GUN}:pull")
    assert response.data == (
        b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":'
        b'[{"Type":"repository","Class":"","Name":"registry.example.com/team/app",'
        b'"Action":"pull"}]}]}\n'
    )


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer a b", "token abc"])
def test_not_a_bearer_header_is_token_required(server: Server, header: str) -> None:
    response = server.client.get(server.tuf(GUN, "root.json"), headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == _challenge(f"repository:{GUN}:pull")


def test_health_and_metrics_need_no_token(server: Server) -> None:
    assert server.client.get("/_notary_server/health").status_code == 200
    assert server.client.get("/metrics").status_code == 200


def test_valid_token_reaches_the_handler_and_names_the_actor(server: Server, pki: TokenPKI) -> None:
    token = pki.mint(repository_access(GUN, "pull"), subject="carol")
    with server.client:  # a read the fast path (server/fastpath.py) leaves to the API
        response = _open(server, f"/v2/{GUN}/_trust/changefeed", token)
        assert request_state().actor == "carol"
    assert response.status_code == 200
    assert response.json == {"count": 0, "records": []}


# -- route matrix ------------------------------------------------------------------------------

CATALOG = "registry:catalog:*"
ROUTES = [
    ("GET", "/v2/", CATALOG),
    ("POST", f"/v2/{GUN}/_trust/tuf/", f"repository:{GUN}:push,pull"),
    ("GET", f"/v2/{GUN}/_trust/tuf/root.{HEX}.json", f"repository:{GUN}:pull"),
    ("GET", f"/v2/{GUN}/_trust/tuf/1.root.json", f"repository:{GUN}:pull"),
    ("GET", f"/v2/{GUN}/_trust/tuf/targets/releases.json", f"repository:{GUN}:pull"),
    ("HEAD", f"/v2/{GUN}/_trust/tuf/root.json", f"repository:{GUN}:pull"),
    ("GET", f"/v2/{GUN}/_trust/tuf/timestamp.key", f"repository:{GUN}:push,pull"),
    ("POST", f"/v2/{GUN}/_trust/tuf/snapshot.key", f"repository:{GUN}:*"),
    ("DELETE", f"/v2/{GUN}/_trust/tuf/", f"repository:{GUN}:*"),
    ("GET", f"/v2/{GUN}/_trust/changefeed", f"repository:{GUN}:pull"),
    ("GET", "/v2/_trust/changefeed", CATALOG),
    ("GET", f"/v2/{GUN}/_trust/tuf/root.key", CATALOG),  # catch-all
    ("PUT", f"/v2/{GUN}/_trust/tuf/root.json", CATALOG),  # catch-all
]


def _access_for(scope: str, actions: list[str] | None = None) -> list[dict[str, Any]]:
    """The access claim granting `scope` (or other `actions` on its resource)."""
    kind, rest = scope.split(":", 1)
    name, wanted = rest.rsplit(":", 1)
    return [{"type": kind, "name": name, "actions": actions or wanted.split(",")}]


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_required_access_per_route(
    server: Server, pki: TokenPKI, method: str, path: str, scope: str
) -> None:
    anonymous = _open(server, path, method=method)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == _challenge(scope)
    allowed = _open(server, path, pki.mint(_access_for(scope)), method=method)
    assert allowed.status_code != 401, allowed.data
    wildcard = pki.mint(_access_for(scope, ["*"]))
    assert _open(server, path, wildcard, method=method).status_code != 401
    if scope.startswith("repository:") and scope.endswith(":*"):  # push+pull is not "*"
        pushing = pki.mint(_access_for(scope, ["push", "pull"]))
        assert _open(server, path, pushing, method=method).status_code == 401
    if "," in scope:  # push,pull: one of the two is not enough
        for action in ("push", "pull"):
            refused = _open(server, path, pki.mint(_access_for(scope, [action])), method=method)
            assert refused.status_code == 401
            assert refused.headers["WWW-Authenticate"] == _challenge(scope, "insufficient_scope")


def test_insufficient_scope_for_publish_and_other_gun(server: Server, pki: TokenPKI) -> None:
    pull_only = pki.mint(repository_access(GUN, "pull"))
    body, content_type = multipart([("targets", b"{}")])
    response = server.client.post(
        server.tuf(GUN),
        data=body,
        content_type=content_type,
        headers={"Authorization": f"Bearer {pull_only}"},
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == _challenge(
        f"repository:{GUN}:push,pull", "insufficient_scope"
    )
    assert [d["Action"] for d in error_of(response)["detail"]] == ["push", "pull"]
    other = pki.mint(repository_access("registry.example.com/other", "*"))
    response = _open(server, server.tuf(GUN, "root.json"), other)
    assert response.headers["WWW-Authenticate"] == _challenge(
        f"repository:{GUN}:pull", "insufficient_scope"
    )


def test_body_cap_applies_before_authentication(tmp_path: Path, pki: TokenPKI) -> None:
    server = _token_server(tmp_path, pki, max_body_bytes=1000)
    body, content_type = multipart([("targets", b"x" * 2000)])
    response = server.client.post(server.tuf(GUN), data=body, content_type=content_type)
    assert response.status_code == 413
    assert error_of(response)["code"] == "TOO_LARGE"


# -- token verification --------------------------------------------------------------------------


def _forged(pki: TokenPKI) -> str:
    """Names the trusted certificate in x5c but is signed by another key."""
    impostor = SigningKey(ec.generate_private_key(ec.SECP256R1()), pki.signer.chain)
    return pki.mint(repository_access(GUN, "pull"), signer=impostor)


def _alg_none(_: TokenPKI) -> str:
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64url(json.dumps(_claims()).encode())}."


def _hmac_with_public_key(pki: TokenPKI) -> str:
    """HS256 keyed with the trusted public key (the algorithm-confusion attack)."""
    header = {"alg": "HS256", "typ": "JWT", "x5c": [der_b64(pki.signer.chain[0])]}
    signing_input = (
        f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(_claims()).encode())}"
    )
    secret = pki.signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


def _mint(**kwargs: Any) -> Any:
    def make(pki: TokenPKI) -> str:
        return pki.mint(repository_access(GUN, "pull"), **kwargs)

    return make


def _expired_certificate(pki: TokenPKI) -> str:
    now = datetime.datetime.now(datetime.UTC)
    old = pki.issue(
        "old signer",
        not_before=now - datetime.timedelta(days=3),
        not_after=now - datetime.timedelta(days=1),
    )
    return pki.mint(repository_access(GUN, "pull"), signer=old)


def _unsigned(pki: TokenPKI) -> str:
    return pki.mint(repository_access(GUN, "pull")).rsplit(".", 1)[0] + "."


INVALID = {
    "forged signature": _forged,
    "expired": lambda pki: _mint(exp=int(time.time()) - 120)(pki),
    "not yet valid": lambda pki: _mint(nbf=int(time.time()) + 120)(pki),
    "no expiry": lambda pki: pki.mint(repository_access(GUN, "pull"), exp=None),
    "wrong audience": _mint(aud="another-service"),
    "wrong issuer": _mint(iss="someone-else"),
    "alg none": _alg_none,
    "HS256 with the public key": _hmac_with_public_key,
    "broken chain": lambda pki: pki.mint(repository_access(GUN, "pull"), signer=_other_ca_key("x")),
    "expired certificate": _expired_certificate,
    "unknown kid": lambda pki: pki.mint(
        repository_access(GUN, "pull"), signer=_other_ca_key("x"), key_by="kid"
    ),
    "untrusted jwk": lambda pki: pki.mint(
        repository_access(GUN, "pull"), signer=_other_ca_key("x"), key_by="jwk"
    ),
    "kid of a key certified but not in the bundle": lambda pki: pki.mint(
        repository_access(GUN, "pull"), signer=pki.issue("other"), key_by="kid"
    ),
    "no key reference": _mint(key_by="none"),
    "leaf without digitalSignature": lambda pki: _chained(
        pki, leaf_usage=key_usage("key_encipherment")
    ),
    "intermediate that is not a CA": lambda pki: _chained(pki, middle_ca=False),
    "leaf issued by a bundle certificate that is not a CA": lambda pki: pki.mint(
        repository_access(GUN, "pull"), signer=pki.issue("leaf", by=pki.signer)
    ),
    "intermediate without keyCertSign": lambda pki: _chained(
        pki, middle_usage=key_usage("digital_signature")
    ),
    "path length exceeded": lambda pki: _chained(pki, top_path_length=0),
    "lifetime over the cap": lambda pki: _mint(iat=int(time.time()), exp=int(time.time()) + 7200)(
        pki
    ),
    "lifetime over the cap, iat in the future": lambda pki: _mint(
        iat=int(time.time()) + 7000, exp=int(time.time()) + 7200
    )(pki),
    "lifetime over the cap from nbf, no iat": lambda pki: _mint(
        iat=None, nbf=int(time.time()) - 1, exp=int(time.time()) + 7200
    )(pki),
    "no signature": _unsigned,
    "not a JWT": lambda pki: "not.a.jwt",
}


@pytest.mark.parametrize("make", INVALID.values(), ids=INVALID.keys())
def test_invalid_tokens_are_refused(server: Server, pki: TokenPKI, make: Any) -> None:
    response = _open(server, server.tuf(GUN, "root.json"), make(pki))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == _challenge(
        f"repository:{GUN}:pull", "invalid_token"
    )
    assert error_of(response)["code"] == "UNAUTHORIZED"


def _rsa_signer(pki: TokenPKI) -> SigningKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa signer")]))
        .issuer_name(pki.ca.subject)
        .public_key(key.public_key())
        .serial_number(3)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(pki.ca_key, hashes.SHA256())
    )
    return SigningKey(key, [cert])  # type: ignore[arg-type]


VALID = {
    "x5c of the bundle certificate": _mint(),
    "x5c chained to the bundle CA": lambda pki: pki.mint(
        repository_access(GUN, "pull"), signer=pki.issue("other")
    ),
    "libtrust kid": _mint(key_by="kid"),
    "trusted jwk": _mint(key_by="jwk"),
    "jwk carrying its x5c": lambda pki: _jwk_with_x5c(pki),
    "expired within the leeway": lambda pki: _mint(exp=int(time.time()) - 30)(pki),
    "valid within the leeway": lambda pki: _mint(nbf=int(time.time()) + 30)(pki),
    "RS256": lambda pki: pki.mint(
        repository_access(GUN, "pull"), signer=_rsa_signer(pki), algorithm="RS256"
    ),
    "two intermediates within their path length, key usages set": lambda pki: _chained(pki),
    "lifetime at the cap": lambda pki: _mint(iat=int(time.time()), exp=int(time.time()) + 3600)(
        pki
    ),
}


def _chained(
    pki: TokenPKI,
    *,
    leaf_usage: x509.KeyUsage | None = None,
    middle_ca: bool = True,
    middle_usage: x509.KeyUsage | None = None,
    top_path_length: int = 1,
) -> str:
    """A token whose x5c is leaf, middle CA, top CA (issued by the bundle CA)."""
    top = pki.issue("top CA", ca=True, path_length=top_path_length, key_usage=_ca_usage())
    middle = pki.issue("middle CA", by=top, ca=middle_ca, key_usage=middle_usage or _ca_usage())
    leaf = pki.issue("signer", by=middle, key_usage=leaf_usage or key_usage("digital_signature"))
    return pki.mint(repository_access(GUN, "pull"), signer=leaf)


def _ca_usage() -> x509.KeyUsage:
    return key_usage("key_cert_sign", "crl_sign")


def test_token_lifetime_cap_is_a_setting(tmp_path: Path, pki: TokenPKI) -> None:
    token = pki.mint(repository_access(GUN, "pull"), exp=int(time.time()) + 7200)
    default = _token_server(tmp_path, pki)
    assert _open(default, default.tuf(GUN, "root.json"), token).status_code == 401
    relaxed = _token_server(tmp_path / "relaxed", pki, max_token_lifetime=86_400)
    assert _open(relaxed, relaxed.tuf(GUN, "root.json"), token).status_code == 404


def _jwk_with_x5c(pki: TokenPKI) -> str:
    other = pki.issue("other")
    jwk = other.jwk() | {"x5c": [der_b64(other.chain[0])]}
    return pki.mint(
        repository_access(GUN, "pull"), signer=other, key_by="none", headers={"jwk": jwk}
    )


@pytest.mark.parametrize("make", VALID.values(), ids=VALID.keys())
def test_valid_tokens_are_accepted(server: Server, pki: TokenPKI, make: Any) -> None:
    response = _open(server, server.tuf(GUN, "root.json"), make(pki))
    assert response.status_code == 404, response.headers.get("WWW-Authenticate")


def test_libtrust_key_id_format(pki: TokenPKI) -> None:
    kid = libtrust_key_id(pki.signer.key.public_key())
    groups = kid.split(":")
    assert len(groups) == 12 and all(len(g) == 4 for g in groups)
    assert kid == kid.upper()


# -- configuration -----------------------------------------------------------------------------


def test_token_settings(tmp_path: Path, pki: TokenPKI) -> None:
    env = {
        "TUFNOTARY_AUTH_MODE": "token",
        "TUFNOTARY_TOKEN_REALM": REALM,
        "TUFNOTARY_TOKEN_SERVICE": SERVICE,
        "TUFNOTARY_TOKEN_ISSUER": ISSUER,
        "TUFNOTARY_TOKEN_ROOTCERTBUNDLE": str(pki.bundle),
    }
    settings = Settings.load(env=env)
    assert (settings.auth_mode, settings.token_rootcertbundle) == ("token", pki.bundle)
    assert Settings.load(env={}).auth_mode == "none"
    with pytest.raises(ConfigError, match="token_issuer: required"):
        Settings.load(env={k: v for k, v in env.items() if "ISSUER" not in k})
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    with pytest.raises(ConfigError, match="token_rootcertbundle"):
        Settings.load(env=env | {"TUFNOTARY_TOKEN_ROOTCERTBUNDLE": str(broken)})
    with pytest.raises(ConfigError, match="token_rootcertbundle"):
        Settings.load(env=env | {"TUFNOTARY_TOKEN_ROOTCERTBUNDLE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="token_rootcertbundle: only with auth_mode 'token'"):
        Settings.load(env=env | {"TUFNOTARY_AUTH_MODE": "builtin", "TUFNOTARY_TOKEN_REALM": ""})
    with pytest.raises(ConfigError, match="auth_mode"):
        Settings.load(env={"TUFNOTARY_AUTH_MODE": "htpasswd"})


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1:4443") and is_loopback("[::1]:4443")
    assert is_loopback("localhost:4443")
    assert not is_loopback("0.0.0.0:4443") and not is_loopback("10.1.2.3:4443")
    assert not is_loopback("[::]:4443") and not is_loopback("notary.example.com:4443")


# -- our client against the in-process server ---------------------------------------------------

PASSWORD = "s3cret"


def _users() -> dict[str, User]:
    return {
        "alice": User(PASSWORD, {"*": {"*"}}),
        "bob": User(PASSWORD, {"*": {"pull"}}),
    }


def test_remote_fetches_a_token_and_retries(server: Server, tmp_path: Path, pki: TokenPKI) -> None:
    tls = ensure_self_signed(tmp_path / "issuer-tls")
    with running_issuer(pki, _users(), tls.cert, tls.key) as issuer, serving(server.app) as url:
        context = server_context(server.app)
        assert context.auth is not None
        context.auth = TokenAuth(issuer.realm, SERVICE, ISSUER, context.auth.roots)
        alice = Remote(url, str(tls.ca_cert), username="alice", password=PASSWORD)
        alice.server_key(GUN, "timestamp")
        alice.server_key(GUN, "timestamp", rotate=True)  # 401 for *, a new token, retried
        assert issuer.requests[-1] == ("alice", [f"repository:{GUN}:*"])
        bob = Remote(url, str(tls.ca_cert), username="bob", password=PASSWORD)
        with pytest.raises(UnauthorizedError, match="do not grant"):
            bob.server_key(GUN, "timestamp")
        static = Remote(url, token=pki.mint(repository_access(GUN, "push", "pull")))
        assert static.server_key(GUN, "timestamp") is not None
        anonymous = Remote(url, str(tls.ca_cert))
        with pytest.raises(UnauthorizedError, match="do not grant"):
            anonymous.server_key(GUN, "timestamp")
        assert issuer.requests[-1] == ("", [f"repository:{GUN}:push,pull"])


def test_credentials_go_only_to_a_realm_on_the_servers_host(
    server: Server, tmp_path: Path, pki: TokenPKI
) -> None:
    tls = ensure_self_signed(tmp_path / "issuer-tls")
    with running_issuer(pki, _users(), tls.cert, tls.key) as issuer, serving(server.app) as url:
        # the server is reached as 127.0.0.1, its token service is named by another host name
        foreign = issuer.realm.replace("127.0.0.1", "localhost")
        context = server_context(server.app)
        assert context.auth is not None
        context.auth = TokenAuth(foreign, SERVICE, ISSUER, context.auth.roots)
        alice = Remote(url, str(tls.ca_cert), username="alice", password=PASSWORD)
        with pytest.raises(ForeignRealmError, match="--token-realm-host localhost"):
            alice.server_key(GUN, "timestamp")
        assert issuer.requests == []  # nothing was sent
        allowed = Remote(
            url, str(tls.ca_cert), username="alice", password=PASSWORD, realm_hosts=("LOCALHOST",)
        )
        allowed.server_key(GUN, "timestamp")
        assert issuer.requests == [("alice", [f"repository:{GUN}:push,pull"])]
        anonymous = Remote(url, str(tls.ca_cert))  # no credentials: nothing to protect
        with pytest.raises(UnauthorizedError):
            anonymous.server_key(GUN, "timestamp")
        assert issuer.requests[-1][0] == ""


# -- end to end: the real server process, notary, docker and our CLI -----------------------------


@dataclass
class AuthSetup:
    server: ServerInfo
    issuer: TokenIssuer


@pytest.fixture(scope="module")
def auth_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthSetup]:
    base = tmp_path_factory.mktemp("auth-e2e")
    tls = ensure_self_signed(base / "data")  # the server reuses it; the issuer shares its CA
    pki = TokenPKI(base / "pki")
    with running_issuer(pki, _users(), tls.cert, tls.key) as issuer:
        arguments = (
            "--auth-mode",
            "token",
            "--token-realm",
            issuer.realm,
            "--token-service",
            SERVICE,
            "--token-issuer",
            ISSUER,
            "--token-rootcertbundle",
            str(pki.bundle),
            "--workers",
            "1",
        )
        with running_server(base, *arguments) as server:
            yield AuthSetup(server, issuer)


@pytest.mark.e2e
def test_notary_cli_with_notary_auth(auth_setup: AuthSetup, tmp_path: Path) -> None:
    gun = "registry.example.com/auth/notary"
    notary_flow(auth_setup.server, tmp_path, gun, PASSWORD)
    assert ("alice", [f"repository:{gun}:*"]) in auth_setup.issuer.requests


@pytest.mark.e2e
def test_docker_cli_with_registry_credentials(auth_setup: AuthSetup, tmp_path: Path) -> None:
    repo = "registry.example.com/auth/docker"
    docker_flow(auth_setup.server, tmp_path, repo, PASSWORD)
    scopes = [f"repository:{repo}:push,pull", f"repository:{repo}:pull,push"]
    assert any(("alice", [scope]) in auth_setup.issuer.requests for scope in scopes)


def test_our_cli_with_username_and_password(auth_setup: AuthSetup, tmp_path: Path) -> None:
    server = auth_setup.server
    gun = "registry.example.com/auth/tufnotary"
    target = tmp_path / "artifact"
    target.write_bytes(b"payload")

    def run(user: str, *args: str, expect: int = 0, keys: str = "") -> str:
        credentials = {"TUFNOTARY_USERNAME": user, "TUFNOTARY_PASSWORD": PASSWORD}
        trust_dir = tmp_path / f"trust-{keys or user}"
        return run_our_cli(server, trust_dir, *args, expect=expect, env=credentials)

    run("alice", "init", gun)
    run("alice", "add", gun, "v1", str(target), "-p")
    assert "v1" in run("bob", "list", gun)
    assert "v1" in run("alice", "list", gun)
    run("alice", "key", "rotate", gun, "snapshot", "-r")
    # bob holds alice's keys but only pull access: the server refuses the upload
    refused = run("bob", "add", gun, "v2", str(target), "-p", expect=1, keys="alice")
    assert "UNAUTHORIZED" in refused and "do not grant" in refused
    run("alice", "delete", gun, "--remote")
    assert "has no trust data" in run("bob", "list", gun, expect=1, keys="fresh")
