"""Abuse hardening: generic health errors, the metrics token, the key-creation limit, private
file modes, and the failed-login limit shared by every worker of a real server."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from support.api import Server, error_of
from support.server import running_server
from tufnotary.server.app import create_app
from tufnotary.server.config import ConfigError, Settings
from tufnotary.server.files import loose_permissions, private_dir, secret_files
from tufnotary.server.migrate import upgrade
from tufnotary.server.realm import FAILED_LOGIN_LIMIT, add_user
from tufnotary.server.storage import Stores
from tufnotary.server.storage.engine import make_engine
from tufnotary.server.tls import ensure_self_signed

GUN = "registry.example.com/team/app"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("tufnotary")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


# -- health and metrics ---------------------------------------------------------------------------


def test_health_answers_a_generic_message_and_logs_the_cause(
    tmp_path: Path, records: _Records
) -> None:
    settings = Settings(data_dir=tmp_path, key_passphrase="x", log_level="error")
    # the schema was never migrated (the start-up checks, which would migrate it, are skipped)
    client = create_app(settings, preflight=False).test_client()
    response = client.get("/_notary_server/health")
    assert response.status_code == 503
    assert json.loads(response.data) == {"DB operational": "database unavailable"}
    assert any("no such table" in message for message in records.messages)


def test_metrics_can_require_a_bearer_token(tmp_path: Path) -> None:
    assert Server.start(tmp_path / "open").client.get("/metrics").status_code == 200
    server = Server.start(tmp_path / "closed", metrics_token="scrape-secret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-secret"}):
        refused = server.client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert error_of(refused)["code"] == "UNAUTHORIZED"
    allowed = server.client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert allowed.status_code == 200
    assert b"notary_server_http_request_duration_seconds" in allowed.data


# -- key creation ---------------------------------------------------------------------------------


def test_key_creation_is_limited_per_client(tmp_path: Path) -> None:
    server = Server.start(tmp_path, key_creation_limit=3)
    for number in range(3):
        assert server.get(f"{GUN}{number}", "timestamp.key").status_code == 200
    # asking again for a key already made creates nothing and is not refused
    assert server.get(f"{GUN}0", "timestamp.key").status_code == 200
    refused = server.get(f"{GUN}3", "timestamp.key")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert error_of(refused)["code"] == "TOOMANYREQUESTS"
    rotated = server.client.post(server.tuf(f"{GUN}0", "timestamp.key"))
    assert rotated.status_code == 200  # the unused key is handed out again: nothing created
    other = server.client.get(
        server.tuf(f"{GUN}3", "timestamp.key"), environ_base={"REMOTE_ADDR": "192.0.2.8"}
    )
    assert other.status_code == 200
    keys = Stores.from_url(server.settings.effective_database_url)
    assert [len(keys.keys.keys_for(f"{GUN}{n}", "timestamp")) for n in range(4)] == [1, 1, 1, 1]


# -- file modes -----------------------------------------------------------------------------------


def test_generated_secrets_are_private(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual umask: modes must not depend on a stricter one
    try:
        data = private_dir(tmp_path / "data")
        files = ensure_self_signed(data)
    finally:
        os.umask(previous)
    engine = make_engine(f"sqlite:///{data / 'tufnotary.db'}")
    try:
        upgrade(engine)
        with engine.connect() as connection:  # WAL and shared memory exist while connected
            connection.execute(sa.text("SELECT 1"))
            database = [data / name for name in ("tufnotary.db", "tufnotary.db-wal")]
            assert {_mode(path) for path in database} == {0o600}
    finally:
        engine.dispose()
    assert _mode(data) == _mode(data / "tls") == 0o700
    assert _mode(files.key) == _mode(data / "tls" / "ca.key") == 0o600
    settings = Settings(data_dir=data)
    assert loose_permissions([data, data / "tls"], secret_files(settings)) == []
    (data / "tufnotary.db").chmod(0o644)
    data.chmod(0o755)
    warnings = loose_permissions([data], secret_files(settings))
    assert warnings == [
        f"warning: {data} has mode 0755, readable by other users; run: chmod 700 {data}",
        f"warning: {data / 'tufnotary.db'} has mode 0644, readable by other users; "
        f"run: chmod 600 {data / 'tufnotary.db'}",
    ]


def test_serve_creates_private_files_and_warns_about_loose_ones(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        data = server.data_dir
        assert _mode(data) == 0o700
        for name in ("tufnotary.db", "master.key", "tls/ca.key", "tls/server.key"):
            assert _mode(data / name) == 0o600, name
        assert "warning:" not in server.log.read_text()
    (data / "tufnotary.db").chmod(0o644)
    (data / "master.key").chmod(0o640)
    with running_server(tmp_path) as server:
        output = server.log.read_text()
    assert f"warning: {data.absolute() / 'tufnotary.db'} has mode 0644" in output
    assert f"warning: {data / 'master.key'} has mode 0640" in output


# -- the failed-login limit across workers --------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_failed_logins_count_across_workers_on_postgresql(
    tmp_path: Path, store: Stores, migrated_url: str
) -> None:
    add_user(store, "alice", "right password", rounds=4)
    arguments = ("--database", migrated_url, "--workers", "2", "--auth-mode", "builtin")
    with running_server(tmp_path, *arguments, env={"TUFNOTARY_BCRYPT_ROUNDS": "4"}) as server:

        def login(password: str) -> int:
            response = requests.get(
                f"{server.url}/auth/token",
                params={"service": "tufnotary", "scope": f"repository:{GUN}:pull"},
                auth=("alice", password),
                verify=str(server.ca_cert),
                timeout=30,
            )
            return response.status_code

        # each request on a new connection: the two workers share the work
        assert [login("guess") for _ in range(FAILED_LOGIN_LIMIT)] == [401] * 10
        assert login("guess") == 429
        assert login("right password") == 429


def test_serve_trusts_the_configured_proxy_hops(tmp_path: Path) -> None:
    arguments = ("--trusted-proxies", "1", "--audit-access", "loopback")
    with running_server(tmp_path, *arguments) as server:
        audit = f"{server.url}/_notary_server/audit"
        verify = str(server.ca_cert)
        assert requests.get(audit, verify=verify, timeout=10).status_code == 200
        forwarded = {"X-Forwarded-For": "192.0.2.7"}
        refused = requests.get(audit, headers=forwarded, verify=verify, timeout=10)
        assert refused.status_code == 403


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"token_lifetime": "7200"}, "token_lifetime: 7200 is over max_token_lifetime 3600"),
        ({"forwarded_header": "x-real-ip"}, "forwarded_header: must be one of"),
        ({"trusted_proxies": "-1"}, "trusted_proxies: must be 0..10"),
        ({"audit_access": "everyone"}, "audit_access: must be one of auth, loopback"),
        ({"key_creation_limit": "0"}, "key_creation_limit: must be at least 1"),
    ],
)
def test_hardening_settings_are_checked(setting: dict[str, str], message: str) -> None:
    env = {f"TUFNOTARY_{name.upper()}": value for name, value in setting.items()}
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.load(env=env)
