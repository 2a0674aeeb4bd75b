"""Cached answers to the hot metadata reads, in front of the Flask application.

A GET of current, by-checksum or by-version metadata is answered from a per-worker cache of
rendered responses (200s and 404s, headers included) when the entry is still valid: every
request reads the GUN's change signal (:class:`ChangeSignals`: on SQLite no query while nothing
was committed, else one indexed query on a dedicated connection) and an entry is valid only
for the signal read before it was rendered, so a publish, re-sign or deletion made by any
worker or server is seen by the next request. Current timestamps and snapshots also go back
through Flask once they are due to be re-signed. Everything else, every
miss and every request the fast path cannot authorize goes to Flask unchanged, and each miss
that Flask answers with 200 or 404 fills the cache. Hits keep the access log line and the
request metric. Large bodies are sent gzip-compressed to clients that accept it, compressed
once per checksum.
"""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.http import parse_accept_header, parse_etags
from werkzeug.wsgi import get_host, get_path_info

from tufnotary.server import api
from tufnotary.server.auth import required_access
from tufnotary.server.context import server_context
from tufnotary.server.realm import RealmTokenAuth
from tufnotary.server.service import LRU, TrustService
from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.signals import ChangeSignals, Signal

GZIP_MIN_BYTES = 1400  # smaller bodies fit one TCP segment: compressing them gains nothing
_ENTRY_OVERHEAD = 512  # bytes counted per cache entry besides its body
_CACHED = {api.by_checksum, api.by_version, api.current}
_CACHED_STATUSES = ("200", "404")
_DROPPED_HEADERS = {"content-length", "x-request-id"}

StartResponse = Callable[..., Any]
Record = Callable[[dict[str, Any], float], None]


@dataclass(frozen=True)
class _Entry:
    """A rendered response to ``route``, valid while the GUN's signal is ``signal`` (and, for a
    current timestamp or snapshot, until ``refresh_at``, in seconds since the epoch)."""

    route: _Route
    signal: Signal
    status: str
    headers: list[tuple[str, str]]  # without Content-Length and X-Request-ID
    body: bytes
    etag: str | None
    refresh_at: float | None

    def weight(self) -> int:
        return len(self.body) + _ENTRY_OVERHEAD

    def valid(self, signal: Signal, now: float) -> bool:
        return self.signal == signal and (self.refresh_at is None or now < self.refresh_at)


@dataclass(frozen=True)
class _Route:
    """A GET the fast path may answer."""

    gun: str
    role: str
    operation: str
    current: bool


