"""Public keys as Notary writes them: key ids, x509 certificate keys (spec 3.5, 2.5)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tufnotary.metadata.canonical import encode_canonical
from tufnotary.metadata.errors import FormatError

ECDSA = "ecdsa"
ECDSA_X509 = "ecdsa-x509"
RSA = "rsa"
RSA_X509 = "rsa-x509"
ED25519 = "ed25519"
X509_TYPES = frozenset({ECDSA_X509, RSA_X509})
MIN_RSA_BITS = 2048
KEY_CREATED_HEADER = "X-Tufnotary-Key-Created"
"""Response header of ``GET``/``POST {role}.key``: when the server made (or was given) the key,
RFC 3339 UTC; notary clients ignore it, ``tufnotary key status`` ages the key by it."""

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, as Go's encoding/json writes []byte."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Any, what: str) -> bytes:
    """Strict standard base64, or FormatError naming ``what``."""
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a base64 string")
    try:  # the common case in one C call (it accepts a subset of what b64decode does)
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what} is not valid base64") from exc


def key_id_of(keytype: str, public: bytes) -> str:
    """TUF key id: SHA-256 of the canonical key object with ``private: null``."""
    body = {"keytype": keytype, "keyval": {"private": None, "public": b64encode(public)}}
    return hashlib.sha256(encode_canonical(body)).hexdigest()


def pem_certificates(certs: list[x509.Certificate]) -> bytes:
    """Certificates as Go writes PEM: 64-column base64 lines, trailing newline."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


