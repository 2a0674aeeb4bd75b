"""The soonest expiry of current metadata per role, as the last resign pass recorded it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from tufnotary.server.storage.engine import Store
from tufnotary.server.storage.models import SoonestExpiryRow, columns


@dataclass(frozen=True)
class SoonestExpiry:
    """The GUN whose current ``role`` expires first, when, and when that was found."""

    role: str
    gun: str
    expires_at: datetime
    computed_at: datetime


_COLUMNS = columns(SoonestExpiryRow, SoonestExpiry)


class ExpiryStore(Store):
    """Reads and replaces the recorded soonest expiries."""

    def replace(self, found: Iterable[SoonestExpiry]) -> None:
        """Make ``found`` the recorded expiries, all at once."""
        rows = [{column.key: getattr(entry, column.key) for column in _COLUMNS} for entry in found]
        with self._db.transaction("record of expiries", write=True) as connection:
            connection.execute(sa.delete(SoonestExpiryRow))
            if rows:
                connection.execute(sa.insert(SoonestExpiryRow), rows)

    def soonest(self) -> list[SoonestExpiry]:
        """The recorded expiries, by role."""
        query = sa.select(*_COLUMNS).order_by(SoonestExpiryRow.role)
        with self._db.transaction("expiries") as connection:
            return [SoonestExpiry(*row) for row in connection.execute(query)]
