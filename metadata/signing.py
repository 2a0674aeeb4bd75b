"""Signatures as Notary makes them: ECDSA raw r||s, RSA-PSS salt 32, Ed25519 (spec 3.9)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from tufnotary.metadata.errors import FormatError
from tufnotary.metadata.keys import ECDSA, ED25519, MIN_RSA_BITS, RSA, Key, b64decode, b64encode

ECDSA_METHOD = "ecdsa"
RSAPSS_METHOD = "rsapss"
EDDSA_METHOD = "eddsa"
RSA_PKCS1_METHOD = "rsapkcs1v15"
PSS_SALT_LENGTH = 32


@dataclass(frozen=True)
class Signature:
    """One entry of a document's ``signatures`` list."""

    keyid: str
    method: str
    value: bytes

    @classmethod
    def from_dict(cls, data: Any) -> Signature:
        if not isinstance(data, dict):
            raise FormatError("signature must be an object")
        keyid, method = data.get("keyid"), data.get("method")
        if not isinstance(keyid, str) or not isinstance(method, str):
            raise FormatError("signature keyid and method must be strings")
        return cls(keyid, method.lower(), b64decode(data.get("sig"), "signature sig"))

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "method": self.method, "sig": b64encode(self.value)}


class Message:
    """Bytes to verify signatures over, hashed once however many signatures are checked:
    ECDSA and RSA verify the SHA-256 digest; Ed25519 needs the bytes themselves."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @cached_property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()


def _curve_bytes(key_size: int) -> int:
    """Bytes of one ECDSA signature half (r or s) for a curve of ``key_size`` bits."""
    return (key_size + 7) // 8


_PREHASHED = Prehashed(hashes.SHA256())
_ECDSA_PREHASHED = ec.ECDSA(_PREHASHED)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
_RSA_PADDINGS: dict[str, padding.AsymmetricPadding] = {
    RSAPSS_METHOD: _PSS,
    RSA_PKCS1_METHOD: padding.PKCS1v15(),
}


def verify_signature(key: Key, signature: Signature, message: bytes | Message) -> bool:
    """True if ``signature`` is a valid signature of ``message`` by ``key``.

    Unknown key types and methods, unreadable keys and wrong signature sizes are simply
    invalid, so they never count towards a threshold.
    """
    try:
        public = key.public_key()
    except FormatError:
        return False
    message = message if isinstance(message, Message) else Message(message)
    value = signature.value
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            if signature.method != ECDSA_METHOD or len(value) != 2 * _curve_bytes(public.key_size):
                return False
            public.verify(der_ecdsa(signature), message.sha256, _ECDSA_PREHASHED)
        elif isinstance(public, rsa.RSAPublicKey):
            if public.key_size < MIN_RSA_BITS or len(value) < MIN_RSA_BITS // 8:
                return False
            scheme = _RSA_PADDINGS.get(signature.method)
            if scheme is None:
                return False
            public.verify(value, message.sha256, scheme, _PREHASHED)
        else:
            if signature.method != EDDSA_METHOD or len(value) != 64:
                return False
            public.verify(value, message.data)
    except (InvalidSignature, ValueError):
        return False
    return True


PrivateKeyType = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class PrivateKey:
    """A private key that signs the way Notary verifies; ``public`` is its bare public key."""

    def __init__(self, key: PrivateKeyType) -> None:
        self._key = key
        self.public = Key.from_public_key(key.public_key())

    @classmethod
    def generate(cls, algorithm: str = ECDSA) -> PrivateKey:
        if algorithm == ECDSA:
            return cls(ec.generate_private_key(ec.SECP256R1()))
        if algorithm == ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate())
        if algorithm == RSA:
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=3072))
        raise ValueError(f"unsupported key algorithm {algorithm!r}")

    @classmethod
    def from_pkcs8(cls, der: bytes, password: bytes | None = None) -> PrivateKey:
        key = serialization.load_der_private_key(der, password)
        if not isinstance(key, PrivateKeyType):
            raise FormatError(f"unsupported private key {type(key).__name__}")
        return cls(key)

    def to_pkcs8(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def crypto_key(self) -> PrivateKeyType:
        return self._key

    @property
    def algorithm(self) -> str:
        return self.public.keytype

    def sign(self, message: bytes, keyid: str | None = None) -> Signature:
        """Sign ``message``; ``keyid`` overrides the id (certificate keys sign as the cert)."""
        keyid = keyid or self.public.key_id
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            der = key.sign(message, ec.ECDSA(hashes.SHA256()))
            return Signature(keyid, ECDSA_METHOD, _raw_ecdsa(der, key.curve))
        if isinstance(key, rsa.RSAPrivateKey):
            return Signature(keyid, RSAPSS_METHOD, key.sign(message, _PSS, hashes.SHA256()))
        return Signature(keyid, EDDSA_METHOD, key.sign(message))


class Signer(Protocol):
    """Anything that signs as Notary verifies: a :class:`PrivateKey`, or a key in a token or
    key manager behind an adapter that returns signatures in wire form."""

    @property
    def public(self) -> Key: ...

    def sign(self, message: bytes, keyid: str | None = None) -> Signature: ...


def wire_signature(key: Key, keyid: str, value: bytes) -> Signature:
    """A signature in the form of X.509 and securesystemslib (ECDSA as DER; RSA-PSS with
    SHA-256 and Ed25519 as they are) in Notary's wire form (ECDSA raw r||s); FormatError if
    an ECDSA value is not DER."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return Signature(keyid, ECDSA_METHOD, _raw_ecdsa(value, public.curve))
    if isinstance(public, rsa.RSAPublicKey):
        return Signature(keyid, RSAPSS_METHOD, value)
    return Signature(keyid, EDDSA_METHOD, value)


def der_ecdsa(signature: Signature) -> bytes:
    """An ECDSA wire signature (raw r||s) as DER, the form X.509 certificates hold."""
    size = len(signature.value) // 2
    r, s = signature.value[:size], signature.value[size:]
    return encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))


def _raw_ecdsa(der: bytes, curve: ec.EllipticCurve) -> bytes:
    """A DER ECDSA signature as raw r||s, each padded to the curve's size."""
    try:
        r, s = decode_dss_signature(der)
    except ValueError as exc:
        raise FormatError("ECDSA signature is not DER") from exc
    size = _curve_bytes(curve.key_size)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")
