"""What the routes do, without HTTP: current files, publishing, re-signing, keys, deletion."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from tufnotary.metadata.errors import MetadataError
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TIMESTAMP,
    FileMeta,
    Metadata,
    Root,
    Signed,
    Snapshot,
    Timestamp,
    format_expires,
)
from tufnotary.server.errors import (
    MetadataNotFound,
    NoServerKey,
    ServerError,
    TooManyKeys,
    Unavailable,
    UpdateFailed,
    VersionConflictError,
)
from tufnotary.server.ratelimit import RateLimit
from tufnotary.server.signer import NoRegisteredKey, ServedKey, ServerKeys
from tufnotary.server.storage.audit import AuditEntry, AuditLog, AuditRecord
from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.metadata import (
    ChangefeedEntry,
    MetadataStore,
    NewFile,
    StoredFile,
    VersionConflict,
)
from tufnotary.server.updates import (
    SNAPSHOT_LIFETIME,
    TIMESTAMP_LIFETIME,
    Limits,
    Part,
    UpdateValidator,
)

log = logging.getLogger(__name__)
S = TypeVar("S", bound=Signed)
_PARSED_CACHE_SIZE = 4096
_REACHED_CACHE_BYTES = 64 * 1024 * 1024

_NONE: Mapping[str, StoredFile] = {}

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A thread-safe least-recently-used map bounded by the summed weight of its values."""

    def __init__(self, budget: int, weigh: Callable[[V], int] = lambda _: 1) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._budget, self._weigh, self._used = budget, weigh, 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(value)
        if weight > self._budget:
            return
        with self._lock:
            replaced = self._items.pop(key, None)
            if replaced is not None:
                self._used -= self._weigh(replaced)
            self._items[key] = value
            self._used += weight
            while self._used > self._budget:
                _, evicted = self._items.popitem(last=False)
                self._used -= self._weigh(evicted)


@dataclass(frozen=True)
class Requester:
    """Who asks for a write, for the audit log."""

    actor: str
    address: str = ""
    request_id: str = ""

    def entry(self, action: str, gun: str | None, **detail: Any) -> AuditEntry:
        return AuditEntry(self.actor, action, gun, detail, self.address, self.request_id)


@dataclass(frozen=True)
class _Current:
    """The current timestamp of a GUN and the snapshot it names; ``candidates``: the newest
    file of some roles, read along with the timestamp, used where the walk reaches them."""

    timestamp: StoredFile
    snapshot: StoredFile | None
    candidates: Mapping[str, StoredFile] = field(default_factory=dict)


