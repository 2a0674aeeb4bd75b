"""The hot metadata reads, answered in front of the Flask application.

A GET or HEAD of current, by-checksum or by-version metadata is answered from a per-worker
cache of rendered responses (200s and 404s) when the entry is still valid: the GUN's change
signal (:class:`ChangeSignals`: on SQLite no query while nothing was committed, on PostgreSQL
none while its notifications are current, else one indexed query on a dedicated connection)
must be the one the entry was read with, so a publish, re-sign or deletion made by any worker
or server is seen by the next request (on PostgreSQL, through another worker or server: within
``read_staleness_ms``). A miss
is answered here too, from one statement (:meth:`MetadataStore.read_gun`) that reads the
signal with the files, rendered by the same code as the API's handlers (server/rendering.py),
and fills the cache. Current timestamps and snapshots due to be re-signed, database and
metadata errors, refused tokens, and everything else go to Flask unchanged. Every answer keeps
the access log line and the request metric. Large bodies are sent gzip-compressed to clients
that accept it, compressed once per checksum.
"""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.http import parse_accept_header
from werkzeug.wsgi import get_host, get_path_info

from tufnotary.server import api, rendering
from tufnotary.server.auth import required_access
from tufnotary.server.context import server_context
from tufnotary.server.errors import MetadataNotFound, ServerError
from tufnotary.server.names import check_gun
from tufnotary.server.realm import RealmTokenAuth
from tufnotary.server.rendering import Rendered
from tufnotary.server.service import LRU, TrustService, walked_roles
from tufnotary.server.storage.metadata import GunRead, StoredFile
from tufnotary.server.storage.signals import ChangeSignals, Signal

_ENTRY_OVERHEAD = 512  # bytes counted per cache entry besides its body
_INT32 = 2**31
_NOT_FOUND = rendering.error(MetadataNotFound())

StartResponse = Callable[..., Any]
Record = Callable[[dict[str, Any], float], None]


@dataclass(frozen=True)
class _Route:
    """A GET the fast path may answer: ``asked`` is (column, value) of a by-checksum or
    by-version read, None for current metadata."""

    gun: str
    role: str
    operation: str
    asked: tuple[str, str | int] | None


@dataclass(frozen=True)
class _Entry:
    """A rendered response to ``route``, valid while the GUN's signal is ``signal`` (and, for a
    current timestamp or snapshot, until ``refresh_at``, in seconds since the epoch)."""

    route: _Route
    signal: Signal
    rendered: Rendered
    sha256: str | None  # of the file a 200 sends
    refresh_at: float | None

    def weight(self) -> int:
        return len(self.rendered.body) + _ENTRY_OVERHEAD

    def valid(self, signal: Signal, now: float) -> bool:
        return self.signal == signal and (self.refresh_at is None or now < self.refresh_at)


