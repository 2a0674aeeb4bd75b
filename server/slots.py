"""A cap on large uploads in progress across every worker process of one server."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tufnotary.server.errors import UploadsBusy

POLL_SECONDS = 0.05


class UploadSlots:
    """At most ``count`` uploads bigger than ``threshold`` bytes are read and validated at once.

    Each holder keeps an exclusive ``flock`` on one of ``count`` files in ``directory`` (in the
    data directory, shared by gunicorn's workers); the kernel drops it when the holder closes it
    or its process dies. A request that finds no free slot waits up to ``wait`` seconds, then is
    refused with UploadsBusy (503, Retry-After).
    """

    def __init__(self, directory: Path, count: int, threshold: int, wait: float) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = [directory / f"slot-{index}" for index in range(count)]
        self.threshold = threshold
        self.wait = wait

    def _take(self) -> int | None:
        """A locked slot file descriptor, or None if every slot is held."""
        for path in self.paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold one slot for the body of the ``with``."""
        deadline = time.monotonic() + self.wait
        while (fd := self._take()) is None:
            if time.monotonic() > deadline:
                raise UploadsBusy(max(1, round(self.wait)))
            time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            os.close(fd)
