"""Run the reference notary-server (Go, Debian package `notary`) on loopback.

The reference runs with the in-memory store and the local (in-process) signer, and serves TLS
with a certificate from `tufnotary.server.tls.ensure_self_signed`, so clients verify it exactly
as they verify tufnotary-server. Used by the interop tests and by `bench/run.py`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.server import ServerInfo, free_port, launched, wait_until_healthy
from tufnotary.server.tls import TLSFiles, ensure_self_signed

REFERENCE_BINARY = "/usr/bin/notary-server"
REFERENCE_HINT = f"{REFERENCE_BINARY} is missing: install the Debian package notary"
_ENV_PREFIX = "NOTARY_SERVER_"  # notary-server reads config overrides from these variables


def find_reference_binary() -> str | None:
    """/usr/bin/notary-server if it is executable, else `notary-server` on PATH, else None."""
    if os.access(REFERENCE_BINARY, os.X_OK):
        return REFERENCE_BINARY
    return shutil.which("notary-server")


def require_reference_binary() -> str:
    """The reference binary; skip the test without it (fail it when CI=true)."""
    import pytest  # only the tests need pytest; the benchmark does not

    binary = find_reference_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(REFERENCE_HINT)
        pytest.skip(REFERENCE_HINT)
    return binary


def reference_config(
    port: int,
    tls: TLSFiles,
    log_level: str = "info",
    storage: Mapping[str, str] | None = None,
    trust_service: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """notary-server configuration: 127.0.0.1:`port`, TLS, `trust_service` (default: the local
    signer), `storage` (default: the memory store)."""
    return {
        "server": {
            "http_addr": f"127.0.0.1:{port}",
            "tls_cert_file": str(tls.cert),
            "tls_key_file": str(tls.key),
        },
        "trust_service": dict(trust_service or {"type": "local"}),
        "storage": dict(storage or {"backend": "memory"}),
        "logging": {"level": log_level},
    }


def reference_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) without NOTARY_SERVER_* overrides of the configuration."""
    base = os.environ if env is None else env
    return {k: v for k, v in base.items() if not k.startswith(_ENV_PREFIX)}


@contextmanager
def launched_reference(
    directory: Path,
    tls: TLSFiles,
    *,
    binary: str | None = None,
    log_level: str = "info",
    env: Mapping[str, str] | None = None,
    storage: Mapping[str, str] | None = None,
    trust_service: Mapping[str, str] | None = None,
) -> Iterator[ServerInfo]:
    """notary-server on a free port, config and log in `directory`; healthy on entry.

    `binary` defaults to `find_reference_binary()`. Stopped (SIGTERM, then SIGKILL of its
    group) on exit. `data_dir` of the result is `directory`: the memory store keeps nothing on
    disk.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / f"notary-server-{port}.json"
    config.write_text(
        json.dumps(reference_config(port, tls, log_level, storage, trust_service), indent=2)
    )
    log = directory / f"notary-server-{port}.log"
    url = f"https://127.0.0.1:{port}"
    command = [
        binary or find_reference_binary() or REFERENCE_BINARY,
        "-config",
        str(config),
        "-logf",
        "json",
    ]
    with launched(command, log, reference_environment(env)) as process:
        wait_until_healthy(process, url, log, ca_cert=tls.ca_cert)
        yield ServerInfo(url, tls.ca_cert, process, directory, log)


@contextmanager
def running_reference_server(tmp_path: Path, *, log_level: str = "info") -> Iterator[ServerInfo]:
    """The reference notary-server with TLS files in `tmp_path/tls`, like `running_server`.

    Skips the test if /usr/bin/notary-server is missing (fails it when CI=true).
    """
    binary = require_reference_binary()
    tls = ensure_self_signed(tmp_path)
    with launched_reference(tmp_path, tls, binary=binary, log_level=log_level) as info:
        yield info
