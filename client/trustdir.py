"""The local trust directory of notary and docker: private keys and cached metadata (spec 4.1).

Layout (``~/.notary`` for notary, ``~/.docker/trust`` for docker)::

    private/<canonical key id>.key       encrypted PKCS#8 PEM, headers ``role`` and ``gun``
    tuf/<gun>/metadata/<role>.json       cached metadata, delegations in subdirectories

Key files are written the way notary writes them: PBES2 with PBKDF2-HMAC-SHA1 (8-byte salt,
2048 iterations) and AES-256-CBC. ``cryptography`` cannot write that scheme, nor read notary's
ed25519 form (OID 1.3.6.1.4.1.11591.15.1, body public||seed||public) or its version-1 ECDSA
PKCS#8, so the small DER structures are built and opened here. Keys in the layouts of notary
0.1-0.3 (``private/root_keys/``, ``private/tuf_keys/<gun>/``, ``<id>_<role>.key``, OpenSSL
``Proc-Type`` encryption) are read in place.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from tufnotary.client.der import der as _der
from tufnotary.client.der import der_items as _der_items
from tufnotary.client.errors import ClientError
from tufnotary.client.fileio import atomic_write as _atomic_write
from tufnotary.client.tokenkeys import (
    TOKEN_KEYS_DIR,
    KeyRecord,
    NotExportable,
    Pins,
    TokenKeys,
)
from tufnotary.metadata.errors import FormatError
from tufnotary.metadata.keys import ECDSA, MIN_RSA_BITS, Key
from tufnotary.metadata.signing import PrivateKey, Signer

ROOT_ENV = ("NOTARY_ROOT_PASSPHRASE", "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE")
REPOSITORY_ENV = "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE"
DELEGATION_ENV = "NOTARY_DELEGATION_PASSPHRASE"
PROMPT_RETRIES = 3
# Roles whose key files carry a ``gun`` header; notary drops it for root and delegation keys.
_GUN_ROLES = frozenset({"targets", "snapshot", "timestamp"})
_LEGACY_DIRS = frozenset({"root_keys", "tuf_keys"})
_ENCRYPTED_PKCS8 = "ENCRYPTED PRIVATE KEY"
_PKCS8 = "PRIVATE KEY"
_LEGACY_TYPES = frozenset({"EC PRIVATE KEY", "RSA PRIVATE KEY"})
_LEGACY_HEADERS = ("Proc-Type", "DEK-Info")

# DER tags and the contents of the object identifiers notary's PKCS#8 code uses.
_INTEGER, _OCTET_STRING, _OID, _SEQUENCE = 0x02, 0x04, 0x06, 0x30
_OID_PBES2 = bytes.fromhex("2a864886f70d01050d")  # 1.2.840.113549.1.5.13
_OID_PBKDF2 = bytes.fromhex("2a864886f70d01050c")  # 1.2.840.113549.1.5.12
_OID_AES256_CBC = bytes.fromhex("60864801650304012a")  # 2.16.840.1.101.3.4.1.42
_OID_NOTARY_ED25519 = bytes.fromhex("2b06010401da470f01")  # 1.3.6.1.4.1.11591.15.1
_PBKDF2_ITERATIONS = 2048
_SALT_BYTES = 8


class TrustDirError(ClientError):
    """Base of the trust directory's errors."""


class KeyNotFound(TrustDirError):
    """No private key file with this id."""

    hint = "{error} in {context.trust_dir}: `{prog} key list` shows the keys held there"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"private key {key_id} not found")
        self.key_id = key_id


class WrongPassphrase(TrustDirError):
    """An encrypted key did not decrypt with the passphrase given."""

    hint = "{error}: check the passphrase environment variables or type it again"


class PassphraseRequired(TrustDirError):
    """No passphrase: no prompt, and none of the role's environment variables is set."""

    hint = "{error} (or run {prog} in a terminal to be asked for it)"

    def __init__(self, role: str) -> None:
        variables = " or ".join(passphrase_variables(role))
        super().__init__(f"a passphrase is needed for the {role} key: set {variables}")
        self.role = role


class KeyFileError(TrustDirError):
    """A key file or PEM that cannot be used: unreadable, unsupported, or not the key named."""


def passphrase_variables(role: str) -> tuple[str, ...]:
    """Environment variables holding the passphrase for ``role``'s keys, first match wins.

    notary reads NOTARY_<ROLE>_PASSPHRASE (NOTARY_DELEGATION_PASSPHRASE for any role that is
    not a base role), docker the ROOT passphrase for root and REPOSITORY for every other role.
    """
    if role == "root":
        return ROOT_ENV
    if role in ("targets", "snapshot"):
        return (f"NOTARY_{role.upper()}_PASSPHRASE", REPOSITORY_ENV)
    if role == "timestamp":
        return (REPOSITORY_ENV,)
    return (DELEGATION_ENV, REPOSITORY_ENV)


