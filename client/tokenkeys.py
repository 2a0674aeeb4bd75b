"""Keys that live in a token or key manager, used through securesystemslib's Signer API.

The trust directory holds only a reference for each such key, never a secret::

    token_keys/<key id>.json    {"key_id", "role", "gun", "uri", "public_key", "created"}

``key_id`` is notary's id of the bare public key (``public_key``: its base64 DER SPKI, or raw
ed25519), ``uri`` a securesystemslib private key URI: ``hsm:`` (PKCS#11; the module is named
by ``PYKCS11LIB``), ``awskms:``, ``gcpkms:``, ``azurekms:``, ``hv:`` (HashiCorp Vault). The
token's PIN comes from ``TUFNOTARY_PKCS11_PIN`` or a terminal prompt. Whatever form a backend
signs in, signatures come out in notary's wire form and are verified against the registered
public key before they are used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tufnotary.client.errors import ClientError
from tufnotary.client.fileio import atomic_write
from tufnotary.metadata.errors import FormatError
from tufnotary.metadata.keys import Key, b64decode, b64encode
from tufnotary.metadata.urisigning import (
    BACKENDS,
    PKCS11_MODULE_ENV,
    SecretsHandler,
    SignerMismatch,
    UnsupportedKey,
    UriSigner,
    UriSigningError,
    backend_key,
    hsm_public_key,
)

TOKEN_KEYS_DIR = "token_keys"
PIN_ENV = "TUFNOTARY_PKCS11_PIN"
HSM = "hsm"
_PROBE = b"tufnotary: does this key sign as its public key says?"


class TokenKeyError(ClientError):
    """Base of the errors of keys in a token or key manager."""


class UnsupportedKeyURI(TokenKeyError):
    """The URI names no backend this client signs with, or the key is of a kind notary
    cannot verify (securesystemslib scheme other than ECDSA P-256, Ed25519, RSA-PSS)."""

    hint = "{error}; key URIs start with " + ", ".join(f"{s}:" for s in BACKENDS)


class PublicKeyNeeded(TokenKeyError):
    """A key manager's public key is not read from it: the user gives it."""

    hint = "{error}: export it from the key manager (PEM) and give it with --public-key FILE"


class PinRequired(TokenKeyError):
    """No PIN: no prompt, and the environment variable is not set."""

    hint = "{error} (or run {prog} in a terminal to be asked for it)"


class TokenFailure(TokenKeyError):
    """The token or key manager did not sign or answer (absent, wrong PIN, no access...)."""

    hint = (
        "{error}: check that the token is present and " + PKCS11_MODULE_ENV + " names its "
        "PKCS#11 module, the PIN (" + PIN_ENV + "), or the key manager's credentials"
    )


class TokenKeyMismatch(TokenKeyError):
    """The key behind the URI signs, but not as the registered public key."""

    hint = "{error}: the URI names another key; `{prog} key import --uri` the right one"


class NotExportable(TokenKeyError):
    """Export of a key whose private half never leaves its token."""


class Pins:
    """The secrets a backend asks for (a PKCS#11 PIN): the environment, else a prompt; each
    is asked for once per run."""

    def __init__(
        self, env: Mapping[str, str] | None = None, prompt: SecretsHandler | None = None
    ) -> None:
        self._env = os.environ if env is None else env
        self._prompt = prompt
        self._known: dict[str, str] = {}

    def __call__(self, secret: str) -> str:
        if secret not in self._known:
            value = self._env.get(PIN_ENV, "") if secret == "pin" else ""
            if not value and self._prompt is not None:
                value = self._prompt(secret)
            if not value:
                raise PinRequired(f"the token's {secret} is needed: set {PIN_ENV}")
            self._known[secret] = value
        return self._known[secret]


