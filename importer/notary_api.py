"""Import trust collections from a running notary-compatible server over its API.

For each GUN: every root version (``N.root.json`` from 1, each signed by the one before and by
itself), then the current timestamp, snapshot, targets and every delegation reachable from it,
all checked by the client's own update (:class:`~tufnotary.client.updater.Updater` over a
:class:`~tufnotary.client.trusted.TrustedSet`) before anything is stored. The bytes are stored
unchanged with :meth:`MetadataStore.add_versions`: only versions not stored yet, all or none,
with a changefeed row per new timestamp and one audit entry; re-running adds nothing new.

Root 1 is trusted on first use, as a client would; the key ids of the roots are reported so
the operator can compare them with what the owners expect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from tufnotary.client.errors import ClientError
from tufnotary.client.remote import (
    ROOT_CAP,
    NotFoundError,
    Remote,
    RemoteError,
    ServerUnavailable,
)
from tufnotary.client.trusted import TrustedSet
from tufnotary.client.updater import RepositoryNotFound, Updater
from tufnotary.importer.outcome import ACTOR, Refused, store_versions, unservable
from tufnotary.metadata.errors import MetadataError
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS, TIMESTAMP, Envelope, Metadata, Root
from tufnotary.metadata.verify import verify_threshold
from tufnotary.server.storage.engine import StorageError
from tufnotary.server.storage.metadata import MetadataStore, NewFile, VersionConflict

log = logging.getLogger(__name__)

CHANGEFEED_PAGE = 1000
ROOT_CHAIN_CAP = ROOT_CAP
"""Bytes every root version of one GUN may take together (they are held until stored)."""


class ImportFailed(Exception):
    """One GUN could not be imported; nothing of it was stored."""


@dataclass(frozen=True)
class Fetched:
    """What the source serves for one GUN, verified: every root version, then the current
    timestamp, snapshot, targets and delegations (``skipped``: delegations clients skip, with
    the reason, stored all the same since the snapshot lists their bytes)."""

    gun: str
    files: list[NewFile]
    trusted: TrustedSet
    skipped: Mapping[str, str]

    @property
    def timestamp_expires(self) -> datetime:
        assert self.trusted.timestamp is not None
        return self.trusted.timestamp.expires_at


@dataclass(frozen=True)
class Imported:
    """The outcome for one GUN: the files added now (none on a re-run), what was verified, and
    whether the source holds its snapshot key (None: it would not say)."""

    fetched: Fetched
    added: list[NewFile]
    server_snapshot: bool | None

    @property
    def gun(self) -> str:
        return self.fetched.gun


class _Memory:
    """A MetadataCache in memory: what the update verified, per role (one GUN)."""

    def __init__(self, initial: Mapping[str, bytes]) -> None:
        self.files = dict(initial)

    def read_metadata(self, gun: str, role: str) -> bytes | None:
        return self.files.get(role)

    def write_metadata(self, gun: str, role: str, data: bytes) -> None:
        self.files[role] = data

    def metadata_time(self, gun: str, role: str) -> datetime | None:
        return None


def _root_chain(remote: Remote, gun: str) -> list[bytes]:
    """Every root version from 1 up, each verified against the one before; the last is the
    source's current ``root.json``."""
    try:
        first = remote.fetch(gun, f"1.{ROOT}", ROOT_CAP)
    except NotFoundError as exc:
        raise RepositoryNotFound(gun) from exc
    chain = TrustedSet(gun, first)  # trust on first use of root 1 (it may have expired since)
    roots, size = [first], len(first)
    while True:
        try:
            data = remote.fetch(gun, f"{len(roots) + 1}.{ROOT}", ROOT_CAP)
        except NotFoundError:
            break
        size += len(data)
        if size > ROOT_CHAIN_CAP:
            raise ImportFailed(
                f"{gun}: the source's root versions 1-{len(roots) + 1} take more than "
                f"{ROOT_CHAIN_CAP} bytes: refused (a source that never stops rotating)"
            )
        chain.update_root(data, intermediate=True)
        roots.append(data)
    current = remote.fetch(gun, ROOT, ROOT_CAP)
    if current != roots[-1]:
        raise ImportFailed(
            f"{gun}: the source's root.json is not its newest versioned root "
            f"({len(roots)}.root.json): it changed during the import, or it is inconsistent"
        )
    return roots


