"""Token authentication (spec 1.9): Docker registry bearer tokens, as notary-server checks them.

A request carries ``Authorization: Bearer <JWT>`` issued by a registry token service. The JWT
must name the configured issuer and service, be within its validity (60 s leeway), be signed
with ES256/384/512 or RS256/384/512 by a key found through ``x5c`` (chain to the root bundle),
``jwk`` (a bundle key, or carrying an ``x5c`` chain) or a libtrust ``kid`` (a bundle key), and
grant every required access. Anything else gets the 401 challenge with the UNAUTHORIZED
envelope.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tufnotary.metadata.keys import issued_by, may_issue, may_sign_data
from tufnotary.server.errors import ServerError

LEEWAY = 60
"""Seconds of clock skew tolerated on ``exp``, ``nbf`` and certificate validity."""
MAX_CHAIN = 10
DEFAULT_MAX_LIFETIME = 3600
"""Seconds from issue (``iat``, else ``nbf``, else now) to ``exp`` a token may span."""
_EC_ALGORITHMS: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512")
ALGORITHMS = (*_EC_ALGORITHMS, *_RSA_ALGORITHMS)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class Access:
    """One required access item: ``type:name:action``."""

    type: str
    name: str
    action: str

    def detail(self) -> dict[str, str]:
        """As the reference's JSON detail renders it."""
        return {"Type": self.type, "Class": "", "Name": self.name, "Action": self.action}


def required_access(gun: str | None, actions: Sequence[str]) -> list[Access]:
    """One item per action on the repository; ``registry:catalog:*`` for routes without a GUN."""
    if gun is None:
        return [Access("registry", "catalog", "*")]
    return [Access("repository", gun, action) for action in actions]


# -- the challenge -----------------------------------------------------------------------------

_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t"}
_GO_ESCAPES |= {"\v": r"\v", "\\": "\\\\", '"': '\\"'}


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string (strconv.Quote)."""
    out = []
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def scope_string(access: Iterable[Access]) -> str:
    """``type:name:a,b`` per resource, resources space-separated; actions in route order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for item in access:
        actions = groups.setdefault((item.type, item.name), [])
        if item.action not in actions:
            actions.append(item.action)
    return " ".join(f"{t}:{n}:{','.join(actions)}" for (t, n), actions in groups.items())


class Unauthorized(ServerError, code="UNAUTHORIZED"):
    """401 with the ``WWW-Authenticate: Bearer`` challenge; detail = the required access."""

    INVALID_TOKEN: ClassVar[str] = "invalid_token"
    INSUFFICIENT_SCOPE: ClassVar[str] = "insufficient_scope"

    def __init__(
        self,
        realm: str,
        service: str,
        access: Sequence[Access],
        error: str | None = None,
        log: str | None = None,
    ) -> None:
        super().__init__([item.detail() for item in access], log=log or error or "token required")
        challenge = (
            f"Bearer realm={go_quote(realm)},service={go_quote(service)},"
            f"scope={go_quote(scope_string(access))}"
        )
        if error:
            challenge += f",error={go_quote(error)}"
        self.headers = {"WWW-Authenticate": challenge}


# -- keys and certificates ---------------------------------------------------------------------


def libtrust_key_id(key: PublicKey) -> str:
    """libtrust fingerprint: sha256 of the DER SPKI, 30 bytes, base32, groups of 4 by ':'."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def load_root_bundle(path: Path) -> list[x509.Certificate]:
    """The PEM certificates of ``path``; ValueError unless there is at least one usable one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM certificate bundle: {exc}") from None
    for cert in certs:
        if not isinstance(cert.public_key(), PublicKey):
            raise ValueError(f"{path}: {cert.subject.rfc4514_string()}: not an EC or RSA key")
    return certs


def _in_validity(cert: x509.Certificate, now: datetime.datetime) -> bool:
    leeway = datetime.timedelta(seconds=LEEWAY)
    return cert.not_valid_before_utc - leeway <= now <= cert.not_valid_after_utc + leeway


class TokenError(Exception):
    """The token is malformed or fails verification (``error="invalid_token"``)."""