@dataclass(eq=False)
class TrustService:
    """The trust collections of every GUN: metadata, its audit log and the server keys."""

    store: MetadataStore
    audit: AuditLog
    keys: ServerKeys
    limits: Limits
    refresh_margin: timedelta = timedelta(minutes=5)
    key_creations: RateLimit | None = None
    _parsed: LRU[tuple[str, str], Signed] = field(
        init=False, repr=False, default_factory=lambda: LRU(_PARSED_CACHE_SIZE)
    )
    # What a timestamp reaches never changes: (gun, timestamp sha256, role) -> file.
    _reached: LRU[tuple[str, str, str], StoredFile] = field(
        init=False,
        repr=False,
        default_factory=lambda: LRU(_REACHED_CACHE_BYTES, weigh=lambda file: len(file.data)),
    )

    # -- reading -----------------------------------------------------------------------------

    def _parse(self, file: StoredFile, signed_class: type[S]) -> S:
        """The signed part of a stored file, cached by checksum (stored bytes never change)."""
        key = (file.role, file.sha256)
        cached = self._parsed.get(key)
        if cached is None:
            cached = Metadata.from_bytes(file.data, signed_class).signed
            self._parsed.put(key, cached)
        assert isinstance(cached, signed_class)
        return cached

    def _walk(self, gun: str, prefetch: Sequence[str] = ()) -> _Current | None:
        """Latest timestamp and the snapshot it lists: what "current" means (spec 1.5.3).

        ``prefetch``: roles whose newest files are read in the same query as the timestamp;
        the walk uses them when they are the ones it reaches (they nearly always are).
        """
        if prefetch:
            return self._walk_from(gun, self.store.latest_of(gun, (TIMESTAMP, *prefetch)))
        timestamp = self.store.latest(gun, TIMESTAMP)
        return None if timestamp is None else self._walk_from(gun, {TIMESTAMP: timestamp})

    def _walk_from(self, gun: str, candidates: Mapping[str, StoredFile]) -> _Current | None:
        """The walk from the newest files ``candidates`` (the timestamp's among them, if any)."""
        timestamp = candidates.get(TIMESTAMP)
        if timestamp is None:
            return None
        snapshot = self._reach(gun, timestamp, SNAPSHOT, candidates)
        return _Current(timestamp, snapshot, candidates)

    def _reach(
        self,
        gun: str,
        timestamp: StoredFile,
        role: str,
        candidates: Mapping[str, StoredFile] = _NONE,
    ) -> StoredFile | None:
        """The file of ``role`` that ``timestamp`` reaches through its snapshot (one of
        ``candidates`` if its checksum is the one listed, else read by checksum)."""
        key = (gun, timestamp.sha256, role)
        found = self._reached.get(key)
        if found is not None:
            return found
        if role == SNAPSHOT:
            entry = self._parse(timestamp, Timestamp).meta.get(SNAPSHOT)
        else:
            snapshot = self._reach(gun, timestamp, SNAPSHOT, candidates)
            entry = self._parse(snapshot, Snapshot).meta.get(role) if snapshot else None
        sha256 = entry.sha256_hex if entry else None
        candidate = candidates.get(role)
        if candidate is not None and sha256 is not None and candidate.sha256 == sha256:
            found = candidate
        else:
            found = self.store.by_checksum(gun, role, sha256) if sha256 else None
        if found is not None:
            self._reached.put(key, found)
        return found

    def current_file(
        self, gun: str, role: str, current: _Current | None = None
    ) -> StoredFile | None:
        """The version of ``role`` the latest timestamp reaches (``current``: walked already)."""
        current = current or self._walk(gun, walked_roles(role))
        if current is None:
            return None
        if role == TIMESTAMP:
            return current.timestamp
        return self._reach(gun, current.timestamp, role, current.candidates)

    def current(self, gun: str, role: str) -> StoredFile:
        """GET ``role.json``: timestamps and server-signed snapshots are refreshed first."""
        with _storage_errors(Unavailable):
            if role in (TIMESTAMP, SNAPSHOT):
                current, _ = self._fresh(gun)
                found = current.timestamp if role == TIMESTAMP else current.snapshot
            else:
                found = self.current_file(gun, role)
        if found is None:
            raise MetadataNotFound()
        return found

    def by_checksum(self, gun: str, role: str, sha256: str) -> StoredFile:
        with _storage_errors(Unavailable):
            found = self.store.by_checksum(gun, role, sha256.lower())
        if found is None:
            raise MetadataNotFound()
        return found

    def by_version(self, gun: str, role: str, version: int) -> StoredFile:
        with _storage_errors(Unavailable):
            found = self.store.by_version(gun, role, version) if 0 < version < 2**31 else None
        if found is None:
            raise MetadataNotFound()
        return found

    # -- refreshing on read (spec 2.8) -------------------------------------------------------

    def current_of(
        self, gun: str, role: str, newest: Mapping[str, StoredFile]
    ) -> tuple[StoredFile | None, datetime | None]:
        """What :meth:`current` serves, walked from ``newest`` (the newest files of the
        timestamp and of :func:`walked_roles`), as long as it is not due to be re-signed; and
        when that is (None: never). Raises StorageError and MetadataError."""
        current = self._walk_from(gun, newest)
        if current is None:
            return None, None
        due = None
        if role in (TIMESTAMP, SNAPSHOT) and current.snapshot is not None:
            timestamp = self._parse(current.timestamp, Timestamp)
            due = self._due(timestamp, self._parse(current.snapshot, Snapshot))
        return self.current_file(gun, role, current), due

    def _due(self, timestamp: Timestamp, snapshot: Snapshot) -> datetime:
        return min(timestamp.expires_at, snapshot.expires_at) - self.refresh_margin

    def _expiring(self, signed: Signed, now: datetime) -> bool:
        return signed.expires_at <= now + self.refresh_margin

    def _fresh(self, gun: str, by: Requester | None = None) -> tuple[_Current, list[NewFile]]:
        """The current timestamp and snapshot, re-signed first if they are about to expire,
        and the re-signed files this call stored (the re-signing audited as ``by`` if given).

        Concurrent readers race to store the same next version: the loser reads the winner's.
        """
        current = self._walk(gun, (SNAPSHOT,))
        if current is None:
            raise MetadataNotFound()
        try:
            files = self._refreshed(gun, current, datetime.now(UTC))
        except MetadataError as exc:
            log.warning("cannot refresh the timestamp of %s: %s", gun, exc)
            return current, []
        if not files:
            return current, []
        stored = {file.role: file.version for file in files}
        try:
            self.store.update_many(
                gun,
                files,
                by.entry("resign", gun, stored=stored) if by else None,
                base=current.timestamp.sha256,
            )
        except VersionConflict:
            files = []  # another reader or a publish stored a newer timestamp: serve that
        return self._walk(gun) or current, files

    def resign(self, gun: str, by: Requester) -> list[NewFile]:
        """Re-sign the current timestamp (and a server-signed snapshot) of ``gun`` now if
        either expires within ``refresh_margin``, as a read would; the files stored."""
        with _storage_errors(UpdateFailed):
            return self._fresh(gun, by)[1]

    def _refreshed(self, gun: str, current: _Current, now: datetime) -> list[NewFile]:
        """New snapshot (if server-signed and expiring) and timestamp versions, or nothing."""
        if current.snapshot is None:
            return []
        timestamp = self._parse(current.timestamp, Timestamp)
        snapshot = self._parse(current.snapshot, Snapshot)
        snapshot_due = self._expiring(snapshot, now)
        if not snapshot_due and not self._expiring(timestamp, now):
            return []
        root_entry = snapshot.meta.get(ROOT)
        root_sha256 = root_entry.sha256_hex if root_entry else None
        root_file = self.store.by_checksum(gun, ROOT, root_sha256) if root_sha256 else None
        if root_file is None:
            return []
        root = self._parse(root_file, Root)
        files = []
        if snapshot_due and self.keys.can_sign(gun, SNAPSHOT, root):
            meta = {**snapshot.meta, ROOT: FileMeta.of(root_file.data)}
            renewed = Snapshot(snapshot.version + 1, format_expires(now + SNAPSHOT_LIFETIME), meta)
            data = self.keys.sign(gun, SNAPSHOT, root, renewed)
            if data is not None:
                files.append(NewFile(SNAPSHOT, renewed.version, data))
        snapshot_data = files[0].data if files else current.snapshot.data
        renewed_timestamp = Timestamp(
            timestamp.version + 1,
            format_expires(now + TIMESTAMP_LIFETIME),
            {SNAPSHOT: FileMeta.of(snapshot_data)},
        )
        data = self.keys.sign(gun, TIMESTAMP, root, renewed_timestamp)
        if data is None:
            log.warning("%s: the server holds no timestamp key to re-sign with", gun)
            return []
        return [*files, NewFile(TIMESTAMP, renewed_timestamp.version, data)]

    # -- writing -----------------------------------------------------------------------------

    def publish(self, gun: str, parts: dict[str, Part], by: Requester) -> list[NewFile]:
        """Validate an upload against the current state and store it atomically."""
        with _storage_errors(UpdateFailed):
            state = _StoreState(self, gun)
            signer = _KeptSigner(self.keys)
            files = UpdateValidator(gun, state, signer, self.limits).validate(parts)
            stored = {file.role: file.version for file in files}
            try:
                self.store.update_many(
                    gun, files, by.entry("upload", gun, stored=stored), base=state.base
                )
            except VersionConflict as exc:
                raise VersionConflictError(log=str(exc)) from exc
        self._keep_parsed(files, signer.signed, parts)
        return files

    def _keep_parsed(
        self, files: Sequence[NewFile], signed: Mapping[bytes, Signed], parts: Mapping[str, Part]
    ) -> None:
        """Put the files just stored into the parse cache as the objects they were made of
        (the server's signed ones, an uploaded snapshot): the next publish reads them."""
        kept = dict(signed)
        uploaded = parts.get(SNAPSHOT)
        if uploaded is not None:
            kept[uploaded.data] = uploaded.metadata(Snapshot).signed  # validated: no error
        for file in files:
            found = kept.get(file.data)
            if found is not None:
                self._parsed.put((file.role, file.sha256), found)

    def delete(self, gun: str, by: Requester) -> int:
        with _storage_errors(UpdateFailed):
            return self.store.delete_gun(gun, by.entry("delete", gun))

    def changes(self, gun: str | None, change_id: int, records: int) -> list[ChangefeedEntry]:
        with _storage_errors(Unavailable):
            return self.store.changes(gun, change_id, records)

    # -- server keys -------------------------------------------------------------------------

    def _root(self, gun: str) -> Root | None:
        root_file = self.current_file(gun, ROOT)
        return self._parse(root_file, Root) if root_file else None

    def server_key(self, gun: str, role: str, by: Requester) -> ServedKey:
        """GET ``role.key``; a key created now is recorded in the audit log."""
        with _storage_errors(UpdateFailed), _registered_keys():
            served = self.keys.get_or_create(gun, role, self._root(gun), self._gate(by))
            if served.new:
                key_id = served.key.key_id
                self.audit.record(by.entry("key-create", gun, role=role, key_id=key_id))
        return served

    def rotate_key(self, gun: str, role: str, by: Requester) -> ServedKey:
        with _storage_errors(UpdateFailed), _registered_keys():
            served = self.keys.rotate(gun, role, self._gate(by))
            self.audit.record(by.entry("key-rotate", gun, role=role, key_id=served.key.key_id))
        return served

    def _gate(self, by: Requester) -> Callable[[], None]:
        """Counts a key creation against ``key_creations`` per client address; TooManyKeys
        once the limit is reached."""
        limit = self.key_creations
        if limit is None:
            return lambda: None

        def gate() -> None:
            retry_after = limit.retry_after(by.address)
            if retry_after:
                raise TooManyKeys(retry_after)
            limit.hit(by.address)

        return gate

    def audit_log(self, **filters: Any) -> list[AuditRecord]:
        with _storage_errors(Unavailable):
            return self.audit.records(**filters)

    def ping(self) -> None:
        self.store.ping()


