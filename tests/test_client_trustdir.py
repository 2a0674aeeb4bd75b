"""The client's trust directory: key files as notary and docker write them, passphrases, cache.

Interop tests drive the real `notary` and `docker` CLIs offline (no server, no daemon); they are
skipped without the CLIs, or fail when CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.clients import DOCKER_HINT, NOTARY_HINT, describe, require_cli, run_command
from tufnotary.client.rootcert import root_certificate
from tufnotary.client.trustdir import (
    KeyFileError,
    KeyInfo,
    KeyNotFound,
    PassphraseRequired,
    Passphrases,
    TrustDir,
    WrongPassphrase,
)
from tufnotary.metadata.keys import ECDSA_X509, RSA_X509, Key, root_certificate_key
from tufnotary.metadata.signing import PrivateKey, verify_signature

PASSPHRASE = "trustdir-passphrase-0123"
GUN = "example.com/org/app"
ALGORITHMS = ["ecdsa", "ed25519", "rsa"]
ENV_NAMES = [
    "NOTARY_ROOT_PASSPHRASE",
    "NOTARY_TARGETS_PASSPHRASE",
    "NOTARY_SNAPSHOT_PASSPHRASE",
    "NOTARY_DELEGATION_PASSPHRASE",
    "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE",
    "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE",
]
ALL_ENV = dict.fromkeys(ENV_NAMES, PASSPHRASE)
FIXTURES = Path(
    os.environ.get(
        "TUFNOTARY_NOTARY_FIXTURES",
        "/usr/share/gocode/src/github.com/theupdateframework/notary/fixtures/compatibility",
    )
)
HEX64 = re.compile(r"[0-9a-f]{64}")
# The EncryptedPrivateKeyInfo header of a key written by `notary key generate` (observed):
# PBES2 { PBKDF2 { salt: 8 bytes, iterations: 2048, no PRF, so HMAC-SHA1 }, AES-256-CBC { iv } }.
NOTARY_PBES2 = re.compile(
    rb"0\x82?.{1,2}"  # EncryptedPrivateKeyInfo
    rb"0I\x06\t\*\x86H\x86\xf7\r\x01\x05\r0<"  # pbes2
    rb"0\x1b\x06\t\*\x86H\x86\xf7\r\x01\x05\x0c0\x0e\x04\x08(?P<salt>.{8})\x02\x02\x08\x00"
    rb"0\x1d\x06\t`\x86H\x01e\x03\x04\x01\*\x04\x10(?P<iv>.{16})"
    rb"\x04(?:[\x00-\x7f]|\x81.|\x82..)(?P<ciphertext>.*)",
    re.DOTALL,
)
NOTARY_ED25519_PREFIX = bytes.fromhex("3072020100300b06092b06010401da470f010460")


def unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def trust_dir(path: Path, env: dict[str, str] | None = None) -> TrustDir:
    return TrustDir(path, Passphrases(env=ALL_ENV if env is None else env))


def pem_parts(data: bytes) -> tuple[str, list[str], bytes]:
    """(type, header lines, DER) of a single-block PEM."""
    lines = data.decode().splitlines()
    kind = lines[0].removeprefix("-----BEGIN ").removesuffix("-----")
    assert lines[-1] == f"-----END {kind}-----"
    blank = lines.index("") if "" in lines else 0
    return kind, lines[1:blank], base64.b64decode("".join(lines[blank + 1 : -1]))


def decrypt_like_notary(der: bytes, passphrase: str) -> bytes:
    """The PKCS#8 plaintext, decrypted the way notary's pkcs8.go does (checks the layout)."""
    match = NOTARY_PBES2.fullmatch(der)
    assert match, der.hex()
    kdf = PBKDF2HMAC(hashes.SHA1(), length=32, salt=match["salt"], iterations=2048)
    cipher = Cipher(algorithms.AES(kdf.derive(passphrase.encode())), modes.CBC(match["iv"]))
    decryptor = cipher.decryptor()
    padded = decryptor.update(match["ciphertext"]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def same_key(a: PrivateKey, b: PrivateKey) -> bool:
    signature = a.sign(b"message")
    return a.public == b.public and verify_signature(b.public, signature, b"message")


# -- passphrases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "env", "expected"),
    [
        ("root", {"NOTARY_ROOT_PASSPHRASE": "n", "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE": "d"}, "n"),
        ("root", {"DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE": "d"}, "d"),
        ("root", {"NOTARY_ROOT_PASSPHRASE": "", "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE": "d"}, "d"),
        ("targets", {"NOTARY_TARGETS_PASSPHRASE": "t", "NOTARY_SNAPSHOT_PASSPHRASE": "s"}, "t"),
        ("targets", {"DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE": "r"}, "r"),
        ("snapshot", {"NOTARY_SNAPSHOT_PASSPHRASE": "s"}, "s"),
        ("snapshot", {"DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE": "r"}, "r"),
        ("timestamp", {"DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE": "r"}, "r"),
        ("targets/releases", {"NOTARY_DELEGATION_PASSPHRASE": "g"}, "g"),
        ("targets/releases", {"DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE": "r"}, "r"),
        ("alice", {"DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE": "r"}, "r"),  # docker signers
    ],
)
def test_passphrase_from_environment(role: str, env: dict[str, str], expected: str) -> None:
    assert Passphrases(env=env).get(role, GUN, creating=False) == expected


