"""The backup archive of `tufnotary-server export` and `restore` (docs/archive-format.md).

A tar stream: ``manifest.json`` first (format version, tool version, scope, and per member its
record count, size and SHA-256), then one JSON-lines member per table, one record per line.
Writing spools each member to a file first (the manifest carries their checksums), so no table
is held in memory; reading verifies the whole archive before anything is used, and the second
pass that hands out the records checks every checksum again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, BinaryIO

from tufnotary.server.errors import InvalidGun
from tufnotary.server.names import check_gun

FORMAT = "tufnotary-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_MANIFEST_LIMIT = 1 << 20  # bytes: a manifest lists a handful of members
LINE_LIMIT = 160 << 20
"""Bytes a record's line may take: one metadata file, base64 (import caps roots at 100 MiB)."""


class ArchiveError(Exception):
    """The archive is damaged, truncated, or not in a format this version reads."""


@dataclass(frozen=True)
class Field:
    """A record field: its JSON encoding follows ``kind`` (bytes: base64; datetime: ISO 8601
    UTC with microseconds and ``Z``); ``optional`` fields may be null."""

    name: str
    kind: type
    optional: bool = False

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        if self.kind is bytes:
            return base64.b64encode(value).decode("ascii")
        if self.kind is datetime:
            return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return value

    def decode(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        wire = str if self.kind in (bytes, datetime) else self.kind
        if type(value) is not wire:  # not isinstance: a bool is no int
            raise ValueError(f"{self.name}: expected {self.kind.__name__}, got {value!r:.40}")
        if self.kind is bytes:
            return base64.b64decode(value, validate=True)
        if self.kind is datetime:
            moment = datetime.fromisoformat(value)
            if moment.utcoffset() is None:
                raise ValueError(f"{self.name}: time without a zone: {value!r}")
            return moment.astimezone(UTC)
        return value


@dataclass(frozen=True)
class Section:
    """A table as an archive member: ``<table>.jsonl`` with these fields (the table's columns)."""

    table: str
    fields: tuple[Field, ...]
    per_gun: bool  # scoped by its ``gun`` column when the export names GUNs

    @property
    def member(self) -> str:
        return f"{self.table}.jsonl"

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.fields)

    def encode(self, record: dict[str, Any]) -> bytes:
        line = {field.name: field.encode(record[field.name]) for field in self.fields}
        text = json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8") + b"\n"

    def decode(self, line: bytes) -> dict[str, Any]:
        raw = json.loads(line)
        if not isinstance(raw, dict) or set(raw) != set(self.columns):
            raise ValueError(f"fields are not {', '.join(self.columns)}")
        record = {field.name: field.decode(raw[field.name]) for field in self.fields}
        if self.table in _NAMED_GUNS:
            try:
                check_gun(record["gun"])
            except InvalidGun as exc:
                raise ValueError(f"{record['gun']!a}: {exc.detail}") from None
        if (
            self.table == "tuf_files"
            and hashlib.sha256(record["data"]).hexdigest() != (record["sha256"])
        ):
            raise ValueError(f"{record['gun']} {record['role']} {record['version']}: bad sha256")
        return record


_ID, _AT = Field("id", int), Field("created_at", datetime)
_GUN, _VERSION, _SHA256 = Field("gun", str), Field("version", int), Field("sha256", str)
_KEY = (Field("key_id", str), Field("algorithm", str), Field("public", bytes))
SECTIONS = (
    Section(
        "tuf_files",
        (_GUN, Field("role", str), _VERSION, _SHA256, _AT, Field("data", bytes)),
        per_gun=True,
    ),
    Section("changefeed", (_ID, _AT, _GUN, _VERSION, _SHA256, Field("category", str)), True),
    Section(
        "server_keys",
        (
            *_KEY,
            _GUN,
            Field("role", str),
            Field("private", bytes, optional=True),
            _AT,
            Field("last_used", datetime, optional=True),
            Field("uri", str, optional=True),
        ),
        per_gun=True,
    ),
    Section("token_keys", (*_KEY, Field("private", bytes), _AT), per_gun=False),
    Section("realm_users", (Field("name", str), Field("password_hash", str), _AT), False),
    Section("realm_group_members", (Field("group_name", str), Field("user_name", str)), False),
    Section(
        "realm_rules",
        (_ID, Field("subject", str), Field("pattern", str), Field("actions", str), _AT),
        per_gun=False,
    ),
    Section(
        "audit_log",
        (
            _ID,
            _AT,
            Field("actor", str),
            Field("action", str),
            Field("gun", str, optional=True),
            Field("detail", str),
            Field("address", str),
            Field("request_id", str),
        ),
        per_gun=True,
    ),
)
"""Every member format 1 knows, in archive order."""
REALM = frozenset({"token_keys", "realm_users", "realm_group_members", "realm_rules"})
_BY_MEMBER = {section.member: section for section in SECTIONS}
_NAMED_GUNS = frozenset({"tuf_files", "changefeed", "server_keys"})
"""Members whose GUNs must be names the API serves (decision 21)."""