@dataclass(frozen=True)
class TokenAuth:
    """Verifies bearer tokens for one configured realm, service, issuer and root bundle."""

    realm: str
    service: str
    issuer: str
    roots: tuple[x509.Certificate, ...]
    max_lifetime: int = DEFAULT_MAX_LIFETIME

    @classmethod
    def from_files(
        cls,
        realm: str,
        service: str,
        issuer: str,
        bundle: Path,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
    ) -> TokenAuth:
        return cls(realm, service, issuer, tuple(load_root_bundle(bundle)), max_lifetime)

    @property
    def trusted_keys(self) -> dict[str, PublicKey]:
        """The bundle's public keys by libtrust key id."""
        keys: dict[str, PublicKey] = {}
        for cert in self.roots:
            key = cert.public_key()
            if isinstance(key, PublicKey):
                keys[libtrust_key_id(key)] = key
        return keys

    # -- per request ---------------------------------------------------------------------------

    def authorize(self, authorization: str | None, access: Sequence[Access]) -> str:
        """The token's subject if ``authorization`` grants every item of ``access``.

        Raises Unauthorized with the challenge otherwise.
        """
        parts = (authorization or "").split(" ")
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise Unauthorized(self.realm, self.service, access)
        try:
            claims = self.verify(parts[1])
            granted = _granted(claims.get("access"))
        except TokenError as exc:
            raise Unauthorized(
                self.realm, self.service, access, Unauthorized.INVALID_TOKEN, f"token: {exc}"
            ) from None
        missing = [item for item in access if not _allows(granted, item)]
        if missing:
            raise Unauthorized(
                self.realm,
                self.service,
                access,
                Unauthorized.INSUFFICIENT_SCOPE,
                "token lacks " + scope_string(missing),
            )
        subject = claims.get("sub", "")
        return subject if isinstance(subject, str) else ""

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token that passes every check of spec 1.9 step 3; else TokenError."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenError(f"algorithm {alg!r} not allowed")
        key = self._signing_key(header)
        _check_key_fits(key, alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.service,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"], "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc) or type(exc).__name__) from None
        if not isinstance(claims, dict):
            raise TokenError("claims are not an object")
        self._check_lifetime(claims)
        return claims

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """``exp`` at most ``max_lifetime`` after ``iat`` (else ``nbf``) or now if earlier."""
        now = time.time()
        start = next((claims[k] for k in ("iat", "nbf") if claims.get(k) is not None), now)
        if not isinstance(start, int | float) or isinstance(start, bool):
            raise TokenError("iat is not a number")
        lifetime = claims["exp"] - min(start, now)
        if lifetime > self.max_lifetime:
            raise TokenError(
                f"token lifetime {int(lifetime)}s is over the {self.max_lifetime}s allowed"
            )

    def _signing_key(self, header: Mapping[str, Any]) -> PublicKey:
        """From x5c (chain to the bundle), else jwk, else kid (spec 1.9 order)."""
        if "x5c" in header:
            return self._chain_key(header["x5c"])
        if "jwk" in header:
            return self._jwk_key(header["jwk"])
        kid = header.get("kid")
        if isinstance(kid, str) and kid:
            key = self.trusted_keys.get(kid)
            if key is None:
                raise TokenError(f"kid {kid!r} is not a trusted key")
            return key
        raise TokenError("token names no key (x5c, jwk or kid)")

    def _chain_key(self, x5c: object) -> PublicKey:
        """The leaf key of an x5c chain that verifies to a bundle certificate."""
        if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
            raise TokenError("x5c is not a list of certificates")
        try:
            chain = [
                x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c
            ]
        except ValueError as exc:
            raise TokenError(f"x5c: unreadable certificate: {exc}") from None
        now = datetime.datetime.now(datetime.UTC)
        leaf, intermediates = chain[0], chain[1:]
        if not may_sign_data(leaf):
            raise TokenError("x5c: the leaf certificate's key usage lacks digitalSignature")
        current = leaf
        for below in range(MAX_CHAIN):
            if not _in_validity(current, now):
                raise TokenError(f"x5c: certificate {current.subject.rfc4514_string()} expired")
            if current in self.roots:
                break
            root = next((r for r in self.roots if issued_by(current, r)), None)
            if root is not None:
                if not may_issue(root, below):
                    raise TokenError("x5c: the root certificate may not issue this chain")
                if not _in_validity(root, now):
                    raise TokenError("x5c: root certificate not valid now")
                break
            issuer = next((c for c in intermediates if issued_by(current, c)), None)
            if issuer is None:
                raise TokenError("x5c: chain does not verify to the root bundle")
            if not may_issue(issuer, below):
                raise TokenError(
                    f"x5c: {issuer.subject.rfc4514_string()} is not a CA allowed to issue "
                    "this chain (basic constraints, key usage or path length)"
                )
            current = issuer
        else:
            raise TokenError("x5c: chain too long")
        key = leaf.public_key()
        if not isinstance(key, PublicKey):
            raise TokenError("x5c: leaf key is neither EC nor RSA")
        return key

    def _jwk_key(self, jwk: object) -> PublicKey:
        """A trusted bundle key, or a key whose own x5c chains to the bundle."""
        if not isinstance(jwk, dict):
            raise TokenError("jwk is not an object")
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise TokenError(f"jwk: unusable key: {exc}") from None
        if not isinstance(key, PublicKey):
            raise TokenError("jwk: not an EC or RSA public key")
        if "x5c" in jwk:
            leaf = self._chain_key(jwk["x5c"])
            if libtrust_key_id(leaf) != libtrust_key_id(key):
                raise TokenError("jwk: key does not match its x5c certificate")
            return key
        if libtrust_key_id(key) not in self.trusted_keys:
            raise TokenError(f"jwk: untrusted key {libtrust_key_id(key)}")
        return key


def _check_key_fits(key: PublicKey, alg: str) -> None:
    """ES* needs the matching curve, RS* an RSA key."""
    curve = _EC_ALGORITHMS.get(alg)
    if curve is not None:
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
            raise TokenError(f"{alg} needs an EC key on {curve.name}")
    elif not isinstance(key, rsa.RSAPublicKey):
        raise TokenError(f"{alg} needs an RSA key")


def _granted(claim: object) -> dict[tuple[str, str], set[str]]:
    """The ``access`` claim as {(type, name): actions}; TokenError if malformed."""
    if claim is None:
        return {}
    if not isinstance(claim, list):
        raise TokenError("access claim is not a list")
    granted: dict[tuple[str, str], set[str]] = {}
    for entry in claim:
        if not isinstance(entry, dict):
            raise TokenError("access entry is not an object")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions") or []
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise TokenError("access entry needs type, name and actions")
        granted.setdefault((kind, name), set()).update(a for a in actions if isinstance(a, str))
    return granted


def _allows(granted: Mapping[tuple[str, str], set[str]], item: Access) -> bool:
    actions = granted.get((item.type, item.name), set())
    return item.action in actions or "*" in actions


# -- listening without authentication ----------------------------------------------------------


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT (or unix:/PATH) listen address only accepts local connections."""
    if listen.startswith("unix:"):
        return True
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
