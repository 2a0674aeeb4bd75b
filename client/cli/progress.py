"""Progress lines on stderr for network operations that take a while."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import click

PROGRESS_DELAY_ENV = "TUFNOTARY_PROGRESS_DELAY"
PROGRESS_DELAY = 1.0


class Progress:
    """Says on stderr what a network operation is doing, once it has taken ``delay`` seconds."""

    _current: Progress | None = None

    def __init__(self, message: str) -> None:
        self.message = message
        self.shown = False
        self._lock = threading.Lock()
        self._finished = False
        self._timer: threading.Timer | None = None

    @classmethod
    def hold(cls) -> None:
        """Stop the pending indication (a prompt is about to be shown)."""
        current = cls._current
        if current is not None and current._timer is not None:
            current._timer.cancel()

    def _show(self) -> None:
        with self._lock:
            if not self._finished:
                self.shown = True
                click.echo(f"{self.message} ...", err=True)

    @contextmanager
    def running(self) -> Iterator[None]:
        delay = _progress_delay()
        if delay <= 0:
            self._show()
        else:
            self._timer = threading.Timer(delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        Progress._current, outcome = self, "failed"
        try:
            yield
            outcome = "done"
        finally:
            Progress._current = None
            if self._timer is not None:
                self._timer.cancel()
            with self._lock:
                self._finished = True
                if self.shown:
                    click.echo(f"{self.message}: {outcome}", err=True)


def _progress_delay() -> float:
    try:
        return float(os.environ.get(PROGRESS_DELAY_ENV, PROGRESS_DELAY))
    except ValueError:
        return PROGRESS_DELAY


def progress(message: str) -> AbstractContextManager[None]:
    """Within it, ``message`` is shown once the work has taken the delay, then its outcome."""
    return Progress(message).running()
