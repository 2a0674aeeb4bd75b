"""The C-speed paths of metadata parsing against the strict ones they stand in for.

``loads_wire`` (msgspec + orjson) may decline a document, never answer differently from
``loads`` + ``encode_canonical``; FileMeta maps built in one msgspec call equal those built
entry by entry, errors included. The oracle is always the strict path on the same input.
"""

from __future__ import annotations

import base64
import gc
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tufnotary.metadata.canonical import (
    MAX_SAFE_INTEGER,
    UnencodableNumber,
    _signatures_as_decoded,
    encode_canonical,
    encode_wire,
    loads,
    loads_wire,
)
from tufnotary.metadata.errors import FormatError
from tufnotary.metadata.model import FileMeta, Snapshot, Targets

SIGNATURES = [{"keyid": "k", "method": "ecdsa", "sig": "c2ln"}]
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters whose escaping differs between encoders: control characters (\b and \f above
# all), quotes, backslashes, the HTML-safe ones, non-ASCII in and beyond the BMP.
_CHARS = st.sampled_from(
    [*'\x00\x01\b\t\n\f\r\x1f\x7f"\\/<>&bfu0 aZé', "\u2028", "\u2029", "\uffff", "☃", "😀"]
)
_TEXT = st.text(_CHARS, max_size=8)
_INTS = st.one_of(
    st.integers(-1000, 1000),
    st.sampled_from(
        [
            n + d
            for n in (MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 2**63, -(2**63), 2**64)
            for d in (-1, 0, 1)
        ]
    ),
    st.integers(),
)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), _INTS, _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=20,
)
_SIGNED = st.dictionaries(_TEXT, _JSON, max_size=6)


def strict(data: bytes) -> tuple[dict[str, Any], bytes] | tuple[type, str]:
    """What Envelope.from_bytes gets from the strict path: the document and the signing
    bytes, or the error."""
    try:
        document = loads(data)
        if not isinstance(document, dict) or not isinstance(document.get("signed"), dict):
            raise FormatError("document must be an object with a signed object")
        return document, encode_canonical(document["signed"])
    except FormatError as exc:
        return type(exc), str(exc)


def assert_agrees(data: bytes) -> bool:
    """loads_wire declines ``data`` or answers as the strict path; whether it answered."""
    fast = loads_wire(data)
    if fast is not None:
        assert fast == strict(data)
    return fast is not None


def wire(signed: dict[str, Any], tail: bytes = b"") -> bytes:
    """Go's wire bytes of ``signed`` (numbers beyond 2**53 included, as a producer might)."""
    return encode_wire(signed, SIGNATURES)[:-1] + tail + b"}"


@PROPERTY
@given(_SIGNED)
@example({"k": "\b"})
@example({"k": "\\b"})
@example({"n": MAX_SAFE_INTEGER})
@example({"n": 2**64})
@example({"<&>": "\u2028é😀"})
def test_wire_form_is_parsed_in_one_pass_with_the_strict_answer(signed: dict[str, Any]) -> None:
    try:
        data = wire(signed)
    except FormatError:  # a lone surrogate cannot be written: nothing to parse
        return
    answered = assert_agrees(data)
    canonical = strict(data)[1]
    ordinary = isinstance(canonical, bytes) and b"\\" not in canonical
    small = all(abs(n) < MAX_SAFE_INTEGER for n in _numbers(signed) if not isinstance(n, bool))
    if ordinary and small:  # the common case must not fall back to the strict path
        assert answered


def _numbers(value: Any) -> list[int]:
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [value] if isinstance(value, int) else []


_EDITS = st.sampled_from(
    [
        b" ",
        b"\n",
        b",",
        b":",
        b'"',
        b"\\",
        b"\\b",
        b"\\u0008",
        b"\\u00e9",
        b"\\/",
        b"\\ud800",
        b"\\ud83d\\ude00",
        b"1.0",
        b"1e2",
        b"-0",
        b"01",
        b"NaN",
        b"9007199254740993",
        b'"k":1,',
        b'"_type":"Targets",',
        b"<",
        b"\\u003c",
        b"\xff",
        b"\xed\xa0\x80",
        b"\xe2\x80\xa8",
        b"{}",
        b"[",
    ]
)


@PROPERTY
@given(_SIGNED, st.lists(st.tuples(st.floats(0, 1), _EDITS), min_size=1, max_size=3))
def test_edited_wire_bytes_get_the_strict_answer(
    signed: dict[str, Any], edits: list[tuple[float, bytes]]
) -> None:
    """Inserting whitespace, escapes, duplicates, floats, bad UTF-8... anywhere."""
    try:
        data = wire(signed)
    except FormatError:
        return
    for where, text in edits:
        cut = len(b'{"signed":') + int(where * (len(data) - len(b'{"signed":')))
        data = data[:cut] + text + data[cut:]
    assert_agrees(data)


