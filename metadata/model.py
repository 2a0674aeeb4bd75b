"""Root, Targets, Snapshot and Timestamp in Notary's dialect: from_dict / to_dict (spec 3.4-3.8).

``to_dict`` writes exactly the members the Go structs re-serialise, so ``Metadata.to_bytes``
of a parsed document reproduces the bytes a Go producer wrote.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar, Generic, Self, TypeVar

import msgspec

from tufnotary.metadata.canonical import (
    collector_paused,
    encode_canonical,
    encode_wire,
    loads,
    loads_wire,
)
from tufnotary.metadata.errors import FormatError, HashMismatchError
from tufnotary.metadata.keys import Key, b64decode, b64encode
from tufnotary.metadata.signing import Signature, Signer

ROOT = "root"
TARGETS = "targets"
SNAPSHOT = "snapshot"
TIMESTAMP = "timestamp"
BASE_ROLES = (ROOT, TARGETS, SNAPSHOT, TIMESTAMP)

HASH_SIZES = {"sha256": 32, "sha512": 64}
_DELEGATION_NAME = re.compile(r"^targets/[-a-z0-9_/]+$")
_MAX_ROLE_NAME = 255
V = TypeVar("V")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$"
)


# -- roles ------------------------------------------------------------------------------------


def is_delegation_name(name: str) -> bool:
    """``targets/...``, lower case, no empty segment or trailing slash, under 256 bytes."""
    return (
        len(name.encode()) <= _MAX_ROLE_NAME
        and bool(_DELEGATION_NAME.match(name))
        and "//" not in name
        and not name.endswith("/")
    )


def is_valid_role(name: str) -> bool:
    return name in BASE_ROLES or is_delegation_name(name)


def parent_role(name: str) -> str:
    """``targets/a/b`` -> ``targets/a``; ``targets/a`` -> ``targets``."""
    return name.rsplit("/", 1)[0]


def is_targets_role(name: str) -> bool:
    return name == TARGETS or name.startswith(TARGETS + "/")


def delegation_depth(name: str) -> int:
    """0 for ``targets``, 1 for ``targets/a``, ..."""
    return name.count("/")


def restrict_paths(paths: list[str], parent_paths: list[str]) -> list[str]:
    """A child's effective paths: those that have one of the parent's paths as prefix."""
    return [path for path in paths if any(path.startswith(prefix) for prefix in parent_paths)]


def path_allowed(target: str, paths: Sequence[str]) -> bool:
    """``target`` starts with one of ``paths`` (one C call when they are a tuple)."""
    return target.startswith(paths if isinstance(paths, tuple) else tuple(paths))


# -- times ------------------------------------------------------------------------------------


def parse_expires(text: Any) -> tuple[str, datetime]:
    """Parse Go's RFC 3339 time; return (Go's re-serialised text, aware datetime)."""
    if not isinstance(text, str):
        raise FormatError(f"expires is not an RFC 3339 time: {text!r}")
    return _parse_rfc3339(text)


@functools.lru_cache(maxsize=1024)  # a pure function: a publish reads each expiry 3 times
def _parse_rfc3339(text: str) -> tuple[str, datetime]:
    if not (match := _RFC3339.match(text)):
        raise FormatError(f"expires is not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    fraction = (fraction or "")[:9].rstrip("0")
    if zone == "Z":
        tz: timezone = UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        tz = timezone(sign * offset)
    try:
        when = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int((fraction or "0").ljust(6, "0")[:6]), tzinfo=tz,
        )  # fmt: skip
    except ValueError as exc:
        raise FormatError(f"expires is not a valid time: {text!r}") from exc
    if when.utcoffset() == timedelta(0):
        zone = "Z"
    normalized = text[:19] + (f".{fraction}" if fraction else "") + zone
    return normalized, when


def format_expires(when: datetime) -> str:
    """A UTC time as Go's RFC3339Nano: trailing zeros of the fraction trimmed, ``Z``."""
    when = when.astimezone(UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{when.microsecond:06d}".rstrip("0")
    return text + (f".{fraction}" if fraction else "") + "Z"


# -- small parts ------------------------------------------------------------------------------


def _require(data: Any, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(name) if isinstance(data, dict) else None
    if isinstance(value, bool) and kind is int:
        raise FormatError(f"{what}.{name} must be an integer")
    if not isinstance(value, kind):
        raise FormatError(f"{what}.{name} has the wrong type")
    return value


def _collection(data: Any, name: str, kind: type, what: str) -> Any:
    """A map or list member; ``null`` or absent read as empty, as Go does."""
    if not isinstance(data, dict):
        raise FormatError(f"{what} must be an object")
    value = data.get(name)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise FormatError(f"{what}.{name} must be a {'list' if kind is list else 'map'}")
    return value


def _keys_from_dict(data: dict[str, Any], what: str) -> dict[str, Key]:
    return {
        keyid: Key.from_dict(value)
        for keyid, value in _collection(data, "keys", dict, what).items()
    }


def _map_of(
    data: Any, name: str, what: str, parse: Callable[[Any, str], V], label: str
) -> dict[str, V]:
    """A map member (see :func:`_collection`), each value read by ``parse(value, label)``
    with its key formatted into ``label``."""
    members = _collection(data, name, dict, what)
    return {key: parse(value, label.format(key)) for key, value in members.items()}


def _string_list(values: list[Any], what: str) -> list[str]:
    if not all(isinstance(value, str) for value in values):
        raise FormatError(f"{what} must be a list of strings")
    return list(values)


@dataclass
class RoleKeys:
    """The ``keyids`` and ``threshold`` of a role in root."""

    keyids: list[str]
    threshold: int

    @classmethod
    def from_dict(cls, data: Any, what: str) -> RoleKeys:
        keyids = _string_list(_collection(data, "keyids", list, what), f"{what}.keyids")
        return cls(keyids, _require(data, "threshold", int, what))

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": self.keyids, "threshold": self.threshold}


ABSENT: Any = object()
"""Marks a target without ``custom`` data (distinct from ``custom: null``)."""


class FileMeta(msgspec.Struct, gc=False):
    """Length and hashes of a file (a target, or a role in snapshot/timestamp meta).

    Not tracked by the garbage collector (it holds no reference cycle): a targets file of
    10,000 tags makes 10,000 of them, which would otherwise trigger collections.
    """

    length: int
    hashes: dict[str, bytes]
    custom: Any = ABSENT

    @classmethod
    def from_dict(cls, data: Any, what: str) -> FileMeta:
        if not isinstance(data, dict):
            raise FormatError(f"{what} must be an object")
        hashes = {
            name: b64decode(value, f"{what}.hashes.{name}")
            for name, value in _collection(data, "hashes", dict, what).items()
        }
        length = data.get("length", 0)
        if isinstance(length, bool) or not isinstance(length, int):
            raise FormatError(f"{what}.length must be an integer")
        return cls(length, hashes, data.get("custom", ABSENT))

    @classmethod
    def of(cls, data: bytes) -> FileMeta:
        """Meta of ``data``: its length, sha256 and sha512, as notary writes them."""
        return cls(
            len(data),
            {"sha256": hashlib.sha256(data).digest(), "sha512": hashlib.sha512(data).digest()},
        )

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.custom is not ABSENT and self.custom is not None:
            body["custom"] = self.custom
        body["hashes"] = {name: b64encode(value) for name, value in self.hashes.items()}
        body["length"] = self.length
        return body

    def check_hash_sizes(self, what: str) -> None:
        for name, size in HASH_SIZES.items():
            if name in self.hashes and len(self.hashes[name]) != size:
                raise FormatError(f"{what} {name} hash has the wrong length")

    def verify(self, data: bytes, what: str, *, check_length: bool = True) -> None:
        """HashMismatchError unless ``data`` has this length and every known hash matches."""
        known = [name for name in HASH_SIZES if name in self.hashes]
        if not known:
            raise HashMismatchError(f"{what} lists no sha256 or sha512 hash")
        if check_length and len(data) != self.length:
            raise HashMismatchError(f"{what} is {len(data)} bytes, not the {self.length} listed")
        for name in known:
            if hashlib.new(name, data).digest() != self.hashes[name]:
                raise HashMismatchError(f"{what} {name} hash does not match")

    @property
    def sha256_hex(self) -> str | None:
        value = self.hashes.get("sha256")
        return value.hex() if value is not None else None


_FILE_METAS = dict[str, FileMeta]


def _file_metas(data: Any, name: str, what: str, label: str) -> dict[str, FileMeta]:
    """A map member of FileMeta (see :func:`_map_of`): in one msgspec call when every entry
    has a ``length`` and base64 ``hashes``, as nearly all have; entry by entry otherwise,
    which accepts the rest (``hashes: null``, no ``length``) or names the error."""
    members = _collection(data, name, dict, what)
    try:
        return msgspec.convert(members, _FILE_METAS)
    except msgspec.ValidationError:
        return {key: FileMeta.from_dict(value, label.format(key)) for key, value in members.items()}


# -- the four document types -------------------------------------------------------------------


@dataclass
class Signed:
    """Members common to every ``signed`` object."""

    TYPE: ClassVar[str] = ""
    version: int
    expires: str

    @property
    def expires_at(self) -> datetime:
        return parse_expires(self.expires)[1]

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at < (now or datetime.now(UTC))

    @classmethod
    def _common(cls, data: Any) -> tuple[int, str]:
        if not isinstance(data, dict):
            raise FormatError("signed must be an object")
        if data.get("_type") != cls.TYPE:
            raise FormatError(f"_type must be {cls.TYPE!r}, not {data.get('_type')!r}")
        version = data.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise FormatError("version must be an integer")
        return version, parse_expires(data.get("expires"))[0]

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class Root(Signed):
    TYPE: ClassVar[str] = "Root"
    keys: dict[str, Key] = field(default_factory=dict)
    roles: dict[str, RoleKeys] = field(default_factory=dict)
    consistent_snapshot: bool = False

    @classmethod
    def from_dict(cls, data: Any) -> Root:
        version, expires = cls._common(data)
        roles = _map_of(data, "roles", "root", RoleKeys.from_dict, "roles.{}")
        consistent = data.get("consistent_snapshot", False)
        if not isinstance(consistent, bool):
            raise FormatError("consistent_snapshot must be a boolean")
        return cls(version, expires, _keys_from_dict(data, "root"), roles, consistent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": self.TYPE,
            "consistent_snapshot": self.consistent_snapshot,
            "expires": self.expires,
            "keys": {keyid: key.to_dict() for keyid, key in self.keys.items()},
            "roles": {name: role.to_dict() for name, role in self.roles.items()},
            "version": self.version,
        }

    def check_structure(self) -> None:
        """Base roles present, thresholds >= 1, every listed key id present in ``keys``."""
        if self.version < 1:
            raise FormatError("root version must be at least 1")
        for name in BASE_ROLES:
            role = self.roles.get(name)
            if role is None:
                raise FormatError(f"root lists no {name} role")
            if role.threshold < 1:
                raise FormatError(f"{name} threshold must be at least 1")
            missing = [keyid for keyid in role.keyids if keyid not in self.keys]
            if missing:
                raise FormatError(f"{name} role lists unknown key {missing[0]}")

    def role_keys(self, name: str) -> dict[str, Key]:
        role = self.roles.get(name)
        return {k: self.keys[k] for k in role.keyids if k in self.keys} if role else {}

    def root_key_ids(self) -> set[str]:
        """Key ids of the root role and of the previous root roles Notary keeps as
        ``root.<version>``: every key a root rotation may be signed with."""
        return {
            keyid
            for name, role in self.roles.items()
            if name == ROOT or name.startswith(ROOT + ".")
            for keyid in role.keyids
        }


@dataclass
class DelegatedRole:
    name: str
    keyids: list[str]
    threshold: int
    paths: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any) -> DelegatedRole:
        what = "delegations.roles[]"
        name = _require(data, "name", str, what)
        keyids = _string_list(_collection(data, "keyids", list, what), f"{name}.keyids")
        paths = _string_list(_collection(data, "paths", list, what), f"{name}.paths")
        return cls(name, keyids, _require(data, "threshold", int, what), paths)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"keyids": self.keyids, "name": self.name}
        if self.paths:
            body["paths"] = self.paths
        body["threshold"] = self.threshold
        return body


