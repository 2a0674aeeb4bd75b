"""The client update of spec 4.2-4.4 against a persistent cache of trusted metadata.

Every download is capped at what the referencing metadata allows (spec 4.3), checked by a
:class:`TrustedSet`, and cached only once it verified. Cached copies that still verify make
the versions that may not go backwards, across process restarts.

The update fails closed: when the server cannot be reached or fails, ``refresh`` raises (the
typed :class:`RemoteError` kinds) instead of answering from the cache, as notary and docker
do. Only an ``offline`` updater reads the cache, and then every role passes every check of an
update (signatures, hashes, expiry) without contacting the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Protocol

from tufnotary.client.errors import ClientError
from tufnotary.client.remote import (
    ROOT_CAP,
    TIMESTAMP_CAP,
    NotFoundError,
    OversizedError,
    Remote,
)
from tufnotary.client.trusted import (
    RootOutdatedError,
    RootRotationError,
    TrustedSet,
    TrustPinning,
)
from tufnotary.metadata.errors import HashMismatchError, MetadataError
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    Envelope,
    FileMeta,
    Signed,
)

logger = logging.getLogger(__name__)
EXPIRY_WARNING = timedelta(days=182)

RELEASES = "targets/releases"
DOCKER_ROLES = (RELEASES, TARGETS)
"""Docker's tag lookup priority (spec 4.6)."""


class MetadataCache(Protocol):
    """Where trusted metadata persists between runs (``TrustDir`` is one)."""

    def read_metadata(self, gun: str, role: str) -> bytes | None: ...

    def write_metadata(self, gun: str, role: str, data: bytes) -> None: ...

    def metadata_time(self, gun: str, role: str) -> datetime | None:
        """When the cached ``role`` of ``gun`` was last written, or None if it is not cached."""
        ...


class RepositoryNotFound(NotFoundError):
    """The trust server has no root for the GUN: it was never published, or was deleted."""

    hint = (
        "{context.gun} has no trust data on {context.server}: check the name and --server, "
        "or create it with `{prog} init {context.gun}`"
    )

    def __init__(self, gun: str) -> None:
        super().__init__(f"repository {gun} does not exist on the trust server")
        self.gun = gun


class NotCached(ClientError, LookupError):
    """Offline: the cache holds no verified copy of a role the trust data needs."""

    hint = "offline: {error}: run once without --offline to fetch and verify it"

    def __init__(self, gun: str, role: str) -> None:
        super().__init__(f"the cache holds no verified {role} of {gun}")
        self.gun, self.role = gun, role


def _matches(meta: FileMeta, data: bytes, role: str) -> bool:
    try:
        meta.verify(data, role)
    except HashMismatchError:
        return False
    return True


