"""Metadata reads rendered as WSGI parts: one rendering for the API's handlers and the fast
path (server/fastpath.py), so a response's status, headers and body are the same whichever
of them answers."""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.http import HTTP_STATUS_CODES, http_date, parse_etags, remove_entity_headers

from tufnotary.server.config import Settings
from tufnotary.server.errors import ServerError
from tufnotary.server.storage.metadata import StoredFile

GZIP_MIN_BYTES = 1400
"""Smaller bodies fit one TCP segment: compressing them gains nothing (and they vary not)."""
JSON = "application/json"


@dataclass(frozen=True)
class Rendered:
    """A response: status code, headers (Content-Length included) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTP_STATUS_CODES[self.status].upper()}"

    def not_modified(self) -> Rendered:
        """The 304 answer to a request whose ``If-None-Match`` matched (no entity headers)."""
        headers = list(self.headers)
        remove_entity_headers(headers)
        return Rendered(304, headers, b"")


def metadata(file: StoredFile, current: bool, settings: Settings) -> Rendered:
    """Stored bytes with their ETag (the checksum), Last-Modified and caching headers."""
    headers = [
        ("Content-Type", JSON),
        ("Content-Length", str(len(file.data))),
        ("ETag", f'"{file.sha256}"'),
        ("Last-Modified", http_date(file.created_at)),
    ]
    max_age = settings.cache_max_age_current if current else settings.cache_max_age_consistent
    if max_age > 0:
        value = f"public, max-age={max_age}, s-maxage={max_age}"
        headers.append(("Cache-Control", value + (", must-revalidate" if current else "")))
    else:
        headers += [("Cache-Control", "max-age=0, no-cache, no-store"), ("Pragma", "no-cache")]
    if len(file.data) >= GZIP_MIN_BYTES:  # the fast path may send it compressed
        headers.append(("Vary", "Accept-Encoding"))
    return Rendered(200, headers, file.data)


def error(refusal: ServerError) -> Rendered:
    """The error envelope of ``refusal`` with its status and headers."""
    body = refusal.body()
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *getattr(refusal, "headers", {}).items(),
    ]
    return Rendered(refusal.status, headers, body)


def not_modified(if_none_match: str | None, sha256: str) -> bool:
    """Whether an ``If-None-Match`` header names the file of this checksum (weak comparison,
    RFC 9110 13.1.2: the gzip-compressed representation carries ``W/"<sha256>"``)."""
    if not if_none_match:
        return False
    etags = parse_etags(if_none_match)
    return etags.star_tag or etags.contains_weak(sha256)
