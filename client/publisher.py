"""Staged changes -> signed metadata -> one multipart upload (spec 4.5).

Every publish first updates from the server with full verification (the updater writes only
verified files to the cache, which is what is read back here), then re-signs what changed
exactly as the Go client would, so the result is also accepted by a reference notary-server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from tufnotary.client.changes import Changelist, StagedChange
from tufnotary.client.errors import ClientError
from tufnotary.client.remote import NotFoundError, OversizedError, RejectedError, Remote
from tufnotary.client.rootcert import root_certificate
from tufnotary.client.trustdir import TrustDir
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    FileMeta,
    Metadata,
    RoleKeys,
    Root,
    Signed,
    Snapshot,
    Targets,
    format_expires,
    parent_role,
)
from tufnotary.metadata.signing import PrivateKey, Signer

ROOT_LIFETIME = timedelta(days=10 * 365)
TARGETS_LIFETIME = SNAPSHOT_LIFETIME = timedelta(days=3 * 365)
RESIGN_WITHIN = timedelta(days=182)


class PublishError(ClientError):
    """A publish cannot be prepared (missing keys, no repository...); nothing was sent."""


class RepositoryExists(PublishError):
    """``initialize`` on a GUN the server already has."""

    hint = "{error}: `{prog} list {context.gun}` shows it; choose another name to create a new one"


class RootKeyChoice(PublishError):
    """``initialize`` cannot tell which root key of the trust directory to use, or cannot use
    the one there (an ed25519 key signs no root certificate)."""


class MissingKeysError(PublishError):
    """This trust directory holds fewer of a role's keys than its threshold."""

    def __init__(self, gun: str, role: str, needed: int, held: int) -> None:
        hint = f"import the {role} key (tufnotary key import) or ask its holder to publish"
        if 0 < held < needed:
            hint = (
                f"sign it here (tufnotary sign {gun} {role}), have the other holders add their "
                f"signatures (tufnotary cosign), then publish the result"
            )
        if role == SNAPSHOT:
            hint += f"; or let the server manage it: tufnotary key rotate {gun} snapshot -r"
        super().__init__(
            f"cannot sign {role}: it needs {needed} key(s) and this trust directory holds "
            f"{held}; {hint}"
        )


@dataclass
class _Draft:
    """The repository as verified, then modified; ``dirty`` roles are re-signed and sent."""

    root: Metadata[Root]
    root_bytes: bytes
    targets: dict[str, Metadata[Targets]]
    files: dict[str, bytes]
    snapshot: Snapshot | None
    dirty: set[str] = field(default_factory=set)
    extra_root_signers: list[tuple[Signer, str]] = field(default_factory=list)


Refresh = Callable[[], object]


class InitOptions(TypedDict, total=False):
    """The choices ``initialize`` takes (all keyword arguments, all optional)."""

    server_snapshot: bool
    root_key_id: str | None
    new_root_key: bool


@dataclass(frozen=True)
class Initialized:
    """What ``initialize`` published: each role's key id, and the root key file it signed with
    (``root_key_reused``: it was in the trust directory already)."""

    key_ids: dict[str, str]
    root_key_id: str
    root_key_reused: bool


