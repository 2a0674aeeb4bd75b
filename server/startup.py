"""Start-up checks: the server refuses to start, with one line that says what to do, rather
than answer every request 503 or 500 later."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection

from alembic.util import CommandError
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from tufnotary.server import signer
from tufnotary.server.config import Settings
from tufnotary.server.keybackend import KeyBackendError, Pkcs11Token
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


TOKEN_CHECK_TIMEOUT = 60.0
"""Seconds the start-up check of the PKCS#11 token and key managers may take."""


def open_token(settings: Settings) -> Pkcs11Token | None:
    """The configured PKCS#11 token (key_backend 'pkcs11', or 'uri' with the PKCS#11
    settings), not yet contacted; else None."""
    if settings.key_backend == "database" or not settings.pkcs11_module:
        return None
    pin = settings.pkcs11_pin
    if settings.pkcs11_pin_file is not None:
        try:
            pin = settings.pkcs11_pin_file.read_text().strip()
        except OSError as exc:
            reason = f"cannot read {exc.filename}: {exc.strerror}"
            raise StartupError(f"pkcs11_pin_file: {reason}") from None
    if not pin:
        raise StartupError("pkcs11 PIN is empty: set pkcs11_pin or pkcs11_pin_file")
    return Pkcs11Token(settings.pkcs11_module or "", settings.pkcs11_token_label or "", pin)


def preflight(
    settings: Settings, stores: Stores, vault: KeyVault, token: Pkcs11Token | None = None
) -> None:
    """Bring SQLite (or, with ``auto_migrate``, any database) to the latest schema, then
    require the latest schema, stored keys that decrypt with ``vault``, and with ``token``: its
    module loads, the token is found and the PIN works; the newest keys held in a token or key
    manager sign there (checked in a child process)."""
    prepare_database(settings, stores)
    try:
        if token is None and not any(key.uri for key in stores.keys.newest_keys()):
            signer.check_keys(stores.keys, vault)
        else:
            _in_child(lambda: _check_external(stores, vault, token))
    except StorageError as exc:
        raise StartupError(f"database: {exc}") from None
    except KeyBackendError as exc:
        raise StartupError(f"key_backend {settings.key_backend}: {exc}") from None
    except KeyDecryptionError as exc:
        raise StartupError(
            f"stored keys do not decrypt with {_passphrase_source(settings)} ({exc}): configure "
            "the passphrase they were encrypted with; to change it, run `tufnotary-server "
            "rekey --new-passphrase-file FILE` with the old one configured"
        ) from None


def _check_external(stores: Stores, vault: KeyVault, token: Pkcs11Token | None) -> None:
    stores.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    if token is not None:
        token.check()
    signer.check_keys(stores.keys, vault, token)


def _in_child(check: Callable[[], None]) -> None:
    """Run ``check`` in a forked child and raise what it raised: this process (gunicorn's
    master) never initialises the PKCS#11 module or a key manager's client, which its forked
    workers could not reuse."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_report, args=(check, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(TOKEN_CHECK_TIMEOUT):
            raise KeyBackendError(
                f"the token or key manager did not answer within {TOKEN_CHECK_TIMEOUT:.0f}s: "
                "check it, and pkcs11_module"
            )
        failure = receive.recv()
    except EOFError:
        failure = KeyBackendError(f"the key check ended with exit status {child.exitcode}")
    finally:
        child.join(1)
        if child.is_alive():
            child.kill()
    if failure is not None:
        raise failure


def _report(check: Callable[[], None], send: Connection) -> None:
    try:
        check()
    except (KeyBackendError, KeyDecryptionError, StorageError) as exc:
        send.send(type(exc)(str(exc)))
    else:
        send.send(None)


def prepare_database(settings: Settings, stores: Stores) -> None:
    """Bring SQLite (or, with ``auto_migrate``, any database) to the latest schema; StartupError
    unless the database then is at it."""
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
