"""Admission webhook latency and throughput, with a warm and with a cold trust data cache.

Starts a trust server (`tufnotary-server serve`, SQLite) in a temporary folder, signs
``registry.example.com/bench/app:1.0`` with the `tufnotary` CLI, then runs
`tufnotary-admission serve` twice: ``warm`` (refresh_seconds 3600: after the first admission the
trust server is not contacted) and ``cold`` (refresh_seconds 0: every admission updates the
trust data from the server, with every TUF check). For each it sends ``--requests`` sequential
AdmissionReview requests (a Pod with one container) to /mutate on one keep-alive connection and
prints p50/p99 latency, then ``--clients`` concurrent clients for ``--seconds`` and prints
requests per second. Tests never assert on timings.

Run: ``.venv/bin/python bench/admission.py [--requests 500] [--clients 8] [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

BIN = Path(sys.executable).parent
GUN = "registry.example.com/bench/app"
PASSPHRASES = {f"NOTARY_{r}_PASSPHRASE": "bench" for r in ("ROOT", "TARGETS", "SNAPSHOT")}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(command: list[str], log: Path, health: str, ca: Path | None) -> Iterator[None]:
    """Run ``command`` until ``health`` answers 200 (verified with ``ca`` once it exists)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{command[0]} exited:\n{log.read_text()}")
            try:
                if ca is not None and ca.exists():
                    requests.get(health, verify=str(ca), timeout=5).raise_for_status()
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{command[0]} did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


def review() -> dict[str, Any]:
    spec = {"containers": [{"name": "app", "image": f"{GUN}:1.0"}]}
    request = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "namespace": "default",
        "operation": "CREATE",
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"}, "spec": spec},
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def measure(url: str, ca: Path, count: int, clients: int, seconds: float) -> dict[str, float]:
    session = requests.Session()
    body = review()
    answer = session.post(url, json=body, verify=str(ca), timeout=30).json()
    assert answer["response"]["allowed"], answer  # and fills the cache
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        session.post(url, json=body, verify=str(ca), timeout=30).raise_for_status()
        latencies.append(time.perf_counter() - started)
    done = [0] * clients
    end = time.monotonic() + seconds

    def client(index: int) -> None:
        own = requests.Session()
        while time.monotonic() < end:
            own.post(url, json=body, verify=str(ca), timeout=30).raise_for_status()
            done[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "rps": sum(done) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1, help="webhook worker processes")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    port = free_port()
    server_url = f"https://127.0.0.1:{port}"
    ca = base / "data" / "tls" / "ca.crt"
    serve = [str(BIN / "tufnotary-server"), "serve", "--listen", f"127.0.0.1:{port}"]
    serve += ["--data-dir", str(base / "data")]
    health = f"{server_url}/_notary_server/health"
    with process(serve, base / "server.log", health, ca):
        env = os.environ | PASSPHRASES | {"TUFNOTARY_TRUST_DIR": str(base / "trust")}
        tool = [str(BIN / "tufnotary"), "-s", server_url, "--tlscacert", str(ca)]
        digest = hashlib.sha256(b"bench manifest").hexdigest()
        for step in (["init", GUN, "--server-snapshot"], ["addhash", "-p", GUN, "1.0", "14"]):
            extra = ["--sha256", digest] if step[0] == "addhash" else []
            subprocess.run([*tool, *step, *extra], env=env, check=True, capture_output=True)
        for name, refresh in (("warm", 3600), ("cold", 0)):
            policy = base / f"policy-{name}.yaml"
            server = {"url": server_url, "ca": str(ca)}
            rules = [{"images": "**", "server": "main"}]
            document = {"servers": {"main": server}, "rules": rules, "refresh_seconds": refresh}
            policy.write_text(yaml.safe_dump(document))
            hook_port = free_port()
            hook = [str(BIN / "tufnotary-admission"), "serve", "--policy", str(policy)]
            hook += ["--listen", f"127.0.0.1:{hook_port}", "--workers", str(args.workers)]
            hook += ["--tls-cert", str(base / "data/tls/server.crt")]
            hook += ["--tls-key", str(base / "data/tls/server.key"), "--cache-dir", str(base)]
            url = f"https://127.0.0.1:{hook_port}"
            with process(hook, base / f"webhook-{name}.log", f"{url}/healthz", ca):
                result = measure(f"{url}/mutate", ca, args.requests, args.clients, args.seconds)
            print(
                f"{name}: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"{result['rps']:.0f} requests/s ({args.clients} clients, {args.workers} worker)"
            )


if __name__ == "__main__":
    main()
