"""The gunicorn worker of `tufnotary-server serve`: gevent, with deadlines for slow clients.

Each connection is a greenlet, so hundreds of idle or slow connections cost little memory and
no thread. Every connection must finish its TLS handshake within ``keepalive`` seconds, every
request head (the first one included: gunicorn bounds each head read by ``keepalive``) too, and
a request body within ``keepalive`` seconds plus one second per :data:`MIN_BODY_RATE` bytes;
a client that misses a deadline is disconnected. After each request the connection's greenlet
yields to the others, so busy keep-alive clients take turns. The loaded application is frozen
out of the garbage collector's full collections, and young collections wait for
:data:`YOUNG_OBJECTS` net new objects, more than one request keeps alive at a time.
"""

from __future__ import annotations

import functools
import gc
import importlib
import signal
import ssl
import time
import warnings
from collections.abc import Callable
from typing import Any

import gevent
from gevent.monkey import MonkeyPatchWarning
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

MIN_BODY_RATE = 64 * 1024  # bytes per second a client must at least send a request body at
YOUNG_OBJECTS = 50_000
"""Net new container objects that trigger a young collection (Python's default: 700)."""


class BodyTimeout(Exception):
    """The client did not send its request body before the deadline (not an OSError, which
    werkzeug would report as a disconnected client)."""


def tls_context(
    config: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """Gunicorn's ``ssl_context`` hook: the default context, with the handshake left to the
    worker (which bounds it) instead of gevent's server (which would wait forever)."""
    context = default_ssl_context_factory()
    context.wrap_socket = functools.partial(  # type: ignore[method-assign]
        context.wrap_socket, do_handshake_on_connect=False
    )
    return context


def default_exit_signals(_arbiter: Any, _worker: Any) -> None:
    """Gunicorn's ``post_fork`` hook: until the worker installs its own handlers, SIGTERM, SIGINT
    and SIGQUIT end it. The handlers inherited from the arbiter would queue the signal in the
    arbiter's copied state, lost in the worker: a worker still booting when the server was
    stopped kept running until the graceful timeout killed it."""
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)


class _DeadlineBody:
    """A request body that must arrive at :data:`MIN_BODY_RATE` after ``grace`` seconds:
    ``length`` bytes (or, chunked, what came so far plus one more chunk) by the deadline."""

    def __init__(self, body: Any, length: int | None, grace: float) -> None:
        self._body = body
        self._length = length
        self._start = time.monotonic() + grace
        self._received = 0
        self.expired = False

    def _bounded(self, read: Callable[..., bytes], *args: Any) -> bytes:
        expected = self._length if self._length is not None else self._received + MIN_BODY_RATE
        remaining = self._start + expected / MIN_BODY_RATE - time.monotonic()
        try:
            with gevent.Timeout(
                max(remaining, 0.0), BodyTimeout("request body arrived too slowly")
            ):
                data = read(*args)
        except BodyTimeout:
            self.expired = True
            raise
        self._received += len(data)
        return data

    def read(self, *args: Any) -> bytes:
        return self._bounded(self._body.read, *args)

    def readline(self, *args: Any) -> bytes:
        return self._bounded(self._body.readline, *args)

    def __iter__(self) -> _DeadlineBody:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class _CoalescingSocket:
    """The client socket while one response is written: gunicorn's header block is held back
    and sent with the first body write, so a small response is one TLS record and one system
    call instead of two. Any other use of the socket sends what is held first."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._held: bytes | None = None
        self._first = True

    def sendall(self, data: bytes) -> None:
        if self._first:
            self._first, self._held = False, bytes(data)
            return
        held, self._held = self._held, None
        self._sock.sendall(held + data if held else data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self._sock.sendall(held)

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._sock, name)


class DeadlineWorker(GeventWorker):
    """gunicorn's gevent worker with deadlines for the TLS handshake and the request body."""

    def patch(self) -> None:
        # The arbiter imported ssl before forking (gunicorn always does); the only module that
        # keeps unpatched ssl names is PyJWT's JWKS client, which the server never uses.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MonkeyPatchWarning)
            super().patch()
        blocking_psycopg_waits()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # The loaded application (modules, routes, keys, pools: ~140,000 objects) lives as long
        # as the worker; frozen, it is out of the cyclic collector's reach, so a full collection
        # walks only what requests left behind (one took ~200 ms on a busy machine otherwise).
        gc.collect()
        gc.freeze()
        # A publish's decoded documents (thousands of containers, freed when it ends) would
        # trigger a young collection walking them while still alive, on nearly every publish.
        gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])

    def run(self) -> None:
        try:
            super().run()
        finally:  # the exiting interpreter's last collections must see everything again
            gc.unfreeze()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if isinstance(client, ssl.SSLSocket):
            try:
                with gevent.Timeout(self.cfg.keepalive):
                    client.do_handshake()
            except (gevent.Timeout, OSError):  # too slow, or not TLS at all
                util.close(client)
                return
        super().handle(listener, client, addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        length = getattr(req.body.reader, "length", None)
        body = None
        if length != 0:  # a known length, or chunked
            body = req.body = _DeadlineBody(req.body, length, self.cfg.keepalive)
        coalescing = _CoalescingSocket(sock)
        try:
            super().handle_request(listener_name, req, coalescing, addr)
        finally:
            coalescing.flush()
            # Let the other connections have a turn: a keep-alive client whose next request is
            # already buffered would otherwise be served again and again while they wait (the
            # cause of a p99 of 300-1000 ms under wrk, against a median of 1-10 ms).
            gevent.sleep(0)
        if body is not None and body.expired:
            raise StopIteration("request body too slow")  # the rest of it is not read: close


def blocking_psycopg_waits() -> None:
    """Make psycopg wait for PostgreSQL with its C wait in the worker, whatever the import order.

    psycopg picks its wait function when first imported: the C wait if nothing patched
    ``select`` yet (the arbiter's start-up checks import it before the fork), else a
    gevent-friendly ``poll``. The C wait blocks the worker for each round trip (about 0.1 ms to
    a nearby database; a transaction then never yields halfway), the ``poll`` wait lets other
    greenlets run meanwhile but measured 4-5 times fewer reads per second and a higher p99
    (bench/README.md, "Publishes"). So the C wait it is, when psycopg's C module is installed.
    """
    waiting = importlib.import_module("psycopg.waiting")
    wait_c = getattr(waiting, "wait_c", None)
    if wait_c is not None:
        waiting.wait = wait_c
