"""Self-signed development TLS material: a local CA and a localhost server certificate."""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tufnotary.metadata.keys import issued_by, key_usage

CA_NAME = "tufnotary development CA"
CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=825)
RENEW_BEFORE = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock skew between server and clients


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA certificate to give clients, the server chain and its private key."""

    ca_cert: Path
    cert: Path
    key: Path


def ensure_self_signed(data_dir: Path) -> TLSFiles:
    """Create (once) or reuse `data_dir/tls/{ca.crt,ca.key,server.crt,server.key}`.

    The CA is reused while it is valid for more than 30 days; the server certificate (localhost,
    127.0.0.1, ::1) is reissued by that CA when it is missing, expiring within 30 days, or was not
    issued by it. Keys are written with mode 0600.
    """
    tls_dir = data_dir.absolute() / "tls"
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = TLSFiles(tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key")
    ca_key_path = tls_dir / "ca.key"
    now = datetime.datetime.now(datetime.UTC)

    ca = _load_pair(files.ca_cert, ca_key_path, now)
    if ca is None:
        ca = _make_ca(now)
        _write(ca_key_path, _key_pem(ca[1]), private=True)
        _write(files.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM))
    ca_cert, ca_key = ca

    server = _load_pair(files.cert, files.key, now)
    if server is None or not issued_by(server[0], ca_cert):
        cert, key = _make_server(ca_cert, ca_key, now)
        _write(files.key, _key_pem(key), private=True)
        chain = cert.public_bytes(serialization.Encoding.PEM)
        _write(files.cert, chain + ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


def _load_pair(
    cert_path: Path, key_path: Path, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its matching EC key, or None if absent, unusable or expiring soon."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return None
    return cert, key


def _make_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        _builder(name, name, key.public_key(), now, CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage("key_cert_sign", "crl_sign"), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, SERVER_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Atomically replace `path` (a reader never sees half a file); mode 0600 if `private`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
