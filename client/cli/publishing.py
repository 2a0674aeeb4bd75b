"""Creating, publishing and signing repositories: init, publish, status, reset, sign,
cosign, witness, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tufnotary.client.changes import ADD_DELEGATION, ADD_TARGET, REMOVE_TARGET, StagedChange
from tufnotary.client.cli.context import current
from tufnotary.client.cli.options import (
    EXISTING_FILE,
    GUN,
    TARGETS_ROLE,
    global_options,
    output_option,
)
from tufnotary.client.cli.output import (
    emit,
    table,
)
from tufnotary.client.cli.progress import progress
from tufnotary.client.errors import PROG
from tufnotary.client.repository import Repository


@click.command()
@click.argument("gun", type=GUN)
@click.option("-p", "--publish", "_publish", is_flag=True, hidden=True, help="Implied.")
@click.option(
    "--server-snapshot", is_flag=True, help="Let the server hold the snapshot key and sign it."
)
@click.option(
    "--root-key",
    "root_key_id",
    metavar="KEY_ID",
    help="Sign with this root key of the trust directory (when it holds several).",
)
@click.option("--new-root-key", is_flag=True, help="Make a new root key even if one is held.")
@global_options
def init(
    gun: str, _publish: bool, server_snapshot: bool, root_key_id: str | None, new_root_key: bool
) -> None:
    """Create and publish the repository GUN with new targets (and snapshot) keys.

    Like notary, it signs with the root key already in the trust directory (`key list`), and
    makes a new one only if there is none or --new-root-key is given. Needs the root, targets
    and snapshot passphrases. Exits 1 if GUN already exists.
    """
    if root_key_id and new_root_key:
        raise click.UsageError("give --root-key or --new-root-key, not both")
    settings = current()
    repo = settings.repository(gun)
    with progress(f"initializing {gun} on {settings.server}"):
        done = repo.initialize(
            server_snapshot=server_snapshot, root_key_id=root_key_id, new_root_key=new_root_key
        )
    reused = "root key found, using" if done.root_key_reused else "new root key"
    emit(
        {
            "gun": gun,
            "server": settings.server,
            "initialized": True,
            "root_key_id": done.root_key_id,
            "root_key_reused": done.root_key_reused,
        },
        f"Initialized {gun} on {settings.server} ({reused}: {done.root_key_id}).",
    )


def publish_staged(repo: Repository) -> list[str]:
    """Publish the staged changes of ``repo``; the roles sent."""
    settings = current()
    settings.staged = len(repo.staged())
    with progress(f"publishing {settings.staged} change(s) to {repo.gun} on {settings.server}"):
        roles = repo.publish()
    settings.staged = 0
    return roles


def report_staged(
    repo: Repository, changes: list[StagedChange], publish_now: bool, human: str
) -> None:
    """Report staged ``changes``; publish them (and earlier ones) with -p."""
    data: dict[str, Any] = {"gun": repo.gun, "staged": [change_dict(c) for c in changes]}
    if not publish_now:
        emit(data, f"{human} staged; `{PROG} publish {repo.gun}` publishes it.")
        return
    roles = publish_staged(repo)
    data |= {"staged": [], "published": roles}
    emit(data, f"{human} published ({', '.join(roles)}).")


@click.command()
@click.argument("gun", type=GUN)
@click.option(
    "--signed",
    "signed",
    nargs=2,
    multiple=True,
    type=(TARGETS_ROLE, EXISTING_FILE),
    metavar="ROLE FILE",
    help="Publish FILE, a version of ROLE signed with `sign` and `cosign`, as it is.",
)
@global_options
def publish(gun: str, signed: tuple[tuple[str, Path], ...]) -> None:
    """Sign and upload the staged changes of GUN (or, with --signed, files signed already).

    Needs the trust server: exits 1 if it cannot be reached or refuses.
    """
    settings = current()
    repo = settings.repository(gun)
    if signed:
        documents = {role: path.read_bytes() for role, path in signed}
        settings.staged = len(repo.staged())
        with progress(f"publishing {', '.join(documents)} to {settings.server}"):
            roles = repo.publish_signed(documents)
        settings.staged = 0
        emit({"gun": gun, "published": roles}, f"Published {gun} ({', '.join(roles)}).")
        return
    if not repo.staged():
        emit({"gun": gun, "published": []}, f"No unpublished changes for {gun}.")
        return
    roles = publish_staged(repo)
    emit({"gun": gun, "published": roles}, f"Published {gun} ({', '.join(roles)}).")


_ACTIONS = {ADD_TARGET: "create", REMOVE_TARGET: "delete", ADD_DELEGATION: "create"}


def change_dict(change: StagedChange) -> dict[str, Any]:
    return {"action": change.action, "role": change.role, "name": change.name}


@click.command()
@click.argument("gun", type=GUN)
@global_options
def status(gun: str) -> None:
    """Show the unpublished changes of GUN (offline)."""
    changes = current().repository(gun).staged()

    def human() -> None:
        if not changes:
            click.echo(f"No unpublished changes for {gun}.")
            return
        rows = []
        for number, change in enumerate(changes):
            action = _ACTIONS.get(change.action, "delete")
            if change.action in (ADD_TARGET, REMOVE_TARGET):
                rows.append((number, action, change.role, "target", change.name))
            else:
                rows.append((number, action, change.name, "delegation", ""))
        click.echo(f"Unpublished changes for {gun}:\n")
        click.echo(table(("#", "ACTION", "SCOPE", "TYPE", "PATH"), rows))

    emit({"gun": gun, "changes": [change_dict(c) for c in changes]}, human)


@click.command()
@click.argument("gun", type=GUN)
@click.option("--all", "_all", is_flag=True, hidden=True, help="Implied (notary compatibility).")
@global_options
def reset(gun: str, _all: bool) -> None:
    """Drop every unpublished change of GUN."""
    repo = current().repository(gun)
    count = len(repo.staged())
    repo.reset()
    emit({"gun": gun, "dropped": count}, f"Dropped {count} unpublished change(s) of {gun}.")


@click.command()
@click.argument("gun", type=GUN)
@click.argument("role", type=TARGETS_ROLE)
@output_option("Where to write the signed version.", required=True)
@global_options
def sign(gun: str, role: str, output: Path) -> None:
    """Sign the next version of ROLE (with its staged changes) with the keys held here,
    without publishing: for roles whose threshold needs several signers (then `cosign`)."""
    settings = current()
    repo = settings.repository(gun)
    with progress(f"updating trust data of {gun} from {settings.server}"):
        data = repo.sign_role(role)
    output.write_bytes(data)
    emit({"gun": gun, "role": role, "file": str(output)}, f"Signed {role} into {output}.")


@click.command()
@click.argument("gun", type=GUN)
@click.argument("role", type=TARGETS_ROLE)
@click.argument("file", type=EXISTING_FILE)
@global_options
def cosign(gun: str, role: str, file: Path) -> None:
    """Add the signatures of the keys held here to FILE, a version of ROLE made by `sign`;
    once enough signers did, publish it with `publish GUN --signed ROLE FILE`."""
    settings = current()
    repo = settings.repository(gun)
    with progress(f"updating trust data of {gun} from {settings.server}"):
        data = repo.cosign(role, file.read_bytes())
    file.write_bytes(data)
    emit({"gun": gun, "role": role, "file": str(file)}, f"Added signatures to {file}.")


@click.command()
@click.argument("gun", type=GUN)
@click.argument("roles", nargs=-1, required=True, type=TARGETS_ROLE)
@global_options
def witness(gun: str, roles: tuple[str, ...]) -> None:
    """Re-sign ROLES of GUN as they are and publish them now (renews or re-validates them)."""
    settings = current()
    repo = settings.repository(gun)
    with progress(f"re-signing {', '.join(roles)} of {gun} on {settings.server}"):
        sent = repo.witness(roles)
    emit({"gun": gun, "published": sent}, f"Re-signed and published {', '.join(sent)}.")


@click.command()
@click.argument("gun", type=GUN)
@click.option("--remote", is_flag=True, help="Also delete GUN's trust data on the server.")
@global_options
def delete(gun: str, remote: bool) -> None:
    """Forget the local trust data and staged changes of GUN (keys are kept)."""
    settings = current()
    repo = settings.repository(gun)
    if remote:
        with progress(f"deleting {gun} on {settings.server}"):
            repo.delete(remote=True)
    else:
        repo.delete()
    where = f"local and remote ({settings.server})" if remote else "local"
    emit(
        {"gun": gun, "deleted": "remote" if remote else "local"},
        f"Deleted {where} trust data of {gun}.",
    )


COMMANDS: tuple[click.Command, ...] = (
    init,
    publish,
    status,
    reset,
    sign,
    cosign,
    witness,
    delete,
)
