"""The CLI's settings for one run: the global options, the repository and the error hints."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from tufnotary.client.cli.progress import Progress
from tufnotary.client.errors import PROG, ErrorContext, explain
from tufnotary.client.remote import DEFAULT_TIMEOUT, Remote
from tufnotary.client.repository import Repository
from tufnotary.client.tokenkeys import Pins
from tufnotary.client.trustdir import Passphrases, TrustDir
from tufnotary.client.trusted import TrustPinning

DEFAULT_SERVER = "https://127.0.0.1:4443"
DEFAULT_TRUST_DIR = "~/.tufnotary"


@dataclass
class CliContext:
    """The global options; each subcommand may repeat them after its name (as notary allows)."""

    server: str = DEFAULT_SERVER
    trust_dir: Path = Path(DEFAULT_TRUST_DIR)
    tlscacert: Path | None = None
    json: bool = False
    username: str | None = None
    password: str | None = None
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    gun: str | None = None  # the repository the command works on, for error hints
    staged: int = 0  # staged changes a publish under way sends (kept if it fails)
    token_realm_hosts: tuple[str, ...] = ()
    _trustdir: TrustDir | None = field(default=None, repr=False)

    @property
    def verify(self) -> str | bool:
        return str(self.tlscacert) if self.tlscacert else True

    def trustdir(self) -> TrustDir:
        """The trust directory, with passphrases from the environment or a terminal prompt."""
        if self._trustdir is None:
            prompt = prompt_passphrase if interactive() else None
            passphrases = Passphrases(prompt=prompt)
            pins = Pins(prompt=prompt_secret if interactive() else None)
            self._trustdir = TrustDir(self.trust_dir.expanduser(), passphrases, pins)
        return self._trustdir

    def repository(
        self, gun: str, pinning: TrustPinning | None = None, *, offline: bool = False
    ) -> Repository:
        self.gun = gun
        remote = Remote(
            self.server,
            self.verify,
            self.timeout,
            username=self.username,
            password=self.password,
            token=self.token,
            realm_hosts=self.token_realm_hosts,
        )
        return Repository(
            gun, remote, self.trustdir(), verify=self.verify, pinning=pinning, offline=offline
        )

    def explain(self, exc: Exception) -> str | None:
        """The one-line message for an expected failure, with what to do next; None for a
        bug. A failed publish says that its staged changes are kept."""
        context = ErrorContext(self.gun or "GUN", self.server, self.trust_dir, self.tlscacert)
        message = explain(exc, context)
        if message is not None and self.staged:
            message += (
                f"; the {self.staged} staged change(s) are kept: `{PROG} publish "
                f"{self.gun}` tries again, `{PROG} reset {self.gun}` drops them"
            )
        return message


def current() -> CliContext:
    return click.get_current_context().ensure_object(CliContext)


def interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def prompt_passphrase(role: str, gun: str | None, creating: bool) -> str:
    Progress.hold()
    text = f"Passphrase for the {'new ' if creating else ''}{role} key" + (
        f" of {gun}" if gun else ""
    )
    return click.prompt(
        text,
        hide_input=True,
        confirmation_prompt=creating,
        default="",
        show_default=False,
        err=True,
    )


def prompt_secret(secret: str) -> str:
    """A token's PIN (or another secret a key backend asks for), from the terminal."""
    Progress.hold()
    return click.prompt(
        f"Token {secret}", hide_input=True, default="", show_default=False, err=True
    )
