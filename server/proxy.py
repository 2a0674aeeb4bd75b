"""The client address behind trusted reverse proxies (settings ``trusted_proxies`` and
``forwarded_header``).

With ``trusted_proxies = N`` the N-th address from the right of ``X-Forwarded-For`` (or of the
``for=`` parameters of RFC 7239 ``Forwarded``) replaces ``REMOTE_ADDR``: each trusted proxy
appends the address it received the request from, so entries further left are whatever the
client sent and are not believed. A request with fewer entries keeps its socket address.
Everything that depends on the client address (the failed-login and key-creation limits,
audit records, the access log, the loopback check of the audit endpoint) sees the result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.http import parse_list_header
from werkzeug.middleware.proxy_fix import ProxyFix

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_NODE_PORT = re.compile(r"^\[(?P<v6>[^\]]*)\](?::\w+)?$|^(?P<v4>[^:]*):\w+$")


def trust_proxies(app: WSGIApplication, hops: int, header: str) -> WSGIApplication:
    """``app`` seeing the client address that ``hops`` proxies forwarded in ``header``."""
    if hops == 0:
        return app
    if header == "forwarded":
        return ForwardedFor(app, hops)
    return ProxyFix(app, x_for=hops, x_proto=0, x_host=0, x_port=0, x_prefix=0)


def forwarded_for(value: str) -> list[str]:
    """The node of each element's ``for=`` parameter of a ``Forwarded`` header, without brackets
    or port ("" for an element without one)."""
    nodes = []
    for element in parse_list_header(value):
        node = ""
        for pair in element.split(";"):
            name, _, text = pair.partition("=")
            if name.strip().lower() == "for":
                node = text.strip().strip('"')
        match = _NODE_PORT.match(node)
        nodes.append(match["v6"] or match["v4"] if match else node)
    return nodes


class ForwardedFor:
    """WSGI middleware: ``REMOTE_ADDR`` from RFC 7239 ``Forwarded``, trusting ``hops`` proxies."""

    def __init__(self, app: WSGIApplication, hops: int) -> None:
        self.app, self.hops = app, hops

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        nodes = forwarded_for(environ.get("HTTP_FORWARDED", ""))
        if len(nodes) >= self.hops and nodes[-self.hops]:
            environ["REMOTE_ADDR"] = nodes[-self.hops]
        return self.app(environ, start_response)