PassphrasePrompt = Callable[[str, str | None, bool], str]


class Passphrases:
    """Passphrases for key files: from the environment, as the reference clients read them,
    else (and after a wrong one) from ``prompt(role, gun, creating)``."""

    def __init__(
        self, env: Mapping[str, str] | None = None, prompt: PassphrasePrompt | None = None
    ) -> None:
        self._env = os.environ if env is None else env
        self._prompt = prompt

    @property
    def attempts(self) -> int:
        """How many passphrases to try on a key: a prompt is asked again after a wrong one."""
        return 1 + PROMPT_RETRIES if self._prompt is not None else 1

    def get(self, role: str, gun: str | None, creating: bool, attempt: int = 0) -> str:
        """The passphrase for a key of ``role`` (``attempt`` > 0: the previous one was wrong);
        PassphraseRequired when there is none."""
        values = (self._env.get(name) for name in passphrase_variables(role))
        passphrase = next((value for value in values if value), "") if attempt == 0 else ""
        if not passphrase and self._prompt is not None:
            passphrase = self._prompt(role, gun, creating)
        if not passphrase:
            raise PassphraseRequired(role)
        return passphrase


@dataclass(frozen=True)
class KeyInfo:
    """A private key file as listed from its name, place and PEM headers (not decrypted), or
    the record of a key in a token or key manager."""

    key_id: str
    role: str
    gun: str | None
    path: Path
    uri: str | None = None  # a key in a token or key manager: ``path`` is its record


