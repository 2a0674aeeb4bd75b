"""Shared fixtures: a fresh database per test on SQLite, PostgreSQL and MariaDB.

PostgreSQL and MariaDB are reached through admin URLs (override with TUFNOTARY_TEST_POSTGRES_URL
and TUFNOTARY_TEST_MARIADB_URL); each test gets its own database, dropped afterwards. An
unreachable server skips those tests, or fails them when CI=true. A migrated SQLite or MariaDB
database is a copy of one migrated once per session (the migrations' tests use ``database_url``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa

from support.databases import copy_database, scratch_database
from support.softhsm import SoftHSM, make_token, softhsm_available
from tufnotary.server.migrate import upgrade
from tufnotary.server.storage import Stores
from tufnotary.server.storage.engine import make_engine

# engine id -> (name, environment variable, default admin URL)
_SERVERS = {
    "postgresql": (
        "PostgreSQL",
        "TUFNOTARY_TEST_POSTGRES_URL",
        "postgresql://postgres@127.0.0.1:5432/postgres",
    ),
    "mariadb": ("MariaDB", "TUFNOTARY_TEST_MARIADB_URL", "mariadb://root@127.0.0.1:3306/"),
}


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _admin(engine_id: str) -> Iterator[tuple[sa.Connection, sa.URL]]:
    """An autocommit admin connection to the server, and its URL as configured."""
    name, variable, default = _SERVERS[engine_id]
    url = sa.make_url(os.environ.get(variable, default))
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except sa.exc.DBAPIError as error:
        engine.dispose()
        reason = " ".join(str(error.orig).split())
        _unavailable(
            f"{name} not reachable on {url.host}:{url.port}: {reason}; "
            f"set {variable} to point elsewhere"
        )
    with connection:
        yield connection, url
    engine.dispose()


@pytest.fixture(scope="session")
def postgresql_admin() -> Iterator[tuple[sa.Connection, sa.URL]]:
    """Session-wide admin connection to PostgreSQL."""
    yield from _admin("postgresql")


@pytest.fixture(scope="session")
def mariadb_admin() -> Iterator[tuple[sa.Connection, sa.URL]]:
    """Session-wide admin connection to MariaDB."""
    yield from _admin("mariadb")


@pytest.fixture(
    params=[
        pytest.param(engine_id, marks=pytest.mark.engines)
        for engine_id in ("sqlite", "postgresql", "mariadb")
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a new, empty database on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tufnotary.db'}"
        return
    with scratch_database(*request.getfixturevalue(f"{request.param}_admin")) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite database migrated to head, to copy."""
    url = f"sqlite:///{tmp_path_factory.mktemp('template') / 'tufnotary.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def mariadb_template(mariadb_admin: tuple[sa.Connection, sa.URL]) -> Iterator[str]:
    """A MariaDB database migrated to head, to copy."""
    with scratch_database(*mariadb_admin) as url:
        upgrade(url)
        yield url


@pytest.fixture
def migrated_url(request: pytest.FixtureRequest, database_url: str) -> str:
    """``database_url`` with the schema migrated to head: on SQLite and MariaDB a copy of the
    session's template, which is faster than migrating."""
    engine_id = request.node.callspec.params["database_url"]
    if engine_id == "postgresql":
        upgrade(database_url)
    else:
        copy_database(request.getfixturevalue(f"{engine_id}_template"), database_url)
    return database_url


@pytest.fixture
def store(migrated_url: str) -> Iterator[Stores]:
    """The stores on the migrated database; their engine is disposed afterwards."""
    stores = Stores.from_url(migrated_url)
    yield stores
    stores.engine.dispose()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHSM:
    """The session's SoftHSM2 token (a process loads its PKCS#11 module once); tests make
    their own keys in it with ``new_key()``. Skipped without softhsm2 and python-pkcs11, or
    failed when CI=true."""
    if not softhsm_available():
        _unavailable("needs softhsm2 (scripts/install-system-deps) and python-pkcs11 ([test])")
    return make_token(tmp_path_factory.mktemp("softhsm"))