@PROPERTY
@given(_SIGNED, st.sampled_from(["python", "ascii", "spaced", "unsorted", "duplicate"]))
@example({"k": "\b<"}, "python")
@example({"k": "\f"}, "ascii")
@example({"k": 1, "l": 2}, "duplicate")
def test_other_encodings_of_the_same_document_get_the_strict_answer(
    signed: dict[str, Any], style: str
) -> None:
    """Valid JSON of the same value in another form: Python's escapes (``\\b``, ``\\f``),
    escaped non-ASCII, whitespace, members out of order, a member repeated (refused)."""
    if style == "python":
        member = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    elif style == "ascii":
        member = json.dumps(signed, sort_keys=True, separators=(",", ":"))
    elif style == "spaced":
        member = json.dumps(signed, sort_keys=True, ensure_ascii=False)
    elif style == "unsorted":
        member = json.dumps(dict(reversed(signed.items())), separators=(",", ":"))
    else:  # the first member twice, with the same value
        member = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if signed:
            first = min(signed)
            repeated = json.dumps({first: signed[first]}, separators=(",", ":"))
            member = repeated[:-1] + "," + member[1:]
    try:
        data = b'{"signed":' + member.encode() + b',"signatures":[]}'
    except UnicodeEncodeError:
        return
    assert_agrees(data)


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"\n",
        b" \r\n\t",
        b',"signatures":[]',
        b',"signed":{}',
        b"x",
    ],
)
def test_members_after_the_signatures_get_the_strict_answer(tail: bytes) -> None:
    data = encode_wire({"_type": "Targets", "version": 2}, SIGNATURES)
    data = data[:-1] + tail + b"}" if tail.startswith(b",") else data + tail
    assert_agrees(data)


@PROPERTY
@given(st.lists(_JSON, max_size=3), st.lists(st.tuples(st.floats(0, 1), _EDITS), max_size=3))
@example([{"keyid": "k"}], [(0.5, b'"keyid":"l",')])  # a repeated member
@example([{"n": MAX_SAFE_INTEGER - 1, "m": MAX_SAFE_INTEGER}], [])
def test_signatures_are_taken_as_decoded_only_when_their_bytes_say_exactly_that(
    signatures: list[Any], edits: list[tuple[float, bytes]]
) -> None:
    """The one pass keeps the decoded signatures when re-encoding them gives their bytes:
    anything else (escapes, spacing, repeated members, floats, large numbers...) is read by
    the strict parser or refused as it refuses it."""
    try:
        data = encode_wire({"_type": "Targets"}, [])[: -len("[]}")]
        data += json.dumps(signatures, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return
    start = len(data) - 1
    for where, text in edits:
        cut = start + int(where * (len(data) - start))
        data = data[:cut] + text + data[cut:]
    fast = loads_wire(data + b"}")
    if fast is not None:
        assert _typed(fast) == _typed(strict(data + b"}"))


def test_go_written_signatures_are_taken_as_decoded() -> None:
    data = encode_wire({"_type": "Targets"}, SIGNATURES)
    decoded = msgspec.json.decode(data)["signatures"]
    assert _signatures_as_decoded(decoded, data, data.index(b"[")) is decoded
    escaped = data.replace(b'"k"', b'"\\u006b"')  # the same value, other bytes
    assert _signatures_as_decoded(decoded, escaped, escaped.index(b"[")) is None


def _typed(value: Any) -> Any:
    """``value`` with each UnencodableNumber as its text, tagged (they compare by identity)."""
    if isinstance(value, UnencodableNumber):
        return (UnencodableNumber, value.text)
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_typed(item) for item in value]
    return value


def test_duplicate_members_in_signatures_are_refused() -> None:
    data = b'{"signed":{"a":1},"signatures":[{"keyid":"k","keyid":"k"}]}'
    assert loads_wire(data) is None
    assert strict(data)[0] is not dict


@pytest.mark.parametrize("enabled", [True, False])
def test_parsing_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        assert loads_wire(encode_wire({"a": [1]}, SIGNATURES)) is not None
        assert loads_wire(b'{"signed":{"a":1.5},"signatures":[]}') is None
        with pytest.raises(FormatError):
            loads(b'{"a":1,"a":2}')
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


# -- FileMeta maps ----------------------------------------------------------------------------

_BASE64 = st.one_of(
    st.binary(max_size=70).map(lambda raw: base64.b64encode(raw).decode()),
    st.text(st.sampled_from([*"AQZaz09+/=-_ \n", "é"]), max_size=10),
)
_HASH = st.one_of(_BASE64, st.integers(), st.none(), st.just([]))
_LENGTH = st.one_of(
    st.integers(),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
    st.just(UnencodableNumber("1.5")),
)
_ENTRY = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "length": _LENGTH,
            "hashes": st.one_of(
                st.dictionaries(st.sampled_from(["sha256", "sha512", "md5"]), _HASH),
                st.none(),
                st.just([]),
            ),
            "custom": _JSON,
            "other": _JSON,
        },
    ),
    st.lists(st.integers(), max_size=1),
    st.none(),
    st.text(max_size=2),
)


def one_by_one(members: dict[str, Any], label: str) -> object:
    try:
        return {key: FileMeta.from_dict(value, label.format(key)) for key, value in members.items()}
    except FormatError as exc:
        return type(exc), str(exc)


@PROPERTY
@given(st.dictionaries(st.text(max_size=4), _ENTRY, max_size=4))
@example({"t": {"length": 3, "hashes": {"sha256": "AB=="}}})
@example({"t": {"length": 3, "hashes": None}})
@example({"t": {"hashes": {}}})
@example({"t": {"length": True, "hashes": {}}})
def test_file_meta_maps_equal_the_entry_by_entry_result(members: dict[str, Any]) -> None:
    signed = {"_type": "Targets", "version": 1, "expires": "2030-01-01T00:00:00Z"}
    try:
        targets: object = Targets.from_dict({**signed, "targets": members}).targets
    except FormatError as exc:
        targets = type(exc), str(exc)
    assert targets == one_by_one(members, "target {!r}")
    try:
        meta: object = Snapshot.from_dict({**signed, "_type": "Snapshot", "meta": members}).meta
    except FormatError as exc:
        meta = type(exc), str(exc)
    assert meta == one_by_one(members, "meta {!r}")
