"""HTTP to a notary-compatible server: URLs, size caps, error envelopes (spec 1, 4.3)."""

from __future__ import annotations

import json
import os
import re
import secrets
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3

from tufnotary.client.errors import ClientError, ErrorContext
from tufnotary.metadata.keys import KEY_CREATED_HEADER, Key

MiB = 1024 * 1024
TIMESTAMP_CAP = 1 * MiB
ROOT_CAP = 100 * MiB
KEY_CAP = 256 * 1024
CHANGEFEED_CAP = 16 * MiB
ERROR_CAP = 1024
DEFAULT_TIMEOUT = 30.0
_CHUNK = 64 * 1024


class RemoteError(ClientError):
    """The server could not be reached or answered something other than what was asked."""

    hint = "{error}: check --server ({context.server})"


class ServerUnavailable(RemoteError):
    """No usable answer came from the server: the kinds below. Nothing was read or changed."""


class ServerUnreachable(ServerUnavailable):
    """No connection: refused, unknown host, reset, or a URL that is not one."""

    hint = "{error}; check --server ({context.server}) and that the server is running"

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"cannot reach {where}: {reason}")
        self.where, self.reason = where, reason


class ServerTimeout(ServerUnavailable):
    """The server did not answer, or stopped sending, within the timeout."""

    hint = "{error}; check that it is up, or allow it longer with --timeout"

    def __init__(self, where: str, seconds: float) -> None:
        super().__init__(f"{where} did not answer within {seconds:g} seconds")
        self.where, self.seconds = where, seconds


class TLSError(ServerUnavailable):
    """The TLS handshake failed, e.g. the server's certificate is not from a trusted CA."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"TLS connection to {where} failed: {reason}")
        self.where, self.reason = where, reason

    def explain(self, context: ErrorContext) -> str:
        if context.tlscacert:
            return (
                f"{self}; check that {context.tlscacert} holds the CA that issued its certificate"
            )
        return f"{self}; pass the CA that issued the server's certificate with --tlscacert"


class ServerError(ServerUnavailable):
    """5xx: the server (or a proxy in front of it) failed to answer the request."""

    hint = "{error}; try again later, or see the server's log"

    def __init__(self, where: str, status: int, message: str) -> None:
        super().__init__(f"{where} failed to answer ({status}): {message}".rstrip(": "))
        self.where, self.status, self.message = where, status, message


class CAFileError(RemoteError):
    """The CA bundle given to verify the server's certificate cannot be loaded."""

    hint = "{error}: --tlscacert (or TUFNOTARY_TLSCACERT) must name a PEM file of CA certificates"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"the CA file {path} cannot be used: {reason}")
        self.path, self.reason = path, reason


class NotFoundError(RemoteError):
    """404: the repository, role, version or checksum does not exist on the server."""

    hint = "{error}: check the GUN and --server"


class OversizedError(RemoteError):
    """The server sent more bytes than the referencing metadata allows."""


class RejectedError(RemoteError):
    """The server refused the request (400 and others) with its error envelope.

    ``method`` is the refused request's; a refused write (POST, DELETE) changed nothing.
    """

    def __init__(
        self, status: int, code: str, message: str, detail: Any = None, method: str = "GET"
    ) -> None:
        text = f"server rejected the request ({status} {code}): {message}"
        if isinstance(detail, dict) and isinstance(detail.get("Error"), dict):
            text += f": {detail.get('Name', '')}: {detail['Error'].get('Msg', '')}"
        elif isinstance(detail, str) and detail:
            text += f": {detail}"
        super().__init__(text)
        self.status, self.code, self.detail, self.method = status, code, detail, method

    def explain(self, context: ErrorContext) -> str:
        written = self.method not in ("GET", "HEAD")
        return f"{self}; nothing was changed on the server" if written else str(self)


class UnauthorizedError(RejectedError):
    """401: no credentials, a token the server refuses, or one lacking the needed access."""

    def __init__(
        self, challenge: Mapping[str, str], detail: Any = None, method: str = "GET"
    ) -> None:
        scope, error = challenge.get("scope", ""), challenge.get("error", "")
        if error == "insufficient_scope":
            reason = f"the credentials do not grant {scope}"
        elif error:
            reason = f"the server refused the token ({error}) for {scope}"
        else:
            reason = f"authentication required for {scope}"
        super().__init__(401, "UNAUTHORIZED", reason, detail, method)


_CHALLENGE_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (requests and urllib3 nest the real error in ``reason``/args)."""
    chain = [exc]
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException) or inner in chain:
            return chain
        chain.append(inner)
        exc = inner


def _reason(exc: BaseException) -> str:
    """The root cause of a connection error, without urllib3's wrapping text."""
    return re.sub(r"^\w+\(host=[^)]*\): ", "", str(_causes(exc)[-1]))


