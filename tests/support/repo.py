"""Build signed Notary repositories in tests, the way the Go client lays them out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    DelegatedRole,
    FileMeta,
    Metadata,
    RoleKeys,
    Root,
    Signed,
    Snapshot,
    Targets,
    format_expires,
)
from tufnotary.metadata.signing import PrivateKey


def root_certificate(
    key: PrivateKey,
    common_name: str,
    *,
    not_before: datetime | None = None,
    days: int = 3650,
    hash_algorithm: hashes.HashAlgorithm | None = None,
) -> x509.Certificate:
    """A self-signed certificate like the Go client makes for root keys."""
    start = not_before or datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.crypto_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key.crypto_key, hash_algorithm or hashes.SHA256())
    )


def expires_in(days: float) -> str:
    return format_expires(datetime.now(UTC) + timedelta(days=days))


def signed_bytes(signed: Signed, *keys: tuple[PrivateKey, str | None]) -> bytes:
    """Wire bytes of ``signed`` signed by each (key, keyid override)."""
    metadata = Metadata(signed)
    for key, keyid in keys:
        metadata.sign(key, keyid)
    return metadata.to_bytes()


class RepoBuilder:
    """Client-side state of one GUN: keys and the current version of each role."""

    def __init__(self, gun: str, timestamp_key: Key, snapshot_key: Key | None = None) -> None:
        self.gun = gun
        self.root_key = PrivateKey.generate()
        self.root_cert = Key.from_certificates([root_certificate(self.root_key, gun)])
        self.targets_key = PrivateKey.generate()
        self.snapshot_private = None if snapshot_key else PrivateKey.generate()
        self.snapshot_key = snapshot_key or self.snapshot_private.public  # type: ignore[union-attr]
        self.timestamp_key = timestamp_key
        self.root = Root(
            1,
            expires_in(3650),
            keys={
                k.key_id: k
                for k in (self.root_cert, self.targets_key.public, self.snapshot_key, timestamp_key)
            },
            roles={
                ROOT: RoleKeys([self.root_cert.key_id], 1),
                TARGETS: RoleKeys([self.targets_key.public.key_id], 1),
                SNAPSHOT: RoleKeys([self.snapshot_key.key_id], 1),
                TIMESTAMP: RoleKeys([timestamp_key.key_id], 1),
            },
        )
        self.targets: dict[str, Targets] = {TARGETS: Targets(1, expires_in(1095))}
        self.delegation_keys: dict[str, PrivateKey] = {}
        self.snapshot = Snapshot(1, expires_in(1095))
        self.files: dict[str, bytes] = {}

    def root_bytes(self, *extra_signers: tuple[PrivateKey, str | None]) -> bytes:
        data = signed_bytes(self.root, (self.root_key, self.root_cert.key_id), *extra_signers)
        self.files[ROOT] = data
        return data

    def add_target(self, name: str, content: bytes, role: str = TARGETS) -> None:
        self.targets[role].targets[name] = FileMeta.of(content)

    def add_delegation(self, name: str, paths: list[str], threshold: int = 1) -> PrivateKey:
        key = PrivateKey.generate()
        parent = self.targets[name.rsplit("/", 1)[0]]
        parent.delegations.keys[key.public.key_id] = key.public
        parent.delegations.roles.append(DelegatedRole(name, [key.public.key_id], threshold, paths))
        self.delegation_keys[name] = key
        self.targets[name] = Targets(0, expires_in(1095))
        return key

    def targets_bytes(self, role: str = TARGETS, *, bump: bool = True) -> bytes:
        doc = self.targets[role]
        if bump:
            doc.version += 1
        key = self.targets_key if role == TARGETS else self.delegation_keys[role]
        data = signed_bytes(doc, (key, None))
        self.files[role] = data
        return data

    def snapshot_bytes(self, *, bump: bool = True) -> bytes:
        assert self.snapshot_private is not None, "the server holds the snapshot key"
        if bump:
            self.snapshot.version += 1
        for role, data in self.files.items():
            if role != SNAPSHOT:
                self.snapshot.meta[role] = FileMeta.of(data)
        return signed_bytes(self.snapshot, (self.snapshot_private, None))

    def first_publish(self) -> dict[str, bytes]:
        """What ``notary init -p`` uploads: root 1, targets 2, snapshot 2 (if client-held)."""
        files = {ROOT: self.root_bytes(), TARGETS: self.targets_bytes()}
        if self.snapshot_private is not None:
            files[SNAPSHOT] = self.snapshot_bytes()
        return files
