"""Issue 9.1: do slow clients stall a running server? (see bench/README.md)

Opens ``--slow`` TLS connections that send a request head one byte every 2 s (reconnecting when
the server cuts them) for ``--seconds``, while a reader GETs ``URL`` on a new TLS connection every
50 ms; prints how many GETs were answered, failed (10 s timeout) and their latency percentiles.

Run: ``.venv/bin/python bench/slow_clients.py https://127.0.0.1:4443/v2/ --ca data/tls/ca.crt``.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import threading
import time
from urllib.parse import urlsplit

import requests

BYTE_INTERVAL = 2.0
READ_TIMEOUT = 10.0


async def _trickle(host: str, port: int, context: ssl.SSLContext, end: float) -> None:
    head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 500
    loop = asyncio.get_running_loop()
    while loop.time() < end:
        try:
            _, writer = await asyncio.open_connection(host, port, ssl=context)
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(BYTE_INTERVAL)
                if loop.time() >= end:
                    break
            writer.close()
        except (OSError, ssl.SSLError):  # cut by the server: connect again
            await asyncio.sleep(0.1)


async def _attack(url: str, ca: str, slow: int, seconds: float) -> None:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=ca)
    end = asyncio.get_running_loop().time() + seconds
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    await asyncio.gather(*(_trickle(host, port, context, end) for _ in range(slow)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--ca", required=True, help="CA certificate of the server")
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    attack = threading.Thread(
        target=lambda: asyncio.run(_attack(args.url, args.ca, args.slow, args.seconds))
    )
    attack.start()
    time.sleep(2)  # let the slow connections in first
    latencies: list[float] = []
    failed = 0
    session = requests.Session()
    session.trust_env = False
    while attack.is_alive():
        started = time.perf_counter()
        try:
            response = session.get(
                args.url, verify=args.ca, timeout=READ_TIMEOUT, headers={"Connection": "close"}
            )
            ok = response.status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            failed += 1
        time.sleep(0.05)
    latencies.sort()

    def ms(fraction: float) -> str:
        if not latencies:
            return "-"
        return f"{latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000:.0f}"

    print(
        f"slow={args.slow} seconds={args.seconds:.0f} answered={len(latencies)} failed={failed} "
        f"p50={ms(0.5)}ms p99={ms(0.99)}ms max={ms(1.0)}ms"
    )


if __name__ == "__main__":
    main()