@pytest.mark.parametrize(
    ("role", "env", "variables"),
    [
        ("root", {"NOTARY_TARGETS_PASSPHRASE": "t"}, ["NOTARY_ROOT_PASSPHRASE"]),
        ("targets", {"NOTARY_ROOT_PASSPHRASE": "r"}, ["NOTARY_TARGETS_PASSPHRASE"]),
        ("snapshot", {"NOTARY_TARGETS_PASSPHRASE": "t"}, ["NOTARY_SNAPSHOT_PASSPHRASE"]),
        ("targets/x", {"NOTARY_TARGETS_PASSPHRASE": "t"}, ["NOTARY_DELEGATION_PASSPHRASE"]),
        ("timestamp", {"NOTARY_TARGETS_PASSPHRASE": "t"}, ["_REPOSITORY_PASSPHRASE"]),
        ("root", {"DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE": ""}, ["DOCKER_CONTENT_TRUST_ROOT_"]),
    ],
)
def test_missing_passphrase_names_the_variables(
    role: str, env: dict[str, str], variables: list[str]
) -> None:
    with pytest.raises(PassphraseRequired) as error:
        Passphrases(env=env).get(role, None, creating=True)
    assert error.value.role == role
    for variable in variables:
        assert variable in str(error.value)


def test_environment_comes_first_then_the_prompt() -> None:
    """As in notary and docker: the env variable wins; the prompt covers the rest and retries."""
    calls: list[tuple[str, str | None, bool]] = []

    def prompt(role: str, gun: str | None, creating: bool) -> str:
        calls.append((role, gun, creating))
        return "typed"

    passphrases = Passphrases(env={"NOTARY_ROOT_PASSPHRASE": "from-env"}, prompt=prompt)
    assert passphrases.get("root", None, creating=False) == "from-env"
    assert passphrases.get("root", None, creating=False, attempt=1) == "typed"
    assert passphrases.get("targets", GUN, creating=True) == "typed"
    assert calls == [("root", None, False), ("targets", GUN, True)]
    with pytest.raises(PassphraseRequired):
        Passphrases(env={}, prompt=lambda role, gun, creating: "").get("root", None, creating=True)


def test_default_environment_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTARY_TARGETS_PASSPHRASE", "from-os")
    assert Passphrases().get("targets", GUN, creating=False) == "from-os"


