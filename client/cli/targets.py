"""Targets: staging them (add, addhash, remove) and reading them (list, lookup, verify)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tufnotary.client.changes import StagedChange
from tufnotary.client.cli.context import current
from tufnotary.client.cli.options import (
    EXISTING_FILE,
    GUN,
    global_options,
    hex_digest,
    offline_option,
    publish_option,
    roles_option,
)
from tufnotary.client.cli.output import (
    emit,
    fail,
    offline_note,
    table,
    updating,
)
from tufnotary.client.cli.progress import progress
from tufnotary.client.cli.publishing import report_staged
from tufnotary.client.repository import Target
from tufnotary.metadata.canonical import encode_canonical, loads
from tufnotary.metadata.errors import FormatError, MetadataError
from tufnotary.metadata.model import ABSENT, TARGETS, FileMeta


def _custom_json(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """--custom: any JSON value with a canonical form (integers only, no duplicate keys)."""
    if value is None:
        return ABSENT
    try:
        custom = loads(value)
        encode_canonical(custom)
    except FormatError as exc:
        raise click.BadParameter(str(exc)) from None
    return custom


_custom_option = click.option(
    "--custom",
    callback=_custom_json,
    metavar="JSON",
    help='Custom data signed with the target, e.g. \'{"git":"abc123"}\'.',
)


@click.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@click.argument("file", type=EXISTING_FILE)
@roles_option("Delegation roles to sign the target in (default: targets).")
@_custom_option
@publish_option
@global_options
def add(gun: str, name: str, file: Path, roles: list[str], custom: Any, publish_now: bool) -> None:
    """Stage FILE (its length and hashes) as target NAME of GUN."""
    repo = current().repository(gun)
    roles = roles or [TARGETS]
    meta = repo.add_file(name, file, roles, custom)
    changes = [StagedChange.add_target(name, meta, role) for role in roles]
    report_staged(repo, changes, publish_now, f"Target {name!r} ({', '.join(roles)})")


@click.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@click.argument("size", type=click.IntRange(min=0))
@click.option("--sha256", callback=hex_digest(32), metavar="HEX", help="sha256 of the target.")
@click.option("--sha512", callback=hex_digest(64), metavar="HEX", help="sha512 of the target.")
@roles_option("Delegation roles to sign the target in (default: targets).")
@_custom_option
@publish_option
@global_options
def addhash(
    gun: str,
    name: str,
    size: int,
    sha256: bytes | None,
    sha512: bytes | None,
    roles: list[str],
    custom: Any,
    publish_now: bool,
) -> None:
    """Stage target NAME of GUN by its SIZE in bytes and hashes (e.g. an image manifest)."""
    hashes = {alg: value for alg, value in (("sha256", sha256), ("sha512", sha512)) if value}
    if not hashes:
        raise click.UsageError("give --sha256 and/or --sha512")
    repo = current().repository(gun)
    roles = roles or [TARGETS]
    changes = repo.add_target(name, FileMeta(size, hashes, custom), roles)
    report_staged(repo, changes, publish_now, f"Target {name!r} ({', '.join(roles)})")


@click.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@roles_option("Delegation roles to remove the target from (default: targets).")
@publish_option
@global_options
def remove(gun: str, name: str, roles: list[str], publish_now: bool) -> None:
    """Stage the removal of target NAME from GUN."""
    repo = current().repository(gun)
    roles = roles or [TARGETS]
    repo.remove_target(name, roles)
    changes = [StagedChange.remove_target(name, role) for role in roles]
    report_staged(repo, changes, publish_now, f"Removal of {name!r} ({', '.join(roles)})")


def _digest_of(meta: FileMeta) -> str | None:
    return f"sha256:{meta.sha256_hex}" if meta.sha256_hex else None


def _target_dict(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "role": target.role,
        "length": target.meta.length,
        "digest": _digest_of(target.meta),
        "hashes": {alg: value.hex() for alg, value in sorted(target.meta.hashes.items())},
    }


@click.command(name="list")
@click.argument("gun", type=GUN)
@roles_option("List only these roles' targets (they shadow targets).")
@offline_option
@global_options
def list_(gun: str, roles: list[str], offline: bool) -> None:
    """List the trusted targets of GUN: NAME DIGEST SIZE ROLE.

    Needs the trust server: exits 1 if it cannot be reached, times out or fails, even with
    trust data cached (--offline reads only the cache).
    """
    settings = current()
    repo = settings.repository(gun, offline=offline)
    with progress(updating(repo)):
        targets = repo.targets(roles or (TARGETS,))
    offline_note(repo)

    def human() -> None:
        if not targets:
            click.echo("No targets present in this repository.")
            return
        rows = [(t.name, t.meta.sha256_hex or "-", t.meta.length, t.role) for t in targets]
        click.echo(table(("NAME", "DIGEST", "SIZE (BYTES)", "ROLE"), rows))

    emit([_target_dict(t) for t in targets], human)


@click.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@offline_option
@global_options
def lookup(gun: str, name: str, offline: bool) -> None:
    """Print the signed digest and size of target NAME: `NAME sha256:HEX SIZE`.

    Needs the trust server: exits 1 if it cannot be reached, times out or fails, even with
    trust data cached (--offline reads only the cache).
    """
    settings = current()
    repo = settings.repository(gun, offline=offline)
    with progress(updating(repo)):
        target = repo.lookup(name)
    offline_note(repo)
    hexes = target.meta.hashes
    alg = "sha256" if "sha256" in hexes else next(iter(sorted(hexes)), "sha256")
    digest = f"{alg}:{hexes[alg].hex()}" if alg in hexes else "-"
    emit(_target_dict(target), f"{name} {digest} {target.meta.length}")


@click.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@click.option(
    "-i", "--input", "source", type=click.File("rb"), default="-", help="Read FILE, not stdin."
)
@click.option("-o", "--output", type=click.File("wb"), help="Write the content to FILE.")
@click.option("-q", "--quiet", is_flag=True, help="Do not write the content out.")
@offline_option
@global_options
def verify(gun: str, name: str, source: Any, output: Any, quiet: bool, offline: bool) -> None:
    """Check that the content on stdin is target NAME of GUN; on success write it to stdout.

    Exits 1 if the length or a hash differs, or NAME is not signed. Needs the trust server:
    exits 1 if it cannot be reached, times out or fails, even with trust data cached
    (--offline reads only the cache).
    """
    data = source.read()
    settings = current()
    repo = settings.repository(gun, offline=offline)
    with progress(updating(repo)):
        target = repo.lookup(name)
    offline_note(repo)
    try:
        target.meta.verify(data, name)
    except MetadataError as exc:
        fail(f"{name} of {gun} does not match the content: {exc}")
    if settings.json:
        emit(_target_dict(target) | {"verified": True}, "")
    elif output is not None:
        output.write(data)
    elif not quiet:
        with click.open_file("-", "wb") as stdout:
            stdout.write(data)


COMMANDS: tuple[click.Command, ...] = (
    add,
    addhash,
    remove,
    list_,
    lookup,
    verify,
)
