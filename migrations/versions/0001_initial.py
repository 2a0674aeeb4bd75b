"""Initial schema: tuf_files, changefeed, server_keys.

Revision ID: 0001
Revises:
Create Date: 2024-06-01

Types are spelled out here (not imported from the models) so this revision never changes. On
MySQL/MariaDB, GUNs, roles, key ids and tuf_files.sha256 are UTF-8 in VARBINARY, compared
byte-exactly.
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = ("mysql", "mariadb")


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(mysql.VARBINARY(4 * length), *_MYSQL)


def _datetime() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def _blob() -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)


def upgrade() -> None:
    """Create the three tables and their indexes."""
    op.create_table(
        "tuf_files",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("created_at", _datetime(), nullable=False),
        sa.Column("gun", _text(255), nullable=False),
        sa.Column("role", _text(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", _text(64), nullable=False),
        sa.Column("data", _blob(), nullable=False),
        sa.UniqueConstraint("gun", "role", "version", name="uq_tuf_files_gun_role_version"),
    )
    op.create_index("ix_tuf_files_gun_role_sha256", "tuf_files", ["gun", "role", "sha256"])
    op.create_table(
        "changefeed",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("created_at", _datetime(), nullable=False),
        sa.Column("gun", _text(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, server_default=""),
        sa.Column("category", sa.String(20), nullable=False),
    )
    op.create_index("idx_changefeed_gun", "changefeed", ["gun"])
    op.create_table(
        "server_keys",
        sa.Column("key_id", _text(64), primary_key=True),
        sa.Column("gun", _text(255), nullable=False),
        sa.Column("role", _text(255), nullable=False),
        sa.Column("algorithm", sa.String(20), nullable=False),
        sa.Column("public", _blob(), nullable=False),
        sa.Column("private", _blob(), nullable=False),
        sa.Column("created_at", _datetime(), nullable=False),
        sa.Column("last_used", _datetime(), nullable=True),
    )
    op.create_index("ix_server_keys_gun_role", "server_keys", ["gun", "role"])


def downgrade() -> None:
    """Drop everything upgrade() created."""
    op.drop_table("server_keys")
    op.drop_table("changefeed")
    op.drop_table("tuf_files")