# -- key files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_key_round_trip(tmp_path: Path, algorithm: str) -> None:
    key = trust_dir(tmp_path).generate_key("targets", GUN, algorithm)
    path = tmp_path / "private" / f"{key.public.key_id}.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700

    fresh = trust_dir(tmp_path)
    assert fresh.list_keys() == [KeyInfo(key.public.key_id, "targets", GUN, path)]
    loaded = fresh.load_key(key.public.key_id)
    assert loaded.algorithm == algorithm
    assert same_key(loaded, key)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_key_file_is_notary_pkcs8(tmp_path: Path, algorithm: str) -> None:
    key = trust_dir(tmp_path).generate_key("targets", GUN, algorithm)
    data = (tmp_path / "private" / f"{key.public.key_id}.key").read_bytes()
    kind, headers, der = pem_parts(data)
    assert kind == "ENCRYPTED PRIVATE KEY"
    assert headers == [f"gun: {GUN}", "role: targets"]  # Go's pem.Encode sorts headers
    assert all(len(line) <= 64 for line in data.decode().splitlines()[4:-1])

    plain = decrypt_like_notary(der, PASSPHRASE)
    if algorithm == "ed25519":
        seed = key.crypto_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = key.public.public
        assert plain == NOTARY_ED25519_PREFIX + public + seed + public
        # cryptography decrypts it too, then does not know notary's ed25519 OID
        with pytest.raises(UnsupportedAlgorithm, match="11591"):
            serialization.load_der_private_key(der, PASSPHRASE.encode())
    else:
        assert PrivateKey.from_pkcs8(plain).public == key.public
        assert PrivateKey.from_pkcs8(der, PASSPHRASE.encode()).public == key.public


@pytest.mark.parametrize(
    ("role", "gun", "headers"),
    [
        ("root", GUN, ["role: root"]),
        ("targets", GUN, [f"gun: {GUN}", "role: targets"]),
        ("snapshot", GUN, [f"gun: {GUN}", "role: snapshot"]),
        ("timestamp", GUN, [f"gun: {GUN}", "role: timestamp"]),
        ("targets", None, ["role: targets"]),
        ("targets/releases", GUN, ["role: targets/releases"]),
        ("alice", GUN, ["role: alice"]),
    ],
)
def test_key_headers_follow_notary(
    tmp_path: Path, role: str, gun: str | None, headers: list[str]
) -> None:
    store = trust_dir(tmp_path)
    key_id = store.add_key(PrivateKey.generate(), role, gun)
    data = (tmp_path / "private" / f"{key_id}.key").read_bytes()
    assert pem_parts(data)[1] == headers
    [info] = store.list_keys()
    assert (info.role, info.gun) == (role, gun if len(headers) == 2 else None)


def test_wrong_or_missing_passphrase(tmp_path: Path) -> None:
    key = trust_dir(tmp_path).generate_key("root")
    key_id = key.public.key_id
    with pytest.raises(WrongPassphrase, match=key_id):
        trust_dir(tmp_path, {"NOTARY_ROOT_PASSPHRASE": "not it"}).load_key(key_id)
    with pytest.raises(PassphraseRequired, match="NOTARY_ROOT_PASSPHRASE"):
        trust_dir(tmp_path, {"NOTARY_TARGETS_PASSPHRASE": PASSPHRASE}).load_key(key_id)
    with pytest.raises(PassphraseRequired):
        trust_dir(tmp_path / "other", {}).generate_key("root")
    assert not (tmp_path / "other" / "private").exists()


def test_prompt_is_asked_again_after_a_wrong_passphrase(tmp_path: Path) -> None:
    key_id = trust_dir(tmp_path).generate_key("targets", GUN).public.key_id
    answers: list[str] = []

    def prompt(role: str, gun: str | None, creating: bool) -> str:
        assert (role, gun, creating) == ("targets", GUN, False)
        answers.append("wrong")
        return "wrong"

    with pytest.raises(WrongPassphrase):
        TrustDir(tmp_path, Passphrases(prompt=prompt)).load_key(key_id)
    assert len(answers) == 4  # asked once, then 3 more times

    replies = iter(["wrong", "again wrong", PASSPHRASE])
    store = TrustDir(tmp_path, Passphrases(prompt=lambda role, gun, creating: next(replies)))
    assert store.load_key(key_id).public.key_id == key_id
    assert store.load_key(key_id).public.key_id == key_id  # decrypted once, not asked again


