"""What the commands print: JSON or human text on stdout, notes, warnings and errors on stderr."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

from tufnotary.client.cli.context import current
from tufnotary.client.errors import PROG
from tufnotary.client.repository import Repository

EXIT_FAILED = 1

logger = logging.getLogger("tufnotary")


def emit(data: Any, human: str | Callable[[], None]) -> None:
    """``data`` as JSON with --json, else the human text (or what ``human`` prints)."""
    if current().json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif callable(human):
        human()
    elif human:
        click.echo(human)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns aligned like notary's: header, a ruler of dashes, then the rows."""
    cells = [list(headers), ["-" * len(h) for h in headers]]
    cells += [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["    ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def note(message: str) -> None:
    """A line for the person at the terminal (stderr, so stdout stays machine-readable)."""
    click.echo(message, err=True)


class _StderrHandler(logging.Handler):
    """Library warnings as ``tufnotary: warning: ...`` on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        click.echo(f"{PROG}: {level}: {record.getMessage()}", err=True)


def configure_logging(verbose: bool) -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


# -- errors -------------------------------------------------------------------------------------


class Failure(click.ClickException):
    """An expected failure: one ``tufnotary: error:`` line on stderr, exit status 1."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        click.echo(f"{PROG}: error: {self.format_message()}", err=True)


def offline_note(repo: Repository) -> None:
    """Say on stderr that the answer came from the cache, and how old that is."""
    if repo.offline:
        note(f"{PROG}: warning: offline: {_cache_age(repo.gun, repo.cached_at)}")


def _cache_age(gun: str, cached_at: datetime | None) -> str:
    if cached_at is None:
        return f"trust data of {gun} from the cache, of unknown age"
    seconds = max(0, int((datetime.now(UTC) - cached_at).total_seconds()))
    units = [("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)]
    name, size = next((name, size) for name, size in units if seconds >= size or size == 1)
    count = seconds // size
    return (
        f"trust data of {gun} from the cache, last updated from the server {count} {name}"
        f"{'s' if count != 1 else ''} ago ({utc(cached_at)})"
    )


def utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fail(message: str) -> NoReturn:
    raise Failure(message)


def updating(repo: Repository) -> str:
    """What the progress line says while ``repo`` is read."""
    if repo.offline:
        return f"reading the cached trust data of {repo.gun}"
    return f"updating trust data of {repo.gun} from {repo.remote.url}"
