"""Built-in token realm: users, group memberships and access rules.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

The token-signing keys of the realm live in server_keys (gun '', role 'token-signing').
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = ("mysql", "mariadb")


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(mysql.VARBINARY(4 * length), *_MYSQL)


def _datetime() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL)


def upgrade() -> None:
    """Create realm_users, realm_group_members and realm_rules."""
    op.create_table(
        "realm_users",
        sa.Column("name", _text(255), primary_key=True),
        sa.Column("password_hash", sa.String(128), nullable=False),
        sa.Column("created_at", _datetime(), nullable=False),
    )
    op.create_table(
        "realm_group_members",
        sa.Column("group_name", _text(255), primary_key=True),
        sa.Column("user_name", _text(255), primary_key=True),
    )
    op.create_index("ix_realm_group_members_user_name", "realm_group_members", ["user_name"])
    op.create_table(
        "realm_rules",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("subject", _text(255), nullable=False),
        sa.Column("pattern", _text(255), nullable=False),
        sa.Column("actions", sa.String(64), nullable=False),
        sa.Column("created_at", _datetime(), nullable=False),
    )


def downgrade() -> None:
    """Drop everything upgrade() created."""
    op.drop_table("realm_rules")
    op.drop_table("realm_group_members")
    op.drop_table("realm_users")
