"""create_app(settings): wires configuration, storage, server keys and the routes."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Response, request
from flask.sessions import NullSession, SessionInterface
from gunicorn import glogging
from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import BaseConverter

from tufnotary.server import api, startup
from tufnotary.server.auth import TokenAuth
from tufnotary.server.config import ConfigError, Settings
from tufnotary.server.context import ServerContext, request_state
from tufnotary.server.errors import ClientTooSlow, NoRoute, ServerError, TooLarge
from tufnotary.server.expirygauge import SoonestExpiryCollector
from tufnotary.server.fastpath import FastReads
from tufnotary.server.keyage import KeyAgeCollector
from tufnotary.server.proxy import trust_proxies
from tufnotary.server.ratelimit import RateLimit
from tufnotary.server.realm import DEFAULT_ISSUER, DEFAULT_SERVICE, Realm, Rule, TokenKeys
from tufnotary.server.resign import DEFAULT_WITHIN, start_background
from tufnotary.server.service import TrustService
from tufnotary.server.signer import KeyVault, ServerKeys
from tufnotary.server.slots import UploadSlots
from tufnotary.server.startup import open_token, open_vault
from tufnotary.server.storage import Stores
from tufnotary.server.storage.expiry import ExpiryStore
from tufnotary.server.storage.signals import ChangeSignals
from tufnotary.server.updates import Limits
from tufnotary.server.worker import BodyTimeout

log = logging.getLogger("tufnotary.server")
access_log = logging.getLogger("tufnotary.access")
KEY_WINDOW = 3600
"""Seconds over which ``key_creation_limit`` new server keys per client address are allowed."""

REQUEST_SECONDS = Histogram(
    "notary_server_http_request_duration_seconds",
    "Time spent answering requests, by notary-server operation.",
    ["operation", "method", "status"],
)


LARGE_UPLOAD_WAIT = 10.0
"""Seconds a large upload waits for a free slot before it is answered 503."""


class _EverythingConverter(BaseConverter):
    """Matches any path, slashes and empty segments included."""

    regex = ".*"
    part_isolating = False


class _Sessionless(SessionInterface):
    """No cookie sessions (the API has none): every request shares one null session, instead
    of a signing-key check and a new null session per request."""

    _NULL = NullSession()

    def open_session(self, app: Flask, request: Any) -> NullSession:
        return self._NULL


class _App(Flask):
    """Flask minus per-request work this server has no use for: sessions, and the check of
    every hook, view and error handler for a coroutine (all of them are plain functions)."""

    session_interface = _Sessionless()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return func


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name, record.getMessage())
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODE(entry)


def _entry(created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
    """The members every line starts with."""
    time_ = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return {"time": time_, "level": level, "logger": logger, "msg": msg}


# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str).encode


def configure_logging(level: str) -> None:
    root = logging.getLogger("tufnotary")
    if not any(isinstance(h.formatter, JSONFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JSONFormatter())
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


def _metrics_renderer(stores: Stores) -> Callable[[], bytes]:
    """Prometheus exposition; aggregated over gunicorn workers when PROMETHEUS_MULTIPROC_DIR
    is set (the ``serve`` command sets it); server key ages and soonest expiries read from
    ``stores``."""
    keys = CollectorRegistry()
    keys.register(KeyAgeCollector(stores.keys))
    keys.register(SoonestExpiryCollector(ExpiryStore(stores.database)))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return lambda: generate_latest(registry) + generate_latest(keys)
    return lambda: generate_latest() + generate_latest(keys)


class GunicornLogger(glogging.Logger):
    """gunicorn's own log lines (start, workers, errors) as JSON like the server's:
    ``gunicorn --logger-class tufnotary.server.app.GunicornLogger``."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JSONFormatter())


def create_app(settings: Settings | None = None, *, preflight: bool = True) -> Flask:
    """The WSGI application for ``settings`` (default: ``Settings.load()``).

    Unless ``preflight`` is false (the serving process ran them before starting workers), the
    start-up checks run first and raise StartupError: SQLite (or, with ``auto_migrate``, any
    database) is migrated, the schema must be the latest and the stored keys must decrypt.
    """
    settings = settings or Settings.load()
    configure_logging(settings.log_level)
    stores = Stores.from_url(settings.effective_database_url)
    vault = open_vault(settings)
    token = open_token(settings)
    if preflight:
        startup.preflight(settings, stores, vault, token)
        vault.warn_if_development()
    limits = Limits(
        settings.max_delegations,
        settings.max_delegation_depth,
        settings.max_signatures,
        settings.max_json_values,
        settings.max_root_bytes,
        settings.max_snapshot_bytes,
        settings.max_timestamp_bytes,
        settings.max_targets_bytes,
    )
    service = TrustService(
        stores.metadata,
        stores.audit,
        ServerKeys(stores.keys, vault, settings.key_algorithm, token, settings.key_backend),
        limits,
        refresh_margin=timedelta(seconds=max(settings.cache_max_age_current, 60)),
        key_creations=RateLimit(
            stores.rate_events, "key-create", settings.key_creation_limit, KEY_WINDOW
        ),
    )

    if settings.resign_interval:
        background = TrustService(
            stores.metadata, stores.audit, service.keys, limits, refresh_margin=DEFAULT_WITHIN
        )
        start_background(stores, background, settings.resign_interval)

    app = _App(__name__, instance_path=str(settings.data_dir.absolute()))
    app.wsgi_app = trust_proxies(  # type: ignore[method-assign]
        app.wsgi_app, settings.trusted_proxies, settings.forwarded_header
    )
    app.url_map.converters["everything"] = _EverythingConverter
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    slots = UploadSlots(
        settings.data_dir / "upload-slots",
        settings.max_concurrent_large_uploads,
        settings.large_upload_bytes,
        LARGE_UPLOAD_WAIT,
    )
    context = ServerContext(settings, stores, service, slots, _metrics_renderer(stores))
    if settings.auth_mode == "builtin":
        context.realm = _realm(settings, stores, vault)
        context.auth = context.realm.verifier
    else:
        context.auth = _token_auth(settings)
    context.install(app)
    api.install(app)
    _install_hooks(app)
    if settings.response_cache_bytes:
        budget = settings.response_cache_bytes
        staleness = settings.read_staleness_ms / 1000
        signals = ChangeSignals(stores.database, stores.metadata, staleness)
        app.wsgi_app = FastReads(  # type: ignore[method-assign]
            app, service, signals, budget, record_request
        )
    return app


