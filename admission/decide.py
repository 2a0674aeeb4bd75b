"""One image, one decision: the policy's rule for it, and its signed digest from the trust data.

Fails closed: an image that cannot be parsed, that no rule names, whose rule names no trust
server, or whose trust data cannot be fetched or verified is denied (in ``warn`` mode: allowed
with a warning), with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from tufnotary.admission.cache import TrustCache
from tufnotary.admission.policy import AdmissionPolicy, Mode, Rule
from tufnotary.client.errors import ClientError
from tufnotary.client.images import ImageReference, split_tag
from tufnotary.metadata.errors import MetadataError

log = logging.getLogger(__name__)


class Result(StrEnum):
    ALLOWED = "allowed"  # signed; ``pinned`` is the reference to run
    DENIED = "denied"
    WARNED = "warned"  # not verified, allowed by a warn rule
    SKIPPED = "skipped"  # a skip rule: not checked
    EXEMPT = "exempt"  # an exempt namespace: not checked


@dataclass(frozen=True)
class Decision:
    """What happens to ``image``, why, and (when its tag was verified) the pinned reference."""

    image: str
    result: Result
    reason: str
    pinned: str | None = None
    rule: int | None = None  # the index of the matching rule

    @property
    def allowed(self) -> bool:
        return self.result is not Result.DENIED

    def describe(self) -> str:
        """One line: the result, the image and why (or what it runs as)."""
        detail = f" -> {self.pinned}" if self.pinned else f": {self.reason}"
        return f"{self.result} {self.image}{detail}"


class Checker:
    """Decides images by ``policy`` with trust data from ``cache``."""

    def __init__(self, policy: AdmissionPolicy, cache: TrustCache) -> None:
        self.policy = policy
        self.cache = cache

    def decide(self, image: str) -> Decision:
        try:
            ref = ImageReference.parse(image)
        except ValueError as exc:
            return Decision(image, Result.DENIED, f"not a valid image reference: {exc}")
        rule = self.policy.rule_for(ref.gun)
        if rule is None:
            return Decision(image, Result.DENIED, f"no policy rule names {ref.gun}")
        if rule.mode is Mode.SKIP:
            return Decision(image, Result.SKIPPED, f"{rule.describe()} skips it", rule=rule.index)
        try:
            return self._verify(image, ref, rule)
        except (ClientError, MetadataError, OSError, ValueError) as exc:
            reason = _reason(exc)
        except Exception as exc:  # a bug must not let an image in
            log.exception("checking %s failed", image)
            reason = f"internal error while checking it ({type(exc).__name__})"
        result = Result.WARNED if rule.mode is Mode.WARN else Result.DENIED
        return Decision(image, result, reason, rule=rule.index)

    def _verify(self, image: str, ref: ImageReference, rule: Rule) -> Decision:
        if rule.server is None:
            reason = f"{rule.describe()} names no trust server: nothing can sign {ref.gun}"
            result = Result.WARNED if rule.mode is Mode.WARN else Result.DENIED
            return Decision(image, result, reason, rule=rule.index)
        verified = self.cache.verify(rule, rule.server, ref.gun, ref.pull_tag, ref.digest)
        signed = f"{verified.tag} is signed by {verified.role} with {verified.digest}"
        if ref.digest is not None:  # already pinned: nothing to change
            return Decision(image, Result.ALLOWED, signed, rule=rule.index)
        name = split_tag(image)[0]
        pinned = f"{name}:{verified.tag}@{verified.digest}"
        return Decision(image, Result.ALLOWED, signed, pinned, rule.index)


def _reason(exc: Exception) -> str:
    if isinstance(exc, MetadataError):
        return f"its trust data failed verification: {exc}"
    if isinstance(exc, OSError) and not isinstance(exc, ClientError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    return str(exc)
