"""`tufnotary-server` end to end: serve over TLS, migrate, configuration errors."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from cryptography import x509

from support.databases import scratch_database
from support.server import (
    STOP_TIMEOUT,
    free_port,
    launched,
    running_server,
    serve_command,
    server_environment,
    wait_until_healthy,
)
from tufnotary.server.app import create_app
from tufnotary.server.cli import GRACEFUL_TIMEOUT
from tufnotary.server.config import Settings
from tufnotary.server.signer import KeyDecryptionError, KeyVault, ServerKeys, check_keys, rekey
from tufnotary.server.startup import StartupError
from tufnotary.server.storage import Stores
from tufnotary.server.storage.keys import StoredKey
from tufnotary.server.tls import ensure_self_signed

CLI = [sys.executable, "-m", "tufnotary.server.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=server_environment(env),
        timeout=120,
        check=False,
    )


def served_certificate(port: int, ca_cert: Path) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port), ca_certs=str(ca_cert))


def test_serve_prints_ca_and_answers_over_verified_tls(tmp_path: Path) -> None:
    with running_server(tmp_path, stop_timeout=STOP_TIMEOUT) as server:
        assert server.ca_cert == (server.data_dir / "tls" / "ca.crt").absolute()
        output = server.log.read_text()
        assert (
            f"tufnotary-server: TLS CA certificate: {server.ca_cert} "
            "(pass it to clients with --tlscacert)"
        ) in output
        assert f"tufnotary-server: listening on {server.url}" in output
        for base in (server.url, f"https://localhost:{server.port}"):
            response = requests.get(f"{base}/v2/", verify=str(server.ca_cert), timeout=10)
            assert response.status_code == 200
            assert response.json() == {}
        assert (server.data_dir / "tufnotary.db").is_file()  # SQLite migrated automatically
    assert server.process.returncode == 0  # SIGTERM is a clean shutdown


def test_a_server_stopped_while_its_workers_boot_stops_at_once(tmp_path: Path) -> None:
    """SIGTERM as soon as the server listens (its workers still booting) ends every worker:
    none waits for the graceful timeout, after which gunicorn would kill it."""
    log = tmp_path / "serve.log"
    command = serve_command(free_port(), tmp_path / "data", "--workers", "2")
    env = server_environment({"TUFNOTARY_KEY_PASSPHRASE": "test passphrase"})
    with launched(command, log, env, stop_timeout=STOP_TIMEOUT) as process:
        while "listening on" not in log.read_text():
            assert process.poll() is None, log.read_text()
            time.sleep(0.01)
        process.terminate()
        assert process.wait(timeout=GRACEFUL_TIMEOUT / 2) == 0, log.read_text()


def test_certificate_is_reused_on_restart(tmp_path: Path) -> None:
    with running_server(tmp_path) as first:
        first_cert = served_certificate(first.port, first.ca_cert)
        ca_bytes = first.ca_cert.read_bytes()
    with running_server(tmp_path) as second:
        assert second.ca_cert == first.ca_cert
        assert second.ca_cert.read_bytes() == ca_bytes
        assert served_certificate(second.port, second.ca_cert) == first_cert


def test_tls_init_creates_once_what_serve_uses(tmp_path: Path) -> None:
    """`tls-init` writes the CA and certificate `serve` would generate, and keeps them after."""
    data_dir = tmp_path / "data"
    created = run_cli("tls-init", "--data-dir", str(data_dir))
    assert created.returncode == 0, created.stderr
    tls = (data_dir / "tls").absolute()
    assert created.stdout.splitlines() == [
        f"ca_cert={tls / 'ca.crt'}",
        f"cert={tls / 'server.crt'}",
        f"key={tls / 'server.key'}",
    ]
    assert (data_dir.stat().st_mode & 0o777, (tls / "server.key").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )
    leaf = (tls / "server.crt").read_bytes()  # the server certificate, then the CA's

    env = {"TUFNOTARY_DATA_DIR": str(data_dir)}  # the data directory from the environment
    again = run_cli("tls-init", env=env)
    assert again.returncode == 0 and again.stdout == created.stdout, again.stderr
    assert (tls / "server.crt").read_bytes() == leaf
    with running_server(tmp_path, ca_cert=tls / "ca.crt") as server:
        served = served_certificate(server.port, server.ca_cert).encode()
        assert x509.load_pem_x509_certificate(served) == x509.load_pem_x509_certificate(leaf)


def test_serve_with_given_certificate_prints_no_ca(tmp_path: Path) -> None:
    tls = ensure_self_signed(tmp_path / "own")
    args = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    with running_server(tmp_path, *args, ca_cert=tls.ca_cert) as server:
        assert "TLS CA certificate" not in server.log.read_text()
        assert not (server.data_dir / "tls").exists()
        assert requests.get(f"{server.url}/v2/", verify=str(tls.ca_cert), timeout=10).ok


def test_gunicorn_app_factory_string(tmp_path: Path) -> None:
    """`gunicorn 'tufnotary.server:create_app()'` reads its settings from TUFNOTARY_*."""
    # XDG_RUNTIME_DIR: where gunicorn >= 25.1 puts its control socket
    env = {"TUFNOTARY_DATA_DIR": str(tmp_path / "data"), "XDG_RUNTIME_DIR": str(tmp_path)}
    assert run_cli("migrate", env=env).returncode == 0
    tls = ensure_self_signed(tmp_path / "data")
    port = free_port()
    command = [
        *(sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"),
        *("--certfile", str(tls.cert), "--keyfile", str(tls.key)),
        *("--logger-class", "tufnotary.server.app.GunicornLogger"),
        "tufnotary.server:create_app()",
    ]
    log = tmp_path / "gunicorn.log"
    with launched(command, log, server_environment(env)) as process:
        url = f"https://127.0.0.1:{port}"
        wait_until_healthy(process, url, log, ca_cert=tls.ca_cert)
        assert requests.get(f"{url}/v2/", verify=str(tls.ca_cert), timeout=10).ok
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # all of them JSON
    assert any(line["msg"].startswith("Starting gunicorn") for line in lines)


def test_migrate_sqlite_up_and_down(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    upgraded = run_cli("migrate", "--data-dir", data_dir)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "database upgraded to head" in upgraded.stderr
    assert (tmp_path / "data" / "tufnotary.db").is_file()
    downgraded = run_cli("migrate", "--data-dir", data_dir, "--downgrade", "--revision", "base")
    assert downgraded.returncode == 0, downgraded.stderr
    assert "database downgraded to base" in downgraded.stderr


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_configuration_errors_exit_2_with_a_readable_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert_usage_error(
        run_cli("serve", "--data-dir", str(data_dir), "--key-algorithm", "rsa"),
        "Error: configuration: key_algorithm: must be one of ecdsa, ed25519, got 'rsa' "
        "(from command line)",
    )
    assert_usage_error(
        run_cli("serve", "--data-dir", str(data_dir), env={"TUFNOTARY_WORKERS": "lots"}),
        "workers: expected an integer, got 'lots' (from environment variable TUFNOTARY_WORKERS)",
    )
    assert_usage_error(
        run_cli("serve", "--data-dir", str(data_dir), "--tls-cert", "cert.pem"),
        "tls_cert, tls_key: set both or neither",
    )
    assert_usage_error(
        run_cli(
            "serve",
            *("--data-dir", str(data_dir)),
            *("--tls-cert", str(tmp_path / "no.crt"), "--tls-key", str(tmp_path / "no.key")),
        ),
        f"tls_cert: no such file: {tmp_path / 'no.crt'}",
    )
    assert not data_dir.exists()  # nothing is created before the configuration is valid
    assert_usage_error(
        run_cli("migrate", "--database", "db.sqlite"), "database_url: expected a URL"
    )
    assert_usage_error(
        run_cli("serve", "--database", "foo://db/x"), "database_url: unsupported database 'foo'"
    )
    assert_usage_error(run_cli("migrate", "--downgrade"), "--downgrade needs --revision")


def test_metrics_add_up_every_worker_and_requests_are_logged_as_json(tmp_path: Path) -> None:
    with running_server(tmp_path, "--workers", "3") as server:
        session = requests.Session()
        for _ in range(9):
            response = session.get(
                f"{server.url}/v2/example.com/app/_trust/tuf/root.json",
                verify=str(server.ca_cert),
                headers={"Connection": "close"},  # spread over the workers, as Go clients do
                timeout=10,
            )
            assert response.status_code == 404
        metrics = requests.get(f"{server.url}/metrics", verify=str(server.ca_cert), timeout=10)
        assert (
            'notary_server_http_request_duration_seconds_count{method="GET",'
            'operation="GetRole",status="404"} 9.0'
        ) in metrics.text
        lines = [
            json.loads(line) for line in server.log.read_text().splitlines() if line[:1] == "{"
        ]
    requests_logged = [line for line in lines if line.get("path", "").endswith("/root.json")]
    assert len(requests_logged) == 9
    other = [line for line in server.log.read_text().splitlines() if line[:1] != "{"]
    assert all(line.startswith("tufnotary-server: ") for line in other), other  # the CLI's own
    gunicorn = [line["msg"] for line in lines if line["logger"] == "gunicorn.error"]
    assert any(msg.startswith("Booting worker with pid") for msg in gunicorn), gunicorn
    warnings = [line for line in lines if "no key passphrase configured" in line["msg"]]
    assert len(warnings) == 1  # once, not once per worker
    assert {line["status"] for line in requests_logged} == {404}
    assert all(line["gun"] == "example.com/app" and line["request_id"] for line in requests_logged)


def test_version_and_short_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("tufnotary-server, version ")
    for args in (("-h",), ("serve", "-h"), ("rekey", "-h")):
        shown = run_cli(*args)
        assert shown.returncode == 0 and shown.stdout.startswith("Usage: "), args
    assert "--auto-migrate" in run_cli("serve", "-h").stdout


@pytest.fixture
def fresh_postgres(postgresql_admin: tuple[sa.Connection, sa.URL]) -> Iterator[str]:
    """A new, empty (unmigrated) PostgreSQL database, as a postgres:// URL."""
    with scratch_database(*postgresql_admin) as url:
        yield url.replace("postgresql", "postgres", 1)


