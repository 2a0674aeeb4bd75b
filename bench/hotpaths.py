"""Deterministic costs of the hot requests, in-process: statements and Python calls per request.

Wall-clock numbers on a shared machine are noise; these are not. Each scenario builds an app
(as a `serve` worker does) on a fresh SQLite or PostgreSQL database, prepares what it needs,
then sends N requests straight to the WSGI application (no HTTP, no TLS) and reports per
request: SQL statements sent through SQLAlchemy, statements sent on every connection
(SQLAlchemy's, the change signal's, reads on pooled DB-API connections), and Python function
calls (cProfile). With ``--callgrind``, run under
``valgrind --tool=callgrind --instr-atstart=no``: only the measured requests are counted
(a helper built with gcc and valgrind's callgrind.h switches collection on and off), so the
reported total divided by the requests is instructions per request.

Run: ``.venv/bin/python bench/hotpaths.py checksum [--database postgresql://...] [--top 15]``.
Scenarios: ``checksum`` (small targets by checksum, cached), ``timestamp`` (current, cached),
``missing`` (404 of an unknown repository, cached), ``publish`` (one new target, client-held
snapshot), ``publish-large`` (one new tag in a ``--tags`` repository), ``scale`` (current
timestamp of random repositories among ``--repos`` on SQLite, as bench/run.py's scale run:
nearly every read misses the response cache).
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import hashlib
import io
import pstats
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from werkzeug.test import EnvironBuilder

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from run import SCALE_VERSIONS, add_repositories, docker_target  # noqa: E402

from support.api import Server, multipart  # noqa: E402
from support.repo import RepoBuilder  # noqa: E402
from tufnotary.metadata.model import SNAPSHOT, TARGETS  # noqa: E402
from tufnotary.server.app import create_app  # noqa: E402
from tufnotary.server.config import Settings  # noqa: E402
from tufnotary.server.context import server_context  # noqa: E402
from tufnotary.server.migrate import upgrade  # noqa: E402

GUN = "bench.example.com/hot"
_CALLGRIND_TOGGLE = """
#include <valgrind/callgrind.h>
void start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void stop(void) { CALLGRIND_DUMP_STATS; CALLGRIND_STOP_INSTRUMENTATION; }
"""


def callgrind_toggle(tmp: Path) -> ctypes.CDLL:
    """start() and stop() of callgrind's instrumentation (no-ops outside valgrind)."""
    (tmp / "toggle.c").write_text(_CALLGRIND_TOGGLE)
    library = tmp / "toggle.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", library, tmp / "toggle.c"], check=True)
    return ctypes.CDLL(str(library))


class Counter:
    """Counts statements: those SQLAlchemy sends, and every statement any connection sends
    (SQLAlchemy's, the change signal's and reads run on a pooled DB-API connection)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.orm = self.sent = 0
        sa.event.listen(engine, "before_cursor_execute", self._count)
        sa.event.listen(engine, "connect", lambda connection, _record: self.watch(connection))
        engine.dispose()  # the pool's connections are made anew, and watched, from now on

    def _count(self, *_args: Any) -> None:
        self.orm += 1

    def watch(self, connection: Any) -> None:
        """Count what ``connection`` (a DB-API connection) sends."""
        if isinstance(connection, sqlite3.Connection):
            connection.set_trace_callback(self._sent)
        elif isinstance(connection, psycopg.Connection):
            counter = self

            class Counted(psycopg.Cursor):  # type: ignore[type-arg]
                def execute(self, *args: Any, **kwargs: Any) -> Any:
                    counter.sent += 1
                    return super().execute(*args, **kwargs)

            connection.cursor_factory = Counted

    def _sent(self, _statement: str) -> None:
        self.sent += 1


def environ(method: str, path: str, body: bytes = b"", content_type: str = "") -> dict[str, Any]:
    builder = EnvironBuilder(path=path, method=method, data=body, content_type=content_type or None)
    try:
        return builder.get_environ()
    finally:
        builder.close()


def call(app: Callable[..., Any], env: dict[str, Any]) -> str:
    statuses: list[str] = []
    result = app(env, lambda status, _headers, _exc=None: statuses.append(status))
    b"".join(result)
    getattr(result, "close", lambda: None)()
    return statuses[0]


def seed_repositories(database: Path, repos: int) -> None:
    """As bench/run.py's scale run: ``repos`` repositories of SCALE_VERSIONS versions each,
    the newest being GUN's files, inserted directly."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT role, sha256, data, created_at FROM tuf_files WHERE gun = ?"
            " ORDER BY version DESC",
            (GUN,),
        ).fetchall()
    current: dict[str, tuple[str, bytes, str]] = {}
    for role, digest, data, created in rows:
        current.setdefault(role, (digest, data, created))
    add_repositories(database, current, 0, repos, (hashlib.sha256(b"{}").hexdigest(), b"{}"))


