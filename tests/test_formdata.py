"""Upload bodies split as the reference's Go reader splits them (server/formdata.py): line
breaks, delimiters, caps; and the same bodies sent to the reference notary-server and to ours."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support.api import Server, error_of
from support.reference import running_reference_server
from support.repo import RepoBuilder
from support.server import ServerInfo
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import TARGETS
from tufnotary.server.formdata import MAX_LINE, LimitReached, MultipartError, PartReader

Parts = list[tuple[str, bytes]]
CRLF, LF = b"\r\n", b"\n"
DISPOSITION = 'form-data; name="files"; filename="{}"'


def _split(body: bytes, cuts: list[int], max_parts: int = 100) -> Parts:
    """The parts (Content-Disposition, body) read from ``body`` fed in pieces cut at ``cuts``."""
    reader = PartReader("b", max_parts)
    parts: Parts = []
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    for piece in [piece for piece in pieces if piece] + [b""]:
        for event in reader.parse(piece):
            if isinstance(event, str):
                parts.append((event, b""))
            elif event is not None:
                parts[-1] = (parts[-1][0], parts[-1][1] + event)
        if reader.closed:
            break
    assert reader.closed
    return parts


def parts_of(body: bytes, max_parts: int = 100) -> Parts:
    """The parts of ``body`` read at once; the same read in two pieces cut anywhere, and byte
    by byte, or an error raised by each way alike."""
    try:
        whole = _split(body, [], max_parts)
    except MultipartError as exc:
        for cuts in [[cut] for cut in range(1, len(body))] + [list(range(1, len(body)))]:
            with pytest.raises(type(exc)):
                _split(body, cuts, max_parts)
        raise
    for cuts in [[cut] for cut in range(1, len(body))] + [list(range(1, len(body)))]:
        assert _split(body, cuts, max_parts) == whole, cuts
    return whole


def build(
    parts: Parts,
    *,
    first: bytes = b"--b\r\n",
    header_break: bytes = CRLF,
    delimiter: bytes = b"\r\n--b\r\n",
    close: bytes = b"\r\n--b--\r\n",
    preamble: bytes = b"",
) -> bytes:
    """A body of (filename, data) parts laid out as the Go client does, with these lines."""
    return (
        preamble
        + first
        + delimiter.join(
            f"Content-Disposition: {DISPOSITION.format(name)}".encode()
            + header_break
            + b"Content-Type: application/octet-stream"
            + header_break * 2
            + data
            for name, data in parts
        )
        + close
    )


LAYOUTS = {
    "crlf": {},
    "bare lf": dict(first=b"--b\n", header_break=LF, delimiter=b"\n--b\n", close=b"\n--b--\n"),
    "lf delimiters, crlf headers": dict(first=b"--b\n", delimiter=b"\n--b\n", close=b"\n--b--\n"),
    "crlf delimiters, lf headers": dict(header_break=LF),
    "white space after boundaries": dict(
        first=b"--b \t\r\n", delimiter=b"\r\n--b\t\r\n", close=b"\r\n--b-- \r\n"
    ),
    "preamble and epilogue": dict(
        preamble=b"preamble\r\n--bX\r\n--b--\n", close=b"\r\n--b--\r\nepilogue\r\n--b\r\n"
    ),
    "close delimiter ends the body": dict(close=b"\r\n--b--"),
    "bare lf, close delimiter ends the body": dict(
        first=b"--b\n", header_break=LF, delimiter=b"\n--b\n", close=b"\n--b--"
    ),
}
REFUSED = {
    "lf delimiters after a crlf first line": dict(delimiter=b"\n--b\n", close=b"\n--b--\n"),
    "crlf delimiters after a bare lf first line": dict(first=b"--b\n"),
    "a crlf close delimiter in a bare lf body": dict(
        first=b"--b\n", delimiter=b"\n--b\n", close=b"\n--b--\r\n"
    ),
    "text after a delimiter": dict(delimiter=b"\r\n--b x\r\n"),
    "no close delimiter": dict(close=b"\r\n"),
    "text after the close delimiter": dict(close=b"\r\n--b--x\r\n"),
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_line_breaks_and_delimiters_as_go_reads_them(layout: dict[str, bytes]) -> None:
    body = build([("targets", b'{"a":1}'), ("root", b"")], **layout)
    assert parts_of(body) == [
        (DISPOSITION.format("targets"), b'{"a":1}'),
        (DISPOSITION.format("root"), b""),
    ]


@pytest.mark.parametrize("layout", REFUSED.values(), ids=REFUSED.keys())
def test_bodies_go_refuses(layout: dict[str, bytes]) -> None:
    with pytest.raises(MultipartError):
        parts_of(build([("targets", b"{}"), ("root", b"{}")], **layout))


@pytest.mark.parametrize(
    "data",
    [
        b"x\r\n--bX\r\ny",  # a longer boundary is data
        b"x\r\n--b-x",  # a single dash after the boundary is data
        b"\r\n--",
        b"x\n--b\n",  # a bare LF delimiter in a CRLF body is data
        b"--bX",
        b"\r",
    ],
)
def test_what_is_part_data(data: bytes) -> None:
    assert parts_of(build([("targets", data)])) == [(DISPOSITION.format("targets"), data)]


def test_a_cr_before_a_bare_lf_delimiter_is_data() -> None:
    body = b"--b\nContent-Disposition: x\n\ndata\r\n--b--\n"
    assert parts_of(body) == [("x", b"data\r")]


def test_a_delimiter_right_after_the_headers_ends_an_empty_part() -> None:
    body = b"--b\r\nContent-Disposition: x\r\n\r\n--b\r\nContent-Disposition: y\r\n\r\n--b--"
    assert parts_of(body) == [("x", b""), ("y", b"")]


def test_part_headers() -> None:
    body = (
        b"--b\r\ncontent-DISPOSITION: form-data;\r\n \t filename=a  \r\n"
        b"Content-Disposition: second\r\n\r\nx\r\n--b\r\n"
        b"Content-Disposition : not this one\r\nX-Other: y\r\n\r\n\r\n--b--\r\n"
    )
    assert parts_of(body) == [("form-data; filename=a", b"x"), ("", b"")]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", MultipartError),
        (b"--b\r\n", MultipartError),
        (b"--b\r\n\r\nx\r\n--b--\r\n", MultipartError),  # a part without headers
        (b"--b\r\n folded: first\r\n\r\n\r\n--b--\r\n", MultipartError),
        (b"--b\r\nno colon\r\n\r\n\r\n--b--\r\n", MultipartError),
        (b"--b\r\nContent-Disposition: \xff\r\n\r\n\r\n--b--\r\n", MultipartError),
        (b"x" * MAX_LINE + b"\n--b\r\n", MultipartError),  # Go's 4 KiB line buffer
        (b"--b\r\nX: " + b"x" * 4300 + b"\r\n\r\n\r\n--b--\r\n", LimitReached),
        (b"--b\r\n" + b"X: x\r\n" * 9 + b"\r\n\r\n--b--\r\n", LimitReached),
    ],
)
def test_refused_bodies(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as raised:
        _split(body, [])
    assert type(raised.value) is error


def test_skipped_lines_up_to_4_kib() -> None:
    body = b"x" * (MAX_LINE - 1) + b"\n" + build([("targets", b"")])
    assert _split(body, []) == [(DISPOSITION.format("targets"), b"")]


def test_part_count_cap() -> None:
    body = build([("targets", b"")] * 3)
    assert len(parts_of(body, max_parts=3)) == 3
    with pytest.raises(LimitReached):
        _split(body, [], max_parts=2)


# -- against the reference ----------------------------------------------------------------------

GUN = "example.com/formdata"
CONTENT_TYPE = "multipart/form-data; boundary=b"


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server.start(tmp_path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    with running_reference_server(tmp_path_factory.mktemp("reference")) as info:
        yield info


def _reference_answer(info: ServerInfo, gun: str, body: bytes) -> requests.Response:
    """POST ``body`` (boundary ``b``) as an upload to the reference."""
    return requests.post(
        f"{info.url}/v2/{gun}/_trust/tuf/",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        verify=str(info.ca_cert),
        timeout=30,
    )


def _post_reference(info: ServerInfo, gun: str, body: bytes) -> int | None:
    """The reference's status for ``body``, None when it closes the connection unanswered
    (it panics on a body its multipart reader refuses)."""
    try:
        response = _reference_answer(info, gun, body)
    except requests.ConnectionError:
        return None
    return response.status_code


def _reference_repo(info: ServerInfo, gun: str) -> RepoBuilder:
    response = requests.get(
        f"{info.url}/v2/{gun}/_trust/tuf/timestamp.key", verify=str(info.ca_cert), timeout=30
    )
    response.raise_for_status()
    return RepoBuilder(gun, Key.from_dict(response.json()))


def _gun(layout: str) -> str:
    return f"{GUN}/{layout.replace(',', '').replace(' ', '-')}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_publishes_with_the_reference_line_breaks(
    reference: ServerInfo, tmp_path: Path, layout: str
) -> None:
    """Bodies the reference accepts publish on both servers, which then serve the exact part
    bytes."""
    ours = Server.start(tmp_path)
    gun = _gun(layout)
    for post, repo, read in [
        (
            lambda body: _post_reference(reference, gun, body),
            _reference_repo(reference, gun),
            lambda: (
                requests.get(
                    f"{reference.url}/v2/{gun}/_trust/tuf/targets.json",
                    verify=str(reference.ca_cert),
                    timeout=30,
                ).content
            ),
        ),
        (
            lambda body: (
                ours.client.post(
                    ours.tuf(gun), data=body, content_type="multipart/form-data; boundary=b"
                ).status_code
            ),
            RepoBuilder(gun, ours.server_key(gun, "timestamp")),
            lambda: ours.get(gun, "targets.json").data,
        ),
    ]:
        files = repo.first_publish()
        assert post(build(list(files.items()), **LAYOUTS[layout])) == 200
        assert read() == files[TARGETS]


@pytest.mark.parametrize("layout", REFUSED)
def test_refused_like_the_reference(reference: ServerInfo, tmp_path: Path, layout: str) -> None:
    """Bodies the reference's reader refuses (it then panics and drops the connection) are
    MALFORMED_UPLOAD here."""
    ours = Server.start(tmp_path)
    gun = _gun(layout)
    files = _reference_repo(reference, gun).first_publish()
    assert _post_reference(reference, gun, build(list(files.items()), **REFUSED[layout])) is None
    files = RepoBuilder(gun, ours.server_key(gun, "timestamp")).first_publish()
    response = ours.client.post(
        ours.tuf(gun),
        data=build(list(files.items()), **REFUSED[layout]),
        content_type="multipart/form-data; boundary=b",
    )
    assert error_of(response)["code"] == "MALFORMED_UPLOAD"


BOGUS = b'Content-Disposition: form-data; filename="bogus"'
HEADERS = {
    "lower-case name": BOGUS.lower(),
    "folded value": b"Content-Disposition: form-data;\r\n\tfilename=bogus",
    "odd header name": b"X-Odd\x01Name: x\r\n" + BOGUS,
    "non-utf-8 value": b"X-Other: \xff\r\n" + BOGUS,
    "bad content-length": b"Content-Length: nope\r\n" + BOGUS,
    "two dispositions": BOGUS + b"\r\nContent-Disposition: x",
    "space before the colon": BOGUS.replace(b":", b" :", 1),
}


@pytest.mark.parametrize("headers", HEADERS)
def test_part_headers_read_like_the_reference(
    reference: ServerInfo, server: Server, headers: str
) -> None:
    """The same answer for each: the part's file name (or none) read as Go reads headers."""
    body = b"--b\r\n" + HEADERS[headers] + b"\r\n\r\n{}\r\n--b--\r\n"
    expected = _reference_answer(reference, GUN, body).json()["errors"][0]
    ours = error_of(server.client.post(server.tuf(GUN), data=body, content_type=CONTENT_TYPE))
    assert (ours["code"], ours.get("detail")) == (expected["code"], expected.get("detail"))
