"""Keys in the trust directory: key generate, list, status, rotate, import, export, remove."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization

from tufnotary.client.cli.context import current, interactive
from tufnotary.client.cli.options import (
    ANY_ROLE,
    EXISTING_FILE,
    GUN,
    global_options,
    offline_option,
    output_option,
)
from tufnotary.client.cli.output import (
    emit,
    fail,
    note,
    offline_note,
    table,
    updating,
    utc,
)
from tufnotary.client.cli.progress import progress
from tufnotary.client.errors import ClientError
from tufnotary.client.keystatus import DEFAULT_MAX_AGE, DEFAULT_SERVER_MAX_AGE, key_status
from tufnotary.client.repository import Repository
from tufnotary.client.trustdir import KeyFileError
from tufnotary.metadata.keys import ECDSA, ED25519, RSA, Key
from tufnotary.metadata.model import BASE_ROLES, SNAPSHOT, TARGETS, TIMESTAMP


@click.group()
@global_options
def key() -> None:
    """Generate, list, check, rotate, import and export keys."""


def _public_pem(public: Key) -> bytes:
    return public.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@key.command(name="generate")
@click.argument(
    "algorithm_arg", metavar="[ALGORITHM]", required=False, type=click.Choice([ECDSA, ED25519, RSA])
)
@click.option(
    "-a",
    "--algorithm",
    type=click.Choice([ECDSA, ED25519, RSA]),
    help="Key algorithm  [default: ecdsa]",
)
@click.option("-r", "--role", type=ANY_ROLE, default="root", show_default=True)
@click.option("-g", "--gun", type=GUN, help="Repository of a targets or snapshot key.")
@output_option("Also write the public key (PEM) here, e.g. for `delegation add`.")
@global_options
def key_generate(
    algorithm_arg: str | None,
    algorithm: str | None,
    role: str,
    gun: str | None,
    output: Path | None,
) -> None:
    """Generate a key for ROLE into the trust directory (encrypted with its passphrase)."""
    if algorithm_arg and algorithm and algorithm_arg != algorithm:
        raise click.UsageError("ALGORITHM and --algorithm differ")
    chosen = algorithm or algorithm_arg or ECDSA
    if role in (TARGETS, SNAPSHOT) and not gun:
        raise click.UsageError(f"a {role} key belongs to a repository: give --gun")
    if role == TIMESTAMP:
        raise click.BadParameter("the server holds the timestamp key", param_hint="--role")
    private = current().trustdir().generate_key(role, gun, chosen)
    pem = _public_pem(private.public)
    if output is not None:
        output.write_bytes(pem)
    data = {
        "key_id": private.public.key_id,
        "role": role,
        "gun": gun,
        "algorithm": chosen,
        "public_key": pem.decode(),
    }
    emit(data, f"Generated new {chosen} {role} key with keyID: {private.public.key_id}")


@key.command(name="list")
@global_options
def key_list() -> None:
    """List the keys of the trust directory: ROLE GUN KEY ID LOCATION (a key file's
    directory, or the URI of a key in a token or key manager)."""
    settings = current()
    infos = sorted(settings.trustdir().list_keys(), key=lambda k: (k.role, k.gun or "", k.key_id))
    data = [
        {"key_id": k.key_id, "role": k.role, "gun": k.gun, "path": str(k.path), "uri": k.uri}
        for k in infos
    ]

    def human() -> None:
        if not infos:
            click.echo(f"No signing keys found in {settings.trust_dir}.")
            return
        rows = [(k.role, k.gun or "", k.key_id, k.uri or k.path.parent) for k in infos]
        click.echo(table(("ROLE", "GUN", "KEY ID", "LOCATION"), rows))

    emit(data, human)


def _days_option(
    flag: str, default: timedelta, help_text: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``flag DAYS``: a whole number of days, at least 1."""
    return click.option(
        flag,
        type=click.IntRange(min=1),
        default=default.days,
        show_default=True,
        metavar="DAYS",
        help=help_text,
    )


