"""The ``tufnotary_metadata_soonest_expiry_seconds`` gauge: per role, how long until the
first GUN's current metadata expires, as the last resign pass recorded it (a scrape reads a
few rows, never every GUN's metadata), and how old that record is."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.expiry import ExpiryStore

SOONEST_EXPIRY = "tufnotary_metadata_soonest_expiry_seconds"
RECORD_AGE = "tufnotary_metadata_expiry_record_age_seconds"


class SoonestExpiryCollector(Collector):
    """One series per role (timestamp, snapshot, targets, root), never per GUN."""

    def __init__(self, store: ExpiryStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            recorded = self._store.soonest()
        except StorageError:
            return  # the scrape shows the other metrics; the database error is logged
        soonest = GaugeMetricFamily(
            SOONEST_EXPIRY,
            "Seconds until the first repository's current metadata of a role expires "
            "(negative: expired), as the last `tufnotary-server resign` pass found it.",
            labels=["role"],
        )
        age = GaugeMetricFamily(
            RECORD_AGE, "Seconds since the last full `tufnotary-server resign` pass started."
        )
        now = datetime.now(UTC)
        for entry in recorded:
            soonest.add_metric([entry.role], (entry.expires_at - now).total_seconds())
        yield soonest
        if recorded:
            age.add_metric([], (now - max(e.computed_at for e in recorded)).total_seconds())
            yield age
