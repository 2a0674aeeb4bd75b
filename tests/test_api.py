"""Routes, validation rules and error codes of the trust server, in-process on SQLite."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from werkzeug.test import TestResponse

from support.api import Server, error_of, multipart
from support.repo import RepoBuilder, expires_in, signed_bytes
from tufnotary.metadata.keys import KEY_CREATED_HEADER, Key
from tufnotary.metadata.model import (
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    DelegatedRole,
    FileMeta,
    Metadata,
    Snapshot,
    Targets,
    Timestamp,
)
from tufnotary.metadata.signing import PrivateKey, Signature
from tufnotary.metadata.verify import verify_threshold
from tufnotary.server.context import server_context

GUN = "registry.example.com/team/app"


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server.start(tmp_path)


@pytest.fixture
def engine_server(tmp_path: Path, migrated_url: str) -> Server:
    """The server on each database engine (SQLite, PostgreSQL, MariaDB)."""
    return Server.start(tmp_path, migrated_url)


def _timestamp(server: Server, gun: str = GUN) -> Timestamp:
    response = server.get(gun, "timestamp.json")
    assert response.status_code == 200
    return Metadata.from_bytes(response.data, Timestamp).signed


def _invalid_update(response: object) -> tuple[str, str]:
    error = error_of(response)  # type: ignore[arg-type]
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert error["code"] == "INVALID_UPDATE"
    return error["detail"]["Name"], error["detail"]["Error"]["Msg"]


# -- publishing and reading -------------------------------------------------------------------


def test_first_publish_is_stored_verbatim_and_chained(engine_server: Server) -> None:
    repo = engine_server.new_repo(GUN)
    assert engine_server.get(GUN, "root.json").data == repo.files[ROOT]
    assert engine_server.get(GUN, "targets.json").data == repo.files[TARGETS]
    snapshot = engine_server.get(GUN, "snapshot.json").data
    assert Metadata.from_bytes(snapshot, Snapshot).signed.version == 2
    timestamp = Metadata.from_bytes(engine_server.get(GUN, "timestamp.json").data, Timestamp)
    assert timestamp.signed.version == 1
    timestamp.signed.meta[SNAPSHOT].verify(snapshot, SNAPSHOT)
    keys = {repo.timestamp_key.key_id: repo.timestamp_key}
    assert verify_threshold(timestamp, keys, 1, TIMESTAMP) == {repo.timestamp_key.key_id}
    by_hash = engine_server.get(
        GUN, f"targets.{hashlib.sha256(repo.files[TARGETS]).hexdigest()}.json"
    )
    assert by_hash.data == repo.files[TARGETS]
    assert engine_server.get(GUN, "2.targets.json").data == repo.files[TARGETS]
    assert engine_server.get(GUN, "01.root.json").data == repo.files[ROOT]


def test_caching_headers_etag_and_head(server: Server) -> None:
    repo = server.new_repo(GUN)
    current = server.get(GUN, "root.json")
    assert current.headers["Cache-Control"] == "public, max-age=300, s-maxage=300, must-revalidate"
    assert current.headers["Last-Modified"].endswith(" GMT")
    etag = current.headers["ETag"]
    assert etag == f'"{hashlib.sha256(repo.files[ROOT]).hexdigest()}"'
    consistent = server.get(GUN, "1.root.json")
    assert consistent.headers["Cache-Control"] == "public, max-age=2592000, s-maxage=2592000"
    again = server.client.get(server.tuf(GUN, "root.json"), headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    head = server.client.head(server.tuf(GUN, "root.json"))
    assert head.status_code == 200 and head.data == b""


def test_cache_max_age_zero(tmp_path: Path) -> None:
    server = Server.start(tmp_path, cache_max_age_current=0)
    server.new_repo(GUN)
    response = server.get(GUN, "root.json")
    assert response.headers["Cache-Control"] == "max-age=0, no-cache, no-store"
    assert response.headers["Pragma"] == "no-cache"


def test_client_snapshot_updates_and_stale_versions(engine_server: Server) -> None:
    repo = engine_server.new_repo(GUN)
    repo.add_target("v1", b"image")
    update = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert engine_server.upload(GUN, update).status_code == 200
    assert _timestamp(engine_server).version == 2
    stale = engine_server.upload(GUN, update)
    assert stale.status_code == 400
    assert error_of(stale) == {
        "code": "VERSION",
        "message": "A newer version of metadata is already available.",
        "detail": {},
    }
    listed = Metadata.from_bytes(engine_server.get(GUN, "targets.json").data, Targets).signed
    assert listed.targets["v1"].length == 5


def test_server_snapshot_like_docker(server: Server) -> None:
    repo = server.new_repo(GUN, server_snapshot=True)
    snapshot = Metadata.from_bytes(server.get(GUN, "snapshot.json").data, Snapshot)
    assert snapshot.signed.version == 1
    verify_threshold(snapshot, {repo.snapshot_key.key_id: repo.snapshot_key}, 1, SNAPSHOT)
    repo.add_target("v1", b"manifest")
    assert server.upload(GUN, {TARGETS: repo.targets_bytes()}).status_code == 200
    snapshot = Metadata.from_bytes(server.get(GUN, "snapshot.json").data, Snapshot)
    assert snapshot.signed.version == 2
    snapshot.signed.meta[TARGETS].verify(server.get(GUN, "targets.json").data, TARGETS)
    # an empty upload makes a new snapshot and timestamp; an uploaded timestamp is ignored
    forged = signed_bytes(Timestamp(99, expires_in(1)), (PrivateKey.generate(), None))
    assert server.upload(GUN, {TIMESTAMP: forged}).status_code == 200
    assert _timestamp(server).version == 3


def test_missing_snapshot_with_client_held_key_is_bad_hierarchy(server: Server) -> None:
    repo = server.new_repo(GUN)
    repo.add_target("v1", b"x")
    response = server.upload(GUN, {TARGETS: repo.targets_bytes()})
    assert error_of(response)["detail"] == {
        "Name": "ErrBadHierarchy",
        "Error": {
            "Missing": "snapshot",
            "Msg": "no snapshot was included in update and server does not hold current "
            "snapshot key for repository",
        },
    }
    assert server.upload(GUN, []).status_code == 400  # an empty upload, likewise


def test_nothing_is_stored_when_one_file_is_refused(engine_server: Server) -> None:
    repo = engine_server.new_repo(GUN)
    repo.add_target("v1", b"x")
    targets = repo.targets_bytes()
    snapshot = repo.snapshot_bytes()
    tampered = Metadata.from_bytes(snapshot, Snapshot)
    signature = tampered.signatures[0]
    forged = bytes([signature.value[0] ^ 1]) + signature.value[1:]
    tampered.signatures = [Signature(signature.keyid, signature.method, forged)]
    bad = tampered.to_bytes()
    assert _invalid_update(engine_server.upload(GUN, {TARGETS: targets, SNAPSHOT: bad})) == (
        "ErrBadSnapshot",
        "valid signatures did not meet threshold for snapshot",
    )
    assert engine_server.get(GUN, "3.targets.json").status_code == 404
    assert _timestamp(engine_server).version == 1


# -- validation refusals ------------------------------------------------------------------------


def test_first_upload_rules(server: Server) -> None:
    repo = RepoBuilder(GUN, server.server_key(GUN, "timestamp"))
    files = repo.first_publish()
    assert _invalid_update(server.upload(GUN, {TARGETS: files[TARGETS]})) == (
        "ErrValidation",
        "no pre-existing root and no root provided in update.",
    )
    other = RepoBuilder("registry.example.com/other", repo.timestamp_key)
    name, msg = _invalid_update(server.upload(GUN, other.first_publish()))
    assert (name, msg) == (
        "ErrBadRoot",
        "could not validate the path to a trusted root: unable to retrieve valid leaf certificates",
    )
    repo.root.version = 3
    name, msg = _invalid_update(server.upload(GUN, {**files, ROOT: repo.root_bytes()}))
    assert (name, msg) == (
        "ErrBadRoot",
        "Root modifications must increment the version. Current 1, new 3",
    )


def test_root_version_two_is_accepted_for_a_new_repository(server: Server) -> None:
    repo = RepoBuilder(GUN, server.server_key(GUN, "timestamp"))
    repo.root.version = 2
    assert server.upload(GUN, repo.first_publish()).status_code == 200


def test_root_rotation_needs_the_old_root_signature(server: Server) -> None:
    repo = server.new_repo(GUN)
    old_key, old_cert = repo.root_key, repo.root_cert
    new_builder = RepoBuilder(GUN, repo.timestamp_key)
    repo.root.keys[new_builder.root_cert.key_id] = new_builder.root_cert
    repo.root.roles[ROOT].keyids = [new_builder.root_cert.key_id]
    repo.root.version = 2
    repo.root_key, repo.root_cert = new_builder.root_key, new_builder.root_cert
    only_new = {ROOT: repo.root_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    name, msg = _invalid_update(server.upload(GUN, only_new))
    assert name == "ErrBadRoot" and msg.startswith("could not rotate trust to a new trusted root")
    both = {ROOT: repo.root_bytes((old_key, old_cert.key_id)), SNAPSHOT: repo.snapshot_bytes()}
    assert server.upload(GUN, both).status_code == 200
    assert server.get(GUN, "2.root.json").data == both[ROOT]
    assert server.get(GUN, "1.root.json").status_code == 200


def test_bad_targets_signatures(server: Server) -> None:
    repo = server.new_repo(GUN)
    repo.add_target("v1", b"x")
    repo.targets_key = PrivateKey.generate()
    files = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert _invalid_update(server.upload(GUN, files)) == (
        "ErrBadTargets",
        "valid signatures did not meet threshold for targets",
    )
    unsigned = signed_bytes(Targets(9, expires_in(30)))
    assert _invalid_update(server.upload(GUN, {TARGETS: unsigned})) == (
        "ErrBadTargets",
        "tuf: data has no signatures",
    )


def test_expired_upload_is_refused(server: Server) -> None:
    repo = server.new_repo(GUN)
    repo.targets[TARGETS].expires = "2020-01-01T00:00:00Z"
    files = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    name, msg = _invalid_update(server.upload(GUN, files))
    assert name == "ErrBadTargets" and "expired" in msg


def test_snapshot_must_describe_the_exact_bytes(server: Server) -> None:
    repo = server.new_repo(GUN)
    repo.add_target("v1", b"x")
    targets = repo.targets_bytes()
    repo.files[TARGETS] = targets + b"\n"  # the snapshot describes other bytes than uploaded
    name, msg = _invalid_update(
        server.upload(GUN, {TARGETS: targets, SNAPSHOT: repo.snapshot_bytes()})
    )
    assert name == "ErrBadSnapshot" and "targets" in msg
    repo.files[TARGETS] = targets
    repo.snapshot_bytes()
    meta = repo.snapshot.meta[TARGETS]
    repo.snapshot.meta[TARGETS] = FileMeta(meta.length + 1, meta.hashes)  # decision 25
    wrong_length = signed_bytes(repo.snapshot, (repo.snapshot_private, None))  # type: ignore[arg-type]
    name, msg = _invalid_update(server.upload(GUN, {TARGETS: targets, SNAPSHOT: wrong_length}))
    assert name == "ErrBadSnapshot" and "bytes" in msg
    assert (
        server.upload(GUN, {TARGETS: targets, SNAPSHOT: repo.snapshot_bytes()}).status_code == 200
    )


@pytest.mark.parametrize(
    ("field_json", "path"),
    [(b'"length":1.5', "length"), (b'"length":9007199254740993', "length")],
)
def test_numbers_go_cannot_verify_are_refused(server: Server, field_json: bytes, path: str) -> None:
    repo = server.new_repo(GUN)
    repo.add_target("v1", b"x")
    targets = repo.targets_bytes().replace(b'"length":1', field_json)
    name, msg = _invalid_update(server.upload(GUN, {TARGETS: targets}))
    assert name == "ErrValidation" and path in msg


# -- delegations --------------------------------------------------------------------------------


def _delegated_repo(server: Server, paths: list[str]) -> RepoBuilder:
    repo = server.new_repo(GUN, server_snapshot=True)
    repo.add_delegation("targets/releases", paths)
    assert server.upload(GUN, {TARGETS: repo.targets_bytes()}).status_code == 200
    return repo


def test_delegate_publishes_with_server_snapshot(engine_server: Server) -> None:
    repo = _delegated_repo(engine_server, [""])
    repo.add_target("v1", b"manifest", role="targets/releases")
    assert (
        engine_server.upload(
            GUN, {"targets/releases": repo.targets_bytes("targets/releases")}
        ).status_code
        == 200
    )
    served = engine_server.get(GUN, "targets/releases.json")
    assert served.data == repo.files["targets/releases"]
    snapshot = Metadata.from_bytes(engine_server.get(GUN, "snapshot.json").data, Snapshot).signed
    snapshot.meta["targets/releases"].verify(served.data, "targets/releases")
    assert engine_server.get(GUN, "targets/unknown.json").status_code == 404


def test_delegation_may_not_add_targets_outside_its_paths(server: Server) -> None:
    repo = _delegated_repo(server, ["qa/"])
    repo.add_target("qa/v1", b"a", role="targets/releases")
    assert (
        server.upload(GUN, {"targets/releases": repo.targets_bytes("targets/releases")}).status_code
        == 200
    )
    # the owner narrows the paths; the delegate's next publish carries qa/v1 over: tolerated
    repo.targets[TARGETS].delegations.roles[0].paths = ["prod/"]
    assert server.upload(GUN, {TARGETS: repo.targets_bytes()}).status_code == 200
    repo.add_target("prod/v2", b"b", role="targets/releases")
    assert (
        server.upload(GUN, {"targets/releases": repo.targets_bytes("targets/releases")}).status_code
        == 200
    )
    repo.add_target("qa/v3", b"c", role="targets/releases")
    name, msg = _invalid_update(
        server.upload(GUN, {"targets/releases": repo.targets_bytes("targets/releases")})
    )
    assert name == "ErrBadTargets" and "qa/v3" in msg and "outside" in msg


def test_delegation_structure_rules(server: Server) -> None:
    repo = server.new_repo(GUN, server_snapshot=True)
    key = PrivateKey.generate().public
    roles = repo.targets[TARGETS].delegations
    roles.keys[key.key_id] = key
    for bad in (
        DelegatedRole("targets/a/b", [key.key_id], 1, [""]),
        DelegatedRole("targets/x", [key.key_id], 0, [""]),
        DelegatedRole("targets/y", ["0" * 64], 1, [""]),
    ):
        roles.roles = [bad]
        name, msg = _invalid_update(server.upload(GUN, {TARGETS: repo.targets_bytes()}))
        assert name == "ErrBadTargets", msg
    undelegated = signed_bytes(Targets(1, expires_in(30)), (PrivateKey.generate(), None))
    name, msg = _invalid_update(server.upload(GUN, {"targets/nobody": undelegated}))
    assert name == "ErrBadTargets" and "not delegated" in msg


def test_delegation_depth_limit(tmp_path: Path) -> None:
    server = Server.start(tmp_path, max_delegation_depth=2)
    server.new_repo(GUN, server_snapshot=True)
    deep = signed_bytes(Targets(1, expires_in(30)), (PrivateKey.generate(), None))
    name, msg = _invalid_update(server.upload(GUN, {"targets/a/b/c": deep}))
    assert name == "ErrValidation" and "deeper than 2" in msg


# -- malformed requests -------------------------------------------------------------------------


def test_malformed_uploads(server: Server) -> None:
    url = server.tuf(GUN)
    not_multipart = server.client.post(url, data=b'{"a":1}', content_type="application/json")
    assert error_of(not_multipart) == {
        "code": "MALFORMED_UPLOAD",
        "message": "The body of your request is malformed.",
    }
    for body in (b"", b"garbage", b"--other\r\n\r\nx", b"--b\r\n\r\nunterminated"):
        response = server.client.post(
            url,
            input_stream=io.BytesIO(body),
            content_length=len(body),
            content_type="multipart/form-data; boundary=b",
        )
        assert response.status_code == 400 and error_of(response)["code"] == "MALFORMED_UPLOAD"
    for headers in (
        b'Content-Disposition: form-data; name="files"',
        b'Content-Disposition: form-data; name="files"; filename=""',
        b"Content-Type: application/octet-stream",  # no Content-Disposition at all
    ):
        no_filename = b"--b\r\n" + headers + b"\r\n\r\n{}\r\n--b--\r\n"
        response = server.client.post(
            url, data=no_filename, content_type="multipart/form-data; boundary=b"
        )
        assert error_of(response) == {
            "code": "NO_FILENAME",
            "message": "No file/role name provided.",
        }, headers


def _post(server: Server, body: bytes) -> TestResponse:
    return server.client.post(
        server.tuf(GUN), data=body, content_type="multipart/form-data; boundary=b"
    )


@pytest.mark.parametrize(
    ("disposition", "filename"),
    [
        (b'form-data; name="files"; filename="targets%2Freleases"', "targets%2Freleases"),
        (b'form-data; name="files"; filename="C:\\\\x\\\\targets"', "C:\\x\\targets"),
        (b'attachment; filename="bogus"', "bogus"),  # any disposition type, no name
        (b"form-data; filename=bogus; name=files", "bogus"),
    ],
)
def test_the_filename_is_read_raw(server: Server, disposition: bytes, filename: str) -> None:
    """Spec 2.1: no percent-decoding, no path stripping, as Go's reader."""
    body = b"--b\r\nContent-Disposition: " + disposition + b"\r\n\r\n{}\r\n--b--\r\n"
    assert error_of(_post(server, body)) == {
        "code": "INVALID_ROLE",
        "message": "The role you are attempting to operate on is invalid.",
        "detail": filename,
    }