def test_missing_keys_and_removal(tmp_path: Path) -> None:
    store = trust_dir(tmp_path)
    with pytest.raises(KeyNotFound):
        store.load_key("0" * 64)
    with pytest.raises(KeyNotFound):
        store.export_key("0" * 64)
    with pytest.raises(KeyNotFound):
        store.remove_key("0" * 64)
    keep, drop = store.generate_key("root"), store.generate_key("targets", GUN)
    store.remove_key(drop.public.key_id)
    assert not (tmp_path / "private" / f"{drop.public.key_id}.key").exists()
    assert [info.key_id for info in store.list_keys()] == [keep.public.key_id]
    with pytest.raises(KeyNotFound):
        store.load_key(drop.public.key_id)
    with pytest.raises(KeyNotFound):
        trust_dir(tmp_path).load_key(drop.public.key_id)


def test_key_refusals(tmp_path: Path) -> None:
    store = trust_dir(tmp_path)
    with pytest.raises(ValueError, match="2048"):
        store.add_key(PrivateKey(rsa.generate_private_key(65537, 1024)), "targets", GUN)
    with pytest.raises(ValueError, match="unsupported"):
        store.generate_key("targets", GUN, "dsa")
    with pytest.raises(ValueError, match="invalid role"):
        store.generate_key("targets\nrole: root", GUN)
    with pytest.raises(ValueError, match="invalid role"):
        store.generate_key("targets", "gun\n")
    assert store.list_keys() == []


def test_file_named_for_another_key_is_refused(tmp_path: Path) -> None:
    store = trust_dir(tmp_path)
    key = store.generate_key("targets", GUN)
    wrong_id = "ab" * 32
    shutil.copy(
        tmp_path / "private" / f"{key.public.key_id}.key", tmp_path / "private" / f"{wrong_id}.key"
    )
    with pytest.raises(KeyFileError, match=key.public.key_id):
        trust_dir(tmp_path).load_key(wrong_id)


def test_unencrypted_and_legacy_layouts(tmp_path: Path) -> None:
    """notary stores keys unencrypted for an empty passphrase; notary < 0.4 used subfolders."""
    plain = PrivateKey.generate()
    body = base64.encodebytes(plain.to_pkcs8()).decode()
    private = tmp_path / "private"
    private.mkdir()
    (private / f"{plain.public.key_id}.key").write_text(
        f"-----BEGIN PRIVATE KEY-----\nrole: snapshot\ngun: {GUN}\n\n{body}"
        "-----END PRIVATE KEY-----\n"
    )
    legacy = PrivateKey(ec.generate_private_key(ec.SECP256R1()))
    legacy_pem = legacy.crypto_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"legacy-pass"),
    )
    folder = private / "tuf_keys" / GUN
    folder.mkdir(parents=True)
    legacy_path = folder / f"{legacy.public.key_id}_targets.key"
    legacy_path.write_bytes(legacy_pem)

    store = trust_dir(tmp_path, {"NOTARY_TARGETS_PASSPHRASE": "legacy-pass"})
    assert sorted(store.list_keys(), key=lambda info: info.role) == [
        KeyInfo(plain.public.key_id, "snapshot", GUN, private / f"{plain.public.key_id}.key"),
        KeyInfo(legacy.public.key_id, "targets", GUN, legacy_path),
    ]
    assert same_key(store.load_key(plain.public.key_id), plain)
    assert same_key(store.load_key(legacy.public.key_id), legacy)
    exported = store.export_key(legacy.public.key_id).decode()
    assert f"gun: {GUN}\npath: {legacy.public.key_id}\nrole: targets\n" in exported
    store.remove_key(legacy.public.key_id)
    assert not legacy_path.exists()


def _ecdsa() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


IMPORTS = {
    "pkcs8": (_ecdsa, serialization.PrivateFormat.PKCS8, False),
    "pkcs8-encrypted": (_ecdsa, serialization.PrivateFormat.PKCS8, True),
    "sec1": (_ecdsa, serialization.PrivateFormat.TraditionalOpenSSL, False),
    "sec1-encrypted": (_ecdsa, serialization.PrivateFormat.TraditionalOpenSSL, True),
    "pkcs1-rsa": (
        lambda: rsa.generate_private_key(65537, 2048),
        serialization.PrivateFormat.TraditionalOpenSSL,
        False,
    ),
    "pkcs1-rsa-encrypted": (
        lambda: rsa.generate_private_key(65537, 2048),
        serialization.PrivateFormat.TraditionalOpenSSL,
        True,
    ),
    "ed25519-rfc8410": (
        ed25519.Ed25519PrivateKey.generate,
        serialization.PrivateFormat.PKCS8,
        False,
    ),
    "ed25519-rfc8410-encrypted": (
        ed25519.Ed25519PrivateKey.generate,
        serialization.PrivateFormat.PKCS8,
        True,
    ),
}


