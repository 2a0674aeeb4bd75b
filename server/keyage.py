"""The ``tufnotary_server_key_age_seconds`` gauge: how old the server's online keys are."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.keys import ServerKeyStore

KEY_AGE = "tufnotary_server_key_age_seconds"


class KeyAgeCollector(Collector):
    """Per role (timestamp, snapshot), the age of the oldest key some GUN currently signs
    with, read from the database at each scrape; one series per role, never per GUN."""

    def __init__(self, store: ServerKeyStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            KEY_AGE,
            "Age of the oldest server-held key some repository currently signs with, by role.",
            labels=["role"],
        )
        try:
            created = self._store.current_key_ages()
        except StorageError:
            return  # the scrape shows the other metrics; the database error is logged
        now = datetime.now(UTC)
        for role, made in sorted(created.items()):
            gauge.add_metric([role], (now - made).total_seconds())
        yield gauge