def test_bare_lf_line_breaks_publish(server: Server) -> None:
    """As with the reference's Go reader, a body whose first delimiter line ends in a bare LF
    uses bare LF line breaks throughout (tests/test_formdata.py compares with the reference)."""
    repo = server.new_repo(GUN, server_snapshot=True)
    repo.add_target("v1", b"v1")
    document = repo.targets_bytes()
    body = multipart([("targets", document)], boundary="b")[0]
    response = _post(server, body.replace(b"\r\n", b"\n"))
    assert response.status_code == 200, response.data
    assert server.get(GUN, "targets.json").data == document


@pytest.mark.parametrize(
    "headers",
    [b"X-Padding: " + b"x" * 4300, b"\r\n".join(b"X-%d: x" % i for i in range(8))],
    ids=["long header line", "9 header lines"],
)
def test_part_headers_are_capped(server: Server, headers: bytes) -> None:
    """At most 8 header lines of 4 KiB per part (the Go client sends 2 short ones)."""
    body = b'--b\r\nContent-Disposition: form-data; name="files"; filename="targets"\r\n'
    response = _post(server, body + headers + b"\r\n\r\n{}\r\n--b--\r\n")
    assert error_of(response)["code"] == "TOO_LARGE"


@pytest.mark.parametrize("before_chunk_end", [1, 2, 3, 5, 8])
def test_a_boundary_across_two_reads_of_the_body(server: Server, before_chunk_end: int) -> None:
    """The body is read 64 KiB at a time: a part's closing delimiter (CRLF--b) that starts
    just before the end of the first read still ends the part exactly."""
    repo = server.new_repo(GUN, server_snapshot=True)
    repo.add_target("v1", b"v1")
    head = multipart([("targets", b"")], boundary="b")[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    document = repo.targets_bytes()
    data = document + b" " * (64 * 1024 - before_chunk_end - len(head) - len(document))
    body = head + data + b"\r\n--b--\r\n"
    assert body.index(b"\r\n--b--") == 64 * 1024 - before_chunk_end
    response = _post(server, body)
    assert response.status_code == 200, response.data
    assert server.get(GUN, "targets.json").data == data


@pytest.mark.parametrize("role", ["bogus", "../targets", "targets/Bad", "targets//x", "targets/"])
def test_invalid_role(server: Server, role: str) -> None:
    response = server.upload(GUN, {role: b"{}"})
    assert response.status_code == 400
    assert error_of(response)["detail"] == role
    assert error_of(response)["code"] == "INVALID_ROLE"


@pytest.mark.parametrize(
    "data",
    [
        b'{"signed": nope',
        b"a" * 100,
        b'{"signed":{"_type":"Targets","version":"2"},"signatures":[]}',
        b'{"signed":{"expires":"tomorrow"},"signatures":[]}',
        b'{"signed":{},"signed":{}}',
    ],
)
def test_malformed_json(server: Server, data: bytes) -> None:
    response = server.upload(GUN, {"targets.json": data})
    assert error_of(response) == {
        "code": "MALFORMED_JSON",
        "message": "JSON sent by the client could not be parsed by the server",
    }


def test_body_over_the_cap_is_413(tmp_path: Path) -> None:
    server = Server.start(tmp_path, max_body_bytes=1000)
    response = server.upload(GUN, {TARGETS: b"x" * 2000})
    assert response.status_code == 413
    assert error_of(response)["code"] == "TOO_LARGE"


def test_part_count_cap(tmp_path: Path) -> None:
    server = Server.start(tmp_path, max_parts=3)
    response = server.upload(GUN, [(f"targets/r{i}", b"{}") for i in range(10)])
    assert response.status_code == 413


@pytest.mark.parametrize(
    "gun",
    [
        "a" * 256,
        "example.com/a\x01b",
        "example.com/a..b",
        "example.com/a/",
        "example.com//a",
        "example.com/./a",
        "example.com/x/../a",
        "../../etc/x",
        "",
        "example.com%2Fa",
        "example.com/a%2f%2fb",
    ],
)
def test_hostile_guns_are_refused(server: Server, gun: str) -> None:
    """Decision 21: never a 301 to another repository's path."""
    for method, name in (
        ("GET", "root.json"),
        ("POST", ""),
        ("DELETE", ""),
        ("GET", "timestamp.key"),
    ):
        response = server.client.open(server.tuf(gun, name) + "?q=1", method=method)
        assert response.status_code == 400, (method, response.headers)
        assert error_of(response)["code"] == "INVALID_GUN"
    changefeed = server.client.get(f"/v2/{gun}/_trust/changefeed")
    assert error_of(changefeed)["code"] == "INVALID_GUN"


def test_unclean_tail_after_the_gun_cannot_reach_another_repository(server: Server) -> None:
    """A '..' after the last /_trust/ that would land on a shorter GUN is refused too."""
    response = server.client.get("/v2/a/_trust/tuf/x/_trust/../../root.json")
    assert response.status_code == 400 and error_of(response)["code"] == "INVALID_GUN"


def test_error_bodies_echo_little_client_input(server: Server) -> None:
    """Decision 18: about 200 bytes of the client's input at most, whatever it sent."""
    long_role = "targets/" + "a" * 1500
    response = server.upload(GUN, {long_role: b"{}"})
    error = error_of(response)
    assert error["code"] == "INVALID_ROLE"
    assert error["detail"] == long_role[:197] + "..."
    assert len(response.data) < 400
    multibyte = server.upload(GUN, {"targets/" + "é" * 600: b"{}"})
    assert len(error_of(multibyte)["detail"].encode()) <= 200
    records = server.client.get(f"/v2/{GUN}/_trust/changefeed?records={'9' * 3000}")
    assert error_of(records)["code"] == "INVALID_PARAMETERS"
    assert len(records.data) < 400
    expires = server.upload(GUN, {"targets.json": b'{"signed":{"expires":"' + b"x" * 3000 + b'"}'})
    assert len(expires.data) < 600


def test_router_details(server: Server) -> None:
    assert error_of(server.get(GUN, "root.json")) == {
        "code": "METADATA_NOT_FOUND",
        "message": "You have requested metadata that does not exist.",
        "detail": {},
    }
    for path in (
        "/v2",
        "/",
        f"/v2/{GUN}/_trust/tuf/targets.key",
        f"/v2/{GUN}/_trust/tuf/root.JSON",
        f"/v2/{GUN}/_trust/tuf/targets.{'a' * 96}.json",
        "/v2/a*b/_trust/tuf/root.json",
    ):
        assert "detail" not in error_of(server.client.get(path)), path
    assert server.client.put(f"/v2/{GUN}/_trust/tuf/root.json").status_code == 404
    patch = server.client.patch(f"/v2/{GUN}/_trust/tuf/")
    assert patch.status_code == 405 and patch.data == b""
    redirect = server.client.get("/v2/b/_trust/tuf/./root.json?x=1")  # GUN kept: as reference
    assert redirect.status_code == 301
    assert redirect.headers["Location"] == "/v2/b/_trust/tuf/root.json?x=1"
    assert server.client.get("/v2/./").headers["Location"] == "/v2/"
    assert server.get(GUN, "0.root.json").status_code == 404
    assert server.client.get("/v2/").data == b"{}"


def test_gun_prefixes(tmp_path: Path) -> None:
    server = Server.start(tmp_path, gun_prefixes=("registry.example.com/",))
    refused = server.upload("docker.io/library/x", [])
    assert error_of(refused) == {
        "code": "INVALID_GUN",
        "message": "The server does not support actions on images of this name.",
        "detail": "Require GUNs with prefix: [registry.example.com/]",
    }
    assert "detail" not in error_of(server.get("docker.io/library/x", "root.json"))
    server.new_repo(GUN)


# -- server keys --------------------------------------------------------------------------------


def test_server_keys_are_kept_and_rotated(tmp_path: Path) -> None:
    server = Server.start(tmp_path)
    first = server.server_key(GUN, "timestamp")
    assert server.server_key(GUN, "timestamp") == first  # unused keys are handed out again
    repo = RepoBuilder(GUN, first)
    assert server.upload(GUN, repo.first_publish()).status_code == 200
    rotated = server.server_key(GUN, "timestamp", method="POST")
    assert rotated != first
    assert server.server_key(GUN, "timestamp") == first  # root still lists the old key
    # a restart keeps the keys (the reference loses them): the next publish is still signed
    restarted = Server.start(tmp_path)
    repo.add_target("v1", b"x")
    files = {TARGETS: repo.targets_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert restarted.upload(GUN, files).status_code == 200
    timestamp = Metadata.from_bytes(restarted.get(GUN, "timestamp.json").data, Timestamp)
    verify_threshold(timestamp, {first.key_id: first}, 1, TIMESTAMP)
    # rotate: publish a root listing the rotated key
    repo.root.keys[rotated.key_id] = rotated
    repo.root.roles[TIMESTAMP].keyids = [rotated.key_id]
    repo.root.version = 2
    files = {ROOT: repo.root_bytes(), SNAPSHOT: repo.snapshot_bytes()}
    assert restarted.upload(GUN, files).status_code == 200
    timestamp = Metadata.from_bytes(restarted.get(GUN, "timestamp.json").data, Timestamp)
    verify_threshold(timestamp, {rotated.key_id: rotated}, 1, TIMESTAMP)
    assert restarted.server_key(GUN, "timestamp") == rotated


def test_key_responses_say_when_the_key_was_made(server: Server) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    made = server.client.get(server.tuf(GUN, "timestamp.key"))
    stored = server_context(server.app).stores.keys.get_key(Key.from_dict(made.json).key_id)
    # the notary body is unchanged; the header is extra (RFC 3339 UTC, whole seconds)
    public = made.json["keyval"]["public"]
    assert made.data == b'{"keytype":"ecdsa","keyval":{"public":"%s","private":null}}' % (
        public.encode()
    )
    assert made.content_type == "application/json"
    created = made.headers[KEY_CREATED_HEADER]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
    assert datetime.fromisoformat(created) == stored.created_at.replace(microsecond=0)
    assert before <= datetime.fromisoformat(created) <= datetime.now(UTC)
    again = server.client.get(server.tuf(GUN, "timestamp.key"))
    assert again.headers[KEY_CREATED_HEADER] == created  # the same unused key, the same time
    rotated = server.client.post(server.tuf(GUN, "snapshot.key"))
    assert KEY_CREATED_HEADER in rotated.headers


def test_private_keys_are_encrypted_at_rest(server: Server) -> None:
    key = server.server_key(GUN, "timestamp")
    stored = server_context(server.app).stores.keys.get_key(key.key_id)
    assert stored.gun == GUN and stored.public == key.public
    assert key.public not in stored.private and len(stored.private) > 60


def test_ed25519_server_keys(tmp_path: Path) -> None:
    server = Server.start(tmp_path, key_algorithm="ed25519")
    assert server.server_key(GUN, "timestamp").keytype == "ed25519"
    repo = server.new_repo(GUN, server_snapshot=True)
    timestamp = Metadata.from_bytes(server.get(GUN, "timestamp.json").data, Timestamp)
    assert timestamp.signatures[0].method == "eddsa"
    verify_threshold(timestamp, {repo.timestamp_key.key_id: repo.timestamp_key}, 1, TIMESTAMP)


# -- re-signing on read -------------------------------------------------------------------------


def test_expiring_timestamp_is_resigned_on_read(engine_server: Server) -> None:
    engine_server.new_repo(GUN, server_snapshot=True)
    service = server_context(engine_server.app).service
    service.refresh_margin = timedelta(days=15)  # every timestamp now counts as expiring
    assert _timestamp(engine_server).version == 2
    assert _timestamp(engine_server).version == 3
    service.refresh_margin = timedelta(days=365 * 4)  # the server-held snapshot too
    snapshot = Metadata.from_bytes(engine_server.get(GUN, "snapshot.json").data, Snapshot)
    assert snapshot.signed.version == 2
    timestamp = _timestamp(engine_server)
    feed = json.loads(engine_server.client.get(f"/v2/{GUN}/_trust/changefeed").data)
    assert [r["Version"] for r in feed["records"]][:4] == [1, 2, 3, 4]
    assert timestamp.version >= 4


def test_timestamp_of_client_snapshot_repo_is_resigned_alone(server: Server) -> None:
    repo = server.new_repo(GUN)
    service = server_context(server.app).service
    service.refresh_margin = timedelta(days=365 * 4)
    timestamp = _timestamp(server)
    assert timestamp.version == 2
    snapshot = server.get(GUN, "snapshot.json").data
    assert Metadata.from_bytes(snapshot, Snapshot).signed.version == 2  # client-held: kept
    timestamp.meta[SNAPSHOT].verify(snapshot, SNAPSHOT)
    assert repo.snapshot.version == 2


# -- deletion and changefeed --------------------------------------------------------------------


def test_delete_removes_exactly_one_gun_and_keeps_keys(engine_server: Server) -> None:
    repo = engine_server.new_repo("x/a")
    engine_server.new_repo("x/ab")
    assert engine_server.client.delete(engine_server.tuf("x/a")).status_code == 200
    assert engine_server.get("x/a", "root.json").status_code == 404
    assert engine_server.get("x/ab", "root.json").status_code == 200
    assert engine_server.client.delete(engine_server.tuf("x/a")).status_code == 200
    feed = json.loads(
        engine_server.client.get("/v2/x/a/_trust/changefeed?change_id=0&records=10").data
    )
    assert [(r["Category"], r["Version"], r["SHA256"]) for r in feed["records"]][-1] == (
        "deletion",
        0,
        "",
    )
    assert sum(r["Category"] == "deletion" for r in feed["records"]) == 1
    # a client with cached metadata re-publishes its cached root: the old timestamp key works
    assert (
        engine_server.upload(
            "x/a",
            {
                ROOT: repo.files[ROOT],
                TARGETS: repo.targets_bytes(),
                SNAPSHOT: repo.snapshot_bytes(),
            },
        ).status_code
        == 200
    )


def test_changefeed_paging_and_parameters(server: Server) -> None:
    for index in range(3):
        server.new_repo(f"example.com/app{index}")

    def feed(query: str, gun: str | None = None) -> list[tuple[str, str]]:
        base = f"/v2/{gun}/_trust/changefeed" if gun else "/v2/_trust/changefeed"
        body = json.loads(server.client.get(f"{base}?{query}").data)
        assert body["count"] == len(body["records"])
        return [(r["ID"], r["GUN"]) for r in body["records"]]

    assert [i for i, _ in feed("")] == ["1", "2", "3"]
    assert [i for i, _ in feed("change_id=1&records=1")] == ["2"]
    assert [i for i, _ in feed("change_id=-1&records=2")] == ["2", "3"]
    assert [i for i, _ in feed("change_id=3&records=-2")] == ["1", "2"]
    assert feed("records=0", "example.com/app1") == [("2", "example.com/app1")]
    assert feed("change_id=3") == []
    bad = server.client.get("/v2/_trust/changefeed?records=abc")
    assert error_of(bad)["code"] == "INVALID_PARAMETERS"
    assert isinstance(error_of(bad)["detail"], str)
    assert error_of(server.client.get("/v2/_trust/changefeed?change_id=1.5"))["detail"] == {}


def test_health_and_metrics(server: Server) -> None:
    health = server.client.get("/_notary_server/health")
    assert health.status_code == 200 and json.loads(health.data) == {}
    server.client.get("/v2/x/_trust/tuf/root.json")
    metrics = server.client.get("/metrics").data.decode()
    assert (
        'notary_server_http_request_duration_seconds_count{method="GET",operation="GetRole"'
        in metrics
    )


def test_multipart_helper_matches_go_layout() -> None:
    body, content_type = multipart([("targets", b"{}")], boundary="ab")
    assert content_type == "multipart/form-data; boundary=ab"
    assert body.startswith(
        b'--ab\r\nContent-Disposition: form-data; name="files"; filename="targets"'
    )


def test_concurrent_readers_of_an_expiring_timestamp_never_fail(engine_server: Server) -> None:
    """Every reader re-signs at once; the losers of the race serve the winner's version."""
    repo = engine_server.new_repo(GUN, server_snapshot=True)
    server_context(engine_server.app).service.refresh_margin = timedelta(days=15)
    barrier = threading.Barrier(8)

    def read(_: int) -> tuple[int, bytes]:
        client = engine_server.app.test_client()
        barrier.wait()
        response = client.get(engine_server.tuf(GUN, "timestamp.json"))
        return response.status_code, response.data

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, range(8)))
    assert {status for status, _ in results} == {200}
    keys = {repo.timestamp_key.key_id: repo.timestamp_key}
    versions = set()
    for _, data in results:
        timestamp = Metadata.from_bytes(data, Timestamp)
        verify_threshold(timestamp, keys, 1, TIMESTAMP)
        versions.add(timestamp.signed.version)
    feed = json.loads(engine_server.client.get(f"/v2/{GUN}/_trust/changefeed").data)["records"]
    stored = [record["Version"] for record in feed]
    assert stored == sorted(set(stored)) and versions <= set(stored) and max(stored) >= 2
