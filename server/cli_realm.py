"""`tufnotary-server user | group | rule | token-key`: the built-in realm's users, groups,
rules and token-signing keys."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import click

from tufnotary.metadata.model import format_expires
from tufnotary.server import realm
from tufnotary.server.cli_common import (
    Record,
    change,
    listing,
    open_stores,
    open_vault_or_fail,
    say,
    with_settings,
)
from tufnotary.server.config import Settings
from tufnotary.server.storage import Stores


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password is empty")
    return str(password)


password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@click.group()
def user() -> None:
    """Users of the built-in token realm (auth_mode builtin): bcrypt passwords in the database."""


@user.command("add")
@with_settings
@password_stdin_option
@click.option("--group", "groups", multiple=True, help="Make the user a member (repeatable).")
@click.argument("name")
def user_add(
    settings: Settings,
    password_stdin: bool,
    groups: tuple[str, ...],
    name: str,
) -> None:
    """Create user NAME (the password is prompted for, or read with --password-stdin)."""
    password = _read_password(password_stdin)
    with open_stores(settings) as stores:
        realm.add_user(stores, name, password, groups, rounds=settings.bcrypt_rounds)
    say(f"user {name} added")


@user.command("passwd")
@with_settings
@password_stdin_option
@click.argument("name")
def user_passwd(
    settings: Settings,
    password_stdin: bool,
    name: str,
) -> None:
    """Set the password of user NAME."""
    password = _read_password(password_stdin)
    rounds = settings.bcrypt_rounds
    change(settings, lambda s: realm.set_password(s, name, password, rounds=rounds))
    say(f"password of {name} changed")


@user.command("remove")
@with_settings
@click.argument("name")
def user_remove(settings: Settings, name: str) -> None:
    """Delete user NAME and its group memberships (rules naming it stay)."""
    change(settings, lambda stores: realm.remove_user(stores, name))
    say(f"user {name} removed")


@click.group()
def group() -> None:
    """Group memberships of the built-in realm's users (rules can name `group:NAME`)."""


def _membership_command(member: bool, help: str) -> click.Command:
    """`group add` (``member``) or `group remove`: USERS join or leave group NAME."""
    done, unchanged = ("added to", "is already in") if member else ("removed from", "was not in")

    @click.command(help=help)
    @with_settings
    @click.argument("name")
    @click.argument("users", nargs=-1, required=True)
    def command(settings: Settings, name: str, users: tuple[str, ...]) -> None:
        with open_stores(settings) as stores:
            for user_name in users:
                changed = realm.set_member(stores, name, user_name, member)
                say(f"{user_name} {done if changed else unchanged} group {name}")

    return command


group.add_command(
    _membership_command(True, "Make USERS (database or htpasswd users) members of group NAME."),
    "add",
)
group.add_command(_membership_command(False, "Take USERS out of group NAME."), "remove")


@user.command("list")
@listing(lambda user: f"{user['name']}  {','.join(user['groups']) or '-'}")
def user_list(settings: Settings, stores: Stores) -> Iterator[Record]:
    """List the database users and their groups (htpasswd users are not listed)."""
    for entry in stores.realm.realm_users():
        created = format_expires(entry.created_at)
        yield {"name": entry.name, "groups": list(entry.groups), "created": created}


@click.group()
def rule() -> None:
    """Access rules of the built-in realm: SUBJECT (user:NAME or group:NAME), GUN PATTERN
    (`*` within a path segment, `**` across segments), ACTIONS (pull, push, * comma-joined)."""


@rule.command("add")
@with_settings
@click.argument("subject")
@click.argument("pattern")
@click.argument("actions")
def rule_add(
    settings: Settings,
    subject: str,
    pattern: str,
    actions: str,
) -> None:
    """Let SUBJECT do ACTIONS on GUNs matching PATTERN; prints the rule id."""
    with open_stores(settings) as stores:
        rule_id = realm.add_rule(stores, subject, pattern, actions)
    click.echo(rule_id)


@rule.command("remove")
@with_settings
@click.argument("rule_id", type=int)
def rule_remove(settings: Settings, rule_id: int) -> None:
    """Delete the database rule RULE_ID."""
    change(settings, lambda stores: realm.remove_rule(stores, rule_id))
    say(f"rule {rule_id} removed")


def _rule_line(rule: Record) -> str:
    rule_id = rule["id"] if rule["id"] is not None else "config"
    return f"{rule_id}  {rule['subject']}  {rule['pattern']}  {','.join(rule['actions'])}"


@rule.command("list")
@listing(_rule_line)
def rule_list(settings: Settings, stores: Stores) -> Iterator[Record]:
    """List the rules: database rules with their id, then those of the configuration."""
    rows: list[tuple[int | None, str, str, str]] = [
        (r.id, r.subject, r.pattern, r.actions) for r in stores.realm.rules()
    ]
    rows += [(None, *configured) for configured in settings.rules]
    for rule_id, subject, pattern, actions in rows:
        yield {
            "id": rule_id,
            "subject": subject,
            "pattern": pattern,
            "actions": actions.split(","),
            "source": "database" if rule_id is not None else "config",
        }


@click.group("token-key")
def token_key() -> None:
    """The built-in realm's token-signing keys (encrypted like the server keys)."""


@token_key.command("rotate")
@with_settings
def token_key_rotate(settings: Settings) -> None:
    """Create a key that signs from now on; tokens signed before stay valid until they
    expire. Prints its kid."""
    vault = open_vault_or_fail(settings)
    with open_stores(settings) as stores:
        click.echo(realm.rotate_token_key(stores, vault))


@token_key.command("list")
@with_settings
def token_key_list(settings: Settings) -> None:
    """The kids of the token-signing keys, oldest first (the last one signs)."""
    with open_stores(settings) as stores:
        keys = stores.token_keys.all()
    for key in keys:
        click.echo(key.key_id)


@token_key.command("retire")
@with_settings
@click.argument("kid")
def token_key_retire(settings: Settings, kid: str) -> None:
    """Delete key KID: tokens it signed stop verifying (within 30 s in every worker)."""
    change(settings, lambda stores: realm.retire_token_key(stores, kid))
    say(f"token key {kid} retired")
