"""Notary's JSON dialect: strict parsing, canonical signing bytes, wire bytes (spec 3.2, 3.3).

Three byte forms matter:

* the *signing bytes* of a document are the canonical JSON of its ``signed`` object (sorted
  keys, no whitespace, raw UTF-8, Go's escapes for control characters);
* the *wire bytes* are what is uploaded, stored, served and hashed: ``{"signed":...,
  "signatures":[...]}`` with ``signed`` in canonical form after Go's HTML-safe pass;
* whatever a client uploaded, which the server stores verbatim.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import orjson

from tufnotary.metadata.errors import FormatError

MAX_SAFE_INTEGER = 2**53
"""Go verifiers decode numbers as float64: larger integers would silently change."""


class JSONFormatError(FormatError, ValueError):
    """The bytes are not one strict JSON document (bad UTF-8, syntax, duplicate member...)."""


class NumberFormatError(FormatError, ValueError):
    """A number cannot be encoded canonically: non-integral, or beyond 2**53."""

    def __init__(self, path: str, value: object) -> None:
        super().__init__(f"number at {path} is not an integer within +/-2^53: {value}")
        self.path = path


class UnencodableNumber:
    """A parsed number with no canonical form (non-integral or too large), kept as its text:
    parsing succeeds, encoding it for signing or verification does not."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class TooManyValuesError(FormatError, ValueError):
    """The bytes could decode to more JSON values than allowed."""


def check_value_count(data: bytes, limit: int) -> None:
    """TooManyValuesError if ``data`` holds more than ``limit`` JSON values, counted without
    decoding as its ``[``, ``{`` and ``,`` bytes (strings included, so it may overcount).

    Decoding ``[],[],...`` makes about 20 bytes of Python objects per byte: this bounds the
    memory a document can take before it is parsed.
    """
    if len(data) <= limit:  # each value counted is one byte
        return
    count = data.count(b"[") + data.count(b"{") + data.count(b",")
    if count > limit:
        raise TooManyValuesError(f"more than {limit} JSON values")


def _parse_int(text: str) -> int | UnencodableNumber:
    if len(text) > 17:  # longer than any integer within +/-2**53
        return UnencodableNumber(text)
    value = int(text)
    return value if abs(value) <= MAX_SAFE_INTEGER else UnencodableNumber(text)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise JSONFormatError(f"duplicate member {duplicate!r} in one object")
    return result


def _reject_constant(name: str) -> Any:
    raise JSONFormatError(f"{name} is not valid JSON")


class collector_paused:
    """The cyclic garbage collector off while a document is decoded and read: the containers
    of a large one would trigger collections, each walking every young object, and move those
    still in use to the old generation, whose growth triggers full collections (decoded JSON
    holds no reference cycle: reference counting frees it). Nested uses leave it to the
    outermost; a class rather than a generator, as it runs several times per upload."""

    __slots__ = ("_paused",)

    def __enter__(self) -> None:
        self._paused = gc.isenabled()
        if self._paused:
            gc.disable()

    def __exit__(self, *_exc: object) -> None:
        if self._paused:
            gc.enable()


_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_constant=_reject_constant,
    parse_float=UnencodableNumber,
    parse_int=_parse_int,
    strict=True,
)


