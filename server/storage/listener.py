"""PostgreSQL LISTEN on the change-signal connection: which GUNs changed, with no round trip.

Migration 0008's triggers NOTIFY channel ``tufnotary_signal`` with the GUN of every write that
may change its signal (an empty payload: any GUN), when the write commits. A
:class:`Listener` handles the notifications that have arrived on its connection: those
received during a statement (psycopg hands them over as it reads the answer) and, before each
cached read, those waiting in the socket (read without blocking).

The bound on staleness: a writer's COMMIT returns after PostgreSQL has signalled every
listening backend, and a backend sends the notifications it was signalled before it answers
its next statement; so once a statement sent at time *t* on this connection has been answered,
every write committed before *t* has been handled. Remembered signals are trusted only within
``window`` seconds of the start of the last statement answered: a write committed at *c* is
seen by every read from *c* + ``window`` on (in practice by the next read, the notification
arriving within a millisecond), and a connection that stops answering is trusted no longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

CHANNEL = "tufnotary_signal"
_TRIGGERS = 3  # migration 0008's triggers on tuf_files: insert, delete, update or truncate
_ENABLED_TRIGGERS = (
    "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tuf_files'::regclass"
    f" AND tgfoid = to_regprocedure('{CHANNEL}()') AND tgenabled <> 'D'"
)

Forget = Callable[[str], None]
"""Forget the remembered signal of a GUN ('': of every GUN)."""


class Mark(NamedTuple):
    """What a read notes before its statement."""

    generation: int
    sent: float


class Listener:
    """Notifications on one autocommit psycopg connection, used by one thread at a time."""

    def __init__(self, connection: Any, window: float, forget: Forget) -> None:
        self._connection, self._window, self._forget = connection, window, forget
        self._pgconn = connection.pgconn
        self._generation = 0  # notifications handled so far
        self._trusted_until = 0.0  # time.monotonic()
        connection.add_notify_handler(lambda notify: self.changed(notify.payload))

    @classmethod
    def start(cls, connection: Any, window: float, forget: Forget) -> Listener | None:
        """LISTEN on ``connection``; None if the triggers are missing or disabled (then nothing
        would be notified)."""
        (enabled,) = connection.execute(_ENABLED_TRIGGERS).fetchone()
        if enabled != _TRIGGERS:
            return None
        listener = cls(connection, window, forget)
        connection.execute(f"LISTEN {CHANNEL}")
        return listener

    def current(self) -> bool:
        """Handle the notifications received so far (no waiting); whether remembered signals
        may be answered (within the window)."""
        self._pgconn.consume_input()  # raises if the connection is broken
        while (notify := self._pgconn.notifies()) is not None:
            self.changed(notify.extra.decode(self._connection.info.encoding))
        return time.monotonic() < self._trusted_until

    def mark(self) -> Mark:
        """Note the state before a statement is sent."""
        return Mark(self._generation, time.monotonic())

    def settled(self, mark: Mark) -> bool:
        """After the statement sent at ``mark`` was answered: restart the window from when it was
        sent; whether its answer may be remembered (no notification arrived meanwhile, which
        may be for a write its answer does not show)."""
        self._trusted_until = mark.sent + self._window
        return self._generation == mark.generation

    def changed(self, gun: str) -> None:
        """Forget the signal of ``gun`` ('': of every GUN), which a write changed."""
        self._generation += 1
        self._forget(gun)