@dataclass(frozen=True)
class KeyRecord:
    """A key in a token or key manager as the trust directory references it."""

    key_id: str
    role: str
    gun: str | None
    uri: str
    public: Key
    created: datetime

    @property
    def backend(self) -> str:
        return BACKENDS[self.uri.partition(":")[0]]

    def to_json(self) -> bytes:
        data = {
            "key_id": self.key_id,
            "role": self.role,
            "gun": self.gun,
            "uri": self.uri,
            "keytype": self.public.keytype,
            "public_key": b64encode(self.public.public),
            "created": self.created.isoformat(),
        }
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> KeyRecord:
        """FormatError if ``data`` is not a key record or its id is not its key's."""
        try:
            raw: dict[str, Any] = json.loads(data)
            public = Key(raw["keytype"], b64decode(raw["public_key"], "public_key"))
            record = cls(
                raw["key_id"],
                raw["role"],
                raw.get("gun"),
                raw["uri"],
                public,
                datetime.fromisoformat(raw["created"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"not a key record: {exc}") from exc
        if record.key_id != public.key_id or record.uri.partition(":")[0] not in BACKENDS:
            raise FormatError("key record does not match its key")
        return record


class TokenKey(UriSigner):
    """A :class:`~tufnotary.metadata.signing.Signer` for a key in a token or key manager; its
    failures are TokenKeyErrors."""

    def __init__(self, record: KeyRecord, secrets: SecretsHandler) -> None:
        super().__init__(record.uri, record.public, secrets, failure=_client_error)
        self.record = record


class TokenKeys:
    """The key records of a trust directory (``token_keys/``)."""

    def __init__(self, directory: Path, secrets: SecretsHandler) -> None:
        self.directory = directory
        self.secrets = secrets

    def add(self, record: KeyRecord) -> Path:
        path = self.path(record.key_id)
        atomic_write(path, record.to_json())
        return path

    def path(self, key_id: str) -> Path:
        return self.directory / f"{key_id}.json"

    def get(self, key_id: str) -> KeyRecord | None:
        try:
            record = KeyRecord.from_json(self.path(key_id).read_bytes())
        except (OSError, FormatError):
            return None
        return record if record.key_id == key_id else None

    def records(self) -> list[KeyRecord]:
        """Every readable record, by key id."""
        paths = sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []
        found = (self.get(path.stem) for path in paths)
        return [record for record in found if record is not None]

    def signer(self, key_id: str) -> TokenKey | None:
        record = self.get(key_id)
        return TokenKey(record, self.secrets) if record else None

    def remove(self, key_id: str) -> bool:
        try:
            self.path(key_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def register(self, uri: str, role: str, gun: str | None, public: Key | None) -> KeyRecord:
        """Reference the key behind ``uri`` (public key read from a PKCS#11 token, else
        ``public``), after checking it signs as that public key; return its record."""
        scheme = uri.partition(":")[0]
        if scheme not in BACKENDS:
            raise UnsupportedKeyURI(f"unsupported key URI {uri!r}")
        if public is None:
            if scheme != HSM:
                raise PublicKeyNeeded(f"the public key of {uri} is needed")
            public = self._token_public_key(uri)
        _backend_key(public)  # UnsupportedKeyURI for kinds notary cannot verify
        record = KeyRecord(public.key_id, role, gun, uri, public, datetime.now(UTC))
        TokenKey(record, self.secrets).sign(_PROBE)
        self.add(record)
        return record

    def _token_public_key(self, uri: str) -> Key:
        """The public key of the ``hsm:`` URI's key, read from the token."""
        try:
            return hsm_public_key(uri, self.secrets)
        except UriSigningError as exc:
            raise _client_error(exc) from exc.__cause__


def _backend_key(public: Key) -> Any:
    """securesystemslib's public key for ``public``; UnsupportedKeyURI for kinds notary cannot
    verify."""
    try:
        return backend_key(public)
    except UnsupportedKey as exc:
        raise UnsupportedKeyURI(str(exc)) from None


def _client_error(exc: UriSigningError) -> TokenKeyError:
    """The client's kind of a signing failure (same message)."""
    if isinstance(exc, UnsupportedKey):
        return UnsupportedKeyURI(str(exc))
    if isinstance(exc, SignerMismatch):
        return TokenKeyMismatch(str(exc))
    return TokenFailure(str(exc))
