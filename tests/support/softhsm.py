"""A SoftHSM2 PKCS#11 token in a temporary directory, with EC P-256 keys made inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
LABEL = "tufnotary-test"
PIN = "123456"
SO_PIN = "654321"


@dataclass
class SoftHSM:
    """A token (``label``, user ``pin``) and the environment that reaches it.

    A process loads a PKCS#11 module once, and SoftHSM reads its configuration then: there
    is one token per test session (the ``softhsm`` fixture), and each test makes its own keys.
    """

    directory: Path
    label: str = LABEL
    pin: str = PIN
    _next_key: int = 2

    @property
    def env(self) -> dict[str, str]:
        """SOFTHSM2_CONF and PYKCS11LIB for the token; the PIN is added by the callers that
        should have it."""
        return {"SOFTHSM2_CONF": str(self.directory / "softhsm2.conf"), "PYKCS11LIB": str(MODULE)}

    def uri(self, key_number: int) -> str:
        return f"hsm:{key_number}?label={self.label}"

    def new_key(self) -> str:
        """A new EC P-256 key pair whose private half never leaves the token (sensitive, not
        extractable); its ``hsm:`` URI."""
        import pkcs11
        from pkcs11.util.ec import encode_named_curve_parameters

        number, self._next_key = self._next_key, self._next_key + 1
        token = pkcs11.lib(str(MODULE)).get_token(token_label=self.label)
        with token.open(rw=True, user_pin=self.pin) as session:
            parameters = session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            parameters.generate_keypair(
                id=bytes([number]),
                label=f"key{number}",
                store=True,
                private_template={
                    pkcs11.Attribute.SENSITIVE: True,
                    pkcs11.Attribute.EXTRACTABLE: False,
                },
            )
        return self.uri(number)


def softhsm_available() -> bool:
    if not MODULE.exists() or shutil.which("softhsm2-util") is None:
        return False
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return False
    return True


def make_token(directory: Path) -> SoftHSM:
    """Initialise a token under ``directory`` and point this process at it (SOFTHSM2_CONF,
    PYKCS11LIB), for the rest of the process."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    (directory / "softhsm2.conf").write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    hsm = SoftHSM(directory)
    os.environ.update(hsm.env)
    command = ["softhsm2-util", "--init-token", "--free", "--label", LABEL]
    command += ["--pin", PIN, "--so-pin", SO_PIN]
    subprocess.run(command, check=True, capture_output=True, env=os.environ)
    return hsm