@pytest.mark.parametrize("form", sorted(IMPORTS))
def test_import_openssl_forms(tmp_path: Path, form: str) -> None:
    make, private_format, encrypted = IMPORTS[form]
    key = PrivateKey(make())
    encryption = (
        serialization.BestAvailableEncryption(b"import-pass")
        if encrypted
        else serialization.NoEncryption()
    )
    pem = key.crypto_key.private_bytes(serialization.Encoding.PEM, private_format, encryption)

    store = trust_dir(tmp_path)
    if encrypted:
        with pytest.raises(WrongPassphrase):
            store.import_key(pem, "targets", GUN, passphrase_in="not it")
    assert store.import_key(pem, "targets", GUN, passphrase_in="import-pass") == key.public.key_id
    assert same_key(trust_dir(tmp_path).load_key(key.public.key_id), key)
    _, headers, der = pem_parts((tmp_path / "private" / f"{key.public.key_id}.key").read_bytes())
    assert headers == [f"gun: {GUN}", "role: targets"]
    decrypt_like_notary(der, PASSPHRASE)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_export_then_import(tmp_path: Path, algorithm: str) -> None:
    source = trust_dir(tmp_path / "a")
    key = source.generate_key("snapshot", GUN, algorithm)
    exported = source.export_key(key.public.key_id)
    assert pem_parts(exported)[1] == [
        f"gun: {GUN}",
        f"path: {key.public.key_id}",
        "role: snapshot",
    ]
    target = trust_dir(tmp_path / "b", {"NOTARY_SNAPSHOT_PASSPHRASE": "new-pass"})
    # role and gun from the headers; the exported key is opened with passphrase_in
    assert target.import_key(exported, passphrase_in=PASSPHRASE) == key.public.key_id
    info = target.list_keys()[0]
    assert (info.role, info.gun) == ("snapshot", GUN)
    reloaded = trust_dir(tmp_path / "b", {"NOTARY_SNAPSHOT_PASSPHRASE": "new-pass"})
    assert same_key(reloaded.load_key(key.public.key_id), key)
    with pytest.raises(ValueError, match="no role"):
        target.import_key(
            PrivateKey.generate().crypto_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with pytest.raises(KeyFileError):
        target.import_key(b"not a pem", "targets", GUN)


# -- root certificates and canonical ids --------------------------------------------------------


def test_root_certificate_like_the_go_client() -> None:
    key = PrivateKey.generate()
    before = datetime.now(UTC).replace(microsecond=0)
    cert_key = root_certificate(key, GUN)
    after = datetime.now(UTC)
    assert cert_key.keytype == ECDSA_X509
    assert cert_key.canonical_id == key.public.key_id != cert_key.key_id
    [cert] = cert_key.certificates()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GUN)])
    assert cert.subject == cert.issuer == name
    assert 0 < cert.serial_number < 2**128
    assert before <= cert.not_valid_before_utc <= after
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3650)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(cert)
    extensions = {ext.oid: ext for ext in cert.extensions}
    assert len(extensions) == 3
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not (usage.value.key_cert_sign or usage.value.content_commitment)
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not extended.critical and list(extended.value) == [ExtendedKeyUsageOID.CODE_SIGNING]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert root_certificate_key(cert_key, GUN, datetime.now(UTC)) == cert_key


def test_root_certificate_for_rsa_and_ed25519() -> None:
    rsa_key = PrivateKey(rsa.generate_private_key(65537, 2048))
    cert_key = root_certificate(rsa_key, GUN)
    assert cert_key.keytype == RSA_X509
    assert cert_key.canonical_id == rsa_key.public.key_id
    with pytest.raises(ValueError, match="ecdsa or rsa"):
        root_certificate(PrivateKey.generate("ed25519"), GUN)