class TrustDir:
    """Private keys and the metadata cache in a notary/docker trust directory."""

    def __init__(
        self, path: Path, passphrases: Passphrases | None = None, pins: Pins | None = None
    ) -> None:
        self.path = Path(path)
        self._passphrases = passphrases or Passphrases()
        self.token_keys = TokenKeys(self.path / TOKEN_KEYS_DIR, pins or Pins())
        self._loaded: dict[str, Signer] = {}  # decrypted keys, so each is asked for once

    @property
    def private_dir(self) -> Path:
        return self.path / "private"

    # -- private keys -------------------------------------------------------------------------

    def add_key(self, key: PrivateKey, role: str, gun: str | None = None) -> str:
        """Store ``key`` as ``private/<canonical id>.key``, encrypted; return the id."""
        crypto = key.crypto_key
        if isinstance(crypto, rsa.RSAPrivateKey) and crypto.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        headers = {"role": role}
        if gun and role in _GUN_ROLES:
            headers["gun"] = gun
        if not role or any(c in value for value in headers.values() for c in "\r\n"):
            raise ValueError(f"invalid role {role!r} or gun {gun!r}")
        passphrase = self._passphrases.get(role, headers.get("gun"), creating=True)
        der = _encrypt_pkcs8(_pkcs8(key), passphrase)
        key_id = key.public.key_id
        _atomic_write(
            self.private_dir / f"{key_id}.key", _pem_encode(_ENCRYPTED_PKCS8, headers, der)
        )
        self._loaded[key_id] = key
        return key_id

    def generate_key(self, role: str, gun: str | None = None, algorithm: str = ECDSA) -> PrivateKey:
        """A new ``ecdsa`` (P-256), ``ed25519`` or ``rsa`` key, stored with ``add_key``."""
        key = PrivateKey.generate(algorithm)
        self.add_key(key, role, gun)
        return key

    def load_key(self, key_id: str) -> Signer:
        """The decrypted key named ``key_id``, or its token's signer; KeyNotFound,
        WrongPassphrase, KeyFileError."""
        found = self.find_keys([key_id])
        if not found:
            raise KeyNotFound(key_id)
        return found[key_id]

    def find_keys(
        self, key_ids: Iterable[str], keys: Mapping[str, Key] | None = None
    ) -> dict[str, Signer]:
        """The private keys (in files or tokens) present for ``key_ids``, by the id asked for.

        An id found in ``keys`` (a ``keys`` map of root or targets metadata) is also looked up
        by its canonical id, so root keys listed under their certificate's id are found.
        """
        index = self._index()
        found: dict[str, Signer] = {}
        for key_id in key_ids:
            key = keys.get(key_id) if keys else None
            for candidate in (key_id, _canonical_id(key)) if key else (key_id,):
                if candidate not in self._loaded and candidate in index:
                    self._load(index[candidate])
                elif candidate not in self._loaded and (token := self.token_keys.signer(candidate)):
                    self._loaded[candidate] = token
                if candidate in self._loaded:
                    found[key_id] = self._loaded[candidate]
                    break
        return found

    def list_keys(self) -> list[KeyInfo]:
        """Every key file, by id (a current-layout file wins over a legacy one), then every
        key in a token or key manager."""
        index = self._index()
        records = [record for record in self.token_keys.records() if record.key_id not in index]
        return [*index.values(), *(self._token_info(record) for record in records)]

    def _token_info(self, record: KeyRecord) -> KeyInfo:
        path = self.token_keys.path(record.key_id)
        return KeyInfo(record.key_id, record.role, record.gun, path, record.uri)

    def import_key(
        self,
        pem: bytes,
        role: str | None = None,
        gun: str | None = None,
        passphrase_in: str | None = None,
    ) -> str:
        """Store a PEM private key (PKCS#8, SEC1 or PKCS#1, encrypted or not); return its id.

        ``role`` and ``gun`` default to the PEM's headers (as ``notary key export`` writes
        them). An encrypted PEM is opened with ``passphrase_in``, else the role's passphrase.
        """
        block = _pem_decode(pem)
        role = role or block.headers.get("role")
        if not role:
            raise ValueError("no role given and the PEM has no role header")
        gun = gun or block.headers.get("gun")
        passphrase = None
        if block.encrypted:
            passphrase = passphrase_in or self._passphrases.get(role, gun, creating=False)
        return self.add_key(_read_private_key(block, passphrase), role, gun)

    def export_key(self, key_id: str) -> bytes:
        """The key file's PEM with ``role``, ``gun`` and ``path`` headers, as notary exports."""
        info = self._index().get(key_id)
        if info is None and (record := self.token_keys.get(key_id)) is not None:
            raise NotExportable(f"key {key_id} lives in {record.uri}: it cannot be exported")
        if info is None:
            raise KeyNotFound(key_id)
        block = _pem_decode(info.path.read_bytes())
        headers = dict(block.headers, path=key_id)
        if info.role:
            headers["role"] = info.role
        if info.gun:
            headers["gun"] = info.gun
        return _pem_encode(block.type, headers, block.der)

    def remove_key(self, key_id: str) -> None:
        """Delete every file holding ``key_id`` and forget it if it is in a token (the token
        keeps it); KeyNotFound if there is none."""
        paths = [info.path for info in self._infos() if info.key_id == key_id]
        if not self.token_keys.remove(key_id) and not paths:
            raise KeyNotFound(key_id)
        for path in paths:
            path.unlink()
        self._loaded.pop(key_id, None)

    def _infos(self) -> Iterator[KeyInfo]:
        """KeyInfo of each readable ``*.key`` file, current layout first."""
        found = []
        for directory, _, files in os.walk(self.private_dir):
            found += [Path(directory, name) for name in files if name.endswith(".key")]
        for path in sorted(found, key=lambda p: (len(p.parts), p)):
            if path.is_symlink():
                continue
            try:
                headers = _pem_decode(path.read_bytes()).headers
            except (OSError, KeyFileError):
                continue
            key_id, _, role_suffix = path.stem.partition("_")
            folders = path.relative_to(self.private_dir).parts[:-1]
            legacy_gun = "/".join(folders[1:]) if folders[:1] and folders[0] in _LEGACY_DIRS else ""
            role = headers.get("role") or role_suffix
            yield KeyInfo(key_id, role, headers.get("gun") or legacy_gun or None, path)

    def _index(self) -> dict[str, KeyInfo]:
        index: dict[str, KeyInfo] = {}
        for info in self._infos():
            index.setdefault(info.key_id, info)
        return index

    def _load(self, info: KeyInfo) -> PrivateKey:
        block = _pem_decode(info.path.read_bytes())
        key = self._decrypt(block, info) if block.encrypted else _read_private_key(block, None)
        if key.public.key_id != info.key_id:
            raise KeyFileError(f"{info.path} holds key {key.public.key_id}, not {info.key_id}")
        self._loaded[info.key_id] = key
        return key

    def _decrypt(self, block: _PemBlock, info: KeyInfo) -> PrivateKey:
        for attempt in range(self._passphrases.attempts):
            passphrase = self._passphrases.get(info.role, info.gun, creating=False, attempt=attempt)
            with contextlib.suppress(WrongPassphrase):
                return _read_private_key(block, passphrase)
        raise WrongPassphrase(f"wrong passphrase for the {info.role} key {info.key_id}")

    # -- metadata cache -----------------------------------------------------------------------

    def read_metadata(self, gun: str, role: str) -> bytes | None:
        """The cached ``<role>.json`` of ``gun``, or None."""
        try:
            return self._metadata_path(gun, role).read_bytes()
        except FileNotFoundError:
            return None

    def write_metadata(self, gun: str, role: str, data: bytes) -> None:
        """Cache ``data`` as ``tuf/<gun>/metadata/<role>.json`` (atomically replaced)."""
        _atomic_write(self._metadata_path(gun, role), data)

    def metadata_time(self, gun: str, role: str) -> datetime | None:
        """When the cached ``<role>.json`` of ``gun`` was last written, or None."""
        try:
            mtime = self._metadata_path(gun, role).stat().st_mtime
        except FileNotFoundError:
            return None
        return datetime.fromtimestamp(mtime, UTC)

    def clear_metadata(self, gun: str) -> None:
        """Forget every cached document of ``gun``."""
        directory = self._metadata_dir(gun)
        if directory.exists():
            shutil.rmtree(directory)

    def repository_dir(self, gun: str) -> Path:
        """``tuf/<gun>``: the cached metadata and staged changes of one repository."""
        return self.path / "tuf" / _relative(gun, "GUN")

    def _metadata_dir(self, gun: str) -> Path:
        return self.repository_dir(gun) / "metadata"

    def _metadata_path(self, gun: str, role: str) -> Path:
        return self._metadata_dir(gun) / f"{_relative(role, 'role')}.json"


