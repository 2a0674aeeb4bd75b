"""After `tufnotary-server prune --keep 0` and `resign` on a live server, every client still
verifies: the real notary 0.7 CLI (with a cache from several versions ago, and a new trust
dir), the real docker CLI (`docker trust inspect`, no daemon) and our `tufnotary`; and `serve`
runs the re-signing passes itself with resign_interval."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from support.clients import (
    DOCKER_HINT,
    NOTARY_HINT,
    PASSPHRASE,
    DockerCLI,
    NotaryCLI,
    describe,
    require_cli,
)
from support.server import ServerInfo, running_server

pytestmark = pytest.mark.e2e

GUN = "registry.example.com/day2/app"
OURS = Path(sys.executable).with_name("tufnotary")


def _server_command(server: ServerInfo, *args: str) -> subprocess.CompletedProcess[str]:
    """`tufnotary-server ARGS --data-dir DATA` next to the running server."""
    command = [
        sys.executable,
        "-m",
        "tufnotary.server.cli",
        *args,
        "--data-dir",
        str(server.data_dir),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUFNOTARY_")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, describe(result)
    return result


def _ours(server: ServerInfo, trust_dir: Path, *args: str) -> set[str]:
    """`tufnotary list GUN`: the target names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUFNOTARY_", "NOTARY_"))}
    command = [
        str(OURS),
        "-s",
        server.url,
        "--tlscacert",
        str(server.ca_cert),
        "-d",
        str(trust_dir),
    ]
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, describe(result)
    rows = [line.split() for line in result.stdout.splitlines()]
    return {row[0] for row in rows if len(row) == 4 and re.fullmatch("[0-9a-f]{64}", row[1])}


def _publish(publisher: NotaryCLI, tmp_path: Path, tag: str) -> None:
    content = tmp_path / f"{tag}.json"
    content.write_text(f'{{"tag": "{tag}"}}')
    publisher.run("add", "-p", GUN, tag, str(content))


def test_clients_verify_after_prune_and_resign(tmp_path: Path) -> None:
    notary, docker_binary = require_cli("notary", NOTARY_HINT), require_cli("docker", DOCKER_HINT)
    if not OURS.exists():
        pytest.skip(f"{OURS} is not installed: pip install -e . first")
    (tmp_path / "server").mkdir()
    with running_server(tmp_path / "server") as server:
        publisher = NotaryCLI.for_server(server, tmp_path / "publisher", notary)
        publisher.run("init", "-p", GUN)
        _publish(publisher, tmp_path, "v0")
        # caches at an early version: the notary reader, docker and ours
        reader = NotaryCLI.for_server(server, tmp_path / "reader", notary)
        assert set(reader.list_targets(GUN)) == {"v0"}
        docker = DockerCLI.for_server(server, tmp_path / "docker-home", docker_binary)
        docker.passphrase = PASSPHRASE
        assert [t["SignedTag"] for t in docker.inspect(GUN)["SignedTags"]] == ["v0"]
        assert _ours(server, tmp_path / "ours", "list", GUN) == {"v0"}
        early_timestamp = reader.cached(GUN, "timestamp")["signed"]["version"]

        for tag in ("v1", "v2", "v3"):
            _publish(publisher, tmp_path, tag)
        publisher.run("key", "rotate", GUN, "root", input="yes\n")  # clients walk root 1 -> 2
        _publish(publisher, tmp_path, "v4")

        dry = _server_command(server, "prune", "--keep", "0", "--dry-run")
        pruned = _server_command(server, "prune", "--keep", "0")
        assert f"{GUN}: would remove timestamp" in dry.stdout
        assert f"{GUN}: removing timestamp" in pruned.stdout
        assert "0 skipped" in pruned.stdout and " 0 removed" not in pruned.stdout
        resigned = _server_command(server, "resign", "--within", "15d")
        assert f"{GUN}: re-signed timestamp" in resigned.stdout

        tags = {"v0", "v1", "v2", "v3", "v4"}
        assert set(reader.list_targets(GUN)) == tags
        assert reader.cached(GUN, "timestamp")["signed"]["version"] > early_timestamp
        assert reader.cached(GUN, "root")["signed"]["version"] == 2
        assert set(NotaryCLI.for_server(server, tmp_path / "new", notary).list_targets(GUN)) == tags
        assert {t["SignedTag"] for t in docker.inspect(GUN)["SignedTags"]} == tags
        assert _ours(server, tmp_path / "ours", "list", GUN) == tags
        assert _ours(server, tmp_path / "ours-new", "list", GUN) == tags

        _publish(publisher, tmp_path, "v5")  # publishing goes on after the prune
        assert set(reader.list_targets(GUN)) == tags | {"v5"}
        assert _ours(server, tmp_path / "ours", "list", GUN) == tags | {"v5"}


def test_serve_runs_the_passes_itself(tmp_path: Path) -> None:
    """`serve` with resign_interval: a gevent worker's pass records the expiries at start."""
    notary = require_cli("notary", NOTARY_HINT)
    with running_server(tmp_path) as server:
        NotaryCLI.for_server(server, tmp_path / "publisher", notary).run("init", "-p", GUN)
    with running_server(tmp_path, env={"TUFNOTARY_RESIGN_INTERVAL": "3600"}) as server:
        deadline, metrics = time.monotonic() + 60, ""
        while "tufnotary_metadata_soonest_expiry_seconds{" not in metrics:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
            metrics = requests.get(f"{server.url}/metrics", verify=server.ca_cert, timeout=10).text
    roles = re.findall(r'tufnotary_metadata_soonest_expiry_seconds\{role="(\w+)"\}', metrics)
    assert sorted(roles) == ["root", "snapshot", "targets", "timestamp"]
