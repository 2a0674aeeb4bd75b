"""`tufnotary-server serve | tls-init | migrate | audit | user | rule | token-key`."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from alembic.util import CommandError
from gunicorn.app.base import BaseApplication
from sqlalchemy.exc import SQLAlchemyError

from tufnotary.metadata.model import format_expires
from tufnotary.server import migrate as migrations
from tufnotary.server import realm, signer
from tufnotary.server.auth import is_loopback
from tufnotary.server.config import UNIX_PREFIX, ConfigError, Settings
from tufnotary.server.files import loose_permissions, private_dir, secret_files
from tufnotary.server.realm import RealmError
from tufnotary.server.startup import StartupError, open_token, open_vault, preflight
from tufnotary.server.storage import Stores
from tufnotary.server.storage.engine import StorageError
from tufnotary.server.tls import ensure_self_signed
from tufnotary.server.worker import tls_context

# prometheus_client chooses its multiprocess mode when it is first imported, so what imports it
# (tufnotary.server.api and .app) is imported only after `serve` set METRICS_ENV.

if TYPE_CHECKING:
    from flask import Flask
    from gunicorn.arbiter import Arbiter

PROG = "tufnotary-server"
GRACEFUL_TIMEOUT = 20
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_CONNECTIONS = 1000  # connections one gevent worker serves at once


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


def _with_settings(command: Callable[..., None]) -> Callable[..., None]:
    """--config, --data-dir and --database, handed to ``command`` as the loaded Settings."""

    @config_option
    @data_dir_option
    @database_option
    @functools.wraps(command)
    def with_settings(
        config_file: Path | None, data_dir: Path | None, database_url: str | None, **rest: Any
    ) -> None:
        command(_load_settings(config_file, data_dir=data_dir, database_url=database_url), **rest)

    return with_settings


@contextmanager
def _stores(settings: Settings) -> Iterator[Stores]:
    """The stores on the configured database, disposed afterwards; realm and database errors
    become one-line failures."""
    stores = Stores.from_url(settings.effective_database_url)
    try:
        yield stores
    except RealmError as exc:
        raise click.ClickException(str(exc)) from None
    except StorageError as exc:
        raise click.ClickException(f"database: {exc}") from None
    finally:
        stores.engine.dispose()


def _change(settings: Settings, change: Callable[[Stores], object]) -> None:
    """Run ``change`` on the stores (see :func:`_stores`)."""
    with _stores(settings) as stores:
        change(stores)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tufnotary", prog_name=PROG)
def main() -> None:
    """Notary-compatible trust server."""


@main.command()
@config_option
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Address to listen on (IPv6 as [::1]:4443); unix:/PATH serves plain HTTP on a socket.",
)
@data_dir_option
@database_option
@click.option("--tls-cert", type=_path, help="PEM certificate chain (with --tls-key).")
@click.option("--tls-key", type=_path, help="PEM private key (with --tls-cert).")
@click.option("--workers", type=int, help="Number of worker processes.")
@click.option("--key-algorithm", help="Algorithm of server-held keys: ecdsa or ed25519.")
@click.option("--log-level", help="debug, info, warning, error or critical.")
@click.option("--auth-mode", help="none (default), token or builtin (own token service).")
@click.option("--token-realm", metavar="URL", help="Token service URL for the 401 challenge.")
@click.option("--token-service", help="Expected token audience (the service name).")
@click.option("--token-issuer", help="Expected token issuer.")
@click.option(
    "--token-rootcertbundle", type=_path, help="PEM certificates that token signatures chain to."
)
@click.option("--token-lifetime", type=int, help="Seconds a builtin-mode token is valid (300).")
@click.option("--htpasswd-file", type=_path, help="Read-only bcrypt users for builtin mode.")
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
    settings = _load_settings(config_file, **overrides)
    tls_files = _given_tls_files(settings)
    if settings.auth_mode == "none" and not is_loopback(settings.listen):
        _say(
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
        _say(warning)

    def when_ready(_arbiter: Arbiter) -> None:
        _say(f"listening on {scheme}://{settings.listen}")

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
        _say(f"TLS CA certificate: {generated.ca_cert} (pass it to clients with --tlscacert)")
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
    settings = _load_settings(config_file, data_dir=data_dir)
    private_dir(settings.data_dir)
    files = ensure_self_signed(settings.data_dir)
    for name, path in (("ca_cert", files.ca_cert), ("cert", files.cert), ("key", files.key)):
        click.echo(f"{name}={path}")


@main.command()
@_with_settings
@click.option("--revision", help="Target revision (default: head; required with --downgrade).")
@click.option("--downgrade", is_flag=True, help="Downgrade to --revision instead of upgrading.")
def migrate(settings: Settings, revision: str | None, downgrade: bool) -> None:
    """Apply database migrations."""
    if downgrade and revision is None:
        raise click.UsageError("--downgrade needs --revision (for example -1 or base)")
    if _is_sqlite(settings):
        private_dir(settings.data_dir)
    target = revision or "head"
    _migrate(settings.effective_database_url, target, downgrade=downgrade)
    _say(f"database {'downgraded' if downgrade else 'upgraded'} to {target}")


def _migrate(url: str, revision: str, *, downgrade: bool) -> None:
    try:
        (migrations.downgrade if downgrade else migrations.upgrade)(url, revision)
    except (SQLAlchemyError, CommandError) as exc:
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"database: {str(cause).strip().splitlines()[0]}") from None


@main.command()
@_with_settings
@click.option("--gun", help="Only writes to this repository.")
@click.option("--actor", help="Only writes by this user (token subject, or 'anonymous').")
@click.option("--since", help="Only writes at or after this ISO 8601 time (UTC if no zone).")
@click.option("--until", help="Only writes before this ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(
    settings: Settings,
    gun: str | None,
    actor: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the audit log: every upload, delete and server-key change, oldest first."""
    from tufnotary.server.api import audit_json, parse_time

    try:
        window = [parse_time(value) if value else None for value in (since, until)]
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {exc}") from None
    with _stores(settings) as stores:
        records = stores.audit.records(
            gun=gun, actor=actor, since=window[0], until=window[1], limit=limit
        )
    for record in map(audit_json, records):
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            where = f" {record['gun']}" if record["gun"] else ""
            click.echo(
                f"{record['time']}  {record['actor']}@{record['address'] or '-'}  "
                f"{record['action']}{where}  {json.dumps(record['detail'], sort_keys=True)}"
            )


