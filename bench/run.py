"""Benchmark tufnotary against the reference notary-server (Go) in the same run.

Starts the reference (memory store and PostgreSQL) and tufnotary (SQLite, PostgreSQL, and the
nginx production stack) on loopback with the same TLS certificate, publishes identical
repositories to each, checks that all serve the same bytes, then measures read throughput with
wrk, new-connection reads and publishes, and a scale run to 100,000 repositories.

Run: ``.venv/bin/python bench/run.py [--quick] [--json out.json]``.
See ``bench/README.md`` for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
import sqlalchemy as sa
from bench_paths import REPO_ROOT

from support.api import multipart
from support.notary_stack import NOTARY_SERVER_TABLES
from support.reference import find_reference_binary, launched_reference
from support.repo import RepoBuilder
from support.server import (
    free_port,
    launched,
    serve_command,
    wait_until_healthy,
)
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import TARGETS, TIMESTAMP, FileMeta, RoleKeys
from tufnotary.server.tls import TLSFiles, ensure_self_signed

REF = "ref-memory"  # the reference notary-server 0.7, memory store: the baseline of every ratio
REF_PG = "ref-postgres"  # the reference on PostgreSQL
TUF = "ours-sqlite"
TUF_PG = "ours-postgres"
STACK = "ours-stack"  # scripts/serve-stack: nginx in front of tufnotary (SQLite)
SERVERS = (REF, REF_PG, TUF, TUF_PG, STACK)
POSTGRES_ADMIN = os.environ.get(
    "TUFNOTARY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
WRK_CONNECTIONS = 32
WRK_ROUNDS = 2
REQUEST_TIMEOUT = 60.0
SMALL_GUN = "bench.example.com/small"
LARGE_GUN = "bench.example.com/large"
UNKNOWN_GUN = "bench.example.com/never-published"  # the 404 scenario's repository
SMALL_TARGETS = 10
BUSY_FRACTION = 0.2  # warn when other processes use more of the CPUs than this before the run
ROUNDS = 4  # each scenario alternates the servers in this many blocks, to spread out drift


class BenchError(Exception):
    """A server answered something other than what the benchmark expects."""


# -- servers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A started server: its name, base URL (no trailing slash) and log file."""

    name: str
    url: str
    log: Path
    process: subprocess.Popen[bytes]


def tufnotary_command(
    data_dir: Path, tls: TLSFiles, port: int, log_level: str, *extra: str
) -> list[str]:
    """`tufnotary.server.cli serve` with data in `data_dir`, 2 workers."""
    tls_args = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    return serve_command(
        port, data_dir, *tls_args, "--workers", "2", "--log-level", log_level, *extra
    )


def stack_command(data_dir: Path, tls: TLSFiles, port: int) -> list[str]:
    """`scripts/serve-stack` (nginx in front of tufnotary with SQLite), 2 server workers."""
    return [
        sys.executable,
        str(REPO_ROOT / "scripts" / "serve-stack"),
        *("--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--workers", "2"),
        *("--tls-cert", str(tls.cert), "--tls-key", str(tls.key)),
    ]


@contextlib.contextmanager
def postgres_database(label: str) -> Iterator[str]:
    """A new PostgreSQL database on POSTGRES_ADMIN's server: its URL; dropped on exit."""
    admin = sa.make_url(POSTGRES_ADMIN)
    name = f"tufnotary_bench_{label}_{os.getpid()}"
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise BenchError(
            f"PostgreSQL at {admin.host}:{admin.port}: {exc}; set TUFNOTARY_BENCH_POSTGRES_URL"
        ) from None
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reference_database(url: str) -> dict[str, str]:
    """Create the reference's tables in `url`; its notary-server storage settings."""
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in NOTARY_SERVER_TABLES["postgresql"]:
            connection.execute(statement)
    parsed = sa.make_url(url)
    go_url = f"postgres://{parsed.username}@{parsed.host}:{parsed.port}/{parsed.database}"
    return {"backend": "postgres", "db_url": go_url + "?sslmode=disable"}


def migrate_database(url: str, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "tufnotary.server.cli", "migrate", "--database", url]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise BenchError(f"migrate {url}: {result.stderr.strip()}")


