"""Start-up checks: the server refuses to start, with one line that says what to do, rather
than answer every request 503 or 500 later."""

from __future__ import annotations

from alembic.util import CommandError
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from tufnotary.server import signer
from tufnotary.server.config import Settings
from tufnotary.server.migrate import schema_state, upgrade
from tufnotary.server.signer import KeyDecryptionError, KeyVault
from tufnotary.server.storage import Stores
from tufnotary.server.storage.engine import StorageError


class StartupError(Exception):
    """The server cannot start as configured; the message names the fix."""


def open_vault(settings: Settings) -> KeyVault:
    """The KeyVault of the configured passphrase (or the generated development key)."""
    try:
        return KeyVault.from_settings(
            settings.key_passphrase, settings.key_passphrase_file, settings.data_dir
        )
    except OSError as exc:
        raise StartupError(f"key passphrase: cannot read {exc.filename}: {exc.strerror}") from None
    except ValueError as exc:
        raise StartupError(f"key passphrase: {exc}") from None


def preflight(settings: Settings, stores: Stores, vault: KeyVault) -> None:
    """Bring SQLite (or, with ``auto_migrate``, any database) to the latest schema, then
    require the latest schema and stored keys that decrypt with ``vault``."""
    _prepare_database(settings, stores)
    try:
        signer.check_keys(stores.keys, vault)
    except StorageError as exc:
        raise StartupError(f"database: {exc}") from None
    except KeyDecryptionError as exc:
        raise StartupError(
            f"stored keys do not decrypt with {_passphrase_source(settings)} ({exc}): configure "
            "the passphrase they were encrypted with; to change it, run `tufnotary-server "
            "rekey --new-passphrase-file FILE` with the old one configured"
        ) from None


def _prepare_database(settings: Settings, stores: Stores) -> None:
    engine = stores.engine
    shown = make_url(settings.effective_database_url).render_as_string(hide_password=True)
    try:
        if settings.auto_migrate or engine.dialect.name == "sqlite":
            upgrade(engine)
        state = schema_state(engine)
    except (SQLAlchemyError, CommandError) as exc:
        cause = getattr(exc, "orig", None) or exc
        reason = " ".join(str(cause).split()) or type(cause).__name__
        raise StartupError(
            f"database {shown} is unusable: {reason}; check database_url and that the "
            "database server is running"
        ) from None
    if not state.known:
        raise StartupError(
            f"database {shown} is at schema revision {state.current}, which this version does "
            "not know: run the tufnotary version that migrated it, or downgrade the database "
            "with that version's `tufnotary-server migrate --downgrade`"
        )
    if not state.latest:
        raise StartupError(
            f"database {shown} is not at the latest schema (at {state.current or 'none'}, "
            f"latest {state.head}): run `tufnotary-server migrate --database {_quoted(shown)}`, "
            "or start with --auto-migrate (TUFNOTARY_AUTO_MIGRATE=true)"
        )


def _quoted(url: str) -> str:
    return f"'{url}'" if any(char in url for char in "?&*;$ ") else url


def _passphrase_source(settings: Settings) -> str:
    if settings.key_passphrase:
        return "the configured key_passphrase"
    if settings.key_passphrase_file is not None:
        return f"the key passphrase in {settings.key_passphrase_file}"
    return f"the generated development key in {settings.data_dir / signer.DEV_MASTER_KEY}"
