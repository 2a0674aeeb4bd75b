"""Parameter types and the options several commands share."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from tufnotary.client.cli.context import CliContext
from tufnotary.client.cli.output import configure_logging
from tufnotary.client.images import ImageReference, check_gun, parse_digest
from tufnotary.metadata.model import is_targets_role, is_valid_role

_HEX = re.compile(r"[0-9a-fA-F]+")
Decorated = TypeVar("Decorated", bound=Callable[..., Any])


class _Gun(click.ParamType):
    name = "GUN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_gun(str(value))
        except ValueError as exc:
            self.fail(str(exc))


class _Role(click.ParamType):
    """A role name: any valid one, or only targets roles (``targets``, ``targets/<name>``)."""

    name = "ROLE"

    def __init__(self, targets_only: bool = True) -> None:
        self.targets_only = targets_only

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        role = str(value)
        ok = is_valid_role(role) and (is_targets_role(role) or not self.targets_only)
        if not ok:
            kind = "a targets role" if self.targets_only else "a role"
            self.fail(
                f"{role!r} is not {kind}: use targets or a full delegation name such as "
                "targets/releases (lower case)"
            )
        return role


GUN = _Gun()
TARGETS_ROLE = _Role()
ANY_ROLE = _Role(targets_only=False)


def split_roles(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
    """``-r a -r b`` or ``-r a,b`` (notary's string lists), each checked as a targets role."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return [TARGETS_ROLE.convert(name, param, ctx) for name in dict.fromkeys(names)]


def split_paths(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
    return [part for value in values for part in value.split(",") if part]


def hex_digest(size: int) -> Callable[[click.Context, click.Parameter, str | None], bytes | None]:
    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
        if value is None:
            return None
        if len(value) != size * 2 or not _HEX.fullmatch(value):
            raise click.BadParameter(f"must be {size * 2} hex digits")
        return bytes.fromhex(value)

    return check


def check_digest(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_digest(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def image_reference(ctx: click.Context, param: click.Parameter, value: str) -> ImageReference:
    try:
        return ImageReference.parse(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


# -- global options -----------------------------------------------------------------------------


def _override(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option repeated after the subcommand's name overrides the global one."""
    if value is not None and value is not False:
        setattr(ctx.ensure_object(CliContext), str(param.name), value)


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        configure_logging(True)


def global_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Accept -s/-d/--tlscacert/--timeout/--json/-v after the subcommand too, as notary's flags
    are."""
    options = [
        click.option(
            "-s",
            "--server",
            metavar="URL",
            callback=_override,
            expose_value=False,
            help="Trust server (see `tufnotary --help`).",
        ),
        click.option(
            "-d",
            "--trust-dir",
            "--trustDir",
            "trust_dir",
            metavar="DIR",
            type=click.Path(file_okay=False, path_type=Path),
            callback=_override,
            expose_value=False,
            help="Trust directory (keys and cached trust data).",
        ),
        click.option(
            "--tlscacert",
            type=EXISTING_FILE,
            callback=_override,
            expose_value=False,
            help="CA bundle of the server.",
        ),
        click.option(
            "--timeout",
            type=TIMEOUT,
            metavar="SECONDS",
            callback=_override,
            expose_value=False,
            help="How long to wait for the server (see `tufnotary --help`).",
        ),
        click.option(
            "--json",
            "json",
            is_flag=True,
            default=None,
            callback=_override,
            expose_value=False,
            help="Machine-readable output on stdout.",
        ),
        click.option(
            "-v",
            "--verbose",
            is_flag=True,
            callback=_verbose,
            expose_value=False,
            help="Report what the update does.",
        ),
    ]
    return _apply(options, command)


def credential_options(env_prefix: str, peer: str) -> Callable[[Decorated], Decorated]:
    """``--username``, ``--password`` and ``--token`` for the token service of ``peer`` (the
    server, the source ...), and ``--token-realm-host`` for the other hosts they may go to;
    each also read from ``{env_prefix}_USERNAME``, ``_PASSWORD``, ``_TOKEN``,
    ``_TOKEN_REALM_HOSTS``."""
    options = [
        click.option(
            "--username",
            envvar=f"{env_prefix}_USERNAME",
            help=f"User for the {peer}'s token service (env {env_prefix}_USERNAME).",
        ),
        click.option(
            "--password",
            envvar=f"{env_prefix}_PASSWORD",
            help=f"Password for --username (env {env_prefix}_PASSWORD; prefer the variable).",
        ),
        click.option(
            "--token",
            envvar=f"{env_prefix}_TOKEN",
            help=f"Bearer token sent to the {peer} as is (env {env_prefix}_TOKEN).",
        ),
        click.option(
            "--token-realm-host",
            "token_realm_hosts",
            metavar="HOST",
            multiple=True,
            envvar=f"{env_prefix}_TOKEN_REALM_HOSTS",
            help="Also send --username/--password to a token service on HOST (repeatable; * "
            f"for any; env {env_prefix}_TOKEN_REALM_HOSTS, space-separated). By default they "
            f"go only to the {peer}'s own host.",
        ),
    ]
    return lambda command: _apply(options, command)


def _apply(options: Sequence[Callable[[Decorated], Decorated]], command: Decorated) -> Decorated:
    """``command`` with ``options`` in their order in the help."""
    for option in reversed(options):
        command = option(command)
    return command


TIMEOUT = click.FloatRange(min=0, min_open=True)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
"""A file that must exist, as a Path."""

offline_option = click.option(
    "--offline",
    is_flag=True,
    help="Do not contact the server: use the trust data cached by the last update, with every "
    "check (expired data is still refused); says how old it is. Without it a server that "
    "cannot be reached means exit 1, cache or not.",
)


def publish_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-p",
        "--publish",
        "publish_now",
        is_flag=True,
        help="Publish right away (with any other staged changes).",
    )(command)


def roles_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "-r",
        "--roles",
        multiple=True,
        metavar="ROLE",
        callback=split_roles,
        help=help_text,
    )


def output_option(
    help_text: str, *, required: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-o/--output FILE``, a path to write to."""
    return click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, path_type=Path),
        required=required,
        help=help_text,
    )
