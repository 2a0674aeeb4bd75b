"""Rate-limit events shared by all workers (failed logins, server-key creations)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from tufnotary.server.storage.engine import Store
from tufnotary.server.storage.models import RateEventRow


class RateEvents(Store):
    """Counted events of rate-limit buckets, each counting until it expires."""

    def recent(self, bucket: str, now: datetime, limit: int) -> list[datetime]:
        """When the newest ``limit`` unexpired events of ``bucket`` expire, latest first."""
        query = (
            sa.select(RateEventRow.expires_at)
            .where(RateEventRow.bucket == bucket, RateEventRow.expires_at > now)
            .order_by(RateEventRow.expires_at.desc())
            .limit(limit)
        )
        with self._db.transaction("rate events") as connection:
            return list(connection.scalars(query))

    def add(self, buckets: Sequence[str], now: datetime, expires_at: datetime) -> None:
        """Count one event in each bucket until ``expires_at``; forget every expired event."""
        with self._db.transaction("add rate events", write=True) as connection:
            connection.execute(sa.delete(RateEventRow).where(RateEventRow.expires_at <= now))
            connection.execute(
                sa.insert(RateEventRow), [{"bucket": b, "expires_at": expires_at} for b in buckets]
            )
