"""TUF attacks against the client's verifier, through a test server serving tampered metadata.

Each test builds a repository whose every role (timestamp included) it signs itself, serves it
from ``support.tamper.TrustServer`` and runs ``Updater`` / ``verify_image`` against it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from support.repo import RepoBuilder, expires_in
from support.server import free_port
from support.tamper import (
    FAR,
    PAST,
    Endless,
    MemoryCache,
    Repository,
    Stalled,
    TrustServer,
    announcing,
    failing,
)
from tufnotary.client.images import (
    DigestMismatch,
    ImageNotSigned,
    Policy,
    RequiredSignerMissing,
    SignersDisagree,
    VerifiedImage,
    resolve_image,
)
from tufnotary.client.remote import (
    TIMESTAMP_CAP,
    CAFileError,
    NotFoundError,
    OversizedError,
    Remote,
    RemoteError,
    ServerError,
    ServerTimeout,
    ServerUnreachable,
)
from tufnotary.client.trusted import (
    DelegationError,
    RollbackError,
    RootRotationError,
    TrustedSet,
    TrustPinning,
    UntrustedRootError,
)
from tufnotary.client.updater import RELEASES, NotCached, RepositoryNotFound, Updater
from tufnotary.metadata.errors import (
    ExpiredError,
    FormatError,
    HashMismatchError,
    ThresholdError,
)
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    FileMeta,
    Metadata,
    RoleKeys,
    Targets,
)
from tufnotary.metadata.signing import PrivateKey

GUN = "example.com/client/app"
TEAM = "targets/releases/team"
OTHER = "targets/other"


def manifest(name: str) -> bytes:
    return f'{{"schemaVersion":2,"name":"{name}"}}'.encode()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[TrustServer]:
    with TrustServer().running() as running:
        yield running


@pytest.fixture
def repo(server: TrustServer) -> Repository:
    return Repository(server, GUN)


@pytest.fixture
def cache() -> MemoryCache:
    return MemoryCache()


def updater_for(server: TrustServer, cache: MemoryCache, **options: Any) -> Updater:
    return Updater(server.remote(), cache, GUN, **options)


def refresh(server: TrustServer, cache: MemoryCache, **options: Any) -> TrustedSet:
    return updater_for(server, cache, **options).refresh()


def verify_image(
    remote: Remote,
    cache: MemoryCache,
    gun: str,
    tag: str,
    digest: str | None = None,
    policy: Policy | None = None,
    *,
    offline: bool = False,
) -> VerifiedImage:
    """``Repository.verify_image`` over a memory cache instead of a trust directory."""
    policy = policy or Policy()
    updater = Updater(remote, cache, gun, pinning=policy.pinning, offline=offline)
    updater.refresh()
    return resolve_image(updater, tag, digest, policy.required_roles)


def resign(data: bytes, key: PrivateKey, edit: Callable[[Targets], None] | None = None) -> bytes:
    """``data`` (a targets document) signed again by ``key`` only, after ``edit(signed)``."""
    metadata = Metadata.from_bytes(data, Targets)
    if edit is not None:
        edit(metadata.signed)
    metadata.signatures = []
    metadata.sign(key)
    return metadata.to_bytes()


# -- the happy path ------------------------------------------------------------------------------


def with_delegations(repo: Repository) -> dict[str, bytes]:
    """targets and targets/releases sign v1 differently; team and other sign their own tags."""
    builder = repo.builder
    repo.add_delegation(RELEASES, [""])
    repo.add_delegation(TEAM, [""])
    repo.add_delegation(OTHER, [""])
    builder.add_target("v1", manifest("targets-v1"))
    builder.add_target("only-targets", manifest("only-targets"))
    builder.add_target("v1", manifest("releases-v1"), RELEASES)
    builder.add_target("team-tag", manifest("team"), TEAM)
    builder.add_target("other-tag", manifest("other"), OTHER)
    return repo.publish(TARGETS, RELEASES, TEAM, OTHER)


def test_happy_path_with_delegations_caches_and_reuses(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    served = with_delegations(repo)
    updater = updater_for(server, cache)
    trusted = updater.refresh()

    assert trusted.timestamp is not None
    assert (trusted.root.version, trusted.timestamp.version) == (1, 1)
    assert updater.find_target("v1") == (RELEASES, FileMeta.of(manifest("releases-v1")))
    assert updater.find_target("only-targets") == (TARGETS, FileMeta.of(manifest("only-targets")))
    assert updater.find_target("team-tag") is None  # below targets/releases: not docker's
    assert trusted.lookup("team-tag", (RELEASES, TARGETS)) == (TEAM, FileMeta.of(manifest("team")))
    assert updater.targets_of(OTHER) == {"other-tag": FileMeta.of(manifest("other"))}
    # consistent downloads by checksum, delegations pre-order, every verified file cached
    assert server.requests == [
        "root",
        "timestamp",
        f"snapshot.{sha256_hex(served[SNAPSHOT])}",
        f"targets.{sha256_hex(served[TARGETS])}",
        f"{RELEASES}.{sha256_hex(served[RELEASES])}",
        f"{TEAM}.{sha256_hex(served[TEAM])}",
        f"{OTHER}.{sha256_hex(served[OTHER])}",
    ]
    assert cache.files == {(GUN, role): data for role, data in served.items()}

    server.requests.clear()
    again = updater_for(server, cache).refresh()  # a new process: everything else is cached
    assert server.requests == ["timestamp"]
    assert again.targets_of(RELEASES) == trusted.targets_of(RELEASES)


def test_unknown_repository(server: TrustServer, cache: MemoryCache) -> None:
    with pytest.raises(RepositoryNotFound):
        refresh(server, cache)
    assert cache.files == {}


# -- failing closed, and the explicit offline mode ----------------------------------------------


def _unavailable(server: TrustServer, kind: str) -> tuple[Remote, type[RemoteError]]:
    """A remote for ``server`` made unusable in the way ``kind`` names, and the error due."""
    if kind == "refused":
        return Remote(f"http://127.0.0.1:{free_port()}", verify=False), ServerUnreachable
    if kind == "timeout":
        for name in (ROOT, TIMESTAMP):
            server.hooks[name] = Stalled()
        return Remote(server.url, verify=False, timeout=0.3), ServerTimeout
    if kind == "503":
        for name in (ROOT, TIMESTAMP):
            server.hooks[name] = failing(503)
        return server.remote(), ServerError
    assert kind == "404"
    del server.files[ROOT], server.files[TIMESTAMP]
    return server.remote(), NotFoundError


@pytest.mark.parametrize("kind", ["refused", "timeout", "503", "404"])
def test_update_fails_closed_with_or_without_a_cache(
    server: TrustServer, repo: Repository, cache: MemoryCache, kind: str
) -> None:
    repo.builder.add_target("v1", manifest("v1"))
    repo.publish(TARGETS)
    assert verify_image(server.remote(), cache, GUN, "v1").cached_at is None  # warm cache
    remote, error = _unavailable(server, kind)
    try:
        for where in (cache, MemoryCache()):  # a repository seen before, and one never seen
            with pytest.raises(error):
                Updater(remote, where, GUN).refresh()
            with pytest.raises(error):
                verify_image(remote, where, GUN, "v1")
    finally:
        for hook in server.hooks.values():
            if isinstance(hook, Stalled):
                hook.release.set()


def test_a_bad_ca_file_is_named_before_any_connection(tmp_path: Path, cache: MemoryCache) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    remote = Remote(f"https://127.0.0.1:{free_port()}", verify=str(bad))
    with pytest.raises(CAFileError) as raised:
        Updater(remote, cache, GUN).refresh()
    assert raised.value.path == str(bad)


def test_offline_reads_every_role_from_the_cache_without_the_server(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    served = with_delegations(repo)
    refresh(server, cache)
    server.requests.clear()
    down = Remote(f"http://127.0.0.1:{free_port()}", verify=False)
    image = verify_image(down, cache, GUN, "v1", offline=True)
    assert (image.role, image.digest) == (RELEASES, digest(manifest("releases-v1")))
    assert image.cached_at == cache.times[(GUN, TIMESTAMP)]
    offline = Updater(down, cache, GUN, offline=True)
    assert offline.targets_of(OTHER) == {"other-tag": FileMeta.of(manifest("other"))}
    assert server.requests == []

    del cache.files[(GUN, TEAM)]  # a delegation the cache does not hold: no partial answer
    with pytest.raises(NotCached) as missing:
        Updater(down, cache, GUN, offline=True).refresh()
    assert missing.value.role == TEAM
    with pytest.raises(NotCached):
        Updater(down, MemoryCache(), GUN, offline=True).refresh()
    cache.files[(GUN, TEAM)] = served[TEAM][:-1]  # corrupted in the cache: not trusted either
    with pytest.raises(NotCached):
        Updater(down, cache, GUN, offline=True).refresh()


@pytest.mark.parametrize("role", [ROOT, TIMESTAMP, SNAPSHOT, TARGETS])
def test_offline_refuses_expired_cached_metadata(
    server: TrustServer, repo: Repository, cache: MemoryCache, role: str
) -> None:
    expiring = {
        ROOT: repo.builder.root,
        TIMESTAMP: repo.timestamp,
        SNAPSHOT: repo.builder.snapshot,
        TARGETS: repo.builder.targets[TARGETS],
    }
    expiring[role].expires = PAST
    for name, data in repo.publish(TARGETS).items():  # as cached before they expired
        cache.write_metadata(GUN, name, data)
    with pytest.raises(ExpiredError, match=role):
        Updater(server.remote(), cache, GUN, offline=True).refresh()
    assert server.requests == []


def test_expired_cached_root_is_replaced_by_a_newer_one_it_signed(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.builder.root.expires = PAST
    cache.write_metadata(GUN, ROOT, repo.builder.root_bytes())
    repo.builder.root.expires = FAR
    repo.builder.root.version = 2
    repo.builder.root_bytes()
    repo.publish(TARGETS)
    trusted = refresh(server, cache)
    assert trusted.root.version == 2
    assert cache.read_metadata(GUN, ROOT) == repo.root


# -- rollback and freeze ---------------------------------------------------------------------------


def test_timestamp_rollback_refused_also_after_a_restart(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    first = repo.publish(TARGETS)
    repo.publish(TARGETS)
    updater = updater_for(server, cache)
    assert updater.refresh().timestamp == repo.timestamp  # version 2
    server.files[TIMESTAMP] = first[TIMESTAMP]  # older, validly signed, unexpired
    with pytest.raises(RollbackError) as raised:
        updater.refresh()
    assert (raised.value.role, raised.value.version, raised.value.minimum) == (TIMESTAMP, 1, 2)
    with pytest.raises(RollbackError):
        refresh(server, cache)  # a new process: the minimum comes from the cache


def test_snapshot_rollback_refused(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    first = repo.publish(TARGETS)
    repo.publish(TARGETS)
    refresh(server, cache)
    server.serve({TIMESTAMP: repo.sign_timestamp(first[SNAPSHOT])})  # new timestamp, old snapshot
    with pytest.raises(RollbackError) as raised:
        refresh(server, cache)
    # RepoBuilder signs the first snapshot as version 2, like notary
    assert (raised.value.role, raised.value.version, raised.value.minimum) == (SNAPSHOT, 2, 3)


@pytest.mark.parametrize("role", [TARGETS, RELEASES])
def test_targets_and_delegation_rollback_refused(
    server: TrustServer, repo: Repository, cache: MemoryCache, role: str
) -> None:
    repo.add_delegation(RELEASES, [""])
    first = repo.publish(TARGETS, RELEASES)
    repo.publish(TARGETS, RELEASES)
    refresh(server, cache)
    repo.builder.files[role] = first[role]  # a newer snapshot listing the old role
    repo.publish_snapshot()
    with pytest.raises(RollbackError) as raised:
        refresh(server, cache)
    assert raised.value.role == role
    assert raised.value.version < raised.value.minimum


@pytest.mark.parametrize("role", [TIMESTAMP, SNAPSHOT, TARGETS])
def test_indefinite_freeze_expired_roles_refused(
    server: TrustServer, repo: Repository, cache: MemoryCache, role: str
) -> None:
    repo.publish(TARGETS)
    refresh(server, cache)
    expiring = {
        TIMESTAMP: repo.timestamp,
        SNAPSHOT: repo.builder.snapshot,
        TARGETS: repo.builder.targets[TARGETS],
    }
    expiring[role].expires = PAST
    repo.publish(TARGETS)
    with pytest.raises(ExpiredError, match=role):
        refresh(server, cache)


def test_expired_or_under_signed_delegation_is_skipped_not_fatal(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    with_delegations(repo)
    repo.builder.targets[RELEASES].expires = PAST
    repo.builder.targets_bytes(RELEASES)
    stranger = PrivateKey.generate()
    repo.builder.files[OTHER] = resign(repo.builder.files[OTHER], stranger)
    repo.publish_snapshot()

    updater = updater_for(server, cache)
    trusted = updater.refresh()
    assert set(trusted.invalid) == {RELEASES, OTHER}
    assert "expired" in trusted.invalid[RELEASES]
    assert updater.targets_of(TEAM) == {}  # not reached below an invalid delegation
    # docker falls back to targets for v1
    assert updater.find_target("v1") == (TARGETS, FileMeta.of(manifest("targets-v1")))
    assert (GUN, RELEASES) not in cache.files  # an unverified copy is never cached


# -- mix-and-match, arbitrary targets --------------------------------------------------------------


@pytest.mark.parametrize("role", [SNAPSHOT, TARGETS])
def test_mix_and_match_validly_signed_file_of_another_version(
    server: TrustServer, repo: Repository, cache: MemoryCache, role: str
) -> None:
    first = repo.publish(TARGETS)
    second = repo.publish(TARGETS)
    assert len(first[role]) == len(second[role])  # so only the hash can tell
    server.files[f"{role}.{sha256_hex(second[role])}"] = first[role]
    with pytest.raises(HashMismatchError, match=role):
        refresh(server, cache)


def test_arbitrary_target_with_bad_signature_refused(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.builder.add_target("v1", manifest("good"))
    repo.publish(TARGETS)
    evil = Metadata.from_bytes(repo.builder.files[TARGETS], Targets)
    evil.signed.targets["v1"] = FileMeta.of(manifest("evil"))
    evil.received = None  # the old signature now covers other bytes
    repo.builder.files[TARGETS] = evil.to_bytes()
    repo.publish_snapshot()  # a compromised snapshot key vouches for it
    with pytest.raises(ThresholdError, match="targets"):
        refresh(server, cache)


def test_number_without_canonical_form_is_a_format_error(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    served = repo.publish(TARGETS)
    assert b'"targets":{}' in served[TARGETS]
    repo.builder.files[TARGETS] = served[TARGETS].replace(
        b'"targets":{}', b'"targets":{"v1":{"custom":1.5,"hashes":{"sha256":"AA=="},"length":1}}'
    )
    repo.publish_snapshot()
    with pytest.raises(FormatError, match="integer"):
        refresh(server, cache)


def test_arbitrary_target_file_under_the_listed_hash_refused(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.builder.add_target("v1", manifest("good"))
    served = repo.publish(TARGETS)

    def swap(signed: Targets) -> None:
        signed.targets["v1"] = FileMeta.of(manifest("evil"))

    evil = resign(served[TARGETS], repo.builder.targets_key, swap)  # even with the targets key
    assert len(evil) == len(served[TARGETS])
    server.files[f"targets.{sha256_hex(served[TARGETS])}"] = evil
    with pytest.raises(HashMismatchError, match="targets"):
        refresh(server, cache)


# -- endless data ----------------------------------------------------------------------------------


def test_endless_timestamp_stream_is_cut_off(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.publish(TARGETS)
    stream = Endless()
    server.hooks[TIMESTAMP] = stream
    started = time.monotonic()
    with pytest.raises(OversizedError):
        refresh(server, cache)
    assert stream.done.wait(10)
    assert time.monotonic() - started < 10
    assert stream.sent < 64 * TIMESTAMP_CAP < stream.limit  # stopped by the client hanging up


def test_timestamp_announcing_too_many_bytes_is_not_read(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    served = repo.publish(TARGETS)
    server.hooks[TIMESTAMP] = announcing(TIMESTAMP_CAP + 1, served[TIMESTAMP])
    with pytest.raises(OversizedError, match="announces"):
        refresh(server, cache)


@pytest.mark.parametrize("role", [SNAPSHOT, TARGETS, RELEASES])
def test_files_longer_than_listed_are_cut_off(
    server: TrustServer, repo: Repository, cache: MemoryCache, role: str
) -> None:
    repo.add_delegation(RELEASES, [""])
    served = repo.publish(TARGETS, RELEASES)
    name = f"{role}.{sha256_hex(served[role])}"
    stream = Endless()
    server.hooks[name] = stream
    with pytest.raises(OversizedError, match=role):
        refresh(server, cache)
    assert stream.done.wait(10) and stream.sent < stream.limit
    del server.hooks[name]
    server.files[name] = served[role] + b" "  # one byte over the listed length
    with pytest.raises(OversizedError):
        refresh(server, MemoryCache())


# -- root rotation ---------------------------------------------------------------------------------


def test_fast_forward_recovery_after_timestamp_key_rotation(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.publish(TARGETS)
    repo.timestamp.version = 999  # an attacker with the timestamp key fast-forwards clients
    repo.publish_snapshot()
    assert refresh(server, cache).timestamp == repo.timestamp  # version 1000

    repo.rotate_timestamp_key()  # root 2; the owner restarts timestamps at 1
    repo.timestamp.version = 0
    repo.publish(TARGETS)
    trusted = refresh(server, cache)
    assert trusted.root.version == 2
    assert trusted.timestamp == repo.timestamp  # version 1
    assert "root" in server.requests  # the old root could not verify the new timestamp
    assert cache.read_metadata(GUN, TIMESTAMP) == server.files[TIMESTAMP]


def test_root_key_rotated_once_then_twice_walks_versioned_roots(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.publish(TARGETS)
    refresh(server, cache)

    repo.rotate_root_key()
    repo.publish(TARGETS)
    server.requests.clear()
    assert refresh(server, cache).root.version == 2
    assert f"root.{sha256_hex(repo.root)}" in server.requests  # named by the snapshot
    assert not [name for name in server.requests if name.endswith(".root")]

    repo.rotate_root_key()
    repo.rotate_root_key()
    repo.publish(TARGETS)
    server.requests.clear()
    trusted = refresh(server, cache)
    assert trusted.root.version == 4
    assert [name for name in server.requests if name.endswith(".root")] == ["3.root"]
    assert cache.read_metadata(GUN, ROOT) == repo.root


def test_root_chain_longer_than_the_limit_refused(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.publish(TARGETS)
    refresh(server, cache)
    for _ in range(3):
        repo.rotate_root_key()
    repo.publish(TARGETS)
    server.requests.clear()
    with pytest.raises(RootRotationError, match="more than 2 rotations"):
        refresh(server, cache, max_root_rotations=2)
    assert not [name for name in server.requests if name.endswith(".root")]
    assert refresh(server, cache, max_root_rotations=3).root.version == 4


def test_root_chain_with_a_forged_step_refused(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.publish(TARGETS)
    refresh(server, cache)
    repo.rotate_root_key()
    repo.rotate_root_key()
    repo.publish(TARGETS)
    forged = RepoBuilder(GUN, repo.timestamp_key.public)  # root keys the client never trusted
    forged.root.version = 2
    server.files["2.root"] = forged.root_bytes()
    with pytest.raises(RootRotationError):
        refresh(server, cache)
    assert cache.read_metadata(GUN, ROOT) == server.files["1.root"]


# -- thresholds and signatures --------------------------------------------------------------------


def two_targets_keys(repo: Repository) -> PrivateKey:
    """Make root require 2 targets signatures; return the second key."""
    second = PrivateKey.generate()
    root = repo.builder.root
    root.keys[second.public.key_id] = second.public
    root.roles[TARGETS] = RoleKeys(
        [repo.builder.targets_key.public.key_id, second.public.key_id], 2
    )
    return second


def test_key_compromise_below_threshold(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    second = two_targets_keys(repo)
    repo.builder.add_target("v1", manifest("v1"))
    served = repo.publish(TARGETS)  # signed by one of the two keys
    with pytest.raises(ThresholdError, match="targets"):
        refresh(server, cache)

    both = Metadata.from_bytes(served[TARGETS], Targets)
    both.sign(second)
    repo.builder.files[TARGETS] = both.to_bytes()
    repo.publish_snapshot()
    assert refresh(server, cache).targets_of(TARGETS) == {"v1": FileMeta.of(manifest("v1"))}


def test_duplicate_signatures_count_once(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    two_targets_keys(repo)
    served = repo.publish(TARGETS)
    doubled = Metadata.from_bytes(served[TARGETS], Targets)
    doubled.signatures = doubled.signatures * 2
    repo.builder.files[TARGETS] = doubled.to_bytes()
    repo.publish_snapshot()
    with pytest.raises(ThresholdError, match="targets"):
        refresh(server, cache)


def test_threshold_zero_refused(server: TrustServer, repo: Repository, cache: MemoryCache) -> None:
    repo.builder.root.roles[TIMESTAMP].threshold = 0
    repo.publish(TARGETS)
    with pytest.raises(FormatError, match="threshold"):
        refresh(server, cache)

    zero = Repository(server, GUN)
    zero.add_delegation(RELEASES, [""], threshold=0)
    zero.builder.add_target("v1", manifest("zero"), RELEASES)
    zero.publish(TARGETS, RELEASES)
    updater = updater_for(server, MemoryCache())
    assert "threshold 0" in updater.refresh().invalid[RELEASES]
    assert updater.find_target("v1") is None


# -- delegation paths ------------------------------------------------------------------------------


def test_targets_outside_delegated_paths_are_ignored(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.add_delegation(RELEASES, ["app/"])
    repo.add_delegation(TEAM, ["app/team/", "lib/"])  # lib/ is not within app/
    builder = repo.builder
    builder.add_target("v1", manifest("outside"), RELEASES)
    builder.add_target("app/v1", manifest("inside"), RELEASES)
    builder.add_target("lib/x", manifest("lib"), TEAM)
    builder.add_target("app/team/x", manifest("team"), TEAM)
    repo.publish(TARGETS, RELEASES, TEAM)

    updater = updater_for(server, cache)
    trusted = updater.refresh()
    assert updater.find_target("v1") is None
    assert updater.find_target("app/v1") == (RELEASES, FileMeta.of(manifest("inside")))
    assert updater.targets_of(RELEASES) == {"app/v1": FileMeta.of(manifest("inside"))}
    assert updater.targets_of(TEAM) == {"app/team/x": FileMeta.of(manifest("team"))}
    assert trusted.lookup("lib/x", (RELEASES,)) is None
    with pytest.raises(ImageNotSigned):
        resolve_image(updater, "v1")


def test_delegation_needs_a_trusted_parent(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.add_delegation(RELEASES, [""])
    served = repo.publish(TARGETS, RELEASES)
    trusted = TrustedSet(GUN, served[ROOT], first_use=True)
    trusted.update_timestamp(served[TIMESTAMP])
    trusted.update_snapshot(served[SNAPSHOT])
    with pytest.raises(DelegationError):
        trusted.update_delegated(RELEASES, served[RELEASES])  # targets not loaded yet
    trusted.update_targets(served[TARGETS])
    with pytest.raises(DelegationError):
        trusted.update_delegated(OTHER, served[RELEASES])  # not delegated
    assert trusted.update_delegated(RELEASES, served[RELEASES]) is not None


# -- trust pinning ---------------------------------------------------------------------------------


def test_pinning_by_certificate_id(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.publish(TARGETS)
    cert_id = repo.builder.root_cert.key_id
    pinned = TrustPinning(certs={"example.com/*": ["0" * 64], GUN: [cert_id]})
    assert refresh(server, MemoryCache(), pinning=pinned).root.version == 1
    by_prefix = TrustPinning(certs={"example.com/*": ["0" * 64], "example.com/client/*": [cert_id]})
    assert refresh(server, MemoryCache(), pinning=by_prefix).root.version == 1

    wrong = TrustPinning(certs={"example.com/client/*": ["0" * 64], "example.*": [cert_id]})
    with pytest.raises(UntrustedRootError):
        refresh(server, cache, pinning=wrong)
    assert cache.files == {}  # a refused root is not cached


def test_pinning_applies_to_rotated_roots(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    repo.publish(TARGETS)
    pinned = TrustPinning(certs={GUN: [repo.builder.root_cert.key_id]})
    refresh(server, cache, pinning=pinned)
    repo.rotate_root_key()
    repo.publish(TARGETS)
    with pytest.raises(UntrustedRootError):
        refresh(server, cache, pinning=pinned)
    assert refresh(server, cache).root.version == 2  # TOFU follows the signed rotation


def test_tofu_can_be_disabled(server: TrustServer, repo: Repository, cache: MemoryCache) -> None:
    repo.publish(TARGETS)
    with pytest.raises(UntrustedRootError, match="trust on first use"):
        refresh(server, cache, pinning=TrustPinning(disable_tofu=True))
    refresh(server, cache)
    assert refresh(server, cache, pinning=TrustPinning(disable_tofu=True)).root.version == 1


def certificate(
    name: str,
    key: PrivateKey,
    issuer: tuple[PrivateKey, x509.Certificate] | None = None,
    *,
    ca: bool = True,
) -> x509.Certificate:
    """A certificate for ``key`` named ``name``, issued by ``issuer`` (else self-signed)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, subject)
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.crypto_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key.crypto_key, hashes.SHA256())
    )


