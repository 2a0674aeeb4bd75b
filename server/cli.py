"""`tufnotary-server serve | tls-init | migrate | audit | rekey`, and the commands of the realm
(cli_realm), server keys (cli_keys), backups (cli_archive), day-2 operations (cli_day2) and
`import` (tufnotary.importer, the one part allowed to use both client and server)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from alembic.util import CommandError
from gunicorn.app.base import BaseApplication
from sqlalchemy.exc import SQLAlchemyError

from tufnotary.importer.cli import import_command
from tufnotary.server import cli_archive, cli_day2, cli_keys, cli_realm, signer
from tufnotary.server import migrate as migrations
from tufnotary.server.auth import is_loopback
from tufnotary.server.cli_common import (
    PATH_TYPE,
    PROG,
    ConfigurationFailure,
    Record,
    config_option,
    data_dir_option,
    database_option,
    is_sqlite,
    listing,
    load_settings,
    open_stores,
    open_vault_or_fail,
    say,
    with_settings,
)
from tufnotary.server.config import UNIX_PREFIX, Settings
from tufnotary.server.files import loose_permissions, private_dir, secret_files
from tufnotary.server.startup import StartupError, open_token, open_vault, preflight
from tufnotary.server.storage import Stores
from tufnotary.server.tls import ensure_self_signed
from tufnotary.server.worker import default_exit_signals, tls_context

# prometheus_client chooses its multiprocess mode when it is first imported, so what imports it
# (tufnotary.server.api and .app) is imported only after `serve` set METRICS_ENV.

if TYPE_CHECKING:
    from flask import Flask
    from gunicorn.arbiter import Arbiter

GRACEFUL_TIMEOUT = 20
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_CONNECTIONS = 1000  # connections one gevent worker serves at once


def _given_tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """The configured certificate chain and key (checked to exist), or None if not configured."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    for name, path in (("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key)):
        if not path.is_file():
            raise ConfigurationFailure(f"configuration: {name}: no such file: {path}")
    return settings.tls_cert, settings.tls_key


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tufnotary", prog_name=PROG)
def main() -> None:
    """Notary-compatible trust server."""


for command in (
    cli_realm.user,
    cli_realm.group,
    cli_realm.rule,
    cli_realm.token_key,
    cli_keys.key,
    import_command,
    *cli_archive.COMMANDS,
    cli_day2.prune,
    cli_day2.resign,
):
    main.add_command(command)


