"""Retention: remove the old versions of a GUN's metadata that no client can need.

Kept, per GUN: every root version (clients walk the ``N.root.json`` chain); the current
timestamp, the snapshot it names and every version that snapshot names; the highest stored
version of each role (a publish must still be refused below it); and, of each role's versions
strictly below those, the ``keep`` highest. Everything else goes, in audited batches.

Versions only ever grow: a publish or a re-sign racing a prune stores higher versions, and a
new snapshot names the versions it uploads or the current ones. Removing only versions
strictly below what was current when the GUN was read therefore never removes what a
concurrent write just made current, and no transaction is held while deciding. Each removal
transaction ends by checking that the timestamp that was current is still stored: if the GUN
was deleted meanwhile (and perhaps created anew, reusing version numbers), it rolls back and
the rest of the GUN is left alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tufnotary.metadata.errors import MetadataError
from tufnotary.metadata.model import ROOT, SNAPSHOT, TIMESTAMP, Metadata, Snapshot, Timestamp
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.metadata import MetadataStore
from tufnotary.server.storage.retention import GunReplaced, RetentionStore, StoredVersion

BATCH = 500
"""Rows removed per transaction: each is a few milliseconds, so publishes hardly wait."""
LOCK = "prune"
"""The name of the lock that lets one prune run at a time (storage.runlock)."""


class PruneError(Exception):
    """A GUN's current metadata cannot be read, so nothing of it is removed."""


@dataclass(frozen=True)
class RolePlan:
    """The versions of one role to remove."""

    role: str
    removed: tuple[StoredVersion, ...]
    kept: int

    def describe(self) -> str:
        versions = sorted(v.version for v in self.removed)
        span = str(versions[0]) if len(versions) == 1 else f"{versions[0]}-{versions[-1]}"
        return f"{self.role}: {len(versions)} versions ({span}), {self.kept} kept"


@dataclass(frozen=True)
class GunPlan:
    """What pruning removes of one GUN."""

    gun: str
    roles: tuple[RolePlan, ...]
    anchor: str
    """The sha256 of the timestamp that was current."""

    @property
    def count(self) -> int:
        return sum(len(role.removed) for role in self.roles)


@dataclass
class PruneReport:
    """The outcome of a prune: what was (or, dry, would be) removed, and the GUNs skipped."""

    plans: list[GunPlan] = field(default_factory=list)
    removed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Current:
    """The version of each role the current timestamp reaches, and that timestamp's sha256."""

    versions: dict[str, int]
    timestamp_sha256: str


def current_versions(store: MetadataStore, gun: str) -> Current | None:
    """What the current timestamp reaches (itself, its snapshot and the roles the snapshot
    names, root excluded), None without a timestamp; PruneError if it cannot be resolved."""
    timestamp = store.latest(gun, TIMESTAMP)
    if timestamp is None:
        return None
    try:
        entry = Metadata.from_bytes(timestamp.data, Timestamp).signed.meta.get(SNAPSHOT)
        snapshot = store.by_checksum(gun, SNAPSHOT, entry.sha256_hex or "") if entry else None
        if snapshot is None:
            raise PruneError(f"{gun}: the current timestamp names no stored snapshot")
        named = Metadata.from_bytes(snapshot.data, Snapshot).signed.meta
    except MetadataError as exc:
        raise PruneError(f"{gun}: current metadata does not load: {exc}") from exc
    versions = {TIMESTAMP: timestamp.version, SNAPSHOT: snapshot.version}
    for role, meta in named.items():
        if role == ROOT:
            continue
        found = store.by_checksum(gun, role, meta.sha256_hex or "")
        if found is None:
            raise PruneError(f"{gun}: the current snapshot names a {role} that is not stored")
        versions[role] = found.version
    return Current(versions, timestamp.sha256)


def plan(gun: str, stored: Sequence[StoredVersion], current: Current, keep: int) -> GunPlan:
    """The versions of ``stored`` to remove, given the ``current`` version of each role."""
    by_role: dict[str, list[StoredVersion]] = defaultdict(list)
    for version in stored:
        if version.role != ROOT:
            by_role[version.role].append(version)
    roles = []
    for role, versions in sorted(by_role.items()):
        highest = max(v.version for v in versions)
        below = min(current.versions.get(role, highest), highest)
        older = sorted((v for v in versions if v.version < below), key=lambda v: -v.version)
        if len(older) > keep:
            roles.append(RolePlan(role, tuple(older[keep:]), len(versions) - len(older[keep:])))
    return GunPlan(gun, tuple(roles), current.timestamp_sha256)


def prune(
    metadata: MetadataStore,
    retention: RetentionStore,
    guns: Iterable[str],
    keep: int,
    *,
    dry_run: bool = False,
    actor: str = "cli",
    batch: int = BATCH,
    progress: Callable[[GunPlan], None] = lambda _: None,
) -> PruneReport:
    """Prune each of ``guns`` (see the module); ``progress`` sees each GUN's plan before it
    is carried out. A GUN whose current metadata cannot be read is skipped, not pruned."""
    report = PruneReport()
    for gun in guns:
        try:
            current = current_versions(metadata, gun)
        except PruneError as exc:
            report.skipped[gun] = str(exc)
            continue
        if current is None:
            continue
        gun_plan = plan(gun, retention.versions(gun), current, keep)
        if not gun_plan.count:
            continue
        report.plans.append(gun_plan)
        progress(gun_plan)
        if not dry_run:
            try:
                _remove(retention, gun_plan, keep, actor, batch, report)
            except GunReplaced as exc:
                report.skipped[gun] = str(exc)
    return report


def _remove(
    retention: RetentionStore,
    gun_plan: GunPlan,
    keep: int,
    actor: str,
    batch: int,
    report: PruneReport,
) -> None:
    """Remove the plan's rows, ``batch`` per audited transaction, lowest versions first."""
    rows = sorted(
        (version for role in gun_plan.roles for version in role.removed),
        key=lambda v: (v.role, v.version),
    )
    for start in range(0, len(rows), batch):
        chunk: dict[str, list[int]] = {}
        for row in rows[start : start + batch]:
            chunk.setdefault(row.role, []).append(row.version)
        detail = {
            "keep": keep,
            "removed": {
                role: {"count": len(vs), "lowest": vs[0], "highest": vs[-1]}
                for role, vs in chunk.items()
            },
        }
        audit = AuditEntry(actor, "prune", gun_plan.gun, detail)
        report.removed += retention.remove(gun_plan.gun, chunk, gun_plan.anchor, audit)
