"""Trust data per repository, kept in memory between admissions.

Each (trust server, root pinning, repository) has one :class:`Repository` with a trust
directory of its own (so a pinned rule never inherits a root trusted on first use by an
unpinned one). Its trust data is used without asking the server for ``refresh_seconds`` after
an update, and never past the earliest expiry of what it trusts; then the next admission
updates it with every TUF check. Concurrent admissions of a repository that needs an update
share one: the first runs it, the others wait for its outcome (a failure too, so a trust server
that is down costs one timeout, not one per waiting admission).
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests

from tufnotary.admission.policy import Rule, TrustServer
from tufnotary.client.images import Policy, VerifiedImage
from tufnotary.client.remote import Remote
from tufnotary.client.repository import Repository
from tufnotary.client.trustdir import TrustDir

HIT, REFRESH, SHARED = "hit", "refresh", "shared"
"""Cache events: answered from memory, updated from the server, waited for another update."""

CacheEvent = Callable[[str], None]


@dataclass
class _Flight:
    """One update in progress: waiters block on ``done`` and then read ``error``."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass
class _Entry:
    repository: Repository
    fresh_until: float = 0.0  # time.monotonic()
    flight: _Flight | None = None


class TrustCache:
    """Verifies images against trust data kept per repository (see the module docstring).

    ``directory``: where the trust directories go (default: a temporary directory removed when
    this object is); ``session``: the HTTP session of every request to the trust servers.
    """

    def __init__(
        self,
        refresh_seconds: float,
        *,
        directory: Path | None = None,
        session: requests.Session | None = None,
        on_event: CacheEvent | None = None,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self._tmp = tempfile.TemporaryDirectory(prefix="tufnotary-admission-", dir=directory)
        self._session = session or requests.Session()
        self._on_event = on_event or (lambda _event: None)
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._lock = threading.Lock()

    def verify(
        self, rule: Rule, server: TrustServer, gun: str, tag: str | None, digest: str | None
    ) -> VerifiedImage:
        """The signed digest of ``gun:tag`` (or a tag signed with ``digest``) under ``rule``.

        Raises what ``Repository.verify_image`` raises: the trust server's failures and every
        reason an image is not trusted.
        """
        entry = self._entry(rule, server, gun)
        if time.monotonic() >= entry.fresh_until:
            self._update(entry)
        else:
            self._on_event(HIT)
        policy = Policy(required_roles=rule.require_roles)
        return entry.repository.verify_image(tag, digest, policy, update=False)

    def _entry(self, rule: Rule, server: TrustServer, gun: str) -> _Entry:
        pins = (rule.pin_root_ca or "", *rule.pin_root_certs)
        key = (server.url, server.ca or "", *pins, "\0", gun)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                context = hashlib.sha256(repr(key[:-1]).encode()).hexdigest()[:16]
                remote = Remote(server.url, server.verify, server.timeout, self._session)
                trustdir = TrustDir(Path(self._tmp.name) / context)
                repository = Repository(gun, remote, trustdir, pinning=rule.pinning)
                entry = self._entries[key] = _Entry(repository)
            return entry

    def _update(self, entry: _Entry) -> None:
        """Update ``entry`` from its server, or wait for the update another admission runs."""
        with self._lock:
            flight = entry.flight
            leading = flight is None
            if flight is None:
                flight = entry.flight = _Flight()
        if not leading:
            self._on_event(SHARED)
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return
        self._on_event(REFRESH)
        try:
            trusted = entry.repository.refresh()
            lifetime = (trusted.expires_at - datetime.now(UTC)).total_seconds()
            entry.fresh_until = time.monotonic() + min(self.refresh_seconds, lifetime)
        except BaseException as exc:
            entry.fresh_until = 0.0
            flight.error = exc
            raise
        finally:
            with self._lock:
                entry.flight = None
            flight.done.set()
