"""Delegated roles: delegation add, remove and list."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography import x509

from tufnotary.client.changes import StagedChange
from tufnotary.client.cli.context import current
from tufnotary.client.cli.options import (
    EXISTING_FILE,
    GUN,
    TARGETS_ROLE,
    global_options,
    publish_option,
    split_paths,
)
from tufnotary.client.cli.output import (
    emit,
    table,
)
from tufnotary.client.cli.progress import progress
from tufnotary.client.cli.publishing import report_staged
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import TARGETS

_ALL_PATHS = '"" <all paths>'


def _shown_paths(paths: list[str]) -> str:
    return ", ".join(_ALL_PATHS if path == "" else path for path in paths)


@click.group()
@global_options
def delegation() -> None:
    """Add, remove and list delegated roles (e.g. targets/releases)."""


def _read_public_keys(path: Path) -> Key:
    """A PEM public key or x509 certificate chain (leaf first) as a metadata key."""
    data = path.read_bytes()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return Key.from_certificates(x509.load_pem_x509_certificates(data))
        return Key.from_public_pem(data)
    except ValueError as exc:
        raise click.BadParameter(f"{path}: unreadable PEM: {exc}", param_hint="PEMFILE") from None


@delegation.command(name="add")
@click.argument("gun", type=GUN)
@click.argument("role", type=TARGETS_ROLE)
@click.argument("pemfiles", nargs=-1, type=EXISTING_FILE)
@click.option(
    "--paths", multiple=True, callback=split_paths, metavar="PATH", help="Target path prefixes."
)
@click.option("--all-paths", is_flag=True, help="Delegate every target name.")
@click.option("--threshold", type=click.IntRange(min=1), default=1, show_default=True)
@publish_option
@global_options
def delegation_add(
    gun: str,
    role: str,
    pemfiles: tuple[Path, ...],
    paths: list[str],
    all_paths: bool,
    threshold: int,
    publish_now: bool,
) -> None:
    """Stage delegation ROLE of GUN to the public keys or x509 certificates in PEMFILEs."""
    if role == TARGETS:
        raise click.BadParameter("delegations are named targets/<name>", param_hint="ROLE")
    if all_paths and paths:
        raise click.UsageError("give --paths or --all-paths, not both")
    if not pemfiles and not paths and not all_paths:
        raise click.UsageError("give PEM files with the keys, and --paths or --all-paths")
    keys = [_read_public_keys(path) for path in pemfiles]
    paths = [""] if all_paths else paths
    repo = current().repository(gun)
    repo.add_delegation(role, keys, paths, threshold)
    change = StagedChange.add_delegation(role, keys, paths, threshold)
    ids = ", ".join(key.key_id for key in keys) or "no new keys"
    shown = _shown_paths(paths) or "no new paths"
    report_staged(repo, [change], publish_now, f"Delegation {role} (keys {ids}; paths {shown})")


@delegation.command(name="remove")
@click.argument("gun", type=GUN)
@click.argument("role", type=TARGETS_ROLE)
@click.argument("keyids", nargs=-1, metavar="[KEYID]...")
@publish_option
@global_options
def delegation_remove(gun: str, role: str, keyids: tuple[str, ...], publish_now: bool) -> None:
    """Stage the removal of delegation ROLE (and its targets) from GUN; with KEYIDs (as
    `delegation list` shows them), the removal of only those keys of ROLE."""
    if role == TARGETS:
        raise click.BadParameter("delegations are named targets/<name>", param_hint="ROLE")
    repo = current().repository(gun)
    repo.remove_delegation(role, keyids)
    what = f"keys {', '.join(keyids)} from delegation {role}" if keyids else f"delegation {role}"
    change = StagedChange.remove_delegation(role, keyids)
    report_staged(repo, [change], publish_now, f"Removal of {what}")


@delegation.command(name="list")
@click.argument("gun", type=GUN)
@global_options
def delegation_list(gun: str) -> None:
    """List the delegations of GUN: ROLE PATHS KEY IDS THRESHOLD.

    Needs the trust server: exits 1 if it cannot be reached or refuses.
    """
    settings = current()
    repo = settings.repository(gun)
    with progress(f"updating trust data of {gun} from {settings.server}"):
        entries = [
            {
                "role": entry.name,
                "paths": list(entry.paths),
                "keyids": list(entry.keyids),
                "threshold": entry.threshold,
            }
            for entry in repo.delegations()
        ]

    def human() -> None:
        if not entries:
            click.echo(f"No delegations present in {gun}.")
            return
        rows = [
            (
                e["role"],
                _shown_paths(e["paths"]),
                ", ".join(e["keyids"]),
                e["threshold"],
            )
            for e in entries
        ]
        click.echo(table(("ROLE", "PATHS", "KEY IDS", "THRESHOLD"), rows))

    emit(entries, human)


COMMANDS: tuple[click.Command, ...] = (delegation,)
