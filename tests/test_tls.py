"""Development TLS material: generated once, reused, renewed, and usable for a TLS handshake."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from tufnotary.server import tls
from tufnotary.server.tls import TLSFiles, ensure_self_signed


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def snapshot(files: TLSFiles) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (files.ca_cert, files.cert, files.key)}


def test_generates_files_with_private_keys_0600(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path / "data")
    tls_dir = (tmp_path / "data" / "tls").absolute()
    assert files == TLSFiles(tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key")
    for key in (files.key, tls_dir / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.ca_cert.stat().st_mode) == 0o644

    (ca,) = load_chain(files.ca_cert)
    leaf, chained_ca = load_chain(files.cert)
    assert chained_ca == ca
    assert ca.subject.rfc4514_string() == "CN=tufnotary development CA"
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= datetime.timedelta(days=3650)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=824) < lifetime <= datetime.timedelta(days=825)
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert key.public_key() == leaf.public_key()


def test_later_calls_reuse_the_files(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    before = snapshot(first)
    assert ensure_self_signed(tmp_path) == first
    assert snapshot(first) == before


def test_server_certificate_verifies_for_localhost_and_loopback_addresses(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path)
    leaf, ca = load_chain(files.cert)
    builder = PolicyBuilder().store(Store(load_chain(files.ca_cert)))
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = builder.build_server_verifier(name).verify(leaf, [ca])
        assert chain[-1] == ca
    with pytest.raises(x509.verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("example.com")).verify(leaf, [ca])


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_tls_handshake_with_generated_ca(tmp_path: Path, server_hostname: str) -> None:
    files = ensure_self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    client_context = ssl.create_default_context(cafile=str(files.ca_cert))

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept_one() -> None:
            conn, _ = listener.accept()
            with server_context.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.sendall(b"ok")

        thread = threading.Thread(target=accept_one, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname=server_hostname) as conn,
        ):
            assert conn.recv(2) == b"ok"
        thread.join(timeout=10)


def test_expiring_server_certificate_is_reissued_by_the_same_ca(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path)
    ca_before = files.ca_cert.read_bytes()
    (ca,) = load_chain(files.ca_cert)
    ca_key = serialization.load_pem_private_key(
        (files.ca_cert.parent / "ca.key").read_bytes(), None
    )
    issued = datetime.datetime.now(datetime.UTC) - tls.SERVER_LIFETIME + datetime.timedelta(days=29)
    old_cert, old_key = tls._make_server(ca, ca_key, issued)
    files.cert.write_bytes(old_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(tls._key_pem(old_key))

    assert ensure_self_signed(tmp_path) == files
    assert files.ca_cert.read_bytes() == ca_before
    leaf, chained_ca = load_chain(files.cert)
    assert leaf != old_cert and chained_ca == ca
    leaf.verify_directly_issued_by(ca)
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > tls.RENEW_BEFORE
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600


def test_server_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    other = ensure_self_signed(tmp_path / "other")
    files = ensure_self_signed(tmp_path / "mine")
    files.cert.write_bytes(other.cert.read_bytes())
    files.key.write_bytes(other.key.read_bytes())

    ensure_self_signed(tmp_path / "mine")
    leaf, _ = load_chain(files.cert)
    leaf.verify_directly_issued_by(load_chain(files.ca_cert)[0])


def test_missing_ca_key_regenerates_everything(tmp_path: Path) -> None:
    files = ensure_self_signed(tmp_path)
    before = snapshot(files)
    (files.ca_cert.parent / "ca.key").unlink()

    ensure_self_signed(tmp_path)
    after = snapshot(files)
    assert all(after[name] != before[name] for name in before)
    leaf, ca = load_chain(files.cert)
    leaf.verify_directly_issued_by(ca)
