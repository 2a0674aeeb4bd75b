"""The routes of spec 1.1: parse the request, call the service, render the response.

Routes are matched in the reference's order against the decoded path, with its regular
expressions (GUNs span slashes), so one catch-all Flask rule hands every request to
``dispatch``.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import posixpath
import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.http import parse_options_header

from tufnotary.metadata.keys import KEY_CREATED_HEADER
from tufnotary.metadata.model import TIMESTAMP, format_expires
from tufnotary.server import rendering
from tufnotary.server.auth import required_access
from tufnotary.server.config import Settings
from tufnotary.server.context import ServerContext, request_state, server_context
from tufnotary.server.errors import (
    Forbidden,
    InvalidGun,
    InvalidParameters,
    LoginFailed,
    MalformedUpload,
    MetricsUnauthorized,
    NoFilename,
    NoRoute,
    ServerError,
    TooLarge,
    TooManyLogins,
)
from tufnotary.server.formdata import LimitReached, MultipartError, PartReader
from tufnotary.server.names import check_gun
from tufnotary.server.realm import RealmTokenAuth
from tufnotary.server.service import Requester, TrustService
from tufnotary.server.signer import ServedKey
from tufnotary.server.slots import UploadSlots
from tufnotary.server.storage.audit import AuditRecord
from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.metadata import StoredFile
from tufnotary.server.updates import Limits, Part

log = logging.getLogger(__name__)

METHODS = ["GET", "POST", "PUT", "HEAD", "DELETE"]
_GUN = r"(?P<gun>[^*]+)"
_ROLE = r"(?P<role>root|targets(?:/[^/\s]+)*|snapshot|timestamp)"
_TUF = rf"/v2/{_GUN}/_trust/tuf/"
DEFAULT_RECORDS, MAX_RECORDS = 100, 1000
_INT32 = 2**31
_CHUNK = 64 * 1024


def _context() -> ServerContext:
    return server_context(current_app)


def _service() -> TrustService:
    return _context().service


def _settings() -> Settings:
    return _context().settings


# -- responses --------------------------------------------------------------------------------


def _json(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status, content_type="application/json")


def _send(rendered: rendering.Rendered) -> Response:
    return Response(rendered.body, rendered.status, headers=rendered.headers)


def _metadata(file: StoredFile, current: bool) -> Response:
    """Stored bytes with caching headers; 304 when the client holds this exact version."""
    rendered = rendering.metadata(file, current, _settings())
    if rendering.not_modified(request.headers.get("If-None-Match"), file.sha256):
        rendered = rendered.not_modified()
    return _send(rendered)


def _key(served: ServedKey) -> Response:
    """A public key the way Go's encoder writes it: keytype, then keyval{public, private};
    when it was made in a header that notary clients ignore."""
    key_json = served.key.to_dict()
    response = _json(
        {
            "keytype": key_json["keytype"],
            "keyval": {"public": key_json["keyval"]["public"], "private": None},
        }
    )
    response.headers[KEY_CREATED_HEADER] = format_expires(served.created_at.replace(microsecond=0))
    return response


# -- handlers ---------------------------------------------------------------------------------


def ping(**_: str) -> Response:
    return Response(b"{}", 200, content_type="application/json")


def health(**_: str) -> Response:
    """``{}``, or 503 with a generic message when the database fails (the cause is logged)."""
    try:
        _service().ping()
    except StorageError as exc:
        log.error("health check: %s", exc)
        return _json({"DB operational": "database unavailable"}, 503)
    return _json({})


def audit() -> Response:
    """The audit log, filtered by ``gun``, ``actor``, ``since``, ``until`` (ISO 8601) and
    ``limit`` (1-1000): for administrators (``registry:catalog:*`` with token auth; without
    auth only with ``audit_access = "loopback"``, to loopback clients)."""
    if _context().auth is None:
        if _settings().audit_access != "loopback":
            raise Forbidden(log="the audit log needs auth (or audit_access 'loopback')")
        if not _is_loopback():
            raise Forbidden(log="the audit log is only served to loopback clients without auth")
    args = request.args
    try:
        since, until = (
            parse_time(args[name]) if args.get(name) else None for name in ("since", "until")
        )
        limit = int(args.get("limit", MAX_RECORDS))
        if not 1 <= limit <= MAX_RECORDS:
            raise ValueError(f"limit must be 1-{MAX_RECORDS}, got {limit}")
    except ValueError as exc:
        raise InvalidParameters(f"invalid audit filter: {exc}") from exc
    records = _service().audit_log(
        gun=args.get("gun"), actor=args.get("actor"), since=since, until=until, limit=limit
    )
    return _json([audit_json(record) for record in records])


def audit_json(record: AuditRecord) -> dict[str, Any]:
    """An audit record as JSON (the admin endpoint and ``tufnotary-server audit --json``)."""
    return {
        "id": record.id,
        "time": format_expires(record.created_at),
        "actor": record.actor,
        "action": record.action,
        "gun": record.gun,
        "detail": record.detail,
        "address": record.address,
        "request_id": record.request_id,
    }


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _is_loopback() -> bool:
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def metrics(**_: str) -> Response:
    """Prometheus metrics; with ``metrics_token`` set only for ``Authorization: Bearer <it>``."""
    expected = _settings().metrics_token
    if expected is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            raise MetricsUnauthorized()
    data = _context().metrics()
    return Response(data, 200, content_type=CONTENT_TYPE_LATEST)


def by_checksum(gun: str, role: str, checksum: str) -> Response:
    return _metadata(_service().by_checksum(gun, role, checksum), current=False)


def by_version(gun: str, role: str, version: str) -> Response:
    return _metadata(_service().by_version(gun, role, int(version)), current=False)


def current(gun: str, role: str) -> Response:
    return _metadata(_service().current(gun, role), current=True)


def token() -> Response:
    """``GET /auth/token`` of auth_mode builtin: a registry-style token service (basic
    credentials or none, ``service``, repeated ``scope``) granting requested ∩ allowed."""
    realm = _context().realm
    if realm is None:  # not builtin mode: the catch-all's answer
        _authorize(None, ALL)
        raise NoRoute()
    credentials = request.authorization if request.headers.get("Authorization") else None
    name = credentials.username if credentials and credentials.type == "basic" else None
    # failures count per client address and per user name, in the database (every worker)
    counted = [f"address:{request.remote_addr or ''}"] + ([f"user:{name}"] if name else [])
    retry_after = realm.failed_logins.retry_after(*counted)
    if retry_after:
        raise TooManyLogins(retry_after)
    user = ""
    if request.headers.get("Authorization"):
        password = credentials.password if credentials else None
        if not realm.authenticate(name or "", password or "") or not name:
            realm.failed_logins.hit(*counted)
            raise LoginFailed(log=f"failed login of {name!r}")
        user = name
    request_state().actor = user or "anonymous"
    if request.args.get("service") != realm.service:
        raise InvalidParameters(log=f"unknown service {request.args.get('service')!r}")
    scopes = [s for value in request.args.getlist("scope") for s in value.split(" ") if s]
    access = realm.granted(user, scopes)
    issued = realm.issue(user, access)
    granted = [f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access]
    request_state().audit = {"granted": granted}
    return _json(
        {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": issued.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )


def _requester() -> Requester:
    """Who is asking, for the audit log: the token's subject (or anonymous), address, id."""
    state = request_state()
    return Requester(state.actor or "anonymous", request.remote_addr or "", state.request_id)