@contextlib.contextmanager
def all_servers(tmp: Path, tls: TLSFiles, log_level: str) -> Iterator[dict[str, Server]]:
    """Start every server of SERVERS (each healthy on entry); stop them all on exit."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TUFNOTARY_")}
    tuf_env = base_env | {
        "TUFNOTARY_KEY_PASSPHRASE": "benchmark passphrase",
        "TUFNOTARY_LOG_LEVEL": log_level,
    }
    servers: dict[str, Server] = {}
    with contextlib.ExitStack() as stack:

        def start(name: str, command: list[str]) -> None:
            port = int(command[command.index("--listen") + 1].rsplit(":", 1)[1])
            url, log = f"https://127.0.0.1:{port}", tmp / f"{name}.log"
            process = stack.enter_context(launched(command, log, tuf_env))
            wait_until_healthy(process, url, log, ca_cert=tls.ca_cert)
            servers[name] = Server(name, url, log, process)

        def reference(name: str, storage: dict[str, str] | None) -> None:
            context = launched_reference(
                tmp / name, tls, log_level=log_level, env=base_env, storage=storage
            )
            ref = stack.enter_context(context)
            servers[name] = Server(name, ref.url, ref.log, ref.process)

        try:
            ref_url = stack.enter_context(postgres_database("reference"))
            tuf_url = stack.enter_context(postgres_database("tufnotary"))
            migrate_database(tuf_url, tuf_env)
            reference(REF, None)
            reference(REF_PG, reference_database(ref_url))
            start(TUF, tufnotary_command(tmp / TUF, tls, free_port(), log_level))
            pg_args = ("--database", tuf_url)
            start(TUF_PG, tufnotary_command(tmp / TUF_PG, tls, free_port(), log_level, *pg_args))
            start(STACK, stack_command(tmp / STACK, tls, free_port()))
        except AssertionError as exc:  # the support helpers report a failed start this way
            raise BenchError(str(exc)) from None
        yield servers


# -- HTTP client ---------------------------------------------------------------------------------


class Client:
    """A keep-alive HTTPS session to one server, failing loudly on unexpected answers."""

    def __init__(self, server: Server, ca: Path) -> None:
        self.server = server
        self.session = requests.Session()
        self.session.trust_env = False  # else REQUESTS_CA_BUNDLE beats .verify, proxies apply
        self.session.verify = str(ca)

    def close(self) -> None:
        self.session.close()

    def tuf(self, gun: str, name: str = "") -> str:
        return f"{self.server.url}/v2/{gun}/_trust/tuf/{name}"

    def get(self, gun: str, name: str, expected: bytes | None = None) -> bytes:
        """GET a TUF file: 200 with a non-empty body (equal to `expected` if given)."""
        response = self.session.get(self.tuf(gun, name), timeout=REQUEST_TIMEOUT)
        body = response.content
        if response.status_code != 200 or not body:
            raise BenchError(
                f"{self.server.name} GET {name}: {response.status_code} {body[:300]!r}"
            )
        if expected is not None and body != expected:
            raise BenchError(f"{self.server.name} GET {name}: body differs from the upload")
        return body

    def missing(self, gun: str, name: str) -> None:
        """GET a TUF file that does not exist: 404 expected."""
        response = self.session.get(self.tuf(gun, name), timeout=REQUEST_TIMEOUT)
        if response.status_code != 404:
            raise BenchError(
                f"{self.server.name} GET {gun} {name}: {response.status_code}, not 404"
            )

    def post(self, gun: str, body: bytes, content_type: str) -> None:
        """Upload a multipart body; 200 expected."""
        response = self.session.post(
            self.tuf(gun),
            data=body,
            headers={"Content-Type": content_type},
            timeout=REQUEST_TIMEOUT,
        )
        if response.status_code != 200:
            name = self.server.name
            raise BenchError(f"{name} POST {gun}: {response.status_code} {response.text[:300]}")

    def server_key(self, gun: str, role: str) -> Key:
        return Key.from_dict(json.loads(self.get(gun, f"{role}.key")))


# -- repositories --------------------------------------------------------------------------------


def docker_target(index: int) -> tuple[str, FileMeta]:
    """A tag as docker publishes it: name, manifest length and sha256 only."""
    digest = hashlib.sha256(f"manifest {index}".encode()).digest()
    return f"tag-{index:06d}", FileMeta(1500 + index % 1000, {"sha256": digest})


@dataclass
class Repo:
    """One GUN published identically to both servers.

    Both builders share the root, targets and snapshot keys and the targets document, so the
    targets bytes are signed once and uploaded to both; root and snapshot differ only by each
    server's timestamp key.
    """

    gun: str
    builders: dict[str, RepoBuilder]
    next_target: int = 0
    targets_bytes: bytes = b""

    @classmethod
    def create(cls, gun: str, timestamp_keys: dict[str, Key]) -> Repo:
        first, *others = SERVERS
        main = RepoBuilder(gun, timestamp_keys[first])
        builders = {first: main}
        for name in others:
            twin = RepoBuilder(gun, timestamp_keys[name])
            twin.root_key, twin.root_cert = main.root_key, main.root_cert
            twin.targets_key = main.targets_key
            twin.snapshot_private, twin.snapshot_key = main.snapshot_private, main.snapshot_key
            own = timestamp_keys[name]
            old = set(main.root.roles[TIMESTAMP].keyids)
            twin.root.keys = {k: v for k, v in main.root.keys.items() if k not in old}
            twin.root.keys[own.key_id] = own
            twin.root.roles = main.root.roles | {TIMESTAMP: RoleKeys([own.key_id], 1)}
            twin.targets = main.targets  # one shared document
            builders[name] = twin
        return cls(gun, builders)

    def add_targets(self, count: int) -> None:
        for _ in range(count):
            name, meta = docker_target(self.next_target)
            self.builders[TUF].targets[TARGETS].targets[name] = meta
            self.next_target += 1

    def _sign_targets(self) -> None:
        """Bump and sign targets once; every builder gets the same bytes."""
        self.targets_bytes = self.builders[TUF].targets_bytes()
        for builder in self.builders.values():
            builder.files[TARGETS] = self.targets_bytes

    def first_publish(self) -> dict[str, dict[str, bytes]]:
        """Per server: root 1, targets 2, snapshot 2 (client-held snapshot key)."""
        for builder in self.builders.values():
            builder.root_bytes()
        self._sign_targets()
        return {
            name: {
                "root": b.files["root"],
                TARGETS: self.targets_bytes,
                "snapshot": b.snapshot_bytes(),
            }
            for name, b in self.builders.items()
        }

    def next_publish(self) -> dict[str, dict[str, bytes]]:
        """Per server: one more target, targets and snapshot bumped by one."""
        self.add_targets(1)
        self._sign_targets()
        return {
            name: {TARGETS: self.targets_bytes, "snapshot": b.snapshot_bytes()}
            for name, b in self.builders.items()
        }


def upload_body(files: dict[str, bytes]) -> tuple[bytes, str]:
    return multipart(files.items())


def publish_repo(gun: str, targets: int, clients: dict[str, Client]) -> Repo:
    """Create `gun` with `targets` targets on both servers (first publish)."""
    keys = {name: client.server_key(gun, "timestamp") for name, client in clients.items()}
    repo = Repo.create(gun, keys)
    repo.add_targets(targets)
    for name, files in repo.first_publish().items():
        clients[name].post(gun, *upload_body(files))
    return repo


def targets_name(data: bytes) -> str:
    return f"targets.{hashlib.sha256(data).hexdigest()}.json"


def check_identical(repo: Repo, clients: dict[str, Client]) -> None:
    """Both servers return exactly the uploaded targets bytes, by checksum and as current."""
    for client in clients.values():
        client.get(repo.gun, targets_name(repo.targets_bytes), repo.targets_bytes)
        client.get(repo.gun, "targets.json", repo.targets_bytes)
        client.get(repo.gun, "timestamp.json")
    for name, client in clients.items():
        root = repo.builders[name].files["root"]
        client.get(repo.gun, "root.json", root)


# -- measuring -----------------------------------------------------------------------------------

Op = Callable[[Client, int], object]
"""One request: (client, index within this server's run) -> anything; raises on failure."""


@dataclass
class Stats:
    """Timings of one scenario on one server."""

    count: int
    median_ms: float
    p95_ms: float
    requests_per_s: float
    error: str | None = None


@dataclass
class Result:
    """One scenario on every server, with each server's req/s relative to the reference in
    memory (> 1: faster than it)."""

    scenario: str
    threads: int
    stats: dict[str, Stats]
    speed: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def compare(self) -> None:
        base = self.stats.get(REF)
        if base is None or not base.count:
            return
        for name, stats in self.stats.items():
            if stats.count and stats.requests_per_s > 0:
                self.speed[name] = stats.requests_per_s / base.requests_per_s


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(latencies: list[float], elapsed: float, error: str | None) -> Stats:
    if not latencies:
        return Stats(0, math.nan, math.nan, math.nan, error)
    ordered = sorted(latencies)
    return Stats(
        len(ordered),
        statistics.median(ordered) * 1000,
        percentile(ordered, 0.95) * 1000,
        len(ordered) / elapsed if elapsed > 0 else math.nan,
        error,
    )


@dataclass
class Runner:
    """Runs scenarios against both servers, alternating them in blocks, within a deadline."""

    servers: dict[str, Server]
    ca: Path
    deadline: float
    results: list[Result] = field(default_factory=list)

    def client(self, name: str) -> Client:
        return Client(self.servers[name], self.ca)

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def run(
        self,
        scenario: str,
        ops: dict[str, Op],
        count: int,
        *,
        threads: int = 1,
        warmup: int = 0,
        note: str = "",
    ) -> Result:
        """Time `count` calls of each server's op (split over `threads` threads)."""
        latencies: dict[str, list[float]] = {name: [] for name in ops}
        elapsed = dict.fromkeys(ops, 0.0)
        errors: dict[str, str | None] = dict.fromkeys(ops)
        done = dict.fromkeys(ops, 0)
        if self.expired():
            count = 0  # skipped: every server gets Stats with count 0 and no error
        clients = {name: [self.client(name) for _ in range(threads)] for name in ops}
        try:
            for name, op in ops.items():  # warm up connections and caches, untimed
                for i in range(warmup if count else 0):
                    op(clients[name][i % threads], i)
            blocks = min(ROUNDS, count)
            for block in range(blocks):
                order = list(ops) if block % 2 == 0 else list(reversed(ops))
                for name in order:
                    if errors[name] or self.expired():
                        continue
                    size = count * (block + 1) // blocks - done[name]
                    start = done[name] + warmup
                    took, lat, error = self._block(ops[name], clients[name], start, size)
                    elapsed[name] += took
                    latencies[name] += lat
                    done[name] += len(lat)
                    errors[name] = error
        finally:
            for group in clients.values():
                for client in group:
                    client.close()
        stats = {name: summarise(latencies[name], elapsed[name], errors[name]) for name in ops}
        result = Result(scenario, threads, stats, note=note)
        result.compare()
        self.results.append(result)
        print(f"  {format_row(result)}", flush=True)
        return result

    def _block(
        self, op: Op, clients: list[Client], start: int, size: int
    ) -> tuple[float, list[float], str | None]:
        """`size` requests from indices `start`.. over len(clients) threads: (wall, lat, error)."""
        threads = len(clients)
        per_thread: list[list[float]] = [[] for _ in clients]
        errors: list[str] = []

        def work(slot: int) -> None:
            for i in range(start + slot, start + size, threads):
                if errors or self.expired():
                    return
                began = time.perf_counter()
                try:
                    op(clients[slot], i)
                except (BenchError, requests.RequestException) as exc:
                    errors.append(str(exc))
                    return
                per_thread[slot].append(time.perf_counter() - began)

        began = time.perf_counter()
        if threads == 1:
            work(0)
        else:
            workers = [threading.Thread(target=work, args=(slot,)) for slot in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        took = time.perf_counter() - began
        return took, [x for lat in per_thread for x in lat], errors[0] if errors else None


# -- wrk -----------------------------------------------------------------------------------------


def wrk_stats(url: str, seconds: float, connections: int, missing: bool = False) -> Stats:
    """`wrk` with `connections` keep-alive connections for `seconds` against `url`; every
    answer must be a 2xx (or, if `missing`, not: wrk counts only "non-2xx or 3xx")."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout
    fields = dict(re.findall(r"^\s*([A-Za-z0-9% /-]+?):?\s+([0-9.]+\w*)\s*$", out, re.M))
    sent = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    unexpected = int(bad[1]) if bad else 0
    if missing:
        unexpected = (int(sent[1]) if sent else 0) - unexpected
    errors = re.search(r"Socket errors: .*", out)
    rps = float(fields.get("Requests/sec", "nan"))
    count = int(rps * seconds) if rps == rps else 0
    what = "2xx or 3xx" if missing else "non-2xx"
    error = (unexpected and f"{unexpected} {what} answers") or (errors and errors[0]) or None
    return Stats(count, _ms(fields.get("50%")), _ms(fields.get("99%")), rps, error)


def _ms(text: str | None) -> float:
    """wrk's '812.00us' / '1.23ms' / '2.01s' in milliseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text or "")
    if match is None:
        return math.nan
    return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]


# -- report --------------------------------------------------------------------------------------

COLUMN = 18


def header() -> str:
    return f"{'scenario':<40} |" + "".join(f"{name:>{COLUMN}}" for name in SERVERS)


def format_row(result: Result) -> str:
    """req/s per server, and its ratio to the reference in memory."""

    def cell(name: str) -> str:
        stats = result.stats.get(name)
        if stats is None or not stats.count:
            return f"{'failed' if stats and stats.error else '-':>{COLUMN}}"
        ratio = result.speed.get(name)
        text = f"{stats.requests_per_s:.0f}" + (f" ({ratio:.2f}x)" if ratio else "")
        return f"{text:>{COLUMN}}"

    return f"{result.scenario:<40} |" + "".join(cell(name) for name in SERVERS)


def print_report(results: list[Result], info: dict[str, Any]) -> None:
    print()
    print(
        f"req/s (ratio to {REF}); reference notary-server {info['reference_version']}; "
        f"tufnotary with 2 gunicorn workers; {info['cpus']} CPUs, Python {info['python']}"
    )
    print(header())
    print("-" * len(header()))
    for result in results:
        print(format_row(result))
    print("-" * len(header()))
    print("median / p95 (p99 for wrk) latency in ms:")
    for result in results:
        cells = [
            f"{name} {s.median_ms:.2f}/{s.p95_ms:.2f}"
            for name, s in result.stats.items()
            if s.count
        ]
        print(f"  {result.scenario}: " + ", ".join(cells))
    for result in results:
        for name, stats in result.stats.items():
            if stats.error:
                print(f"ERROR {result.scenario} on {name}: {stats.error}")
        if result.note:
            print(f"note: {result.scenario}: {result.note}")


# -- main ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Request counts and durations per scenario."""

    reads: int  # sequential requests of the new-connection scenario
    publish_small: int
    publish_large: int
    wrk_seconds: float  # per server and round of each wrk scenario
    large_targets: int
    scale_repos: tuple[int, ...]  # repository counts of the scale run


def make_plan(args: argparse.Namespace) -> Plan:
    reads = args.requests or (100 if args.quick else 400)
    scale_top = args.scale_repos or (10_000 if args.quick else 100_000)
    return Plan(
        reads=reads,
        publish_small=max(4, reads // 4),
        publish_large=max(4, reads // 40),
        wrk_seconds=args.wrk_seconds or (2.0 if args.quick else 5.0),
        large_targets=args.large_targets,
        scale_repos=(*(n for n in (10, 1_000, 10_000, 100_000) if n < scale_top), scale_top),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 3 minutes)")
    parser.add_argument(
        "--requests", type=int, help="requests of the sequential scenarios (default 400, quick 100)"
    )
    parser.add_argument(
        "--wrk-seconds", type=float, help="seconds per server and round of wrk (5, quick 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--large-targets", type=int, default=10_000, help="tags in the large repo (10000)"
    )
    parser.add_argument(
        "--scale-repos", type=int, help="repositories at the end of the scale run (100000)"
    )
    parser.add_argument(
        "--time-limit", type=float, help="overall limit in seconds (default 840, quick 240)"
    )
    parser.add_argument(
        "--log-level", default="info", help="log level of the servers (info: like production)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    return args


def scenarios(runner: Runner, clients: dict[str, Client], plan: Plan, tmp: Path) -> None:
    """Prepare the repositories, check every server agrees, then run every scenario."""
    started = time.monotonic()
    small = publish_repo(SMALL_GUN, SMALL_TARGETS, clients)
    large = publish_repo(LARGE_GUN, plan.large_targets, clients)
    for repo in (small, large):
        check_identical(repo, clients)
    for client in clients.values():
        client.missing(UNKNOWN_GUN, "timestamp.json")
    print(
        f"repositories ready in {time.monotonic() - started:.1f}s: small targets "
        f"{len(small.targets_bytes):,} B, large targets {len(large.targets_bytes):,} B "
        f"({plan.large_targets} targets); every server serves identical targets bytes",
        flush=True,
    )
    print(header(), flush=True)
    reads = [
        ("timestamp.json", SMALL_GUN, "timestamp.json"),
        ("root.json", SMALL_GUN, "root.json"),
        ("targets.<sha256>.json small", SMALL_GUN, targets_name(small.targets_bytes)),
        ("targets.<sha256>.json large", LARGE_GUN, targets_name(large.targets_bytes)),
        ("404 unknown repository", UNKNOWN_GUN, "timestamp.json"),
    ]
    for label, gun, name in reads:
        wrk_scenario(runner, f"GET {label} wrk x{WRK_CONNECTIONS}", gun, name, plan.wrk_seconds)

    def fresh_connection(client: Client, _i: int) -> bytes:
        client.session.close()  # drop the pooled connection: a new TCP + TLS handshake
        return client.get(SMALL_GUN, "timestamp.json")

    runner.run(
        "GET timestamp.json (new conn each)",
        dict.fromkeys(SERVERS, fresh_connection),
        plan.reads,
        warmup=5,
        note="one request per TCP+TLS connection, as the notary and docker CLIs do",
    )
    for repo, label, count in (
        (small, "small", plan.publish_small),
        (large, f"one tag, {plan.large_targets} tags", plan.publish_large),
    ):
        bodies = prepare_publishes(repo, 0 if runner.expired() else count)
        result = runner.run(
            f"POST publish {label}",
            {n: upload_op(repo.gun, bodies[n]) for n in SERVERS},
            count,
        )
        result.note = server_side_note(runner.servers, repo.gun, count)
        if all(s.count == count for s in result.stats.values()):  # all stored the last upload
            time.sleep(0.1)  # the stack's current-metadata window (10 ms) has passed
            for client in clients.values():
                client.get(repo.gun, "targets.json", repo.targets_bytes)
    scale_run(runner, tmp / TUF / "tufnotary.db", plan)


def wrk_scenario(runner: Runner, scenario: str, gun: str, name: str, seconds: float) -> None:
    """wrk against every server, WRK_ROUNDS rounds in alternating order; mean req/s and
    latency. Every answer must be 200, or 404 for the unknown repository."""
    missing = gun == UNKNOWN_GUN
    rounds: dict[str, list[Stats]] = {n: [] for n in SERVERS}
    for round_ in range(WRK_ROUNDS):
        for server in SERVERS if round_ % 2 == 0 else tuple(reversed(SERVERS)):
            if not runner.expired():
                url = f"{runner.servers[server].url}/v2/{gun}/_trust/tuf/{name}"
                rounds[server].append(wrk_stats(url, seconds, WRK_CONNECTIONS, missing))
    stats = {n: mean_stats(runs) for n, runs in rounds.items()}
    result = Result(scenario, WRK_CONNECTIONS, stats, note="")
    result.compare()
    runner.results.append(result)
    print(f"  {format_row(result)}", flush=True)


def mean_stats(runs: list[Stats]) -> Stats:
    if not runs:
        return Stats(0, math.nan, math.nan, math.nan)
    error = next((run.error for run in runs if run.error), None)
    return Stats(
        sum(run.count for run in runs),
        statistics.fmean(run.median_ms for run in runs),
        statistics.fmean(run.p95_ms for run in runs),
        statistics.fmean(run.requests_per_s for run in runs),
        error,
    )


# -- scale run -----------------------------------------------------------------------------------

SCALE_VERSIONS = 10


def scale_run(runner: Runner, database: Path, plan: Plan) -> None:
    """ours-sqlite with 10 .. N repositories of SCALE_VERSIONS versions each: GET timestamp.json
    of random repositories (latency) and the resident memory of each worker."""
    with sqlite3.connect(database, timeout=30) as db:
        rows = db.execute(
            "SELECT role, version, sha256, data, created_at FROM tuf_files WHERE gun = ?"
            " ORDER BY version DESC",
            (SMALL_GUN,),
        ).fetchall()
    current = {}
    for role, _version, digest, data, created in rows:
        current.setdefault(role, (digest, data, created))
    placeholder = b"{}"
    filler = hashlib.sha256(placeholder).hexdigest()
    have = 0
    server = runner.servers[TUF]
    for count in plan.scale_repos:
        if runner.expired():
            break
        began = time.monotonic()
        add_repositories(database, current, have, count, (filler, placeholder))
        seeded = time.monotonic() - began
        have = count

        def read(client: Client, _i: int, count: int = count) -> bytes:
            return client.get(f"scale.example.com/repo-{random.randrange(count)}", "timestamp.json")

        runner.run(
            f"scale: GET timestamp.json, {count:,} repos",
            {TUF: read},
            plan.reads,
            warmup=5,
            note=f"seeded in {seeded:.0f}s; worker RSS MB: {worker_rss_mb(server.process.pid)}",
        )


def add_repositories(
    database: Path,
    current: dict[str, tuple[str, bytes, str]],
    start: int,
    stop: int,
    filler: tuple[str, bytes],
) -> None:
    """Repositories scale.example.com/repo-<start..stop-1>: root 1 and SCALE_VERSIONS versions
    of targets, snapshot and timestamp; the newest are the small repository's current files."""

    def repo_rows(index: int) -> Iterator[tuple[str, str, int, str, bytes, str]]:
        gun = f"scale.example.com/repo-{index}"
        digest, data, created = current["root"]
        yield gun, "root", 1, digest, data, created
        for role in (TARGETS, "snapshot", TIMESTAMP):
            digest, data, created = current[role]
            for version in range(1, SCALE_VERSIONS):
                yield gun, role, version, filler[0], filler[1], created
            yield gun, role, SCALE_VERSIONS, digest, data, created

    with sqlite3.connect(database, timeout=30) as db:
        db.executemany(
            "INSERT INTO tuf_files (gun, role, version, sha256, data, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (row for index in range(start, stop) for row in repo_rows(index)),
        )
    with sqlite3.connect(database, timeout=30) as db:
        # A server's WAL stays small (SQLite checkpoints every 1,000 pages); a bulk insert's
        # does not, and readers then search its whole index for every page they read.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def worker_rss_mb(master: int) -> str:
    """Resident memory of each child (gunicorn worker) of `master`, in MB."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return "unknown"
    sizes = []
    for pid in children:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match:
            sizes.append(f"{int(match[1]) / 1024:.0f}")
    return " ".join(sizes) or "unknown"


def server_side_note(servers: dict[str, Server], gun: str, count: int) -> str:
    """Median server-side ms of the last `count` publishes to `gun` on each of our servers,
    from their access logs (the "ms" field of each POST line)."""
    cells = []
    for name in (TUF, TUF_PG, STACK):
        times = []
        for line in servers[name].log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"POST"' in line:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("gun") == gun and entry.get("status") == 200 and "ms" in entry:
                        times.append(float(entry["ms"]))
        if times[-count:]:
            cells.append(f"{name} {statistics.median(times[-count:]):.1f}")
    return "server-side median ms (access log): " + ", ".join(cells) if cells else ""


def prepare_publishes(repo: Repo, count: int) -> dict[str, list[tuple[bytes, str]]]:
    """`count` successive uploads per server (signed up front, so signing is not timed)."""
    bodies: dict[str, list[tuple[bytes, str]]] = {name: [] for name in SERVERS}
    for _ in range(count):
        for name, files in repo.next_publish().items():
            bodies[name].append(upload_body(files))
    return bodies


def upload_op(gun: str, bodies: list[tuple[bytes, str]]) -> Op:
    return lambda client, i: client.post(gun, *bodies[i])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    if find_reference_binary() is None:
        print("notary-server not found (Debian package `notary`)", file=sys.stderr)
        return 2
    for tool, package in (("wrk", "wrk"), ("nginx", "nginx")):
        if shutil.which(tool) is None:
            print(f"{tool} not found (Debian package `{package}`)", file=sys.stderr)
            return 2
    limit = args.time_limit or (240.0 if args.quick else 840.0)
    busy_before = cpu_busy_fraction()
    cpu_start = cpu_sample()
    others_during: float | None = None
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tufnotary-bench-"))
    try:
        tls = ensure_self_signed(tmp)
        with all_servers(tmp, tls, args.log_level) as servers:
            print(f"servers: {', '.join(f'{s.name} {s.url}' for s in servers.values())}")
            runner = Runner(servers, tls.ca_cert, began + limit)
            clients = {name: runner.client(name) for name in SERVERS}
            try:
                scenarios(runner, clients, plan, tmp)
            finally:
                for client in clients.values():
                    client.close()
                others_during = others_busy_fraction(cpu_start, servers)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    info = {
        "reference_version": reference_version(),
        "tufnotary_workers": 2,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "plan": asdict(plan),
        "log_level": args.log_level,
        "wall_seconds": round(time.monotonic() - began, 1),
        "hit_time_limit": time.monotonic() > began + limit,
        "cpu_busy_before": None if busy_before is None else round(busy_before, 3),
        "cpu_used_by_others_during": None if others_during is None else round(others_during, 3),
    }
    print_report(runner.results, info)

    def share(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.0%}"

    print(
        f"total {info['wall_seconds']}s; CPU used by other processes: "
        f"{share(busy_before)} just before, {share(others_during)} during the run"
    )
    if any(v is not None and v > BUSY_FRACTION for v in (busy_before, others_during)):
        print("WARNING: other processes were using the CPUs; the numbers are noisy")
    if info["hit_time_limit"]:
        print(f"WARNING: hit the {limit:.0f}s time limit; some scenarios ran fewer requests")
    if args.json:
        payload = {"info": info, "results": [asdict(r) for r in runner.results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    failed = any(s.error for r in runner.results for s in r.stats.values())
    return 1 if failed else 0


def cpu_sample() -> tuple[int, int] | None:
    """Machine-wide (total, busy) CPU time in clock ticks from /proc/stat (Linux), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(fields), sum(fields) - fields[3] - fields[4]  # idle and iowait are not busy


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPUs' time that was busy during the next `seconds`, or None."""
    first = cpu_sample()
    time.sleep(seconds)
    second = cpu_sample()
    if first is None or second is None or second[0] <= first[0]:
        return None
    return (second[1] - first[1]) / (second[0] - first[0])


def group_cpu_ticks(pgids: set[int]) -> int:
    """CPU ticks used so far by the live processes of these process groups (and their reaped
    children)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) in pgids:  # pgrp; then utime, stime, cutime, cstime
            ticks += sum(int(x) for x in fields[11:15])
    return ticks


def others_busy_fraction(start: tuple[int, int] | None, servers: dict[str, Server]) -> float | None:
    """Share of all CPUs' time since `start` used by processes other than this benchmark."""
    end = cpu_sample()
    if start is None or end is None or end[0] <= start[0]:
        return None
    own = os.times()
    ours = (own.user + own.system) * os.sysconf("SC_CLK_TCK")
    ours += group_cpu_ticks({server.process.pid for server in servers.values()})
    # the client's share before `start` is tiny (imports); count it as ours
    return max(0.0, (end[1] - start[1] - ours) / (end[0] - start[0]))


def reference_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "notary"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