def _token_auth(settings: Settings) -> TokenAuth | None:
    """The bearer-token verifier of auth_mode `token`, or None (no authentication)."""
    if settings.auth_mode != "token":
        return None
    values = (settings.token_realm, settings.token_service, settings.token_issuer)
    if settings.token_rootcertbundle is None or not all(values):
        raise ConfigError(
            "auth_mode 'token' needs token_realm, token_service, token_issuer "
            "and token_rootcertbundle"
        )
    try:
        return TokenAuth.from_files(
            settings.token_realm or "",
            settings.token_service or "",
            settings.token_issuer or "",
            settings.token_rootcertbundle,
            settings.max_token_lifetime,
        )
    except ValueError as exc:
        raise ConfigError(f"token_rootcertbundle: {exc}") from None


def _realm(settings: Settings, stores: Stores, vault: KeyVault) -> Realm:
    """The built-in token realm of auth_mode `builtin` (service and issuer default to
    "tufnotary")."""
    return Realm(
        stores,
        TokenKeys(stores.token_keys, vault),
        service=settings.token_service or DEFAULT_SERVICE,
        issuer=settings.token_issuer or DEFAULT_ISSUER,
        lifetime=settings.token_lifetime,
        htpasswd=settings.htpasswd_file,
        rules=[Rule.make(*rule) for rule in settings.rules],
        rounds=settings.bcrypt_rounds,
    )


def _install_hooks(app: Flask) -> None:
    @app.before_request
    def start() -> None:
        request_state()  # starts the clock and takes the request id

    @app.errorhandler(ServerError)
    def server_error(error: ServerError) -> Response:
        request_state().error = f"{error.code}: {error}"
        return api.render_error(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if isinstance(error, RequestEntityTooLarge):
            return server_error(TooLarge())
        if error.code == 405:
            return Response(b"", 405)
        return server_error(NoRoute())

    @app.errorhandler(BodyTimeout)
    def too_slow(error: BodyTimeout) -> Response:
        return server_error(ClientTooSlow(log=str(error)))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        fields = {"request_id": request_state().request_id}
        log.exception("unhandled error", extra={"fields": fields})
        return server_error(ServerError())

    @app.after_request
    def finish(response: Response) -> Response:
        state = request_state()
        seconds = time.perf_counter() - state.started
        response.headers["X-Request-ID"] = state.request_id
        environ = request.environ
        fields = {
            "request_id": state.request_id,
            "remote": environ.get("REMOTE_ADDR"),  # what request.remote_addr reads
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "bytes": response.content_length,
            "ms": round(seconds * 1000, 2),
            "operation": state.operation,
            "gun": state.gun,
            "error": state.error,
            **state.audit,
        }
        record_request(fields, seconds)
        return response


def record_request(fields: dict[str, Any], seconds: float) -> None:
    """One JSON access log line (``None`` fields left out) and the request's duration metric."""
    labels = (fields.get("operation") or "other", fields["method"], str(fields["status"]))
    histogram = _REQUEST_HISTOGRAMS.get(labels)
    if histogram is None:
        histogram = _REQUEST_HISTOGRAMS.setdefault(labels, REQUEST_SECONDS.labels(*labels))
    histogram.observe(seconds)
    if not access_log.isEnabledFor(logging.INFO):
        return
    handlers = _plain_json_handlers(access_log)
    if handlers is None:  # another logging set-up: through logging, minus the caller lookup
        extra = {"fields": {k: v for k, v in fields.items() if v is not None}}
        record = access_log.makeRecord(
            access_log.name, logging.INFO, "", 0, "request", (), None, None, extra
        )
        access_log.handle(record)
        return
    # What those handlers would write, without a LogRecord and the handler chain per request.
    entry = _entry(time.time(), "info", access_log.name, "request")
    entry.update({k: v for k, v in fields.items() if v is not None})
    line = _ENCODE(entry) + "\n"
    for handler in handlers:
        with handler.lock:  # type: ignore[union-attr]  # a StreamHandler always has one
            handler.stream.write(line)
            handler.stream.flush()


def _plain_json_handlers(logger: logging.Logger) -> list[logging.StreamHandler[Any]] | None:
    """The handlers a record of ``logger`` reaches, if all are plain stream handlers with the
    JSON formatter and nothing on the way filters; else None."""
    found: list[logging.StreamHandler[Any]] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            plain = type(handler) is logging.StreamHandler and not handler.filters
            if not plain or type(handler.formatter) is not JSONFormatter:
                return None
            if handler.level <= logging.INFO:
                found.append(handler)  # type: ignore[arg-type]
        current = current.parent if current.propagate else None
    return found


_REQUEST_HISTOGRAMS: dict[tuple[str, str, str], Any] = {}
"""REQUEST_SECONDS' children by labels: ``labels()`` validates and locks on every call."""