def bundle(tmp_path: Path, cert: x509.Certificate) -> Path:
    path = tmp_path / f"{cert.serial_number}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def use_root_chain(repo: Repository, chain: list[x509.Certificate]) -> None:
    """Make ``chain`` (leaf first) the repository's root certificate key, before publishing."""
    builder = repo.builder
    del builder.root.keys[builder.root_cert.key_id]
    builder.root_cert = Key.from_certificates(chain)
    builder.root.keys[builder.root_cert.key_id] = builder.root_cert
    builder.root.roles[ROOT] = RoleKeys([builder.root_cert.key_id], 1)


@pytest.mark.parametrize("through_intermediate", [False, True])
def test_pinning_by_ca_bundle(
    server: TrustServer,
    repo: Repository,
    cache: MemoryCache,
    tmp_path: Path,
    through_intermediate: bool,
) -> None:
    ca_key = PrivateKey.generate()
    ca = certificate("pinned CA", ca_key)
    stranger = bundle(tmp_path, certificate("other CA", PrivateKey.generate()))
    issuer, chain = (ca_key, ca), []
    if through_intermediate:
        intermediate_key = PrivateKey.generate()
        intermediate = certificate("intermediate CA", intermediate_key, issuer)
        issuer, chain = (intermediate_key, intermediate), [intermediate]
    leaf = certificate(GUN, repo.builder.root_key, issuer, ca=False)
    use_root_chain(repo, [leaf, *chain])
    repo.publish(TARGETS)

    pinned = bundle(tmp_path, ca)
    by_ca = TrustPinning(ca={"example.com/": stranger, "example.com/client/": pinned})
    assert refresh(server, MemoryCache(), pinning=by_ca).root.version == 1
    longest_wins = TrustPinning(ca={"example.com/": pinned, "example.com/client/": stranger})
    with pytest.raises(UntrustedRootError):
        refresh(server, cache, pinning=longest_wins)
    with pytest.raises(UntrustedRootError):
        refresh(server, cache, pinning=TrustPinning(ca={"example.com/": tmp_path / "missing"}))
    assert cache.files == {}


