"""The client's expected failures, each able to say what to do next.

Every exception the client library raises for a failure its user can act on derives from
:class:`ClientError` and says in its ``hint`` template what to do next; ``explain(context)``
fills it in with the repository, server or trust directory of the :class:`ErrorContext`.
:func:`explain` also covers the few exceptions from outside the client (metadata checks, files,
values).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tufnotary.metadata.errors import MetadataError

PROG = "tufnotary"
"""The command the hints name (``tufnotary key list`` ...)."""


@dataclass(frozen=True)
class ErrorContext:
    """What a hint may name: the repository worked on, the server, the local settings."""

    gun: str = "GUN"
    server: str = ""
    trust_dir: Path | None = None
    tlscacert: Path | None = None


class ClientError(Exception):
    """Base of the client's expected failures; subclasses add a hint to the message."""

    hint: ClassVar[str] = "{error}"
    """The line for the user: a ``str.format`` template of ``error`` (this exception),
    ``context`` (an :class:`ErrorContext`) and ``prog`` (the command)."""

    def explain(self, context: ErrorContext) -> str:
        """The message for the user, with what to do next."""
        return self.hint.format(error=self, context=context, prog=PROG)


def explain(exc: Exception, context: ErrorContext) -> str | None:
    """The message, with what to do next, for an expected failure; None for a bug."""
    if isinstance(exc, ClientError):
        return exc.explain(context)
    if isinstance(exc, MetadataError):
        return (
            f"trust data of {context.gun} failed verification: {exc}; do not trust it until you "
            f"know why (`{PROG} delete {context.gun}` forgets the local copy if the repository "
            "was legitimately re-created)"
        )
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    if isinstance(exc, ValueError):
        return str(exc)
    return None
