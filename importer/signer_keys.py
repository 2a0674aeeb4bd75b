"""notary-signer's private keys (spec 5.2): each row's key is a JWE compact serialization
(PBES2-HS256+A128KW, A256GCM) under the passphrase of its alias, which notary-signer reads from
the environment variable ``NOTARY_SIGNER_<ALIAS>``; the plaintext is SEC1 DER for ECDSA and
public || seed || public (96 bytes) for Ed25519."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwcrypto import jwe, jwk
from jwcrypto.common import JWException

from tufnotary.metadata.keys import ECDSA, ED25519
from tufnotary.metadata.signing import PrivateKey

KEY_WRAP, ENCRYPTION = "PBES2-HS256+A128KW", "A256GCM"
PASSPHRASE_ENV_PREFIX = "NOTARY_SIGNER_"
_ED25519_SIZE = 32


class SignerKeyError(Exception):
    """A notary-signer key cannot be recovered: no passphrase, a wrong one, or a bad key."""


@dataclass(frozen=True)
class SignerKey:
    """A live row of notary-signer's ``private_keys``; ``private`` is the JWE string."""

    key_id: str
    gun: str
    role: str
    algorithm: str
    public: bytes
    private: str
    passphrase_alias: str
    created_at: datetime | None
    last_used: datetime | None


def passphrase_variable(alias: str) -> str:
    """The environment variable notary-signer reads the passphrase of ``alias`` from."""
    return PASSPHRASE_ENV_PREFIX + alias.upper()


def passphrases_for(
    keys: Iterable[SignerKey], given: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The passphrase of each alias the keys use: ``given`` first, else notary-signer's
    environment variable; SignerKeyError naming the first alias with neither."""
    found: dict[str, str] = {}
    for alias in sorted({key.passphrase_alias for key in keys}):
        passphrase = given.get(alias) or environ.get(passphrase_variable(alias))
        if not passphrase:
            raise SignerKeyError(
                f"no passphrase for notary-signer alias {alias!r}: pass --signer-passphrase "
                f"{alias}=SECRET or set {passphrase_variable(alias)}"
            )
        found[alias] = passphrase
    return found


def decrypt_key(key: SignerKey, passphrase: str) -> PrivateKey:
    """The private key of ``key``, checked to match its public part and key id."""
    what = f"notary-signer {key.role} key {key.key_id} of {key.gun}"
    token = jwe.JWE()
    token.allowed_algs = [KEY_WRAP, ENCRYPTION]
    try:
        token.deserialize(key.private, key=jwk.JWK.from_password(passphrase))
    except (JWException, ValueError) as exc:
        raise SignerKeyError(
            f"{what} does not decrypt with the passphrase of alias {key.passphrase_alias!r} "
            f"(--signer-passphrase or {passphrase_variable(key.passphrase_alias)}): {exc}"
        ) from None
    private = _private_key(key.algorithm, token.payload, what)
    if private.public.public != key.public or private.public.key_id != key.key_id:
        raise SignerKeyError(f"{what}: the decrypted key does not match its public key or id")
    return private


def _private_key(algorithm: str, plaintext: bytes, what: str) -> PrivateKey:
    try:
        if algorithm == ECDSA:
            loaded = serialization.load_der_private_key(plaintext, None)
            if isinstance(loaded, ec.EllipticCurvePrivateKey):
                return PrivateKey(loaded)
        elif algorithm == ED25519 and len(plaintext) == 3 * _ED25519_SIZE:
            seed = plaintext[_ED25519_SIZE : 2 * _ED25519_SIZE]
            return PrivateKey(ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    except ValueError as exc:
        raise SignerKeyError(f"{what}: unreadable {algorithm} key: {exc}") from None
    raise SignerKeyError(f"{what}: unsupported algorithm {algorithm!r} or key format")
