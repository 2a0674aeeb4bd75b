"""`tufnotary-server serve | migrate`."""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from gunicorn.app.base import BaseApplication

from .auth import is_loopback
from .config import ConfigError, Settings
from .tls import ensure_self_signed

if TYPE_CHECKING:
    from flask import Flask
    from gunicorn.arbiter import Arbiter

PROG = "tufnotary-server"
GRACEFUL_TIMEOUT = 20
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
THREADS = 4
_ssl_contexts: dict[str, ssl.SSLContext] = {}


def _reused_ssl_context(
    config: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """One TLS context per worker: gunicorn would build (and load CAs into) one per connection."""
    context = _ssl_contexts.get("server")
    if context is None:
        context = _ssl_contexts.setdefault("server", default_ssl_context_factory())
    return context


class ConfigurationFailure(click.ClickException):
    """Bad configuration: reported as one line on stderr, exit status 2 (like a usage error)."""

    exit_code = 2


def _say(message: str) -> None:
    click.echo(f"{PROG}: {message}", err=True)


def _load_settings(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        return Settings.load(config_file, **overrides)
    except ConfigError as exc:
        raise ConfigurationFailure(f"configuration: {exc}") from None


def _given_tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """The configured certificate chain and key (checked to exist), or None if not configured."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    for name, path in (("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key)):
        if not path.is_file():
            raise ConfigurationFailure(f"configuration: {name}: no such file: {path}")
    return settings.tls_cert, settings.tls_key


def _is_sqlite(settings: Settings) -> bool:
    return settings.effective_database_url.startswith("sqlite")


_path = click.Path(path_type=Path)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML settings file (default: $TUFNOTARY_CONFIG).",
)
data_dir_option = click.option(
    "--data-dir", type=_path, help="Directory for the SQLite database and generated TLS files."
)
database_option = click.option(
    "--database",
    "database_url",
    metavar="URL",
    help="SQLAlchemy database URL (default: SQLite file in the data directory).",
)


@click.group()
def main() -> None:
    """Notary-compatible trust server."""


@main.command()
@config_option
@click.option("--listen", metavar="HOST:PORT", help="Address to listen on (IPv6 as [::1]:4443).")
@data_dir_option
@database_option
@click.option("--tls-cert", type=_path, help="PEM certificate chain (with --tls-key).")
@click.option("--tls-key", type=_path, help="PEM private key (with --tls-cert).")
@click.option("--workers", type=int, help="Number of worker processes.")
@click.option("--key-algorithm", help="Algorithm of server-held keys: ecdsa or ed25519.")
@click.option("--log-level", help="debug, info, warning, error or critical.")
@click.option("--auth-mode", help="none (default), token or builtin (not implemented yet).")
@click.option("--token-realm", metavar="URL", help="Token service URL for the 401 challenge.")
@click.option("--token-service", help="Expected token audience (the service name).")
@click.option("--token-issuer", help="Expected token issuer.")
@click.option(
    "--token-rootcertbundle", type=_path, help="PEM certificates that token signatures chain to."
)
def serve(config_file: Path | None, **overrides: Any) -> None:
    """Serve the Notary API over HTTPS.

    SQLite databases are migrated automatically; without --tls-cert/--tls-key a development CA
    and a localhost certificate are created in the data directory.
    """
    settings = _load_settings(config_file, **overrides)
    tls_files = _given_tls_files(settings)
    if settings.auth_mode == "none" and not is_loopback(settings.listen):
        _say(
            f"warning: listening on {settings.listen} without authentication (auth_mode none); "
            "anyone who can reach it may publish and delete trust data"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if _is_sqlite(settings):
        _migrate(settings.effective_database_url, "head", downgrade=False)
    if tls_files is None:
        generated = ensure_self_signed(settings.data_dir)
        tls_files = generated.cert, generated.key
        _say(f"TLS CA certificate: {generated.ca_cert} (pass it to clients with --tlscacert)")
    cert, key = tls_files

    _share_metrics_between_workers(settings.data_dir / "metrics")

    def when_ready(_arbiter: Arbiter) -> None:
        _say(f"listening on https://{settings.listen}")

    def child_exit(_arbiter: Arbiter, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    _ServerApplication(
        settings,
        {
            "bind": [settings.listen],
            "workers": settings.workers,
            "worker_class": "gthread",
            "threads": THREADS,
            "ssl_context": _reused_ssl_context,
            "certfile": str(cert),
            "keyfile": str(key),
            "accesslog": None,
            "errorlog": "-",
            "loglevel": settings.log_level,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "preload_app": False,
            "proc_name": PROG,
            "when_ready": when_ready,
            "child_exit": child_exit,
        },
    ).run()


def _share_metrics_between_workers(directory: Path) -> None:
    """Point prometheus-client at a fresh directory so /metrics adds up every worker."""
    if os.environ.get(METRICS_ENV):
        return
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[METRICS_ENV] = str(directory)


@main.command()
@config_option
@data_dir_option
@database_option
@click.option("--revision", help="Target revision (default: head; required with --downgrade).")
@click.option("--downgrade", is_flag=True, help="Downgrade to --revision instead of upgrading.")
def migrate(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    revision: str | None,
    downgrade: bool,
) -> None:
    """Apply database migrations."""
    if downgrade and revision is None:
        raise click.UsageError("--downgrade needs --revision (for example -1 or base)")
    settings = _load_settings(config_file, data_dir=data_dir, database_url=database_url)
    if _is_sqlite(settings):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    target = revision or "head"
    _migrate(settings.effective_database_url, target, downgrade=downgrade)
    _say(f"database {'downgraded' if downgrade else 'upgraded'} to {target}")


def _migrate(url: str, revision: str, *, downgrade: bool) -> None:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from . import migrate as migrations

    try:
        (migrations.downgrade if downgrade else migrations.upgrade)(url, revision)
    except (SQLAlchemyError, CommandError) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"database: {str(cause).strip().splitlines()[0]}") from None


@main.command()
@config_option
@data_dir_option
@database_option
@click.option("--gun", help="Only writes to this repository.")
@click.option("--actor", help="Only writes by this user (token subject, or 'anonymous').")
@click.option("--since", help="Only writes at or after this ISO 8601 time (UTC if no zone).")
@click.option("--until", help="Only writes before this ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    gun: str | None,
    actor: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the audit log: every upload, delete and server-key change, oldest first."""
    import json

    from .api import audit_json, parse_time
    from .storage import MetadataStore, StorageError

    settings = _load_settings(config_file, data_dir=data_dir, database_url=database_url)
    try:
        window = [parse_time(value) if value else None for value in (since, until)]
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {exc}") from None
    store = MetadataStore.from_url(settings.effective_database_url)
    try:
        records = store.audit_log(
            gun=gun, actor=actor, since=window[0], until=window[1], limit=limit
        )
    except StorageError as exc:
        raise click.ClickException(f"database: {exc}") from None
    finally:
        store.engine.dispose()
    for record in map(audit_json, records):
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            where = f" {record['gun']}" if record["gun"] else ""
            click.echo(
                f"{record['time']}  {record['actor']}@{record['address'] or '-'}  "
                f"{record['action']}{where}  {json.dumps(record['detail'], sort_keys=True)}"
            )


class _ServerApplication(BaseApplication):
    """Gunicorn configured from code; each worker builds its own app (and database engine)."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1; unused here
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        from .app import create_app

        return create_app(self.settings)


if __name__ == "__main__":
    main(prog_name=PROG)
