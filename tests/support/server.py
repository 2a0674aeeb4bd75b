"""Run `tufnotary-server serve` as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

HEALTH_PATH = "/_notary_server/health"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0  # for a test that asserts a clean exit: longer than gunicorn's 20 s grace
# Otherwise a stop waits this long for the exit and then kills the process group: a gunicorn
# worker still booting when SIGTERM comes ignores it until the arbiter's 20 s graceful timeout.
QUICK_STOP = 5.0
_PRINTED_CA = re.compile(r"TLS CA certificate: (.+?) \(pass it to clients with --tlscacert\)")


@dataclass(frozen=True)
class ServerInfo:
    """A started server: base URL (no trailing slash), CA to verify it with, its process."""

    url: str
    ca_cert: Path
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path  # the server's stdout and stderr

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """os.environ without TUFNOTARY_* settings (so the developer's shell cannot leak in) + env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TUFNOTARY_")}
    return base | dict(env or {})


@contextmanager
def launched(
    command: Sequence[str], log: Path, env: Mapping[str, str], *, stop_timeout: float = QUICK_STOP
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` in its own process group with output to `log`; stop it at exit.

    Stopping sends SIGTERM and waits `stop_timeout` seconds for an exit, then kills the whole
    group (pass STOP_TIMEOUT to assert on a clean exit).
    """
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    url: str,
    log: Path,
    *,
    ca_cert: Path | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> Path:
    """Poll the health URL over HTTPS until it answers 200; fail with the server's output if not.

    TLS is verified against `ca_cert`, or else against the CA path the server prints, which is
    then returned.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with status {process.returncode}:\n{log.read_text()}"
            )
        printed = _PRINTED_CA.search(log.read_text()) if ca_cert is None else None
        ca = Path(printed[1]) if printed else ca_cert
        if ca is not None:
            try:
                response = requests.get(url + HEALTH_PATH, verify=str(ca), timeout=5)
            except requests.RequestException as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return ca
                last = f"{response.status_code} {response.text}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"server not healthy after {timeout:.0f}s (last: {last}):\n{log.read_text()}"
            )
        time.sleep(0.1)


def serve_command(port: int, data_dir: Path, *extra_args: str) -> list[str]:
    """`tufnotary-server serve` on 127.0.0.1:``port`` with data in ``data_dir``."""
    return [
        sys.executable,
        "-m",
        "tufnotary.server.cli",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        *extra_args,
    ]


@contextmanager
def running_server(
    tmp_path: Path,
    *extra_args: str,
    env: Mapping[str, str] | None = None,
    ca_cert: Path | None = None,
    stop_timeout: float = QUICK_STOP,
) -> Iterator[ServerInfo]:
    """`tufnotary-server serve` on a free port of 127.0.0.1 with data in `tmp_path/data`.

    Pass `ca_cert` when `extra_args` give --tls-cert/--tls-key; otherwise the generated
    development CA is used. The server is healthy on entry and stopped (SIGTERM, see
    `launched`) on exit.
    """
    port = free_port()
    data_dir = tmp_path / "data"
    log = tmp_path / f"server-{port}.log"
    command = serve_command(port, data_dir, *extra_args)
    url = f"https://127.0.0.1:{port}"
    with launched(command, log, server_environment(env), stop_timeout=stop_timeout) as process:
        ca_cert = wait_until_healthy(process, url, log, ca_cert=ca_cert)
        yield ServerInfo(url, ca_cert, process, data_dir, log)
