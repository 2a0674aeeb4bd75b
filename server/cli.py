"""`tufnotary-server serve | tls-init | migrate | audit | user | rule | token-key`."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from gunicorn.app.base import BaseApplication

from .auth import is_loopback
from .config import UNIX_PREFIX, ConfigError, Settings
from .files import loose_permissions, private_dir, secret_files
from .tls import ensure_self_signed
from .worker import tls_context

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
    from .app import configure_logging
    from .startup import StartupError, open_token, open_vault, preflight
    from .storage import MetadataStore

    configure_logging(settings.log_level)
    store = MetadataStore.from_url(settings.effective_database_url)
    try:
        vault = open_vault(settings)
        preflight(settings, store, vault, open_token(settings))
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.engine.dispose()
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
        private_dir(settings.data_dir)
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


# -- the built-in realm: users, rules, token keys --------------------------------------------------


def _realm_store(
    config_file: Path | None, data_dir: Path | None, database_url: str | None
) -> tuple[Settings, Any]:
    from .storage import MetadataStore

    settings = _load_settings(config_file, data_dir=data_dir, database_url=database_url)
    return settings, MetadataStore.from_url(settings.effective_database_url)


def _realm_call(action: Callable[[], Any]) -> Any:
    """Run a realm change; realm and database errors become one-line failures."""
    from .realm import RealmError
    from .storage import StorageError

    try:
        return action()
    except RealmError as exc:
        raise click.ClickException(str(exc)) from None
    except StorageError as exc:
        raise click.ClickException(f"database: {exc}") from None


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password is empty")
    return str(password)


def _realm_options(function: Callable[..., Any]) -> Callable[..., Any]:
    return config_option(data_dir_option(database_option(function)))


password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@main.group()
def user() -> None:
    """Users of the built-in token realm (auth_mode builtin): bcrypt passwords in the database."""


@user.command("add")
@_realm_options
@password_stdin_option
@click.option("--group", "groups", multiple=True, help="Make the user a member (repeatable).")
@click.argument("name")
def user_add(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    password_stdin: bool,
    groups: tuple[str, ...],
    name: str,
) -> None:
    """Create user NAME (the password is prompted for, or read with --password-stdin)."""
    from . import realm

    settings, store = _realm_store(config_file, data_dir, database_url)
    password = _read_password(password_stdin)
    _realm_call(
        lambda: realm.add_user(store, name, password, groups, rounds=settings.bcrypt_rounds)
    )
    _say(f"user {name} added")


@user.command("passwd")
@_realm_options
@password_stdin_option
@click.argument("name")
def user_passwd(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    password_stdin: bool,
    name: str,
) -> None:
    """Set the password of user NAME."""
    from . import realm

    settings, store = _realm_store(config_file, data_dir, database_url)
    password = _read_password(password_stdin)
    _realm_call(lambda: realm.set_password(store, name, password, rounds=settings.bcrypt_rounds))
    _say(f"password of {name} changed")


@user.command("remove")
@_realm_options
@click.argument("name")
def user_remove(
    config_file: Path | None, data_dir: Path | None, database_url: str | None, name: str
) -> None:
    """Delete user NAME and its group memberships (rules naming it stay)."""
    from . import realm

    _, store = _realm_store(config_file, data_dir, database_url)
    _realm_call(lambda: realm.remove_user(store, name))
    _say(f"user {name} removed")


@main.group()
def group() -> None:
    """Group memberships of the built-in realm's users (rules can name `group:NAME`)."""


@group.command("add")
@_realm_options
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
def group_add(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    name: str,
    users: tuple[str, ...],
) -> None:
    """Make USERS (database or htpasswd users) members of group NAME."""
    _set_members(config_file, data_dir, database_url, name, users, member=True)


@group.command("remove")
@_realm_options
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
def group_remove(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    name: str,
    users: tuple[str, ...],
) -> None:
    """Take USERS out of group NAME."""
    _set_members(config_file, data_dir, database_url, name, users, member=False)


def _set_members(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    group_name: str,
    users: tuple[str, ...],
    *,
    member: bool,
) -> None:
    from . import realm

    _, store = _realm_store(config_file, data_dir, database_url)
    for name in users:
        changed = _realm_call(lambda u=name: realm.set_member(store, group_name, u, member))
        if member:
            _say(f"{name} {'added to' if changed else 'is already in'} group {group_name}")
        else:
            _say(f"{name} {'removed from' if changed else 'was not in'} group {group_name}")


