"""``python -m tufnotary.client.cli``: the ``tufnotary`` command."""

from tufnotary.client.cli import main

main()