@dataclass
class _KeptSigner:
    """The server's keys as the validator's signer, keeping each object it signed by the
    bytes made of it."""

    keys: ServerKeys
    signed: dict[bytes, Signed] = field(default_factory=dict)

    def sign(self, gun: str, role: str, root: Root, signed: Signed) -> bytes | None:
        data = self.keys.sign(gun, role, root, signed)
        if data is not None:
            self.signed[data] = signed
        return data


def walked_roles(role: str) -> tuple[str, ...]:
    """The roles whose newest files the walk to the current ``role`` reads with the timestamp."""
    return (SNAPSHOT,) if role in (TIMESTAMP, SNAPSHOT) else (SNAPSHOT, role)


class _StoreState:
    """RepositoryState over the store: the update validator's view of one GUN, read once
    (timestamp, snapshot and root in one query), parsed through the service's cache."""

    def __init__(self, service: TrustService, gun: str) -> None:
        self._service = service
        self._gun = gun
        self._walked = service._walk(gun, prefetch=(SNAPSHOT, ROOT))
        self._files: dict[str, StoredFile | None] = {}

    @property
    def base(self) -> str | None:
        """The sha256 of the timestamp this view was read at (None: the GUN had none)."""
        return None if self._walked is None else self._walked.timestamp.sha256

    def _file(self, role: str) -> StoredFile | None:
        if self._walked is None:
            return None
        if role not in self._files:
            self._files[role] = self._service.current_file(self._gun, role, self._walked)
        return self._files[role]

    def current(self, role: str) -> bytes | None:
        found = self._file(role)
        return found.data if found else None

    def signed(self, role: str, signed_class: type[S]) -> S | None:
        found = self._file(role)
        return self._service._parse(found, signed_class) if found else None


@contextmanager
def _registered_keys() -> Iterator[None]:
    """NoRegisteredKey (key_backend 'uri') as the server error, the fix in its detail."""
    try:
        yield
    except NoRegisteredKey as exc:
        log.error("%s", exc)
        raise NoServerKey(str(exc), log=str(exc)) from None


@contextmanager
def _storage_errors(error: type[ServerError]) -> Iterator[None]:
    """Turns a StorageError into the given server error (details go to the log)."""
    try:
        yield
    except VersionConflict:
        raise
    except StorageError as exc:
        log.error("storage failure: %s", exc)
        raise error(log=str(exc)) from exc