def loads(data: bytes | str) -> Any:
    """Parse one JSON document strictly: UTF-8, no duplicate members, no NaN/Infinity.

    Whitespace around the document is allowed (a trailing newline is common); anything else
    after it is an error.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        with collector_paused():
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
    if isinstance(value, UnencodableNumber | float) or (
        isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER
    ):
        raise NumberFormatError(path, value)
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_numbers(item, f"{path}[{index}]")


class _Unencodable(Exception):
    pass


def _refuse(value: Any) -> Any:
    raise _Unencodable()


_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_refuse
)
"""``json.dumps`` with these options builds this encoder on every call; it keeps no state."""
_BACKSLASHES_THEN_B_OR_F = re.compile(r"(\\+)([bf])")
_GO_ESCAPE = {"b": "\\u0008", "f": "\\u000c"}


def _go_escape(match: re.Match[str]) -> str:
    """``\\b``/``\\f`` escapes as Go writes them; an escaped backslash before b/f stays."""
    backslashes, letter = match.groups()
    if len(backslashes) % 2 == 0:
        return match.group(0)
    return backslashes[:-1] + _GO_ESCAPE[letter]


def canonical_text(value: Any) -> str:
    """Canonical JSON text of ``value`` (spec 3.2); NumberFormatError names a bad number."""
    if isinstance(value, float):
        raise NumberFormatError("signed", value)
    try:
        text = _CANONICAL_ENCODER.encode(value)
    except _Unencodable as exc:
        check_numbers(value)
        raise FormatError("value has no JSON form") from exc
    if "\\b" in text or "\\f" in text:
        text = _BACKSLASHES_THEN_B_OR_F.sub(_go_escape, text)
    return text


def encode_canonical(value: Any) -> bytes:
    """The bytes that are signed and verified: canonical JSON as UTF-8."""
    try:
        return canonical_text(value).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a \ud800-style escape
        raise JSONFormatError(f"string is not valid Unicode: {exc.reason}") from exc


def _escapes(chars: str) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((char.encode(), f"\\u{ord(char):04x}".encode()) for char in chars)


_HTML_ESCAPES = _escapes("<>&")
_SEPARATOR_ESCAPES = _escapes("\u2028\u2029")
_SEPARATOR_LEAD = "\u2028".encode()[:1]  # U+2028 and U+2029 (and others) start with it


def html_safe(data: bytes) -> bytes:
    """Go's HTML-safe pass over encoded JSON: escapes <, >, &, U+2028 and U+2029 (searched
    for only in bytes that have their UTF-8 lead byte: one-byte searches are the fast ones)."""
    for char, escape in _HTML_ESCAPES:
        if char in data:
            data = data.replace(char, escape)
    if _SEPARATOR_LEAD in data:
        for char, escape in _SEPARATOR_ESCAPES:
            if char in data:
                data = data.replace(char, escape)
    return data


_WIRE_DECODER = msgspec.json.Decoder(float_hook=UnencodableNumber)
_SORTED_53_BIT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_WIRE_HEAD = b'{"signed":'
_WIRE_SIGNATURES = b',"signatures":'


def loads_wire(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """A document exactly in wire form, parsed: ``({"signed":..., "signatures":...}, signing
    bytes)``; None for anything else (the caller then uses :func:`loads` and
    :func:`encode_canonical`, which find and name any error).

    The common case at C speed: msgspec decodes the document (refusing what the strict parser
    refuses except duplicate members, of which it keeps the last; non-integral numbers become
    UnencodableNumber), then orjson encodes ``signed`` with sorted keys, refusing
    UnencodableNumber and integers beyond +/-(2**53-1). Finding that encoding, after the
    HTML-safe pass, as the received bytes proves that they had no duplicate member (one would
    have been dropped) and mean what the strict path means. The encoding is the canonical one
    unless it holds a ``\\b`` or ``\\f`` escape (Go writes ``\\u0008``, ``\\u000c``): such
    documents take the strict path. The small signatures part is parsed strictly.
    """
    if not data.startswith(_WIRE_HEAD):
        return None
    try:
        with collector_paused():
            document = _WIRE_DECODER.decode(data)
            signed = document["signed"]
            canonical = orjson.dumps(signed, default=_refuse, option=_SORTED_53_BIT)
    except (msgspec.DecodeError, orjson.JSONEncodeError, RecursionError):
        return None
    if not isinstance(signed, dict) or (
        b"\\" in canonical and (b"\\b" in canonical or b"\\f" in canonical)
    ):
        return None
    end = len(_WIRE_HEAD) + len(wire := html_safe(canonical))
    if not data.startswith(wire, len(_WIRE_HEAD)) or not data.startswith(_WIRE_SIGNATURES, end):
        return None
    start = end + len(_WIRE_SIGNATURES)
    signatures = _signatures_as_decoded(document["signatures"], data, start)
    if signatures is None:
        try:
            text = data[start:].decode("utf-8")
            signatures, stop = _DECODER.raw_decode(text)
        except (ValueError, FormatError, RecursionError):
            return None
        if text[stop:].rstrip(" \t\r\n") != "}":
            return None
    return {"signed": signed, "signatures": signatures}, canonical


def _signatures_as_decoded(signatures: Any, data: bytes, start: int) -> Any:
    """``signatures`` as msgspec decoded them when ``data[start:]`` is exactly their compact
    encoding (member order kept, integers within +/-(2**53-1)) and the closing ``}``: then it
    holds no duplicate member and means what the strict parser reads; None otherwise."""
    try:
        encoded = orjson.dumps(signatures, default=_refuse, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        return None
    stop = start + len(encoded)
    if not data.startswith(encoded, start) or data[stop:].rstrip(b" \t\r\n") != b"}":
        return None
    return signatures


def encode_wire(signed: Mapping[str, Any], signatures: Iterable[Mapping[str, str]]) -> bytes:
    """The stored and served bytes of a document, exactly as the Go code writes them."""
    return wire_bytes(encode_canonical(signed), signatures)


def wire_bytes(signing_bytes: bytes, signatures: Iterable[Mapping[str, str]]) -> bytes:
    """:func:`encode_wire` of the document whose ``signed`` has these canonical bytes."""
    sigs = ",".join(
        "{"
        + ",".join(f'"{name}":{canonical_text(sig[name])}' for name in ("keyid", "method", "sig"))
        + "}"
        for sig in signatures
    )
    return b'{"signed":' + html_safe(signing_bytes) + f',"signatures":[{sigs}]}}'.encode()