@main.command()
@config_option
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Address to listen on (IPv6 as [::1]:4443); unix:/PATH serves plain HTTP on a socket.",
)
@data_dir_option
@database_option
@click.option("--tls-cert", type=PATH_TYPE, help="PEM certificate chain (with --tls-key).")
@click.option("--tls-key", type=PATH_TYPE, help="PEM private key (with --tls-cert).")
@click.option("--workers", type=int, help="Number of worker processes.")
@click.option("--key-algorithm", help="Algorithm of server-held keys: ecdsa or ed25519.")
@cli_keys.key_backend_options
@click.option("--log-level", help="debug, info, warning, error or critical.")
@click.option("--auth-mode", help="none (default), token or builtin (own token service).")
@click.option("--token-realm", metavar="URL", help="Token service URL for the 401 challenge.")
@click.option("--token-service", help="Expected token audience (the service name).")
@click.option("--token-issuer", help="Expected token issuer.")
@click.option(
    "--token-rootcertbundle",
    type=PATH_TYPE,
    help="PEM certificates that token signatures chain to.",
)
@click.option("--token-lifetime", type=int, help="Seconds a builtin-mode token is valid (300).")
@click.option("--htpasswd-file", type=PATH_TYPE, help="Read-only bcrypt users for builtin mode.")
@click.option(
    "--auto-migrate",
    is_flag=True,
    default=None,
    help="Migrate a PostgreSQL or MariaDB database to the latest schema at start.",
)
@click.option(
    "--trusted-proxies",
    type=int,
    help="Reverse proxies in front of the server whose forwarded client address is believed (0).",
)
@click.option("--forwarded-header", help="x-forwarded-for (default) or forwarded (RFC 7239).")
@click.option(
    "--audit-access", help="Without auth: auth (default: no audit log) or loopback clients."
)
def serve(config_file: Path | None, **overrides: Any) -> None:
    """Serve the Notary API over HTTPS.

    SQLite databases are migrated automatically, other databases with --auto-migrate; a
    database not at the latest schema, or stored keys that do not decrypt with the key
    passphrase, stop the start. Without --tls-cert/--tls-key a development CA and a localhost
    certificate are created in the data directory.
    """
    settings = load_settings(config_file, **overrides)
    tls_files = _given_tls_files(settings)
    if settings.auth_mode == "none" and not is_loopback(settings.listen):
        say(
            f"warning: listening on {settings.listen} without authentication (auth_mode none); "
            "anyone who can reach it may publish and delete trust data"
        )
    private_dir(settings.data_dir)
    _share_metrics_between_workers(settings.data_dir / "metrics")  # before importing the app
    _preflight(settings)
    tls_options = _tls_options(settings, tls_files)
    scheme = "https" if tls_options else "http"
    directories = (settings.data_dir, settings.data_dir / "tls")
    for warning in loose_permissions(directories, secret_files(settings)):
        say(warning)

    def when_ready(_arbiter: Arbiter) -> None:
        say(f"listening on {scheme}://{settings.listen}")

    def child_exit(_arbiter: Arbiter, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    _ServerApplication(
        settings,
        {
            "bind": [settings.listen],
            "workers": settings.workers,
            "worker_class": "tufnotary.server.worker.DeadlineWorker",
            "worker_connections": WORKER_CONNECTIONS,
            "keepalive": settings.client_timeout,
            **tls_options,
            "accesslog": None,
            "errorlog": "-",
            "logger_class": "tufnotary.server.app.GunicornLogger",
            "loglevel": settings.log_level,
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "preload_app": False,
            "proc_name": PROG,
            "when_ready": when_ready,
            "child_exit": child_exit,
            "post_fork": default_exit_signals,
        },
    ).run()


def _preflight(settings: Settings) -> None:
    """The start-up checks, once, before gunicorn starts workers: a failure is one line on
    stderr and exit status 1; the development-key warning is logged here only."""
    from tufnotary.server.app import configure_logging

    configure_logging(settings.log_level)
    stores = Stores.from_url(settings.effective_database_url)
    try:
        vault = open_vault(settings)
        preflight(settings, stores, vault, open_token(settings))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        stores.engine.dispose()
    vault.warn_if_development()


def _tls_options(settings: Settings, tls_files: tuple[Path, Path] | None) -> dict[str, Any]:
    """gunicorn's TLS settings: the configured or generated certificate; none (plain HTTP) on a
    unix socket, which only a local TLS-terminating proxy should reach (scripts/serve-stack)."""
    if settings.listen.startswith(UNIX_PREFIX):
        return {}
    if tls_files is None:
        generated = ensure_self_signed(settings.data_dir)
        tls_files = generated.cert, generated.key
        say(f"TLS CA certificate: {generated.ca_cert} (pass it to clients with --tlscacert)")
    cert, key = tls_files
    return {"ssl_context": tls_context, "certfile": str(cert), "keyfile": str(key)}


def _share_metrics_between_workers(directory: Path) -> None:
    """Point prometheus-client at a fresh directory so /metrics adds up every worker."""
    if os.environ.get(METRICS_ENV):
        return
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[METRICS_ENV] = str(directory)


@main.command("tls-init")
@config_option
@data_dir_option
def tls_init(config_file: Path | None, data_dir: Path | None) -> None:
    """Create the development CA and localhost certificate in DATA_DIR/tls if missing.

    Prints their paths: ca_cert (give it to clients), cert and key (for a TLS-terminating
    proxy in front of `serve --listen unix:/PATH`). Existing valid files are kept.
    """
    settings = load_settings(config_file, data_dir=data_dir)
    private_dir(settings.data_dir)
    files = ensure_self_signed(settings.data_dir)
    for name, path in (("ca_cert", files.ca_cert), ("cert", files.cert), ("key", files.key)):
        click.echo(f"{name}={path}")


@main.command()
@with_settings
@click.option("--revision", help="Target revision (default: head; required with --downgrade).")
@click.option("--downgrade", is_flag=True, help="Downgrade to --revision instead of upgrading.")
def migrate(settings: Settings, revision: str | None, downgrade: bool) -> None:
    """Apply database migrations."""
    if downgrade and revision is None:
        raise click.UsageError("--downgrade needs --revision (for example -1 or base)")
    if is_sqlite(settings):
        private_dir(settings.data_dir)
    target = revision or "head"
    _migrate(settings.effective_database_url, target, downgrade=downgrade)
    say(f"database {'downgraded' if downgrade else 'upgraded'} to {target}")


def _migrate(url: str, revision: str, *, downgrade: bool) -> None:
    try:
        (migrations.downgrade if downgrade else migrations.upgrade)(url, revision)
    except (SQLAlchemyError, CommandError) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"database: {str(cause).strip().splitlines()[0]}") from None


