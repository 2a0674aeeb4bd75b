"""The metadata core against the reference's compatibility fixtures and the spec's rules."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.repo import root_certificate, signed_bytes
from tufnotary.metadata.canonical import (
    JSONFormatError,
    NumberFormatError,
    TooManyValuesError,
    check_value_count,
    encode_canonical,
    encode_wire,
    html_safe,
    loads,
)
from tufnotary.metadata.errors import (
    ExpiredError,
    FormatError,
    HashMismatchError,
    KeyIdMismatchError,
    RootError,
    SignatureCountError,
    ThresholdError,
    UnsignedError,
)
from tufnotary.metadata.keys import Key, key_id_of
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    Envelope,
    FileMeta,
    Metadata,
    RoleKeys,
    Root,
    Targets,
    is_delegation_name,
    parse_expires,
    restrict_paths,
    signed_type,
)
from tufnotary.metadata.signing import PrivateKey, Signature, verify_signature
from tufnotary.metadata.verify import (
    NO_VALID_LEAF,
    ROTATION_FAILED,
    check_signature_count,
    verify_root,
    verify_threshold,
)

FIXTURES = Path(
    os.environ.get(
        "TUFNOTARY_NOTARY_FIXTURES",
        "/usr/share/gocode/src/github.com/theupdateframework/notary/fixtures/compatibility",
    )
)
FIXTURE_REPOS = {
    "docker.com/notary0.1/samplerepo": "notary0.1/tuf/docker.com/notary0.1/samplerepo/metadata",
    "docker.com/notary0.3/tst": "notary0.3/tuf/docker.com/notary0.3/tst/metadata",
}
# The fixtures' root certificates were valid from 2016 to 2026.
FIXTURE_TIME = datetime(2020, 1, 1, tzinfo=UTC)


def _fixture_files(gun: str) -> dict[str, bytes]:
    folder = FIXTURES / FIXTURE_REPOS[gun]
    if not folder.is_dir():
        message = f"{folder} missing: install the Debian package golang-github-docker-notary-dev"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return {
        str(path.relative_to(folder))[: -len(".json")]: path.read_bytes()
        for path in sorted(folder.rglob("*.json"))
    }


@pytest.mark.parametrize("gun", sorted(FIXTURE_REPOS))
def test_fixtures_reencode_byte_exact_and_verify(gun: str) -> None:
    files = _fixture_files(gun)
    parsed = {role: Metadata.from_bytes(data, signed_type(role)) for role, data in files.items()}
    assert {TARGETS, SNAPSHOT, TIMESTAMP, ROOT} <= set(files)
    for role, data in files.items():
        assert parsed[role].to_bytes() == data, role
    root = parsed[ROOT]
    for keyid, key in root.signed.keys.items():
        assert key.key_id == keyid
    verify_root(root, gun, allow_expired=True, now=FIXTURE_TIME)
    for role in (TARGETS, SNAPSHOT, TIMESTAMP):
        threshold = root.signed.roles[role].threshold
        signers = verify_threshold(parsed[role], root.signed.role_keys(role), threshold, role)
        assert signers == set(root.signed.roles[role].keyids)
    snapshot = parsed[SNAPSHOT].signed
    for role in files.keys() - {SNAPSHOT, TIMESTAMP}:
        snapshot.meta[role].verify(files[role], role)
    parsed[TIMESTAMP].signed.meta[SNAPSHOT].verify(files[SNAPSHOT], SNAPSHOT)
    if "targets/releases" in files:
        delegation = parsed[TARGETS].signed.delegations.role("targets/releases")
        assert delegation is not None
        keys = parsed[TARGETS].signed.delegations.role_keys(delegation)
        verify_threshold(parsed["targets/releases"], keys, delegation.threshold, "targets/releases")


def test_fixture_root_certificate_expiry_is_enforced() -> None:
    gun = "docker.com/notary0.3/tst"
    root = Metadata.from_bytes(_fixture_files(gun)[ROOT], Root)
    with pytest.raises(RootError, match="unable to retrieve valid leaf"):
        verify_root(root, gun, allow_expired=True, now=datetime(2027, 1, 1, tzinfo=UTC))
    with pytest.raises(RootError, match="unable to retrieve valid leaf"):
        verify_root(root, "docker.com/other", allow_expired=True, now=FIXTURE_TIME)


# -- canonical JSON ---------------------------------------------------------------------------


def test_backspace_and_form_feed_escapes_next_to_backslashes() -> None:
    value = {"k": "\\b\b\\\f\\\\f"}
    assert encode_canonical(value) == b'{"k":"\\\\b\\u0008\\\\\\u000c\\\\\\\\f"}'


def test_canonical_encoding_follows_go() -> None:
    value = {"b": [1, True, None], "a": 'x\b\f\x01\n\t"\\/<>&é☃\u2028'}
    assert (
        encode_canonical(value)
        == ('{"a":"x\\u0008\\u000c\\u0001\\n\\t\\"\\\\/<>&é☃\u2028","b":[1,true,null]}').encode()
    )
    wire = encode_wire({"n": "a<b>&c é"}, [{"keyid": "k", "method": "ecdsa", "sig": "c2ln"}])
    assert wire == (
        b'{"signed":{"n":"a\\u003cb\\u003e\\u0026c \xc3\xa9"},'
        b'"signatures":[{"keyid":"k","method":"ecdsa","sig":"c2ln"}]}'
    )


def test_html_safe_escapes_what_go_escapes() -> None:
    text = "<a>&\u2028\u2029 \u2020\u2027\u202a\u3028 é"  # others with the same lead byte stay
    assert html_safe(text.encode()) == (
        b"\\u003ca\\u003e\\u0026\\u2028\\u2029 " + "\u2020\u2027\u202a\u3028 é".encode()
    )
    assert html_safe(b"plain") == b"plain"


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (b'{"a":{"b":1.5}}', "signed.a.b"),
        (b'{"a":[9007199254740993]}', "signed.a[0]"),
        (b'{"a":1.0}', "signed.a"),
        (b'{"a":1e400}', "signed.a"),
        (b'{"a":-' + b"9" * 5000 + b"}", "signed.a"),
    ],
)
def test_non_canonical_numbers_are_refused_with_their_path(document: bytes, path: str) -> None:
    parsed = loads(document)  # parsing keeps them; encoding for signing refuses them
    with pytest.raises(NumberFormatError) as info:
        encode_canonical(parsed)
    assert info.value.path == path
    assert encode_canonical(loads(b'{"n":9007199254740992,"m":-5}')) == (
        b'{"m":-5,"n":9007199254740992}'
    )


@pytest.mark.parametrize(
    "data", [b'{"a":1,"a":2}', b"{", b'{"a":NaN}', b'{"a":1} x', b"\xff", b'{"a":1}{}']
)
def test_strict_json_parsing(data: bytes) -> None:
    with pytest.raises(JSONFormatError):
        loads(data)


def test_parsing_allows_surrounding_whitespace() -> None:
    assert loads(b' {"a":[1]}\n') == {"a": [1]}


_SIG = b'"signatures":[{"keyid":"k","method":"ecdsa","sig":"c2ln"}]'


@pytest.mark.parametrize(
    "member",
    [
        b'{"_type":"Targets","version":2}',  # wire form: the one-pass path
        b'{"_type":"Targets","n":"a\\u003cb","version":2}',
        b'{"version":2,"_type":"Targets"}',  # not canonical: the strict path, same result
        b'{"_type":"Targets", "version":2}',
        b'{"_type":"Targets","n":"\\u00e9\\b","version":2}',
        b'{"_type":"Targets","version":2,"version":2}',  # duplicates: refused
        b'{"_type":"Targets","a":{"b":1,"b":1},"version":2}',
        b'{"_type":"Targets","version":2.0}',  # numbers without a canonical form: refused
        b'{"_type":"Targets","n":9007199254740993,"version":2}',
        b'{"_type":"Targets","n":NaN,"version":2}',
        b'{"_type":"Targets","n":"\\ud800","version":2}',  # lone surrogate: refused
        b'{"_type":"Targets","n":' + b"[" * 100_000 + b"]" * 100_000 + b',"version":2}',
        b"[]",
    ],
)
@pytest.mark.parametrize("tail", [b"," + _SIG + b"}", b"," + _SIG + b',"signatures":[]}'])
def test_envelope_parsing_matches_the_strict_parser(member: bytes, tail: bytes) -> None:
    """Wire-form documents are parsed in one pass; any document gets the strict path's answer."""
    data = b'{"signed":' + member + tail
    try:
        signed = loads(data)["signed"]
        if not isinstance(signed, dict):
            raise FormatError("document must be an object with a signed object")
        expected: object = (signed, encode_canonical(signed))
    except FormatError as exc:
        expected = (type(exc), str(exc))
    try:
        envelope = Envelope.from_bytes(data)
        outcome: object = (envelope.signed_dict, envelope.signing_bytes)
    except FormatError as exc:
        outcome = (type(exc), str(exc))
    assert outcome == expected


