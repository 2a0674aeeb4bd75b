"""Import time from a self-hosted Notary's databases (`tufnotary-server import --from-notary-db`).

Builds, on PostgreSQL, what notary-server and notary-signer would hold for one repository that
reached ``--tags`` tags in ``--versions`` publishes (each publish adds tags/versions tags and
makes a new targets, snapshot and timestamp version, signed as the Go client and the server sign
them): notary-server's ``tuf_files`` and ``changefeed`` and notary-signer's ``private_keys``
(the timestamp key as a JWE under a passphrase alias). Then times `tufnotary-server import` (a
subprocess, wall clock) into a fresh migrated PostgreSQL database, and a re-run that adds
nothing. Tests never assert on timings.

Run: ``.venv/bin/python bench/import_db.py [--tags 10000] [--versions 100]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support.databases import scratch_database  # noqa: E402
from support.notary_stack import (  # noqa: E402
    create_notary_tables,
    published_files,
    write_notary_rows,
)
from tufnotary.metadata.signing import PrivateKey  # noqa: E402
from tufnotary.server.migrate import upgrade  # noqa: E402
from tufnotary.server.storage.engine import make_engine  # noqa: E402

GUN = "registry.example.com/bench/imported"
ALIAS, PASSPHRASE = "bench", "bench signer passphrase"
ADMIN_URL = os.environ.get(
    "TUFNOTARY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def timed_import(our_url: str, server_url: str, signer_url: str) -> tuple[float, str]:
    command = [
        sys.executable,
        "-m",
        "tufnotary.server.cli",
        "import",
        "--database",
        our_url,
        "--from-notary-db",
        server_url,
        "--signer-db",
        signer_url,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUFNOTARY_")}
    env |= {"TUFNOTARY_KEY_PASSPHRASE": "bench", f"NOTARY_SIGNER_{ALIAS.upper()}": PASSPHRASE}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stdout.strip()


@contextmanager
def databases() -> Iterator[tuple[str, str, str]]:
    admin_engine = make_engine(ADMIN_URL)
    with ExitStack() as stack:
        admin = stack.enter_context(
            admin_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        )
        url = sa.make_url(ADMIN_URL)
        yield tuple(stack.enter_context(scratch_database(admin, url)) for _ in range(3))  # type: ignore[misc]
    admin_engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=100)
    args = parser.parse_args()
    started = time.perf_counter()
    key = PrivateKey.generate()
    files = published_files(GUN, key, args.versions, args.tags // args.versions)
    size = sum(len(file.data) for file in files)
    print(
        f"built {len(files)} files, {size / 1e6:.1f} MB, in {time.perf_counter() - started:.0f} s"
    )
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with databases() as (server_url, signer_url, our_url):
        create_notary_tables(server_url, signer_url)
        write_notary_rows(server_url, signer_url, GUN, files, key, (ALIAS, PASSPHRASE))
        upgrade(our_url)
        first, summary = timed_import(our_url, server_url, signer_url)
        again, _ = timed_import(our_url, server_url, signer_url)
    print(summary)
    print(
        f"import: {first:.1f} s ({len(files) / first:.0f} files/s, {size / 1e6 / first:.1f} MB/s)"
    )
    print(f"re-run (nothing to add): {again:.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
