"""Run the Alembic migrations of ``tufnotary.migrations`` programmatically (no alembic.ini)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from tufnotary import migrations
from tufnotary.server.storage.engine import make_engine

_LOCK = 0x7475666E  # "tufn": one migration at a time per database server
_LOCK_NAME, _LOCK_WAIT = "tufnotary_migrate", 300


@dataclass(frozen=True)
class SchemaState:
    """The revision a database is at (None: no tables yet) and the newest one known."""

    current: str | None
    head: str

    @property
    def latest(self) -> bool:
        return self.current == self.head

    @property
    def known(self) -> bool:
        """Whether this version of tufnotary knows ``current`` (a newer one may have set it)."""
        return self.current is None or _scripts().get_revision(self.current) is not None


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    _run(command.upgrade, url_or_engine, revision)


def downgrade(url_or_engine: str | Engine, revision: str = "base") -> None:
    """Migrate the database down to ``revision`` (``base`` drops every table)."""
    _run(command.downgrade, url_or_engine, revision)


def schema_state(engine: Engine) -> SchemaState:
    """Where the database's schema stands; SQLAlchemy errors (unreachable) propagate."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = _scripts().get_current_head()
    assert head is not None
    return SchemaState(current, head)


def _config() -> Config:
    config = Config()
    location = str(Path(migrations.__file__).parent)
    config.set_main_option("script_location", location.replace("%", "%%"))
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


@contextmanager
def _one_at_a_time(connection: Connection) -> Iterator[None]:
    """Make concurrent migrations (servers starting together with auto_migrate) wait for each
    other; SQLite's write lock already does."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK})")
    elif dialect in ("mysql", "mariadb"):
        connection.exec_driver_sql(f"SELECT GET_LOCK('{_LOCK_NAME}', {_LOCK_WAIT})")
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT RELEASE_LOCK('{_LOCK_NAME}')")
        return
    yield


def _run(step: Callable[[Config, str], None], url_or_engine: str | Engine, revision: str) -> None:
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    config = _config()
    try:
        with engine.begin() as connection, _one_at_a_time(connection):
            config.attributes["connection"] = connection
            step(config, revision)
    finally:
        if engine is not url_or_engine:
            engine.dispose()
