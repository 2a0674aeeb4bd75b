"""Re-measure the attacks of issue 9 (items 2 and 3) against a real `tufnotary-server serve`.

Prints, per attack, the answer, the workers' CPU seconds and peak RSS, and for the concurrent
signature flood the slowest `GET timestamp.json` made meanwhile. See bench/README.md "Abuse".

Run: ``.venv/bin/python bench/abuse.py [--bomb-mib 60] [--concurrent-bomb-mib 16]``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_paths  # noqa: F401 (puts tests/ on the import path)

from support.abuse import (
    LiveRepo,
    array_bomb,
    cpu_spent,
    signature_flood,
    workers_usage,
)
from support.server import running_server

GUN = "bench.example.com/abuse"
MIB = 1024 * 1024


def measure(target: LiveRepo, label: str, attack: Callable[[], list[str]]) -> None:
    master = target.info.process.pid
    before = workers_usage(master)
    started = time.monotonic()
    answers = attack()
    wall = time.monotonic() - started
    after = workers_usage(master)
    peak = max(usage.peak_rss_mib for usage in after.values())
    start_rss = max(usage.peak_rss_mib for usage in before.values())
    print(
        f"{label:44} | {', '.join(sorted(set(answers))):24} | cpu {cpu_spent(before, after):6.1f} s"
        f" | wall {wall:6.1f} s | worker peak RSS {start_rss:5.0f} -> {peak:5.0f} MiB",
        flush=True,
    )


def concurrently(count: int, job: Callable[[], str]) -> list[str]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: job(), range(count)))


def reads_during(target: LiveRepo, attack: Callable[[], list[str]]) -> Callable[[], list[str]]:
    """``attack`` while one client keeps reading timestamp.json; adds the slowest read."""

    def run() -> list[str]:
        done = threading.Event()
        slowest = [0.0]

        def read() -> None:
            session = target.session()
            while not done.is_set():
                started = time.monotonic()
                session.get(target.tuf + "timestamp.json", timeout=60).raise_for_status()
                slowest[0] = max(slowest[0], time.monotonic() - started)
                time.sleep(0.05)

        reader = threading.Thread(target=read)
        reader.start()
        answers = attack()
        done.set()
        reader.join()
        return [*answers, f"slowest read {slowest[0]:.1f} s"]

    return run


def signature_floods(target: LiveRepo, args: argparse.Namespace) -> None:
    flood = signature_flood(target.repo, int(args.flood_mib * MIB))
    measure(target, f"signature flood {args.flood_mib} MiB", lambda: [
        target.post("targets", flood)
    ])  # fmt: skip
    small = signature_flood(target.repo, int(args.concurrent_flood_mib * MIB))
    label = f"{args.concurrency} x signature flood {args.concurrent_flood_mib} MiB"
    measure(target, label, reads_during(target, lambda: concurrently(
        args.concurrency, lambda: target.post("targets", small)
    )))  # fmt: skip


def one_bomb(target: LiveRepo, args: argparse.Namespace) -> None:
    bomb = array_bomb(int(args.bomb_mib * MIB))
    label = f"[],[],... {args.bomb_mib} MiB"
    measure(target, label, lambda: [target.post("targets", bomb)])


def concurrent_bombs(target: LiveRepo, args: argparse.Namespace) -> None:
    bomb = array_bomb(int(args.concurrent_bomb_mib * MIB))
    label = f"{args.concurrency} x [],[],... {args.concurrent_bomb_mib} MiB"
    measure(target, label, lambda: concurrently(
        args.concurrency, lambda: target.post("targets", bomb)
    ))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flood-mib", type=float, default=5, help="one signature flood")
    parser.add_argument("--concurrent-flood-mib", type=float, default=3)
    parser.add_argument("--bomb-mib", type=float, default=60, help="one [],[],... body")
    parser.add_argument("--concurrent-bomb-mib", type=float, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for run in (signature_floods, one_bomb, concurrent_bombs):  # a fresh server each
            base = Path(tmp) / run.__name__
            base.mkdir()
            with running_server(base, "--log-level", "error") as info:
                run(LiveRepo.publish(info, GUN), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