# -- the built-in realm: users, rules, token keys --------------------------------------------------


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password is empty")
    return str(password)


password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@main.group()
def user() -> None:
    """Users of the built-in token realm (auth_mode builtin): bcrypt passwords in the database."""


@user.command("add")
@_with_settings
@password_stdin_option
@click.option("--group", "groups", multiple=True, help="Make the user a member (repeatable).")
@click.argument("name")
def user_add(
    settings: Settings,
    password_stdin: bool,
    groups: tuple[str, ...],
    name: str,
) -> None:
    """Create user NAME (the password is prompted for, or read with --password-stdin)."""
    password = _read_password(password_stdin)
    with _stores(settings) as stores:
        realm.add_user(stores, name, password, groups, rounds=settings.bcrypt_rounds)
    _say(f"user {name} added")


@user.command("passwd")
@_with_settings
@password_stdin_option
@click.argument("name")
def user_passwd(
    settings: Settings,
    password_stdin: bool,
    name: str,
) -> None:
    """Set the password of user NAME."""
    password = _read_password(password_stdin)
    rounds = settings.bcrypt_rounds
    _change(settings, lambda s: realm.set_password(s, name, password, rounds=rounds))
    _say(f"password of {name} changed")


@user.command("remove")
@_with_settings
@click.argument("name")
def user_remove(settings: Settings, name: str) -> None:
    """Delete user NAME and its group memberships (rules naming it stay)."""
    _change(settings, lambda stores: realm.remove_user(stores, name))
    _say(f"user {name} removed")


@main.group()
def group() -> None:
    """Group memberships of the built-in realm's users (rules can name `group:NAME`)."""


@group.command("add")
@_with_settings
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
def group_add(
    settings: Settings,
    name: str,
    users: tuple[str, ...],
) -> None:
    """Make USERS (database or htpasswd users) members of group NAME."""
    _set_members(settings, name, users, member=True)


@group.command("remove")
@_with_settings
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
def group_remove(
    settings: Settings,
    name: str,
    users: tuple[str, ...],
) -> None:
    """Take USERS out of group NAME."""
    _set_members(settings, name, users, member=False)