def _canonical_id(key: Key) -> str:
    """``key.canonical_id``; its own id if its certificate is unreadable."""
    try:
        return key.canonical_id
    except FormatError:
        return key.key_id


def _relative(name: str, what: str) -> str:
    """``name`` as a relative path inside the cache; ValueError if it could leave it."""
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts) or any(c in name for c in "\\\0"):
        raise ValueError(f"invalid {what} {name!r}")
    return name


# -- PEM --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PemBlock:
    type: str
    der: bytes
    headers: dict[str, str]

    @property
    def encrypted(self) -> bool:
        return self.type == _ENCRYPTED_PKCS8 or "ENCRYPTED" in self.headers.get("Proc-Type", "")


def _pem_decode(data: bytes) -> _PemBlock:
    """The first PEM block of ``data``, headers included, as Go's ``pem.Decode`` reads it."""
    try:
        lines = [line.strip() for line in data.decode("ascii").splitlines()]
        start = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN "))
        kind = lines[start].removeprefix("-----BEGIN ").removesuffix("-----")
        end = lines.index(f"-----END {kind}-----", start)
        body = lines[start + 1 : end]
        headers: dict[str, str] = {}
        while body and ":" in body[0]:
            name, _, value = body.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        der = base64.b64decode("".join(body), validate=True)
    except (UnicodeDecodeError, StopIteration, ValueError, binascii.Error) as exc:
        raise KeyFileError("not a PEM private key") from exc
    return _PemBlock(kind, der, headers)


def _pem_encode(kind: str, headers: Mapping[str, str], der: bytes) -> bytes:
    """PEM as Go's ``pem.Encode`` writes it: Proc-Type first, other headers sorted."""
    lines = [f"-----BEGIN {kind}-----"]
    names = sorted(headers, key=lambda name: (name != "Proc-Type", name))
    lines += [f"{name}: {headers[name]}" for name in names]
    if headers:
        lines.append("")
    text = base64.b64encode(der).decode("ascii")
    lines += [text[i : i + 64] for i in range(0, len(text), 64)]
    lines.append(f"-----END {kind}-----")
    return ("\n".join(lines) + "\n").encode("ascii")


# -- private key encodings --------------------------------------------------------------------