def parse_bearer_challenge(header: str) -> dict[str, str] | None:
    """The parameters of a ``WWW-Authenticate: Bearer ...`` header, or None if not Bearer."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return {
        name.lower(): re.sub(r"\\(.)", r"\1", value)
        for name, value in _CHALLENGE_PARAM.findall(rest)
    }


class ForeignRealmError(RemoteError):
    """The token realm is on another host than the server: credentials are not sent there."""


@dataclass(frozen=True)
class Remote:
    """One trust server. ``verify`` is a CA bundle path, True (system CAs) or False.

    Token auth (spec 4.7): a static bearer ``token`` is sent as is; otherwise a 401 Bearer
    challenge is answered by fetching a token from its realm (with ``username``/``password``
    as HTTP basic credentials when given, anonymously if not) and retrying once. Credentials
    go only to a realm on the server's host or on one of ``realm_hosts`` (``*``: any host).
    """

    url: str
    verify: str | bool = True
    timeout: float = DEFAULT_TIMEOUT
    session: requests.Session | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    realm_hosts: tuple[str, ...] = ()
    _bearer: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def _session(self) -> requests.Session:
        return self.session or requests.Session()

    def _url(self, gun: str, name: str) -> str:
        return f"{self.url.rstrip('/')}/v2/{quote(gun, safe='/:@')}/_trust/tuf/{name}"

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        response = self._send(method, url, **kwargs)
        if response.status_code != 401 or self.token:
            return response
        challenge = parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None or not challenge.get("realm"):
            return response
        response.close()
        self._bearer["token"] = self._fetch_token(challenge)
        return self._send(method, url, **kwargs)

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        token = self.token or self._bearer.get("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._check_ca_file(url)
        with self._talking(self._where):
            return self._session().request(
                method,
                url,
                verify=self.verify,
                timeout=self.timeout,
                stream=True,
                headers=headers,
                **kwargs,
            )

    @contextmanager
    def _talking(self, where: str) -> Iterator[None]:
        """Turn what requests and urllib3 raise while talking to ``where`` into typed errors."""
        try:
            yield
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            causes = _causes(exc)
            timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
            refused = urllib3.exceptions.NewConnectionError  # a TimeoutError subclass, oddly
            if any(isinstance(c, timeouts) and not isinstance(c, refused) for c in causes):
                raise ServerTimeout(where, self.timeout) from exc
            if any(isinstance(cause, ssl.SSLError) for cause in causes):
                raise TLSError(where, _reason(exc)) from exc
            raise ServerUnreachable(where, _reason(exc)) from exc

    def _check_ca_file(self, url: str) -> None:
        """For an https ``url``: CAFileError unless ``verify`` names a CA bundle (or directory)
        TLS can load. Checked first, so a bad file is never mistaken for a server problem."""
        path = self.verify
        if not url.lower().startswith("https:") or not isinstance(path, str):
            return
        try:
            if os.path.isdir(path):
                ssl.create_default_context(capath=path)
            else:
                ssl.create_default_context(cafile=path)
        except (ssl.SSLError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CAFileError(path, reason) from exc

    def _fetch_token(self, challenge: Mapping[str, str]) -> str:
        """A bearer token from the challenge's realm for its service and scopes."""
        realm = challenge["realm"]
        params = [("service", challenge.get("service", ""))]
        params += [("scope", scope) for scope in challenge.get("scope", "").split() if scope]
        if self.username:
            params.append(("account", self.username))
            realm_host = urlsplit(realm).hostname or ""
            allowed = {urlsplit(self.url).hostname, *(h.lower() for h in self.realm_hosts)}
            if realm_host not in allowed and "*" not in allowed:
                raise ForeignRealmError(
                    f"the server {self.url} sends you to the token service {realm} on another "
                    f"host; not sending your credentials there (allow it with "
                    f"--token-realm-host {realm_host})"
                )
        auth = (self.username, self.password or "") if self.username else None
        where = f"the token service {realm}"
        self._check_ca_file(realm)
        with self._talking(where):
            response = self._session().get(
                realm, params=params, auth=auth, verify=self.verify, timeout=self.timeout
            )
        if response.status_code >= 500:
            raise ServerError(where, response.status_code, response.text[:200].strip())
        if response.status_code != 200:
            text = response.text[:200].strip()
            raise RejectedError(
                response.status_code,
                "TOKEN",
                f"the token service {realm} refused the credentials: {text}",
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RemoteError(f"the token service {realm} answered without a token")
        return token

    @property
    def _where(self) -> str:
        return f"the trust server {self.url}"

    def _raise_for(self, response: requests.Response) -> None:
        if response.status_code == 200:
            return
        with self._talking(self._where):
            body = response.raw.read(ERROR_CAP, decode_content=True)
        response.close()
        method = str(response.request.method)
        if response.status_code == 404:
            raise NotFoundError(f"not found on the trust server: {response.url}")
        challenge = parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
        if response.status_code == 401 and challenge is not None:
            try:
                detail = json.loads(body)["errors"][0].get("detail")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                detail = None
            raise UnauthorizedError(challenge, detail, method)
        try:
            error = json.loads(body)["errors"][0]
            code, message = str(error["code"]), str(error.get("message", ""))
        except (ValueError, KeyError, IndexError, TypeError):
            error, code, message = {}, "", body[:200].decode("utf-8", "replace").strip()
        if response.status_code >= 500:
            raise ServerError(self._where, response.status_code, message)
        raise RejectedError(response.status_code, code, message, error.get("detail"), method)

    def fetch(self, gun: str, name: str, max_bytes: int) -> bytes:
        """GET ``<name>.json``; OversizedError as soon as more than ``max_bytes`` arrive."""
        response = self._request("GET", self._url(gun, f"{name}.json"))
        with response:
            self._raise_for(response)
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise OversizedError(f"{name}: server announces {declared} bytes, over {max_bytes}")
            data = bytearray()
            with self._talking(self._where):
                for chunk in response.iter_content(_CHUNK):
                    data.extend(chunk)
                    if len(data) > max_bytes:
                        raise OversizedError(f"{name}: server sent more than {max_bytes} bytes")
        return bytes(data)

    def server_key(self, gun: str, role: str, *, rotate: bool = False) -> Key:
        """GET (or, to rotate, POST) ``<role>.key``: a key the server holds for ``role``."""
        return self.server_key_created(gun, role, rotate=rotate)[0]

    def server_key_created(
        self, gun: str, role: str, *, rotate: bool = False
    ) -> tuple[Key, datetime | None]:
        """:meth:`server_key`, and when the server made the key if it says so (tufnotary
        servers do, in KEY_CREATED_HEADER)."""
        url = self._url(gun, f"{role}.key")
        response = self._request("POST" if rotate else "GET", url)
        with response:
            self._raise_for(response)
            with self._talking(self._where):
                body = response.raw.read(KEY_CAP + 1, decode_content=True)
            created = response.headers.get(KEY_CREATED_HEADER)
        if len(body) > KEY_CAP:
            raise OversizedError(f"{role}.key: more than {KEY_CAP} bytes")
        try:
            key = Key.from_dict(json.loads(body))
        except ValueError as exc:
            raise RemoteError(f"{role}.key: the server sent an unreadable key: {exc}") from exc
        return key, _utc_time(created)

    def changefeed(self, change_id: str, records: int) -> list[dict[str, Any]]:
        """GET ``/v2/_trust/changefeed``: up to ``records`` changes to any GUN after
        ``change_id`` ("0": from the start), oldest first (spec 1.8)."""
        url = f"{self.url.rstrip('/')}/v2/_trust/changefeed"
        params = {"change_id": change_id, "records": str(records)}
        with self._request("GET", url, params=params) as response:
            self._raise_for(response)
            with self._talking(self._where):
                body = response.raw.read(CHANGEFEED_CAP + 1, decode_content=True)
        if len(body) > CHANGEFEED_CAP:
            raise OversizedError(f"changefeed: more than {CHANGEFEED_CAP} bytes")
        try:
            records_found = json.loads(body)["records"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteError(f"the server sent an unreadable changefeed: {exc}") from exc
        if not isinstance(records_found, list):
            raise RemoteError("the server sent an unreadable changefeed: records is no list")
        return records_found

    def upload(self, gun: str, files: Mapping[str, bytes]) -> None:
        """POST every file in one multipart request, as the Go client does."""
        boundary = secrets.token_hex(30)
        part = 'Content-Disposition: form-data; name="files"; filename="{}"\r\n'
        body = b"".join(
            f"--{boundary}\r\n{part.format(role)}"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
            for role, data in files.items()
        )
        body += f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        with self._request("POST", self._url(gun, ""), data=body, headers=headers) as response:
            self._raise_for(response)

    def delete(self, gun: str) -> None:
        """DELETE the whole trust collection of ``gun`` on the server."""
        with self._request("DELETE", self._url(gun, "")) as response:
            self._raise_for(response)


def _utc_time(text: str | None) -> datetime | None:
    """An RFC 3339 time with a zone, as UTC; None if absent or unreadable."""
    try:
        when = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return when.astimezone(UTC) if when and when.tzinfo else None
