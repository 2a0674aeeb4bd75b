"""Image references and their verification: a tag's trusted digest, resolved the way docker
does (spec 4.6), or the tag signed with a digest. ``Repository.verify_image`` is the entry point;
a :class:`Policy` can require named signer roles and pin root keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from tufnotary.client.errors import ClientError
from tufnotary.client.trusted import TrustPinning
from tufnotary.client.updater import Updater
from tufnotary.metadata.model import FileMeta, is_targets_role

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
"""An image digest as the client writes it (:func:`parse_digest` accepts upper case too)."""
MAX_GUN = 255
DOCKER_HUB = "docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN = re.compile(
    r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
"""Docker's reference grammar (distribution/reference): repository path, registry, tag."""
DEFAULT_TAG = "latest"


def parse_digest(text: str) -> str:
    """``sha256:<64 hex digits>`` in lower case; ValueError if ``text`` is not one."""
    digest = text.lower()
    if not DIGEST.fullmatch(digest):
        raise ValueError(f"the digest must be sha256:<64 hex digits>, not {text!r}")
    return digest


def check_gun(text: str) -> str:
    """``text`` if it is a repository name (GUN); ValueError otherwise."""
    if (
        not text
        or len(text.encode()) > MAX_GUN
        or any(part in ("", ".", "..") for part in text.split("/"))
        or any(c in text for c in "\\\0")
        or any(ord(c) < 0x20 or c == "\x7f" for c in text)
    ):
        raise ValueError(f"{text!r} is not a repository name such as registry.example.com/team/app")
    return text


@dataclass(frozen=True)
class ImageReference:
    """``[registry/]repo[:tag][@sha256:...]`` split into the GUN, the tag and the digest."""

    gun: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Docker's reading: no registry means docker.io (``library/`` for one-part names;
        ``index.docker.io`` is docker.io too)."""
        name, tag = split_tag(text.partition("@")[0])
        digest = text.partition("@")[2]
        first, _, rest = name.partition("/")
        if not rest or ("." not in first and ":" not in first and first != "localhost"):
            first, rest = DOCKER_HUB, name
        elif first == "index.docker.io":
            first = DOCKER_HUB
        if first == DOCKER_HUB and "/" not in rest:
            rest = f"library/{rest}"
        if not _DOMAIN.fullmatch(first) or not _PATH.fullmatch(rest):
            raise ValueError(f"{text!r} is not an image reference such as registry/repo:tag")
        if tag is not None and not _TAG.fullmatch(tag):
            raise ValueError(f"{tag!r} is not a tag (letters, digits, _ . -; up to 128)")
        return cls(check_gun(f"{first}/{rest}"), tag, parse_digest(digest) if digest else None)

    @property
    def pull_tag(self) -> str | None:
        """The tag docker pulls: the given one, else ``latest`` unless a digest is given."""
        return self.tag if self.tag is not None or self.digest else DEFAULT_TAG


def split_tag(name: str) -> tuple[str, str | None]:
    """``[registry[:port]/]repo[:tag]`` (no digest) as (name, tag or None)."""
    slash = name.rfind("/")
    if ":" not in name[slash + 1 :]:
        return name, None
    name, tag = name.rsplit(":", 1)
    if not tag:
        raise ValueError("empty tag")
    return name, tag


class ImageVerificationError(ClientError):
    """Base of the reasons an image is refused."""

    hint = "not trusted: {error}"


class ImageNotSigned(ImageVerificationError):
    """No accepted role signs the tag (docker: "no trust data for <tag>")."""

    hint = "not trusted: {error}: `{prog} list {context.gun}` shows the signed tags"

    def __init__(
        self, tag: str, reason: str = "the tag is not signed (no trust data for it)"
    ) -> None:
        super().__init__(f"{tag}: {reason}")
        self.tag = tag


class DigestMismatch(ImageVerificationError):
    """The digest asked for is not the one signed for the tag."""

    hint = "not trusted: {error}: deploy the signed digest, or have this one signed"

    def __init__(self, expected: str, trusted: str) -> None:
        super().__init__(f"digest {expected} is not the signed digest {trusted}")
        self.expected, self.trusted = expected, trusted


class RequiredSignerMissing(ImageVerificationError):
    """A role the policy requires is not trusted or does not sign the tag (others do)."""

    hint = "not trusted: {error}: its holder signs it with `{prog} addhash -r {error.role}`"

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


def resolve_image(
    updater: Updater,
    tag: str | None,
    digest: str | None = None,
    required_roles: Sequence[str] = (),
) -> VerifiedImage:
    """The signed digest of ``tag`` in ``updater``'s trusted metadata; without a tag, the first
    tag (by name) signed with ``digest`` that passes.

    Without ``required_roles``: docker's rule, ``targets/releases`` then ``targets``. With
    them: each must sign the tag itself, all with the same digest; the first is reported.
    """
    digest = parse_digest(digest) if digest is not None else None
    if tag is not None:
        return _resolve_tag(updater, tag, digest, required_roles)
    if digest is None:
        raise ValueError("give a tag or a digest")
    for name in updater.signed_with(digest.removeprefix("sha256:")):
        try:
            return _resolve_tag(updater, name, digest, required_roles)
        except ImageVerificationError:
            continue
    raise ImageNotSigned(digest, "no trusted tag is signed with this digest")


def _resolve_tag(
    updater: Updater, tag: str, digest: str | None, required_roles: Sequence[str]
) -> VerifiedImage:
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
    if digest is not None and digest != trusted:
        raise DigestMismatch(digest, trusted)
    return VerifiedImage(updater.gun, tag, trusted, role, meta.length, updater.cached_at)


def _digest_of(tag: str, meta: FileMeta) -> str:
    value = meta.hashes.get("sha256")
    if value is None or len(value) != 32:
        raise ImageNotSigned(tag, "the signed target has no sha256 digest")
    return "sha256:" + value.hex()
