"""`pip install .` ships every module and the migrations, and gives working commands.

The wheel is installed without extras into a fresh virtualenv (its dependencies come from the
package index or pip's cache), and that copy serves, publishes and verifies on its own.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tufnotary.server
from support.server import free_port, launched, server_environment, wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("metadata", "server", "client", "admission", "importer", "migrations")
GUN = "registry.example.com/packaging/app"


def _pip(*args: str, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT), cwd=out)
    (built,) = out.glob("tufnotary-*.whl")
    return built


def test_wheel_contains_packages_and_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "tufnotary/metadata/canonical.py",
        "tufnotary/server/app.py",
        "tufnotary/client/__init__.py",
        "tufnotary/admission/app.py",
        "tufnotary/importer/__init__.py",
        "tufnotary/migrations/env.py",
        "tufnotary/migrations/script.py.mako",
    }
    assert expected <= names
    assert any(n.startswith("tufnotary/migrations/versions/0001") for n in names)
    assert not any(n.startswith(("tests/", "tufnotary/tests")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "tufnotary-server = tufnotary.server.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_installed_copy_runs_its_migrations(wheel: Path, tmp_path: Path) -> None:
    """The installed package, away from the source tree, finds its Alembic revisions."""
    target = tmp_path / "site"
    _pip("install", "--no-deps", "--quiet", "--target", str(target), str(wheel), cwd=tmp_path)
    script = (
        "import json, tufnotary.server.migrate as m, sqlalchemy as sa;"
        f"m.upgrade('sqlite:///{tmp_path}/db.sqlite');"
        "print(m.__file__);"
        f"engine = sa.create_engine('sqlite:///{tmp_path}/db.sqlite');"
        "print(json.dumps(sa.inspect(engine).get_table_names()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    module_path, tables = result.stdout.splitlines()
    assert module_path.startswith(str(target))
    assert {"tuf_files", "changefeed", "server_keys"} <= set(json.loads(tables))


def test_editable_install_maps_the_source_tree() -> None:
    """The test environment is an editable install (`pip install -e .`) of this checkout."""
    assert Path(tufnotary.server.__file__).resolve() == ROOT / "server" / "__init__.py"


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The nodes under ``if TYPE_CHECKING:``: imports of stubs that never run."""
    return {
        node
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for statement in block.body
        for node in ast.walk(statement)
    }


def _imported_top_level_modules(source: Path) -> set[str]:
    """Top-level names of the absolute imports in one Python file that run at import time."""
    names: set[str] = set()
    tree = ast.parse(source.read_text(), str(source))
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


# What each part may import of the others (shared/design.md): metadata imports none of them,
# server and client never each other, admission only the client (and metadata), the importer
# metadata, server and client; only server/cli.py imports the importer (its commands).
FORBIDDEN_IMPORTS = {
    "metadata": (
        "tufnotary.server",
        "tufnotary.client",
        "tufnotary.admission",
        "tufnotary.importer",
    ),
    "server": ("tufnotary.client", "tufnotary.admission"),
    "client": ("tufnotary.server", "tufnotary.admission", "tufnotary.importer"),
    "admission": ("tufnotary.server", "tufnotary.importer"),
    "importer": ("tufnotary.admission",),
}


def _imported_names(source: Path) -> set[str]:
    """Dotted names of every absolute import in one Python file, type-checking ones included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_parts_import_only_what_the_design_allows() -> None:
    crossings = [
        f"{source.relative_to(ROOT)} imports {name}"
        for part, banned in FORBIDDEN_IMPORTS.items()
        for source in sorted((ROOT / part).rglob("*.py"))
        for name in sorted(_imported_names(source))
        if name.startswith(banned)
    ]
    assert crossings == []


def test_only_the_server_cli_imports_the_importer() -> None:
    importing = [
        str(source.relative_to(ROOT))
        for source in sorted((ROOT / "server").rglob("*.py"))
        if any(name.startswith("tufnotary.importer") for name in _imported_names(source))
    ]
    assert importing == ["server/cli.py"]


def _requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match[0]).lower()


def test_every_third_party_import_is_a_dependency() -> None:
    """Each distribution the shipped modules import is in `dependencies`, not only in extras."""
    modules = {
        name
        for directory in SOURCE_DIRS
        for source in (ROOT / directory).rglob("*.py")
        for name in _imported_top_level_modules(source)
    }
    third_party = modules - set(sys.stdlib_module_names) - {"tufnotary"}
    distributions = importlib.metadata.packages_distributions()
    unknown = sorted(name for name in third_party if name not in distributions)
    assert not unknown, f"imported but not installed: {unknown}"
    needed = {_requirement_name(d) for name in third_party for d in distributions[name]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    assert needed - declared == set(), "add these to [project] dependencies"


@dataclass(frozen=True)
class InstalledCopy:
    """A virtualenv with the wheel installed without extras."""

    bin: Path

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            cwd=cwd,
            env=server_environment(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> InstalledCopy:
    """`python -m venv` + `pip install WHEEL`: what a user gets from `pip install .`."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(home / "venv")
    python = home / "venv" / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)],
        cwd=home,
        env={k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"pip install of the wheel failed:\n{result.stderr}"
    return InstalledCopy(python.parent)


@pytest.mark.parametrize("command", ["tufnotary", "tufnotary-server", "tufnotary-admission"])
def test_installed_commands_show_help(
    installed: InstalledCopy, command: str, tmp_path: Path
) -> None:
    result = installed.run(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {command} ")


@pytest.fixture
def installed_server(installed: InstalledCopy, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The installed `tufnotary-server serve` on a free port; the client's environment for it."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    command = [str(installed.bin / "tufnotary-server"), "serve"]
    command += ["--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)]
    log = tmp_path / "server.log"
    with launched(command, log, server_environment({})) as process:
        ca_cert = wait_until_healthy(process, url, log)
        yield {
            "TUFNOTARY_SERVER": url,
            "TUFNOTARY_TLSCACERT": str(ca_cert),
            "TUFNOTARY_TRUST_DIR": str(tmp_path / "trust"),
            "NOTARY_ROOT_PASSPHRASE": "packaging root",
            "NOTARY_TARGETS_PASSPHRASE": "packaging targets",
            "NOTARY_SNAPSHOT_PASSPHRASE": "packaging snapshot",
        }


def test_installed_client_publishes_and_verifies(
    installed: InstalledCopy, installed_server: dict[str, str], tmp_path: Path
) -> None:
    """Both installed commands, alone: serve, init, sign a tag, verify it."""
    manifest = b'{"schemaVersion":2}'
    digest = hashlib.sha256(manifest).hexdigest()
    steps = [
        ("tufnotary", "init", GUN),
        ("tufnotary", "addhash", "-p", GUN, "1.0", str(len(manifest)), "--sha256", digest),
    ]
    for step in steps:
        result = installed.run(*step, cwd=tmp_path, env=installed_server)
        assert result.returncode == 0, f"{step}: {result.stdout}{result.stderr}"

    verified = installed.run(
        "tufnotary", "verify-image", f"{GUN}:1.0", "--json", cwd=tmp_path, env=installed_server
    )
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["digest"] == f"sha256:{digest}"
