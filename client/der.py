"""The few DER structures the client builds and reads itself (key files, certificates)."""

from __future__ import annotations

SEQUENCE, BIT_STRING = 0x30, 0x03


def der(tag: int, content: bytes) -> bytes:
    """One DER element."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) of each DER element in ``data``; ValueError if malformed."""
    items, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated DER")
        tag, size = data[pos], data[pos + 1]
        pos += 2
        if size & 0x80:
            count = size & 0x7F
            if not 0 < count <= 4 or pos + count > len(data):
                raise ValueError("bad DER length")
            size = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if pos + size > len(data):
            raise ValueError("truncated DER")
        items.append((tag, data[pos : pos + size]))
        pos += size
    return items
