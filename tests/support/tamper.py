"""A trust server for client tests that serves whatever a test puts in it, and misbehaves on cue.

``TrustServer`` answers ``GET /v2/<gun>/_trust/tuf/<name>.json`` from a dict keyed by
``<name>`` (``timestamp``, ``snapshot.<sha256 hex>``, ``2.root``...) over plain HTTP on
127.0.0.1; a hook registered for a name replaces the answer (endless stream, lying
Content-Length). ``Repository`` signs every role itself, timestamp included, so a test
controls every byte a client sees.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from support.repo import RepoBuilder, root_certificate, signed_bytes
from tufnotary.client.remote import Remote
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    Envelope,
    FileMeta,
    RoleKeys,
    Timestamp,
)
from tufnotary.metadata.signing import PrivateKey

FAR = "2100-01-01T00:00:00Z"
"""Fixed expiry, so documents of different versions have the same length."""
PAST = "2001-01-01T00:00:00Z"

Hook = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        trust = self.server.trust
        name = self.path.split("/_trust/tuf/", 1)[-1].removesuffix(".json")
        trust.requests.append(name)
        hook = trust.hooks.get(name)
        if hook is not None:
            self.close_connection = True
            hook(self)
            return
        data = trust.files.get(name)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, trust: TrustServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.trust = trust


class TrustServer:
    """Serves ``files`` (by name without ``.json``) for any GUN; records what was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hooks: dict[str, Hook] = {}
        self.requests: list[str] = []
        self._http = _Server(self)
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @contextmanager
    def running(self) -> Iterator[TrustServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._http.shutdown()
            self._http.server_close()

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def remote(self) -> Remote:
        return Remote(self.url, verify=False, timeout=10)

    def serve(self, documents: Mapping[str, bytes]) -> None:
        """Serve each role as current, by checksum and, for roots, by version."""
        for role, data in documents.items():
            self.files[role] = data
            self.files[f"{role}.{hashlib.sha256(data).hexdigest()}"] = data
            if role == ROOT:
                self.files[f"{Envelope.from_bytes(data).version}.{ROOT}"] = data


class Endless:
    """A hook streaming zeros without Content-Length until the client hangs up (or ``limit``)."""

    def __init__(self, limit: int = 1 << 30) -> None:
        self.limit = limit
        self.sent = 0
        self.done = threading.Event()

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        block = b"0" * 65536
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            while self.sent < self.limit:
                handler.wfile.write(block)
                self.sent += len(block)
        except OSError:
            pass
        finally:
            self.done.set()


class Stalled:
    """A hook that sends nothing until ``release`` is set (at the latest after ``limit`` s)."""

    def __init__(self, limit: float = 30.0) -> None:
        self.limit = limit
        self.release = threading.Event()

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        self.release.wait(self.limit)


def failing(status: int) -> Hook:
    """A hook that answers ``status`` with an empty body (e.g. 503 from a proxy)."""

    def hook(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return hook


def announcing(length: int, body: bytes) -> Hook:
    """A hook that declares ``length`` bytes in Content-Length and sends ``body``."""

    def hook(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        with suppress(OSError):
            handler.wfile.write(body)

    return hook


class Repository:
    """A ``RepoBuilder`` plus a timestamp key: every role signed here and served by ``server``."""

    def __init__(self, server: TrustServer, gun: str) -> None:
        self.server = server
        self.timestamp_key = PrivateKey.generate()
        self.builder = RepoBuilder(gun, self.timestamp_key.public)
        self.timestamp = Timestamp(0, FAR)
        self.builder.root.expires = self.builder.snapshot.expires = FAR
        self.builder.targets[TARGETS].expires = FAR

    @property
    def root(self) -> bytes:
        return self.builder.files[ROOT]

    def add_delegation(self, name: str, paths: list[str], threshold: int = 1) -> PrivateKey:
        key = self.builder.add_delegation(name, paths, threshold)
        self.builder.targets[name].expires = FAR
        return key

    def publish(self, *roles: str) -> dict[str, bytes]:
        """Sign root (the first time), the given targets roles, snapshot and timestamp; serve."""
        builder = self.builder
        if ROOT not in builder.files:
            builder.root_bytes()
        for role in roles:
            builder.targets_bytes(role)
        return self.publish_snapshot()

    def publish_snapshot(self) -> dict[str, bytes]:
        """A new snapshot of ``builder.files`` as they are, and a timestamp for it; serve."""
        snapshot = self.builder.snapshot_bytes()
        documents = {
            **self.builder.files,
            SNAPSHOT: snapshot,
            TIMESTAMP: self.sign_timestamp(snapshot),
        }
        self.server.serve(documents)
        return documents

    def sign_timestamp(self, snapshot: bytes) -> bytes:
        """The next timestamp version, listing ``snapshot``."""
        self.timestamp.version += 1
        self.timestamp.meta = {SNAPSHOT: FileMeta.of(snapshot)}
        return signed_bytes(self.timestamp, (self.timestamp_key, None))

    def rotate_root_key(self) -> None:
        """Serve root version + 1 with a new root key, signed by the old and the new key."""
        builder = self.builder
        old_key, old_cert = builder.root_key, builder.root_cert
        builder.root_key = PrivateKey.generate()
        builder.root_cert = Key.from_certificates([root_certificate(builder.root_key, builder.gun)])
        del builder.root.keys[old_cert.key_id]
        self._set_role_key(ROOT, builder.root_cert)
        self.server.serve({ROOT: builder.root_bytes((old_key, old_cert.key_id))})

    def rotate_timestamp_key(self) -> None:
        """Serve root version + 1 with a new timestamp key (the owner recovering)."""
        del self.builder.root.keys[self.timestamp_key.public.key_id]
        self.timestamp_key = PrivateKey.generate()
        self._set_role_key(TIMESTAMP, self.timestamp_key.public)
        self.server.serve({ROOT: self.builder.root_bytes()})

    def _set_role_key(self, role: str, key: Key) -> None:
        root = self.builder.root
        root.keys[key.key_id] = key
        root.roles[role] = RoleKeys([key.key_id], 1)
        root.version += 1


class MemoryCache:
    """An in-memory ``MetadataCache``."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.times: dict[tuple[str, str], datetime] = {}

    def read_metadata(self, gun: str, role: str) -> bytes | None:
        return self.files.get((gun, role))

    def write_metadata(self, gun: str, role: str, data: bytes) -> None:
        self.files[(gun, role)] = data
        self.times[(gun, role)] = datetime.now(UTC)

    def metadata_time(self, gun: str, role: str) -> datetime | None:
        return self.times.get((gun, role))