class Publisher:
    """Signs and uploads changes to one GUN; ``refresh`` is the verifying update."""

    def __init__(self, remote: Remote, trustdir: TrustDir, gun: str, refresh: Refresh) -> None:
        self.remote = remote
        self.trustdir = trustdir
        self.gun = gun
        self.refresh = refresh
        self.changelist = Changelist(trustdir.repository_dir(gun))

    # -- creating --------------------------------------------------------------------------

    def initialize(
        self,
        *,
        server_snapshot: bool = False,
        root_key_id: str | None = None,
        new_root_key: bool = False,
    ) -> Initialized:
        """Create the repository: root key with certificate, targets key, snapshot key here or
        on the server, timestamp key on the server; publish root 1, targets 2, snapshot 2.

        As notary does, the root key already in the trust directory signs (``root_key_id``
        chooses when there are several); a new one is made if there is none or if
        ``new_root_key``.
        """
        try:
            self.remote.fetch(self.gun, ROOT, 0)
        except NotFoundError:
            pass
        except OversizedError as exc:  # a root.json is there
            raise RepositoryExists(f"{self.gun} already exists on {self.remote.url}") from exc
        timestamp_key = self.remote.server_key(self.gun, TIMESTAMP)
        existing = None if new_root_key else self._existing_root_key(root_key_id)
        root_key, certificate = self._root_key(existing)
        targets_key = self.trustdir.generate_key(TARGETS, self.gun)
        if server_snapshot:
            snapshot_key = self.remote.server_key(self.gun, SNAPSHOT)
        else:
            snapshot_key = self.trustdir.generate_key(SNAPSHOT, self.gun).public
        keys = [certificate, targets_key.public, snapshot_key, timestamp_key]
        root = Root(
            1,
            _expires(ROOT_LIFETIME),
            keys={key.key_id: key for key in keys},
            roles={
                role: RoleKeys([key.key_id], 1)
                for role, key in zip((ROOT, TARGETS, SNAPSHOT, TIMESTAMP), keys, strict=True)
            },
        )
        draft = _Draft(Metadata(root), b"", {TARGETS: Metadata(Targets(1, ""))}, {}, None)
        draft.dirty = {ROOT, TARGETS}  # root goes out as version 1, targets as 2 (as Go does)
        self._upload(draft)
        key_ids = {role: keys.keyids[0] for role, keys in root.roles.items()}
        return Initialized(key_ids, root_key.public.key_id, existing is not None)

    # -- staging -----------------------------------------------------------------------------

    def stage(self, change: StagedChange) -> None:
        self.changelist.add(change)

    def publish(self) -> list[str]:
        """Publish the staged changes; returns the roles sent. Staged changes are kept if the
        server refuses (RejectedError says why)."""
        draft = self._draft()
        for change in self.changelist.load():
            change.apply(self._editable(draft, change.role))
        self._upload(draft)
        self.changelist.clear()
        return sorted(draft.dirty)

    def sign_role(self, role: str) -> bytes:
        """The next version of delegation ``role`` with its staged changes, signed by the keys
        held here even below its threshold, for other signers to ``cosign`` (nothing is sent)."""
        draft = self._draft()
        for change in self.changelist.load():
            if change.role == role:
                change.apply(self._editable(draft, role))
        targets = self._editable(draft, role)
        targets.version += 1
        targets.expires = _expires(TARGETS_LIFETIME)
        return self._sign(draft, role, targets, partial=True)

    def cosign(self, role: str, data: bytes) -> bytes:
        """``data`` (a version of ``role`` another signer made) with this trust dir's signatures
        added; PublishError if it is not ``role``'s next version or not in canonical form."""
        draft = self._draft()
        metadata = Metadata.from_bytes(data, Targets)
        current = draft.targets.get(role)
        if current is not None and metadata.signed.version <= current.signed.version:
            raise PublishError(f"{role} version {metadata.signed.version} is already published")
        signed_by = len(metadata.signatures)
        keys, _ = self._keys_for(draft, role)
        if not keys:
            raise MissingKeysError(self.gun, role, 1, 0)
        for keyid, key in keys.items():
            metadata.sign(key, keyid)
        if len(metadata.signatures) < signed_by:
            raise PublishError(f"this {role} is not in canonical form: its signatures would break")
        return metadata.to_bytes()

    def publish_signed(self, documents: Mapping[str, bytes]) -> list[str]:
        """Upload delegation versions signed elsewhere (``sign_role`` + ``cosign``) as they
        are, with a new snapshot if its key is here."""
        draft = self._draft()
        for role, data in documents.items():
            draft.targets[role] = Metadata.from_bytes(data, Targets)
        self._upload(draft, presigned=dict(documents))
        return sorted(documents)

    def witness(self, roles: Iterable[str]) -> list[str]:
        """Re-sign delegations as they are (to renew them or mark them valid again)."""
        draft = self._draft()
        for role in roles:
            self._editable(draft, role)
        self._upload(draft)
        return sorted(draft.dirty)

    # -- keys --------------------------------------------------------------------------------

    def rotate(self, role: str, *, server_managed: bool = False, key_id: str | None = None) -> Key:
        """Replace ``role``'s key(s) by a new one, or by the key ``key_id`` held here (in a
        file or a token), and publish the new root; returns the key."""
        draft = self._draft()
        root = self._editable_root(draft)
        replaced = root.roles[role].keyids
        chosen = self.trustdir.load_key(key_id) if key_id else None
        if role == ROOT:
            old = self.trustdir.find_keys(replaced, root.keys)
            draft.extra_root_signers = [(key, keyid) for keyid, key in old.items()]
            new_key = self._root_key(chosen)[1]
        elif server_managed or role == TIMESTAMP:
            new_key = self.remote.server_key(self.gun, role, rotate=True)
        else:
            new_key = chosen.public if chosen else self.trustdir.generate_key(role, self.gun).public
        root.keys[new_key.key_id] = new_key
        root.roles[role] = RoleKeys([new_key.key_id], 1)
        if role != ROOT:  # like the Go client, drop replaced keys but keep old root certificates
            listed = {keyid for keys in root.roles.values() for keyid in keys.keyids}
            for keyid in set(replaced) - listed:
                root.keys.pop(keyid, None)
        if role == TARGETS:
            self._editable(draft, TARGETS)
        self._upload(draft)
        return new_key

    # -- internals ---------------------------------------------------------------------------

    def _existing_root_key(self, key_id: str | None) -> Signer | None:
        """The root key ``key_id``, else the only root key in the trust directory, else None."""
        if key_id is None:
            held = sorted(info.key_id for info in self.trustdir.list_keys() if info.role == ROOT)
            if len(held) > 1:
                raise RootKeyChoice(
                    f"the trust directory holds {len(held)} root keys ({', '.join(held)}): "
                    "choose one with --root-key ID, or make a new one with --new-root-key"
                )
            key_id = held[0] if held else None
        return self.trustdir.load_key(key_id) if key_id else None

    def _root_key(self, private: Signer | None = None) -> tuple[Signer, Key]:
        """``private`` and its root certificate for the GUN; without it, a new root key (stored
        once its certificate could be made)."""
        if private is not None:
            try:
                return private, root_certificate(private, self.gun)
            except ValueError as exc:
                raise RootKeyChoice(
                    f"root key {private.public.key_id}: {exc}; make a new one with --new-root-key"
                ) from exc
        private = PrivateKey.generate()
        certificate = root_certificate(private, self.gun)
        self.trustdir.add_key(private, ROOT)
        return private, certificate

    def _draft(self) -> _Draft:
        """The verified current state, read back from the cache the updater just wrote."""
        self.refresh()
        root_bytes = self._cached(ROOT)
        root = Metadata.from_bytes(root_bytes, Root)
        targets: dict[str, Metadata[Targets]] = {}
        files = {ROOT: root_bytes}
        pending = [TARGETS]
        while pending:
            role = pending.pop()
            data = self.trustdir.read_metadata(self.gun, role)
            if data is None:
                continue
            targets[role] = Metadata.from_bytes(data, Targets)
            files[role] = data
            pending += [entry.name for entry in targets[role].signed.delegations.roles]
        snapshot_bytes = self.trustdir.read_metadata(self.gun, SNAPSHOT)
        snapshot = Metadata.from_bytes(snapshot_bytes, Snapshot).signed if snapshot_bytes else None
        return _Draft(root, root_bytes, targets, files, snapshot)

    def _cached(self, role: str) -> bytes:
        data = self.trustdir.read_metadata(self.gun, role)
        if data is None:
            raise PublishError(f"no verified {role} for {self.gun}: the update did not store it")
        return data

    def _editable_root(self, draft: _Draft) -> Root:
        """The next root version, marked for signing."""
        if ROOT not in draft.dirty:
            root = Root.from_dict(draft.root.signed.to_dict())
            root.version += 1
            root.expires = _expires(ROOT_LIFETIME)
            draft.root, draft.root_bytes = Metadata(root), b""
            draft.dirty.add(ROOT)
        return draft.root.signed

    def _editable(self, draft: _Draft, role: str) -> Targets:
        """The role's ``signed`` object, marked for re-signing; created if newly delegated."""
        if role not in draft.dirty:
            current = draft.targets.get(role)
            if current is None:
                if role != TARGETS and parent_role(role) not in draft.targets:
                    raise PublishError(f"{role} is not delegated: add the delegation first")
                current = Metadata(Targets(0, ""))
            else:
                current = Metadata(Targets.from_dict(current.signed.to_dict()))
            draft.targets[role] = current
            draft.dirty.add(role)
        return draft.targets[role].signed

    def _keys_for(self, draft: _Draft, role: str) -> tuple[dict[str, Signer], int]:
        """The keys this trust directory holds (or references) for ``role``, and its
        threshold."""
        if role in (ROOT, TARGETS, SNAPSHOT):
            root = draft.root.signed
            listed = root.roles[role]
            return self.trustdir.find_keys(listed.keyids, root.keys), listed.threshold
        parent = draft.targets[parent_role(role)].signed.delegations
        entry = parent.role(role)
        if entry is None:
            raise PublishError(f"{role} is not delegated by {parent_role(role)}")
        return self.trustdir.find_keys(entry.keyids, parent.keys), entry.threshold

    def _sign(self, draft: _Draft, role: str, signed: Signed, *, partial: bool = False) -> bytes:
        """Wire bytes signed by the keys held here: at least the threshold, or with
        ``partial`` at least one."""
        keys, threshold = self._keys_for(draft, role)
        if len(keys) < (1 if partial else threshold):
            raise MissingKeysError(self.gun, role, threshold, len(keys))
        metadata = Metadata(signed)
        for keyid, key in keys.items():
            metadata.sign(key, keyid)
        if role == ROOT:
            for key, keyid in draft.extra_root_signers:
                metadata.sign(key, keyid)
        return metadata.to_bytes()

    def _upload(self, draft: _Draft, presigned: dict[str, bytes] | None = None) -> None:
        """Sign every dirty role (and the snapshot if its key is here), send them in one go
        with the ``presigned`` files."""
        if draft.root.signed.expires_at - datetime.now(UTC) < RESIGN_WITHIN:
            self._editable_root(draft)
        files: dict[str, bytes] = dict(presigned or {})
        if ROOT in draft.dirty:
            draft.root_bytes = draft.root_bytes or self._sign(draft, ROOT, draft.root.signed)
            files[ROOT] = draft.root_bytes
        for role in sorted(draft.dirty - {ROOT}):
            targets = draft.targets[role].signed
            targets.version += 1
            targets.expires = _expires(TARGETS_LIFETIME)
            files[role] = self._sign(draft, role, targets)
        snapshot_keys, threshold = self._keys_for(draft, SNAPSHOT)
        if len(snapshot_keys) >= threshold:  # else the server makes the snapshot
            previous = draft.snapshot or Snapshot(1, "")
            meta = {**previous.meta}
            meta.update(
                {role: FileMeta.of(data) for role, data in {**draft.files, **files}.items()}
            )
            snapshot = Snapshot(previous.version + 1, _expires(SNAPSHOT_LIFETIME), meta)
            files[SNAPSHOT] = self._sign(draft, SNAPSHOT, snapshot)
        try:
            self.remote.upload(self.gun, files)
        except RejectedError as exc:
            if SNAPSHOT not in files and "ErrBadHierarchy" in str(exc):
                raise MissingKeysError(self.gun, SNAPSHOT, threshold, 0) from exc
            raise
        self.refresh()


def _expires(lifetime: timedelta) -> str:
    return format_expires(datetime.now(UTC) + lifetime)
