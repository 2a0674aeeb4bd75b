"""Import a self-hosted Notary from its databases: notary-signer's server keys re-encrypted
under this server's passphrase (same key ids, so clients see no rotation), then every version
of every role of each GUN, stored unchanged.

Every key is decrypted before anything is written: a missing or wrong passphrase refuses the
whole import. Keys are written first (one transaction), then each GUN's files (one transaction
per GUN); a re-run adds only what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tufnotary.importer.outcome import ACTOR, store_versions
from tufnotary.importer.signer_keys import SignerKey, SignerKeyError, decrypt_key
from tufnotary.metadata.model import ROOT, SNAPSHOT, TIMESTAMP
from tufnotary.server.signer import KeyVault, sealed_key
from tufnotary.server.storage import Stores
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.keys import StoredKey
from tufnotary.server.storage.metadata import NewFile

SERVER_ROLES = (TIMESTAMP, SNAPSHOT)


@dataclass(frozen=True)
class GunResult:
    """What the import did for one GUN: files read and added, and per server role
    (timestamp, snapshot) the id of the key its newest root lists that this server now holds
    (a snapshot key it lacks is the owner's: the owner signs the snapshot)."""

    gun: str
    files: int
    added: int
    server_keys: dict[str, str]


def _utc(when: datetime | None) -> datetime | None:
    return when if when is None or when.tzinfo else when.replace(tzinfo=UTC)


def new_keys(
    stores: Stores, keys: Sequence[SignerKey], passphrases: Mapping[str, str], vault: KeyVault
) -> list[StoredKey]:
    """Decrypt every notary-signer key (SignerKeyError for the first that fails); those this
    server does not hold yet come back encrypted by ``vault``. Writes nothing. A key id held
    here for another GUN, role or public key is a SignerKeyError too."""
    sealed = []
    for key in keys:
        private = decrypt_key(key, passphrases[key.passphrase_alias])
        held = stores.keys.get_key(key.key_id)
        if held is None:
            created = _utc(key.created_at) or datetime.now(UTC)
            last_used = _utc(key.last_used)
            sealed.append(sealed_key(vault, private, key.gun, key.role, created, last_used))
        elif (held.gun, held.role, held.public) != (key.gun, key.role, key.public):
            raise SignerKeyError(
                f"key {key.key_id} is already held here for {held.role} of {held.gun!r}, "
                f"notary-signer has it for {key.role} of {key.gun!r}"
            )
    return sealed


def store_keys(stores: Stores, keys: Sequence[StoredKey]) -> None:
    """Store the keys in one audited transaction (none: nothing to do)."""
    if not keys:
        return
    detail = {"source": "notary-signer", "keys": [key.key_id for key in keys]}
    stores.keys.add_keys(keys, AuditEntry(ACTOR, "import-keys", None, detail))


def import_gun(
    stores: Stores, gun: str, files: Sequence[NewFile], keys: Sequence[SignerKey]
) -> GunResult:
    """Store ``gun``'s files that are not stored yet (all or none, audited); the imported keys
    its newest root lists (of ``keys``) are marked used."""
    detail = {"source": "notary-server database", "read": len(files)}
    added = store_versions(stores.metadata, gun, files, detail)
    roots = [file for file in files if file.role == ROOT]
    root = json.loads(max(roots, key=lambda f: f.version).data)["signed"] if roots else {}
    imported = {(key.role, key.key_id) for key in keys if key.gun == gun}
    held: dict[str, str] = {}
    for role in SERVER_ROLES:
        listed = root.get("roles", {}).get(role, {}).get("keyids", [])
        for key_id in (key_id for key_id in listed if (role, key_id) in imported):
            held.setdefault(role, key_id)
            stores.keys.mark_key_used(key_id)
    return GunResult(gun, len(files), len(added), held)
