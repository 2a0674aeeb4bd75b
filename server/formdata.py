"""Upload bodies (spec 2.1): multipart/form-data split the way the reference's Go reader
(``mime/multipart`` over ``net/textproto``) splits it, within this server's caps.

* Lines before the first delimiter line (``--boundary``, spaces or tabs, a line break) are
  skipped, and so is anything after the close delimiter line (``--boundary--``, spaces or
  tabs, then a line break or the end of the body).
* The first delimiter line's break sets the body's: CRLF, or a bare LF, which every later
  delimiter then uses (``LF--boundary``; a CRLF client's ``\\r`` before it is part data).
* A part's header lines end in CRLF or LF alike; a line starting with a space or tab continues
  the previous one; the first blank line ends them.
* A part ends at the first break + ``--boundary`` followed by ``--``, a space, a tab, CR, LF or
  the end of the body (``--boundary`` right after the headers: an empty part); the line that
  follows must be a delimiter or the close delimiter line.

This server's caps: at most ``max_parts`` parts, 8 header lines of at most 4 KiB + 128 bytes
(:class:`LimitReached`); delimiter and skipped lines are at most 4 KiB, as in Go's reader.
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_LINE = 4096
"""Go's reader fails on a delimiter or skipped line longer than its 4 KiB buffer."""
MAX_HEADER_LINE = 4096 + 128
MAX_HEADERS = 8
_DISPOSITION = b"content-disposition"
_LWSP = b" \t"
_DELIMITER_ENDS = b" \t\r\n"
_DASH = ord("-")
_PREAMBLE, _HEADERS, _BODY, _DELIMITER, _CLOSED = range(5)

Event = str | bytes | None
"""What :meth:`PartReader.parse` yields for each part: its Content-Disposition value (``""``
without one) once its headers are read, its body in pieces, then None at its end."""


class MultipartError(ValueError):
    """The body is not multipart/form-data as Go's reader reads it."""


class LimitReached(MultipartError):
    """More parts, or more or longer header lines in a part, than this server accepts."""


