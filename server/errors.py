"""The error envelope and codes of spec 1.10: every refusal the server makes is one of these."""

from __future__ import annotations

import json
from typing import Any, ClassVar

NO_DETAIL: Any = object()
"""The envelope has no ``detail`` member (catch-all 404, malformed uploads...)."""

MAX_MESSAGE = 256
"""Typed ``Msg`` texts are cut (in UTF-8 bytes) so that every error body stays under the Go
client's 1 KiB and echoes little of the client's input (decision 18)."""

MAX_ECHO = 200
"""A ``detail`` string, which may repeat client input (part names, parameters), is cut to this
many UTF-8 bytes."""


CODES: dict[str, tuple[int, str]] = {
    # code: (HTTP status, fixed message); the reference's codes first (spec 1.10)
    "UNKNOWN": (500, "unknown error"),
    "UNAUTHORIZED": (401, "authentication required"),
    "METADATA_NOT_FOUND": (404, "You have requested metadata that does not exist."),
    "INVALID_UPDATE": (400, "Update sent by the client is invalid."),
    "VERSION": (400, "A newer version of metadata is already available."),
    "MALFORMED_UPLOAD": (400, "The body of your request is malformed."),
    "NO_FILENAME": (400, "No file/role name provided."),
    "INVALID_ROLE": (400, "The role you are attempting to operate on is invalid."),
    "MALFORMED_JSON": (400, "JSON sent by the client could not be parsed by the server"),
    "INVALID_GUN": (400, "The server does not support actions on images of this name."),
    "INVALID_PARAMETERS": (400, "The parameters provided are not valid."),
    "UPDATING": (500, "An error has occurred while updating the TUF repository."),
    # this server's own: refused by policy or limits, or the database is unreachable
    "DENIED": (403, "You are not allowed to do this."),
    "TOO_LARGE": (413, "The request is larger than this server accepts."),
    "TIMEOUT": (408, "The request body arrived too slowly; send it again faster."),
    "TOOMANYREQUESTS": (429, "too many requests, try again later"),
    "UNAVAILABLE": (503, "The trust server's storage is unavailable; try again later."),
}
"""Every code a refusal may carry, with its HTTP status and default message."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (never inside a character), "..." marking
    a cut."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."


class ServerError(Exception):
    """A refusal rendered as ``{"errors":[{"code","message","detail"?}]}`` + newline.

    A subclass names its code (``class X(ServerError, code="VERSION")``) and so takes its status
    and message from :data:`CODES`; a ``message`` of its own replaces the code's.
    """

    code = "UNKNOWN"
    status, message = CODES[code]
    default_detail: ClassVar[Any] = NO_DETAIL

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
            cls.status, message = CODES[code]
            cls.message = cls.__dict__.get("message", message)

    def __init__(self, detail: Any = NO_DETAIL, log: str | None = None) -> None:
        self.detail = self.default_detail if detail is NO_DETAIL else detail
        if isinstance(self.detail, str):
            self.detail = clip(self.detail, MAX_ECHO)
        super().__init__(log or self.message)

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not NO_DETAIL:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}, separators=(",", ":")).encode() + b"\n"


def _refusal(name: str, code: str) -> type[ServerError]:
    """A refusal that is only its code (with that code's status and message)."""
    return type(name, (ServerError,), {"__module__": __name__, "__qualname__": name}, code=code)


class NoRoute(ServerError, code="METADATA_NOT_FOUND"):
    """No route matched: the catch-all 404, without ``detail``."""


class MetadataNotFound(NoRoute):
    """A lookup found nothing."""

    default_detail: ClassVar[Any] = {}


class VersionConflictError(ServerError, code="VERSION"):
    """The stored version is newer than (or as new as) the upload."""

    default_detail: ClassVar[Any] = {}


class InvalidUpdate(ServerError, code="INVALID_UPDATE"):
    """An upload that does not validate (see :class:`ValidationFailed` for the typed kinds)."""


class ValidationFailed(InvalidUpdate):
    """One of the reference's five typed validation errors, which the Go client parses."""

    def __init__(self, name: str, msg: str, missing: str | None = None) -> None:
        msg = clip(msg, MAX_MESSAGE)
        error = {"Missing": missing, "Msg": msg} if missing else {"Msg": msg}
        super().__init__({"Name": name, "Error": error}, log=f"{name}: {msg}")


def bad_root(msg: str) -> ValidationFailed:
    return ValidationFailed("ErrBadRoot", msg)


def bad_targets(msg: str) -> ValidationFailed:
    return ValidationFailed("ErrBadTargets", msg)


def bad_snapshot(msg: str) -> ValidationFailed:
    return ValidationFailed("ErrBadSnapshot", msg)


def invalid(msg: str) -> ValidationFailed:
    return ValidationFailed("ErrValidation", msg)


MalformedUpload = _refusal("MalformedUpload", "MALFORMED_UPLOAD")
NoFilename = _refusal("NoFilename", "NO_FILENAME")
InvalidRole = _refusal("InvalidRole", "INVALID_ROLE")
MalformedJSON = _refusal("MalformedJSON", "MALFORMED_JSON")
InvalidGun = _refusal("InvalidGun", "INVALID_GUN")
InvalidParameters = _refusal("InvalidParameters", "INVALID_PARAMETERS")
UpdateFailed = _refusal("UpdateFailed", "UPDATING")
Forbidden = _refusal("Forbidden", "DENIED")
TooLarge = _refusal("TooLarge", "TOO_LARGE")
ClientTooSlow = _refusal("ClientTooSlow", "TIMEOUT")  # the worker then closes the connection
Unavailable = _refusal("Unavailable", "UNAVAILABLE")  # the database: retrying later may work


class UploadsBusy(ServerError, code="UNAVAILABLE"):
    """Every large-upload slot is taken (max_concurrent_large_uploads): retry later."""

    message = "The server is busy with other large uploads; try again later."

    def __init__(self, retry_after: int) -> None:
        super().__init__(log="no free large-upload slot")
        self.headers = {"Retry-After": str(retry_after)}


class LoginFailed(ServerError, code="UNAUTHORIZED"):
    """Token endpoint (auth_mode builtin): unknown user or wrong password, indistinguishably."""

    message = "wrong user name or password"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Basic realm="tufnotary"'}


class MetricsUnauthorized(ServerError, code="UNAUTHORIZED"):
    """``/metrics`` with ``metrics_token`` set, without that bearer token."""

    message = "metrics need the configured bearer token"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="metrics"'}


class TooManyRequests(ServerError, code="TOOMANYREQUESTS"):
    """A rate limit is reached; ``Retry-After`` says in how many seconds to try again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(log=f"{self.message}: retry after {retry_after}s")
        self.headers = {"Retry-After": str(retry_after)}


class TooManyLogins(TooManyRequests):
    """Token endpoint: too many failed logins of this user or from this address."""

    message = "too many failed logins, try again later"


class TooManyKeys(TooManyRequests):
    """``GET role.key``: this client created too many server keys lately."""

    message = "too many new server keys from this client, try again later"


class NoServerKey(ServerError, code="UNKNOWN"):
    """key_backend 'uri': no registered key is left to hand out for the GUN's role."""

    message = "The server has no key to hand out for this role: its operator must register one."
