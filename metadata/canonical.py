"""Notary's JSON dialect: strict parsing, canonical signing bytes, wire bytes (spec 3.2, 3.3).

Three byte forms matter:

* the *signing bytes* of a document are the canonical JSON of its ``signed`` object (sorted
  keys, no whitespace, raw UTF-8, Go's escapes for control characters);
* the *wire bytes* are what is uploaded, stored, served and hashed: ``{"signed":...,
  "signatures":[...]}`` with ``signed`` in canonical form after Go's HTML-safe pass;
* whatever a client uploaded, which the server stores verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

MAX_SAFE_INTEGER = 2**53
"""Go verifiers decode numbers as float64: larger integers would silently change."""


class JSONFormatError(ValueError):
    """The bytes are not one strict JSON document (bad UTF-8, syntax, duplicate member...)."""


class NumberFormatError(ValueError):
    """A number cannot be encoded canonically: non-integral, or beyond 2**53."""

    def __init__(self, path: str, value: object) -> None:
        super().__init__(f"number at {path} is not an integer within +/-2^53: {value!r}")
        self.path = path


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONFormatError(f"duplicate member {key!r} in one object")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise JSONFormatError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, strict=True
)


def loads(data: bytes | str) -> Any:
    """Parse one JSON document strictly: UTF-8, no duplicate members, no NaN/Infinity.

    Whitespace around the document is allowed (a trailing newline is common); anything else
    after it is an error.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value, end = _DECODER.raw_decode(text.lstrip(" \t\r\n"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise JSONFormatError(str(exc) or "nested too deeply") from exc
    rest = text.lstrip(" \t\r\n")[end:]
    if rest.strip(" \t\r\n"):
        raise JSONFormatError("unexpected data after the JSON document")
    return value


def check_numbers(value: Any, path: str = "signed") -> None:
    """Raise NumberFormatError naming the first number that has no canonical form."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise NumberFormatError(path, value)
    elif isinstance(value, float):
        raise NumberFormatError(path, value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_numbers(item, f"{path}[{index}]")


def _needs_go_escapes(value: Any) -> bool:
    """True if a string holds backspace or form feed, which Go escapes as \\u0008/\\u000c."""
    if isinstance(value, str):
        return "\b" in value or "\f" in value
    if isinstance(value, Mapping):
        return any(_needs_go_escapes(k) or _needs_go_escapes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_needs_go_escapes(item) for item in value)
    return False


def _quote(text: str) -> str:
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _encode_slow(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list):
        return "[" + ",".join(_encode_slow(item) for item in value) + "]"
    return "{" + ",".join(_quote(k) + ":" + _encode_slow(value[k]) for k in sorted(value)) + "}"


def canonical_text(value: Any) -> str:
    """Canonical JSON text of ``value`` (spec 3.2)."""
    check_numbers(value)
    if _needs_go_escapes(value):
        return _encode_slow(value)
    # Python's encoder matches Go's canonical form except for \b and \f, handled above.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode_canonical(value: Any) -> bytes:
    """The bytes that are signed and verified: canonical JSON as UTF-8."""
    try:
        return canonical_text(value).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a \ud800-style escape
        raise JSONFormatError(f"string is not valid Unicode: {exc.reason}") from exc


def html_safe(text: str) -> str:
    """Go's HTML-safe pass over encoded JSON: escapes <, >, &, U+2028 and U+2029."""
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def encode_wire(signed: Mapping[str, Any], signatures: Iterable[Mapping[str, str]]) -> bytes:
    """The stored and served bytes of a document, exactly as the Go code writes them."""
    sigs = ",".join(
        f'{{"keyid":{_quote(sig["keyid"])},"method":{_quote(sig["method"])},"sig":{_quote(sig["sig"])}}}'
        for sig in signatures
    )
    return (
        '{"signed":' + html_safe(canonical_text(signed)) + ',"signatures":[' + sigs + "]}"
    ).encode("utf-8")


def encode_compact(value: Any) -> bytes:
    """Compact JSON in the given member order (Go's encoder on a struct): used for key bodies."""
    return html_safe(json.dumps(value, separators=(",", ":"), ensure_ascii=False)).encode("utf-8")