def test_a_pinned_certificate_must_be_a_ca_to_issue(
    server: TrustServer, repo: Repository, cache: MemoryCache, tmp_path: Path
) -> None:
    not_ca_key = PrivateKey.generate()
    not_ca = certificate("pinned, not a CA", not_ca_key, ca=False)
    use_root_chain(repo, [certificate(GUN, repo.builder.root_key, (not_ca_key, not_ca), ca=False)])
    repo.publish(TARGETS)
    with pytest.raises(UntrustedRootError):
        refresh(server, cache, pinning=TrustPinning(ca={"example.com/": bundle(tmp_path, not_ca)}))
    assert cache.files == {}


# -- verify_image ----------------------------------------------------------------------------------


def test_verify_image_resolution_order(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    with_delegations(repo)
    remote = server.remote()
    image = verify_image(remote, cache, GUN, "v1")
    assert (image.gun, image.tag, image.role) == (GUN, "v1", RELEASES)
    assert image.digest == digest(manifest("releases-v1"))
    assert image.length == len(manifest("releases-v1"))
    only = verify_image(remote, cache, GUN, "only-targets")
    assert (only.role, only.digest) == (TARGETS, digest(manifest("only-targets")))
    for tag in ("other-tag", "team-tag", "missing"):
        with pytest.raises(ImageNotSigned):
            verify_image(remote, cache, GUN, tag)


def test_verify_image_with_digest(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    with_delegations(repo)
    remote = server.remote()
    signed = digest(manifest("releases-v1"))
    upper = "sha256:" + signed.removeprefix("sha256:").upper()
    assert verify_image(remote, cache, GUN, "v1", upper).digest == signed
    with pytest.raises(DigestMismatch) as raised:
        verify_image(remote, cache, GUN, "v1", digest(manifest("targets-v1")))
    assert (raised.value.expected, raised.value.trusted) == (digest(manifest("targets-v1")), signed)
    with pytest.raises(ValueError):
        verify_image(remote, cache, GUN, "v1", "sha256:abc")


def test_verify_image_required_roles(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    builder = repo.builder
    alice, bob = "targets/alice", "targets/bob"
    repo.add_delegation(RELEASES, [""])
    repo.add_delegation(alice, [""])
    repo.add_delegation(bob, [""])
    for role in (RELEASES, alice, bob):
        builder.add_target("v1", manifest("v1"), role)
    builder.add_target("v2", manifest("v2"), alice)
    builder.add_target("v2", manifest("v2-evil"), bob)
    builder.add_target("v3", manifest("v3"), RELEASES)
    builder.add_target("v3", manifest("v3"), alice)
    repo.publish(TARGETS, RELEASES, alice, bob)
    remote = server.remote()

    both = Policy(required_roles=[alice, bob])
    image = verify_image(remote, cache, GUN, "v1", policy=both)
    assert (image.digest, image.role) == (digest(manifest("v1")), alice)
    with pytest.raises(SignersDisagree) as disagree:
        verify_image(remote, cache, GUN, "v2", policy=both)
    assert disagree.value.digests == {
        alice: digest(manifest("v2")),
        bob: digest(manifest("v2-evil")),
    }
    with pytest.raises(RequiredSignerMissing) as missing:
        verify_image(remote, cache, GUN, "v3", policy=both)
    assert (missing.value.role, missing.value.signers) == (bob, [RELEASES, alice])
    with pytest.raises(ImageNotSigned, match="the tag is not signed"):
        verify_image(remote, cache, GUN, "v9", policy=both)  # no one signs it
    assert verify_image(remote, cache, GUN, "v3").role == RELEASES  # docker alone accepts it
    with pytest.raises(ValueError):
        Policy(required_roles=["alice"])


def test_verify_image_policy_pins_root(
    server: TrustServer, repo: Repository, cache: MemoryCache
) -> None:
    with_delegations(repo)
    wrong = Policy(pinning=TrustPinning(certs={GUN: ["0" * 64]}))
    with pytest.raises(UntrustedRootError):
        verify_image(server.remote(), cache, GUN, "v1", policy=wrong)
    right = Policy(pinning=TrustPinning(certs={GUN: [repo.builder.root_cert.key_id]}))
    assert verify_image(server.remote(), cache, GUN, "v1", policy=right).role == RELEASES


def test_roles_expiring_within_six_months_are_warned_about(
    server: TrustServer, repo: Repository, cache: MemoryCache, caplog: pytest.LogCaptureFixture
) -> None:
    repo.builder.targets[TARGETS].expires = expires_in(30)
    repo.publish(TARGETS)
    with caplog.at_level("WARNING", logger="tufnotary.client.updater"):
        refresh(server, cache)
    warnings = [r.getMessage() for r in caplog.records if "re-sign it soon" in r.getMessage()]
    assert len(warnings) == 1 and "targets expires at" in warnings[0]
