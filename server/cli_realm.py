"""`tufnotary-server user | group | rule | token-key`: the built-in realm's users, groups,
rules and token-signing keys."""

from __future__ import annotations

import json
import sys

import click

from tufnotary.metadata.model import format_expires
from tufnotary.server import realm
from tufnotary.server.cli_common import change, open_stores, open_vault_or_fail, say, with_settings
from tufnotary.server.config import Settings


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


@group.command("add")
@with_settings
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
def group_add(
    settings: Settings,
    name: str,
    users: tuple[str, ...],
) -> None:
    """Make USERS (database or htpasswd users) members of group NAME."""
    _set_members(settings, name, users, member=True)


@group.command("remove")
@with_settings
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
def group_remove(
    settings: Settings,
    name: str,
    users: tuple[str, ...],
) -> None:
    """Take USERS out of group NAME."""
    _set_members(settings, name, users, member=False)


def _set_members(
    settings: Settings,
    group_name: str,
    users: tuple[str, ...],
    *,
    member: bool,
) -> None:
    with open_stores(settings) as stores:
        for name in users:
            changed = realm.set_member(stores, group_name, name, member)
            if member:
                say(f"{name} {'added to' if changed else 'is already in'} group {group_name}")
            else:
                say(f"{name} {'removed from' if changed else 'was not in'} group {group_name}")


@user.command("list")
@with_settings
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def user_list(settings: Settings, as_json: bool) -> None:
    """List the database users and their groups (htpasswd users are not listed)."""
    with open_stores(settings) as stores:
        users = stores.realm.realm_users()
    for entry in users:
        if as_json:
            record = {
                "name": entry.name,
                "groups": list(entry.groups),
                "created": format_expires(entry.created_at),
            }
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            click.echo(f"{entry.name}  {','.join(entry.groups) or '-'}")


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


@rule.command("list")
@with_settings
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def rule_list(settings: Settings, as_json: bool) -> None:
    """List the rules: database rules with their id, then those of the configuration."""
    with open_stores(settings) as stores:
        stored = stores.realm.rules()
    rows: list[tuple[int | None, str, str, str]] = [
        (r.id, r.subject, r.pattern, r.actions) for r in stored
    ]
    rows += [(None, *configured) for configured in settings.rules]
    for rule_id, subject, pattern, actions in rows:
        if as_json:
            record = {
                "id": rule_id,
                "subject": subject,
                "pattern": pattern,
                "actions": actions.split(","),
                "source": "database" if rule_id is not None else "config",
            }
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            click.echo(
                f"{rule_id if rule_id is not None else 'config'}  {subject}  {pattern}  {actions}"
            )


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
