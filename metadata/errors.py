"""One exception per way metadata can be refused; server and client map them to their own."""

from __future__ import annotations


class MetadataError(Exception):
    """Base of every metadata refusal."""


class FormatError(MetadataError):
    """The document or a value in it does not have the required shape."""


class UnsignedError(MetadataError):
    """The document carries no signatures at all."""

    def __init__(self) -> None:
        super().__init__("tuf: data has no signatures")


class ThresholdError(MetadataError):
    """Fewer valid signatures from distinct trusted keys than the role's threshold."""

    def __init__(self, role: str) -> None:
        super().__init__(f"valid signatures did not meet threshold for {role}")
        self.role = role


class SignatureCountError(MetadataError):
    """More signatures than the role has keys (or than accepted), or two by one key id."""


class KeyIdMismatchError(MetadataError):
    """A trusted key listed under an id that is not its own key id."""


class ExpiredError(MetadataError):
    """The document's ``expires`` lies in the past."""


class VersionError(MetadataError):
    """The version is lower than required (rollback) or otherwise invalid."""


class RootError(MetadataError):
    """A root cannot be trusted: certificates, rotation signatures, pinning."""


class RotationError(RootError):
    """A new root is not signed by the previous root's threshold of keys."""


class HashMismatchError(MetadataError):
    """Bytes do not match the length or hashes that trusted metadata lists for them."""