def prepare(
    server: Server, scenario: str, requests: int, tags: int, repos: int
) -> list[dict[str, Any]]:
    """The environs of the measured requests (built before measuring)."""
    repo = RepoBuilder(GUN, server.server_key(GUN, "timestamp"))
    if scenario == "publish-large":
        for index in range(tags):
            name, meta = docker_target(index)
            repo.targets[TARGETS].targets[name] = meta
    assert server.upload(GUN, repo.first_publish()).status_code == 200
    if scenario == "scale":  # GET timestamp.json of random repositories, nearly all misses
        database = sa.make_url(server.settings.effective_database_url).database
        seed_repositories(Path(str(database)), repos)
        chosen = random.Random(8).sample(range(repos), min(repos, requests + 2))
        return [
            environ("GET", server.tuf(f"scale.example.com/repo-{i}", "timestamp.json"))
            for i in chosen
        ]
    if scenario in ("checksum", "timestamp", "missing"):
        name = {
            "checksum": f"targets.{hashlib.sha256(repo.files[TARGETS]).hexdigest()}.json",
            "timestamp": "timestamp.json",
            "missing": "timestamp.json",
        }[scenario]
        gun = "bench.example.com/unknown" if scenario == "missing" else GUN
        return [environ("GET", server.tuf(gun, name)) for _ in range(requests + 2)]
    bodies = []
    for index in range(requests):
        name, meta = docker_target(tags + index)
        repo.targets[TARGETS].targets[name] = meta
        files = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
        bodies.append(multipart(files.items()))
    return [environ("POST", server.tuf(GUN), body, kind) for body, kind in bodies]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenario",
        choices=("checksum", "timestamp", "missing", "scale", "publish", "publish-large"),
    )
    parser.add_argument(
        "--repos",
        type=int,
        default=100_000,
        help=f"repositories of scale ({SCALE_VERSIONS} versions each)",
    )
    parser.add_argument("--database", help="a fresh, empty database URL (default: SQLite)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tags", type=int, default=10_000, help="tags of publish-large")
    parser.add_argument(
        "--log-level", default="info", help="info (default): with the access log line"
    )
    parser.add_argument("--sort", default="tottime", help="order of --top (pstats key)")
    parser.add_argument("--callers", help="print the callers of functions matching this regex")
    parser.add_argument("--top", type=int, default=0, help="print the N costliest functions")
    parser.add_argument(
        "--callgrind", action="store_true", help="no cProfile; count only the requests"
    )
    parser.add_argument(
        "--read-staleness-ms",
        type=int,
        default=Settings.read_staleness_ms,
        help="PostgreSQL: the setting (0: a signal query per read; large: none under callgrind)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hotpaths-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            database_url=args.database,
            key_passphrase="bench passphrase",
            log_level=args.log_level,
            read_staleness_ms=args.read_staleness_ms,
        )
        upgrade(settings.effective_database_url)
        app = create_app(settings)
        toggle = callgrind_toggle(Path(tmp)) if args.callgrind else None
        return run(Server(app, app.test_client(), settings), args, toggle)


def run(server: Server, args: argparse.Namespace, toggle: ctypes.CDLL | None) -> int:
    context = server_context(server.app)
    counter = Counter(context.stores.engine)
    environs = prepare(server, args.scenario, args.requests, args.tags, args.repos)
    wsgi = server.app.wsgi_app
    reads = args.scenario in ("checksum", "timestamp", "missing", "scale")
    if reads:  # fill the cache: the measured requests are hits
        for env in environs[:2]:
            call(wsgi, env)
        environs = environs[2:]
        signals = getattr(wsgi, "_signals", None)
        if getattr(signals, "_connection", None) is not None:
            counter.watch(signals._connection)  # type: ignore[union-attr]
    counter.orm = counter.sent = 0
    profile = None if toggle else cProfile.Profile()
    if profile is not None:
        profile.enable()
    if toggle is not None:
        toggle.start()
    began = time.perf_counter()
    statuses = [call(wsgi, env) for env in environs]
    took = time.perf_counter() - began
    if toggle is not None:
        toggle.stop()
    if profile is not None:
        profile.disable()
    count = len(environs)
    print(f"{args.scenario}: {count} requests, statuses {sorted(set(statuses))}")
    print(f"  wall-clock ms per request (noisy on a shared machine): {took * 1000 / count:.3f}")
    print(f"  SQLAlchemy statements per request: {counter.orm / count:.2f}")
    print(f"  statements per request, every connection: {counter.sent / count:.2f}")
    if profile is not None:
        stats = pstats.Stats(profile, stream=(out := io.StringIO()))
        print(f"  Python function calls per request: {stats.total_calls / count:.0f}")  # type: ignore[attr-defined]
        if args.top:
            stats.sort_stats(args.sort).print_stats(args.top)
        if args.callers:
            stats.print_callers(args.callers)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