def assert_start_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 1, one line on stderr naming the fix, no traceback, never "listening"."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "listening" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unreachable_database_stops_the_start(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    assert_start_refused(
        run_cli("serve", "--data-dir", str(tmp_path / "data"), "--database", url),
        f"database postgresql://postgres@127.0.0.1:{url.split(':')[2]} is unusable",
        "Connection refused",
        "check database_url",
    )


def test_unmigrated_database_stops_the_start_unless_auto_migrate(
    tmp_path: Path, fresh_postgres: str
) -> None:
    data_dir = str(tmp_path / "data")
    refused = run_cli("serve", "--data-dir", data_dir, "--database", fresh_postgres)
    shown = fresh_postgres.replace("postgres://", "postgresql://", 1)
    assert_start_refused(
        refused,
        f"database {shown} is not at the latest schema (at none, latest ",
        f"run `tufnotary-server migrate --database {shown}`",
        "--auto-migrate (TUFNOTARY_AUTO_MIGRATE=true)",
    )
    with pytest.raises(StartupError, match="is not at the latest schema"):  # plain gunicorn
        create_app(Settings(data_dir=tmp_path / "app", database_url=shown, log_level="error"))
    env = {"TUFNOTARY_AUTO_MIGRATE": "true", "TUFNOTARY_DATABASE_URL": fresh_postgres}
    with running_server(tmp_path, env=env) as server:
        response = requests.get(
            f"{server.url}/v2/example.com/app/_trust/tuf/timestamp.key",
            verify=str(server.ca_cert),
            timeout=10,
        )
        assert response.status_code == 200, response.text