class Updater:
    """Keeps the trusted metadata of one GUN up to date from ``remote`` through ``cache``.

    ``offline``: never contact ``remote``; load every role from ``cache`` with every check of
    an update, expiry included (NotCached if one is missing). ``cached_at`` then says when the
    trust data was last fetched from the server.
    """

    def __init__(
        self,
        remote: Remote,
        cache: MetadataCache,
        gun: str,
        *,
        pinning: TrustPinning | None = None,
        max_root_rotations: int = 32,
        offline: bool = False,
    ) -> None:
        self._remote = remote
        self._cache = cache
        self.gun = gun
        self._pinning = pinning
        self._max_root_rotations = max_root_rotations
        self.offline = offline
        self.cached_at: datetime | None = None
        self._trusted: TrustedSet | None = None

    def refresh(self) -> TrustedSet:
        """Run the update (spec 4.2); if it fails, update the root and run it once more.

        Fails closed: a server that cannot be reached or fails raises its RemoteError kind.
        """
        if self.offline:
            return self._load_cached()
        trusted = self._bootstrap()
        try:
            self._load_roles(trusted)
        except (MetadataError, NotFoundError, OversizedError) as exc:
            logger.info("update of %s failed (%s): checking the root, then retrying", self.gun, exc)
            failed = trusted
            trusted = self._bootstrap()
            if failed.snapshot is None:  # else the snapshot vouched for the trusted root
                hint = exc.root_meta if isinstance(exc, RootOutdatedError) else None
                self._update_root(trusted, hint)
            self._load_roles(trusted)
        return self._done(trusted, "updated from the server")

    def _load_cached(self) -> TrustedSet:
        """The offline update: every role from the cache, checked as if just downloaded."""
        root = self._cache.read_metadata(self.gun, ROOT)
        if root is None:
            raise NotCached(self.gun, ROOT)
        trusted = TrustedSet(self.gun, root, pinning=self._pinning)
        self._load_roles(trusted)
        self.cached_at = self._cache.metadata_time(self.gun, TIMESTAMP)
        return self._done(trusted, "offline: from the cache")

    def _done(self, trusted: TrustedSet, source: str) -> TrustedSet:
        """Warn of roles expiring soon, report the versions now trusted, keep them."""
        self._warn_expiring(trusted)
        assert trusted.timestamp is not None and trusted.snapshot is not None
        logger.info(
            "%s: trusted root %d, timestamp %d, snapshot %d (%s)",
            self.gun,
            trusted.root.version,
            trusted.timestamp.version,
            trusted.snapshot.version,
            source,
        )
        self._trusted = trusted
        return trusted

    def _warn_expiring(self, trusted: TrustedSet) -> None:
        """Spec 4.2 step 7: tell the owner before root, snapshot or targets roles expire."""
        soon = datetime.now(UTC) + EXPIRY_WARNING
        documents: dict[str, Signed | None] = {ROOT: trusted.root, SNAPSHOT: trusted.snapshot}
        documents.update({role: trusted.targets(role) for role in trusted.walk()})
        for role, signed in documents.items():
            if signed is not None and signed.expires_at < soon:
                logger.warning(
                    "%s: %s expires at %s: re-sign it soon", self.gun, role, signed.expires
                )

    def find_target(
        self, name: str, roles: Sequence[str] = DOCKER_ROLES
    ) -> tuple[str, FileMeta] | None:
        """Docker's lookup (spec 4.6): the first hit in ``roles`` priority, as (role, meta).

        A hit in a delegation that is not itself one of ``roles`` counts as no trust data.
        Refreshes first if this updater has not yet.
        """
        hit = self._current().lookup(name, roles)
        return hit if hit is not None and hit[0] in roles else None

    def targets_of(self, role: str) -> dict[str, FileMeta]:
        """The targets ``role`` lists within its effective paths; {} if it is not trusted."""
        return self._current().targets_of(role)

    def signers_of(self, name: str) -> list[str]:
        """Every trusted targets role that signs ``name`` within its paths, parents first."""
        trusted = self._current()
        return [role for role in trusted.walk() if name in trusted.targets_of(role)]

    def signed_with(self, sha256_hex: str) -> list[str]:
        """The names any trusted targets role signs with this sha256 (hex), sorted."""
        trusted = self._current()
        return sorted(
            {
                name
                for role in trusted.walk()
                for name, meta in trusted.targets_of(role).items()
                if meta.sha256_hex == sha256_hex
            }
        )

    @property
    def trusted(self) -> TrustedSet | None:
        """The trust data of the last update, or None before the first."""
        return self._trusted

    def _current(self) -> TrustedSet:
        return self._trusted or self.refresh()

    # -- root ---------------------------------------------------------------------------------

    def _bootstrap(self) -> TrustedSet:
        """The cached root as trust anchor (rotated if expired), or a first root (TOFU/pinned)."""
        cached = self._cache.read_metadata(self.gun, ROOT)
        if cached is None:
            data = self._fetch_current_root()
            trusted = TrustedSet(self.gun, data, first_use=True, pinning=self._pinning)
            self._cache.write_metadata(self.gun, ROOT, data)
            return trusted
        trusted = TrustedSet(self.gun, cached, pinning=self._pinning)
        if trusted.root.is_expired(trusted.now):
            self._update_root(trusted, None)
        return trusted

    def _fetch_current_root(self) -> bytes:
        try:
            return self._remote.fetch(self.gun, ROOT, ROOT_CAP)
        except NotFoundError as exc:
            raise RepositoryNotFound(self.gun) from exc

    def _update_root(self, trusted: TrustedSet, hint: FileMeta | None) -> None:
        """Spec 4.4: rotate to the root the snapshot named (else the current one), via the chain.

        A root not signed by the trusted one is reached through ``N.root.json`` for every
        version in between, each checked against the one before.
        """
        if hint is None:
            data = self._fetch_current_root()
            if data == trusted.root_bytes:
                return
        else:
            data = self._remote.fetch(self.gun, f"{ROOT}.{hint.sha256_hex}", hint.length)
            hint.verify(data, ROOT)
        try:
            trusted.update_root(data)
        except RootRotationError:
            current, newest = trusted.root.version, Envelope.from_bytes(data).version
            if newest - current > self._max_root_rotations:
                raise RootRotationError(
                    f"root {newest} is more than {self._max_root_rotations} rotations after "
                    f"the trusted root {current}"
                ) from None
            if newest == current + 1:
                raise
            for version in range(current + 1, newest):
                step = self._remote.fetch(self.gun, f"{version}.{ROOT}", ROOT_CAP)
                trusted.update_root(step, intermediate=True)
                self._cache.write_metadata(self.gun, ROOT, step)
            trusted.update_root(data)
        self._cache.write_metadata(self.gun, ROOT, data)
        logger.info("%s: trusted root is now version %d", self.gun, trusted.root.version)

    # -- the other roles ----------------------------------------------------------------------

    def _load_roles(self, trusted: TrustedSet) -> None:
        """Spec 4.2 steps 1-5: timestamp, snapshot, targets, then delegations pre-order."""
        self._load_timestamp(trusted)
        assert trusted.timestamp is not None
        self._load(trusted, SNAPSHOT, trusted.timestamp.meta[SNAPSHOT], trusted.update_snapshot)
        snapshot = trusted.snapshot
        assert snapshot is not None
        self._load(trusted, TARGETS, snapshot.meta[TARGETS], trusted.update_targets)

        def children(role: str) -> list[str]:
            listed = [r for r in trusted.delegated_roles(role) if r in snapshot.meta]
            return listed[::-1]  # popped from the end: first listed is loaded first

        pending = children(TARGETS)
        while pending:
            role = pending.pop()
            load = partial(trusted.update_delegated, role)
            if self._load(trusted, role, snapshot.meta[role], load) is not None:
                pending.extend(children(role))

    def _load_timestamp(self, trusted: TrustedSet) -> None:
        cached = self._cache.read_metadata(self.gun, TIMESTAMP)
        if self.offline:
            if cached is None:
                raise NotCached(self.gun, TIMESTAMP)
            trusted.update_timestamp(cached)
            return
        if cached is not None:
            trusted.remember_cached(TIMESTAMP, cached)
        data = self._remote.fetch(self.gun, TIMESTAMP, TIMESTAMP_CAP)
        trusted.update_timestamp(data)
        self._cache.write_metadata(self.gun, TIMESTAMP, data)

    def _load(
        self,
        trusted: TrustedSet,
        role: str,
        meta: FileMeta,
        update: Callable[[bytes], Signed | None],
    ) -> Signed | None:
        """Load ``role`` from the cache if it has the listed hashes, else download by checksum.

        The download is capped at the listed length and cached once ``update`` trusted it.
        """
        cached = self._cache.read_metadata(self.gun, role)
        if cached is not None:
            trusted.remember_cached(role, cached)
            if _matches(meta, cached, role):
                return update(cached)
        if self.offline:
            raise NotCached(self.gun, role)
        name = f"{role}.{meta.sha256_hex}" if meta.sha256_hex else role
        data = self._remote.fetch(self.gun, name, meta.length)
        result = update(data)
        if result is not None:
            self._cache.write_metadata(self.gun, role, data)
        return result
