"""What pruning needs of ``tuf_files``: the GUNs, the non-root versions of one, and the
removal of chosen versions in one audited transaction (root versions are never removed), as
long as the GUN still holds the timestamp they were chosen against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from tufnotary.server.storage.audit import AuditEntry, append_audit
from tufnotary.server.storage.engine import StorageError, Store
from tufnotary.server.storage.models import TufFileRow

ROOT = "root"
TIMESTAMP = "timestamp"


class GunReplaced(StorageError):
    """The timestamp the removal was chosen against is gone: the GUN was deleted (and perhaps
    published anew, reusing version numbers) meanwhile."""


@dataclass(frozen=True)
class StoredVersion:
    """One stored version of a role, without its bytes."""

    role: str
    version: int


class RetentionStore(Store):
    """Lists and removes old versions of ``tuf_files``."""

    def guns(self) -> list[str]:
        """Every GUN with stored metadata, sorted."""
        query = sa.select(TufFileRow.gun).distinct()
        with self._db.transaction("list of GUNs") as connection:
            return sorted(connection.execute(query).scalars())

    def versions(self, gun: str) -> list[StoredVersion]:
        """Every stored version of every role of ``gun`` but root, without the bytes."""
        query = sa.select(TufFileRow.role, TufFileRow.version).where(
            TufFileRow.gun == gun, TufFileRow.role != ROOT
        )
        with self._db.transaction(f"versions of {gun}") as connection:
            return [StoredVersion(*row) for row in connection.execute(query)]

    def remove(
        self, gun: str, versions: Mapping[str, Sequence[int]], anchor: str, audit: AuditEntry
    ) -> int:
        """Delete these versions of each role of ``gun`` (never a root version) and record
        ``audit``, in one transaction, if the timestamp whose sha256 is ``anchor`` is still
        stored (else GunReplaced, and nothing changes); returns the number of rows deleted."""
        now = datetime.now(UTC)
        removed = 0
        with self._db.transaction(f"prune of {gun}", write=True) as connection:
            for role, numbers in sorted(versions.items()):
                if role == ROOT:
                    raise ValueError("root versions are never removed")
                # one lookup per row in the (gun, role, version) unique index
                removed += connection.execute(
                    sa.delete(TufFileRow).where(
                        TufFileRow.gun == gun,
                        TufFileRow.role == role,
                        TufFileRow.version.in_(numbers),
                    )
                ).rowcount
            # Checked last, so no lock is taken before the deletions (a deletion of the GUN
            # takes the same row locks): a deletion committed before this point rolls it all
            # back; one not yet committed waits on the rows deleted here.
            anchored = connection.execute(
                sa.select(TufFileRow.id)
                .where(
                    TufFileRow.gun == gun,
                    TufFileRow.role == TIMESTAMP,
                    TufFileRow.sha256 == anchor,
                )
                .limit(1)
            ).first()
            if anchored is None:
                raise GunReplaced(f"{gun} was deleted while it was being pruned")
            append_audit(connection, audit, now)
        return removed
