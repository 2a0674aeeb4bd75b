"""Server-held timestamp and snapshot keys: create, rotate, sign; encrypted at rest, or in a
PKCS#11 token (:mod:`tufnotary.server.keybackend`).

Private keys in the database are stored as AES-256-GCM ciphertexts under a key derived
(scrypt, per-key salt) from the master passphrase; the key's id, GUN and role are bound as
associated data, so a row copied onto another GUN does not decrypt.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tufnotary.metadata.canonical import encode_canonical, wire_bytes
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import Root, Signed
from tufnotary.metadata.signing import PrivateKey, Signature, Signer
from tufnotary.server.keybackend import PROBE, Pkcs11Token, uri_signer
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.keys import ServerKeyStore, StoredKey

log = logging.getLogger(__name__)

_FORMAT = b"\x01"
_SALT, _NONCE = 16, 12
DEV_MASTER_KEY = "master.key"


class KeyDecryptionError(Exception):
    """A stored private key does not decrypt with the configured passphrase."""


class KeyVault:
    """Encrypts private keys with a passphrase (AES-256-GCM, scrypt-derived key)."""

    def __init__(self, passphrase: bytes, development_key: Path | None = None) -> None:
        if not passphrase:
            raise ValueError("the key passphrase is empty")
        self._passphrase = passphrase
        self.development_key = development_key
        """The generated file the passphrase came from, when none was configured."""

    @classmethod
    def from_settings(
        cls, passphrase: str | None, passphrase_file: Path | None, data_dir: Path
    ) -> KeyVault:
        """Passphrase from the setting, else its file, else a generated dev key in data_dir."""
        if passphrase:
            return cls(passphrase.encode())
        if passphrase_file:
            return cls.from_file(passphrase_file)
        path = data_dir / DEV_MASTER_KEY
        if not path.exists():
            # Several workers may start at once: write aside, then link atomically.
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            draft = data_dir / f".{DEV_MASTER_KEY}.{os.getpid()}"
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
            with suppress(FileExistsError):
                os.link(draft, path)
            draft.unlink()
        return cls(path.read_bytes().strip(), development_key=path)

    @classmethod
    def from_file(cls, path: Path) -> KeyVault:
        """The passphrase in ``path`` (surrounding white space ignored)."""
        return cls(path.read_bytes().strip())

    def warn_if_development(self) -> None:
        """Log that the generated development key is in use (once per process that serves)."""
        if self.development_key is not None:
            log.warning(
                "no key passphrase configured: server keys are encrypted with the generated key "
                "in %s; set TUFNOTARY_KEY_PASSPHRASE or TUFNOTARY_KEY_PASSPHRASE_FILE in "
                "production (see `tufnotary-server rekey`)",
                self.development_key,
            )

    def _aead(self, salt: bytes) -> AESGCM:
        return AESGCM(Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(self._passphrase))

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
        return _FORMAT + salt + nonce + self._aead(salt).encrypt(nonce, plaintext, context)

    def decrypt(self, blob: bytes, context: bytes) -> bytes:
        if blob[:1] != _FORMAT:
            raise KeyDecryptionError("unknown private key format")
        salt, nonce = blob[1 : 1 + _SALT], blob[1 + _SALT : 1 + _SALT + _NONCE]
        try:
            return self._aead(salt).decrypt(nonce, blob[1 + _SALT + _NONCE :], context)
        except InvalidTag as exc:
            raise KeyDecryptionError("wrong passphrase or tampered key") from exc


def _context(key_id: str, gun: str, role: str) -> bytes:
    return f"{key_id}\0{gun}\0{role}".encode()


def sealed_key(
    vault: KeyVault,
    private: PrivateKey,
    gun: str,
    role: str,
    created_at: datetime,
    last_used: datetime | None = None,
) -> StoredKey:
    """``private`` as the StoredKey of ``gun``'s ``role``, its private part (PKCS#8) encrypted
    by ``vault`` and bound to its key id, GUN and role."""
    key_id = private.public.key_id
    blob = vault.encrypt(private.to_pkcs8(), _context(key_id, gun, role))
    public = private.public.public
    return StoredKey(key_id, gun, role, private.algorithm, public, blob, created_at, last_used)


def _decrypt(vault: KeyVault, key: StoredKey) -> bytes:
    if key.private is None:
        raise KeyDecryptionError(f"{key.role} key {key.key_id} has no private part")
    try:
        return vault.decrypt(key.private, _context(key.key_id, key.gun, key.role))
    except KeyDecryptionError as exc:
        raise KeyDecryptionError(f"{key.role} key {key.key_id}: {exc}") from exc


def check_keys(store: ServerKeyStore, vault: KeyVault, token: Pkcs11Token | None = None) -> None:
    """KeyDecryptionError unless the newest stored key of each kind (timestamp, snapshot,
    token-signing) decrypts with ``vault``; KeyBackendError unless such a key that lives in a
    token or key manager signs there."""
    for key in store.newest_keys():
        if key.uri is None:
            _decrypt(vault, key)
        else:
            external_signer(key, token).sign(PROBE)


def external_signer(key: StoredKey, token: Pkcs11Token | None) -> Signer:
    """The signer of a stored key that lives in a token or key manager (``key.uri``)."""
    assert key.uri is not None
    public = Key(key.algorithm, key.public)
    return token.signer(key.uri, public) if token else uri_signer(key.uri, public, None)


def rekey(store: ServerKeyStore, old: KeyVault, new: KeyVault, *, actor: str = "cli") -> int:
    """Re-encrypt every stored key (server and token-signing keys) from ``old`` to ``new`` in
    one audited transaction; nothing changes if one of them does not decrypt. Returns the
    number of keys."""

    def reencrypt(key: StoredKey) -> bytes:
        return new.encrypt(_decrypt(old, key), _context(key.key_id, key.gun, key.role))

    return store.replace_private_keys(reencrypt, AuditEntry(actor, "keys-rekey", None, {}))


@dataclass(frozen=True)
class HeldKey:
    """A server key able to sign, with the id metadata lists it under."""

    key_id: str
    private: Signer


@dataclass(frozen=True)
class ServedKey:
    """A key handed out on ``role.key``: when it was made (or registered), and whether it
    was made now."""

    key: Key
    created_at: datetime
    new: bool = False


class NoRegisteredKey(LookupError):
    """key_backend 'uri': no key registered for the GUN's role is left to hand out."""


