"""Upload validation (spec 2.4-2.7): from the current state and the uploaded files to the rows
to store, or a typed refusal. Pure apart from signing: reads go through ``RepositoryState``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from tufnotary.metadata.canonical import (
    NumberFormatError,
    TooManyValuesError,
    check_value_count,
    collector_paused,
)
from tufnotary.metadata.errors import FormatError, MetadataError
from tufnotary.metadata.keys import X509_TYPES, Key, check_certificate
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    Envelope,
    FileMeta,
    Metadata,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
    delegation_depth,
    format_expires,
    is_targets_role,
    is_valid_role,
    parent_role,
    path_allowed,
    restrict_paths,
    signed_type,
)
from tufnotary.metadata.verify import (
    check_fresh,
    check_signature_count,
    check_version,
    verify_root,
    verify_threshold,
)
from tufnotary.server.errors import (
    InvalidRole,
    InvalidUpdate,
    MalformedJSON,
    TooLarge,
    ValidationFailed,
    bad_root,
    bad_snapshot,
    bad_targets,
    invalid,
)
from tufnotary.server.storage.metadata import NewFile

SNAPSHOT_LIFETIME = timedelta(days=3 * 365)
TIMESTAMP_LIFETIME = timedelta(days=14)
NO_SNAPSHOT_KEY = (
    "no snapshot was included in update and server does not hold current snapshot key for "
    "repository"
)


def no_timestamp_key(gun: str) -> str:
    """Why a publish to ``gun`` is refused when root lists no timestamp key held here (e.g.
    the repository was imported from another notary server), and what the owner does."""
    return (
        "no timestamp keys exist on the server (imported repository?): the owner must rotate "
        f"the timestamp key: notary key rotate {gun} timestamp -r"
    )


S = TypeVar("S", bound=Signed)


class RepositoryState(Protocol):
    """Read access to what is stored for one GUN."""

    def current(self, role: str) -> bytes | None:
        """Bytes of the role's current version, None if there is none."""

    def signed(self, role: str, signed_class: type[S]) -> S | None:
        """The parsed ``signed`` part of the role's current version, None if there is none
        (MetadataError if it does not load)."""


class RoleSigner(Protocol):
    """Signs server-generated snapshots and timestamps with server-held keys."""

    def sign(self, gun: str, role: str, root: Root, signed: Signed) -> bytes | None:
        """Wire bytes, or None when the server holds fewer keys than the role's threshold."""


MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one upload may contain (README, Configuration)."""

    max_delegations: int = 10_000
    max_delegation_depth: int = 32
    max_signatures: int = 32
    max_json_values: int = 4_000_000
    max_root_bytes: int = MIB
    max_snapshot_bytes: int = 8 * MIB
    max_timestamp_bytes: int = 64 * 1024
    max_targets_bytes: int = 64 * MIB

    def max_bytes(self, role: str) -> int:
        """The size cap of one file of ``role`` (targets covers delegations; the smallest
        cap for a name that is no role, which is refused anyway)."""
        if is_targets_role(role):
            return self.max_targets_bytes
        caps = {
            ROOT: self.max_root_bytes,
            SNAPSHOT: self.max_snapshot_bytes,
            TIMESTAMP: self.max_timestamp_bytes,
        }
        return caps.get(role, min(caps.values()))


@dataclass(frozen=True)
class Part:
    """One uploaded file: its role, its bytes (stored verbatim), its version and its typed
    document, or the MetadataError its ``signed`` part gives, which validation reports.

    The typed document is read at once so that the decoded JSON is freed before validation:
    kept through the request, a large targets file's tens of thousands of containers would be
    walked by the garbage collector (the typed form has none: FileMeta is untracked).
    """

    role: str
    data: bytes
    version: int
    parsed: Metadata[Signed] | MetadataError

    def metadata(self, signed_class: type[S]) -> Metadata[S]:
        """The typed document (``signed_class`` is the role's), or its MetadataError."""
        if isinstance(self.parsed, MetadataError):
            raise self.parsed
        assert isinstance(self.parsed.signed, signed_class)
        return self.parsed  # type: ignore[return-value]

    @classmethod
    def parse(cls, filename: str, data: bytes, limits: Limits) -> Part:
        """InvalidRole, MalformedJSON, InvalidUpdate for numbers Go cannot verify, or
        TooLarge for more JSON values than ``limits`` allow (counted before decoding)."""
        role = filename.removesuffix(".json")
        if not is_valid_role(role):
            raise InvalidRole(filename)
        if delegation_depth(role) > limits.max_delegation_depth:
            raise invalid(f"{role} is nested deeper than {limits.max_delegation_depth} levels")
        try:
            check_value_count(data, limits.max_json_values)
        except TooManyValuesError as exc:
            raise TooLarge(f"{role}: {exc} (max_json_values)", log=f"{role}: {exc}") from exc
        with collector_paused():
            try:
                envelope = Envelope.from_bytes(data)
            except NumberFormatError as exc:
                raise invalid(f"{role}: {exc}") from exc
            except FormatError as exc:
                raise MalformedJSON(log=f"{role}: {exc}") from exc
            try:
                parsed: Metadata[Signed] | MetadataError = Metadata.from_envelope(
                    envelope, signed_type(role)
                )
            except MetadataError as exc:
                parsed = exc
            return cls(role, data, envelope.version, parsed)


@dataclass
class _Loaded:
    """A targets-type role the update relies on, with the effective paths it may sign for."""

    signed: Targets
    data: bytes
    paths: list[str] | None  # None for a stored role whose delegation chain is not checked


@dataclass
class UpdateValidator:
    """Validates one upload to one GUN and produces every row to store."""

    gun: str
    state: RepositoryState
    signer: RoleSigner
    limits: Limits = field(default_factory=Limits)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self._targets: dict[str, _Loaded] = {}

    def validate(self, parts: Mapping[str, Part]) -> list[NewFile]:
        root, root_data = self._root(parts.get(ROOT))
        files = [NewFile(ROOT, root.version, parts[ROOT].data)] if ROOT in parts else []
        uploaded = sorted(
            (role for role in parts if is_targets_role(role)),
            key=lambda role: (delegation_depth(role), role),
        )
        for role in uploaded:
            self._check_targets(root, parts[role])
            files.append(NewFile(role, parts[role].version, parts[role].data))
        if SNAPSHOT in parts:
            snapshot = self._check_snapshot(root, root_data, parts[SNAPSHOT])
        else:
            snapshot = self._make_snapshot(root, root_data)
        files.append(snapshot)
        files.append(self._make_timestamp(root, snapshot.data))
        return files

    # -- root --------------------------------------------------------------------------------

    def _root(self, part: Part | None) -> tuple[Root, bytes]:
        stored_data = self.state.current(ROOT)
        try:
            stored = self.state.signed(ROOT, Root)
        except MetadataError as exc:
            raise InvalidUpdate(log=f"stored root does not load: {exc}") from exc
        if part is None:
            if stored is None or stored_data is None:
                raise invalid("no pre-existing root and no root provided in update.")
            return stored, stored_data
        current = stored.version if stored else 1
        if part.version not in (current, current + 1):
            raise bad_root(
                "Root modifications must increment the version. "
                f"Current {current}, new {part.version}"
            )
        try:
            metadata = part.metadata(Root)
            signers = metadata.signed.root_key_ids() | (stored.root_key_ids() if stored else set())
            check_signature_count(metadata, signers, ROOT, self.limits.max_signatures)
            verify_root(metadata, self.gun, previous=stored, min_version=current, now=self.now)
        except MetadataError as exc:
            raise bad_root(str(exc)) from exc
        return metadata.signed, part.data

    # -- targets and delegations -------------------------------------------------------------

    def _stored_targets(self, role: str) -> _Loaded | None:
        """An ancestor the update did not include, read from storage (expiry allowed)."""
        if role in self._targets:
            return self._targets[role]
        data = self.state.current(role)
        try:
            signed = self.state.signed(role, Targets)
        except MetadataError as exc:
            raise InvalidUpdate(log=f"stored {role} does not load: {exc}") from exc
        if data is None or signed is None:
            return None
        loaded = _Loaded(signed, data, None)
        self._targets[role] = loaded
        return loaded

    def _effective_paths(self, role: str) -> list[str]:
        """Paths ``role`` may sign for: its own, narrowed by every ancestor delegation."""
        paths = [""]
        ancestors = role.split("/")
        for depth in range(1, len(ancestors)):
            parent = self._stored_targets("/".join(ancestors[:depth]))
            name = "/".join(ancestors[: depth + 1])
            entry = parent.signed.delegations.role(name) if parent else None
            if entry is None:
                raise bad_targets(f"{name} is not delegated by {parent_role(name)}")
            paths = restrict_paths(entry.paths, paths)
        return paths

    def _check_delegation_keys(self, keys: Mapping[str, Key]) -> None:
        for key in keys.values():
            if key.keytype in X509_TYPES:
                for cert in key.certificates():
                    check_certificate(cert, None)

    def _check_targets(self, root: Root, part: Part) -> None:
        role = part.role
        try:
            metadata = part.metadata(Targets)
            targets = metadata.signed
            if role == TARGETS:
                keys, threshold, paths = (
                    root.role_keys(TARGETS),
                    root.roles[TARGETS].threshold,
                    [""],
                )
                keyids = root.roles[TARGETS].keyids
            else:
                paths = self._effective_paths(role)
                parent = self._stored_targets(parent_role(role))
                assert parent is not None  # _effective_paths checked the chain
                entry = parent.signed.delegations.role(role)
                assert entry is not None
                keys = parent.signed.delegations.role_keys(entry)
                self._check_delegation_keys(keys)
                threshold, keyids = entry.threshold, entry.keyids
            check_signature_count(metadata, keyids, role, self.limits.max_signatures)
            verify_threshold(metadata, keys, threshold, role)
            check_version(targets, role, 1)
            check_fresh(targets, role, self.now)
            self._check_structure(role, targets)
            self._check_paths(role, targets, paths)
        except MetadataError as exc:
            raise bad_targets(str(exc)) from exc
        self._targets[role] = _Loaded(targets, part.data, paths)

    def _check_structure(self, role: str, targets: Targets) -> None:
        roles = targets.delegations.roles
        if len(roles) > self.limits.max_delegations:
            raise FormatError(f"{role} delegates to more than {self.limits.max_delegations} roles")
        for entry in roles:
            if parent_role(entry.name) != role or not is_valid_role(entry.name):
                raise FormatError(f"{entry.name!r} is not a valid direct delegation of {role}")
            if delegation_depth(entry.name) > self.limits.max_delegation_depth:
                raise FormatError(f"{entry.name} is nested too deeply")
            if entry.threshold < 1:
                raise FormatError(f"{entry.name} threshold must be at least 1")
            missing = [k for k in entry.keyids if k not in targets.delegations.keys]
            if missing:
                raise FormatError(f"{entry.name} lists unknown key {missing[0]}")

    def _check_paths(self, role: str, targets: Targets, paths: list[str]) -> None:
        """A delegation may not add targets outside its paths (decision 12)."""
        if role == TARGETS:
            return
        prefixes = tuple(paths)
        outside = [name for name in targets.targets if not path_allowed(name, prefixes)]
        if not outside:
            return
        previous = self.state.signed(role, Targets)
        for name in outside:
            before = previous.targets.get(name) if isinstance(previous, Targets) else None
            if before is None or before.to_dict() != targets.targets[name].to_dict():
                raise FormatError(f"target {name!r} is outside the paths delegated to {role}")

    # -- snapshot and timestamp --------------------------------------------------------------

    def _checksummed(self, root_data: bytes) -> dict[str, bytes]:
        """Every file the snapshot must describe: root and the targets roles loaded."""
        files = {ROOT: root_data}
        files.update({role: loaded.data for role, loaded in self._targets.items()})
        return files

    def _check_snapshot(self, root: Root, root_data: bytes, part: Part) -> NewFile:
        try:
            metadata = part.metadata(Snapshot)
            threshold = root.roles[SNAPSHOT].threshold
            keyids = root.roles[SNAPSHOT].keyids
            check_signature_count(metadata, keyids, SNAPSHOT, self.limits.max_signatures)
            verify_threshold(metadata, root.role_keys(SNAPSHOT), threshold, SNAPSHOT)
            check_version(metadata.signed, SNAPSHOT, 1)
            check_fresh(metadata.signed, SNAPSHOT, self.now)
            metadata.signed.require_meta(ROOT, TARGETS)
            for role, data in self._checksummed(root_data).items():
                entry = metadata.signed.meta.get(role)
                if entry is None:
                    raise FormatError(f"snapshot lists no entry for {role}")
                entry.verify(data, f"snapshot entry for {role}")
        except MetadataError as exc:
            raise bad_snapshot(str(exc)) from exc
        return NewFile(SNAPSHOT, metadata.signed.version, part.data)

    def _previous(self, role: str, signed_class: type[Signed]) -> Signed | None:
        try:
            return self.state.signed(role, signed_class)
        except MetadataError as exc:
            raise invalid(f"stored {role} does not load: {exc}") from exc

    def _make_snapshot(self, root: Root, root_data: bytes) -> NewFile:
        previous = self._previous(SNAPSHOT, Snapshot)
        if previous is None and TARGETS not in self._targets:
            raise invalid("the first publish of a repository must include targets")
        meta = dict(previous.meta) if isinstance(previous, Snapshot) else {}
        meta.update(
            {role: FileMeta.of(data) for role, data in self._checksummed(root_data).items()}
        )
        version = previous.version + 1 if previous else 1
        snapshot = Snapshot(version, format_expires(self.now + SNAPSHOT_LIFETIME), meta)
        data = self.signer.sign(self.gun, SNAPSHOT, root, snapshot)
        if data is None:
            raise ValidationFailed("ErrBadHierarchy", NO_SNAPSHOT_KEY, missing=SNAPSHOT)
        return NewFile(SNAPSHOT, version, data)

    def _make_timestamp(self, root: Root, snapshot_data: bytes) -> NewFile:
        previous = self._previous(TIMESTAMP, Timestamp)
        version = previous.version + 1 if previous else 1
        timestamp = Timestamp(
            version,
            format_expires(self.now + TIMESTAMP_LIFETIME),
            {SNAPSHOT: FileMeta.of(snapshot_data)},
        )
        data = self.signer.sign(self.gun, TIMESTAMP, root, timestamp)
        if data is None:
            raise bad_root(no_timestamp_key(self.gun))
        return NewFile(TIMESTAMP, version, data)