@key.command(name="status")
@click.argument("gun", type=GUN)
@_days_option(
    "--max-age",
    DEFAULT_MAX_AGE,
    "Warn about targets, snapshot and delegation keys held here older than this.",
)
@_days_option(
    "--max-server-age",
    DEFAULT_SERVER_MAX_AGE,
    "Warn about the server's timestamp and snapshot keys older than this.",
)
@offline_option
@global_options
def key_status_command(gun: str, max_age: int, max_server_age: int, offline: bool) -> None:
    """For each role of GUN: its key ids, where each key lives (file, token, server or
    elsewhere), its age, when the role's metadata expires, and what to rotate or renew.

    Ages count from a key file's time, a token key's registration, a root certificate's
    notBefore, or for the server's keys from when a tufnotary server says it made them
    (notary-server does not say; nor is it asked --offline).
    """
    settings = current()
    repo = settings.repository(gun, offline=offline)
    with progress(updating(repo)):
        trusted = repo.refresh()
    offline_note(repo)
    now = datetime.now(UTC)
    states = key_status(
        trusted,
        repo.trustdir,
        gun,
        max_age=timedelta(days=max_age),
        server_max_age=timedelta(days=max_server_age),
        server_keys=None if repo.offline else lambda role: _server_key_date(repo, role),
        now=now,
    )
    data = {"gun": gun, "roles": [state.to_dict(now) for state in states]}

    def human() -> None:
        rows = [
            (
                state.role,
                key.key_id,
                key.where or key.location,
                f"{age.days}d" if (age := key.age(now)) is not None else "-",
                utc(state.expires) if state.expires else "-",
            )
            for state in states
            for key in state.keys
        ]
        click.echo(table(("ROLE", "KEY ID", "LOCATION", "AGE", "EXPIRES"), rows))
        for state in states:
            for warning in state.warnings:
                click.echo(f"warning: {state.role}: {warning}")

    emit(data, human)


def _server_key_date(repo: Repository, role: str) -> tuple[str, datetime | None] | None:
    """The id of the key the server holds for ``role`` and when it made it; None if the server
    does not answer (a pull-only user may not ask for server keys)."""
    try:
        public, created = repo.remote.server_key_created(repo.gun, role)
    except ClientError:
        return None
    return public.key_id, created


@key.command(name="rotate")
@click.argument("gun", type=GUN)
@click.argument("role", type=click.Choice(list(BASE_ROLES)))
@click.option(
    "-r",
    "--server-managed",
    is_flag=True,
    help="The server holds the new key (snapshot; implied for timestamp).",
)
@click.option(
    "-k",
    "--key",
    "key_id",
    metavar="KEY_ID",
    help="Rotate to this key of the trust directory (a file or `key import --uri`) "
    "instead of a new key file.",
)
@global_options
def key_rotate(gun: str, role: str, server_managed: bool, key_id: str | None) -> None:
    """Replace ROLE's key of GUN by a new one and publish the new root at once.

    The old key signs too where it must (root); keys in tokens sign like key files.
    Needs the trust server: exits 1 if it cannot be reached or refuses.
    """
    if server_managed and role not in (SNAPSHOT, TIMESTAMP):
        raise click.UsageError("only the snapshot and timestamp keys can be server-managed")
    if key_id and (server_managed or role == TIMESTAMP):
        raise click.UsageError("--key names a key held here: not for server-managed keys")
    settings = current()
    repo = settings.repository(gun)
    with progress(f"rotating the {role} key of {gun} on {settings.server}"):
        new = repo.rotate_key(role, server_managed=server_managed, key_id=key_id)
    data = {"gun": gun, "role": role, "key_id": new.key_id, "server_managed": server_managed}
    emit(data, f"Rotated the {role} key of {gun}: new key {new.key_id}")


def _pem_blocks(data: bytes) -> list[bytes]:
    """Each ``-----BEGIN ...-----`` to ``-----END ...-----`` block of ``data``."""
    blocks = re.findall(rb"-----BEGIN [^\n]*-----.*?-----END [^\n]*-----", data, re.DOTALL)
    return blocks or [data]