@dataclass(frozen=True)
class Key:
    """A public key from a ``keys`` map: ``{"keytype": ..., "keyval": {"public": ...}}``."""

    keytype: str
    public: bytes

    @classmethod
    def from_dict(cls, data: Any) -> Key:
        if not isinstance(data, dict) or not isinstance(data.get("keytype"), str):
            raise FormatError("key must be an object with a string keytype")
        keyval = data.get("keyval")
        if not isinstance(keyval, dict):
            raise FormatError("key must have a keyval object")
        return cls(data["keytype"], b64decode(keyval.get("public"), "keyval.public"))

    @classmethod
    def from_public_key(cls, key: PublicKey) -> Key:
        """Wrap a bare public key (ecdsa/rsa as DER SPKI, ed25519 raw)."""
        if isinstance(key, ed25519.Ed25519PublicKey):
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return cls(ED25519, raw)
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(ECDSA if isinstance(key, ec.EllipticCurvePublicKey) else RSA, der)

    @classmethod
    def from_public_pem(cls, pem: bytes) -> Key:
        """A PEM public key (ecdsa, rsa or ed25519); ValueError if unreadable or another kind."""
        public = serialization.load_pem_public_key(pem)
        if not isinstance(public, PublicKey):
            raise ValueError(f"unsupported {type(public).__name__}")
        return cls.from_public_key(public)

    @classmethod
    def from_certificates(cls, certs: list[x509.Certificate]) -> Key:
        """A certificate key (leaf first, then intermediates), Go-style PEM."""
        leaf_key = certs[0].public_key()
        keytype = ECDSA_X509 if isinstance(leaf_key, ec.EllipticCurvePublicKey) else RSA_X509
        return cls(keytype, pem_certificates(certs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "keytype": self.keytype,
            "keyval": {"private": None, "public": b64encode(self.public)},
        }

    @cached_property
    def key_id(self) -> str:
        return key_id_of(self.keytype, self.public)

    @cached_property
    def canonical_id(self) -> str:
        """Id of the bare key: what private key files and signers are named by."""
        if self.keytype not in X509_TYPES:
            return self.key_id
        return Key.from_public_key(self.public_key()).key_id

    def certificates(self) -> list[x509.Certificate]:
        """The PEM bundle of a certificate key; FormatError if it holds anything else."""
        if self.keytype not in X509_TYPES:
            raise FormatError(f"{self.keytype} key holds no certificate")
        text = self.public
        if text.count(b"-----BEGIN ") != text.count(b"-----BEGIN CERTIFICATE-----"):
            raise FormatError("certificate bundle holds a block that is not a certificate")
        try:
            certs = x509.load_pem_x509_certificates(text)
        except ValueError as exc:
            raise FormatError(f"unreadable certificate: {exc}") from exc
        return certs

    def public_key(self) -> PublicKey:
        """The cryptography public key, loaded once per Key (its fields never change);
        FormatError for unknown or unreadable keys (tried again on every call)."""
        return self._public_key

    @cached_property
    def _public_key(self) -> PublicKey:
        try:
            if self.keytype in X509_TYPES:
                key = self.certificates()[0].public_key()
            elif self.keytype == ED25519:
                return ed25519.Ed25519PublicKey.from_public_bytes(self.public)
            elif self.keytype in (ECDSA, RSA):
                key = serialization.load_der_public_key(self.public)
            else:
                raise FormatError(f"unsupported key type {self.keytype!r}")
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise FormatError(f"unreadable {self.keytype} key: {exc}") from exc
        expected = ec.EllipticCurvePublicKey if "ecdsa" in self.keytype else rsa.RSAPublicKey
        if not isinstance(key, expected):
            raise FormatError(f"{self.keytype} key holds a {type(key).__name__}")
        return key


def check_certificate(
    cert: x509.Certificate, now: datetime | None, *, is_ca: bool | None = None
) -> None:
    """Notary's certificate rules: sane window, no SHA-1, RSA >= 2048, unexpired if ``now``.

    ``now=None`` skips the expiry check (previous roots are not expiry-checked).
    """
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not_before > not_after:
        raise FormatError("certificate validity window is inverted")
    try:
        algorithm = cert.signature_hash_algorithm
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise FormatError(f"unsupported certificate: {exc}") from exc
    if isinstance(algorithm, hashes.SHA1 | hashes.MD5):
        raise FormatError(f"certificate is signed with {algorithm.name}")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise FormatError("certificate RSA key is shorter than 2048 bits")
    if now is not None:
        if now > not_after:
            raise FormatError("certificate has expired")
        if not_before > now + timedelta(days=1):
            raise FormatError("certificate is not valid yet")
    if is_ca is not None and certificate_is_ca(cert) != is_ca:
        raise FormatError("unexpected CA flag on certificate")


def certificate_is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


_KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def key_usage(*bits: str) -> x509.KeyUsage:
    """A KeyUsage extension with exactly the named bits (``"digital_signature"``...) set."""
    unknown = set(bits) - set(_KEY_USAGE_BITS)
    if unknown:
        raise ValueError(f"unknown key usage bits: {', '.join(sorted(unknown))}")
    return x509.KeyUsage(**{bit: bit in bits for bit in _KEY_USAGE_BITS})


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def may_issue(issuer: x509.Certificate, below: int) -> bool:
    """Whether ``issuer`` may sign a certificate that has ``below`` CA certificates under it
    in the chain (0: the leaf itself): a CA by basic constraints, with keyCertSign if it states
    key usage, and a path length constraint (if any) of at least ``below``."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    usage = _key_usage(issuer)
    return (
        constraints.ca
        and (usage is None or usage.key_cert_sign)
        and (constraints.path_length is None or constraints.path_length >= below)
    )


def may_sign_data(cert: x509.Certificate) -> bool:
    """Whether a leaf may sign data: digitalSignature if it states key usage (RFC 5280: no key
    usage extension means no restriction)."""
    usage = _key_usage(cert)
    return usage is None or usage.digital_signature


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if ``issuer`` names and signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def common_name(cert: x509.Certificate) -> str:
    with warnings.catch_warnings():  # GUNs longer than X.520's 64 characters are fine here
        warnings.simplefilter("ignore", UserWarning)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def cn_matches_gun(cn: str, gun: str) -> bool:
    """The CN equals the GUN, or is a prefix ending in ``*`` that the GUN starts with."""
    if cn.endswith("*"):
        return gun.startswith(cn.rstrip("*"))
    return cn == gun


def root_certificate_key(key: Key, gun: str, now: datetime | None) -> Key | None:
    """The key a root signature must come from, rebuilt from a root key's certificates.

    Returns None when the key is not a usable root certificate for ``gun``: leaf first and
    not a CA, CN matching the GUN, passing ``check_certificate``. Intermediates that fail the
    checks are dropped, so the rebuilt key id differs and signatures by it do not count.
    """
    try:
        certs = key.certificates()
        leaf, intermediates = certs[0], certs[1:]
        check_certificate(leaf, now, is_ca=False)
    except (FormatError, IndexError, ValueError, UnsupportedAlgorithm):
        return None
    if not cn_matches_gun(common_name(leaf), gun):
        return None
    kept = [leaf]
    for cert in intermediates:
        try:
            check_certificate(cert, now or datetime.now(UTC), is_ca=True)
        except (FormatError, ValueError, UnsupportedAlgorithm):
            continue
        kept.append(cert)
    return Key.from_certificates(kept)