def test_switching_from_the_development_key_with_rekey(tmp_path: Path) -> None:
    """Keys made under the development key: a new passphrase alone refuses to start; `rekey`
    re-encrypts server and token-signing keys, audited, and the server starts with it."""
    data_dir = tmp_path / "data"
    key_urls = [f"/v2/example.com/app/_trust/tuf/{role}.key" for role in ("timestamp", "snapshot")]
    with running_server(tmp_path) as server:
        keys = [
            requests.get(server.url + url, verify=str(server.ca_cert), timeout=10).json()
            for url in key_urls
        ]
    rotated = run_cli("token-key", "rotate", "--data-dir", str(data_dir))
    assert rotated.returncode == 0, rotated.stderr
    secret = tmp_path / "passphrase"
    secret.write_text("a long production passphrase\n")
    new = {"TUFNOTARY_KEY_PASSPHRASE_FILE": str(secret)}
    assert_start_refused(
        run_cli("serve", "--data-dir", str(data_dir), env=new),
        f"stored keys do not decrypt with the key passphrase in {secret}",
        "`tufnotary-server rekey --new-passphrase-file FILE` with the old one configured",
    )

    wrong = tmp_path / "wrong"
    wrong.write_text("not it")
    refused = run_cli(
        "rekey",
        *("--data-dir", str(data_dir), "--new-passphrase-file", str(secret)),
        env={"TUFNOTARY_KEY_PASSPHRASE_FILE": str(wrong)},
    )
    assert refused.returncode == 1 and "nothing was changed" in refused.stderr, refused.stderr
    rekeyed = run_cli("rekey", "--data-dir", str(data_dir), "--new-passphrase-file", str(secret))
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert "3 keys re-encrypted" in rekeyed.stderr  # timestamp, snapshot, token-signing
    assert_start_refused(
        run_cli("serve", "--data-dir", str(data_dir)),
        f"the generated development key in {data_dir / 'master.key'}",
    )
    audit = run_cli("audit", "--data-dir", str(data_dir), "--json")
    records = [json.loads(line) for line in audit.stdout.splitlines()]
    assert records[-1]["action"] == "keys-rekey" and records[-1]["actor"] == "cli"
    assert records[-1]["detail"] == {"keys": 3}

    with running_server(tmp_path, env=new) as server:
        for url, key in zip(key_urls, keys, strict=True):
            again = requests.get(server.url + url, verify=str(server.ca_cert), timeout=10)
            assert again.json() == key  # the same keys, now under the new passphrase
        assert "no key passphrase configured" not in server.log.read_text()


def test_rekey_is_one_transaction(store: Stores) -> None:
    """A key that does not decrypt, even the last one, leaves every key as it was."""
    old, new = KeyVault(b"old passphrase"), KeyVault(b"new passphrase")
    for gun in ("a", "b"):
        ServerKeys(store.keys, old, "ecdsa").get_or_create(gun, "timestamp", None)
    stray = new.encrypt(b"x", b"")  # sorted last, so the others were rewritten first
    store.keys.add_key(
        StoredKey("f" * 64, "c", "snapshot", "ecdsa", b"-", stray, datetime.now(UTC), None)
    )
    with pytest.raises(KeyDecryptionError, match=f"snapshot key {'f' * 64}"):
        rekey(store.keys, old, new)
    store.keys.delete_key("f" * 64)
    check_keys(store.keys, old)
    assert rekey(store.keys, old, new, actor="admin") == 2  # both still decrypted with the old one
    check_keys(store.keys, new)
    with pytest.raises(KeyDecryptionError):
        check_keys(store.keys, old)
    (entry,) = store.audit.records(actor="admin")
    assert (entry.action, entry.detail) == ("keys-rekey", {"keys": 2})