@key.command(name="import")
@click.argument("arguments", nargs=-1, metavar="PEMFILE... | --uri URI [GUN]")
@click.option("-r", "--role", type=ANY_ROLE, help="Role, if the PEM has no role header.")
@click.option("-g", "--gun", type=GUN, help="Repository, if the PEM has no gun header.")
@click.option(
    "--uri",
    help="Register the key behind this URI (hsm:, awskms:, gcpkms:, azurekms:, hv:) instead "
    "of importing PEM files; nothing secret is stored.",
)
@click.option(
    "--public-key",
    type=EXISTING_FILE,
    help="With --uri: the key's public key (PEM); read from the token for hsm: URIs.",
)
@output_option("With --uri: also write the public key (PEM) here, e.g. for `delegation add`.")
@global_options
def key_import(
    arguments: tuple[str, ...],
    role: str | None,
    gun: str | None,
    uri: str | None,
    public_key: Path | None,
    output: Path | None,
) -> None:
    """Import private keys (PEM: PKCS#8, SEC1, PKCS#1; notary exports) into the trust dir,
    or with --uri register a key that stays in a PKCS#11 token or a cloud key manager.

    \b
    tufnotary key import --uri 'hsm:2?label=signing' --role root
    tufnotary key import --uri 'hsm:3?label=signing' --role targets/releases -o releases.pem
    tufnotary key import --uri awskms:KEY-ARN --public-key pub.pem --role targets GUN

    The token's PIN comes from TUFNOTARY_PKCS11_PIN or a prompt; PYKCS11LIB names the
    PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so). The key must sign (the PIN is
    asked for once) before it is registered.
    """
    if uri is not None:
        _import_uri(uri, arguments, role, gun, public_key, output)
        return
    if public_key or output:
        raise click.UsageError("--public-key and --output go with --uri")
    if not arguments:
        raise click.UsageError("give the PEM files to import, or --uri")
    pemfiles = [EXISTING_FILE.convert(a, None, None) for a in arguments]
    trustdir = current().trustdir()
    imported = []
    for path in pemfiles:
        for block in _pem_blocks(path.read_bytes()):
            try:
                key_id = trustdir.import_key(block, role, gun)
            except ValueError as exc:
                fail(f"{path}: {exc} (give --role)")
            except KeyFileError as exc:
                fail(f"{path}: {exc}")
            imported.append({"key_id": key_id, "file": str(path)})
    emit(imported, "\n".join(f"Imported key {k['key_id']} from {k['file']}" for k in imported))


def _import_uri(
    uri: str,
    arguments: tuple[str, ...],
    role: str | None,
    gun: str | None,
    public_key: Path | None,
    output: Path | None,
) -> None:
    """``key import --uri``: check the key signs, then store its record."""
    if len(arguments) > 1 or (arguments and gun and arguments[0] != gun):
        raise click.UsageError("--uri takes at most one GUN")
    gun = GUN.convert(arguments[0], None, None) if arguments else gun
    if role is None:
        raise click.UsageError("give the key's role with --role")
    if role in (TARGETS, SNAPSHOT) and not gun:
        raise click.UsageError(f"a {role} key belongs to a repository: give GUN")
    if role == TIMESTAMP:
        raise click.BadParameter("the server holds the timestamp key", param_hint="--role")
    public = None
    if public_key is not None:
        try:
            public = Key.from_public_pem(public_key.read_bytes())
        except ValueError as exc:
            raise click.BadParameter(f"{public_key}: {exc}", param_hint="--public-key") from exc
    with progress(f"checking that {uri} signs"):
        record = current().trustdir().token_keys.register(uri, role, gun, public)
    pem = _public_pem(record.public)
    if output is not None:
        output.write_bytes(pem)
    data = {
        "key_id": record.key_id,
        "role": role,
        "gun": gun,
        "uri": uri,
        "backend": record.backend,
        "public_key": pem.decode(),
    }
    emit(data, f"Registered {role} key {record.key_id} in {record.backend} ({uri})")


@key.command(name="export")
@click.argument("key_ids", nargs=-1)
@output_option("Write to FILE (mode 0600) instead of stdout.")
@global_options
def key_export(key_ids: tuple[str, ...], output: Path | None) -> None:
    """Export private keys (encrypted, with role and gun headers); without KEY_IDS, all key
    files (keys in tokens never leave them)."""
    trustdir = current().trustdir()
    ids = key_ids or tuple(info.key_id for info in trustdir.list_keys() if info.uri is None)
    pem = b"".join(trustdir.export_key(key_id) for key_id in ids)
    if output is None:
        with click.open_file("-", "wb") as stdout:
            stdout.write(pem)
        return
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    note(f"Exported {len(ids)} key(s) to {output}")


@key.command(name="remove")
@click.argument("key_id")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@global_options
def key_remove(key_id: str, yes: bool) -> None:
    """Delete the private key KEY_ID from the trust directory (irreversible)."""
    if not yes:
        if not interactive():
            raise click.UsageError("removing a key is irreversible: confirm with --yes")
        click.confirm(f"Delete key {key_id}?", abort=True, err=True)
    current().trustdir().remove_key(key_id)
    emit({"key_id": key_id, "removed": True}, f"Deleted key {key_id}.")


COMMANDS: tuple[click.Command, ...] = (key,)
