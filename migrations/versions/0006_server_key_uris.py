"""Server keys that live in a PKCS#11 token or key manager.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09

``uri`` is the securesystemslib private key URI of a key kept outside the database; such a
row holds only the public key (``private`` is NULL).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL = ("mysql", "mariadb")


def _blob() -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MYSQL)


def upgrade() -> None:
    """Add server_keys.uri; make server_keys.private nullable."""
    with op.batch_alter_table("server_keys") as batch:
        batch.add_column(sa.Column("uri", sa.String(1024), nullable=True))
        batch.alter_column("private", existing_type=_blob(), nullable=True)


def downgrade() -> None:
    """Refuse while token keys are stored (their rows would lose their only reference);
    else drop the column and require ``private`` again."""
    bind = op.get_bind()
    held = bind.execute(sa.text("SELECT COUNT(*) FROM server_keys WHERE uri IS NOT NULL")).scalar()
    if held:
        raise RuntimeError(
            f"{held} server keys live in a token or key manager: delete them (or rotate to "
            "database keys) before downgrading below revision 0006"
        )
    with op.batch_alter_table("server_keys") as batch:
        batch.alter_column("private", existing_type=_blob(), nullable=False)
        batch.drop_column("uri")
