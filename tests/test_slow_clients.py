"""Slow clients cannot stall the server (server/worker.py): a real `serve` under attack.

Connections that finish TLS and then trickle their request head, connections that never start
TLS, and request bodies sent too slowly are all cut at their deadline, while a reader's GETs
keep being answered.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from pathlib import Path

import requests

from support.server import ServerInfo, running_server

SLOW_CONNECTIONS = 150
ATTACK_SECONDS = 8.0
CLIENT_TIMEOUT = 2  # seconds: the server's handshake, head and body grace deadline
READ_TIMEOUT = 5.0  # a generous bound for each of the reader's GETs
ENV = {"TUFNOTARY_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT)}


async def _trickle(server: ServerInfo, context: ssl.SSLContext, cut: list[int]) -> None:
    """Keep one connection sending a request head one byte a second; count server cuts."""
    head = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 200
    loop = asyncio.get_running_loop()
    end = loop.time() + ATTACK_SECONDS
    while loop.time() < end:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
        try:
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
                if loop.time() >= end:
                    return
        except (ConnectionError, ssl.SSLError):
            cut.append(1)  # the server closed the connection: its head deadline passed
        finally:
            writer.close()


async def _attack(server: ServerInfo, cut: list[int]) -> None:
    context = ssl.create_default_context(cafile=str(server.ca_cert))
    await asyncio.gather(*(_trickle(server, context, cut) for _ in range(SLOW_CONNECTIONS)))


def test_slow_request_heads_do_not_stall_readers(tmp_path: Path) -> None:
    with running_server(tmp_path, "--workers", "1", env=ENV) as server:
        cut: list[int] = []
        attacker = threading.Thread(target=lambda: asyncio.run(_attack(server, cut)))
        attacker.start()
        statuses = []
        session = requests.Session()
        session.trust_env = False
        try:
            while attacker.is_alive():
                for connection in ("close", "keep-alive"):  # a new and a reused connection
                    response = session.get(
                        f"{server.url}/v2/",
                        verify=str(server.ca_cert),
                        headers={"Connection": connection},
                        timeout=READ_TIMEOUT,
                    )
                    statuses.append(response.status_code)
        finally:
            attacker.join()
        assert len(statuses) > 10 and set(statuses) == {200}
        assert len(cut) >= SLOW_CONNECTIONS  # every trickling connection was cut at least once


def test_connection_without_tls_handshake_is_closed(tmp_path: Path) -> None:
    with (
        running_server(tmp_path, env=ENV) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as silent,
    ):
        assert silent.recv(1) == b""  # closed by the server, not by our 30 s timeout


def test_slow_request_body_is_refused_with_408(tmp_path: Path) -> None:
    with running_server(tmp_path, env=ENV) as server:
        context = ssl.create_default_context(cafile=str(server.ca_cert))
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(
                b"POST /v2/example.com/app/_trust/tuf/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n"
            )
            answer = b""
            while chunk := tls.recv(4096):  # until the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"TIMEOUT"' in answer


def test_keep_alive_connections_take_turns(tmp_path: Path) -> None:
    """A connection with many requests already buffered (pipelined) does not hold the worker:
    a request on another connection is answered long before that backlog is through (the
    order is read from the worker's access log)."""
    pipelined = 1000
    busy_request = b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    other_request = b"GET /_notary_server/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with running_server(tmp_path, "--workers", "1", "--log-level", "info", env=ENV) as server:
        context = ssl.create_default_context(cafile=str(server.ca_cert))
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw_busy,
            context.wrap_socket(raw_busy, server_hostname="127.0.0.1") as busy,
            socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw_other,
            context.wrap_socket(raw_other, server_hostname="127.0.0.1") as other,
        ):
            for connection, request in ((busy, busy_request), (other, other_request)):
                connection.sendall(request)  # both connections are up and served once
                assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")
            busy.sendall(busy_request * pipelined)
            answered = busy.recv(65536)  # the worker is working through busy's backlog
            other.sendall(other_request)
            assert other.recv(65536).startswith(b"HTTP/1.1 200 ")
            while answered.count(b"HTTP/1.1 200 ") < pipelined:
                answered += busy.recv(65536)
        paths = [
            json.loads(line)["path"]
            for line in server.log.read_text().splitlines()
            if line.startswith("{") and '"path": "/' in line
        ]
    last = len(paths) - 1 - paths[::-1].index("/_notary_server/health")
    assert paths.count("/v2/") == pipelined + 1
    before = paths[:last].count("/v2/") - 1  # of busy's backlog, answered before other's GET
    assert before < pipelined // 2