def get_key(gun: str, role: str) -> Response:
    return _key(_service().server_key(gun, role, _requester()))


def rotate_key(gun: str, role: str) -> Response:
    return _key(_service().rotate_key(gun, role, _requester()))


def delete(gun: str) -> Response:
    request_state().audit = {"removed": _service().delete(gun, _requester())}
    return Response(b"", 200)


def upload(gun: str) -> Response:
    with ExitStack() as held:  # a large-upload slot, taken while reading, until stored
        files = _service().publish(gun, _read_parts(held), _requester())
    request_state().audit = {"stored": {file.role: file.version for file in files}}
    return Response(b"", 200)


def changefeed(gun: str | None = None) -> Response:
    records_text = request.args.get("records", "")
    try:
        records = int(records_text) if records_text else DEFAULT_RECORDS
        if not -_INT32 <= records < _INT32:
            raise ValueError("out of range")
    except ValueError as exc:
        raise InvalidParameters(f"invalid records parameter: {records_text!r}: {exc}") from exc
    records = max(-MAX_RECORDS, min(MAX_RECORDS, records or DEFAULT_RECORDS))
    change_text = request.args.get("change_id", "")
    try:
        change_id = int(change_text) if change_text else 0
        if not -_INT32 <= change_id < _INT32:
            raise ValueError("out of range")
    except ValueError as exc:
        raise InvalidParameters({}) from exc
    changes = _service().changes(gun, change_id, records)
    items = [
        {
            "ID": str(change.id),
            "CreatedAt": format_expires(change.created_at),
            "GUN": change.gun,
            "Version": change.version,
            "SHA256": change.sha256,
            "Category": change.category,
        }
        for change in changes
    ]
    return _json({"count": len(items), "records": items})


