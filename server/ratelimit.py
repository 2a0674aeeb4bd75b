"""Sliding-window rate limits counted in the database, so every worker and every server on the
same database sees the same counts; expired events are deleted as new ones arrive, which bounds
the table to one window of events."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tufnotary.server.errors import Unavailable
from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.ratelimit import RateEvents

MAX_BUCKET = 300


@contextmanager
def _fail_closed() -> Iterator[None]:
    """A database failure refuses the request (503) rather than skipping the limit."""
    try:
        yield
    except StorageError as exc:
        raise Unavailable(log=str(exc)) from exc


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` events per key within ``window`` seconds; keys of one limit share
    the ``kind`` prefix in the database."""

    store: RateEvents
    kind: str
    limit: int
    window: int

    def retry_after(self, *keys: str) -> int:
        """Seconds until every one of ``keys`` is below the limit again (0: now)."""
        now = datetime.now(UTC)
        wait = 0.0
        for key in keys:
            with _fail_closed():
                expiries = self.store.recent(self._bucket(key), now, self.limit)
            if len(expiries) >= self.limit:
                wait = max(wait, (expiries[-1] - now).total_seconds())
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def hit(self, *keys: str) -> None:
        """Count one event for each of ``keys``."""
        now = datetime.now(UTC)
        buckets = [self._bucket(key) for key in dict.fromkeys(keys)]
        with _fail_closed():
            self.store.add(buckets, now, now + timedelta(seconds=self.window))

    def _bucket(self, key: str) -> str:
        return f"{self.kind}:{key}"[:MAX_BUCKET]