def _check_pinned(gun: str, root_bytes: bytes, pinned: Collection[str]) -> None:
    """ImportFailed unless root keys of ``pinned`` ids (as root lists them, like notary's
    ``trust_pinning`` certs) meet the threshold of this root."""
    root = Metadata.from_bytes(root_bytes, Root)
    role = root.signed.roles[ROOT]
    keys = {keyid: root.signed.keys[keyid] for keyid in role.keyids if keyid in pinned}
    try:
        verify_threshold(root, keys, role.threshold, ROOT)
    except MetadataError as exc:
        raise ImportFailed(
            f"{gun}: root version {root.signed.version} is not signed by the pinned root "
            f"keys ({', '.join(sorted(pinned))}) at its threshold: {exc}"
        ) from None


def fetch_verified(
    remote: Remote, gun: str, stored: Mapping[str, bytes] = {}, pinned: Collection[str] = ()
) -> Fetched:
    """Fetch and verify everything the source serves for ``gun``.

    ``stored``: our current root, timestamp, snapshot and targets, if any. Like a client's
    cache they set the lowest versions accepted (the source may not roll back); a newer root
    here means the owner moved the GUN to this server already. ``pinned``: root key ids that
    must sign the newest root (else the chain from root 1 is trusted on first use).
    """
    roots = _root_chain(remote, gun)
    if pinned:
        _check_pinned(gun, roots[-1], pinned)
    ours = Envelope.from_bytes(stored[ROOT]).version if ROOT in stored else 0
    if ours > len(roots):
        raise ImportFailed(
            f"{gun}: this server holds root version {ours}, newer than the source's "
            f"{len(roots)}: the owner has moved it here already"
        )
    cache = _Memory({**stored, ROOT: roots[-1]})
    trusted = Updater(remote, cache, gun).refresh()
    if trusted.root_bytes != roots[-1]:
        raise ImportFailed(f"{gun}: the snapshot names a root other than the source's newest")
    snapshot = trusted.snapshot
    assert snapshot is not None
    documents = {role: data for role, data in cache.files.items() if role != ROOT}
    for role in trusted.invalid:  # clients skip it; keep the bytes the snapshot lists
        meta = snapshot.meta[role]
        data = remote.fetch(gun, f"{role}.{meta.sha256_hex}", meta.length)
        meta.verify(data, role)
        documents[role] = data
    files = [NewFile(ROOT, number, data) for number, data in enumerate(roots, 1)]
    files += [
        NewFile(role, Envelope.from_bytes(data).version, data)
        for role, data in sorted(documents.items())
    ]
    return Fetched(gun, files, trusted, dict(trusted.invalid))


def _stored_current(store: MetadataStore, gun: str) -> dict[str, bytes]:
    found = store.latest_of(gun, (ROOT, TIMESTAMP, SNAPSHOT, TARGETS))
    return {role: file.data for role, file in found.items()}


def _server_snapshot(remote: Remote, fetched: Fetched) -> bool | None:
    """Whether the source signs the snapshot (its ``snapshot.key`` is the one root lists);
    None if the source does not say (e.g. the credentials may not read server keys)."""
    try:
        key = remote.server_key(fetched.gun, SNAPSHOT)
    except ClientError as exc:
        log.info("%s: the source does not tell its snapshot key: %s", fetched.gun, exc)
        return None
    return key.key_id in fetched.trusted.root.roles[SNAPSHOT].keyids


