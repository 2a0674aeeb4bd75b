"""What every `tufnotary-server` command shares: settings options, stores, one-line failures."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from tufnotary.server import signer
from tufnotary.server.config import ConfigError, Settings
from tufnotary.server.realm import RealmError
from tufnotary.server.startup import StartupError, open_vault, prepare_database
from tufnotary.server.storage import Stores
from tufnotary.server.storage.engine import StorageError

PROG = "tufnotary-server"


class ConfigurationFailure(click.ClickException):
    """Bad configuration: reported as one line on stderr, exit status 2 (like a usage error)."""

    exit_code = 2


def say(message: str) -> None:
    click.echo(f"{PROG}: {message}", err=True)


def load_settings(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        return Settings.load(config_file, **overrides)
    except ConfigError as exc:
        raise ConfigurationFailure(f"configuration: {exc}") from None


def is_sqlite(settings: Settings) -> bool:
    return settings.effective_database_url.startswith("sqlite")


PATH_TYPE = click.Path(path_type=Path)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML settings file (default: $TUFNOTARY_CONFIG).",
)
data_dir_option = click.option(
    "--data-dir", type=PATH_TYPE, help="Directory for the SQLite database and generated TLS files."
)
database_option = click.option(
    "--database",
    "database_url",
    metavar="URL",
    help="SQLAlchemy database URL (default: SQLite file in the data directory).",
)


def with_settings(command: Callable[..., None]) -> Callable[..., None]:
    """--config, --data-dir and --database, handed to ``command`` as the loaded Settings."""

    @config_option
    @data_dir_option
    @database_option
    @functools.wraps(command)
    def with_settings(
        config_file: Path | None, data_dir: Path | None, database_url: str | None, **rest: Any
    ) -> None:
        command(load_settings(config_file, data_dir=data_dir, database_url=database_url), **rest)

    return with_settings


@contextmanager
def open_stores(settings: Settings, *, prepare: bool = False) -> Iterator[Stores]:
    """The stores on the configured database, disposed afterwards; realm and database errors
    become one-line failures. With ``prepare``, the database is first checked to be reachable
    and at the latest schema (SQLite is migrated), as `serve` does."""
    stores = Stores.from_url(settings.effective_database_url)
    try:
        if prepare:
            prepare_database(settings, stores)
        yield stores
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    except RealmError as exc:
        raise click.ClickException(str(exc)) from None
    except StorageError as exc:
        raise click.ClickException(f"database: {exc}") from None
    finally:
        stores.engine.dispose()


def change(settings: Settings, action: Callable[[Stores], object]) -> None:
    """Run ``change`` on the stores (see :func:`_stores`)."""
    with open_stores(settings) as stores:
        action(stores)


Record = dict[str, Any]


def listing(
    line: Callable[[Record], str],
) -> Callable[[Callable[..., Iterable[Record]]], Callable[..., None]]:
    """A command that lists records: ``command(settings, stores, **options)`` returns them, and
    they are printed one a line as ``line`` makes it, or with --json one JSON object a line.
    The command also takes the settings options."""

    def decorate(command: Callable[..., Iterable[Record]]) -> Callable[..., None]:
        @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
        @functools.wraps(command)
        def listing(settings: Settings, as_json: bool, **options: Any) -> None:
            with open_stores(settings) as stores:
                records = list(command(settings, stores, **options))
            for record in records:
                click.echo(json.dumps(record, ensure_ascii=False) if as_json else line(record))

        return with_settings(listing)

    return decorate


def open_vault_or_fail(settings: Settings) -> signer.KeyVault:
    try:
        return open_vault(settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
