"""`tufnotary-server export | restore`: back up the trust data to an archive and restore it
(format: tufnotary.server.archive, docs/archive-format.md)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import click

from tufnotary.server.archive import (
    REALM,
    SECTIONS,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    Manifest,
    verify,
)
from tufnotary.server.cli_common import open_stores, say, with_settings
from tufnotary.server.config import Settings
from tufnotary.server.migrate import schema_state
from tufnotary.server.startup import StartupError, prepare_database
from tufnotary.server.storage import Stores
from tufnotary.server.storage.archive import ArchiveStore, DatabaseNotEmpty
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.engine import StorageError

STDIO = "-"


@click.command()
@with_settings
@click.option(
    "-o", "--output", required=True, metavar="FILE", help="Archive to write (- for stdout)."
)
@click.option(
    "--realm/--no-realm",
    default=None,
    help="Include the built-in realm: users, groups, rules, token-signing keys "
    "[default: only when no GUN is named].",
)
@click.option("--audit/--no-audit", default=True, show_default=True, help="Include the audit log.")
@click.argument("guns", nargs=-1, metavar="[GUN]...")
def export(
    settings: Settings, output: str, realm: bool | None, audit: bool, guns: tuple[str, ...]
) -> None:
    """Write every version of every role, the changefeed and the server keys (still
    encrypted) of GUNs (default: all) to an archive, read in one consistent snapshot.

    The archive is a tar of a manifest and JSON-lines members with their SHA-256 checksums
    (docs/archive-format.md). It holds encrypted private keys and, with the realm, password
    hashes: keep it like the database. Members are spooled next to FILE (stdout: in $TMPDIR) first.
    """
    if output == STDIO and sys.stdout.isatty():
        raise click.UsageError("-o -: stdout is a terminal; redirect it or write to a file")
    if output != STDIO and (Path(output).is_dir() or not Path(output).parent.is_dir()):
        problem = "is a directory" if Path(output).is_dir() else "is in no existing directory"
        raise click.BadParameter(f"{output} {problem}; nothing written", param_hint="-o")
    with_realm = not guns if realm is None else realm
    chosen = {
        section.table: section
        for section in SECTIONS
        if (with_realm or section.table not in REALM) and (audit or section.table != "audit_log")
    }
    scope = {"guns": list(guns) or None, "realm": with_realm, "audit": audit}
    with open_stores(settings, prepare=True) as stores:
        store = ArchiveStore(stores.database)
        unknown = store.unknown_guns(guns) if guns else []
        if unknown:
            raise click.ClickException(f"no trust data for {', '.join(unknown)}; nothing written")
        source = {
            "engine": stores.engine.dialect.name,
            "schema_revision": schema_state(stores.engine).current,
        }
        spool_dir = None if output == STDIO else Path(output).resolve().parent
        try:
            with tempfile.TemporaryDirectory(prefix=".tufnotary-export-", dir=spool_dir) as spool:
                writer = ArchiveWriter(Path(spool))
                store.export(
                    [(section.table, section.columns) for section in chosen.values()],
                    guns or None,
                    lambda table, rows: writer.add(chosen[table], rows),
                )
                with _output(output) as stream:
                    manifest = writer.write(stream, scope, source)
        except OSError as exc:
            raise click.ClickException(f"export to {output} failed: {exc}") from None
        detail: dict[str, Any] = {"output": output, **scope, "records": manifest.records()}
        stores.audit.record(AuditEntry("cli", "archive-export", None, detail))
    where = "stdout" if output == STDIO else output
    say(f"exported {_summary(manifest.records(), manifest)} to {where}")


@contextmanager
def _output(output: str) -> Iterator[BinaryIO]:
    """stdout, or a new private file that replaces ``output`` only once completely written."""
    if output == STDIO:
        stdout = click.get_binary_stream("stdout")
        yield stdout
        stdout.flush()
        return
    target = Path(output)
    draft = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        draft.replace(target)
    finally:
        draft.unlink(missing_ok=True)


@click.command()
@with_settings
@click.option(
    "--verify-only",
    is_flag=True,
    help="Verify the archive (manifest and every checksum) and write nothing.",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Add to the trust data stored already: only versions and server keys not stored yet.",
)
@click.argument("archive", metavar="FILE")
def restore(settings: Settings, verify_only: bool, merge: bool, archive: str) -> None:
    """Restore an archive of `export` (- reads stdin) into an empty database.

    The whole archive is verified first; then everything is written in one transaction, so a
    damaged or truncated archive, or any failure, leaves the database as it was. The database
    must hold no versions, changefeed or server keys (nor realm data, if the archive has the
    realm); its audit log gains the archive's records and this restore. Start the server with
    the key passphrase the keys were encrypted with.

    With --merge the database may hold trust data: versions and server keys it lacks are
    added (each added timestamp gets a new changefeed record), identical ones are skipped, and
    one stored with other bytes refuses the whole restore. The realm is never merged.
    """
    try:
        with _input(archive) as path:
            if verify_only:
                manifest = verify(path)
                say(f"{archive}: intact: {_summary(manifest.records(), manifest)}")
                return
            with open_stores(settings) as stores:
                try:
                    manifest, added = _restore(settings, stores, path, archive, merge)
                except StorageError as exc:
                    hint = (
                        ": restore writes into an empty database (run `tufnotary-server "
                        "migrate` on a new one), or merges trust data with --merge"
                        if isinstance(exc, DatabaseNotEmpty)
                        else ""
                    )
                    raise click.ClickException(f"{exc}{hint}; nothing was restored") from None
    except ArchiveError as exc:
        raise click.ClickException(f"{exc}; nothing was restored") from None
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    say(f"{'merged' if merge else 'restored'} {_summary(added, manifest)} from {archive}")


def _restore(
    settings: Settings, stores: Stores, path: Path, archive: str, merge: bool
) -> tuple[Manifest, dict[str, int]]:
    """Check the database can take the archive, verify the archive, then write it in one
    transaction; the manifest and the rows added per table."""
    prepare_database(settings, stores)
    store = ArchiveStore(stores.database)
    with ArchiveReader(path) as reader:
        assert reader.manifest is not None
        tables = list(reader.manifest.records())
    occupied = store.occupied(tables, merge)
    if occupied:
        raise DatabaseNotEmpty(f"the database holds rows in {', '.join(occupied)}")
    manifest = verify(path)
    detail: dict[str, Any] = {
        "archive": archive,
        "created_at": _time(manifest),
        "tool_version": manifest.tool_version,
        "records": manifest.records(),
        "merge": merge,
    }
    with ArchiveReader(path) as reader:
        if reader.manifest != manifest:
            raise ArchiveError(f"{archive} changed while it was being restored")
        added = store.restore(
            ((section.table, records) for section, records in reader.sections()),
            tables,
            AuditEntry("cli", "archive-restore", None, detail),
            merge=merge,
        )
    return manifest, added


def _time(manifest: Manifest) -> str:
    return manifest.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextmanager
def _input(archive: str) -> Iterator[Path]:
    """The archive's path; stdin is copied to a temporary file first (it is read twice)."""
    if archive != STDIO:
        if not Path(archive).is_file():
            problem = "not a regular file" if Path(archive).exists() else "no such file"
            raise ArchiveError(f"{archive}: {problem}")
        yield Path(archive)
        return
    if sys.stdin.isatty():
        raise click.UsageError("- reads the archive from stdin, which is a terminal; redirect it")
    with tempfile.NamedTemporaryFile(prefix="tufnotary-restore-") as spooled:
        shutil.copyfileobj(sys.stdin.buffer, spooled)
        spooled.flush()
        yield Path(spooled.name)


_LABELS = {
    "tuf_files": "metadata versions",
    "changefeed": "changefeed records",
    "server_keys": "server keys",
    "token_keys": "token-signing keys",
    "realm_users": "users",
    "realm_group_members": "group memberships",
    "realm_rules": "rules",
    "audit_log": "audit records",
}


def _summary(records: dict[str, int], manifest: Manifest) -> str:
    parts = ", ".join(f"{count} {_LABELS[table]}" for table, count in records.items())
    return f"{parts} (archive format {manifest.format_version} of {_time(manifest)})"


COMMANDS = (export, restore)
