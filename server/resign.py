"""The re-signing pass: server-held timestamps (and server-managed snapshots) re-signed ahead
of expiry, so idle repositories never serve metadata about to expire and reads never sign.

What is due, and how it is re-signed, is the read path's own logic
(:meth:`TrustService.resign`): the pass only runs it for every GUN with ``refresh_margin`` set
to ``within``. It also records the soonest expiry per role for the metrics gauge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tufnotary.metadata.errors import MetadataError
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    Metadata,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
)
from tufnotary.server.errors import ServerError
from tufnotary.server.keybackend import KeyBackendError
from tufnotary.server.service import Requester, TrustService
from tufnotary.server.signer import KeyDecryptionError
from tufnotary.server.storage import Stores
from tufnotary.server.storage.expiry import ExpiryStore, SoonestExpiry
from tufnotary.server.storage.retention import RetentionStore
from tufnotary.server.storage.runlock import exclusive
from tufnotary.server.updates import TIMESTAMP_LIFETIME

log = logging.getLogger(__name__)

DEFAULT_WITHIN = TIMESTAMP_LIFETIME / 3
"""Re-sign what expires within a third of a timestamp's lifetime (14 days / 3)."""
LOCK = "resign"
"""The name of the lock that lets one pass run at a time (storage.runlock)."""
WATCHED: dict[str, type[Signed]] = {
    TIMESTAMP: Timestamp,
    SNAPSHOT: Snapshot,
    TARGETS: Targets,
    ROOT: Root,
}
"""The roles whose soonest expiry is recorded (delegations are not)."""


@dataclass
class ResignReport:
    """The outcome of one pass."""

    checked: int = 0
    resigned: dict[str, dict[str, int]] = field(default_factory=dict)
    """GUN -> {role: new version} of what this pass re-signed."""
    due: dict[str, list[str]] = field(default_factory=dict)
    """GUN -> roles that expire within the margin and were not re-signed (the server holds
    no key for them)."""
    failed: dict[str, str] = field(default_factory=dict)
    soonest: dict[str, SoonestExpiry] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.due and not self.failed

    def summary(self) -> str:
        return (
            f"{self.checked} repositories checked, {len(self.resigned)} re-signed, "
            f"{len(self.due)} still expiring soon, {len(self.failed)} failed"
        )


def expiries(service: TrustService, gun: str) -> dict[str, datetime]:
    """When each watched role of ``gun``'s current metadata expires."""
    found = {}
    for role, signed_class in WATCHED.items():
        file = service.current_file(gun, role)
        if file is not None:
            found[role] = Metadata.from_bytes(file.data, signed_class).signed.expires_at
    return found


def resign_all(service: TrustService, guns: Iterable[str], by: Requester) -> ResignReport:
    """Re-sign what is due in each of ``guns`` (``service.refresh_margin`` is the margin)."""
    report, started = ResignReport(), datetime.now(UTC)
    for gun in guns:
        report.checked += 1
        try:
            stored = service.resign(gun, by)
            expires = expiries(service, gun)
        except (ServerError, MetadataError, KeyDecryptionError, KeyBackendError) as exc:
            log.error("cannot re-sign %s: %s", gun, exc)
            report.failed[gun] = str(exc)
            continue
        if stored:
            report.resigned[gun] = {file.role: file.version for file in stored}
        horizon = datetime.now(UTC) + service.refresh_margin
        due = [
            role
            for role in (TIMESTAMP, SNAPSHOT)
            if role in expires
            and expires[role] <= horizon
            and role not in report.resigned.get(gun, {})
        ]
        if due:
            report.due[gun] = due
        for role, when in expires.items():
            known = report.soonest.get(role)
            if known is None or when < known.expires_at:
                report.soonest[role] = SoonestExpiry(role, gun, when, started)
        time.sleep(0)  # in serve's gevent workers: let the worker's requests run between GUNs
    return report


def run_pass(
    stores: Stores,
    service: TrustService,
    by: Requester,
    guns: Sequence[str] = (),
    *,
    unless_since: timedelta | None = None,
) -> ResignReport | None:
    """One pass under the lock, over ``guns`` or else every GUN (then the soonest expiries are
    recorded); None, having done nothing, when another runner holds the lock or (with
    ``unless_since``) a full pass was recorded less than that long ago."""
    expiry = ExpiryStore(stores.database)
    with exclusive(stores.engine, LOCK) as held:
        if not held:
            return None
        if unless_since is not None:
            recorded = [entry.computed_at for entry in expiry.soonest()]
            if recorded and max(recorded) > datetime.now(UTC) - unless_since:
                return None
        report = resign_all(service, guns or RetentionStore(stores.database).guns(), by)
        if not guns:
            expiry.replace(report.soonest.values())
        return report


def start_background(stores: Stores, service: TrustService, interval: float) -> threading.Thread:
    """A daemon thread that runs a full pass about every ``interval`` seconds: every worker
    of every server runs one, but the lock and the recorded time of the last pass let only
    one of them work per interval. Failures are logged and retried next interval."""
    by = Requester("resign-thread")

    def loop() -> None:
        while True:
            try:
                report = run_pass(stores, service, by, unless_since=timedelta(seconds=interval))
            except Exception:
                log.exception("the background resign pass failed")
            else:
                if report is not None:
                    log.info("background resign pass: %s", report.summary())
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="tufnotary-resign", daemon=True)
    thread.start()
    return thread


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``5d`` or ``2w`` as a timedelta; ValueError otherwise."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 24h, 5d or 2w")
    return timedelta(**{units[unit]: int(number)})
