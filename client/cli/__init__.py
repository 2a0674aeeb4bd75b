"""`tufnotary`: sign and verify container image trust data from the command line.

The commands mirror the ``notary`` CLI (``init``, ``add``, ``list``, ``delegation add``, ``key
rotate`` ...) and add ``verify-image`` for deploy gates. Exit status: 0 on success (trusted),
1 when verification fails or the operation cannot be done (untrusted or missing trust data,
server unreachable or refusing, missing keys or passphrases), 2 on usage errors. Reads fail
closed: cached trust data answers only with ``--offline``, never as a silent fallback.

Each module of this package only parses arguments, calls the client library and prints:
:mod:`.root` the global options and error lines, :mod:`.publishing`, :mod:`.targets`,
:mod:`.delegations`, :mod:`.keys` and :mod:`.images` the commands by subject.
"""

from __future__ import annotations

from tufnotary.client.cli import delegations, images, keys, publishing, targets
from tufnotary.client.cli.root import cli
from tufnotary.client.errors import PROG

for _module in (publishing, targets, delegations, keys, images):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``tufnotary`` script."""
    cli(prog_name=PROG)