def _set_members(
    settings: Settings,
    group_name: str,
    users: tuple[str, ...],
    *,
    member: bool,
) -> None:
    with _stores(settings) as stores:
        for name in users:
            changed = realm.set_member(stores, group_name, name, member)
            if member:
                _say(f"{name} {'added to' if changed else 'is already in'} group {group_name}")
            else:
                _say(f"{name} {'removed from' if changed else 'was not in'} group {group_name}")


@user.command("list")
@_with_settings
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def user_list(settings: Settings, as_json: bool) -> None:
    """List the database users and their groups (htpasswd users are not listed)."""
    with _stores(settings) as stores:
        users = stores.realm.realm_users()
    for entry in users:
        if as_json:
            record = {
                "name": entry.name,
                "groups": list(entry.groups),
                "created": format_expires(entry.created_at),
            }
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            click.echo(f"{entry.name}  {','.join(entry.groups) or '-'}")


@main.group()
def rule() -> None:
    """Access rules of the built-in realm: SUBJECT (user:NAME or group:NAME), GUN PATTERN
    (`*` within a path segment, `**` across segments), ACTIONS (pull, push, * comma-joined)."""


@rule.command("add")
@_with_settings
@click.argument("subject")
@click.argument("pattern")
@click.argument("actions")
def rule_add(
    settings: Settings,
    subject: str,
    pattern: str,
    actions: str,
) -> None:
    """Let SUBJECT do ACTIONS on GUNs matching PATTERN; prints the rule id."""
    with _stores(settings) as stores:
        rule_id = realm.add_rule(stores, subject, pattern, actions)
    click.echo(rule_id)


@rule.command("remove")
@_with_settings
@click.argument("rule_id", type=int)
def rule_remove(settings: Settings, rule_id: int) -> None:
    """Delete the database rule RULE_ID."""
    _change(settings, lambda stores: realm.remove_rule(stores, rule_id))
    _say(f"rule {rule_id} removed")


@rule.command("list")
@_with_settings
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def rule_list(settings: Settings, as_json: bool) -> None:
    """List the rules: database rules with their id, then those of the configuration."""
    with _stores(settings) as stores:
        stored = stores.realm.rules()
    rows: list[tuple[int | None, str, str, str]] = [
        (r.id, r.subject, r.pattern, r.actions) for r in stored
    ]
    rows += [(None, *configured) for configured in settings.rules]
    for rule_id, subject, pattern, actions in rows:
        if as_json:
            record = {
                "id": rule_id,
                "subject": subject,
                "pattern": pattern,
                "actions": actions.split(","),
                "source": "database" if rule_id is not None else "config",
            }
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            click.echo(
                f"{rule_id if rule_id is not None else 'config'}  {subject}  {pattern}  {actions}"
            )


@main.group("token-key")
def token_key() -> None:
    """The built-in realm's token-signing keys (encrypted like the server keys)."""


def _vault(settings: Settings) -> signer.KeyVault:
    try:
        return open_vault(settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


@token_key.command("rotate")
@_with_settings
def token_key_rotate(settings: Settings) -> None:
    """Create a key that signs from now on; tokens signed before stay valid until they
    expire. Prints its kid."""
    vault = _vault(settings)
    with _stores(settings) as stores:
        click.echo(realm.rotate_token_key(stores, vault))


@token_key.command("list")
@_with_settings
def token_key_list(settings: Settings) -> None:
    """The kids of the token-signing keys, oldest first (the last one signs)."""
    with _stores(settings) as stores:
        keys = stores.token_keys.all()
    for key in keys:
        click.echo(key.key_id)


@token_key.command("retire")
@_with_settings
@click.argument("kid")
def token_key_retire(settings: Settings, kid: str) -> None:
    """Delete key KID: tokens it signed stop verifying (within 30 s in every worker)."""
    _change(settings, lambda stores: realm.retire_token_key(stores, kid))
    _say(f"token key {kid} retired")


@main.command()
@_with_settings
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
    new, old = _new_vault(new_passphrase_file), _vault(settings)
    try:
        with _stores(settings) as stores:
            count = signer.rekey(stores.keys, old, new)
    except signer.KeyDecryptionError as exc:
        raise click.ClickException(
            f"{exc}: the configured key passphrase is not the one the keys are encrypted with; "
            "nothing was changed"
        ) from None
    _say(f"{count} keys re-encrypted; configure the new passphrase before starting the server")


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