# -- keys and signatures ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519", "rsa"])
def test_sign_and_verify(algorithm: str) -> None:
    key = PrivateKey.generate(algorithm)
    signature = key.sign(b"message")
    assert signature.method == {"ecdsa": "ecdsa", "ed25519": "eddsa", "rsa": "rsapss"}[algorithm]
    assert verify_signature(key.public, signature, b"message")
    assert not verify_signature(key.public, signature, b"other")
    assert not verify_signature(
        key.public, Signature(signature.keyid, "bogus", signature.value), b"message"
    )
    if algorithm == "ecdsa":
        assert len(signature.value) == 64


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519", "rsa"])
def test_a_key_loads_its_public_key_once(algorithm: str) -> None:
    """The cache of decoded public keys: one per Key value, never another key's."""
    key, other = PrivateKey.generate(algorithm), PrivateKey.generate(algorithm)
    copy = Key(key.public.keytype, key.public.public)  # equal, not loaded yet
    loaded = copy.public_key()
    assert copy.public_key() is loaded
    assert copy == key.public and hash(copy) == hash(key.public)
    assert Key(other.public.keytype, other.public.public).public_key() != loaded
    signature, forged = key.sign(b"m"), other.sign(b"m")
    for _ in range(2):  # verified with the loaded key, each answer stays the same
        assert verify_signature(copy, signature, b"m")
        assert not verify_signature(copy, signature, b"n")
        assert not verify_signature(
            copy, Signature(signature.keyid, forged.method, forged.value), b"m"
        )


