"""Keys in the trust directory: key generate, list, rotate, import, export, remove."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization

from tufnotary.client.cli.context import current, interactive
from tufnotary.client.cli.options import (
    ANY_ROLE,
    GUN,
    global_options,
    output_option,
)
from tufnotary.client.cli.output import (
    emit,
    fail,
    note,
    table,
)
from tufnotary.client.cli.progress import progress
from tufnotary.client.trustdir import KeyFileError
from tufnotary.metadata.keys import ECDSA, ED25519, RSA, Key
from tufnotary.metadata.model import BASE_ROLES, SNAPSHOT, TARGETS, TIMESTAMP


@click.group()
@global_options
def key() -> None:
    """Generate, list, rotate, import and export keys."""


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
    """List the private keys in the trust directory: ROLE GUN KEY ID LOCATION."""
    settings = current()
    infos = sorted(settings.trustdir().list_keys(), key=lambda k: (k.role, k.gun or "", k.key_id))
    data = [{"key_id": k.key_id, "role": k.role, "gun": k.gun, "path": str(k.path)} for k in infos]

    def human() -> None:
        if not infos:
            click.echo(f"No signing keys found in {settings.trust_dir}.")
            return
        rows = [(k.role, k.gun or "", k.key_id, k.path.parent) for k in infos]
        click.echo(table(("ROLE", "GUN", "KEY ID", "LOCATION"), rows))

    emit(data, human)


@key.command(name="rotate")
@click.argument("gun", type=GUN)
@click.argument("role", type=click.Choice(list(BASE_ROLES)))
@click.option(
    "-r",
    "--server-managed",
    is_flag=True,
    help="The server holds the new key (snapshot; implied for timestamp).",
)
@global_options
def key_rotate(gun: str, role: str, server_managed: bool) -> None:
    """Replace ROLE's key of GUN by a new one and publish the new root at once.

    Needs the trust server: exits 1 if it cannot be reached or refuses.
    """
    if server_managed and role not in (SNAPSHOT, TIMESTAMP):
        raise click.UsageError("only the snapshot and timestamp keys can be server-managed")
    settings = current()
    repo = settings.repository(gun)
    with progress(f"rotating the {role} key of {gun} on {settings.server}"):
        new = repo.rotate_key(role, server_managed=server_managed)
    data = {"gun": gun, "role": role, "key_id": new.key_id, "server_managed": server_managed}
    emit(data, f"Rotated the {role} key of {gun}: new key {new.key_id}")


def _pem_blocks(data: bytes) -> list[bytes]:
    """Each ``-----BEGIN ...-----`` to ``-----END ...-----`` block of ``data``."""
    blocks = re.findall(rb"-----BEGIN [^\n]*-----.*?-----END [^\n]*-----", data, re.DOTALL)
    return blocks or [data]


@key.command(name="import")
@click.argument(
    "pemfiles",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("-r", "--role", type=ANY_ROLE, help="Role, if the PEM has no role header.")
@click.option("-g", "--gun", type=GUN, help="Repository, if the PEM has no gun header.")
@global_options
def key_import(pemfiles: tuple[Path, ...], role: str | None, gun: str | None) -> None:
    """Import private keys (PEM: PKCS#8, SEC1, PKCS#1; notary exports) into the trust dir."""
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


@key.command(name="export")
@click.argument("key_ids", nargs=-1)
@output_option("Write to FILE (mode 0600) instead of stdout.")
@global_options
def key_export(key_ids: tuple[str, ...], output: Path | None) -> None:
    """Export private keys (encrypted, with role and gun headers); all keys without KEY_IDS."""
    trustdir = current().trustdir()
    ids = key_ids or tuple(info.key_id for info in trustdir.list_keys())
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
