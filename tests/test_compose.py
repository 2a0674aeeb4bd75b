"""docker-compose.yml and Dockerfile: valid, and the stack they describe runs.

No Docker engine is needed: `docker-compose config` validates and interpolates the file, and the
stack runs here as compose describes it: the server service's command and health check against
a fresh PostgreSQL database instead of the `db` service, and nginx with the proxy service's
template rendered the way the official nginx image renders it. Every named volume is a local
directory, mount points inside the containers are replaced by those directories, and the secret's
mount point by a temporary file. nginx (Debian package nginx), envsubst (gettext-base) and curl
are needed for the stack; without them the test skips, and fails when CI=true.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, NoReturn

import pytest
import requests
import sqlalchemy as sa

from support.server import (
    STOP_TIMEOUT,
    free_port,
    launched,
    server_environment,
    wait_until_healthy,
)
from tufnotary.server.cli import serve
from tufnotary.server.config import Settings
from tufnotary.server.storage.engine import make_engine

ROOT = Path(__file__).resolve().parent.parent
SECRET_MOUNT = Path("/run/secrets/key_passphrase")  # where compose mounts secret key_passphrase
TEMPLATE = ROOT / "deploy" / "nginx" / "tufnotary.conf.template"
# The official nginx image renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/ (its
# default server is conf.d/default.conf), and its own environment has these variables too.
TEMPLATE_MOUNT = "/etc/nginx/templates/default.conf.template"
NGINX_IMAGE_ENV = (
    *("PATH", "HOME", "HOSTNAME", "NGINX_VERSION", "NJS_VERSION", "NJS_RELEASE"),
    *("PKG_RELEASE", "DYNPKG_RELEASE"),
)
NGINX_WORKER_UID = 101  # user nginx of the official image
SERVER_UID = 10001  # user tufnotary of the Dockerfile
STARTUP_TIMEOUT = 60.0


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


@pytest.fixture(scope="module")
def proxy_service(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]["proxy"]


def cli_steps(service: dict[str, Any]) -> list[list[str]]:
    """The commands of `sh -c "A && B && exec C"`, each split into words."""
    shell, flag, script = service["command"]
    assert (shell, flag) == ("sh", "-c")
    return [shlex.split(step) for step in script.split("&&")]


def serve_settings(args: list[str], env: dict[str, str]) -> Settings:
    """Settings as `tufnotary-server serve ARGS` would build them, without serving."""
    params = serve.make_context("serve", args).params
    return Settings.load(params.pop("config_file"), env=env, **params)


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The service's mounts: target -> (source, mode)."""
    found = {}
    for volume in service["volumes"]:
        source, target, mode = volume.split(":")
        found[target] = (source, mode)
    return found


def listen_port(proxy_service: dict[str, Any]) -> int:
    """The port nginx listens on: PROXY_LISTEN is a bare port (every address)."""
    return int(proxy_service["environment"]["PROXY_LISTEN"])


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
    """Versioned tags: postgres by minor version, nginx by patch version, our image by the
    project's version."""
    assert re.fullmatch(r"postgres:\d+\.\d+", compose["services"]["db"]["image"])
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+", compose["services"]["proxy"]["image"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert server_service["image"] == f"tufnotary-server:{version}"
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base[1])
    assert re.search(rf"useradd .*--uid {SERVER_UID} ", (ROOT / "Dockerfile").read_text())


