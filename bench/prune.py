"""Retention: how long `tufnotary-server prune` takes over 100,000 stored versions, and how
long each of its transactions holds the database (what a concurrent publish may wait).

Fills a fresh database directly (bulk inserts, no publishes, then ANALYZE): ``--guns``
repositories, each with root 1 and ``--versions / guns / 3`` versions of targets, snapshot and
timestamp whose newest ones chain like published metadata (unsigned: prune reads, never
verifies). Then runs
the dry run and the prune (``--keep``, ``--batch``) through the same code as the command, and
prints the times, rows per second, and the median and longest removal transaction. Tests never
assert on timings.

Run: ``.venv/bin/python bench/prune.py [--versions 100000] [--guns 10] [--keep 10]
[--engines sqlite,postgresql,mariadb]`` (PostgreSQL and MariaDB as in tests/conftest.py:
``TUFNOTARY_TEST_POSTGRES_URL``, ``TUFNOTARY_TEST_MARIADB_URL``; scratch databases are dropped).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    FileMeta,
    Metadata,
    Snapshot,
    Targets,
    Timestamp,
    format_expires,
)
from tufnotary.server import prune
from tufnotary.server.migrate import upgrade
from tufnotary.server.storage import Stores
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.engine import make_engine
from tufnotary.server.storage.models import TufFileRow
from tufnotary.server.storage.retention import RetentionStore

ADMIN = {
    "postgresql": ("TUFNOTARY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    "mariadb": ("TUFNOTARY_TEST_MARIADB_URL", "mariadb://root@127.0.0.1:3306/"),
}
CHUNK = 5000


class TimedRetention(RetentionStore):
    """Records how long each removal transaction takes."""

    seconds: list[float]

    def remove(
        self, gun: str, versions: Mapping[str, Sequence[int]], anchor: str, audit: AuditEntry
    ) -> int:
        started = time.perf_counter()
        removed = super().remove(gun, versions, anchor, audit)
        self.seconds.append(time.perf_counter() - started)
        return removed


@contextmanager
def database(engine_id: str, folder: Path) -> Iterator[str]:
    """A fresh database URL on ``engine_id``, dropped afterwards."""
    if engine_id == "sqlite":
        yield f"sqlite:///{folder / 'prune.db'}"
        return
    variable, default = ADMIN[engine_id]
    admin_url = sa.make_url(os.environ.get(variable, default))
    name = f"day2_bench_prune_{uuid.uuid4().hex[:8]}"
    admin = make_engine(admin_url.render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f"DROP DATABASE {name}")
        admin.dispose()


def _doc(signed: Any) -> bytes:
    return Metadata(signed).to_bytes()


def rows_of(gun: str, per_role: int, now: datetime) -> Iterator[dict[str, Any]]:
    """The rows of one repository: root 1, and ``per_role`` versions of the other roles whose
    newest ones chain (timestamp -> snapshot -> targets and root)."""
    expires = format_expires(now + timedelta(days=365))
    root = b'{"signed":{"_type":"Root","version":1},"signatures":[]}'
    targets = _doc(Targets(per_role, expires))
    snapshot = _doc(
        Snapshot(per_role, expires, {ROOT: FileMeta.of(root), TARGETS: FileMeta.of(targets)})
    )
    timestamp = _doc(Timestamp(per_role, expires, {SNAPSHOT: FileMeta.of(snapshot)}))
    newest = {TARGETS: targets, SNAPSHOT: snapshot, TIMESTAMP: timestamp}

    def row(role: str, version: int, data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        return dict(created_at=now, gun=gun, role=role, version=version, sha256=digest, data=data)

    yield row(ROOT, 1, root)
    for role in (TARGETS, SNAPSHOT, TIMESTAMP):
        for version in range(1, per_role):
            yield row(role, version, f'{{"{role}":{version},"gun":"{gun}"}}'.encode())
        yield row(role, per_role, newest[role])


def fill(stores: Stores, guns: int, per_role: int) -> int:
    now, rows, count = datetime.now(UTC), [], 0
    with stores.engine.begin() as connection:
        for index in range(guns):
            for row in rows_of(f"registry.example.com/bench/prune-{index}", per_role, now):
                rows.append(row)
                if len(rows) == CHUNK:
                    connection.execute(sa.insert(TufFileRow), rows)
                    count, rows = count + len(rows), []
        if rows:
            connection.execute(sa.insert(TufFileRow), rows)
            count += len(rows)
    # Statistics, as a table grown over months has them (autovacuum / InnoDB's own); without
    # them PostgreSQL scans every row of a GUN for each batch instead of the unique index.
    if stores.engine.dialect.name != "sqlite":
        analyze = (
            "ANALYZE tuf_files"
            if stores.engine.dialect.name == "postgresql"
            else "ANALYZE TABLE tuf_files"
        )
        with stores.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(analyze)
    return count


def run(engine_id: str, options: argparse.Namespace, folder: Path) -> None:
    per_role = options.versions // options.guns // 3
    with database(engine_id, folder) as url:
        upgrade(url)
        stores = Stores.from_url(url)
        try:
            started = time.perf_counter()
            stored = fill(stores, options.guns, per_role)
            filled = time.perf_counter() - started
            retention = TimedRetention(stores.database)
            retention.seconds = []
            guns = retention.guns()

            started = time.perf_counter()
            dry = prune.prune(stores.metadata, retention, guns, options.keep, dry_run=True)
            dry_seconds = time.perf_counter() - started
            started = time.perf_counter()
            report = prune.prune(
                stores.metadata, retention, guns, options.keep, batch=options.batch
            )
            seconds = time.perf_counter() - started
        finally:
            stores.engine.dispose()
    planned = sum(plan.count for plan in dry.plans)
    assert report.removed == planned and not report.skipped
    batches = retention.seconds
    print(
        f"{engine_id:10} {stored:>8} rows stored in {filled:6.1f} s | dry run {dry_seconds:5.2f} s"
        f" | prune {report.removed} rows in {seconds:6.2f} s ({report.removed / seconds:,.0f}/s)"
        f" | {len(batches)} transactions of {options.batch}: median"
        f" {statistics.median(batches) * 1000:.1f} ms, longest {max(batches) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--guns", type=int, default=10)
    parser.add_argument("--keep", type=int, default=10)
    parser.add_argument("--batch", type=int, default=prune.BATCH)
    parser.add_argument("--engines", default="sqlite,postgresql,mariadb")
    options = parser.parse_args()
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as folder:
        for engine_id in options.engines.split(","):
            run(engine_id, options, Path(folder))


if __name__ == "__main__":
    main()
