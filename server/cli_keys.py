"""`tufnotary-server key add | list | remove`: server keys held in a token or key manager; and
the `serve` options that choose where new server keys live."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import format_expires
from tufnotary.server import keyregistry
from tufnotary.server.cli_common import PATH_TYPE, open_stores, say, with_settings
from tufnotary.server.config import KEY_BACKENDS, Settings
from tufnotary.server.keybackend import KeyBackendError
from tufnotary.server.startup import StartupError, open_token
from tufnotary.server.storage.keys import StoredKey


def key_backend_options(command: Callable[..., None]) -> Callable[..., None]:
    """`serve` options for key_backend and the PKCS#11 settings (the PIN itself only from the
    config file or the environment: a command line is visible to every local user)."""
    options = (
        click.option(
            "--key-backend",
            help=f"Where new server keys live: {', '.join(KEY_BACKENDS)} (registered keys only).",
        ),
        click.option("--pkcs11-module", metavar="PATH", help="PKCS#11 module (shared library)."),
        click.option("--pkcs11-token-label", metavar="LABEL", help="Label of the PKCS#11 token."),
        click.option(
            "--pkcs11-pin-file", type=PATH_TYPE, help="File holding the PKCS#11 user PIN."
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


@click.group("key")
def key() -> None:
    """Server-held timestamp and snapshot keys: register keys that live in a PKCS#11 token or a
    cloud key manager, list and remove them."""


@key.command("add")
@with_settings
@click.option("--gun", required=True, help="The repository the key signs for.")
@click.option("--role", required=True, type=click.Choice(keyregistry.SERVER_ROLES))
@click.option(
    "--uri",
    required=True,
    help="securesystemslib key URI: hsm:, awskms:, gcpkms:, azurekms:, hv: (file2: for tests).",
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The key's public key (PEM); read from the token for hsm: URIs.",
)
def key_add(settings: Settings, gun: str, role: str, uri: str, public_key: Path | None) -> None:
    """Register the key behind --uri as a ROLE key of GUN, after checking that it signs.

    The database keeps its public key and URI only. The next rotation of the role (`tufnotary
    key rotate GUN ROLE`, `notary key rotate GUN ROLE -r`), or the first GET of the role's key
    before GUN is published, hands it out; with key_backend 'uri' the server hands out only such
    keys. hsm: keys need the pkcs11_* settings. Recorded in the audit log.
    """
    public = _read_public_key(public_key) if public_key else None
    try:
        token = open_token(settings)
        with open_stores(settings, prepare=True) as stores:
            stored = keyregistry.register(stores, gun, role, uri, public, token)
    except (keyregistry.RegistryError, KeyBackendError, StartupError) as exc:
        raise click.ClickException(str(exc)) from None
    say(
        f"{role} key {stored.key_id} of {gun} registered ({uri}); the next rotation hands it "
        f"out (tufnotary key rotate {gun} {role}), or the first publish of {gun}"
    )


def _read_public_key(path: Path) -> Key:
    try:
        return Key.from_public_pem(path.read_bytes())
    except ValueError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--public-key") from None


@key.command("list")
@with_settings
@click.argument("gun", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def key_list(settings: Settings, gun: str | None, as_json: bool) -> None:
    """List the server keys (of GUN): where each lives, when it was made and first used."""
    with open_stores(settings, prepare=True) as stores:
        keys = [_key_json(stored) for stored in stores.keys.all_keys(gun)]
    if as_json:
        for entry in keys:
            click.echo(json.dumps(entry))
        return
    for entry in keys:
        click.echo(
            f"{entry['gun']}  {entry['role']}  {entry['key_id']}  {entry['algorithm']}  "
            f"{entry['uri'] or 'database'}  created {entry['created']}  "
            f"used {entry['first_used'] or 'never'}"
        )


def _key_json(stored: StoredKey) -> dict[str, Any]:
    return {
        "gun": stored.gun,
        "role": stored.role,
        "key_id": stored.key_id,
        "algorithm": stored.algorithm,
        "uri": stored.uri,
        "created": format_expires(stored.created_at),
        "first_used": format_expires(stored.last_used) if stored.last_used else None,
    }


@key.command("remove")
@with_settings
@click.argument("key_id")
def key_remove(settings: Settings, key_id: str) -> None:
    """Remove server key KEY_ID unless its GUN's current root lists it (rotate first). A key
    in a token or key manager stays there; recorded in the audit log."""
    try:
        with open_stores(settings, prepare=True) as stores:
            stored = keyregistry.remove(stores, key_id)
    except keyregistry.RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    say(f"{stored.role} key {key_id} of {stored.gun} removed")