@dataclass
class Delegations:
    keys: dict[str, Key] = field(default_factory=dict)
    roles: list[DelegatedRole] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any) -> Delegations:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise FormatError("delegations must be an object")
        roles = [
            DelegatedRole.from_dict(r) for r in _collection(data, "roles", list, "delegations")
        ]
        return cls(_keys_from_dict(data, "delegations"), roles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": {keyid: key.to_dict() for keyid, key in self.keys.items()},
            "roles": [role.to_dict() for role in self.roles],
        }

    def role(self, name: str) -> DelegatedRole | None:
        return next((role for role in self.roles if role.name == name), None)

    def role_keys(self, role: DelegatedRole) -> dict[str, Key]:
        return {k: self.keys[k] for k in role.keyids if k in self.keys}


@dataclass
class Targets(Signed):
    TYPE: ClassVar[str] = "Targets"
    targets: dict[str, FileMeta] = field(default_factory=dict)
    delegations: Delegations = field(default_factory=Delegations)

    @classmethod
    def from_dict(cls, data: Any) -> Targets:
        version, expires = cls._common(data)
        targets = _file_metas(data, "targets", "targets", "target {!r}")
        return cls(version, expires, targets, Delegations.from_dict(data.get("delegations")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": self.TYPE,
            "delegations": self.delegations.to_dict(),
            "expires": self.expires,
            "targets": {name: meta.to_dict() for name, meta in self.targets.items()},
            "version": self.version,
        }


@dataclass
class _MetaDocument(Signed):
    """Snapshot and timestamp: a ``meta`` map of role name to FileMeta."""

    meta: dict[str, FileMeta] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        version, expires = cls._common(data)
        meta = _file_metas(data, "meta", cls.TYPE.lower(), "meta {!r}")
        return cls(version, expires, meta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": self.TYPE,
            "expires": self.expires,
            "meta": {name: value.to_dict() for name, value in self.meta.items()},
            "version": self.version,
        }

    def require_meta(self, *names: str) -> None:
        """Each named entry exists with a sha256 hash; every sha256/sha512 has its size."""
        for name in names:
            entry = self.meta.get(name)
            if entry is None or "sha256" not in entry.hashes:
                raise FormatError(f"{self.TYPE.lower()} lists no sha256 hash for {name}")
        for name, entry in self.meta.items():
            entry.check_hash_sizes(f"{self.TYPE.lower()} meta {name}")


@dataclass
class Snapshot(_MetaDocument):
    TYPE: ClassVar[str] = "Snapshot"


@dataclass
class Timestamp(_MetaDocument):
    TYPE: ClassVar[str] = "Timestamp"


SIGNED_TYPES: dict[str, type[Signed]] = {
    ROOT: Root,
    TARGETS: Targets,
    SNAPSHOT: Snapshot,
    TIMESTAMP: Timestamp,
}


def signed_type(role: str) -> type[Signed]:
    return Targets if is_targets_role(role) else SIGNED_TYPES[role]


# -- the envelope -----------------------------------------------------------------------------

T = TypeVar("T", bound=Signed)


@dataclass
class Envelope:
    """A parsed document before its ``signed`` object is read as a role.

    ``signed_dict`` is the generic map that was received; ``signing_bytes`` its canonical
    form (unknown members included), over which signatures are verified, as Go does.
    """

    signed_dict: dict[str, Any]
    signatures: list[Signature]
    signing_bytes: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """FormatError unless ``data`` is ``{"signed": {...}, "signatures": [...]}`` whose
        ``signed`` has a canonical form (NumberFormatError names a number that has none)."""
        wire = loads_wire(data)
        if wire is not None:
            document, signing_bytes = wire
        else:
            document = loads(data)
            if not isinstance(document, dict) or not isinstance(document.get("signed"), dict):
                raise FormatError("document must be an object with a signed object")
            signing_bytes = encode_canonical(document["signed"])
        signed = document["signed"]
        if not isinstance(signed.get("_type", ""), str):
            raise FormatError("_type must be a string")
        version = signed.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise FormatError("version must be an integer")
        if "expires" in signed:
            parse_expires(signed["expires"])
        sigs = _collection(document, "signatures", list, "document")
        return cls(signed, [Signature.from_dict(sig) for sig in sigs], signing_bytes)

    @property
    def version(self) -> int:
        return int(self.signed_dict.get("version", 0))


@dataclass
class Metadata(Generic[T]):
    """A signed document: the typed ``signed`` object and its signatures.

    ``received`` holds the bytes the signatures cover: as parsed, or as last signed.
    """

    signed: T
    signatures: list[Signature] = field(default_factory=list)
    received: bytes | None = None

    @classmethod
    def from_envelope(cls, envelope: Envelope, signed_class: type[T]) -> Metadata[T]:
        signed = signed_class.from_dict(envelope.signed_dict)
        return cls(signed, envelope.signatures, envelope.signing_bytes)

    @classmethod
    def from_bytes(cls, data: bytes, signed_class: type[T]) -> Metadata[T]:
        with collector_paused():
            return cls.from_envelope(Envelope.from_bytes(data), signed_class)

    def signing_bytes(self) -> bytes:
        """The bytes signatures cover: as received if parsed, else of ``signed.to_dict()``."""
        if self.received is not None:
            return self.received
        return encode_canonical(self.signed.to_dict())

    def sign(self, key: Signer, keyid: str | None = None) -> Signature:
        """Add (or replace) ``key``'s signature over the current ``signed``; signatures over
        other bytes (made before ``signed`` was modified) are dropped."""
        message = encode_canonical(self.signed.to_dict())
        if message != self.received:
            self.signatures, self.received = [], message
        signature = key.sign(message, keyid)
        self.signatures = [s for s in self.signatures if s.keyid != signature.keyid]
        self.signatures.append(signature)
        return signature

    def to_bytes(self) -> bytes:
        """Wire bytes: what Go produces for this document."""
        return encode_wire(self.signed.to_dict(), [sig.to_dict() for sig in self.signatures])
