"""The soonest expiry per role, for the metadata-expiry gauge.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

``tufnotary-server resign`` reads every GUN's current metadata anyway; it records here, per
role, the soonest expiry it found, so that a /metrics scrape reads a few rows instead of
parsing every GUN's metadata.
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = ("mysql", "mariadb")


def _name() -> sa.types.TypeEngine[str]:
    return sa.String(255).with_variant(mysql.VARBINARY(4 * 255), *_MYSQL)


def _time() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def upgrade() -> None:
    """Create soonest_expiry."""
    op.create_table(
        "soonest_expiry",
        sa.Column("role", _name(), primary_key=True),
        sa.Column("gun", _name(), nullable=False),
        sa.Column("expires_at", _time(), nullable=False),
        sa.Column("computed_at", _time(), nullable=False),
    )


def downgrade() -> None:
    """Drop soonest_expiry."""
    op.drop_table("soonest_expiry")
