"""The root command: the global options, and expected failures as one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tufnotary.client.cli.context import DEFAULT_SERVER, DEFAULT_TRUST_DIR, CliContext
from tufnotary.client.cli.options import EXISTING_FILE, TIMEOUT, credential_options
from tufnotary.client.cli.output import Failure, configure_logging
from tufnotary.client.errors import PROG
from tufnotary.client.remote import DEFAULT_TIMEOUT


class _Cli(click.Group):
    """The root group: turns expected exceptions into one-line errors with exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            message = ctx.ensure_object(CliContext).explain(exc)
            if message is None:
                raise
            raise Failure(message) from exc


@click.group(
    cls=_Cli,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        "Exit status: 0 success (trusted); 1 verification failed or the operation could not be "
        "done (no or untrusted trust data, server unreachable, timing out or failing, TLS or "
        "CA file problem, missing keys or passphrases); 2 usage error. A server that cannot "
        "be reached is never replaced by cached trust data, unlike notary and docker: "
        "list, lookup, verify and verify-image use the cache only with --offline.\n\n"
        "Passphrases come from NOTARY_ROOT_PASSPHRASE, NOTARY_TARGETS_PASSPHRASE, "
        "NOTARY_SNAPSHOT_PASSPHRASE, NOTARY_DELEGATION_PASSPHRASE or docker's "
        "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE / DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE; "
        "otherwise they are asked for when stdin is a terminal. Keys in a PKCS#11 token "
        "(`key import --uri`) take its PIN from TUFNOTARY_PKCS11_PIN, or the same prompt."
    ),
)
@click.option(
    "-s",
    "--server",
    metavar="URL",
    envvar="TUFNOTARY_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="Trust server URL (env TUFNOTARY_SERVER); the default is where "
    "`tufnotary-server serve` listens.",
)
@click.option(
    "-d",
    "--trust-dir",
    "--trustDir",
    "trust_dir",
    metavar="DIR",
    envvar="TUFNOTARY_TRUST_DIR",
    default=DEFAULT_TRUST_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Keys and cached trust data (env TUFNOTARY_TRUST_DIR); ~/.notary or ~/.docker/trust "
    "share them with notary or docker.",
)
@click.option(
    "--tlscacert",
    envvar="TUFNOTARY_TLSCACERT",
    type=EXISTING_FILE,
    help="Trust only server certificates issued by this CA (env TUFNOTARY_TLSCACERT).",
)
@click.option(
    "--timeout",
    envvar="TUFNOTARY_TIMEOUT",
    type=TIMEOUT,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Give up on a server that does not answer, or stops sending, for this long "
    "(env TUFNOTARY_TIMEOUT).",
)
@credential_options("TUFNOTARY", "server")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Report what the update does.")
@click.version_option(package_name="tufnotary", prog_name=PROG)
@click.pass_context
def cli(
    ctx: click.Context,
    server: str,
    trust_dir: Path,
    tlscacert: Path | None,
    timeout: float,
    username: str | None,
    password: str | None,
    token: str | None,
    token_realm_hosts: tuple[str, ...],
    json_output: bool,
    verbose: bool,
) -> None:
    """Sign and verify container image trust data on a Notary-compatible server."""
    ctx.obj = CliContext(
        server,
        trust_dir,
        tlscacert,
        json_output,
        username or None,
        password,
        token or None,
        timeout,
        token_realm_hosts=token_realm_hosts,
    )
    configure_logging(verbose)