class FastReads:
    """WSGI middleware answering cached metadata reads in front of ``app``."""

    def __init__(
        self,
        app: Flask,
        service: TrustService,
        signals: ChangeSignals,
        budget: int,
        record: Record,
    ) -> None:
        self._app = app
        self._wsgi = app.wsgi_app
        self._service = service
        self._signals = signals
        self._record = record
        self._entries: LRU[str, _Entry] = LRU(budget, _Entry.weight)
        self._gzipped: LRU[str, bytes] = LRU(budget // 4, len)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD")
        path = get_path_info(environ)
        entry: _Entry | None = None
        route: _Route | None = None
        if method in ("GET", "HEAD"):  # a cached path's route is known: no need to match it again
            entry = self._entries.get(path)
            route = entry.route if entry is not None else self._route(path)
        if route is None or not self._authorized(environ, route.gun):
            return self._wsgi(environ, start_response)
        try:
            signal = self._signals.read(route.gun)
        except StorageError:
            return self._wsgi(environ, start_response)
        if entry is not None and entry.valid(signal, time.time()):
            return self._hit(environ, start_response, entry, route, path, started)
        if method != "GET" or "HTTP_IF_NONE_MATCH" in environ:
            return self._wsgi(environ, start_response)
        return self._fill(environ, start_response, path, route, signal)

    def cached(self, path: str) -> bool:
        """Whether an answer for ``path`` is cached (valid or not): for tests and diagnostics."""
        return self._entries.get(path) is not None

    # -- matching ----------------------------------------------------------------------------

    @staticmethod
    def _route(path: str) -> _Route | None:
        """The metadata read ``path`` names, if the API's dispatch would route it there."""
        if api.clean_path(path) != path:
            return None
        for method, pattern, handler, _, _ in api.ROUTES:
            match = pattern.fullmatch(path) if method == "GET" else None
            if match is not None:
                if handler not in _CACHED:
                    return None
                operation = api.OPERATIONS[handler]
                current = handler is api.current
                return _Route(match["gun"], match["role"], operation, current)
        return None

    def _authorized(self, environ: dict[str, Any], gun: str) -> bool:
        """Token auth as the API checks it; False sends the request to Flask, which answers."""
        token_auth = server_context(self._app).auth
        if token_auth is None:
            return True
        if isinstance(token_auth, RealmTokenAuth):
            token_auth = token_auth.for_host(get_host(environ))
        try:
            token_auth.authorize(environ.get("HTTP_AUTHORIZATION"), required_access(gun, api.PULL))
        except Exception:  # any refusal is rendered by the API itself
            return False
        return True

    # -- answering ---------------------------------------------------------------------------

    def _fill(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        path: str,
        route: _Route,
        signal: Signal,
    ) -> Iterable[bytes]:
        """Let Flask answer, and cache the answer under the signal read before it."""
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured[:] = [status, headers]
            return start_response(status, headers, exc_info)

        result = self._wsgi(environ, capture)
        try:
            body = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        status, headers = captured
        if status[:3] in _CACHED_STATUSES:
            kept = [(k, v) for k, v in headers if k.lower() not in _DROPPED_HEADERS]
            etag = next((v.strip('"') for k, v in headers if k.lower() == "etag"), None)
            refresh_at = None
            if route.current and route.role in ("timestamp", "snapshot") and status[:3] == "200":
                refresh_at = self._refresh_at(route.gun, signal)
            entry = _Entry(route, signal, status, kept, body, etag, refresh_at)
            self._entries.put(path, entry)
        return [body]

    def _refresh_at(self, gun: str, signal: Signal) -> float | None:
        """When the current timestamp and snapshot are due (0: now, when unknown); ``signal``
        names the newest timestamp, whose walk Flask has just done (then no query)."""
        try:
            due = self._service.refresh_at(gun, None if signal is None else signal[1])
        except Exception:  # then the next read goes to Flask again
            return 0.0
        return None if due is None else due.timestamp()

    def _hit(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        entry: _Entry,
        route: _Route,
        path: str,
        started: float,
    ) -> Iterable[bytes]:
        request_id = environ.get("HTTP_X_REQUEST_ID", "")[:64] or uuid.uuid4().hex
        status, headers, body = entry.status, list(entry.headers), entry.body
        wanted = environ.get("HTTP_IF_NONE_MATCH")
        if wanted and entry.etag and status[:3] == "200":
            etags = parse_etags(wanted)
            if etags.star_tag or etags.contains_weak(entry.etag):
                status, body = "304 NOT MODIFIED", b""
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
        if status[:3] == "200" and entry.etag and len(body) >= GZIP_MIN_BYTES:
            headers.append(("Vary", "Accept-Encoding"))
            if parse_accept_header(environ.get("HTTP_ACCEPT_ENCODING"))["gzip"]:
                body = self._gzip(entry.etag, body)
                weak = f'W/"{entry.etag}"'  # another representation of the same bytes
                headers = [(k, weak if k.lower() == "etag" else v) for k, v in headers]
                headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        headers.append(("X-Request-ID", request_id))
        start_response(status, headers)
        seconds = time.perf_counter() - started
        fields = {
            "request_id": request_id,
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "status": int(status[:3]),
            "bytes": len(body),
            "ms": round(seconds * 1000, 2),
            "operation": route.operation,
            "gun": route.gun,
            "cache": "hit",
        }
        self._record(fields, seconds)
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    def _gzip(self, etag: str, body: bytes) -> bytes:
        compressed = self._gzipped.get(etag)
        if compressed is None:
            compressed = gzip.compress(body, compresslevel=6, mtime=0)
            self._gzipped.put(etag, compressed)
        return compressed
