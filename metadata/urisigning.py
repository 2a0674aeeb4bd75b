"""Signing with keys that live in a token or key manager, named by securesystemslib key URIs.

``hsm:`` (PKCS#11; the module is named by ``PYKCS11LIB``), ``awskms:``, ``gcpkms:``,
``azurekms:``, ``hv:`` (HashiCorp Vault). Whatever form a backend signs in, a signature comes
out in notary's wire form (ECDSA raw r||s) and is verified against the key's public key before
it is used. Used by the client (publishers' keys) and the server (its online keys) alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlparse

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tufnotary.metadata.keys import Key
from tufnotary.metadata.signing import Signature, verify_signature, wire_signature

PKCS11_MODULE_ENV = "PYKCS11LIB"
BACKENDS = {
    "hsm": "PKCS#11 token",
    "awskms": "AWS KMS",
    "gcpkms": "Google Cloud KMS",
    "azurekms": "Azure Key Vault",
    "hv": "HashiCorp Vault",
}

SecretsHandler = Callable[[str], str]
"""Asked for a secret a backend needs (``"pin"`` for a PKCS#11 token); returns it."""


class UriSigningError(Exception):
    """A key behind a URI cannot sign as it should."""


class UnsupportedKey(UriSigningError):
    """The key is of a kind notary cannot verify (or not ECDSA P-256, Ed25519 or RSA)."""


class SignerFailure(UriSigningError):
    """The backend did not sign (module, token, PIN, key, network...)."""


class SignerMismatch(UriSigningError):
    """The backend signed, but not as the key's public key says."""


class UriSigner:
    """A :class:`~tufnotary.metadata.signing.Signer` for the key behind ``uri``."""

    def __init__(
        self,
        uri: str,
        public: Key,
        secrets: SecretsHandler,
        failure: Callable[[UriSigningError], Exception] | None = None,
    ) -> None:
        self.uri = uri
        self.public = public
        self._secrets = secrets
        self._failure = failure
        self._refused: Exception | None = None
        self._backend: Any = None

    def _secret(self, name: str) -> str:
        try:
            return self._secrets(name)
        except Exception as exc:
            self._refused = exc
            raise

    def sign(self, message: bytes, keyid: str | None = None) -> Signature:
        """Sign through the backend; the result is in wire form and verified. A failure is a
        UriSigningError, or what ``failure`` makes of it; what ``secrets`` raises passes
        through unchanged."""
        try:
            return self._sign(message, keyid)
        except UriSigningError as exc:
            if self._failure is None:
                raise
            raise self._failure(exc) from exc.__cause__

    def _sign(self, message: bytes, keyid: str | None) -> Signature:
        keyid = keyid or self.public.key_id
        public = backend_key(self.public)
        self._refused = None
        try:
            if self._backend is None:
                from securesystemslib.signer import Signer as BackendSigner

                self._backend = BackendSigner.from_priv_key_uri(self.uri, public, self._secret)
            value = bytes.fromhex(self._backend.sign(message).signature)
            signature = wire_signature(self.public, keyid, value)
        except Exception as exc:  # each backend raises its own kinds
            if self._refused is not None:
                raise self._refused from None
            raise SignerFailure(f"{self.uri} did not sign: {describe(exc)}") from exc
        if not verify_signature(self.public, signature, message):
            raise SignerMismatch(f"{self.uri} signs as another key than {keyid}")
        return signature


def hsm_public_key(uri: str, secrets: SecretsHandler) -> Key:
    """The public key of the key behind the ``hsm:`` URI, read from its token (ECDSA only).
    What ``secrets`` raises passes through unchanged."""
    parsed = urlparse(uri)
    refused: list[Exception] = []

    def secret(name: str) -> str:
        try:
            return secrets(name)
        except Exception as exc:
            refused.append(exc)
            raise

    try:
        from securesystemslib.signer import HSMSigner

        hsm_keyid = int(parsed.path) if parsed.path else HSMSigner.SCHEME_KEYID
        label = dict(parse_qsl(parsed.query)).get("label")
        _, found = HSMSigner.import_(hsm_keyid, label, secret)
        crypto = serialization.load_pem_public_key(found.keyval["public"].encode())
    except Exception as exc:  # python-pkcs11 and PyKCS11 raise their own kinds
        if refused:
            raise refused[0] from None
        raise SignerFailure(f"cannot read the public key of {uri}: {describe(exc)}") from exc
    if not isinstance(crypto, ec.EllipticCurvePublicKey):
        raise UnsupportedKey(f"{uri} is not an ECDSA key")
    return Key.from_public_key(crypto)


def backend_key(public: Key) -> Any:
    """The securesystemslib public key for ``public``, with the one scheme that signs as
    notary verifies (SHA-256 throughout)."""
    from securesystemslib.signer import SSlibKey

    crypto = public.public_key()
    if isinstance(crypto, ec.EllipticCurvePublicKey):
        if crypto.curve.name != "secp256r1":
            raise UnsupportedKey(f"ECDSA keys must be P-256, not {crypto.curve.name}")
        scheme = "ecdsa-sha2-nistp256"
    elif isinstance(crypto, rsa.RSAPublicKey):
        scheme = "rsassa-pss-sha256"
    elif isinstance(crypto, ed25519.Ed25519PublicKey):
        scheme = "ed25519"
    else:
        raise UnsupportedKey(f"unsupported {public.keytype} key")
    return SSlibKey.from_crypto(crypto, scheme=scheme)


def describe(exc: Exception) -> str:
    """A backend's exception as text: its message, else its name (python-pkcs11's
    ``PinIncorrect`` has no message)."""
    return str(exc) or type(exc).__name__
