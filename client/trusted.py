"""The client's trusted metadata: each role checked against what is already trusted (spec 4.2).

A :class:`TrustedSet` starts from a root and takes timestamp, snapshot, targets and the
delegations in that order. Each ``update_*`` runs every check first and changes the set only
when all of them passed, so a refused document leaves it as it was.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from tufnotary.client.errors import ClientError
from tufnotary.metadata.errors import (
    ExpiredError,
    FormatError,
    HashMismatchError,
    KeyIdMismatchError,
    MetadataError,
    RootError,
    RotationError,
    ThresholdError,
    UnsignedError,
    VersionError,
)
from tufnotary.metadata.keys import Key, check_certificate, issued_by, may_issue
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    DelegatedRole,
    FileMeta,
    Metadata,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
    is_delegation_name,
    parent_role,
    path_allowed,
    restrict_paths,
    signed_type,
)
from tufnotary.metadata.verify import (
    check_fresh,
    root_certificate_keys,
    verify_root,
    verify_threshold,
)

logger = logging.getLogger(__name__)

S = TypeVar("S", bound=Signed)


# -- errors -----------------------------------------------------------------------------------


class RollbackError(VersionError):
    """A role's version is lower than the version already trusted (now or in the cache)."""

    def __init__(self, role: str, version: int, minimum: int) -> None:
        super().__init__(f"{role} version {version} is lower than the trusted minimum {minimum}")
        self.role, self.version, self.minimum = role, version, minimum


class RootRotationError(RootError):
    """A newer root is not signed by the trusted root, or its rotation chain is unusable."""


class UntrustedRootError(ClientError, RootError):
    """Trust pinning refuses the root: no pinned certificate signed it, or TOFU is disabled."""

    hint = "root of {context.gun} not trusted: {error}; check --pin-cert-id and --pin-ca"


class RootOutdatedError(MetadataError):
    """The snapshot lists a root other than the trusted one: update the root first."""

    def __init__(self, root_meta: FileMeta) -> None:
        super().__init__("the snapshot lists a root other than the trusted one")
        self.root_meta = root_meta


class DelegationError(MetadataError):
    """A delegation cannot be loaded: no trusted role delegates to it, or no snapshot entry."""


# -- trust pinning ----------------------------------------------------------------------------

LeafCheck = Callable[[Key], bool]


@dataclass(frozen=True)
class TrustPinning:
    """Which root certificates a client accepts for a GUN (spec 4.1).

    ``certs`` maps a GUN, or a prefix ending in ``*`` (longest wins), to the allowed certificate
    key ids (leaf plus intermediates); ``ca`` maps a GUN prefix (longest wins) to a PEM bundle
    the leaf must chain to. Otherwise trust on first use, unless ``disable_tofu``.
    """

    certs: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ca: Mapping[str, Path] = field(default_factory=dict)
    disable_tofu: bool = False

    def leaf_check(self, gun: str, *, first_use: bool, now: datetime) -> LeafCheck:
        """The test a rebuilt root certificate key must pass; UntrustedRootError if none can."""
        pinned_ids = self._pinned_ids(gun)
        if pinned_ids is not None:
            return lambda key: key.key_id in pinned_ids
        prefix = max((p for p in self.ca if gun.startswith(p)), key=len, default=None)
        if prefix is not None:
            anchors = _load_anchors(Path(self.ca[prefix]), now)
            return lambda key: _chains_to(key.certificates(), anchors)
        if self.disable_tofu and first_use:
            raise UntrustedRootError(f"no trust pinning for {gun} and trust on first use is off")
        return lambda key: True

    def _pinned_ids(self, gun: str) -> frozenset[str] | None:
        if gun in self.certs:
            return frozenset(self.certs[gun])
        wildcards = [p for p in self.certs if p.endswith("*") and gun.startswith(p[:-1])]
        return frozenset(self.certs[max(wildcards, key=len)]) if wildcards else None