def test_find_keys_by_certificate_id(tmp_path: Path) -> None:
    store = trust_dir(tmp_path)
    root = store.generate_key("root")
    targets = store.generate_key("targets", GUN, "ed25519")
    cert_key = root_certificate(root, GUN)
    keys = {cert_key.key_id: cert_key, targets.public.key_id: targets.public}
    wanted = [cert_key.key_id, targets.public.key_id, "f" * 64]

    found = trust_dir(tmp_path).find_keys(wanted, keys)
    assert set(found) == {cert_key.key_id, targets.public.key_id}
    assert same_key(found[cert_key.key_id], root)
    assert same_key(found[targets.public.key_id], targets)
    assert trust_dir(tmp_path).find_keys([cert_key.key_id]) == {}  # without the key map
    broken = Key(ECDSA_X509, b"not a certificate")
    assert trust_dir(tmp_path).find_keys([broken.key_id], {broken.key_id: broken}) == {}


# -- metadata cache -----------------------------------------------------------------------------


def test_metadata_cache(tmp_path: Path) -> None:
    store = TrustDir(tmp_path)
    assert store.read_metadata(GUN, "root") is None
    store.write_metadata(GUN, "root", b'{"v": 1}')
    store.write_metadata(GUN, "root", b'{"v": 2}')
    store.write_metadata(GUN, "targets/releases", b"{}")
    store.write_metadata("localhost:5000/other", "root", b"other")
    metadata = tmp_path / "tuf" / GUN / "metadata"
    assert (metadata / "root.json").read_bytes() == b'{"v": 2}'
    assert (metadata / "targets" / "releases.json").read_bytes() == b"{}"
    assert sorted(p.name for p in metadata.iterdir()) == ["root.json", "targets"]  # no temp files
    assert store.read_metadata(GUN, "root") == b'{"v": 2}'
    assert store.read_metadata(GUN, "targets/releases") == b"{}"

    store.clear_metadata(GUN)
    assert not metadata.exists()
    assert store.read_metadata(GUN, "root") is None
    assert store.read_metadata("localhost:5000/other", "root") == b"other"
    store.clear_metadata(GUN)  # nothing cached: no error


@pytest.mark.parametrize(
    ("gun", "role"),
    [
        ("../escape", "root"),
        ("/etc", "root"),
        ("a/../../b", "root"),
        ("a//b", "root"),
        ("", "root"),
        (".", "root"),
        (GUN, "../../../private/x"),
        (GUN, "/etc/passwd"),
        (GUN, "targets/../../x"),
        (GUN, "targets/"),
        (GUN, "a\\b"),
    ],
)
def test_metadata_paths_cannot_escape(tmp_path: Path, gun: str, role: str) -> None:
    store = TrustDir(tmp_path / "trust")
    with pytest.raises(ValueError):
        store.write_metadata(gun, role, b"{}")
    with pytest.raises(ValueError):
        store.read_metadata(gun, role)
    if role == "root":
        with pytest.raises(ValueError):
            store.clear_metadata(gun)
    assert not (tmp_path / "trust").exists()


# -- notary's compatibility fixtures (keys of notary 0.1 and 0.3) -------------------------------


# notary0.3's README says "randompass", but its keys (and notary's own test) use "password".
FIXTURE_KEYS = {
    "notary0.1": (
        "randompass",
        "docker.com/notary0.1/samplerepo",
        {
            "d0c623c8e70c70d42a8a8125c44a8598588b3f6e31d5c21a83cbc338dfde8a68": "root",
            "7fc757801b9bab4ec9e35bfe7a6b61668ff6f4c81b5632af19e6c728ab799599": "targets",
            "a55ccf652b0be4b6c4d356cbb02d9ea432bb84a2571665be3df7c7396af8e8b8": "snapshot",
        },
    ),
    "notary0.3": (
        "password",
        "docker.com/notary0.3/tst",
        {
            "f4eaf871a74aa3b3a0ff95cef2455a1e4d461639f5625418e76756fc5c948690": "root",
            "fa842f66cac2dc898677a8660789dcff0e3b0b93b73f8952491f6493199936d3": "targets/releases",
            "041b64dab281324ef2b62fd2d04f4758269e120ff063b7bc78709272821a0a02": "targets",
            "85559599cf3cf681ff193f432a7ca6d128182bd1cfa8ede2c70761deac8bc2dc": "snapshot",
        },
    ),
}