# -- uploads ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # a pure function; clients send the same few values
def _filename(disposition: str) -> str | None:
    """The raw ``filename`` parameter of a Content-Disposition value (no path stripping or
    percent-decoding: delegation names have slashes, spec 2.1)."""
    return parse_options_header(disposition)[1].get("filename")


@dataclass
class _BodyGuard:
    """Checks a body while it is read: each part within its role's size cap; past the
    large-upload threshold, the request holds an upload slot (in ``held``) to go on."""

    limits: Limits
    slots: UploadSlots
    held: ExitStack
    large: bool = False

    def received(self, total: int) -> None:
        if total > self.slots.threshold and not self.large:
            self.held.enter_context(self.slots.hold())
            self.large = True

    def part(self, filename: str, size: int) -> None:
        role = filename.removesuffix(".json")
        cap = self.limits.max_bytes(role)
        if size > cap:
            raise TooLarge(f"{role} is larger than {cap} bytes", log=f"{role} over {cap} bytes")


def _multipart_files(
    boundary: str, limit: int, max_parts: int, guard: _BodyGuard
) -> list[tuple[str, bytes]]:
    """(filename, body) of each part in order; nothing is read past ``limit`` bytes. A part
    without a file name is NO_FILENAME as soon as its headers are read."""
    reader = PartReader(boundary, max_parts)
    files: list[tuple[str, list[bytes]]] = []
    received = size = 0
    while not reader.closed:
        chunk = request.stream.read(_CHUNK)
        received += len(chunk)
        if received > limit:
            raise TooLarge(log=f"body over {limit} bytes")
        if not received:
            raise MalformedUpload(log="empty body")
        guard.received(received)
        for event in reader.parse(chunk):  # an empty chunk ends the body
            if isinstance(event, bytes):
                files[-1][1].append(event)
                size += len(event)
                guard.part(files[-1][0], size)
            elif event is not None:  # a new part's Content-Disposition
                filename = _filename(event)
                if not filename:
                    raise NoFilename(log=f"a part has no filename: {event!r}")
                files.append((filename, []))
                size = 0
    return [(name, b"".join(pieces)) for name, pieces in files]


def _read_parts(held: ExitStack) -> dict[str, Part]:
    """Multipart body -> parts by role, checked in order; the last part of a role wins.

    A body past the large-upload threshold takes an upload slot into ``held``."""
    settings = _settings()
    boundary = request.mimetype_params.get("boundary")
    if request.mimetype != "multipart/form-data" or not boundary:
        raise MalformedUpload(log=f"content type {request.content_type!r} is not multipart")
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise TooLarge(log=f"declared body of {request.content_length} bytes")
    limits = _service().limits
    guard = _BodyGuard(limits, _context().upload_slots, held)
    try:
        files = _multipart_files(boundary, settings.max_body_bytes, settings.max_parts, guard)
    except LimitReached as exc:
        raise TooLarge(log=f"multipart body: {exc}") from exc
    except MultipartError as exc:
        raise MalformedUpload(log=f"unreadable multipart body: {exc}") from exc
    parts: dict[str, Part] = {}
    for filename, data in files:
        part = Part.parse(filename, data, limits)
        if part.role != TIMESTAMP:  # the server always makes the timestamp itself
            parts[part.role] = part
    return parts


# -- routing ----------------------------------------------------------------------------------

Handler = Callable[..., Response]
PULL, PUSH_PULL, ALL, NO_AUTH = ("pull",), ("push", "pull"), ("*",), None
# (method, path, handler, needs_gun, token actions: spec 1.1; routes without a GUN need
# registry:catalog:*, None = never authenticated)
ROUTES: list[tuple[str, re.Pattern[str], Handler, bool, tuple[str, ...] | None]] = [
    (method, re.compile(pattern), handler, needs_gun, actions)
    for method, pattern, handler, needs_gun, actions in [
        ("GET", r"/v2/", ping, False, ALL),
        ("POST", _TUF, upload, True, PUSH_PULL),
        ("GET", _TUF + _ROLE + r"\.(?P<checksum>[0-9a-fA-F]{64})\.json", by_checksum, True, PULL),
        ("GET", _TUF + r"(?P<version>[0-9]+)\." + _ROLE + r"\.json", by_version, True, PULL),
        ("GET", _TUF + _ROLE + r"\.json", current, True, PULL),
        ("GET", _TUF + r"(?P<role>snapshot|timestamp)\.key", get_key, True, PUSH_PULL),
        ("POST", _TUF + r"(?P<role>snapshot|timestamp)\.key", rotate_key, True, ALL),
        ("DELETE", _TUF, delete, True, ALL),
        ("GET", rf"/v2/{_GUN}/_trust/changefeed", changefeed, True, PULL),
        ("GET", r"/v2/_trust/changefeed", changefeed, False, ALL),
        ("GET", r"/_notary_server/health", health, False, NO_AUTH),
        ("GET", r"/metrics", metrics, False, NO_AUTH),
        ("GET", r"/_notary_server/audit", audit, False, ALL),
        ("GET", r"/auth/token", token, False, NO_AUTH),
    ]
]
OPERATIONS = {
    upload: "UpdateTUF",
    by_checksum: "GetRoleByHash",
    by_version: "GetRoleByVersion",
    current: "GetRole",
    get_key: "GetKey",
    rotate_key: "RotateKey",
    delete: "DeleteTUF",
    changefeed: "Changefeed",
}


