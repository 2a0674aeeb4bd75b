"""Repository names (GUNs) the server stores and serves (decision 21)."""

from __future__ import annotations

import re

from tufnotary.server.errors import InvalidGun

MAX_GUN_BYTES = 255
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def check_gun(gun: str) -> None:
    """Decision 21: 1-255 bytes, no '..', no empty segment, no control characters."""
    problem = None
    if len(gun.encode("utf-8", "surrogatepass")) > MAX_GUN_BYTES:
        problem = f"longer than {MAX_GUN_BYTES} bytes"
    elif ".." in gun:
        problem = "contains '..'"
    elif "" in gun.split("/"):
        problem = "has an empty path segment"
    elif _CONTROL.search(gun):
        problem = "contains control characters"
    if problem:
        raise InvalidGun(f"invalid repository name: {problem}")