def _load_anchors(path: Path, now: datetime) -> list[x509.Certificate]:
    """The certificates of a pinned CA bundle that pass notary's certificate checks."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UntrustedRootError(f"cannot load the pinned CA bundle {path}: {exc}") from exc
    anchors = []
    for cert in certs:
        try:
            check_certificate(cert, now)
        except FormatError:
            continue
        anchors.append(cert)
    if not anchors:
        raise UntrustedRootError(f"the pinned CA bundle {path} holds no valid certificate")
    return anchors


def _chains_to(chain: list[x509.Certificate], anchors: list[x509.Certificate]) -> bool:
    """True if the leaf ``chain[0]`` is, or is issued through ``chain[1:]`` by, an anchor;
    every issuer must be a CA allowed to issue what is below it (``may_issue``)."""
    pending = [(chain[0], chain[1:], 0)]
    while pending:
        cert, unused, below = pending.pop()
        if any(
            cert == anchor or (issued_by(cert, anchor) and may_issue(anchor, below))
            for anchor in anchors
        ):
            return True
        pending.extend(
            (issuer, [c for c in unused if c is not issuer], below + 1)
            for issuer in unused
            if issued_by(cert, issuer) and may_issue(issuer, below)
        )
    return False


# -- the trusted set --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedTargets:
    """A verified targets role with its effective paths (own paths narrowed by its ancestors)."""

    metadata: Metadata[Targets]
    paths: tuple[str, ...]

    def in_path_targets(self) -> dict[str, FileMeta]:
        paths = list(self.paths)
        targets = self.metadata.signed.targets
        return {name: meta for name, meta in targets.items() if path_allowed(name, paths)}


class TrustedSet:
    """Verified metadata of one GUN, from a trusted root down to the delegations.

    ``root_bytes`` is the cached root (the trust anchor: it may be expired) or, with
    ``first_use``, a root downloaded for a GUN never seen before, which must also be unexpired
    and pass ``pinning``. Pinning applies to every root rotated to as well.
    """

    def __init__(
        self,
        gun: str,
        root_bytes: bytes,
        *,
        first_use: bool = False,
        pinning: TrustPinning | None = None,
        now: datetime | None = None,
    ) -> None:
        self.gun = gun
        self.now = now or datetime.now(UTC)
        self._pinning = pinning or TrustPinning()
        root = Metadata.from_bytes(root_bytes, Root)
        # A cached anchor stays trusted when it or its certificates expired (decision 13).
        verify_root(
            root,
            gun,
            allow_expired=not first_use,
            check_certificate_expiry=first_use,
            now=self.now,
        )
        if first_use:
            self._check_pinning(root, first_use=True)
        self._root, self._root_bytes = root, root_bytes
        self._timestamp: Metadata[Timestamp] | None = None
        self._snapshot: Metadata[Snapshot] | None = None
        self._targets: dict[str, TrustedTargets] = {}
        self._minimums: dict[str, int] = {}
        self.invalid: dict[str, str] = {}
        """Delegations skipped as expired or under-signed, with the reason."""

    # -- reading ------------------------------------------------------------------------------

    @property
    def root(self) -> Root:
        return self._root.signed

    @property
    def root_bytes(self) -> bytes:
        return self._root_bytes

    @property
    def timestamp(self) -> Timestamp | None:
        return self._timestamp.signed if self._timestamp else None

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot.signed if self._snapshot else None

    def delegated_roles(self, role: str) -> list[str]:
        """Names of the direct children a trusted targets role delegates to, in listed order."""
        trusted = self._targets.get(role)
        if trusted is None:
            return []
        names = (d.name for d in trusted.metadata.signed.delegations.roles)
        children = [n for n in names if is_delegation_name(n) and parent_role(n) == role]
        return list(dict.fromkeys(children))

    def targets(self, role: str) -> Targets | None:
        """The verified ``signed`` of a targets role, or None if it is not trusted."""
        trusted = self._targets.get(role)
        return trusted.metadata.signed if trusted else None

    def delegations_of(self, role: str) -> list[DelegatedRole]:
        """The delegation entries of a trusted targets role (keys, paths, threshold)."""
        trusted = self._targets.get(role)
        return list(trusted.metadata.signed.delegations.roles) if trusted else []

    def walk(self, roles: Sequence[str] = (TARGETS,)) -> list[str]:
        """Each of ``roles`` followed by its trusted delegations, breadth first, once each."""
        found: dict[str, None] = {}
        pending = list(roles)
        while pending:
            role = pending.pop(0)
            if role not in found:
                found[role] = None
                pending += self.delegated_roles(role)
        return list(found)

    def targets_of(self, role: str) -> dict[str, FileMeta]:
        """The targets a trusted role lists within its effective paths; {} if not trusted."""
        trusted = self._targets.get(role)
        return trusted.in_path_targets() if trusted else {}

    def lookup(self, name: str, roles: Sequence[str] = (TARGETS,)) -> tuple[str, FileMeta] | None:
        """Notary's get-target-by-name (spec 4.6): the first role in ``roles`` priority listing it.

        Each entry's subtree is walked breadth-first, skipping the other entries' subtrees; a
        role is searched only if its effective paths allow ``name``. The hit may come from a
        delegation below the entry: whether to accept that is the caller's rule.
        """
        for start in roles:
            skip = set(roles) - {start}
            queue = deque([TARGETS])
            while queue:
                role = queue.popleft()
                trusted = self._targets.get(role)
                if trusted is None:
                    continue
                if start.startswith(role + "/"):  # an ancestor of the subtree: only pass through
                    queue.extend(self.delegated_roles(role))
                    continue
                in_subtree = role == start or role.startswith(start + "/")
                if role in skip or not in_subtree or not path_allowed(name, list(trusted.paths)):
                    continue
                meta = trusted.metadata.signed.targets.get(name)
                if meta is not None:
                    return role, meta
                queue.extend(self.delegated_roles(role))
        return None

    @property
    def expires_at(self) -> datetime:
        """The earliest expiry of the trusted root, timestamp, snapshot and targets roles:
        this trust data must be updated before then."""
        documents: list[Signed | None] = [self.root, self.timestamp, self.snapshot]
        documents += [self.targets(role) for role in self.walk()]
        return min(signed.expires_at for signed in documents if signed is not None)

    # -- updating -----------------------------------------------------------------------------

    def remember_cached(self, role: str, data: bytes) -> int | None:
        """Take ``data``, the cached copy of ``role``, as the lowest version now acceptable.

        The copy must still verify under the current trust (expiry ignored). One that does not,
        e.g. after the role's keys were rotated, sets no minimum: that is how a client recovers
        from a fast-forward attack. Returns the minimum set, if any.
        """
        try:
            if is_delegation_name(role):
                parent, delegation, _ = self._delegation(role)
                keys = parent.metadata.signed.delegations.role_keys(delegation)
                threshold = delegation.threshold
            else:
                keys, threshold = self._root_role(role)
            metadata = self._verify(role, data, signed_type(role), keys, threshold)
        except MetadataError as exc:
            logger.info("cached %s sets no minimum version: %s", role, exc)
            return None
        self._minimums[role] = metadata.signed.version
        return metadata.signed.version

    def update_root(self, data: bytes, *, intermediate: bool = False) -> Root:
        """Rotate trust to a newer root, signed by the trusted root's threshold and its own.

        ``intermediate`` marks a step of the rotation chain (``N.root.json``): exactly the next
        version, and it may be expired. Otherwise any newer, unexpired version is accepted.
        """
        if self._timestamp is not None:
            raise RuntimeError("the root cannot change once a timestamp is trusted")
        trusted = self.root
        new = Metadata.from_bytes(data, Root)
        version = new.signed.version
        if version <= trusted.version:
            raise RollbackError(ROOT, version, trusted.version + 1)
        if intermediate and version != trusted.version + 1:
            raise RootRotationError(f"expected root version {trusted.version + 1}: {version}")
        try:
            verify_root(new, self.gun, previous=trusted, allow_expired=intermediate, now=self.now)
        except RotationError as exc:
            raise RootRotationError(
                f"root version {version} is not signed by trusted root version {trusted.version}"
            ) from exc
        self._check_pinning(new, first_use=False)
        self._root, self._root_bytes = new, data
        return new.signed

    def update_timestamp(self, data: bytes) -> Timestamp:
        """Trust a timestamp: root's timestamp keys, no rollback, unexpired."""
        if self._snapshot is not None:
            raise RuntimeError("the timestamp cannot change once a snapshot is trusted")
        check_fresh(self.root, ROOT, self.now)
        new = self._verify(TIMESTAMP, data, Timestamp, *self._root_role(TIMESTAMP))
        new.signed.require_meta(SNAPSHOT)
        self._check_version(TIMESTAMP, new.signed)
        check_fresh(new.signed, TIMESTAMP, self.now)
        self._timestamp = new
        return new.signed

    def update_snapshot(self, data: bytes) -> Snapshot:
        """Trust a snapshot: the timestamp's hashes, root's snapshot keys, no rollback, unexpired.

        RootOutdatedError (carrying the listed root's meta) when everything else holds but the
        snapshot lists a root other than the trusted one.
        """
        if self._timestamp is None or self._targets:
            raise RuntimeError("a snapshot needs a trusted timestamp and comes before targets")
        self._timestamp.signed.meta[SNAPSHOT].verify(data, SNAPSHOT)
        new = self._verify(SNAPSHOT, data, Snapshot, *self._root_role(SNAPSHOT))
        new.signed.require_meta(ROOT, TARGETS)
        self._check_version(SNAPSHOT, new.signed)
        check_fresh(new.signed, SNAPSHOT, self.now)
        root_meta = new.signed.meta[ROOT]
        try:
            root_meta.verify(self._root_bytes, ROOT)
        except HashMismatchError:
            raise RootOutdatedError(root_meta) from None
        self._snapshot = new
        return new.signed

    def update_targets(self, data: bytes) -> Targets:
        """Trust ``targets``: the snapshot's hashes, root's targets keys, no rollback, unexpired."""
        if self._snapshot is None or self._targets:
            raise RuntimeError("targets needs a trusted snapshot and is loaded once")
        self._snapshot.signed.meta[TARGETS].verify(data, TARGETS)
        new = self._verify(TARGETS, data, Targets, *self._root_role(TARGETS))
        self._check_version(TARGETS, new.signed)
        check_fresh(new.signed, TARGETS, self.now)
        self._targets[TARGETS] = TrustedTargets(new, ("",))
        return new.signed

    def update_delegated(self, role: str, data: bytes) -> Targets | None:
        """Trust a delegation of a trusted parent, or skip it (None) if expired or under-signed.

        Hash mismatches, malformed documents and rollbacks are fatal (spec 4.2 step 4).
        """
        parent, delegation, paths = self._delegation(role)
        assert self._snapshot is not None  # a trusted parent implies a trusted snapshot
        meta = self._snapshot.signed.meta.get(role)
        if meta is None:
            raise DelegationError(f"the snapshot lists no {role}")
        if role in self._targets or role in self.invalid:
            raise RuntimeError(f"{role} is already loaded")
        meta.verify(data, role)
        if delegation.threshold < 1:
            return self._skip(role, f"{role} has threshold {delegation.threshold}")
        keys = parent.metadata.signed.delegations.role_keys(delegation)
        try:
            new = self._verify(role, data, Targets, keys, delegation.threshold)
        except (ThresholdError, UnsignedError, KeyIdMismatchError) as exc:
            return self._skip(role, str(exc))
        self._check_version(role, new.signed)
        try:
            check_fresh(new.signed, role, self.now)
        except ExpiredError as exc:
            return self._skip(role, str(exc))
        self._targets[role] = TrustedTargets(new, paths)
        return new.signed

    # -- helpers ------------------------------------------------------------------------------

    def _root_role(self, role: str) -> tuple[dict[str, Key], int]:
        return self.root.role_keys(role), self.root.roles[role].threshold

    @staticmethod
    def _verify(
        role: str, data: bytes, cls: type[S], keys: Mapping[str, Key], threshold: int
    ) -> Metadata[S]:
        metadata = Metadata.from_bytes(data, cls)
        verify_threshold(metadata, keys, threshold, role)
        return metadata

    def _check_version(self, role: str, signed: Signed) -> None:
        minimum = self._minimums.get(role, 0)
        if role == TIMESTAMP and self._timestamp is not None:
            minimum = max(minimum, self._timestamp.signed.version)
        if signed.version < minimum:
            raise RollbackError(role, signed.version, minimum)

    def _check_pinning(self, metadata: Metadata[Root], *, first_use: bool) -> None:
        """Spec 2.5 step 4-5: the root threshold met by pinned leaf certificates alone."""
        root = metadata.signed
        allowed = self._pinning.leaf_check(self.gun, first_use=first_use, now=self.now)
        rebuilt = root_certificate_keys(root, self.gun, self.now)
        pinned = {keyid: key for keyid, key in rebuilt.items() if allowed(key)}
        if not pinned:
            raise UntrustedRootError("unable to match any certificates to trust_pinning config")
        try:
            verify_threshold(metadata, pinned, root.roles[ROOT].threshold, ROOT)
        except ThresholdError as exc:
            raise UntrustedRootError("pinned certificates do not meet the root threshold") from exc

    def _delegation(self, role: str) -> tuple[TrustedTargets, DelegatedRole, tuple[str, ...]]:
        """The trusted parent of ``role``, its delegation entry and the effective paths."""
        parent = self._targets.get(parent_role(role)) if is_delegation_name(role) else None
        delegation = parent.metadata.signed.delegations.role(role) if parent else None
        if parent is None or delegation is None:
            raise DelegationError(f"no trusted role delegates to {role}")
        return parent, delegation, tuple(restrict_paths(delegation.paths, list(parent.paths)))

    def _skip(self, role: str, reason: str) -> None:
        logger.warning("skipping delegation %s of %s: %s", role, self.gun, reason)
        self.invalid[role] = reason