def clean_path(path: str) -> str:
    """Go's path.Clean, keeping a trailing slash, as the reference's router does."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


_GUN_PART = re.compile(r"/v2/(?P<gun>.*)/_trust/", re.DOTALL)


def _gun_part(path: str) -> str | None:
    """What a route would take as the GUN: the text between ``/v2/`` and the last
    ``/_trust/``."""
    match = _GUN_PART.match(path)
    return None if match is None else match["gun"]


def _refuse_unclean_gun(path: str, cleaned: str, raw_path: str) -> None:
    """Decision 21: a GUN with '.', '..' or empty segments, or an encoded '/', is refused
    rather than redirected, since the cleaned path names another repository."""
    gun = _gun_part(path)
    if gun is None:
        return
    raw_gun = raw_path[: raw_path.rfind("/_trust/")]
    if "%2f" in raw_gun.lower():
        raise InvalidGun("invalid repository name: contains an encoded '/'")
    if _gun_part(cleaned) != gun:
        raise InvalidGun("invalid repository name: has '.', '..' or empty path segments")


def _prefix_filter(gun: str, handler: Handler) -> None:
    prefixes = _settings().gun_prefixes
    if prefixes and not gun.startswith(prefixes):
        if handler is upload:
            raise InvalidGun(f"Require GUNs with prefix: [{' '.join(prefixes)}]")
        raise NoRoute()


def install(app: Flask) -> None:
    """Send every request to :func:`dispatch`: rules of the app itself (a blueprint's would be
    looked up on every request for its hooks). The app's ``everything`` converter must exist."""
    for rule, defaults in (("/", {"path": ""}), ("/<everything:path>", None)):
        app.add_url_rule(
            rule,
            view_func=dispatch,
            defaults=defaults,
            methods=METHODS,
            provide_automatic_options=False,
        )


def dispatch(path: str) -> Response:
    """Match the decoded path against the route table in order; the first match wins."""
    path = request.path
    cleaned = clean_path(path)
    environ = request.environ
    raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or path
    _refuse_unclean_gun(path, cleaned, raw_path.partition("?")[0])
    if cleaned != path:
        query = request.query_string.decode("latin-1")
        response = Response(b"", 301)
        response.headers["Location"] = cleaned + (f"?{query}" if query else "")
        return response
    method = "GET" if request.method == "HEAD" else request.method
    for route_method, pattern, handler, needs_gun, actions in ROUTES:
        match = pattern.fullmatch(path)
        if match is None or route_method != method:
            continue
        arguments = match.groupdict()
        state = request_state()
        state.operation = OPERATIONS.get(handler)
        if needs_gun:
            state.gun = arguments["gun"]
            _prefix_filter(arguments["gun"], handler)
        if actions is not None:
            _authorize(arguments["gun"] if needs_gun else None, actions)
        if needs_gun:
            check_gun(arguments["gun"])
        return handler(**arguments)
    _authorize(None, ALL)  # the catch-all needs registry:catalog:*, as the reference's
    raise NoRoute()


def _authorize(gun: str | None, actions: tuple[str, ...]) -> None:
    """Token auth (spec 1.9) when configured; a declared body over the cap is refused first."""
    token_auth = _context().auth
    if token_auth is None:
        return
    if isinstance(token_auth, RealmTokenAuth):
        token_auth = token_auth.for_host(request.host)
    declared = request.content_length
    if declared is not None and declared > _settings().max_body_bytes:
        raise TooLarge(log=f"declared body of {declared} bytes")
    request_state().actor = token_auth.authorize(
        request.headers.get("Authorization"), required_access(gun, actions)
    )


def render_error(error: ServerError) -> Response:
    return _send(rendering.error(error))