def _read_private_key(block: _PemBlock, passphrase: str | None) -> PrivateKey:
    """Decode ``block``; WrongPassphrase if encrypted and it does not decrypt."""
    password = passphrase.encode() if passphrase is not None else None
    try:
        if block.type == _PKCS8:
            return _parse_pkcs8(block.der)
        if block.type == _ENCRYPTED_PKCS8:
            if password is None:
                raise WrongPassphrase("the key is encrypted")
            plain = _decrypt_notary_pkcs8(block.der, password)
            if plain is not None:
                return _parse_pkcs8(plain)
            return PrivateKey.from_pkcs8(block.der, password)
        if block.type in _LEGACY_TYPES:
            headers = {
                name: block.headers[name] for name in _LEGACY_HEADERS if name in block.headers
            }
            pem = _pem_encode(block.type, headers, block.der)
            crypto = serialization.load_pem_private_key(pem, password if block.encrypted else None)
            if not isinstance(crypto, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                raise FormatError(f"{block.type} holds a {type(crypto).__name__}")
            return PrivateKey(crypto)
    except (FormatError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"unsupported private key: {exc}") from exc
    except (ValueError, TypeError) as exc:
        if block.encrypted:
            raise WrongPassphrase("the passphrase does not decrypt the key") from exc
        raise KeyFileError(f"unreadable private key: {exc}") from exc
    raise KeyFileError(f"unsupported PEM type {block.type!r}")


def _pkcs8(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 DER; ed25519 in notary's form, which notary requires."""
    crypto = key.crypto_key
    if not isinstance(crypto, ed25519.Ed25519PrivateKey):
        return key.to_pkcs8()
    seed = crypto.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public.public
    return _der(
        _SEQUENCE,
        _der(_INTEGER, b"\x00")
        + _der(_SEQUENCE, _der(_OID, _OID_NOTARY_ED25519))
        + _der(_OCTET_STRING, public + seed + public),
    )


def _parse_pkcs8(der: bytes) -> PrivateKey:
    """A PKCS#8 key: standard (incl. RFC 8410 ed25519) or notary's ed25519 form."""
    ((_, info),) = _der_items(der)
    _, (_, algorithm), (_, body) = _der_items(info)[:3]
    if _der_items(algorithm)[:1] != [(_OID, _OID_NOTARY_ED25519)]:
        # notary writes ECDSA keys as version 1 (RFC 5958) without the public key that version
        # requires, which cryptography refuses: re-encode as version 0 (extras are derivable).
        version_0 = _der(_INTEGER, b"\x00")
        body_der = _der(_SEQUENCE, algorithm) + _der(_OCTET_STRING, body)
        return PrivateKey.from_pkcs8(_der(_SEQUENCE, version_0 + body_der))
    if len(body) != 96:
        raise ValueError("notary ed25519 keys are 96 bytes")
    key = PrivateKey(ed25519.Ed25519PrivateKey.from_private_bytes(body[32:64]))
    if body[:32] != key.public.public or body[64:] != key.public.public:
        raise ValueError("ed25519 public key does not match the seed")
    return key


def _kek(password: bytes, salt: bytes, iterations: int) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA1(), length=32, salt=salt, iterations=iterations)
    return kdf.derive(password)


def _encrypt_pkcs8(plain: bytes, passphrase: str) -> bytes:
    """EncryptedPrivateKeyInfo exactly as notary writes it (PBKDF2-SHA1, AES-256-CBC)."""
    salt, iv = os.urandom(_SALT_BYTES), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    key = _kek(passphrase.encode(), salt, _PBKDF2_ITERATIONS)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    iterations = _PBKDF2_ITERATIONS.to_bytes(2, "big")
    kdf = _der(
        _SEQUENCE,
        _der(_OID, _OID_PBKDF2)
        + _der(_SEQUENCE, _der(_OCTET_STRING, salt) + _der(_INTEGER, iterations)),
    )
    scheme = _der(_SEQUENCE, _der(_OID, _OID_AES256_CBC) + _der(_OCTET_STRING, iv))
    algorithm = _der(_SEQUENCE, _der(_OID, _OID_PBES2) + _der(_SEQUENCE, kdf + scheme))
    return _der(_SEQUENCE, algorithm + _der(_OCTET_STRING, ciphertext))


def _decrypt_notary_pkcs8(der: bytes, password: bytes) -> bytes | None:
    """The plaintext of notary's scheme (PBKDF2 with the default SHA-1 PRF, AES-256-CBC).

    None when ``der`` uses another scheme (``cryptography`` reads those); ValueError when the
    passphrase is wrong (bad padding).
    """
    try:
        ((_, info),) = _der_items(der)
        (_, algorithm), (_, ciphertext) = _der_items(info)
        (_, pbes2), (_, params) = _der_items(algorithm)
        (_, kdf), (_, scheme) = _der_items(params)
        (_, pbkdf2), (_, kdf_params) = _der_items(kdf)
        (_, salt), (_, iterations) = _der_items(kdf_params)
        (_, cipher), (_, iv) = _der_items(scheme)
    except ValueError:
        return None
    if (pbes2, pbkdf2, cipher) != (_OID_PBES2, _OID_PBKDF2, _OID_AES256_CBC) or len(iv) != 16:
        return None
    key = _kek(password, salt, int.from_bytes(iterations, "big"))
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()
