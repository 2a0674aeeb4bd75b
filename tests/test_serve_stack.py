"""scripts/serve-stack: nginx terminating TLS and caching in front of the server on a unix socket.

Real HTTPS requests and the real notary CLI go through nginx (Debian package nginx); the test
skips without nginx, and fails when CI=true.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support.clients import NotaryCLI, require_cli
from support.server import (
    STOP_TIMEOUT,
    ServerInfo,
    free_port,
    launched,
    server_environment,
    wait_until_healthy,
)

ROOT = Path(__file__).resolve().parent.parent
STALENESS_BOUND = 1.0  # seconds: the documented bound for current metadata
GUN = "example.com/stack/app"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    if shutil.which("nginx") is None:
        message = "nginx is not installed (Debian package nginx)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("stack")
    port = free_port()
    data_dir = tmp / "data"
    command = [sys.executable, str(ROOT / "scripts" / "serve-stack")]
    command += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    env = server_environment({"TUFNOTARY_KEY_PASSPHRASE": "stack test passphrase"})
    log = tmp / "stack.log"
    url = f"https://127.0.0.1:{port}"
    with launched(command, log, env, stop_timeout=STOP_TIMEOUT) as process:
        ca_cert = wait_until_healthy(process, url, log)
        yield ServerInfo(url, ca_cert, process, data_dir, log)
    assert process.returncode == 0, log.read_text()  # SIGTERM stops both cleanly


def get(stack: ServerInfo, name: str) -> requests.Response:
    url = f"{stack.url}/v2/{GUN}/_trust/tuf/{name}"
    return requests.get(url, verify=str(stack.ca_cert), timeout=10)


def published_targets(stack: ServerInfo) -> set[str]:
    return set(json.loads(get(stack, "targets.json").content)["signed"]["targets"])


def test_notary_publishes_and_reads_through_the_proxy(stack: ServerInfo, tmp_path: Path) -> None:
    notary = require_cli("notary", "install the Debian package notary")
    owner = NotaryCLI.for_server(stack, tmp_path / "owner", notary)
    owner.run("init", "-p", GUN)
    payload = tmp_path / "app.bin"
    payload.write_bytes(b"served through nginx\n")
    for name in ("one", "two", "three"):  # back-to-back publishes, each reading current metadata
        owner.run("add", "-p", GUN, name, str(payload))
    reader = NotaryCLI.for_server(stack, tmp_path / "reader", notary)
    assert set(reader.list_targets(GUN)) == {"one", "two", "three"}

    # by checksum: immutable, answered from nginx's cache after the first request
    snapshot = json.loads(get(stack, "snapshot.json").content)
    digest = snapshot["signed"]["meta"]["targets"]["hashes"]["sha256"]
    by_checksum = f"targets.{base64.b64decode(digest).hex()}.json"
    first, second = get(stack, by_checksum), get(stack, by_checksum)
    assert first.status_code == second.status_code == 200
    assert hashlib.sha256(second.content).digest() == base64.b64decode(digest)
    assert second.headers["X-Cache-Status"] == "HIT"
    assert get(stack, "timestamp.json").headers["X-Cache-Status"] in {"MISS", "HIT", "EXPIRED"}
    # by version: not content-addressed (a re-created repository reuses the numbers), so it is
    # cached like current metadata, never for long
    assert get(stack, "1.root.json").status_code == 200
    time.sleep(0.05)  # past the 10 ms window the first answer was cached in
    assert get(stack, "1.root.json").headers["X-Cache-Status"] != "HIT"

    # a publish by another client becomes visible to readers within the documented bound
    assert "four" not in published_targets(stack)
    owner.run("add", "-p", GUN, "four", str(payload))
    deadline = time.monotonic() + 2 * STALENESS_BOUND
    while "four" not in published_targets(stack):
        assert time.monotonic() < deadline, "publish not visible through the proxy within 2 s"
        time.sleep(0.05)


def test_unknown_repository_404s_are_cached_within_the_window(stack: ServerInfo) -> None:
    url = f"{stack.url}/v2/registry.example.com/never/published/_trust/tuf/timestamp.json"
    with requests.Session() as session:
        answers = [session.get(url, verify=str(stack.ca_cert), timeout=10) for _ in range(50)]
    assert {answer.status_code for answer in answers} == {404}
    assert {answer.json()["errors"][0]["code"] for answer in answers} == {"METADATA_NOT_FOUND"}
    assert "HIT" in {answer.headers["X-Cache-Status"] for answer in answers}


def test_slow_clients_do_not_hold_the_server(stack: ServerInfo) -> None:
    """More half-sent uploads than the server has threads (2 workers x 4): nginx buffers them,
    so other requests are still answered."""
    context = ssl.create_default_context(cafile=str(stack.ca_cert))
    slow: list[ssl.SSLSocket] = []
    try:
        for _ in range(12):
            raw = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
            conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
            conn.sendall(
                f"POST /v2/{GUN}/_trust/tuf/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
                "--x\r\n".encode()
            )
            slow.append(conn)
        for _ in range(20):  # enough to need every server thread if the slow ones held them
            response = requests.get(
                f"{stack.url}/_notary_server/health", verify=str(stack.ca_cert), timeout=5
            )
            assert response.status_code == 200
        assert get(stack, "root.json").status_code == 200
    finally:
        for conn in slow:
            conn.close()


def test_stack_exits_non_zero_when_the_server_dies(tmp_path: Path, stack: ServerInfo) -> None:
    port = free_port()
    command = [sys.executable, str(ROOT / "scripts" / "serve-stack")]
    command += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")]
    env = server_environment({"TUFNOTARY_KEY_PASSPHRASE": "stack test passphrase"})
    log = tmp_path / "stack.log"
    with launched(command, log, env) as process:
        wait_until_healthy(process, f"https://127.0.0.1:{port}", log)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGKILL)  # the server (started first) dies
        assert process.wait(timeout=30) == 1
    assert "tufnotary-server exited with status -9" in log.read_text()


def test_the_server_sees_the_client_address_nginx_saw(stack: ServerInfo) -> None:
    """serve-stack trusts exactly one proxy hop: a forged X-Forwarded-For from the client is not
    believed, the address nginx accepted the connection from is (here in the audit log)."""
    gun = "example.com/stack/forged"
    response = requests.delete(
        f"{stack.url}/v2/{gun}/_trust/tuf/",
        headers={"X-Forwarded-For": "203.0.113.9"},
        verify=str(stack.ca_cert),
        timeout=10,
    )
    assert response.status_code == 200
    command = [sys.executable, "-m", "tufnotary.server.cli", "audit", "--json", "--gun", gun]
    command += ["--data-dir", str(stack.data_dir)]
    env = server_environment({"TUFNOTARY_KEY_PASSPHRASE": "stack test passphrase"})
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    addresses = [json.loads(line)["address"] for line in output.splitlines()]
    assert addresses == ["127.0.0.1"]
