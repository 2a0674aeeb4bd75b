"""docker-compose.yml and Dockerfile: valid, and their command lines are what the CLI accepts.

No Docker engine is needed: `docker-compose config` validates and interpolates the file, and the
server's command and health check run here against a fresh PostgreSQL database instead of the
`db` service, with /data and the secret's mount point replaced by temporary paths.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa

from support.server import free_port, launched, server_environment, wait_until_healthy
from tufnotary.server.cli import serve
from tufnotary.server.config import Settings
from tufnotary.server.storage import make_engine

ROOT = Path(__file__).resolve().parent.parent
SECRET_MOUNT = Path("/run/secrets/key_passphrase")  # where compose mounts secret key_passphrase


def unavailable(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def docker_compose(*args: str, passphrase_file: str | None) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        unavailable("docker-compose is not installed (Debian package docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUFNOTARY_")}
    if passphrase_file is not None:
        env["TUFNOTARY_KEY_PASSPHRASE_FILE"] = passphrase_file
    return subprocess.run(
        [executable, "-f", "docker-compose.yml", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The output of `docker-compose config`, parsed."""
    try:
        import yaml
    except ImportError:
        unavailable("PyYAML is not installed (pip install pyyaml)")
    result = docker_compose("config", passphrase_file=None)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def server_service(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["server"]


def cli_steps(service: dict[str, Any]) -> list[list[str]]:
    """The commands of `sh -c "A && exec B"`, each split into words."""
    shell, flag, script = service["command"]
    assert (shell, flag) == ("sh", "-c")
    return [shlex.split(step) for step in script.split("&&")]


def serve_settings(args: list[str], env: dict[str, str]) -> Settings:
    """Settings as `tufnotary-server serve ARGS` would build them, without serving."""
    params = serve.make_context("serve", args).params
    return Settings.load(params.pop("config_file"), env=env, **params)


def test_passphrase_is_a_secret_file(
    compose: dict[str, Any], server_service: dict[str, Any]
) -> None:
    """The master passphrase is no variable of the service: a secret file is mounted instead."""
    assert compose["secrets"]["key_passphrase"]["file"] == str(ROOT / "key-passphrase")
    assert [s["source"] for s in server_service["secrets"]] == ["key_passphrase"]
    assert "TUFNOTARY_KEY_PASSPHRASE" not in server_service["environment"]
    assert server_service["environment"]["TUFNOTARY_KEY_PASSPHRASE_FILE"] == str(SECRET_MOUNT)
    assert "key-passphrase" in (ROOT / ".gitignore").read_text().split()

    result = docker_compose("config", passphrase_file="/etc/tufnotary/passphrase")
    assert result.returncode == 0, result.stderr
    assert "file: /etc/tufnotary/passphrase" in result.stdout


def test_images_are_pinned(compose: dict[str, Any], server_service: dict[str, Any]) -> None:
    """Versioned tags: postgres by minor version, our image by the project's version."""
    assert re.fullmatch(r"postgres:\d+\.\d+", compose["services"]["db"]["image"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert server_service["image"] == f"tufnotary-server:{version}"
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base[1])


def test_services(compose: dict[str, Any], server_service: dict[str, Any]) -> None:
    db = compose["services"]["db"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert server_service["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert Path(server_service["build"]["context"]) == ROOT
    assert (ROOT / "Dockerfile").is_file()
    assert [(p["published"], p["target"]) for p in server_service["ports"]] == [(4443, 4443)]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in server_service["volumes"]}
    assert volumes["/data"] in compose["volumes"]  # a named volume
    assert any(v.split(":")[0] in compose["volumes"] for v in db["volumes"])


def test_environment_is_valid_settings(server_service: dict[str, Any]) -> None:
    environment = server_service["environment"]
    settings = serve_settings(cli_steps(server_service)[-1][3:], environment)
    assert settings.database_url == environment["TUFNOTARY_DATABASE_URL"]
    assert settings.database_url.startswith("postgresql://tufnotary:")
    assert settings.database_url.endswith("@db:5432/tufnotary")
    assert settings.key_passphrase is None
    assert settings.key_passphrase_file == SECRET_MOUNT
    assert settings.listen == "0.0.0.0:4443"
    assert settings.data_dir == Path("/data")
    assert settings.tls_cert is None  # generated in /data/tls


def test_dockerfile_command_is_valid() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None
    program, command, *args = json.loads(cmd[1])
    assert (program, command) == ("tufnotary-server", "serve")
    settings = serve_settings(args, {})
    assert (settings.listen, settings.data_dir) == ("0.0.0.0:4443", Path("/data"))


def healthcheck(server_service: dict[str, Any], port: int) -> subprocess.CompletedProcess[str]:
    """The service's health check, run here against 127.0.0.1:`port`."""
    kind, program, *args = server_service["healthcheck"]["test"]
    assert (kind, program) == ("CMD", "python")
    return subprocess.run(
        [sys.executable, *(a.replace("127.0.0.1:4443", f"127.0.0.1:{port}") for a in args)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_compose_server_runs(
    server_service: dict[str, Any], database_url: str, tmp_path: Path
) -> None:
    """The service's command (migrate, serve) and health check, with its environment.

    PostgreSQL is a fresh database, /data and the secret's mount point are temporary paths.
    """
    migrate, serve_step = cli_steps(server_service)
    assert migrate[:2] == ["tufnotary-server", "migrate"]
    assert serve_step[:3] == ["exec", "tufnotary-server", "serve"]
    executable = Path(sys.executable).parent / "tufnotary-server"
    passphrase_file = tmp_path / "key-passphrase"
    passphrase_file.write_text("compose test passphrase\n")
    env = server_service["environment"] | {
        "TUFNOTARY_DATABASE_URL": database_url,
        "TUFNOTARY_KEY_PASSPHRASE_FILE": str(passphrase_file),
    }

    result = subprocess.run(
        [str(executable), *migrate[1:]],
        env=server_environment(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    engine = make_engine(database_url)
    try:
        assert "tuf_files" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()

    port = free_port()
    data_dir = tmp_path / "data"
    replace = {"0.0.0.0:4443": f"127.0.0.1:{port}", "/data": str(data_dir)}
    command = [str(executable), *(replace.get(arg, arg) for arg in serve_step[2:])]
    log = tmp_path / "server.log"
    url = f"https://127.0.0.1:{port}"
    with launched(command, log, server_environment(env)) as process:
        wait_until_healthy(process, url, log)
        checked = healthcheck(server_service, port)
        assert checked.returncode == 0, checked.stderr
        assert not (data_dir / "master.key").exists()  # the passphrase came from the secret
    assert healthcheck(server_service, port).returncode != 0  # stopped: unhealthy
