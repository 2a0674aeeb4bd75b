"""Token-signing keys of the built-in realm get their own table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09

Until 0004 they lived in server_keys under GUN '' and role 'token-signing'; the upgrade moves
those rows to token_keys and the downgrade moves them back. Private keys move unchanged (they
stay encrypted with GUN '' and role 'token-signing' as associated data).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = ("mysql", "mariadb")
_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)
_MOVED = "key_id, algorithm, public, private, created_at"
_TOKEN_KEYS = "gun = '' AND role = 'token-signing'"


def upgrade() -> None:
    """Create token_keys and move the token-signing keys out of server_keys."""
    op.create_table(
        "token_keys",
        sa.Column(
            "key_id", sa.String(64).with_variant(mysql.VARBINARY(4 * 64), *_MYSQL), primary_key=True
        ),
        sa.Column("algorithm", sa.String(20), nullable=False),
        sa.Column("public", _BLOB, nullable=False),
        sa.Column("private", _BLOB, nullable=False),
        sa.Column(
            "created_at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), *_MYSQL), nullable=False
        ),
    )
    op.execute(
        f"INSERT INTO token_keys ({_MOVED}) SELECT {_MOVED} FROM server_keys WHERE {_TOKEN_KEYS}"
    )
    op.execute(f"DELETE FROM server_keys WHERE {_TOKEN_KEYS}")


def downgrade() -> None:
    """Move the token-signing keys back into server_keys and drop token_keys."""
    op.execute(
        f"INSERT INTO server_keys (gun, role, {_MOVED}) "
        f"SELECT '', 'token-signing', {_MOVED} FROM token_keys"
    )
    op.drop_table("token_keys")
