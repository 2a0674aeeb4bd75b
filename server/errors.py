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


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (never inside a character), "..." marking
    a cut."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."


class ServerError(Exception):
    """A refusal rendered as ``{"errors":[{"code","message","detail"?}]}`` + newline."""

    code = "UNKNOWN"
    status = 500
    message = "unknown error"
    default_detail: ClassVar[Any] = NO_DETAIL

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


class NoRoute(ServerError):
    """No route matched: the catch-all 404, without ``detail``."""

    code, status = "METADATA_NOT_FOUND", 404
    message = "You have requested metadata that does not exist."


class MetadataNotFound(NoRoute):
    """A lookup found nothing."""

    default_detail: ClassVar[Any] = {}


class InvalidUpdate(ServerError):
    code, status, message = "INVALID_UPDATE", 400, "Update sent by the client is invalid."


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


class VersionConflictError(ServerError):
    code, status = "VERSION", 400
    message = "A newer version of metadata is already available."
    default_detail: ClassVar[Any] = {}


class MalformedUpload(ServerError):
    code, status, message = "MALFORMED_UPLOAD", 400, "The body of your request is malformed."


class NoFilename(ServerError):
    code, status, message = "NO_FILENAME", 400, "No file/role name provided."


class InvalidRole(ServerError):
    code, status = "INVALID_ROLE", 400
    message = "The role you are attempting to operate on is invalid."


class MalformedJSON(ServerError):
    code, status = "MALFORMED_JSON", 400
    message = "JSON sent by the client could not be parsed by the server"


class InvalidGun(ServerError):
    code, status = "INVALID_GUN", 400
    message = "The server does not support actions on images of this name."


class InvalidParameters(ServerError):
    code, status, message = "INVALID_PARAMETERS", 400, "The parameters provided are not valid."


class Forbidden(ServerError):
    code, status = "DENIED", 403
    message = "You are not allowed to do this."


class TooLarge(ServerError):
    code, status = "TOO_LARGE", 413
    message = "The request is larger than this server accepts."


class UpdateFailed(ServerError):
    code, status = "UPDATING", 500
    message = "An error has occurred while updating the TUF repository."


class Unavailable(ServerError):
    """The database cannot be reached: retrying later may work."""

    code, status = "UNAVAILABLE", 503
    message = "The trust server's storage is unavailable; try again later."


class UploadsBusy(ServerError):
    """Every large-upload slot is taken (max_concurrent_large_uploads): retry later."""

    code, status = "UNAVAILABLE", 503
    message = "The server is busy with other large uploads; try again later."

    def __init__(self, retry_after: int) -> None:
        super().__init__(log="no free large-upload slot")
        self.headers = {"Retry-After": str(retry_after)}


class LoginFailed(ServerError):
    """Token endpoint (auth_mode builtin): unknown user or wrong password, indistinguishably."""

    code, status, message = "UNAUTHORIZED", 401, "wrong user name or password"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Basic realm="tufnotary"'}


class MetricsUnauthorized(ServerError):
    """``/metrics`` with ``metrics_token`` set, without that bearer token."""

    code, status, message = "UNAUTHORIZED", 401, "metrics need the configured bearer token"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="metrics"'}


class TooManyRequests(ServerError):
    """A rate limit is reached; ``Retry-After`` says in how many seconds to try again."""

    code, status = "TOOMANYREQUESTS", 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(log=f"{self.message}: retry after {retry_after}s")
        self.headers = {"Retry-After": str(retry_after)}


class TooManyLogins(TooManyRequests):
    """Token endpoint: too many failed logins of this user or from this address."""

    message = "too many failed logins, try again later"


class TooManyKeys(TooManyRequests):
    """``GET role.key``: this client created too many server keys lately."""

    message = "too many new server keys from this client, try again later"


class NoServerKey(ServerError):
    """key_backend 'uri': no registered key is left to hand out for the GUN's role."""

    code, status = "UNKNOWN", 500
    message = "The server has no key to hand out for this role: its operator must register one."


class ClientTooSlow(ServerError):
    """The request body did not arrive before its deadline (the worker closes the connection)."""

    code, status = "TIMEOUT", 408
    message = "The request body arrived too slowly; send it again faster."
