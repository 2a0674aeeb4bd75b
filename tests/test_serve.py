"""`tufnotary-server` end to end: serve over TLS, migrate, configuration errors."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import requests

from support.server import (
    free_port,
    launched,
    running_server,
    server_environment,
    wait_until_healthy,
)
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
    with running_server(tmp_path) as server:
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


def test_certificate_is_reused_on_restart(tmp_path: Path) -> None:
    with running_server(tmp_path) as first:
        first_cert = served_certificate(first.port, first.ca_cert)
        ca_bytes = first.ca_cert.read_bytes()
    with running_server(tmp_path) as second:
        assert second.ca_cert == first.ca_cert
        assert second.ca_cert.read_bytes() == ca_bytes
        assert served_certificate(second.port, second.ca_cert) == first_cert


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
        "tufnotary.server:create_app()",
    ]
    log = tmp_path / "gunicorn.log"
    with launched(command, log, server_environment(env)) as process:
        url = f"https://127.0.0.1:{port}"
        wait_until_healthy(process, url, log, ca_cert=tls.ca_cert)
        assert requests.get(f"{url}/v2/", verify=str(tls.ca_cert), timeout=10).ok


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
    assert {line["status"] for line in requests_logged} == {404}
    assert all(line["gun"] == "example.com/app" and line["request_id"] for line in requests_logged)
