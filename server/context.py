"""What the routes share (one :class:`ServerContext` per app) and what one request carries
(one :class:`RequestState`), each behind a typed accessor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, g, request

from tufnotary.server.auth import TokenAuth
from tufnotary.server.config import Settings
from tufnotary.server.realm import Realm
from tufnotary.server.service import TrustService
from tufnotary.server.slots import UploadSlots
from tufnotary.server.storage import Stores

_EXTENSION = "tufnotary"
_REQUEST = "tufnotary_request"


@dataclass
class ServerContext:
    """The app's settings, stores and services; ``auth`` is None without authentication, and
    ``realm`` is set in auth_mode ``builtin`` only."""

    settings: Settings
    stores: Stores
    service: TrustService
    upload_slots: UploadSlots
    metrics: Callable[[], bytes]
    auth: TokenAuth | None = None
    realm: Realm | None = None

    def install(self, app: Flask) -> None:
        """Make this the context of ``app``."""
        app.extensions[_EXTENSION] = self


def server_context(app: Flask) -> ServerContext:
    """The context :meth:`ServerContext.install` gave ``app``."""
    context = app.extensions[_EXTENSION]
    assert isinstance(context, ServerContext)
    return context


@dataclass
class RequestState:
    """What one request carries for its access log line and audit entries."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    actor: str | None = None
    """The authenticated user (``anonymous`` for a token request without credentials)."""
    operation: str | None = None
    gun: str | None = None
    error: str | None = None
    audit: dict[str, Any] = field(default_factory=dict)
    """Extra access-log fields: what the request granted, stored or removed."""


def request_state() -> RequestState:
    """The current request's state, begun on first use (``X-Request-ID`` or a new id)."""
    state = g.get(_REQUEST)
    if state is None:
        state = RequestState(request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex)
        setattr(g, _REQUEST, state)
    assert isinstance(state, RequestState)
    return state