class ServerKeys:
    """The timestamp and snapshot keys the server holds for each GUN."""

    def __init__(
        self,
        store: ServerKeyStore,
        vault: KeyVault,
        algorithm: str,
        token: Pkcs11Token | None = None,
        backend: str = "database",
    ) -> None:
        self._store = store
        self._vault = vault
        self._algorithm = algorithm
        self._token = token  # signs hsm: keys; new keys are made in it with backend pkcs11
        self._backend = backend
        # Decrypted keys (scrypt makes each decryption cost tens of ms), by (key id, GUN,
        # role): a key stored for one GUN and role never signs for another. Rotation makes a
        # new key id; a passphrase change (rekey) leaves the keys themselves unchanged.
        self._cache: dict[tuple[str, str, str], Signer] = {}
        self._used: set[str] = set()

    def _create(self, gun: str, role: str, gate: Callable[[], None]) -> ServedKey:
        """A key for ``role`` that never signed: one registered or created earlier, else a new
        one once ``gate`` (which may raise to refuse) returned; NoRegisteredKey if the backend
        makes none ('uri')."""
        unused = self._store.unused_key(gun, role, self._algorithm)
        if unused is not None:
            return ServedKey(Key(unused.algorithm, unused.public), unused.created_at)
        if self._backend == "uri":
            raise NoRegisteredKey(
                f"no unused {role} key is registered for {gun} (key_backend 'uri'): register "
                f"one with `tufnotary-server key add --gun {gun} --role {role} --uri URI`"
            )
        gate()
        now = datetime.now(UTC)
        if self._backend == "pkcs11":
            assert self._token is not None
            public, uri = self._token.create(gun, role)
            self._store.add_key(
                StoredKey(
                    public.key_id, gun, role, public.keytype, public.public, None, now, None, uri
                )
            )
            return ServedKey(public, now, new=True)
        private = PrivateKey.generate(self._algorithm)
        self._store.add_key(sealed_key(self._vault, private, gun, role, now))
        self._cache[private.public.key_id, gun, role] = private
        return ServedKey(private.public, now, new=True)

    def _stored(self, gun: str, role: str, key_id: str) -> StoredKey | None:
        stored = self._store.get_key(key_id)
        return stored if stored and stored.gun == gun and stored.role == role else None

    def get_or_create(
        self, gun: str, role: str, root: Root | None, gate: Callable[[], None] = lambda: None
    ) -> ServedKey:
        """GET ``role.key``: the key current root lists for ``role`` if held, else a key that
        never signed (``gate`` is called before one is made)."""
        if root is not None and role in root.roles:
            for key_id in root.roles[role].keyids:
                stored = self._stored(gun, role, key_id)
                if stored is not None:
                    return ServedKey(root.keys[key_id], stored.created_at)
        return self._create(gun, role, gate)

    def rotate(self, gun: str, role: str, gate: Callable[[], None] = lambda: None) -> ServedKey:
        """POST ``role.key``: a key the client can list in its next root."""
        return self._create(gun, role, gate)

    def held(self, gun: str, role: str, root: Root) -> list[HeldKey]:
        """The keys root lists for ``role`` that this server can sign with."""
        held = []
        for key_id in root.roles[role].keyids if role in root.roles else []:
            private = self._cache.get((key_id, gun, role))
            if private is None:
                stored = self._stored(gun, role, key_id)
                if stored is None:
                    continue
                loaded = (
                    external_signer(stored, self._token)
                    if stored.uri is not None
                    else PrivateKey.from_pkcs8(_decrypt(self._vault, stored))
                )
                private = self._cache.setdefault((key_id, gun, role), loaded)
            held.append(HeldKey(key_id, private))
        return held

    def can_sign(self, gun: str, role: str, root: Root) -> bool:
        return len(self.held(gun, role, root)) >= root.roles[role].threshold

    def sign(self, gun: str, role: str, root: Root, signed: Signed) -> bytes | None:
        """Wire bytes of ``signed`` signed by the held keys, or None below the threshold."""
        keys = self.held(gun, role, root)
        if len(keys) < root.roles[role].threshold:
            return None
        message = encode_canonical(signed.to_dict())  # encoded once for every key and the wire
        signatures: dict[str, Signature] = {}
        for key in keys:
            signature = key.private.sign(message, key.key_id)
            signatures.pop(signature.keyid, None)  # a key root lists twice: its last signature
            signatures[signature.keyid] = signature
            if key.key_id not in self._used:
                self._store.mark_key_used(key.key_id)
                self._used.add(key.key_id)
        return wire_bytes(message, [signature.to_dict() for signature in signatures.values()])