@pytest.mark.parametrize("fixture", sorted(FIXTURE_KEYS))
def test_notary_fixture_keys(tmp_path: Path, fixture: str) -> None:
    if not (FIXTURES / fixture).is_dir():
        unavailable(
            f"{FIXTURES} missing: install the Debian package golang-github-docker-notary-dev"
        )
    shutil.copytree(FIXTURES / fixture, tmp_path / fixture)
    passphrase, gun, roles = FIXTURE_KEYS[fixture]
    store = TrustDir(tmp_path / fixture, Passphrases(env=dict.fromkeys(ENV_NAMES, passphrase)))

    listed = {info.key_id: (info.role, info.gun) for info in store.list_keys()}
    assert listed == {
        key_id: (role, gun if role in ("targets", "snapshot") else None)
        for key_id, role in roles.items()
    }
    for key_id in roles:
        assert store.load_key(key_id).public.key_id == key_id

    root = json.loads((tmp_path / fixture / "tuf" / gun / "metadata" / "root.json").read_bytes())
    keys = {key_id: Key.from_dict(key) for key_id, key in root["signed"]["keys"].items()}
    [root_id] = root["signed"]["roles"]["root"]["keyids"]
    assert root_id not in roles  # root.json names the certificate, the file the bare key
    found = store.find_keys([root_id], keys)
    assert found[root_id].public.key_id == keys[root_id].canonical_id
    assert roles[keys[root_id].canonical_id] == "root"


# -- interop with the real notary and docker CLIs -----------------------------------------------


