"""Server keys outside the database: made inside a PKCS#11 token, used through
securesystemslib's Signer API.

A key made here never leaves its token (sensitive, not extractable); the database keeps its
public key and its ``hsm:`` URI. Stored keys of any securesystemslib scheme (``hsm:``, the
key managers ``awskms:``, ``gcpkms:``, ``azurekms:``, ``hv:``, and for tests private key
files, ``file2:``), made here or registered by `tufnotary-server key add`, sign through the
same adapter as the client's, which returns notary's wire form (ECDSA raw r||s) and checks
each signature against the stored public key.
"""

from __future__ import annotations

import os
import secrets
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization

from tufnotary.metadata.keys import Key
from tufnotary.metadata.signing import Signer
from tufnotary.metadata.urisigning import (
    PKCS11_MODULE_ENV,
    UriSigner,
    UriSigningError,
    describe,
    hsm_public_key,
)

PROBE = b"tufnotary-server: does this key sign?"
_LABEL_PREFIX = "tufnotary"


class KeyBackendError(Exception):
    """The token or key manager cannot be used (module, token, PIN, key); says what to check."""


def uri_signer(uri: str, public: Key, pin: str | None) -> Signer:
    """A signer for the key behind ``uri`` whose public key is ``public``; ``pin`` is given to
    a backend that asks for a secret (a PKCS#11 token)."""

    def secret(name: str) -> str:
        if pin is None:
            raise KeyBackendError(
                f"{uri} needs a {name}: set pkcs11_module, pkcs11_token_label and pkcs11_pin "
                "(or pkcs11_pin_file), with key_backend 'pkcs11' or 'uri'"
            )
        return pin

    return UriSigner(uri, public, secret, failure=lambda exc: KeyBackendError(str(exc)))


class Pkcs11Token:
    """The PKCS#11 token the server makes its new timestamp and snapshot keys in.

    Loading ``module`` sets ``PYKCS11LIB`` for securesystemslib's HSM signer.
    """

    def __init__(self, module: str, token_label: str, pin: str) -> None:
        self.module = module
        self.token_label = token_label
        self._pin = pin
        os.environ[PKCS11_MODULE_ENV] = module

    def _token(self) -> Any:
        import pkcs11

        try:
            library = pkcs11.lib(self.module)
        except Exception as exc:  # python-pkcs11 raises RuntimeError, OSError...
            raise KeyBackendError(
                f"PKCS#11 module {self.module} does not load ({describe(exc)}): check pkcs11_module"
            ) from None
        try:
            return library.get_token(token_label=self.token_label)
        except (pkcs11.NoSuchToken, pkcs11.MultipleTokensReturned) as exc:
            raise KeyBackendError(
                f"PKCS#11 token {self.token_label!r} not found in {self.module} "
                f"({describe(exc)}): check pkcs11_token_label and that the token is present"
            ) from None

    def _session(self, *, rw: bool = False) -> Any:
        import pkcs11

        token = self._token()
        try:
            return token.open(rw=rw, user_pin=self._pin)
        except pkcs11.PKCS11Error as exc:
            raise KeyBackendError(
                f"PKCS#11 token {self.token_label!r} refused the login ({describe(exc)}): "
                "check pkcs11_pin or pkcs11_pin_file"
            ) from None

    def check(self) -> None:
        """KeyBackendError unless the module loads, the token is found and the PIN works."""
        with self._session():
            pass

    def create(self, gun: str, role: str) -> tuple[Key, str]:
        """A new EC P-256 key pair made in the token, its private half sensitive and not
        extractable; its public key and ``hsm:`` URI."""
        import pkcs11
        from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

        number = secrets.randbits(63) | 1 << 62  # 8 bytes: CKA_ID as securesystemslib reads it
        with self._session(rw=True) as session:
            parameters = session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            public, _ = parameters.generate_keypair(
                id=number.to_bytes(8, "big"),
                label=f"{_LABEL_PREFIX} {role} {gun}",
                store=True,
                private_template={
                    pkcs11.Attribute.SENSITIVE: True,
                    pkcs11.Attribute.EXTRACTABLE: False,
                },
            )
            spki = encode_ec_public_key(public)
        key = Key.from_public_key(serialization.load_der_public_key(spki))  # type: ignore[arg-type]
        return key, f"hsm:{number}?{urlencode({'label': self.token_label})}"

    def signer(self, uri: str, public: Key) -> Signer:
        return uri_signer(uri, public, self._pin)

    def public_key(self, uri: str) -> Key:
        """The public key of the token key behind the ``hsm:`` URI."""
        try:
            return hsm_public_key(uri, lambda _name: self._pin)
        except UriSigningError as exc:
            raise KeyBackendError(str(exc)) from None