def _audit_line(record: Record) -> str:
    where = f" {record['gun']}" if record["gun"] else ""
    return (
        f"{record['time']}  {record['actor']}@{record['address'] or '-'}  "
        f"{record['action']}{where}  {json.dumps(record['detail'], sort_keys=True)}"
    )


@main.command()
@listing(_audit_line)
@click.option("--gun", help="Only writes to this repository.")
@click.option("--actor", help="Only writes by this user (token subject, or 'anonymous').")
@click.option("--since", help="Only writes at or after this ISO 8601 time (UTC if no zone).")
@click.option("--until", help="Only writes before this ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def audit(
    settings: Settings,
    stores: Stores,
    gun: str | None,
    actor: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> Iterable[Record]:
    """Show the audit log: every upload, delete and server-key change, oldest first."""
    from tufnotary.server.api import audit_json, parse_time

    try:
        window = [parse_time(value) if value else None for value in (since, until)]
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {exc}") from None
    records = stores.audit.records(
        gun=gun, actor=actor, since=window[0], until=window[1], limit=limit
    )
    return map(audit_json, records)


# -- the built-in realm: users, rules, token keys --------------------------------------------------


@main.command()
@with_settings
@click.option(
    "--new-passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TUFNOTARY_NEW_KEY_PASSPHRASE_FILE",
    required=True,
    help="File holding the new passphrase (env TUFNOTARY_NEW_KEY_PASSPHRASE_FILE).",
)
def rekey(
    settings: Settings,
    new_passphrase_file: Path,
) -> None:
    """Re-encrypt every server key and token-signing key under a new passphrase.

    The keys are read with the configured passphrase (key_passphrase, key_passphrase_file, or
    the generated development key); all are rewritten in one transaction, recorded in the audit
    log. Stop the servers first, then start them with the new passphrase configured.
    """
    new, old = _new_vault(new_passphrase_file), open_vault_or_fail(settings)
    try:
        with open_stores(settings) as stores:
            count = signer.rekey(stores.keys, old, new)
    except signer.KeyDecryptionError as exc:
        raise click.ClickException(
            f"{exc}: the configured key passphrase is not the one the keys are encrypted with; "
            "nothing was changed"
        ) from None
    say(f"{count} keys re-encrypted; configure the new passphrase before starting the server")


def _new_vault(path: Path) -> signer.KeyVault:
    try:
        return signer.KeyVault.from_file(path)
    except ValueError as exc:
        raise click.ClickException(f"{path}: {exc}") from None


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
        from tufnotary.server.app import create_app

        return create_app(self.settings, preflight=False)  # serve ran the checks


if __name__ == "__main__":
    main(prog_name=PROG)