class PartReader:
    """Splits a multipart/form-data body fed in chunks into :data:`Event` s."""

    def __init__(self, boundary: str, max_parts: int) -> None:
        self._dash = b"--" + boundary.encode()
        self._max_parts = max_parts
        self._parts = 0
        self._state = _PREAMBLE
        self._buffer = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_body = False  # some of the current part's body was yielded
        self._set_break(b"\r\n")

    def _set_break(self, line_break: bytes) -> None:
        self._break = line_break
        self._delimiter = line_break + self._dash  # where a part's body ends
        # the usual delimiter line, recognised at once when no longer than Go's line buffer
        short = len(self._dash) + len(line_break) <= MAX_LINE
        self._part_line = self._dash + line_break if short else None

    @property
    def closed(self) -> bool:
        """The close delimiter was read."""
        return self._state == _CLOSED

    def parse(self, chunk: bytes) -> Iterator[Event]:
        """The events of ``chunk`` (and of what earlier chunks left); ``b""`` ends the body.
        MultipartError (LimitReached for a cap) when the body cannot be read."""
        end = not chunk
        buffer = self._buffer + chunk if self._buffer else chunk
        offset = 0
        while True:
            state = self._state
            if state == _BODY:
                if not self._in_body:  # its first bytes may be a delimiter: an empty part
                    after = self._at_body_start(buffer, offset, end)
                    if after == 0:
                        break
                    if after > 0:
                        yield None
                        self._state = _DELIMITER
                        continue
                delimiter = self._delimiter
                index = buffer.find(delimiter, offset)
                while index >= 0:
                    after = _after_delimiter(buffer, index + len(delimiter), end)
                    if after >= 0:
                        break
                    index = buffer.find(delimiter, index + len(delimiter))
                if index >= 0:
                    if index > offset:
                        self._in_body = True
                        yield buffer[offset:index]
                    if after == 0:
                        offset = index
                        break
                    yield None
                    self._state = _DELIMITER
                    offset = index + len(self._break)
                    continue
                if end:
                    raise MultipartError("the body ends in a part")
                # keep what may be the start of a delimiter; the rest is body
                keep = buffer.rfind(delimiter[0], max(offset, len(buffer) - len(delimiter) + 1))
                if keep < 0 or not delimiter.startswith(buffer[keep:]):
                    keep = len(buffer)
                if keep > offset:
                    self._in_body = True
                    yield buffer[offset:keep] if offset or keep < len(buffer) else buffer
                offset = keep
                break
            if state == _HEADERS:
                newline = buffer.find(b"\n", offset)
                if newline < 0:
                    if len(buffer) - offset > MAX_HEADER_LINE:
                        raise LimitReached("a part header line is longer than allowed")
                    if end:
                        raise MultipartError("the body ends in a part's headers")
                    break
                cut = newline - 1 if newline > offset and buffer[newline - 1] == 13 else newline
                line = buffer[offset:cut]
                offset = newline + 1
                if line:
                    self._header_line(line)
                else:
                    yield self._disposition()
                    self._state, self._in_body = _BODY, False
                continue
            if state == _CLOSED:
                break
            # _PREAMBLE or _DELIMITER: a line that must be (before the first part: may be) a
            # delimiter line
            part_line = self._part_line
            if part_line is not None and buffer.startswith(part_line, offset):
                offset += len(part_line)
                self._start_part()
                continue
            newline = buffer.find(b"\n", offset)
            stop = len(buffer) if newline < 0 else newline + 1
            if stop - offset > MAX_LINE or (newline < 0 and stop - offset == MAX_LINE):
                raise MultipartError(f"a line of the body is longer than {MAX_LINE} bytes")
            if newline < 0 and not end:
                break
            line, offset = buffer[offset:stop], stop
            self._delimiter_line(line, last=newline < 0)
        self._buffer = buffer[offset:] if offset < len(buffer) else b""

    def _start_part(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise LimitReached(f"more than {self._max_parts} parts")
        self._headers = []
        self._state = _HEADERS

    def _delimiter_line(self, line: bytes, *, last: bool) -> None:
        """Act on a line (with its break; ``last``: the body's end, without one) where a
        delimiter line may start: start a part, close the body, skip it or refuse it."""
        dash = self._dash
        if not last and line.startswith(dash):
            rest = line[len(dash) :].lstrip(_LWSP)
            if self._state == _PREAMBLE and rest == b"\n":
                self._set_break(b"\n")
            if rest == self._break:
                self._start_part()
                return
        if line.startswith(dash + b"--"):
            rest = line[len(dash) + 2 :].lstrip(_LWSP)
            if not rest or rest == self._break:
                self._state = _CLOSED
                return
        if last:
            raise MultipartError("the body ends before its close delimiter")
        if self._state == _DELIMITER:
            raise MultipartError(f"expected a delimiter line, got {line[:80]!r}")

    def _header_line(self, line: bytes) -> None:
        """One header line (without its break) of the current part."""
        headers = self._headers
        if line[0] in _LWSP:  # a continuation
            if not headers:
                raise MultipartError("a part's first header line starts with white space")
            name, value = headers[-1]
            headers[-1] = name, value + b" " + line.strip(_LWSP)
            if len(name) + len(headers[-1][1]) > MAX_HEADER_LINE:
                raise LimitReached("a part header line is longer than allowed")
            return
        if len(line) > MAX_HEADER_LINE:
            raise LimitReached("a part header line is longer than allowed")
        if len(headers) >= MAX_HEADERS:
            raise LimitReached(f"a part has more than {MAX_HEADERS} header lines")
        name, colon, value = line.partition(b":")
        if not colon:
            raise MultipartError(f"a part header line has no colon: {line[:80]!r}")
        headers.append((name, value.strip(_LWSP)))

    def _disposition(self) -> str:
        """The first Content-Disposition value of the part whose headers were read."""
        if not self._headers:
            raise MultipartError("a part without headers")
        for name, value in self._headers:
            if len(name) == len(_DISPOSITION) and name.lower() == _DISPOSITION:
                try:
                    return value.decode()
                except UnicodeDecodeError as exc:
                    raise MultipartError("a Content-Disposition that is not UTF-8") from exc
        return ""

    def _at_body_start(self, buffer: bytes, offset: int, end: bool) -> int:
        """Go's verdict on a part's body starting at ``buffer[offset]`` with no line break
        before a delimiter: 1 if it does (the part is empty), 0 if more bytes decide, -1 if
        not."""
        dash = self._dash
        if buffer.startswith(dash, offset):
            return _after_delimiter(buffer, offset + len(dash), end)
        if len(buffer) - offset < len(dash) and dash.startswith(buffer[offset:]):
            if end:
                raise MultipartError("the body ends in a part")
            return 0
        return -1


def _after_delimiter(buffer: bytes, at: int, end: bool) -> int:
    """Go's verdict on a possible delimiter ending before ``buffer[at]``: 1 if it is one
    (``--``, white space or the body's end follow), -1 if not, 0 if more bytes decide."""
    if at >= len(buffer):
        return 1 if end else 0
    if buffer[at] in _DELIMITER_ENDS:
        return 1
    if buffer[at] != _DASH:
        return -1
    if at + 1 >= len(buffer):
        return -1 if end else 0
    return 1 if buffer[at + 1] == _DASH else -1
