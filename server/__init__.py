"""The tufnotary trust server."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from tufnotary.server.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app (`gunicorn 'tufnotary.server:create_app()'`); imports Flask lazily."""
    from tufnotary.server import app

    return app.create_app(settings)