def cli_env(home: Path, passphrase: str = PASSPHRASE, **extra: str) -> dict[str, str]:
    """The inherited environment without NOTARY_* / DOCKER_*, HOME in the test directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTARY_", "DOCKER_"))}
    home.mkdir(parents=True, exist_ok=True)
    return env | dict.fromkeys(ENV_NAMES, passphrase) | {"HOME": str(home)} | extra


Notary = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def notary(tmp_path: Path) -> Notary:
    """Runs `notary -d TRUST_DIR ARGS...` offline with every passphrase variable set."""
    binary = require_cli("notary", NOTARY_HINT)

    def run(
        trust: Path, *args: str, passphrase: str = PASSPHRASE, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = cli_env(tmp_path / "home", passphrase)
        return run_command([binary, "-d", str(trust), *args], env, check=check)

    return run


def notary_key_list(notary: Notary, trust: Path) -> dict[str, tuple[str, str | None]]:
    """`notary key list` as {key id: (role, gun or None)}."""
    result = notary(trust, "key", "list")
    rows = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        ids = [i for i, field in enumerate(fields) if HEX64.fullmatch(field)]
        if ids:
            rows[fields[ids[0]]] = (fields[0], fields[1] if ids[0] == 2 else None)
    return rows


def test_notary_generated_keys_load(tmp_path: Path, notary: Notary) -> None:
    trust = tmp_path / "notary"
    for role in ("root", "snapshot", "targets/releases"):
        result = notary(trust, "key", "generate", "ecdsa", "--role", role)
        assert re.search(
            rf"new ecdsa {re.escape(role)} key with keyID: [0-9a-f]{{64}}", result.stdout
        )
    listed = notary_key_list(notary, trust)
    assert sorted(role for role, _ in listed.values()) == ["root", "snapshot", "targets/releases"]

    store = trust_dir(trust)
    assert {info.key_id: (info.role, info.gun) for info in store.list_keys()} == listed
    for key_id in listed:
        assert store.load_key(key_id).public.key_id == key_id
    with pytest.raises(WrongPassphrase):
        trust_dir(trust, dict.fromkeys(ENV_NAMES, "not it")).find_keys(listed)

    # `notary key export` output imports into our trust dir
    [snapshot_id] = [key_id for key_id, (role, _) in listed.items() if role == "snapshot"]
    exported = notary(trust, "key", "export", "--key", snapshot_id).stdout.encode()
    ours = trust_dir(tmp_path / "ours")
    assert ours.import_key(exported, gun=GUN) == snapshot_id
    assert [(info.role, info.gun) for info in ours.list_keys()] == [("snapshot", GUN)]


def test_our_keys_work_with_notary(tmp_path: Path, notary: Notary) -> None:
    """notary lists our keys by role and gun, and decrypts them (`key passwd` re-encrypts)."""
    trust = tmp_path / "trust"
    store = trust_dir(trust)
    expected = {}
    keys = {}
    for algorithm in ALGORITHMS:
        for role, gun in (("root", None), ("targets", GUN), ("targets/releases", None)):
            key = store.generate_key(role, gun, algorithm)
            keys[key.public.key_id] = key
            expected[key.public.key_id] = (role, gun)
    assert notary_key_list(notary, trust) == expected

    for key_id in expected:
        path = trust / "private" / f"{key_id}.key"
        before = path.read_bytes()
        failed = notary(trust, "key", "passwd", key_id, passphrase="not it", check=False)
        assert failed.returncode != 0, describe(failed)
        assert path.read_bytes() == before
        notary(trust, "key", "passwd", key_id)  # decrypts, then writes notary's own encoding
        assert path.read_bytes() != before
    assert notary_key_list(notary, trust) == expected

    fresh = trust_dir(trust)
    for key_id, key in keys.items():
        assert same_key(fresh.load_key(key_id), key)


def test_our_exports_import_into_notary(tmp_path: Path, notary: Notary) -> None:
    store = trust_dir(tmp_path / "ours")
    expected = {}
    for algorithm, role, gun in (("ed25519", "targets", GUN), ("rsa", "targets/releases", None)):
        key = store.generate_key(role, gun, algorithm)
        expected[key.public.key_id] = (role, gun)
        exported = tmp_path / f"{key.public.key_id}.pem"
        exported.write_bytes(store.export_key(key.public.key_id))
        notary(tmp_path / "notary", "key", "import", str(exported))
    assert notary_key_list(notary, tmp_path / "notary") == expected
    for key_id in expected:
        notary(tmp_path / "notary", "key", "passwd", key_id)


@pytest.fixture
def docker(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs `docker ARGS...` with DOCKER_CONFIG in the test directory and no daemon."""
    binary = require_cli("docker", DOCKER_HINT)
    home = tmp_path / "docker-home"

    def run(
        *args: str, passphrase: str = PASSPHRASE, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = cli_env(
            home,
            passphrase,
            DOCKER_CONFIG=str(home / ".docker"),
            DOCKER_HOST=f"unix://{home / 'no-daemon.sock'}",
            DOCKER_CLI_HINTS="false",
        )
        return run_command([binary, *args], env, check=check)

    return run


def test_docker_generated_key_loads(tmp_path: Path, docker: Callable[..., object]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    docker("trust", "key", "generate", "alice", "--dir", str(out))
    trust = tmp_path / "docker-home" / ".docker" / "trust"
    env = {"DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE": PASSPHRASE}
    [info] = trust_dir(trust, env).list_keys()
    assert (info.role, info.gun) == ("alice", None)
    key = trust_dir(trust, env).load_key(info.key_id)
    public = serialization.load_pem_public_key((out / "alice.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert key.public == Key.from_public_key(public)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_docker_decrypts_our_keys(
    tmp_path: Path, docker: Callable[..., subprocess.CompletedProcess[str]], algorithm: str
) -> None:
    """`docker trust key load` decrypts a key file without a `path` header to import it.

    (docker then stores nothing for such files, a docker bug; the passphrase check is the proof.)
    """
    key_id = trust_dir(tmp_path / "ours").generate_key("bob", None, algorithm).public.key_id
    key_file = tmp_path / "bob.pem"
    shutil.copy(tmp_path / "ours" / "private" / f"{key_id}.key", key_file)
    key_file.chmod(0o600)
    failed = docker(
        "trust", "key", "load", str(key_file), "--name", "bob", passphrase="not it", check=False
    )
    assert "could not decrypt key" in failed.stdout + failed.stderr, describe(failed)
    loaded = docker("trust", "key", "load", str(key_file), "--name", "bob")
    assert "Successfully imported" in loaded.stdout, describe(loaded)
