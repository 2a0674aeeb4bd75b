"""Rate limits shared by all workers: failed logins and server-key creations.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Each row is one counted event of a bucket (``login-user:NAME``, ``login-address:ADDR``,
``key-create:ADDR``) that stops counting at ``expires_at``; expired rows are deleted as new
ones arrive, so the table holds at most one window of events.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = ("mysql", "mariadb")


def upgrade() -> None:
    """Create rate_events and its indexes."""
    op.create_table(
        "rate_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "bucket", sa.String(300).with_variant(mysql.VARBINARY(4 * 300), *_MYSQL), nullable=False
        ),
        sa.Column(
            "expires_at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL), nullable=False
        ),
    )
    op.create_index("ix_rate_events_bucket_expires_at", "rate_events", ["bucket", "expires_at"])
    op.create_index("ix_rate_events_expires_at", "rate_events", ["expires_at"])


def downgrade() -> None:
    """Drop everything upgrade() created."""
    op.drop_table("rate_events")
