"""`tufnotary-server import --from-notary URL | --from-notary-db URL --signer-db URL [GUN...]`:
the operator's side of :mod:`tufnotary.importer.notary_api` and, through
:mod:`tufnotary.importer.cli_db`, of the database import (registered on the server's command
group)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tufnotary.client.cli.options import EXISTING_FILE, TIMEOUT, credential_options
from tufnotary.client.errors import ClientError
from tufnotary.client.remote import DEFAULT_TIMEOUT, Remote
from tufnotary.importer.cli_db import import_from_databases
from tufnotary.importer.notary_api import (
    Imported,
    import_from_api,
    owner_commands,
    source_guns,
)
from tufnotary.importer.outcome import Refused, shown
from tufnotary.metadata.model import ROOT
from tufnotary.server.cli_common import open_stores, say, with_settings
from tufnotary.server.config import Settings
from tufnotary.server.startup import StartupError, prepare_database

THIS_SERVER = "https://THIS-SERVER"


def _summary(outcome: Imported | Refused, server_url: str, source_url: str) -> list[str]:
    if isinstance(outcome, Refused):
        return [f"{shown(outcome.gun)}: REFUSED, nothing stored: {outcome.reason}"]
    fetched = outcome.fetched
    trusted = fetched.trusted
    added = ", ".join(f"{f.role} {f.version}" for f in outcome.added) or "nothing new"
    root_keys = " ".join(trusted.root.roles[ROOT].keyids)
    lines = [
        f"{outcome.gun}: verified {len(fetched.files)} files (root {trusted.root.version}, "
        f"root keys {root_keys}); added: {added}",
        f"  the imported timestamp expires at {fetched.timestamp_expires:%Y-%m-%d %H:%M:%S} "
        "UTC: until the owner rotates, this server serves it unchanged and refuses publishes",
        *(
            f"  delegation {role} is skipped by clients: {why}"
            for role, why in fetched.skipped.items()
        ),
        "  the owner runs:",
        *(f"    {line}" for line in owner_commands(outcome, server_url, source_url)),
    ]
    return lines


@click.command(name="import")
@with_settings
@click.option(
    "--from-notary",
    "source_url",
    metavar="URL",
    help="A running notary-compatible server (https://host:port) to import from over its API.",
)
@click.option(
    "--from-notary-db",
    "notary_db",
    metavar="URL",
    help="Instead: a self-hosted notary-server's database (a SQLAlchemy URL, or notary's "
    "storage.db_url); needs --signer-db.",
)
@click.option(
    "--signer-db",
    metavar="URL",
    help="With --from-notary-db: notary-signer's database (a SQLAlchemy URL, or its db_url).",
)
@click.option(
    "--signer-passphrase",
    "signer_passphrases",
    multiple=True,
    metavar="ALIAS=SECRET",
    help="With --from-notary-db: passphrase of a notary-signer key alias (repeatable); "
    "default: $NOTARY_SIGNER_<ALIAS>, as notary-signer reads it.",
)
@click.option(
    "--tlscacert",
    type=EXISTING_FILE,
    help="CA bundle that verifies the source's certificate (default: the system's CAs).",
)
@credential_options("TUFNOTARY_IMPORT", "source")
@click.option(
    "--timeout",
    type=TIMEOUT,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Give up on a source that does not answer for this long.",
)
@click.option(
    "--root-key-id",
    "pins",
    metavar="GUN=ID",
    multiple=True,
    callback=lambda _ctx, _param, values: _parse_pins(values),
    help="Refuse GUN unless root key ID signs its newest root (repeatable; the ids root.json "
    "lists, as in notary's trust_pinning). Without it, root 1 is trusted on first use.",
)
@click.option(
    "--server-url",
    metavar="URL",
    default=THIS_SERVER,
    help="The URL clients use for this server, for the owners' commands printed.",
)
@click.argument("guns", nargs=-1, metavar="[GUN]...")
def import_command(
    settings: Settings,
    source_url: str | None,
    notary_db: str | None,
    signer_db: str | None,
    signer_passphrases: tuple[str, ...],
    tlscacert: Path | None,
    username: str | None,
    password: str | None,
    token: str | None,
    token_realm_hosts: tuple[str, ...],
    timeout: float,
    pins: dict[str, set[str]],
    server_url: str,
    guns: tuple[str, ...],
) -> None:
    """Import GUNs (default: every GUN the source lists) from a Notary deployment.

    --from-notary URL: over the notary API, every root version and the current timestamp,
    snapshot, targets and delegations, verified as a client verifies them, stored unchanged;
    the owner then rotates the timestamp key (the commands are printed).

    --from-notary-db URL --signer-db URL: every version from notary-server's database, and
    notary-signer's keys re-encrypted under this server's passphrase: clients notice nothing.
    Nothing is written unless every key decrypts.

    Re-running adds only what is new. Exits 1 if a GUN was refused (nothing of it is stored).
    """
    if (source_url is None) == (notary_db is None):
        raise click.UsageError("give one of --from-notary URL or --from-notary-db URL")
    if notary_db is not None:
        if signer_db is None:
            raise click.UsageError("--from-notary-db needs --signer-db URL")
        import_from_databases(settings, notary_db, signer_db, signer_passphrases, guns)
        return
    if signer_db is not None or signer_passphrases:
        raise click.UsageError("--signer-db and --signer-passphrase go with --from-notary-db")
    if not source_url.lower().startswith("https://") and (username or password or token):
        raise click.UsageError(
            f"{source_url} is not https: --username/--password/--token would travel in clear"
        )
    remote = Remote(
        source_url,
        verify=str(tlscacert) if tlscacert else True,
        timeout=timeout,
        username=username,
        password=password,
        token=token,
        realm_hosts=token_realm_hosts,
    )
    outcomes: list[Imported | Refused] = []
    with open_stores(settings) as stores:
        try:
            prepare_database(settings, stores)
        except StartupError as exc:
            raise click.ClickException(str(exc)) from None
        if not guns:
            try:
                guns = tuple(source_guns(remote))
            except ClientError as exc:
                raise click.ClickException(f"cannot list the source's GUNs: {exc}") from None
            say(f"the source's changefeed lists {len(guns)} GUNs")
        try:
            with click.progressbar(length=len(guns), label="importing", file=sys.stderr) as bar:

                def done(outcome: Imported | Refused) -> None:
                    outcomes.append(outcome)
                    bar.update(1)

                import_from_api(stores.metadata, remote, guns, pins=pins, done=done)
        except ClientError as exc:
            stopped: str | None = str(exc)
        else:
            stopped = None
    for outcome in outcomes:
        click.echo("\n".join(_summary(outcome, server_url, source_url)))
    if stopped is not None:
        raise click.ClickException(
            f"stopped after {len(outcomes)} of {len(guns)} GUNs: {stopped}; "
            "the GUNs above are stored: run the same command again to go on"
        )
    refused = [shown(o.gun) for o in outcomes if isinstance(o, Refused)]
    if refused:
        raise click.ClickException(
            f"{len(refused)} of {len(outcomes)} GUNs refused: {' '.join(refused)}"
        )


def _parse_pins(values: tuple[str, ...]) -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    for value in values:
        gun, equals, key_id = value.rpartition("=")
        if not equals or not gun or len(key_id) != 64:
            raise click.BadParameter(f"{value!r}: expected GUN=ID (a 64-hex key id)")
        pins.setdefault(gun, set()).add(key_id.lower())
    return pins
