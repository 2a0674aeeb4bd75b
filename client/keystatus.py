"""``key status``: each role's keys, where they live, how old they are, when to rotate them.

A key's age is counted from its key file's modification time (key files are written once),
from a token key's registration (``key import --uri``), or for a root key from its
certificate's notBefore. Keys not held here are the server's for timestamp and snapshot (as
the publisher assumes: without a snapshot key it lets the server sign), aged by when the server
says it made them (a tufnotary server's ``X-Tufnotary-Key-Created``; unknown from notary-server),
else someone else's, of unknown age.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from tufnotary.client.trustdir import KeyInfo, TrustDir
from tufnotary.client.trusted import TrustedSet
from tufnotary.metadata.errors import FormatError
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS, TIMESTAMP, Signed

DEFAULT_MAX_AGE = timedelta(days=365)
DEFAULT_SERVER_MAX_AGE = timedelta(days=90)
EXPIRY_WARNING = timedelta(days=30)
FILE, TOKEN, SERVER, ELSEWHERE = "file", "token", "server", "elsewhere"
_SERVER_ROLES = frozenset({SNAPSHOT, TIMESTAMP})

ServerKeyDates = Callable[[str], tuple[str, datetime | None] | None]
"""For a role, the id of the key the server holds for it and when it was made (None if the
server cannot say)."""


@dataclass(frozen=True)
class KeyState:
    """One key of a role: where it lives (``location``; ``where``: file or URI) and since
    when (``created``, None if unknown here)."""

    key_id: str
    location: str
    where: str | None
    created: datetime | None

    def age(self, now: datetime) -> timedelta | None:
        return now - self.created if self.created else None


@dataclass(frozen=True)
class RoleState:
    """A role's keys, threshold, metadata expiry, and what needs doing."""

    role: str
    threshold: int
    expires: datetime | None
    keys: list[KeyState]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "role": self.role,
            "threshold": self.threshold,
            "expires": self.expires.isoformat() if self.expires else None,
            "keys": [
                {
                    "key_id": key.key_id,
                    "location": key.location,
                    "where": key.where,
                    "created": key.created.isoformat() if key.created else None,
                    "age_days": age.days if (age := key.age(now)) is not None else None,
                }
                for key in self.keys
            ],
            "warnings": self.warnings,
        }


def key_status(
    trusted: TrustedSet,
    trustdir: TrustDir,
    gun: str,
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
    server_max_age: timedelta = DEFAULT_SERVER_MAX_AGE,
    server_keys: ServerKeyDates | None = None,
    now: datetime | None = None,
) -> list[RoleState]:
    """The state of every role of the trusted repository: base roles, then delegations.
    ``server_keys`` ages the server's keys; keys over ``max_age`` (``server_max_age`` for the
    server's) are to be rotated."""
    now = now or datetime.now(UTC)
    held = {info.key_id: info for info in trustdir.list_keys()}
    root = trusted.root
    documents: dict[str, Signed | None] = {
        ROOT: root,
        TARGETS: trusted.targets(TARGETS),
        SNAPSHOT: trusted.snapshot,
        TIMESTAMP: trusted.timestamp,
    }
    entries = [(role, keys.keyids, keys.threshold, root.keys) for role, keys in root.roles.items()]
    for parent in trusted.walk():
        parent_targets = trusted.targets(parent)
        delegated_keys = parent_targets.delegations.keys if parent_targets else {}
        for entry in trusted.delegations_of(parent):
            documents[entry.name] = trusted.targets(entry.name)
            entries.append((entry.name, entry.keyids, entry.threshold, delegated_keys))
    states = []
    for role, keyids, threshold, keys in entries:
        found = [_key_state(role, keyid, keys.get(keyid), held, trustdir) for keyid in keyids]
        if server_keys is not None and any(key.location == SERVER for key in found):
            found = _aged_by_server(found, server_keys(role))
        document = documents.get(role)
        state = RoleState(role, threshold, document.expires_at if document else None, found)
        state.warnings.extend(_warnings(state, gun, max_age, server_max_age, now))
        states.append(state)
    order = {role: index for index, role in enumerate((ROOT, TARGETS, SNAPSHOT, TIMESTAMP))}
    return sorted(states, key=lambda state: (order.get(state.role, len(order)), state.role))


def _key_state(
    role: str, key_id: str, key: Key | None, held: dict[str, KeyInfo], trustdir: TrustDir
) -> KeyState:
    canonical = key_id
    created = None
    if key is not None and role == ROOT:
        try:
            canonical = key.canonical_id
            created = key.certificates()[0].not_valid_before_utc
        except FormatError:
            pass
    info = held.get(canonical) or held.get(key_id)
    if info is None:
        return KeyState(key_id, SERVER if role in _SERVER_ROLES else ELSEWHERE, None, created)
    record = trustdir.token_keys.get(info.key_id) if info.uri else None
    if record is not None:
        return KeyState(key_id, TOKEN, record.uri, created or record.created)
    mtime = datetime.fromtimestamp(info.path.stat().st_mtime, UTC)
    return KeyState(key_id, FILE, str(info.path), created or mtime)


def _aged_by_server(
    keys: list[KeyState], server_key: tuple[str, datetime | None] | None
) -> list[KeyState]:
    """``keys`` with the server's key dated by the server (if it holds that key)."""
    if server_key is None or server_key[1] is None:
        return keys
    key_id, created = server_key
    return [
        replace(key, created=created) if key.location == SERVER and key.key_id == key_id else key
        for key in keys
    ]


def _warnings(
    state: RoleState, gun: str, max_age: timedelta, server_max_age: timedelta, now: datetime
) -> list[str]:
    """What to do about the role: old keys to rotate, metadata about to expire."""
    warnings = []
    for key in state.keys:
        age = key.age(now)
        limit = server_max_age if key.location == SERVER else max_age
        if state.role != ROOT and age is not None and age > limit:
            warnings.append(
                f"key {key.key_id[:12]} is {age.days} days old (over {limit.days}): "
                f"rotate it ({_rotate_command(state.role, gun, key.location == SERVER)})"
            )
    server_signed = state.role in _SERVER_ROLES and all(k.location == SERVER for k in state.keys)
    left = state.expires - now if state.expires else None
    if left is not None and left < EXPIRY_WARNING and not server_signed:
        renew = (
            f"publish any change to {gun} to re-sign it"
            if state.role in (ROOT, SNAPSHOT)
            else f"re-sign it: tufnotary witness {gun} {state.role}"
        )
        warnings.append(f"{state.role} metadata expires in {max(left.days, 0)} days: {renew}")
    return warnings


def _rotate_command(role: str, gun: str, server: bool) -> str:
    if role in (TARGETS, SNAPSHOT, TIMESTAMP):
        return f"tufnotary key rotate {gun} {role}" + (" -r" if server else "")
    return f"add a new key with tufnotary delegation add {gun} {role} NEW.pem"