@user.command("list")
@_realm_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def user_list(
    config_file: Path | None, data_dir: Path | None, database_url: str | None, as_json: bool
) -> None:
    """List the database users and their groups (htpasswd users are not listed)."""
    import json

    from tufnotary.metadata.model import format_expires

    _, store = _realm_store(config_file, data_dir, database_url)
    for entry in _realm_call(store.realm_users):
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
@_realm_options
@click.argument("subject")
@click.argument("pattern")
@click.argument("actions")
def rule_add(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    subject: str,
    pattern: str,
    actions: str,
) -> None:
    """Let SUBJECT do ACTIONS on GUNs matching PATTERN; prints the rule id."""
    from . import realm

    _, store = _realm_store(config_file, data_dir, database_url)
    rule_id = _realm_call(lambda: realm.add_rule(store, subject, pattern, actions))
    click.echo(rule_id)


@rule.command("remove")
@_realm_options
@click.argument("rule_id", type=int)
def rule_remove(
    config_file: Path | None, data_dir: Path | None, database_url: str | None, rule_id: int
) -> None:
    """Delete the database rule RULE_ID."""
    from . import realm

    _, store = _realm_store(config_file, data_dir, database_url)
    _realm_call(lambda: realm.remove_rule(store, rule_id))
    _say(f"rule {rule_id} removed")


@rule.command("list")
@_realm_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def rule_list(
    config_file: Path | None, data_dir: Path | None, database_url: str | None, as_json: bool
) -> None:
    """List the rules: database rules with their id, then those of the configuration."""
    import json

    settings, store = _realm_store(config_file, data_dir, database_url)
    rows: list[tuple[int | None, str, str, str]] = [
        (r.id, r.subject, r.pattern, r.actions) for r in _realm_call(store.rules)
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


def _vault(settings: Settings) -> Any:
    from .startup import StartupError, open_vault

    try:
        return open_vault(settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


@token_key.command("rotate")
@_realm_options
def token_key_rotate(
    config_file: Path | None, data_dir: Path | None, database_url: str | None
) -> None:
    """Create a key that signs from now on; tokens signed before stay valid until they
    expire. Prints its kid."""
    from . import realm

    settings, store = _realm_store(config_file, data_dir, database_url)
    click.echo(_realm_call(lambda: realm.rotate_token_key(store, _vault(settings))))


@token_key.command("list")
@_realm_options
def token_key_list(
    config_file: Path | None, data_dir: Path | None, database_url: str | None
) -> None:
    """The kids of the token-signing keys, oldest first (the last one signs)."""
    from .realm import TOKEN_KEY_GUN, TOKEN_KEY_ROLE

    _, store = _realm_store(config_file, data_dir, database_url)
    for key in _realm_call(lambda: store.keys_for(TOKEN_KEY_GUN, TOKEN_KEY_ROLE)):
        click.echo(key.key_id)


@token_key.command("retire")
@_realm_options
@click.argument("kid")
def token_key_retire(
    config_file: Path | None, data_dir: Path | None, database_url: str | None, kid: str
) -> None:
    """Delete key KID: tokens it signed stop verifying (within 30 s in every worker)."""
    from . import realm

    _, store = _realm_store(config_file, data_dir, database_url)
    _realm_call(lambda: realm.retire_token_key(store, kid))
    _say(f"token key {kid} retired")


@main.command()
@_realm_options
@click.option(
    "--new-passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TUFNOTARY_NEW_KEY_PASSPHRASE_FILE",
    required=True,
    help="File holding the new passphrase (env TUFNOTARY_NEW_KEY_PASSPHRASE_FILE).",
)
def rekey(
    config_file: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    new_passphrase_file: Path,
) -> None:
    """Re-encrypt every server key and token-signing key under a new passphrase.

    The keys are read with the configured passphrase (key_passphrase, key_passphrase_file, or
    the generated development key); all are rewritten in one transaction, recorded in the audit
    log. Stop the servers first, then start them with the new passphrase configured.
    """
    from .signer import KeyDecryptionError, rekey

    settings, store = _realm_store(config_file, data_dir, database_url)
    new = _new_vault(new_passphrase_file)
    try:
        count = _realm_call(lambda: rekey(store, _vault(settings), new))
    except KeyDecryptionError as exc:
        raise click.ClickException(
            f"{exc}: the configured key passphrase is not the one the keys are encrypted with; "
            "nothing was changed"
        ) from None
    finally:
        store.engine.dispose()
    _say(f"{count} keys re-encrypted; configure the new passphrase before starting the server")


def _new_vault(path: Path) -> Any:
    from .signer import KeyVault

    try:
        return KeyVault.from_file(path)
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
        from .app import create_app

        return create_app(self.settings, preflight=False)  # serve ran the checks


if __name__ == "__main__":
    main(prog_name=PROG)