def import_gun(
    store: MetadataStore,
    remote: Remote,
    gun: str,
    actor: str = ACTOR,
    pinned: Collection[str] = (),
) -> Imported:
    """Verify and store one GUN (ImportFailed, a client error or a metadata refusal if not;
    then nothing is stored). ``pinned``: see :func:`fetch_verified`."""
    fetched = fetch_verified(remote, gun, _stored_current(store, gun), pinned)
    detail = {"source": remote.url, "verified": [f"{f.role} {f.version}" for f in fetched.files]}
    added = store_versions(store, gun, fetched.files, detail, actor)
    return Imported(fetched, added, _server_snapshot(remote, fetched))


def source_guns(remote: Remote) -> list[str]:
    """Every GUN the source's changefeed lists and did not delete last, in first-seen order
    (needs the credentials to read the changefeed of all GUNs)."""
    alive: dict[str, bool] = {}
    change_id = "0"
    while True:
        page = remote.changefeed(change_id, CHANGEFEED_PAGE)
        for record in page:
            if not isinstance(record, dict) or not isinstance(record.get("GUN", ""), str):
                raise RemoteError(
                    f"the source's changefeed holds a malformed record: {record!r:.80}"
                )
            if record.get("GUN"):
                alive[record["GUN"]] = record.get("Category") != "deletion"
        if len(page) < CHANGEFEED_PAGE:
            return [gun for gun, live in alive.items() if live]
        following = str(page[-1].get("ID", ""))
        if following in ("", change_id):
            raise RemoteError(f"the source's changefeed does not move on after {change_id!r}")
        change_id = following


def import_from_api(
    store: MetadataStore,
    remote: Remote,
    guns: Iterable[str],
    *,
    actor: str = ACTOR,
    pins: Mapping[str, Collection[str]] = {},
    done: Callable[[Imported | Refused], None] = lambda _: None,
) -> list[Imported | Refused]:
    """Import each GUN on its own: a refused one (including one whose history differs from
    what is stored here) stores nothing and does not stop the others. A source that cannot be
    reached or fails (ServerUnavailable) and storage failures stop the import; re-running
    resumes it. ``pins``: root key ids per GUN (see :func:`fetch_verified`); ``done`` is told
    each outcome as it comes."""
    outcomes: list[Imported | Refused] = []
    for gun in guns:
        outcome: Imported | Refused
        problem = unservable(gun)
        try:
            if problem is not None:
                raise ImportFailed(problem)
            outcome = import_gun(store, remote, gun, actor, pins.get(gun, ()))
        except VersionConflict as exc:
            outcome = Refused(gun, f"{exc}: this server holds other trust data for {gun}")
        except (StorageError, ServerUnavailable):
            raise
        except (ImportFailed, ClientError, MetadataError) as exc:
            outcome = Refused(gun, str(exc))
        outcomes.append(outcome)
        done(outcome)
    return outcomes


def owner_commands(imported: Imported, server_url: str, source_url: str) -> list[str]:
    """The commands (``#`` lines: comments) the owner of an imported GUN runs so that this
    server signs its timestamps, and its snapshots if the source signed them, with its own keys.

    notary publishes each rotation alone, and every publish needs a timestamp this server
    signs: a snapshot the source signs is first taken over by the owner on the source."""
    gun = imported.gun
    here = f"notary -s {server_url}"
    owner_snapshot = [f"{here} key rotate {gun} timestamp -r"]
    source_snapshot = [
        f"notary -s {source_url} key rotate {gun} snapshot",
        f"tufnotary-server import --from-notary {source_url} {gun}  # same options as before",
        f"{here} key rotate {gun} timestamp -r",
        f"{here} key rotate {gun} snapshot -r",
    ]
    if imported.server_snapshot is None:
        return [
            "# if the owner holds the snapshot key:",
            *owner_snapshot,
            "# if the source signs the snapshots:",
            *source_snapshot,
        ]
    return source_snapshot if imported.server_snapshot else owner_snapshot
