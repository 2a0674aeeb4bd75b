"""`tufnotary-server import --from-notary-db URL --signer-db URL`: a self-hosted Notary's
metadata and server keys, read from its databases (tufnotary.importer.db_import); the options
are declared on the one `import` command (tufnotary.importer.cli)."""

from __future__ import annotations

import os
import sys

import click

from tufnotary.importer import db_import
from tufnotary.importer.notary_db import (
    BadNotaryFile,
    NotaryDatabaseError,
    connected,
    read_files,
    read_guns,
    read_signer_keys,
)
from tufnotary.importer.outcome import Refused, shown, unservable
from tufnotary.importer.signer_keys import SignerKeyError, passphrases_for
from tufnotary.server.cli_common import open_stores, open_vault_or_fail, say
from tufnotary.server.config import Settings
from tufnotary.server.startup import StartupError, preflight
from tufnotary.server.storage.metadata import VersionConflict


def _passphrases(values: tuple[str, ...]) -> dict[str, str]:
    given = {}
    for value in values:
        alias, separator, secret = value.partition("=")
        if not separator or not alias or not secret:
            raise click.BadParameter("expected ALIAS=SECRET", param_hint="--signer-passphrase")
        given[alias] = secret
    return given


def import_from_databases(
    settings: Settings,
    notary_db: str,
    signer_db: str,
    signer_passphrases: tuple[str, ...],
    guns: tuple[str, ...],
) -> None:
    """Import every GUN (or the GUNs given) of a self-hosted Notary from its databases, with
    notary-signer's timestamp and snapshot keys re-encrypted under this server's passphrase.

    Clients notice nothing: the same keys keep signing. Nothing is written unless every key
    decrypts; a GUN whose files fail their checks or differ from what is stored here is refused
    alone; a re-run adds only what is missing.
    """
    given = _passphrases(signer_passphrases)
    vault = open_vault_or_fail(settings)
    results: list[db_import.GunResult | Refused] = []
    with open_stores(settings) as stores:
        try:
            preflight(settings, stores, vault)
            with connected(signer_db, "notary-signer database") as signer:
                keys = read_signer_keys(signer, list(guns) or None)
            keys = [key for key in keys if unservable(key.gun) is None]  # its GUN is refused
            passphrases = passphrases_for(keys, given, os.environ)
            sealed = db_import.new_keys(stores, keys, passphrases, vault)
            with connected(notary_db, "notary-server database") as source:
                available = read_guns(source)
                unknown = sorted(set(guns) - set(available))
                if unknown:
                    raise click.ClickException(f"notary-server holds no GUN {', '.join(unknown)}")
                db_import.store_keys(stores, sealed)
                say(f"server keys: {len(sealed)} imported, {len(keys) - len(sealed)} already held")
                with click.progressbar(
                    list(guns) or available,
                    label="importing",
                    item_show_func=lambda gun: gun,
                    file=sys.stderr,
                ) as progress:
                    for gun in progress:
                        try:
                            if problem := unservable(gun):
                                raise BadNotaryFile(problem)
                            files = read_files(source, gun)
                            results.append(db_import.import_gun(stores, gun, files, keys))
                        except (BadNotaryFile, VersionConflict) as exc:
                            results.append(Refused(gun, str(exc)))
        except (StartupError, NotaryDatabaseError, SignerKeyError) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            for result in results:
                click.echo(_summary(result))
    refused = [shown(result.gun) for result in results if isinstance(result, Refused)]
    if refused:
        raise click.ClickException(
            f"{len(refused)} of {len(results)} GUNs refused (none of their versions stored): "
            + " ".join(refused)
        )


def _summary(result: db_import.GunResult | Refused) -> str:
    if isinstance(result, Refused):
        return f"{shown(result.gun)}: refused: {result.reason}"
    held = result.server_keys
    timestamp = (
        f"timestamp key {held['timestamp']}"
        if "timestamp" in held
        else f"timestamp key NOT held: run `notary key rotate {result.gun} timestamp -r`"
    )
    snapshot = f"snapshot key {held['snapshot']}" if "snapshot" in held else "owner signs snapshot"
    added = f"{result.added} of {result.files} versions added"
    return f"{result.gun}: {added}; {timestamp}; {snapshot}"