def test_an_unreadable_key_fails_on_every_use() -> None:
    key = Key("ecdsa", b"not a key")
    for _ in range(2):
        with pytest.raises(FormatError, match="unreadable ecdsa key"):
            key.public_key()
        assert not verify_signature(key, Signature(key.key_id, "ecdsa", b"x" * 64), b"m")


def test_ecdsa_der_signatures_are_rejected() -> None:
    key = PrivateKey.generate()
    der = key.crypto_key.sign(b"m", ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg, union-attr]
    assert not verify_signature(key.public, Signature(key.public.key_id, "ecdsa", der), b"m")


def test_key_id_is_sha256_of_canonical_key() -> None:
    key = PrivateKey.generate("ed25519").public
    public = base64.b64encode(key.public).decode()
    body = f'{{"keytype":"ed25519","keyval":{{"private":null,"public":"{public}"}}}}'
    assert (
        key.key_id == hashlib.sha256(body.encode()).hexdigest() == key_id_of("ed25519", key.public)
    )


def test_certificate_key_canonical_id_is_the_bare_key() -> None:
    private = PrivateKey.generate()
    cert_key = Key.from_certificates([root_certificate(private, "example.com/app")])
    assert cert_key.keytype == "ecdsa-x509"
    assert cert_key.canonical_id == private.public.key_id != cert_key.key_id


# -- thresholds -------------------------------------------------------------------------------


def _targets_signed_by(*keys: PrivateKey) -> Metadata[Targets]:
    data = signed_bytes(Targets(2, "2030-01-01T00:00:00Z"), *((k, None) for k in keys))
    return Metadata.from_bytes(data, Targets)


def test_threshold_counts_unique_key_ids() -> None:
    one, two = PrivateKey.generate(), PrivateKey.generate()
    metadata = _targets_signed_by(one)
    metadata.signatures.append(metadata.signatures[0])  # the same key twice
    keys = {k.public.key_id: k.public for k in (one, two)}
    with pytest.raises(ThresholdError, match="threshold for targets"):
        verify_threshold(metadata, keys, 2, TARGETS)
    both = _targets_signed_by(one, two)
    assert verify_threshold(both, keys, 2, TARGETS) == set(keys)


def test_only_the_first_signature_of_a_key_is_verified() -> None:
    key = PrivateKey.generate()
    metadata = _targets_signed_by(key)
    valid = metadata.signatures[0]
    metadata.signatures.insert(0, Signature(valid.keyid, valid.method, bytes(64)))
    with pytest.raises(ThresholdError):  # the valid one comes second: not verified
        verify_threshold(metadata, {key.public.key_id: key.public}, 1, TARGETS)


def test_signature_count_rules() -> None:
    one, two = PrivateKey.generate(), PrivateKey.generate()
    keyids = [one.public.key_id, two.public.key_id]
    both = _targets_signed_by(one, two)
    check_signature_count(both, keyids, TARGETS, 2)
    with pytest.raises(SignatureCountError, match="targets carries 2 signatures but has only 1"):
        check_signature_count(both, keyids[:1], TARGETS, 2)
    with pytest.raises(SignatureCountError, match="more than the 1 accepted"):
        check_signature_count(both, keyids, TARGETS, 1)
    twice = _targets_signed_by(one)
    twice.signatures.append(twice.signatures[0])
    with pytest.raises(SignatureCountError, match=f"2 signatures by key {keyids[0]}"):
        check_signature_count(twice, keyids, TARGETS, 2)


