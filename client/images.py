"""Image verification: a tag's trusted digest, resolved the way docker does (spec 4.6).

``verify_image(remote, cache, gun, tag)`` refreshes the trust data of ``gun`` and returns the
digest signed for ``tag``; a :class:`Policy` can require named signer roles and pin root keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from tufnotary.client.remote import Remote
from tufnotary.client.trusted import TrustPinning
from tufnotary.client.updater import MetadataCache, Updater
from tufnotary.metadata.model import FileMeta, is_targets_role

_DIGEST = re.compile(r"sha256:[0-9a-fA-F]{64}")


class ImageVerificationError(Exception):
    """Base of the reasons an image is refused."""


class ImageNotSigned(ImageVerificationError):
    """No accepted role signs the tag (docker: "no trust data for <tag>")."""

    def __init__(
        self, tag: str, reason: str = "the tag is not signed (no trust data for it)"
    ) -> None:
        super().__init__(f"{tag}: {reason}")
        self.tag = tag


class DigestMismatch(ImageVerificationError):
    """The digest asked for is not the one signed for the tag."""

    def __init__(self, expected: str, trusted: str) -> None:
        super().__init__(f"digest {expected} is not the signed digest {trusted}")
        self.expected, self.trusted = expected, trusted


class RequiredSignerMissing(ImageVerificationError):
    """A role the policy requires is not trusted or does not sign the tag (others do)."""

    def __init__(self, role: str, tag: str, signers: Sequence[str] = ()) -> None:
        others = f" (only {', '.join(signers)} signs it)" if signers else ""
        super().__init__(f"required signer {role} does not sign {tag}{others}")
        self.role, self.tag, self.signers = role, tag, list(signers)


class SignersDisagree(ImageVerificationError):
    """The required roles sign different digests for the tag."""

    def __init__(self, tag: str, digests: Mapping[str, str]) -> None:
        listed = ", ".join(f"{role}: {digest}" for role, digest in digests.items())
        super().__init__(f"required signers disagree on {tag}: {listed}")
        self.tag, self.digests = tag, dict(digests)


@dataclass(frozen=True)
class Policy:
    """What to require beyond docker's rule: signer roles that must all sign the same digest
    (full role names, e.g. ``targets/alice``), and root trust pinning."""

    required_roles: Sequence[str] = ()
    pinning: TrustPinning | None = None

    def __post_init__(self) -> None:
        for role in self.required_roles:
            if not is_targets_role(role):
                raise ValueError(f"{role!r} is not a targets role name")


@dataclass(frozen=True)
class VerifiedImage:
    """A tag's signed digest (``sha256:<hex>``), the role that signed it, the manifest size.

    ``cached_at`` is set only when the answer came from the cache without an update (offline):
    when that trust data was last fetched from the server.
    """

    gun: str
    tag: str
    digest: str
    role: str
    length: int
    cached_at: datetime | None = None


def verify_image(
    remote: Remote,
    cache: MetadataCache,
    gun: str,
    tag: str,
    digest: str | None = None,
    policy: Policy | None = None,
    *,
    offline: bool = False,
) -> VerifiedImage:
    """Refresh the trust data of ``gun`` and return the signed digest of ``tag``.

    With ``digest`` (``sha256:<hex>``), DigestMismatch unless it is the signed one. If the
    server cannot be reached or fails, its RemoteError kind: never an answer from the cache,
    unless ``offline`` (then only from the cache, see ``Updater``).
    """
    policy = policy or Policy()
    updater = Updater(remote, cache, gun, pinning=policy.pinning, offline=offline)
    updater.refresh()
    return resolve_image(updater, tag, digest, policy.required_roles)


def resolve_image(
    updater: Updater, tag: str, digest: str | None = None, required_roles: Sequence[str] = ()
) -> VerifiedImage:
    """The signed digest of ``tag`` in ``updater``'s trusted metadata.

    Without ``required_roles``: docker's rule, ``targets/releases`` then ``targets``. With
    them: each must sign the tag itself, all with the same digest; the first is reported.
    """
    if digest is not None and not _DIGEST.fullmatch(digest):
        raise ValueError(f"digest must be sha256:<64 hex digits>, not {digest!r}")
    if required_roles:
        signed: dict[str, FileMeta] = {}
        for role in required_roles:
            meta = updater.targets_of(role).get(tag)
            if meta is None:
                signers = updater.signers_of(tag)
                if not signers:
                    raise ImageNotSigned(tag)
                raise RequiredSignerMissing(role, tag, signers)
            signed[role] = meta
        digests = {role: _digest_of(tag, meta) for role, meta in signed.items()}
        if len(set(digests.values())) > 1:
            raise SignersDisagree(tag, digests)
        role = required_roles[0]
        meta = signed[role]
    else:
        hit = updater.find_target(tag)
        if hit is None:
            raise ImageNotSigned(tag)
        role, meta = hit
    trusted = _digest_of(tag, meta)
    if digest is not None and digest.lower() != trusted:
        raise DigestMismatch(digest, trusted)
    return VerifiedImage(updater.gun, tag, trusted, role, meta.length, updater.cached_at)


def _digest_of(tag: str, meta: FileMeta) -> str:
    value = meta.hashes.get("sha256")
    if value is None or len(value) != 32:
        raise ImageNotSigned(tag, "the signed target has no sha256 digest")
    return "sha256:" + value.hex()