@dataclass(frozen=True)
class Member:
    """A member as the manifest lists it."""

    name: str
    records: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What an archive holds: ``scope`` (``guns``: the GUNs exported, or None for all;
    ``realm``, ``audit``: whether those were included) and ``source`` (engine, schema)."""

    format_version: int
    tool_version: str
    created_at: datetime
    scope: dict[str, Any]
    source: dict[str, Any]
    members: tuple[Member, ...]

    def records(self) -> dict[str, int]:
        """Records per table."""
        return {member.name.removesuffix(".jsonl"): member.records for member in self.members}

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "format_version": self.format_version,
            "tool_version": self.tool_version,
            "created_at": _AT.encode(self.created_at),
            "scope": self.scope,
            "source": self.source,
            "members": [vars(member) for member in self.members],
        }
        return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ArchiveError(f"{MANIFEST} does not describe a {FORMAT}")
            found = document.get("format_version")
            if found != FORMAT_VERSION:
                raise ArchiveError(
                    f"archive format version {found!r}: this tufnotary reads version "
                    f"{FORMAT_VERSION} (restore it with the tufnotary that wrote it, "
                    f"{document.get('tool_version', 'unknown')}, or a newer one)"
                )
            members = tuple(
                Member(
                    _typed(entry, "name", str),
                    _typed(entry, "records", int),
                    _typed(entry, "size", int),
                    _typed(entry, "sha256", str),
                )
                for entry in document["members"]
            )
            manifest = cls(
                found,
                _typed(document, "tool_version", str),
                _AT.decode(document["created_at"]),
                _typed(document, "scope", dict),
                _typed(document, "source", dict),
                members,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"{MANIFEST} is malformed: {exc}") from None
        names = [member.name for member in members]
        unknown = [name for name in names if name not in _BY_MEMBER]
        if unknown or len(set(names)) != len(names):
            raise ArchiveError(f"{MANIFEST} lists unknown or repeated members: {names}")
        return manifest


def _typed(document: dict[str, Any], name: str, kind: type) -> Any:
    value = document[name]
    if type(value) is not kind:
        raise ValueError(f"{name}: expected {kind.__name__}")
    return value


class ArchiveWriter:
    """Spools members into ``spool`` (a directory), then writes the tar stream."""

    def __init__(self, spool: Path) -> None:
        self._spool = spool
        self._members: list[tuple[Member, Path]] = []

    def add(self, section: Section, records: Iterable[dict[str, Any]]) -> None:
        """Spool ``records`` as the member of ``section``."""
        path = self._spool / section.member
        digest, size, count = hashlib.sha256(), 0, 0
        with path.open("wb") as spooled:
            for record in records:
                line = section.encode(record)
                spooled.write(line)
                digest.update(line)
                size, count = size + len(line), count + 1
        self._members.append((Member(section.member, count, size, digest.hexdigest()), path))

    def write(self, output: BinaryIO, scope: dict[str, Any], source: dict[str, Any]) -> Manifest:
        """Write the archive to ``output`` (need not be seekable); returns its manifest."""
        manifest = Manifest(
            FORMAT_VERSION,
            version("tufnotary"),
            datetime.now(UTC),
            scope,
            source,
            tuple(member for member, _ in self._members),
        )
        mtime = int(manifest.created_at.timestamp())
        with tarfile.open(fileobj=output, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            data = manifest.to_bytes()
            tar.addfile(_info(MANIFEST, len(data), mtime), io.BytesIO(data))
            for member, path in self._members:
                with path.open("rb") as spooled:
                    tar.addfile(_info(member.name, member.size, mtime), spooled)
        return manifest


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    return info


_DAMAGED = (tarfile.TarError, EOFError, OSError, zlib.error, UnicodeDecodeError)


class ArchiveReader:
    """One sequential pass over an archive (plain, or compressed as tarfile reads it).

    ``manifest`` is read on entry; :meth:`sections` hands out each member's records and raises
    :class:`ArchiveError` at the end of a member whose size, count or checksum differs from
    the manifest, or at the end of the archive if a member is missing.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tar: tarfile.TarFile | None = None
        self.manifest: Manifest | None = None

    def __enter__(self) -> ArchiveReader:
        try:
            self._tar = tarfile.open(self._path, mode="r|*")
            first = self._tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise ArchiveError(f"{self._path}: not an archive of {FORMAT} ({MANIFEST} first)")
            if first.size > _MANIFEST_LIMIT:
                raise ArchiveError(f"{MANIFEST} is {first.size} bytes, too large")
            self.manifest = Manifest.from_bytes(_read_all(self._tar, first))
        except _DAMAGED as exc:
            self.__exit__()
            raise ArchiveError(f"{self._path}: damaged or truncated: {exc}") from None
        except ArchiveError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def sections(self) -> Iterator[tuple[Section, Iterator[dict[str, Any]]]]:
        """Each member's section and records, in archive order; consume each records iterator
        before asking for the next section."""
        assert self._tar is not None and self.manifest is not None
        expected = {member.name: member for member in self.manifest.members}
        try:
            while (info := self._tar.next()) is not None:
                if not info.isfile():
                    raise ArchiveError(f"member {info.name} is not a regular file")
                member = expected.pop(info.name, None)
                if member is None:
                    raise ArchiveError(
                        f"member {info.name} is not listed in {MANIFEST} or repeated"
                    )
                if info.size != member.size:
                    raise ArchiveError(
                        f"member {info.name}: {info.size} bytes, {MANIFEST} says {member.size}"
                    )
                yield _BY_MEMBER[info.name], self._records(info, member)
        except _DAMAGED as exc:
            raise ArchiveError(f"{self._path}: damaged or truncated: {exc}") from None
        if expected:
            raise ArchiveError(f"{self._path}: missing members: {', '.join(sorted(expected))}")

    def _records(self, info: tarfile.TarInfo, member: Member) -> Iterator[dict[str, Any]]:
        assert self._tar is not None
        section, digest, count = _BY_MEMBER[info.name], hashlib.sha256(), 0
        handle = self._tar.extractfile(info)
        assert handle is not None  # a regular file
        try:
            while line := handle.readline(LINE_LIMIT + 1):
                digest.update(line)
                count += 1
                try:
                    if len(line) > LINE_LIMIT:
                        raise ValueError(f"longer than {LINE_LIMIT} bytes")
                    if not line.endswith(b"\n"):
                        raise ValueError("the last line does not end")
                    record = section.decode(line)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ones
                    raise ArchiveError(f"member {info.name}, line {count}: {exc}") from None
                yield record
        except _DAMAGED as exc:
            raise ArchiveError(f"{self._path}: damaged or truncated: {exc}") from None
        if digest.hexdigest() != member.sha256 or count != member.records:
            raise ArchiveError(
                f"member {info.name}: checksum or record count differs from {MANIFEST} "
                "(the archive is damaged)"
            )


def _read_all(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(info)
    assert handle is not None
    data = handle.read()
    if len(data) != info.size:
        raise ArchiveError(f"{MANIFEST} is truncated")
    return data


def verify(path: Path) -> Manifest:
    """Read the whole archive, checking every member against the manifest; its manifest."""
    with ArchiveReader(path) as reader:
        for _section, records in reader.sections():
            for _record in records:
                pass
        assert reader.manifest is not None
        return reader.manifest
