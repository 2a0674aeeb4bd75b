"""Run the Alembic migrations of ``tufnotary.migrations`` programmatically (no alembic.ini)."""

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from tufnotary import migrations

from .storage import make_engine


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    _run(command.upgrade, url_or_engine, revision)


def downgrade(url_or_engine: str | Engine, revision: str = "base") -> None:
    """Migrate the database down to ``revision`` (``base`` drops every table)."""
    _run(command.downgrade, url_or_engine, revision)


def _run(step: Callable[[Config, str], None], url_or_engine: str | Engine, revision: str) -> None:
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    config = Config()
    location = str(Path(migrations.__file__).parent)
    config.set_main_option("script_location", location.replace("%", "%%"))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, revision)
    finally:
        if engine is not url_or_engine:
            engine.dispose()
