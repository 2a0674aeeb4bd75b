"""`tufnotary-server prune | resign`: retention of old versions, and re-signing ahead of
expiry (both fit for cron or a Kubernetes CronJob: a summary on stdout, exit status 0 when
all went well)."""

from __future__ import annotations

import click

from tufnotary.server import prune as pruning
from tufnotary.server import resign as resigning
from tufnotary.server.cli_common import open_stores, open_vault_or_fail, with_settings
from tufnotary.server.config import Settings
from tufnotary.server.service import Requester, TrustService
from tufnotary.server.signer import ServerKeys
from tufnotary.server.startup import StartupError, open_token
from tufnotary.server.storage.retention import RetentionStore
from tufnotary.server.storage.runlock import exclusive
from tufnotary.server.updates import Limits


@click.command()
@with_settings
@click.option(
    "--keep",
    type=click.IntRange(0),
    required=True,
    help="Older versions to keep per repository and role, besides the current ones.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=pruning.BATCH,
    show_default=True,
    help="Versions removed per transaction.",
)
@click.argument("guns", nargs=-1, metavar="[GUN]...")
def prune(settings: Settings, keep: int, dry_run: bool, batch: int, guns: tuple[str, ...]) -> None:
    """Remove old versions of GUNs (default: every repository) that no client can need.

    Kept: every root version, the current timestamp, snapshot and the versions that snapshot
    names, the newest version of each role, and the KEEP newest of the older ones. One prune
    runs at a time (a second one does nothing and exits 0).
    """
    verb = "would remove" if dry_run else "removing"

    def show(plan: pruning.GunPlan) -> None:
        for role in plan.roles:
            click.echo(f"{plan.gun}: {verb} {role.describe()}")

    with (
        open_stores(settings, prepare=True) as stores,
        exclusive(stores.engine, pruning.LOCK) as held,
    ):
        if not held:
            click.echo("prune: another prune is running; nothing done")
            return
        store = RetentionStore(stores.database)
        stored = store.guns()
        known = set(stored)
        report = pruning.prune(
            stores.metadata,
            store,
            [gun for gun in guns if gun in known] if guns else stored,
            keep,
            dry_run=dry_run,
            batch=batch,
            progress=show,
        )
    report.skipped |= {gun: "no trust data stored" for gun in guns if gun not in known}
    for gun, reason in report.skipped.items():
        click.echo(f"{gun}: skipped: {reason}", err=True)
    total = sum(plan.count for plan in report.plans)
    done = f"{total} versions would be removed" if dry_run else f"{report.removed} removed"
    click.echo(f"prune: {len(report.plans)} repositories, {done}, {len(report.skipped)} skipped")
    if report.skipped:
        raise click.ClickException("some repositories were skipped")


@click.command()
@with_settings
@click.option(
    "--within",
    "within_text",
    metavar="DURATION",
    help="Re-sign what expires within DURATION: 90s, 30m, 24h, 5d, 2w "
    "(default: a third of a timestamp's lifetime, 4d16h).",
)
@click.argument("guns", nargs=-1, metavar="[GUN]...")
def resign(settings: Settings, within_text: str | None, guns: tuple[str, ...]) -> None:
    """Re-sign the server-held timestamps (and server-managed snapshots) of GUNs (default:
    every repository, and then the soonest expiries are recorded for /metrics) that expire
    soon. Exits 1 if one failed or still expires soon (the server holds no key for it)."""
    try:
        within = resigning.parse_duration(within_text) if within_text else resigning.DEFAULT_WITHIN
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--within") from None
    vault = open_vault_or_fail(settings)
    try:
        token = open_token(settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    with open_stores(settings, prepare=True) as stores:
        keys = ServerKeys(stores.keys, vault, settings.key_algorithm, token)
        service = TrustService(stores.metadata, stores.audit, keys, Limits(), within)
        report = resigning.run_pass(stores, service, Requester("cli"), guns)
    if report is None:
        click.echo("resign: another resign pass is running; nothing done")
        return
    for gun, stored in report.resigned.items():
        versions = ", ".join(f"{role} {version}" for role, version in sorted(stored.items()))
        click.echo(f"{gun}: re-signed {versions}")
    for gun, roles in report.due.items():
        click.echo(f"{gun}: {' and '.join(roles)}: still expiring within {within}, no server key")
    for gun, reason in report.failed.items():
        click.echo(f"{gun}: failed: {reason}", err=True)
    click.echo(f"resign: {report.summary()}")
    if not report.ok:
        raise click.ClickException("some repositories still expire soon or failed")