def test_services(
    compose: dict[str, Any], server_service: dict[str, Any], proxy_service: dict[str, Any]
) -> None:
    """db <- server <- proxy, each started once the one before is healthy; only the proxy is
    published; the data volume reaches the proxy read-only."""
    db = compose["services"]["db"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert server_service["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert proxy_service["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert Path(server_service["build"]["context"]) == ROOT
    assert (ROOT / "Dockerfile").is_file()
    assert "ports" not in server_service
    published = [(p["published"], p["target"]) for p in proxy_service["ports"]]
    assert published == [(4443, listen_port(proxy_service))]
    data_volume = mounts(server_service)["/data"][0]
    assert data_volume in compose["volumes"]  # a named volume
    assert (data_volume, "ro") in mounts(proxy_service).values()
    assert any(v.split(":")[0] in compose["volumes"] for v in db["volumes"])


def test_environment_is_valid_settings(server_service: dict[str, Any]) -> None:
    environment = server_service["environment"]
    migrate, tls_init, serve_step = cli_steps(server_service)
    assert migrate == ["tufnotary-server", "migrate"]
    settings = serve_settings(serve_step[3:], environment)
    assert settings.database_url == environment["TUFNOTARY_DATABASE_URL"]
    assert settings.database_url.startswith("postgresql://tufnotary:")
    assert settings.database_url.endswith("@db:5432/tufnotary")
    assert settings.key_passphrase is None
    assert settings.key_passphrase_file == SECRET_MOUNT
    assert settings.listen.startswith("unix:/")
    assert settings.trusted_proxies == 1  # nginx
    assert settings.forwarded_header == "x-forwarded-for"  # what the template sets
    assert settings.data_dir == Path("/data")
    assert tls_init == ["tufnotary-server", "tls-init", "--data-dir", str(settings.data_dir)]


def test_proxy_renders_the_shipped_template(
    compose: dict[str, Any], server_service: dict[str, Any], proxy_service: dict[str, Any]
) -> None:
    """The proxy gets deploy/nginx/tufnotary.conf.template as the image's default server, a
    value for each of its placeholders and nothing else, and reaches the server's socket."""
    assert mounts(proxy_service)[TEMPLATE_MOUNT] == (str(TEMPLATE), "ro")
    environment = proxy_service["environment"]
    placeholders = set(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text()))
    assert envsubst_names(environment) == placeholders
    assert {name for name in environment if name.startswith("PROXY_")} == placeholders

    listen = serve_settings(cli_steps(server_service)[-1][3:], {}).listen
    assert environment["PROXY_UPSTREAM"] == listen  # the same unix:/PATH in both containers
    socket_dir = str(Path(listen.removeprefix("unix:")).parent)
    socket_volume = mounts(server_service)[socket_dir][0]
    assert mounts(proxy_service)[socket_dir] == (socket_volume, "rw")
    assert mount_options(compose, socket_volume) == {
        "uid": str(SERVER_UID),
        "gid": str(NGINX_WORKER_UID),
        "mode": "0750",
    }


def test_dockerfile_command_is_valid() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None
    program, command, *args = json.loads(cmd[1])
    assert (program, command) == ("tufnotary-server", "serve")
    settings = serve_settings(args, {})
    assert (settings.listen, settings.data_dir) == ("0.0.0.0:4443", Path("/data"))


def envsubst_names(environment: dict[str, str]) -> set[str]:
    """The variables the nginx image's entrypoint substitutes: every variable of the container
    whose name matches NGINX_ENVSUBST_FILTER (an awk regular expression; all if unset)."""
    pattern = environment.get("NGINX_ENVSUBST_FILTER", "")
    return {name for name in [*environment, *NGINX_IMAGE_ENV] if re.search(pattern, name)}


def mount_options(compose: dict[str, Any], volume: str) -> dict[str, str]:
    """The named volume's mount options (`driver_opts` `o`), e.g. {"mode": "0750"}."""
    options = (compose["volumes"][volume] or {}).get("driver_opts", {}).get("o", "")
    return dict(option.split("=", 1) for option in options.split(",") if option)


@dataclass(frozen=True)
class LocalVolumes:
    """Each named volume of the stack as a directory under `root`."""

    root: Path

    def create(self, compose: dict[str, Any], workers_gid: int) -> None:
        """The volumes' directories: mode 0755 like Docker's, or the volume's mode option; its
        gid option (nginx's workers in the image) becomes `workers_gid`."""
        for name in compose["volumes"]:
            options = mount_options(compose, name)
            directory = self.root / name
            directory.mkdir()
            directory.chmod(int(options.get("mode", "0755"), 8))
            if "gid" in options:
                os.chown(directory, -1, workers_gid)

    def localize(self, service: dict[str, Any], text: str) -> str:
        """`text` with the service's volume mount points replaced by the volumes' directories."""
        for target, (source, _mode) in sorted(mounts(service).items(), reverse=True):
            if not source.startswith("/"):  # a named volume, not a bind mount
                pattern = rf"(?<![\w.-]){re.escape(target)}(?![\w.-])"
                text = re.sub(pattern, str(self.root / source), text)
        return text


@pytest.fixture
def volumes() -> Iterator[LocalVolumes]:
    """A directory everyone may traverse (unlike pytest's tmp_path), as nginx's workers must."""
    root = Path(tempfile.mkdtemp(prefix="tufnotary-compose-"))
    root.chmod(0o755)
    try:
        yield LocalVolumes(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_healthcheck(
    service: dict[str, Any], volumes: LocalVolumes, replace: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The service's health check, run here with its paths (and `replace`) substituted."""
    kind, program, *args = service["healthcheck"]["test"]
    assert kind == "CMD"
    executable = sys.executable if program == "python" else shutil.which(program)
    if executable is None:
        unavailable(f"{program} is not installed (Debian package {program})")
    args = [volumes.localize(service, arg) for arg in args]
    for old, new in (replace or {}).items():
        args = [arg.replace(old, new) for arg in args]
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, timeout=30, check=False
    )


def nginx_workers_user() -> tuple[str, int]:
    """As root, nginx's workers run as nobody, like the image's unprivileged user: the
    `user` directive and the group they traverse the socket directory with."""
    if os.geteuid() != 0:
        return "", os.getegid()  # nginx cannot switch users
    nobody = pwd.getpwnam("nobody")
    return f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};", nobody.pw_gid


def render_proxy(
    proxy_service: dict[str, Any], volumes: LocalVolumes, listen: str, user: str
) -> Path:
    """nginx's configuration as the proxy container gets it: the template through envsubst with
    the service's environment (paths localized, PROXY_LISTEN = `listen`), inside the main file
    of scripts/serve-stack. Returns the main file."""
    envsubst = shutil.which("envsubst")
    if envsubst is None:
        unavailable("envsubst is not installed (Debian package gettext-base)")
    environment = {
        name: volumes.localize(proxy_service, value)
        for name, value in proxy_service["environment"].items()
    } | {"PROXY_LISTEN": listen}
    shell_format = " ".join(f"${{{name}}}" for name in sorted(envsubst_names(environment)))
    template_source = mounts(proxy_service)[TEMPLATE_MOUNT][0]
    rendered = subprocess.run(
        [envsubst, shell_format],
        input=Path(template_source).read_text(),
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not re.search(r"\$\{\w+\}", rendered)  # every placeholder filled
    state = volumes.root / "nginx"
    state.mkdir(mode=0o755)
    (state / "tufnotary.conf").write_text(rendered)
    main_template = Template((TEMPLATE.parent / "nginx.conf.template").read_text())
    main = state / "nginx.conf"
    main.write_text(main_template.safe_substitute(PROXY_STATE_DIR=state, PROXY_USER=user))
    return main


def wait_for_healthcheck(
    process: subprocess.Popen[bytes], service: dict[str, Any], volumes: LocalVolumes, log: Path
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while (checked := run_healthcheck(service, volumes)).returncode != 0:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{checked.stderr}\n{log.read_text()}"
        time.sleep(0.2)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_compose_stack_runs(
    compose: dict[str, Any],
    server_service: dict[str, Any],
    proxy_service: dict[str, Any],
    database_url: str,
    volumes: LocalVolumes,
) -> None:
    """The server service's command (migrate, tls-init, serve on the socket) and health check,
    then nginx as the proxy service configures it and its health check: HTTPS through nginx,
    verified with the generated CA, reaches the server. nginx's workers run unprivileged and
    reach the socket through the socket volume's group, like the image's user nginx."""
    nginx = shutil.which("nginx")
    if nginx is None:
        unavailable("nginx is not installed (Debian package nginx)")
    user, workers_gid = nginx_workers_user()
    volumes.create(compose, workers_gid)

    passphrase_file = volumes.root / "key-passphrase"
    passphrase_file.write_text("compose test passphrase\n")
    env = server_service["environment"] | {
        "TUFNOTARY_DATABASE_URL": database_url,
        "TUFNOTARY_KEY_PASSPHRASE_FILE": str(passphrase_file),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    shell, flag, script = server_service["command"]
    command = [shell, flag, volumes.localize(server_service, script)]
    server_log, proxy_log = volumes.root / "server.log", volumes.root / "proxy.log"
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = server_environment(env)
    with launched(command, server_log, env, stop_timeout=STOP_TIMEOUT) as server:
        wait_for_healthcheck(server, server_service, volumes, server_log)
        printed = dict(re.findall(r"^(ca_cert|cert|key)=(.+)$", server_log.read_text(), re.M))
        proxy_env = proxy_service["environment"]
        assert printed["cert"] == volumes.localize(proxy_service, proxy_env["PROXY_TLS_CERT"])
        assert printed["key"] == volumes.localize(proxy_service, proxy_env["PROXY_TLS_KEY"])
        upstream = volumes.localize(proxy_service, proxy_env["PROXY_UPSTREAM"])
        socket = Path(upstream.removeprefix("unix:"))
        assert stat.S_ISSOCK(socket.stat().st_mode)

        config = render_proxy(proxy_service, volumes, f"127.0.0.1:{port}", user)
        checked = subprocess.run(
            [nginx, "-t", "-q", "-c", str(config)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stderr
        with launched([nginx, "-c", str(config)], proxy_log, os.environ) as proxy:
            ca_cert = Path(printed["ca_cert"])
            wait_until_healthy(proxy, url, proxy_log, ca_cert=ca_cert, timeout=STARTUP_TIMEOUT)
            replace = {f"127.0.0.1:{listen_port(proxy_service)}": f"127.0.0.1:{port}"}
            checked = run_healthcheck(proxy_service, volumes, replace)
            assert checked.returncode == 0, checked.stderr

            missing = requests.get(
                f"{url}/v2/example.com/compose/app/_trust/tuf/root.json",
                verify=str(ca_cert),
                timeout=10,
            )
            assert missing.status_code == 404, missing.text
            assert missing.json()["errors"][0]["code"] == "METADATA_NOT_FOUND"  # the server's
            assert "X-Cache-Status" in missing.headers  # through nginx's configuration

        engine = make_engine(database_url)
        try:
            assert "tuf_files" in sa.inspect(engine).get_table_names()  # migrated
        finally:
            engine.dispose()
        assert not (Path(printed["ca_cert"]).parent.parent / "master.key").exists()  # secret used
    assert server.returncode == 0, server_log.read_text()  # SIGTERM: a clean stop
    assert run_healthcheck(server_service, volumes).returncode != 0  # stopped: unhealthy
