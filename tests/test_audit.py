"""The audit trail: every write recorded with who, what, from where and when."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from support.api import Server
from support.repo import RepoBuilder
from tufnotary.metadata.model import SNAPSHOT, TARGETS

GUN = "registry.example.com/team/app"


@pytest.fixture
def server(tmp_path: Path, migrated_url: str) -> Server:
    return Server.start(tmp_path, migrated_url, audit_access="loopback")


def _log(server: Server, query: str = "") -> list[dict[str, object]]:
    response = server.client.get(f"/_notary_server/audit{query}")
    assert response.status_code == 200, response.data
    return json.loads(response.data)  # type: ignore[no-any-return]


def test_every_write_is_recorded(server: Server) -> None:
    timestamp_key = server.server_key(GUN, "timestamp")
    repo = RepoBuilder(GUN, timestamp_key)
    upload = server.upload(GUN, repo.first_publish())
    assert upload.status_code == 200
    repo.add_target("v1", b"x")
    refused = server.upload(GUN, {TARGETS: repo.targets_bytes()})  # no snapshot: refused
    assert refused.status_code == 400
    rotated = server.server_key(GUN, "timestamp", method="POST")
    assert server.client.delete(server.tuf(GUN)).status_code == 200

    log = _log(server, f"?gun={GUN}")
    assert [entry["action"] for entry in log] == ["key-create", "upload", "key-rotate", "delete"]
    assert all(e["actor"] == "anonymous" and e["address"] == "127.0.0.1" for e in log)
    assert log[0]["detail"] == {"role": "timestamp", "key_id": timestamp_key.key_id}
    assert log[1]["detail"] == {"stored": {"root": 1, TARGETS: 2, SNAPSHOT: 2, "timestamp": 1}}
    assert log[1]["request_id"] == upload.headers["X-Request-ID"]
    assert log[2]["detail"] == {"role": "timestamp", "key_id": rotated.key_id}
    assert _log(server, "?actor=someone-else") == []
    assert _log(server, "?gun=other/gun") == []
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert _log(server, f"?since={later.replace('+', '%2B')}") == []
    assert len(_log(server, "?limit=2")) == 2


def test_audit_endpoint_is_for_administrators(server: Server) -> None:
    remote = server.client.get("/_notary_server/audit", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert remote.status_code == 403
    assert json.loads(remote.data)["errors"][0]["code"] == "DENIED"
    assert server.client.get("/_notary_server/audit?since=yesterday").status_code == 400


def test_without_auth_the_audit_log_needs_a_setting(tmp_path: Path) -> None:
    default = Server.start(tmp_path)
    assert default.settings.audit_access == "auth"
    response = default.client.get("/_notary_server/audit")  # loopback, but no auth: refused
    assert response.status_code == 403


@pytest.mark.parametrize("limit", ["-1", "0", "1001", "x"])
def test_audit_limit_outside_the_cap_is_refused(server: Server, limit: str) -> None:
    response = server.client.get(f"/_notary_server/audit?limit={limit}")
    assert response.status_code == 400
    assert json.loads(response.data)["errors"][0]["code"] == "INVALID_PARAMETERS"


@pytest.mark.parametrize(
    ("header", "name", "value", "client"),
    [
        ("x-forwarded-for", "X-Forwarded-For", "10.9.9.9, 192.0.2.7", "192.0.2.7"),
        ("forwarded", "Forwarded", 'for=10.9.9.9, for="192.0.2.7:4711";proto=https', "192.0.2.7"),
        ("forwarded", "Forwarded", 'for="[2001:db8::7]:4711"', "2001:db8::7"),
    ],
)
def test_behind_a_trusted_proxy_the_forwarded_client_counts(
    tmp_path: Path, header: str, name: str, value: str, client: str
) -> None:
    server = Server.start(
        tmp_path, audit_access="loopback", trusted_proxies=1, forwarded_header=header
    )
    headers = {name: value}
    # the proxy is on loopback, the client it forwards is not
    assert server.client.get("/_notary_server/audit", headers=headers).status_code == 403
    assert server.client.get("/_notary_server/audit").status_code == 200
    assert server.client.get(server.tuf(GUN, "timestamp.key"), headers=headers).status_code == 200
    (entry,) = _log(server)
    assert entry["address"] == client


def test_forwarded_addresses_are_ignored_without_trusted_proxies(server: Server) -> None:
    spoofed = {"X-Forwarded-For": "192.0.2.7", "Forwarded": "for=192.0.2.7"}
    assert server.client.get("/_notary_server/audit", headers=spoofed).status_code == 200
    assert server.client.get(server.tuf(GUN, "timestamp.key"), headers=spoofed).status_code == 200
    assert [entry["address"] for entry in _log(server)] == ["127.0.0.1"]


def test_command_line_reads_the_log(server: Server) -> None:
    server.new_repo(GUN)
    url = server.settings.effective_database_url
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tufnotary.server.cli",
            "audit",
            "--database",
            url,
            "--json",
            "--gun",
            GUN,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["action"] for line in lines] == ["key-create", "upload"]
    assert lines[1]["detail"]["stored"][TARGETS] == 2
    human = subprocess.run(
        [sys.executable, "-m", "tufnotary.server.cli", "audit", "--database", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"anonymous@127.0.0.1  upload {GUN}" in human.stdout