class FastReads:
    """WSGI middleware answering metadata reads in front of ``app``."""

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
        self._settings = server_context(app).settings
        self._entries: LRU[str, _Entry] = LRU(budget, _Entry.weight)
        self._gzipped: LRU[str, bytes] = LRU(budget // 4, len)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD") or "%" in raw.partition("?")[0]:
            return self._wsgi(environ, start_response)  # encoded paths: the API's checks
        path = get_path_info(environ)
        entry = self._entries.get(path)
        route = entry.route if entry is not None else self._route(path)
        if route is None or not self._authorized(environ, route.gun):
            return self._wsgi(environ, start_response)
        cache = "hit"
        try:
            if entry is None or not entry.valid(self._signals.read(route.gun), time.time()):
                cache, entry = "miss", self._read(route)
        except Exception:  # database or metadata errors: Flask answers (and logs) as without us
            entry = None
        if entry is None:
            return self._wsgi(environ, start_response)
        if cache == "miss":
            self._entries.put(path, entry)
        return self._send(environ, start_response, entry, path, started, cache)

    def cached(self, path: str) -> bool:
        """Whether an answer for ``path`` is cached (valid or not): for tests and diagnostics."""
        return self._entries.get(path) is not None

    # -- matching ----------------------------------------------------------------------------

    def _route(self, path: str) -> _Route | None:
        """The metadata read ``path`` names, if the API's dispatch would route it there and
        answer it without refusing the name."""
        if api.clean_path(path) != path:
            return None  # unclean: the API refuses or redirects
        for method, pattern, handler, _, _ in api.ROUTES:
            match = pattern.fullmatch(path) if method == "GET" else None
            if match is not None:
                return self._known_route(handler, match.groupdict())
        return None

    def _known_route(self, handler: api.Handler, arguments: dict[str, str]) -> _Route | None:
        gun, role = arguments.get("gun", ""), arguments.get("role", "")
        prefixes = self._settings.gun_prefixes
        try:
            check_gun(gun)
        except ServerError:
            return None
        if prefixes and not gun.startswith(prefixes):
            return None
        asked: tuple[str, str | int] | None = None
        if handler is api.by_checksum:
            asked = ("sha256", arguments["checksum"].lower())
        elif handler is api.by_version:
            asked = ("version", int(arguments["version"]))
        elif handler is not api.current:
            return None
        return _Route(gun, role, api.OPERATIONS[handler], asked)

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

    # -- reading -----------------------------------------------------------------------------

    def _read(self, route: _Route) -> _Entry | None:
        """The answer to ``route`` from one statement, or None when Flask must answer (a
        current timestamp or snapshot due to be re-signed)."""
        store = self._service.store
        refresh_at = None
        if route.asked is None:
            read = store.read_gun(route.gun, walked_roles(route.role))
            file, due = self._service.current_of(route.gun, route.role, read.latest)
            if due is not None:
                refresh_at = due.timestamp()
                if time.time() >= refresh_at:
                    return None
        else:
            column, value = route.asked
            if column == "version" and not 0 < int(value) < _INT32:
                read = store.read_gun(route.gun, ())  # the signal only: no such version
            else:
                read = store.read_gun(route.gun, (), (route.role, column, value))
            file = read.found
        return self._entry(route, read, file, refresh_at)

    def _entry(
        self, route: _Route, read: GunRead, file: StoredFile | None, refresh_at: float | None
    ) -> _Entry:
        if file is None:
            return _Entry(route, read.signal, _NOT_FOUND, None, None)
        rendered = rendering.metadata(file, route.asked is None, self._settings)
        return _Entry(route, read.signal, rendered, file.sha256, refresh_at)

    # -- answering ---------------------------------------------------------------------------

    def _send(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        entry: _Entry,
        path: str,
        started: float,
        cache: str,
    ) -> Iterable[bytes]:
        request_id = environ.get("HTTP_X_REQUEST_ID", "")[:64] or uuid.uuid4().hex
        rendered = entry.rendered
        sha256 = entry.sha256
        if sha256 is not None:
            if rendering.not_modified(environ.get("HTTP_IF_NONE_MATCH"), sha256):
                rendered = rendered.not_modified()
            elif (
                len(rendered.body) >= rendering.GZIP_MIN_BYTES
                and parse_accept_header(environ.get("HTTP_ACCEPT_ENCODING"))["gzip"]
            ):
                rendered = self._gzip(rendered, sha256)
        headers = [*rendered.headers, ("X-Request-ID", request_id)]
        status = rendered.status_line
        start_response(status, headers)
        seconds = time.perf_counter() - started
        route = entry.route
        fields = {
            "request_id": request_id,
            "remote": environ.get("REMOTE_ADDR"),
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "status": rendered.status,
            "bytes": len(rendered.body),
            "ms": round(seconds * 1000, 2),
            "operation": route.operation,
            "gun": route.gun,
            "cache": cache,
        }
        self._record(fields, seconds)
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [rendered.body]

    def _gzip(self, rendered: Rendered, sha256: str) -> Rendered:
        """Another representation of the same bytes: compressed, with a weak ETag."""
        compressed = self._gzipped.get(sha256)
        if compressed is None:
            compressed = gzip.compress(rendered.body, compresslevel=6, mtime=0)
            self._gzipped.put(sha256, compressed)
        replaced = {
            "Content-Length": str(len(compressed)),
            "ETag": f'W/"{sha256}"',
        }
        headers = [(name, replaced.get(name, value)) for name, value in rendered.headers]
        return Rendered(200, [*headers, ("Content-Encoding", "gzip")], compressed)
