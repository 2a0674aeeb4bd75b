"""Root certificates: the self-signed x509 certificate a root key signs for a GUN (spec 3.5).

A key in a file signs with ``cryptography``'s certificate builder. A key in a token or key
manager cannot be handed to the builder, so, as notary does for its PKCS#11 keys, the
certificate is assembled here: the builder makes the to-be-signed part (signed with a
throwaway key of the same kind, whose signature is dropped), the token key signs it, and the
certificate is put together and checked against the token's public key.
"""

from __future__ import annotations

import secrets
import warnings
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tufnotary.client.der import BIT_STRING, SEQUENCE, der, der_items
from tufnotary.metadata.keys import Key, PublicKey, key_usage
from tufnotary.metadata.signing import PrivateKey, Signer, der_ecdsa

ROOT_CERT_VALIDITY = timedelta(days=10 * 365)


def root_certificate(key: Signer, gun: str) -> Key:
    """The self-signed root certificate key the Go client makes for ``gun`` with ``key``;
    ValueError for a key that cannot sign one (ed25519; in a token: anything but P-256)."""
    if isinstance(key, PrivateKey):
        crypto = key.crypto_key
        if isinstance(crypto, ed25519.Ed25519PrivateKey):
            raise ValueError("root certificates need an ecdsa or rsa key")
        cert = _builder(crypto.public_key(), gun).sign(crypto, hashes.SHA256())
        return Key.from_certificates([cert])
    public = key.public.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise ValueError("a root key in a token or key manager must be an ECDSA P-256 key")
    draft = _builder(public, gun).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    tbs = draft.tbs_certificate_bytes
    ((_, body),) = der_items(draft.public_bytes(serialization.Encoding.DER))
    algorithm = der(SEQUENCE, der_items(body)[1][1])
    signature = der(BIT_STRING, b"\x00" + der_ecdsa(key.sign(tbs)))
    cert = x509.load_der_x509_certificate(der(SEQUENCE, tbs + algorithm + signature))
    try:
        cert.verify_directly_issued_by(cert)
    except InvalidSignature as exc:
        raise ValueError("the key's signature of its root certificate does not verify") from exc
    return Key.from_certificates([cert])


def _builder(public: PublicKey, gun: str) -> x509.CertificateBuilder:
    """The certificate notary makes: CN the GUN, 10 years, code signing, not a CA."""
    with warnings.catch_warnings():  # GUNs longer than X.520's 64 characters: Go writes them
        warnings.simplefilter("ignore", UserWarning)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gun, _validate=False)])
    now = datetime.now(UTC).replace(microsecond=0)
    usage = key_usage("digital_signature", "key_encipherment")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(secrets.randbelow(2**128 - 1) + 1)
        .not_valid_before(now)
        .not_valid_after(now + ROOT_CERT_VALIDITY)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
