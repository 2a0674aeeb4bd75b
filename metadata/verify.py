"""Signatures and thresholds of a role against its delegator's keys; root trust (spec 2.5, 3.1)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from tufnotary.metadata.errors import (
    ExpiredError,
    FormatError,
    KeyIdMismatchError,
    RootError,
    RotationError,
    SignatureCountError,
    ThresholdError,
    UnsignedError,
    VersionError,
)
from tufnotary.metadata.keys import Key, root_certificate_key
from tufnotary.metadata.model import ROOT, Metadata, Root, Signed
from tufnotary.metadata.signing import Message, verify_signature

NO_VALID_LEAF = (
    "could not validate the path to a trusted root: unable to retrieve valid leaf certificates"
)
ROTATION_FAILED = (
    "could not rotate trust to a new trusted root: failed to validate data with current "
    "trusted certificates"
)


def verify_threshold(
    metadata: Metadata[Any], keys: Mapping[str, Key], threshold: int, role: str
) -> set[str]:
    """Return the key ids that validly signed; ThresholdError if fewer than ``threshold``.

    ``keys`` are the role's trusted keys by id. Each key id counts once: only its first
    signature is verified, later ones are ignored; signatures by other keys are ignored. The
    signed bytes are hashed once for all signatures.
    """
    if threshold < 1:
        raise FormatError(f"{role} threshold must be at least 1")
    if not metadata.signatures:
        raise UnsignedError()
    message = Message(metadata.signing_bytes())
    valid: set[str] = set()
    verified: set[str] = set()
    for signature in metadata.signatures:
        key = keys.get(signature.keyid)
        if key is None or signature.keyid in verified:
            continue
        verified.add(signature.keyid)
        if key.key_id != signature.keyid:
            raise KeyIdMismatchError(f"key listed as {signature.keyid} has id {key.key_id}")
        if verify_signature(key, signature, message):
            valid.add(signature.keyid)
    if len(valid) < threshold:
        raise ThresholdError(role)
    return valid


def check_signature_count(
    metadata: Metadata[Any], keyids: Collection[str], role: str, limit: int
) -> None:
    """SignatureCountError unless ``metadata`` carries at most one signature per key id, no
    more signatures than the role has keys (``keyids``) and at most ``limit``."""
    count, keys = len(metadata.signatures), len(set(keyids))
    if count > keys:
        raise SignatureCountError(f"{role} carries {count} signatures but has only {keys} keys")
    if count > limit:
        raise SignatureCountError(
            f"{role} carries {count} signatures, more than the {limit} accepted"
        )
    signers = [signature.keyid for signature in metadata.signatures]
    if len(set(signers)) < count:
        keyid, repeats = Counter(signers).most_common(1)[0]
        raise SignatureCountError(f"{role} carries {repeats} signatures by key {keyid}")


def check_fresh(signed: Signed, role: str, now: datetime | None = None) -> None:
    if signed.is_expired(now):
        raise ExpiredError(f"{role} expired at {signed.expires}")


def check_version(signed: Signed, role: str, minimum: int) -> None:
    if signed.version < minimum:
        raise VersionError(f"{role} version {signed.version} is lower than {minimum}")


def root_certificate_keys(root: Root, gun: str, now: datetime | None) -> dict[str, Key]:
    """The root role's usable certificate keys for ``gun``, rebuilt, by rebuilt key id
    (``now=None``: certificate expiry not checked)."""
    role = root.roles.get(ROOT)
    rebuilt = (
        root_certificate_key(root.keys[keyid], gun, now)
        for keyid in (role.keyids if role else [])
        if keyid in root.keys
    )
    return {key.key_id: key for key in rebuilt if key is not None}


def verify_root(
    metadata: Metadata[Root],
    gun: str,
    *,
    previous: Root | None = None,
    min_version: int = 1,
    allow_expired: bool = False,
    check_certificate_expiry: bool = True,
    now: datetime | None = None,
) -> None:
    """Trust a root document for ``gun`` (spec 2.5), or raise.

    Its root keys must be certificates for the GUN (unexpired, no SHA-1, RSA >= 2048), it
    must meet its own root threshold with them and, when a ``previous`` trusted root is
    given, that root's threshold with the previous certificates (their expiry is ignored).
    ``check_certificate_expiry=False`` loads a root already trusted whose certificates expired.
    """
    now = now or datetime.now(UTC)
    root = metadata.signed
    root.check_structure()
    own_keys = root_certificate_keys(root, gun, now if check_certificate_expiry else None)
    if not own_keys:
        raise RootError(NO_VALID_LEAF)
    if previous is not None:
        try:
            verify_threshold(
                metadata,
                root_certificate_keys(previous, gun, None),
                previous.roles[ROOT].threshold,
                ROOT,
            )
        except ThresholdError as exc:
            raise RotationError(ROTATION_FAILED) from exc
    verify_threshold(metadata, own_keys, root.roles[ROOT].threshold, ROOT)
    check_version(root, ROOT, min_version)
    if not allow_expired:
        check_fresh(root, ROOT, now)
