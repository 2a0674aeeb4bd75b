"""PostgreSQL: NOTIFY the GUNs whose change signal may have changed.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

A GUN's change signal is its newest timestamp row (``MetadataStore.signal``). Triggers on
``tuf_files`` send its GUN on channel ``tufnotary_signal`` when a timestamp row is inserted or
any row is deleted, and an empty payload (every GUN) on an UPDATE or TRUNCATE, which the server
never runs; listeners (server/storage/listener.py) then forget what they remembered. The
notifications are sent at commit, inside the writing statement: writers make no extra round
trip. Other databases have no LISTEN/NOTIFY: nothing to do there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION tufnotary_signal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        PERFORM pg_notify('tufnotary_signal', NEW.gun);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tufnotary_signal', gun) FROM (SELECT DISTINCT gun FROM deleted) AS g;
    ELSE
        PERFORM pg_notify('tufnotary_signal', '');
    END IF;
    RETURN NULL;
END
$$
"""
_TRIGGERS = {
    "tufnotary_signal_insert": "AFTER INSERT ON tuf_files FOR EACH ROW"
    " WHEN (NEW.role = 'timestamp')",
    "tufnotary_signal_delete": "AFTER DELETE ON tuf_files REFERENCING OLD TABLE AS deleted"
    " FOR EACH STATEMENT",
    "tufnotary_signal_other": "AFTER UPDATE OR TRUNCATE ON tuf_files FOR EACH STATEMENT",
}


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    """Create the function and the triggers (PostgreSQL only)."""
    if not _postgresql():
        return
    op.execute(_FUNCTION)
    for name, when in _TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION tufnotary_signal()")


def downgrade() -> None:
    """Drop the triggers and the function (PostgreSQL only)."""
    if not _postgresql():
        return
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON tuf_files")
    op.execute("DROP FUNCTION tufnotary_signal()")
