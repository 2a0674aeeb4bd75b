"""Keys an operator registers for the server (`tufnotary-server key add`): timestamp and
snapshot keys held in a PKCS#11 token or a cloud key manager, named by a securesystemslib key
URI. The database keeps the public key and the URI; the key is handed out at the next rotation
of its GUN's role (``POST {role}.key``), before any key is made.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tufnotary.metadata.errors import MetadataError
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import ROOT, SNAPSHOT, TIMESTAMP, Metadata, Root
from tufnotary.metadata.urisigning import BACKENDS, UnsupportedKey, backend_key
from tufnotary.server.errors import InvalidGun
from tufnotary.server.keybackend import PROBE, Pkcs11Token
from tufnotary.server.names import check_gun
from tufnotary.server.signer import external_signer
from tufnotary.server.storage import Stores
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.keys import StoredKey

SERVER_ROLES = (SNAPSHOT, TIMESTAMP)
SCHEMES = {**BACKENDS, "file2": "private key file (for tests)"}
"""Key URI schemes a registered key may have, and what each names."""
HSM = "hsm"


class RegistryError(Exception):
    """A key cannot be registered or removed; the message says why and what to do."""


def register(
    stores: Stores,
    gun: str,
    role: str,
    uri: str,
    public: Key | None,
    token: Pkcs11Token | None,
    *,
    actor: str = "cli",
) -> StoredKey:
    """Register the key behind ``uri`` for ``gun``'s ``role`` (public key read from the token
    for ``hsm:`` URIs, else ``public``) once it signed as that public key; audited.
    KeyBackendError if the backend cannot be used."""
    try:
        check_gun(gun)
    except InvalidGun as exc:
        raise RegistryError(f"{gun!a}: {exc.detail}") from None
    scheme = uri.partition(":")[0]
    if scheme not in SCHEMES:
        raise RegistryError(f"unsupported key URI {uri!r}: use one of {', '.join(SCHEMES)}")
    if role not in SERVER_ROLES:
        raise RegistryError(f"the server holds only {' and '.join(SERVER_ROLES)} keys, not {role}")
    if public is None:
        if scheme != HSM or token is None:
            raise RegistryError(
                f"the public key of {uri} is needed: give --public-key"
                + (" or the pkcs11_* settings" if scheme == HSM else "")
            )
        public = token.public_key(uri)
    try:
        backend_key(public)
    except UnsupportedKey as exc:
        raise RegistryError(str(exc)) from None
    existing = stores.keys.get_key(public.key_id)
    if existing is not None:
        raise RegistryError(
            f"key {public.key_id} is already a {existing.role} key of {existing.gun}"
        )
    now = datetime.now(UTC)
    stored = StoredKey(
        public.key_id, gun, role, public.keytype, public.public, None, now, None, uri
    )
    external_signer(stored, token).sign(PROBE)
    detail = {"role": role, "key_id": public.key_id, "uri": uri}
    stores.keys.add_key(stored, AuditEntry(actor, "key-add", gun, detail))
    return stored


def remove(stores: Stores, key_id: str, *, actor: str = "cli") -> StoredKey:
    """Remove a server key that its GUN's current root does not list; audited."""
    stored = stores.keys.get_key(key_id)
    if stored is None:
        raise RegistryError(f"no server key {key_id}")
    root_file = stores.metadata.latest(stored.gun, ROOT)
    if root_file is not None:
        try:
            root = Metadata.from_bytes(root_file.data, Root).signed
        except MetadataError as exc:
            raise RegistryError(f"the current root of {stored.gun} is unreadable: {exc}") from None
        if stored.role in root.roles and key_id in root.roles[stored.role].keyids:
            raise RegistryError(
                f"{stored.gun}'s current root lists key {key_id} for {stored.role}: rotate it "
                f"first (tufnotary key rotate {stored.gun} {stored.role}), then remove it"
            )
    detail = {"role": stored.role, "key_id": key_id, "uri": stored.uri}
    if not stores.keys.delete_key(key_id, AuditEntry(actor, "key-remove", stored.gun, detail)):
        raise RegistryError(f"no server key {key_id}")
    return stored
