"""The gunicorn worker of `serve` (server/worker.py), in-process."""

from __future__ import annotations

import gc
import os
from typing import Any

from gunicorn.config import Config
from gunicorn.glogging import Logger

from tufnotary.server.worker import YOUNG_OBJECTS, DeadlineWorker


class _Application:
    """What gunicorn hands a worker: ``wsgi()`` loads the WSGI callable."""

    def wsgi(self) -> Any:
        return lambda environ, start_response: [b""]


def test_loading_the_app_freezes_it_and_spaces_out_young_collections() -> None:
    config = Config()
    worker = DeadlineWorker(0, os.getpid(), [], _Application(), 30, config, Logger(config))
    frozen, thresholds = gc.get_freeze_count(), gc.get_threshold()
    try:
        worker.load_wsgi()
        assert gc.get_freeze_count() > frozen
        assert gc.get_threshold() == (YOUNG_OBJECTS, *thresholds[1:])
        assert worker.wsgi({}, None) == [b""]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        worker.tmp.close()
