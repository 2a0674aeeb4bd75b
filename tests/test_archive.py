"""`tufnotary-server export` and `restore`: byte-identical across engines, a repository the
real notary CLI published keeps being served and signed after a restore, and damaged archives or
occupied databases are refused with the database left as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from support.clients import (
    NOTARY_HINT,
    NotaryCLI,
    fetch_bytes,
    fetch_json,
    key_id,
    require_cli,
    server_key,
    signature_valid,
)
from support.databases import scratch_database
from support.server import free_port, running_server
from tufnotary.server import archive as archive_format
from tufnotary.server import realm
from tufnotary.server.migrate import upgrade
from tufnotary.server.signer import KeyVault
from tufnotary.server.storage import Stores
from tufnotary.server.storage.archive import ArchiveStore
from tufnotary.server.storage.keys import StoredKey
from tufnotary.server.storage.metadata import NewFile
from tufnotary.server.storage.models import Base

PASSPHRASE = "archive-test-passphrase"
GUNS = ("example.com/team/app", "localhost:5000/ünïcode/app")
DELETED = "example.com/team/gone"
TABLES = (
    "tuf_files",
    "changefeed",
    "server_keys",
    "token_keys",
    "realm_users",
    "realm_group_members",
    "realm_rules",
    "audit_log",
)
CLI_TIMEOUT = 120


# -- helpers -----------------------------------------------------------------------------


def server_cli(
    *args: str, stdin: bytes = b"", check: bool = True, **settings: str
) -> subprocess.CompletedProcess:
    """`tufnotary-server ARGS` as a user runs it, with TUFNOTARY_<SETTING> variables from
    ``settings`` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUFNOTARY_")}
    env |= {f"TUFNOTARY_{name.upper()}": value for name, value in settings.items()}
    result = subprocess.run(
        [sys.executable, "-m", "tufnotary.server.cli", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def export(url: str, output: Path, *args: str) -> Path:
    server_cli("export", "--database", url, "-o", str(output), *args)
    return output


def restore(url: str, archive: Path) -> None:
    """Restore into a new database, migrated first (auto_migrate)."""
    server_cli("restore", "--database", url, str(archive), auto_migrate="true")


def refused(url: str, archive: Path, *needles: str) -> str:
    """Restore ``archive`` into ``url``, expect a refusal naming every needle; its stderr."""
    result = server_cli("restore", "--database", url, str(archive), check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    for needle in (*needles, "nothing was restored"):
        assert needle in stderr
    return stderr


def dump(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the archived tables in primary-key order (tuf_files without its row id),
    read through the server's own column types."""
    stores = Stores.from_url(url)
    try:
        with stores.engine.connect() as connection:
            return {
                name: [
                    {k: v for k, v in row._mapping.items() if (name, k) != ("tuf_files", "id")}
                    for row in connection.execute(
                        sa.select(*Base.metadata.tables[name].c).order_by(
                            *Base.metadata.tables[name].primary_key.columns
                        )
                    )
                ]
                for name in TABLES
            }
    finally:
        stores.engine.dispose()


def written(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audit records of writes other than exports and restores, without their ids."""
    return [
        {k: v for k, v in row.items() if k != "id"}
        for row in rows
        if row["action"] not in ("archive-export", "archive-restore")
    ]


def assert_same_data(source: str, target: str) -> None:
    """``target`` holds exactly ``source``'s rows; its audit log has a restore entry too."""
    before, after = dump(source), dump(target)
    for table in TABLES[:-1]:
        assert after[table] == before[table], table
    assert written(after["audit_log"]) == written(before["audit_log"])
    assert "archive-restore" in {row["action"] for row in after["audit_log"]}


def populate(url: str) -> None:
    """Versions of every role (arbitrary bytes), a deleted GUN, server keys (one in a token),
    a token-signing key, realm users, groups and rules, and their audit entries."""
    upgrade(url)
    stores = Stores.from_url(url)
    try:
        for number, gun in enumerate((*GUNS, DELETED)):
            for version in (1, 2, 3):
                stores.metadata.update_many(
                    gun,
                    [
                        NewFile(role, version, bytes(range(256)) + f"{gun}{role}{version}".encode())
                        for role in ("root", "targets", "targets/releases", "snapshot", "timestamp")
                    ],
                )
            for role in ("timestamp", "snapshot"):
                stores.keys.add_key(
                    StoredKey(
                        hashlib.sha256(f"{gun}{role}".encode()).hexdigest(),
                        gun,
                        role,
                        "ecdsa",
                        b"public \x00\xff" + gun.encode(),
                        None if number == 1 and role == "snapshot" else os.urandom(80),
                        datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
                        datetime.now(UTC) if role == "timestamp" else None,
                        "pkcs11:object=snap" if number == 1 and role == "snapshot" else None,
                    )
                )
        stores.metadata.delete_gun(DELETED)
        realm.add_user(stores, "alice", "secret-1", ["team"], rounds=4)
        realm.add_user(stores, "bob", "secret-2", rounds=4)
        realm.add_rule(stores, "group:team", "example.com/**", "pull,push")
        realm.rotate_token_key(stores, KeyVault(PASSPHRASE.encode()))
    finally:
        stores.engine.dispose()


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar}  # type: ignore[union-attr]


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def resealed(files: dict[str, bytes], edit: Callable[[dict[str, Any]], None]) -> dict[str, bytes]:
    """``files`` with a manifest whose member entries match them again, then ``edit``ed."""
    manifest = json.loads(files["manifest.json"])
    for entry in manifest["members"]:
        data = files[entry["name"]]
        entry |= {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "records": data.count(b"\n"),
        }
    edit(manifest)
    return {**files, "manifest.json": json.dumps(manifest).encode()}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A populated SQLite database and its archive."""
    directory = tmp_path_factory.mktemp("archive-source")
    url = f"sqlite:///{directory / 'source.db'}"
    populate(url)
    return url, export(url, directory / "source.tar")


@pytest.fixture
def sqlite_target(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'target.db'}"
    upgrade(url)
    yield url


# -- round trips --------------------------------------------------------------------------


@pytest.mark.engines
def test_round_trip_sqlite_postgresql_mariadb_is_byte_identical(
    source: tuple[str, Path],
    tmp_path: Path,
    postgresql_admin: tuple[sa.Connection, sa.URL],
    mariadb_admin: tuple[sa.Connection, sa.URL],
) -> None:
    url, first = source
    with scratch_database(*postgresql_admin) as pg, scratch_database(*mariadb_admin) as maria:
        restore(pg, first)
        second = export(pg, tmp_path / "from-postgresql.tar")
        restore(maria, second)
        third = export(maria, tmp_path / "from-mariadb.tar")
        for target in (pg, maria):
            assert_same_data(url, target)
        archives = [members(path) for path in (first, second, third)]
        for name in (f"{table}.jsonl" for table in TABLES[:-1]):
            assert archives[0][name] == archives[1][name] == archives[2][name], name
        assert json.loads(archives[2]["manifest.json"])["source"]["engine"] == "mariadb"

        # the restored databases take new writes: the changefeed continues after its ids
        last = max(row["id"] for row in dump(url)["changefeed"])
        for target in (pg, maria):
            stores = Stores.from_url(target)
            try:
                files = [NewFile("timestamp", 4, b"four")]
                (change,) = stores.metadata.update_many(GUNS[0], files)
                assert change.id == last + 1
                assert stores.metadata.by_version(GUNS[1], "targets", 2).data == (
                    bytes(range(256)) + f"{GUNS[1]}targets2".encode()
                )
            finally:
                stores.engine.dispose()


def test_stdout_and_stdin_and_named_guns(source: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = source
    streamed = server_cli("export", "--database", url, "-o", "-", GUNS[1]).stdout
    recorded = dump(url)["audit_log"][-1]
    assert (recorded["action"], json.loads(recorded["detail"])["guns"]) == (
        "archive-export",
        [GUNS[1]],
    )
    archive = tmp_path / "one-gun.tar"
    archive.write_bytes(streamed)
    found = members(archive)
    manifest = json.loads(found["manifest.json"])
    assert manifest["scope"] == {"guns": [GUNS[1]], "realm": False, "audit": True}
    assert {member["name"] for member in manifest["members"]} == {
        "tuf_files.jsonl",
        "changefeed.jsonl",
        "server_keys.jsonl",
        "audit_log.jsonl",
    }
    for name in ("tuf_files.jsonl", "changefeed.jsonl", "server_keys.jsonl"):
        lines = [json.loads(line) for line in found[name].splitlines()]
        assert lines and {line["gun"] for line in lines} == {GUNS[1]}, name

    # a GUN-scoped archive (no realm) restores next to an existing realm, read from stdin
    target = f"sqlite:///{tmp_path / 'target.db'}"
    upgrade(target)
    stores = Stores.from_url(target)
    realm.add_user(stores, "carol", "secret-3", rounds=4)
    stores.engine.dispose()
    server_cli("restore", "--database", target, "-", stdin=streamed)
    after, before = dump(target), dump(url)
    assert after["tuf_files"] == [row for row in before["tuf_files"] if row["gun"] == GUNS[1]]
    assert [user["name"] for user in after["realm_users"]] == ["carol"]

    missing = tmp_path / "missing.tar"
    result = server_cli("export", "--database", url, "-o", str(missing), "nope/x", check=False)
    assert result.returncode == 1 and "no trust data for nope/x" in result.stderr.decode()
    assert not missing.exists()
    with_realm = export(url, tmp_path / "realm.tar", "--realm", "--no-audit", GUNS[0])
    assert "realm_users.jsonl" in members(with_realm)
    assert "audit_log.jsonl" not in members(with_realm)


# -- a repository published by the real notary CLI ----------------------------------------------


@pytest.mark.e2e
@pytest.mark.engines
def test_notary_repository_restored_elsewhere_is_served_and_signed(
    tmp_path: Path,
    postgresql_admin: tuple[sa.Connection, sa.URL],
    mariadb_admin: tuple[sa.Connection, sa.URL],
) -> None:
    notary = require_cli("notary", NOTARY_HINT)
    env = {"TUFNOTARY_KEY_PASSPHRASE": PASSPHRASE}
    gun = "example.com/archive/app"
    payload = tmp_path / "payload"
    payload.write_bytes(b"first release\n")
    for directory in ("source", "restored"):
        (tmp_path / directory).mkdir()
    with running_server(tmp_path / "source", env=env) as origin:
        owner = NotaryCLI(origin.url, origin.ca_cert, tmp_path / "owner", notary)
        owner.run("init", "-p", gun)
        owner.run("key", "rotate", gun, "snapshot", "-r")
        owner.run("add", "-p", gun, "v1", str(payload))
        listed = owner.list_targets(gun)
        keys = {role: server_key(origin, gun, role) for role in ("timestamp", "snapshot")}
        served = {role: fetch_bytes(origin, gun, f"{role}.json") for role in ("root", "targets")}
        sqlite_url = f"sqlite:///{origin.data_dir / 'tufnotary.db'}"
        archive = export(sqlite_url, tmp_path / "notary.tar")  # while it serves
    with scratch_database(*postgresql_admin) as pg, scratch_database(*mariadb_admin) as maria:
        restore(pg, archive)
        streamed = server_cli("export", "--database", pg, "-o", "-").stdout
        server_cli("migrate", "--database", maria)
        server_cli("restore", "--database", maria, "-", stdin=streamed)
        for target in (pg, maria):
            assert_same_data(sqlite_url, target)

        with running_server(tmp_path / "restored", "--database", maria, env=env) as restored:
            for role, data in served.items():
                assert fetch_bytes(restored, gun, f"{role}.json") == data
            same_owner = NotaryCLI(restored.url, restored.ca_cert, tmp_path / "owner", notary)
            assert same_owner.list_targets(gun) == listed
            payload.write_bytes(b"second release\n")
            same_owner.run("add", "-p", gun, "v2", str(payload))
            reader = NotaryCLI(restored.url, restored.ca_cert, tmp_path / "reader", notary)
            assert set(reader.list_targets(gun)) == {"v1", "v2"}
            for role, key in keys.items():
                assert server_key(restored, gun, role) == key
                document = fetch_json(restored, gun, f"{role}.json")
                assert [s["keyid"] for s in document["signatures"]] == [key_id(key)]
                assert signature_valid(document, key)
            assert fetch_json(restored, gun, "targets.json")["signed"]["version"] == (
                json.loads(served["targets"])["signed"]["version"] + 1
            )


# -- refusals ----------------------------------------------------------------------------------


def _truncated(archive: Path, out: Path) -> Path:
    with tarfile.open(archive) as tar:
        info = tar.getmember("tuf_files.jsonl")
    out.write_bytes(archive.read_bytes()[: info.offset_data + info.size // 2])
    return out


def _flipped(archive: Path, out: Path) -> Path:
    """A version digit in tuf_files changed: every line still parses, only the checksum knows."""
    data = bytearray(archive.read_bytes())
    with tarfile.open(archive) as tar:
        start = tar.getmember("tuf_files.jsonl").offset_data
    at = data.index(b'"version":2', start) + len(b'"version":')
    data[at] = ord("7")
    out.write_bytes(bytes(data))
    return out


def _other_version(archive: Path, out: Path) -> Path:
    return write_tar(out, resealed(members(archive), lambda m: m.update(format_version=2)))


def _missing_member(archive: Path, out: Path) -> Path:
    files = members(archive)
    del files["server_keys.jsonl"]
    return write_tar(out, files)


def _unlisted_member(archive: Path, out: Path) -> Path:
    return write_tar(out, {**members(archive), "extra.jsonl": b"{}\n"})


def _hostile(archive: Path, out: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    """The archive with ``info`` (and ``data``) added after its last member."""
    files = members(archive)
    write_tar(out, files)
    with tarfile.open(out, "a") as tar:
        tar.addfile(info, io.BytesIO(data) if data else None)
    return out


def _escaping(archive: Path, out: Path) -> Path:
    info = tarfile.TarInfo("../tuf_files.jsonl")
    info.size = 3
    return _hostile(archive, out, info, b"{}\n")


def _linked(kind: bytes) -> Callable[[Path, Path], Path]:
    def make(archive: Path, out: Path) -> Path:
        files = members(archive)
        del files["audit_log.jsonl"]  # listed: the link stands in for it
        write_tar(out, files)
        info = tarfile.TarInfo("audit_log.jsonl")
        info.type, info.linkname = kind, "/etc/passwd"
        with tarfile.open(out, "a") as tar:
            tar.addfile(info)
        return out

    return make


def _device(archive: Path, out: Path) -> Path:
    info = tarfile.TarInfo("changefeed.jsonl")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return _hostile(archive, out, info)


def _repeated(archive: Path, out: Path) -> Path:
    files = members(archive)
    info = tarfile.TarInfo("changefeed.jsonl")
    info.size = len(files["changefeed.jsonl"])
    return _hostile(archive, out, info, files["changefeed.jsonl"])


def _unservable_gun(archive: Path, out: Path) -> Path:
    """An intact archive whose first version belongs to a GUN the API could not serve."""
    files = members(archive)
    first, rest = files["tuf_files.jsonl"].split(b"\n", 1)
    record = json.loads(first) | {"gun": "example.com/../evil"}
    files["tuf_files.jsonl"] = json.dumps(record).encode() + b"\n" + rest
    return write_tar(out, resealed(files, lambda m: None))


DAMAGES = {
    "unservable GUN": (
        _unservable_gun,
        "tuf_files.jsonl, line 1: 'example.com/../evil': invalid repository name: contains '..'",
    ),
    "member outside": (_escaping, "member ../tuf_files.jsonl is not listed"),
    "symlink member": (_linked(tarfile.SYMTYPE), "member audit_log.jsonl is not a regular file"),
    "hardlink member": (_linked(tarfile.LNKTYPE), "member audit_log.jsonl is not a regular file"),
    "device member": (_device, "member changefeed.jsonl is not a regular file"),
    "repeated member": (_repeated, "member changefeed.jsonl is not listed in manifest.json or "),
    "truncated": (_truncated, "damaged or truncated"),
    "flipped byte": (_flipped, "member tuf_files.jsonl: checksum or record count differs"),
    "format version 2": (_other_version, "archive format version 2: this tufnotary reads"),
    "missing member": (_missing_member, "missing members: server_keys.jsonl"),
    "unlisted member": (_unlisted_member, "member extra.jsonl is not listed"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_archive_is_refused_before_anything_is_written(
    damage: str, source: tuple[str, Path], sqlite_target: str, tmp_path: Path
) -> None:
    make, message = DAMAGES[damage]
    damaged = make(source[1], tmp_path / "damaged.tar")
    before = dump(sqlite_target)
    refused(sqlite_target, damaged, message)
    assert dump(sqlite_target) == before
    assert all(not rows for rows in before.values())


def test_a_failure_while_writing_undoes_the_whole_restore(
    source: tuple[str, Path], migrated_url: str, tmp_path: Path
) -> None:
    """An intact archive whose last tuf_files line repeats an earlier (gun, role, version): the
    database refuses it after every other member was inserted, and nothing stays."""
    files = members(source[1])
    lines = files["tuf_files.jsonl"].splitlines(keepends=True)
    files["tuf_files.jsonl"] += lines[0]
    archive = write_tar(tmp_path / "clash.tar", resealed(files, lambda m: None))
    server_cli("restore", "--verify-only", str(archive))
    before = dump(migrated_url)
    refused(migrated_url, archive, "restore failed")
    assert dump(migrated_url) == before


def test_an_occupied_database_is_refused(
    source: tuple[str, Path], migrated_url: str, tmp_path: Path
) -> None:
    stores = Stores.from_url(migrated_url)
    stores.metadata.update_many("example.com/other", [NewFile("timestamp", 1, b"one")])
    stores.engine.dispose()
    before = dump(migrated_url)
    refused(migrated_url, source[1], "the database holds rows in tuf_files, changefeed")
    assert dump(migrated_url) == before


def test_an_export_reads_one_snapshot_while_others_publish(store: Stores) -> None:
    """A publish committed while the export runs is in none of its tables."""
    gun = GUNS[0]
    store.metadata.update_many(gun, [NewFile("timestamp", 1, b"one")])
    seen: dict[str, list[dict[str, Any]]] = {}
    publishes = [[NewFile("timestamp", 2, b"two")]]

    def sink(table: str, rows: Iterator[dict[str, Any]]) -> None:
        seen[table] = list(rows)
        if table == "tuf_files" and publishes:
            store.metadata.update_many(gun, publishes.pop())

    tables = [("tuf_files", ("version",)), ("changefeed", ("version",))]
    ArchiveStore(store.database).export(tables, None, sink)
    assert seen == {"tuf_files": [{"version": 1}], "changefeed": [{"version": 1}]}
    ArchiveStore(store.database).export(tables, None, sink)
    assert seen["changefeed"] == [{"version": 1}, {"version": 2}]


def test_merge_brings_back_a_deleted_repository(migrated_url: str, tmp_path: Path) -> None:
    """A GUN deleted by mistake comes back from an archive of it with --merge, next to what
    was published since; merging again adds nothing; a history that differs is refused."""
    populate(migrated_url)
    archive = export(migrated_url, tmp_path / "nightly.tar", GUNS[0])
    before = dump(migrated_url)
    stores = Stores.from_url(migrated_url)
    try:
        stores.metadata.delete_gun(GUNS[0])
        stores.metadata.update_many(GUNS[1], [NewFile("timestamp", 4, b"later")])
        merged = server_cli("restore", "--merge", "--database", migrated_url, str(archive))
        assert "merged 15 metadata versions, 0 changefeed records, 0 server keys" in (
            merged.stderr.decode()
        )
        after = dump(migrated_url)

        def of(gun: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [row for row in rows if row["gun"] == gun]

        assert of(GUNS[0], after["tuf_files"]) == of(GUNS[0], before["tuf_files"])
        assert of(GUNS[1], after["tuf_files"])[-1]["data"] == b"later"
        assert after["server_keys"] == before["server_keys"]
        restored = [(row["gun"], row["version"], row["category"]) for row in after["changefeed"]]
        assert restored[-5:] == [
            (GUNS[0], 0, "deletion"),
            (GUNS[1], 4, "update"),
            *((GUNS[0], version, "update") for version in (1, 2, 3)),
        ]

        again = server_cli("restore", "--merge", "--database", migrated_url, str(archive))
        assert "merged 0 metadata versions" in again.stderr.decode()
        assert without_audit(dump(migrated_url)) == without_audit(after)

        stores.metadata.delete_gun(GUNS[0])
        stores.metadata.update_many(GUNS[0], [NewFile("root", 1, b"another root")])
        unchanged = dump(migrated_url)
        result = server_cli(
            "restore", "--merge", "--database", migrated_url, str(archive), check=False
        )
        assert result.returncode == 1
        assert f"{GUNS[0]}: root version 1 is stored with other bytes" in result.stderr.decode()
        assert dump(migrated_url) == unchanged
    finally:
        stores.engine.dispose()


def without_audit(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {name: rows for name, rows in tables.items() if name != "audit_log"}


def test_an_endless_line_in_a_compressed_archive_is_refused_at_the_line_limit(
    source: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gzip bomb: a listed member whose one line never ends is refused once the line passes
    the limit, not read whole into memory."""
    monkeypatch.setattr(archive_format, "LINE_LIMIT", 1 << 20)
    endless = b"x" * (8 << 20)
    files = resealed({**members(source[1]), "tuf_files.jsonl": endless}, lambda m: None)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(archive_format.ArchiveError, match="line 1: longer than 1048576 bytes"):
        archive_format.verify(bomb)


def test_export_refuses_an_unusable_database_or_output_in_one_line(
    database_url: str, tmp_path: Path
) -> None:
    """A closed port, an unmigrated database, a directory as output: one line, exit non-zero,
    no traceback, and an existing archive at the output is left as it was."""
    kept = tmp_path / "kept.tar"
    kept.write_bytes(b"the previous archive")
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    cases = [(closed, str(kept), 1, "is unusable: connection failed")]
    if not database_url.startswith("sqlite"):  # SQLite is migrated, as serve does
        cases.append((database_url, str(kept), 1, "is not at the latest schema"))
    upgrade(migrated := f"sqlite:///{tmp_path / 'migrated.db'}")
    cases.append((migrated, str(tmp_path), 2, "is a directory; nothing written"))
    cases.append((migrated, str(tmp_path / "none" / "x.tar"), 2, "in no existing directory"))
    for url, output, code, message in cases:
        result = server_cli("export", "--database", url, "-o", output, check=False)
        stderr = result.stderr.decode()
        assert result.returncode == code, stderr
        assert message in stderr and "Traceback" not in stderr
        assert code == 2 or len(stderr.splitlines()) == 1
    assert kept.read_bytes() == b"the previous archive"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.tar", "migrated.db"]


def test_restore_from_a_terminal_on_stdin_is_a_usage_error(sqlite_target: str) -> None:
    """`restore -` with stdin a terminal would wait for input forever."""
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tufnotary.server.cli",
                "restore",
                "--database",
                sqlite_target,
                "-",
            ],
            stdin=terminal,
            capture_output=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 2 and b"stdin, which is a terminal" in result.stderr
