"""Modes of the server's secret files: the data directory 0700; the database (password hashes,
encrypted keys), its WAL and shared-memory files, and every private key or passphrase file
0600. New ones are created that way; existing ones that are looser get a start-up warning."""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa

from tufnotary.server.config import Settings
from tufnotary.server.signer import DEV_MASTER_KEY

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700 if it does not exist."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    return path


def sqlite_files(database_url: str) -> list[Path]:
    """The SQLite database file of ``database_url`` with its WAL and shared-memory files."""
    url = sa.make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return []
    database = Path(url.database)
    return [
        database,
        database.with_name(database.name + "-wal"),
        database.with_name(database.name + "-shm"),
    ]


def secret_files(settings: Settings) -> list[Path]:
    """Every file of ``settings`` that must not be readable by others."""
    tls_dir = settings.data_dir / "tls"
    named = (
        settings.tls_key,
        settings.key_passphrase_file,
        settings.pkcs11_pin_file,
        settings.htpasswd_file,
        settings.data_dir / DEV_MASTER_KEY,
        tls_dir / "ca.key",
        tls_dir / "server.key",
    )
    files = [path for path in named if path is not None]
    return sqlite_files(settings.effective_database_url) + files


def loose_permissions(directories: Iterable[Path], files: Iterable[Path]) -> list[str]:
    """One warning per existing directory readable by others or file by group or others."""
    warnings = []
    for path, wanted in [(d, PRIVATE_DIR) for d in directories] + [
        (f, PRIVATE_FILE) for f in files
    ]:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            warnings.append(
                f"warning: {path} has mode {mode:04o}, readable by other users; "
                f"run: chmod {wanted:o} {path}"
            )
    return list(dict.fromkeys(warnings))
