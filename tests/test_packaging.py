"""`pip install .` ships every module and the migrations; the editable install maps the tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tufnotary.server

ROOT = Path(__file__).resolve().parents[1]


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