def test_root_key_ids_include_previous_root_roles() -> None:
    root = Root(
        3,
        "2030-01-01T00:00:00Z",
        roles={
            ROOT: RoleKeys(["new"], 1),
            "root.2": RoleKeys(["old"], 1),
            TARGETS: RoleKeys(["t"], 1),
        },
    )
    assert root.root_key_ids() == {"new", "old"}


def test_json_values_are_counted_before_decoding() -> None:
    check_value_count(b'{"a":[1,2]}', 3)  # {, [ and ,
    with pytest.raises(TooManyValuesError, match="more than 2 JSON values"):
        check_value_count(b'{"a":[1,2]}', 2)


def test_threshold_below_one_and_unsigned_are_invalid() -> None:
    key = PrivateKey.generate()
    with pytest.raises(FormatError):
        verify_threshold(_targets_signed_by(key), {key.public.key_id: key.public}, 0, TARGETS)
    with pytest.raises(UnsignedError, match="no signatures"):
        verify_threshold(_targets_signed_by(), {key.public.key_id: key.public}, 1, TARGETS)


def test_key_listed_under_a_wrong_id_fails_hard() -> None:
    key, other = PrivateKey.generate(), PrivateKey.generate()
    with pytest.raises(KeyIdMismatchError):
        verify_threshold(_targets_signed_by(key), {key.public.key_id: other.public}, 1, TARGETS)


def test_signature_over_wire_escaped_form_does_not_verify() -> None:
    key = PrivateKey.generate()
    doc = Targets(2, "2030-01-01T00:00:00Z", {"a<b>&c": FileMeta.of(b"x")})
    metadata = Metadata.from_bytes(signed_bytes(doc, (key, None)), Targets)
    verify_threshold(metadata, {key.public.key_id: key.public}, 1, TARGETS)
    assert b"a\\u003cb\\u003e\\u0026c" in metadata.to_bytes()


# -- roots ------------------------------------------------------------------------------------


def _root(gun: str, root_key: PrivateKey, cert_key: Key, version: int = 1) -> Root:
    other = PrivateKey.generate().public
    return Root(
        version,
        "2035-01-01T00:00:00Z",
        keys={cert_key.key_id: cert_key, other.key_id: other},
        roles={
            ROOT: RoleKeys([cert_key.key_id], 1),
            **{role: RoleKeys([other.key_id], 1) for role in (TARGETS, SNAPSHOT, TIMESTAMP)},
        },
    )


def _signed_root(root: Root, *signers: tuple[PrivateKey, Key]) -> Metadata[Root]:
    data = signed_bytes(root, *((key, cert.key_id) for key, cert in signers))
    return Metadata.from_bytes(data, Root)


def test_root_rotation_needs_old_and_new_signatures() -> None:
    gun = "example.com/app"
    old_key, new_key = PrivateKey.generate(), PrivateKey.generate()
    old_cert = Key.from_certificates([root_certificate(old_key, gun)])
    new_cert = Key.from_certificates([root_certificate(new_key, gun)])
    old_root = _root(gun, old_key, old_cert)
    verify_root(_signed_root(old_root, (old_key, old_cert)), gun)
    rotated = _root(gun, new_key, new_cert, version=2)
    verify_root(
        _signed_root(rotated, (old_key, old_cert), (new_key, new_cert)), gun, previous=old_root
    )
    with pytest.raises(RootError, match=ROTATION_FAILED):
        verify_root(_signed_root(rotated, (new_key, new_cert)), gun, previous=old_root)
    with pytest.raises(ThresholdError):
        verify_root(_signed_root(rotated, (old_key, old_cert)), gun, previous=old_root)


@pytest.mark.parametrize(
    "certificate_args",
    [
        {"common_name": "example.com/other"},
        {
            "common_name": "example.com/app",
            "days": 30,
            "not_before": datetime(2020, 1, 1, tzinfo=UTC),
        },
        {"common_name": "example.com/app", "not_before": datetime.now(UTC) + timedelta(days=3)},
    ],
    ids=["wrong-cn", "expired", "future"],
)
def test_root_certificate_rules(certificate_args: dict[str, object]) -> None:
    key = PrivateKey.generate()
    cert = Key.from_certificates([root_certificate(key, **certificate_args)])  # type: ignore[arg-type]
    with pytest.raises(RootError, match=NO_VALID_LEAF):
        verify_root(
            _signed_root(_root("example.com/app", key, cert), (key, cert)), "example.com/app"
        )


