"""One repository (GUN) on one trust server, seen through a local trust directory.

The library's entry point::

    repo = Repository("registry.example.com/team/app", "https://notary.example.com",
                      TrustDir(Path("~/.notary").expanduser()), verify="ca.crt")
    policy = Policy(required_roles=["targets/releases"])
    repo.verify_image("1.4", digest="sha256:...", policy=policy)
    repo.verify_image(None, digest="sha256:...")  # the tag signed with this digest

Every read updates from the server first and fails closed: if the server cannot be reached or
fails, the typed ``RemoteError`` kind is raised (ServerUnreachable, ServerTimeout, TLSError,
ServerError, CAFileError...), never an answer from the cache. ``offline=True`` reads only the
cache, with every check (expiry included); ``cached_at`` says how old it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Unpack

from tufnotary.client.changes import StagedChange
from tufnotary.client.errors import ClientError
from tufnotary.client.images import Policy, VerifiedImage, resolve_image
from tufnotary.client.publisher import Initialized, InitOptions, Publisher
from tufnotary.client.remote import Remote
from tufnotary.client.trustdir import TrustDir
from tufnotary.client.trusted import TrustedSet, TrustPinning
from tufnotary.client.updater import Updater
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import ABSENT, TARGETS, DelegatedRole, FileMeta


@dataclass(frozen=True)
class Target:
    """A target a role signs: its name, the role, its length and hashes."""

    name: str
    role: str
    meta: FileMeta

    @property
    def sha256(self) -> str | None:
        return self.meta.sha256_hex


class TargetNotFound(ClientError, LookupError):
    """No trusted role signs a target by that name."""

    hint = "{error}: `{prog} list {context.gun}` shows the signed targets"


class Repository:
    """Read, verify and publish the trust data of ``gun``."""

    def __init__(
        self,
        gun: str,
        server: str | Remote,
        trustdir: TrustDir,
        *,
        verify: str | bool = True,
        pinning: TrustPinning | None = None,
        offline: bool = False,
    ) -> None:
        self.gun = gun
        self.remote = server if isinstance(server, Remote) else Remote(server, verify)
        self.trustdir = trustdir
        self.pinning = pinning
        self.offline = offline
        self.updater = Updater(self.remote, trustdir, gun, pinning=pinning, offline=offline)
        self.publisher = Publisher(self.remote, trustdir, gun, self.refresh)

    # -- reading -----------------------------------------------------------------------------

    def refresh(self) -> TrustedSet:
        """Update from the server with every TUF check (spec 4.2); offline, from the cache."""
        return self.updater.refresh()

    @property
    def cached_at(self) -> datetime | None:
        """Offline, after a read: when its trust data was last fetched from the server."""
        return self.updater.cached_at

    def targets(self, roles: Iterable[str] = (TARGETS,)) -> list[Target]:
        """The trusted targets of ``roles`` and their delegations, as notary lists them: a
        name signed by a role met earlier (breadth first) shadows the same name later."""
        trusted = self.refresh()
        found: dict[str, Target] = {}
        for role in trusted.walk(tuple(roles)):
            for name, meta in trusted.targets_of(role).items():
                found.setdefault(name, Target(name, role, meta))
        return sorted(found.values(), key=lambda target: (target.name, target.role))

    def delegations(self) -> list[DelegatedRole]:
        """Every trusted delegation entry, parents first."""
        trusted = self.refresh()
        return [entry for role in trusted.walk() for entry in trusted.delegations_of(role)]

    def lookup(self, name: str, roles: Iterable[str] = (TARGETS,)) -> Target:
        """The target ``name`` as the first role in ``roles`` order signs it (delegations of
        each are searched after it)."""
        hit = self.refresh().lookup(name, tuple(roles))
        if hit is None:
            raise TargetNotFound(f"no trusted target named {name!r} in {self.gun}")
        return Target(name, hit[0], hit[1])

    def verify_image(
        self,
        tag: str | None,
        digest: str | None = None,
        policy: Policy | None = None,
        *,
        update: bool = True,
    ) -> VerifiedImage:
        """The signed digest of ``tag`` (docker's rule, or the policy's required roles).

        With ``digest`` (``sha256:<hex>``), DigestMismatch unless it is the signed one; with a
        digest and no tag, the first tag (by name) signed with it that passes the policy.
        ``update=False``: answer from this object's last update (``refresh``) if there was one;
        the caller bounds its age (and the earliest expiry of what it trusted).
        """
        policy = policy or Policy()
        updater = self.updater
        if policy.pinning is not None and policy.pinning is not self.pinning:
            updater = Updater(
                self.remote, self.trustdir, self.gun, pinning=policy.pinning, offline=self.offline
            )
        if update or updater.trusted is None:
            updater.refresh()
        return resolve_image(updater, tag, digest, policy.required_roles)

    # -- staging -----------------------------------------------------------------------------

    def add_target(
        self, name: str, meta: FileMeta, roles: Iterable[str] = (TARGETS,)
    ) -> list[StagedChange]:
        """Stage ``name`` into each of ``roles``."""
        changes = [StagedChange.add_target(name, meta, role) for role in roles]
        for change in changes:
            self.publisher.stage(change)
        return changes

    def add_file(
        self, name: str, path: Path, roles: Iterable[str] = (TARGETS,), custom: Any = ABSENT
    ) -> FileMeta:
        """Stage a file by content: its length, sha256 and sha512 (and ``custom`` data)."""
        length, sha256, sha512 = 0, hashlib.sha256(), hashlib.sha512()
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                length += len(chunk)
                sha256.update(chunk)
                sha512.update(chunk)
        meta = FileMeta(length, {"sha256": sha256.digest(), "sha512": sha512.digest()}, custom)
        self.add_target(name, meta, roles)
        return meta

    def remove_target(self, name: str, roles: Iterable[str] = (TARGETS,)) -> None:
        for role in roles:
            self.publisher.stage(StagedChange.remove_target(name, role))

    def add_delegation(
        self, role: str, keys: list[Key], paths: list[str], threshold: int = 1
    ) -> None:
        self.publisher.stage(StagedChange.add_delegation(role, keys, paths, threshold))

    def remove_delegation(self, role: str, keyids: Collection[str] = ()) -> None:
        """Stage the removal of delegation ``role``, or with ``keyids`` of those keys of it."""
        self.publisher.stage(StagedChange.remove_delegation(role, keyids))

    def staged(self) -> list[StagedChange]:
        return self.publisher.changelist.load()

    def reset(self) -> None:
        """Drop every staged change."""
        self.publisher.changelist.clear()

    # -- publishing --------------------------------------------------------------------------

    def initialize(self, **options: Unpack[InitOptions]) -> Initialized:
        """Create and publish the repository, signed by the root key already in the trust
        directory (``root_key_id`` if there are several) unless ``new_root_key``; with
        ``server_snapshot``, the server holds the snapshot key."""
        return self.publisher.initialize(**options)

    def publish(self) -> list[str]:
        return self.publisher.publish()

    def sign_role(self, role: str) -> bytes:
        """Thresholds above 1: the next version of ``role`` signed by the keys held here."""
        return self.publisher.sign_role(role)

    def cosign(self, role: str, data: bytes) -> bytes:
        """Thresholds above 1: add this trust dir's signatures to another signer's version."""
        return self.publisher.cosign(role, data)

    def publish_signed(self, documents: dict[str, bytes]) -> list[str]:
        """Publish versions of delegations that enough signers signed; the staged changes
        that went into them are dropped."""
        roles = self.publisher.publish_signed(documents)
        self.publisher.changelist.drop(documents)
        return roles

    def witness(self, roles: Iterable[str]) -> list[str]:
        return self.publisher.witness(roles)

    def rotate_key(
        self, role: str, *, server_managed: bool = False, key_id: str | None = None
    ) -> Key:
        """Rotate ``role`` to a new key, the server's, or ``key_id`` held here."""
        return self.publisher.rotate(role, server_managed=server_managed, key_id=key_id)

    def delete(self, *, remote: bool = False) -> None:
        """Forget the local trust data of the GUN; with ``remote``, delete it on the server."""
        if remote:
            self.remote.delete(self.gun)
        self.trustdir.clear_metadata(self.gun)
        self.publisher.changelist.clear()