def test_sha1_root_certificate_is_refused(tmp_path: Path) -> None:
    """cryptography cannot make SHA-1 certificates any more; the openssl CLI still can."""
    subprocess.run(
        ["openssl", "req", "-x509", "-sha1", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
         "-subj", "/CN=example.com\\/app", "-days", "30"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    pem = (tmp_path / "k.pem").read_bytes()
    key = PrivateKey(serialization.load_pem_private_key(pem, None))  # type: ignore[arg-type]
    cert = Key.from_certificates(
        [x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())]
    )
    with pytest.raises(RootError, match=NO_VALID_LEAF):
        verify_root(
            _signed_root(_root("example.com/app", key, cert), (key, cert)), "example.com/app"
        )


def test_wildcard_common_name() -> None:
    key = PrivateKey.generate()
    cert = Key.from_certificates([root_certificate(key, "example.com/*")])
    verify_root(_signed_root(_root("example.com/app", key, cert), (key, cert)), "example.com/app")


def test_expired_root_document() -> None:
    key = PrivateKey.generate()
    cert = Key.from_certificates([root_certificate(key, "g")])
    root = _root("g", key, cert)
    root.expires = "2020-01-01T00:00:00Z"
    with pytest.raises(ExpiredError):
        verify_root(_signed_root(root, (key, cert)), "g")
    verify_root(_signed_root(root, (key, cert)), "g", allow_expired=True)


# -- model details ----------------------------------------------------------------------------


def test_expires_is_normalised_like_go() -> None:
    assert parse_expires("2030-01-01T00:00:00.500000+00:00")[0] == "2030-01-01T00:00:00.5Z"
    assert parse_expires("2030-01-01T00:00:00.000Z")[0] == "2030-01-01T00:00:00Z"
    text, when = parse_expires("2116-07-03T18:08:08.423870533-05:00")
    assert text == "2116-07-03T18:08:08.423870533-05:00"
    assert when == datetime(2116, 7, 3, 23, 8, 8, 423870, tzinfo=UTC)
    with pytest.raises(FormatError):
        parse_expires("2030-01-01 00:00:00Z")


def test_parsed_expiry_times_are_cached_by_their_text() -> None:
    """The cache of parse_expires: each text its own result; errors raised on every call."""
    first = parse_expires("2031-02-03T04:05:06.700+01:00")
    assert parse_expires("2031-02-03T04:05:06.700+01:00") is first
    assert first == ("2031-02-03T04:05:06.7+01:00", datetime(2031, 2, 3, 3, 5, 6, 700000, UTC))
    assert parse_expires("2031-02-03T04:05:06.700Z")[1] == first[1] + timedelta(hours=1)
    for bad in ("2031-02-30T00:00:00Z", "soon", "soon"):
        with pytest.raises(FormatError, match="expires is not"):
            parse_expires(bad)
    for unhashable in ([], {}):
        with pytest.raises(FormatError, match="RFC 3339"):
            parse_expires(unhashable)


def test_delegation_roles_null_is_empty_and_paths_omitted_when_empty() -> None:
    doc = {
        "_type": "Targets",
        "delegations": {"keys": {}, "roles": None},
        "expires": "2030-01-01T00:00:00Z",
        "targets": {},
        "version": 3,
    }
    assert Targets.from_dict(doc).delegations.roles == []
    envelope = Envelope.from_bytes(b'{"signed":{"_type":"Targets","version":2},"signatures":[]}')
    assert envelope.version == 2


def test_hash_checks() -> None:
    meta = FileMeta.of(b"data")
    meta.verify(b"data", "f")
    with pytest.raises(HashMismatchError):
        meta.verify(b"date", "f")
    with pytest.raises(HashMismatchError):
        FileMeta(4, {"md5": b"x"}).verify(b"data", "f")


@pytest.mark.parametrize(
    ("name", "valid"),
    [("targets/releases", True), ("targets/a/b_c-1", True), ("targets/Bad", False),
     ("targets/a//b", False), ("targets/", False), ("targets/a.b", False), ("target/x", False)],
)  # fmt: skip
def test_delegation_names(name: str, valid: bool) -> None:
    assert is_delegation_name(name) is valid


def test_restrict_paths() -> None:
    assert restrict_paths(["qa/x", "prod/", ""], ["qa/"]) == ["qa/x"]
    assert restrict_paths(["a"], [""]) == ["a"]
