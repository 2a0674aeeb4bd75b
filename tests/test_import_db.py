"""`tufnotary-server import --from-notary-db --signer-db`: a self-hosted Notary (the real
notary-server with its trust service remote to the real notary-signer, on PostgreSQL or
MariaDB), populated by the real notary CLI, moves to tufnotary-server, and the same notary
client, pointed at it, keeps working: same targets, and new timestamps (and server-managed
snapshots) signed by the SAME keys, so no rotation is needed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_e2e_notary import generate_ec_key

from support.clients import NotaryCLI, fetch_json, key_id, require_cli, server_key
from support.databases import scratch_database
from support.notary_stack import (
    NotaryStack,
    create_notary_tables,
    published_files,
    running_notary_stack,
    signer_ciphertext,
    write_notary_rows,
)
from support.server import running_server, server_environment
from tufnotary.importer.db_import import new_keys, store_keys
from tufnotary.importer.notary_db import sqlalchemy_url
from tufnotary.importer.signer_keys import SignerKey, SignerKeyError
from tufnotary.metadata.model import TIMESTAMP, Metadata, RoleKeys, Root, Timestamp
from tufnotary.metadata.signing import PrivateKey
from tufnotary.metadata.verify import verify_threshold
from tufnotary.server.app import create_app
from tufnotary.server.cli import main
from tufnotary.server.config import Settings
from tufnotary.server.context import server_context
from tufnotary.server.migrate import upgrade
from tufnotary.server.signer import KeyVault, ServerKeys
from tufnotary.server.storage import Stores
from tufnotary.server.storage.engine import make_engine
from tufnotary.server.storage.models import AuditRow, ServerKeyRow, TufFileRow
from tufnotary.server.tls import ensure_self_signed

# notary-signer's passphrase aliases: APP's keys were made under OLD, MANAGED's under CURRENT
OLD, OLD_PASSPHRASE = "old", "the passphrase notary-signer used first"
CURRENT, CURRENT_PASSPHRASE = "current", "the passphrase notary-signer uses now"
OUR_PASSPHRASE = "tufnotary key passphrase"
APP = "registry.example.com/imported/app"  # owner signs the snapshot; a delegation
MANAGED = "registry.example.com/imported/managed"  # server-managed snapshot
GONE = "registry.example.com/imported/gone"  # soft-deleted rows only


def _write(directory: Path, name: str, content: bytes) -> Path:
    path = directory / name
    path.write_bytes(content)
    return path


def _publish_app(owner: NotaryCLI, tmp_path: Path) -> None:
    """APP as the real notary CLI publishes it: a target, a delegation and a delegated target;
    the owner signs the snapshot."""
    owner.run("init", "-p", APP)
    owner.run("add", "-p", APP, "v1", str(_write(tmp_path, "v1", b"version one\n")))
    key_pem, pub_pem, _ = generate_ec_key(tmp_path)
    owner.run("key", "import", str(key_pem), "--role", "targets/releases")
    owner.run("delegation", "add", "-p", APP, "targets/releases", str(pub_pem), "--all-paths")
    release = _write(tmp_path, "release", b"a release\n")
    owner.run("add", "-p", APP, "release", str(release), "--roles", "targets/releases")


def _publish_managed(owner: NotaryCLI, tmp_path: Path) -> None:
    """MANAGED: the server signs its snapshot."""
    owner.run("init", "-p", MANAGED)
    owner.run("key", "rotate", MANAGED, "snapshot", "-r")
    owner.run("add", "-p", MANAGED, "v1", str(_write(tmp_path, "m1", b"managed one\n")))


def _soft_delete_rows(notary_url: str, signer_url: str) -> None:
    """A soft-deleted file (of a GUN that has no other) and a soft-deleted signer key under an
    alias no passphrase is given for: Notary no longer sees them, nor may the import."""
    now = datetime.now(UTC).replace(tzinfo=None)
    for url, statement, values in (
        (
            notary_url,
            "INSERT INTO tuf_files (created_at, deleted_at, gun, role, version, data, sha256)"
            " VALUES (:now, :now, :gun, 'root', 1, :data, '')",
            {"gun": GONE, "data": b"{}"},
        ),
        (
            signer_url,
            "INSERT INTO private_keys (created_at, deleted_at, key_id, encryption_alg,"
            " keywrap_alg, algorithm, passphrase_alias, public, private, gun, role)"
            " VALUES (:now, :now, 'retired', 'A256GCM', 'PBES2-HS256+A128KW', 'ecdsa',"
            " 'retired', :data, :data, :gun, 'timestamp')",
            {"gun": GONE, "data": b"x"},
        ),
    ):
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text(statement), values | {"now": now})
        engine.dispose()


def _server_keys(root: dict[str, object], role: str) -> list[str]:
    return root["signed"]["roles"][role]["keyids"]  # type: ignore[index]


def _import(
    url: str, notary_url: str, signer_url: str, *extra: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`tufnotary-server import` into ``url``; ``extra`` are more options."""
    command = [
        sys.executable,
        "-m",
        "tufnotary.server.cli",
        "import",
        "--database",
        url,
        "--from-notary-db",
        notary_url,
        "--signer-db",
        signer_url,
        *extra,
    ]
    return subprocess.run(
        command,
        env=server_environment({"TUFNOTARY_KEY_PASSPHRASE": OUR_PASSPHRASE} | env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _scalar(url: str, query: str) -> object:
    engine = make_engine(url)
    with engine.connect() as connection:
        value = connection.scalar(sa.text(query))
    engine.dispose()
    return value


def _counts(url: str) -> tuple[int, int, int]:
    """Stored files, server keys and audit records."""
    engine = make_engine(url)
    with engine.connect() as connection:
        counts = tuple(
            connection.scalar(sa.select(sa.func.count()).select_from(model))
            for model in (TufFileRow, ServerKeyRow, AuditRow)
        )
    engine.dispose()
    return counts  # type: ignore[return-value]


@pytest.fixture(
    params=[
        pytest.param(("postgresql", "ecdsa"), id="postgresql", marks=pytest.mark.engines),
        pytest.param(("mariadb", "ed25519"), id="mariadb", marks=pytest.mark.engines),
    ]
)
def databases(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str, str]]:
    """(key algorithm, notary-server DB, notary-signer DB, our migrated DB) on one engine."""
    engine_id, algorithm = request.param
    admin = request.getfixturevalue(f"{engine_id}_admin")
    with (
        scratch_database(*admin) as notary_url,
        scratch_database(*admin) as signer_url,
        scratch_database(*admin) as our_url,
    ):
        create_notary_tables(notary_url, signer_url)
        upgrade(our_url)
        yield algorithm, notary_url, signer_url, our_url


@pytest.mark.e2e
def test_self_hosted_notary_moves_over_with_its_keys(
    databases: tuple[str, str, str, str], tmp_path: Path
) -> None:
    require_cli("notary", "install the Debian package notary")
    algorithm, notary_url, signer_url, our_url = databases
    tls = ensure_self_signed(tmp_path)
    trust = tmp_path / "trust"

    def notary_stack(default_alias: str) -> AbstractContextManager[NotaryStack]:
        return running_notary_stack(
            tmp_path / f"notary-{default_alias}",
            tls,
            notary_url,
            signer_url,
            {OLD: OLD_PASSPHRASE, CURRENT: CURRENT_PASSPHRASE},
            default_alias=default_alias,
            key_algorithm=algorithm,
        )

    # notary-signer makes APP's keys under alias OLD, then, restarted with a new default alias
    # (the old passphrase still set), MANAGED's under CURRENT.
    with notary_stack(OLD) as first:
        _publish_app(NotaryCLI(first.server.url, tls.ca_cert, trust), tmp_path)
    with notary_stack(CURRENT) as second:
        owner = NotaryCLI(second.server.url, tls.ca_cert, trust)
        _publish_managed(owner, tmp_path)
        listed = {gun: owner.list_targets(gun) for gun in (APP, MANAGED)}
        delegated = owner.list_targets(APP, "--roles", "targets/releases")
    _soft_delete_rows(notary_url, signer_url)
    roots = {gun: owner.cached(gun, "root") for gun in (APP, MANAGED)}
    before = owner.cached(APP, "timestamp")
    (timestamp_key,) = _server_keys(roots[APP], "timestamp")
    (managed_timestamp_key,) = _server_keys(roots[MANAGED], "timestamp")
    (managed_snapshot_key,) = _server_keys(roots[MANAGED], "snapshot")

    # A missing or wrong passphrase refuses the import, naming the alias; nothing is written.
    current = {"NOTARY_SIGNER_CURRENT": CURRENT_PASSPHRASE}  # as notary-signer reads it
    missing = _import(our_url, notary_url, signer_url, env=current)
    assert missing.returncode == 1, missing.stderr
    assert f"alias {OLD!r}" in missing.stderr and "NOTARY_SIGNER_OLD" in missing.stderr
    wrong = _import(our_url, notary_url, signer_url, "--signer-passphrase", "old=x", env=current)
    assert wrong.returncode == 1, wrong.stderr
    assert "does not decrypt" in wrong.stderr and f"alias {OLD!r}" in wrong.stderr
    assert _counts(our_url) == (0, 0, 0)

    given = ("--signer-passphrase", f"{OLD}={OLD_PASSPHRASE}")
    done = _import(our_url, notary_url, signer_url, *given, env=current)
    assert done.returncode == 0, done.stderr
    assert "server keys: 3 imported, 0 already held" in done.stderr
    assert GONE not in done.stdout
    assert f"{APP}: " in done.stdout and f"timestamp key {timestamp_key}" in done.stdout
    assert f"{MANAGED}: " in done.stdout and f"snapshot key {managed_snapshot_key}" in done.stdout
    assert "owner signs snapshot" in next(line for line in done.stdout.splitlines() if APP in line)
    files, keys, _ = _counts(our_url)
    assert keys == 3
    assert files == _scalar(notary_url, "SELECT count(*) FROM tuf_files WHERE deleted_at IS NULL")
    assert _scalar(our_url, "SELECT count(*) FROM server_keys WHERE last_used IS NULL") == 0

    # A re-run adds nothing.
    both = (*given, "--signer-passphrase", f"{CURRENT}={CURRENT_PASSPHRASE}")
    again = _import(our_url, notary_url, signer_url, *both, env={})
    assert again.returncode == 0, again.stderr
    assert "server keys: 0 imported, 3 already held" in again.stderr
    assert f"{APP}: 0 of " in again.stdout and f"{MANAGED}: 0 of " in again.stdout
    assert _counts(our_url)[:2] == (files, keys)

    # The same client, pointed at tufnotary-server, sees the same data and publishes; the new
    # timestamps (and the server-managed snapshot) are signed by the very same keys.
    with running_server(
        tmp_path,
        "--database",
        our_url,
        "--tls-cert",
        str(tls.cert),
        "--tls-key",
        str(tls.key),
        env={"TUFNOTARY_KEY_PASSPHRASE": OUR_PASSPHRASE},
        ca_cert=tls.ca_cert,
    ) as ours:
        client = NotaryCLI(ours.url, tls.ca_cert, tmp_path / "trust")
        assert {gun: client.list_targets(gun) for gun in (APP, MANAGED)} == listed
        assert client.list_targets(APP, "--roles", "targets/releases") == delegated
        for gun in (APP, MANAGED):
            client.run("add", "-p", gun, "v2", str(_write(tmp_path, "v2", gun.encode())))
            assert "v2" in client.list_targets(gun)
        assert key_id(server_key(ours, APP, "timestamp")) == timestamp_key
        app = fetch_json(ours, APP, "timestamp.json")
        assert [s["keyid"] for s in app["signatures"]] == [timestamp_key]
        assert app["signed"]["version"] > before["signed"]["version"]
        managed = fetch_json(ours, MANAGED, "timestamp.json")
        assert [s["keyid"] for s in managed["signatures"]] == [managed_timestamp_key]
        snapshot = fetch_json(ours, MANAGED, "snapshot.json")
        assert [s["keyid"] for s in snapshot["signatures"]] == [managed_snapshot_key]
        assert _server_keys(client.cached(APP, "root"), "timestamp") == [timestamp_key]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "server@tcp(mysql:3306)/notaryserver?parseTime=True",
            "mysql://server@mysql:3306/notaryserver",
        ),
        ("u:p@ss@tcp(db)/notarysigner", "mysql://u:p%40ss@db/notarysigner"),
        (
            "postgres://server@db:5432/notaryserver?sslmode=disable",
            "postgresql://server@db:5432/notaryserver?sslmode=disable",
        ),
        ("mariadb://root@127.0.0.1:3306/notary", "mariadb://root@127.0.0.1:3306/notary"),
    ],
)
def test_notary_storage_urls_are_accepted(given: str, expected: str) -> None:
    """notary's own storage.db_url (Go MySQL DSN, postgres://) works as well as SQLAlchemy's."""
    assert sqlalchemy_url(given) == expected


def _signer_key(private: PrivateKey, gun: str, passphrase: str = "signer") -> SignerKey:
    public = private.public
    ciphertext = signer_ciphertext(private, passphrase)
    return SignerKey(
        public.key_id,
        gun,
        "timestamp",
        public.keytype,
        public.public,
        ciphertext,
        "alias",
        None,
        None,
    )


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519"])
def test_signer_keys_are_resealed_once_and_never_for_another_gun(
    store: Stores, algorithm: str
) -> None:
    """In-process: a key comes back under our passphrase with its id, once; the same key id
    for another GUN, or a wrong passphrase, is refused."""
    private, vault = PrivateKey.generate(algorithm), KeyVault(b"ours")
    key = _signer_key(private, APP)
    sealed = new_keys(store, [key], {"alias": "signer"}, vault)
    store_keys(store, sealed)
    keys = ServerKeys(store.keys, vault, "ecdsa")
    root = Root(
        1,
        "2030-01-01T00:00:00Z",
        {key.key_id: private.public},
        {"timestamp": RoleKeys([key.key_id], 1)},
    )
    (held,) = keys.held(APP, "timestamp", root)
    assert held.key_id == key.key_id and held.private.public == private.public
    assert new_keys(store, [key], {"alias": "signer"}, vault) == []
    with pytest.raises(SignerKeyError, match="already held here for timestamp"):
        new_keys(store, [_signer_key(private, MANAGED)], {"alias": "signer"}, vault)
    with pytest.raises(SignerKeyError, match="does not decrypt with the passphrase of alias"):
        new_keys(store, [key], {"alias": "wrong"}, vault)


CORRUPT = "registry.example.com/imported/corrupt"


@dataclass(frozen=True)
class NotaryRows:
    """Scratch PostgreSQL databases: notary-server's and notary-signer's holding APP (whose
    timestamp key is ``app_key``) and CORRUPT (a file whose SHA-256 does not match), and ours,
    migrated and empty."""

    notary_url: str
    signer_url: str
    our_url: str
    app_key: PrivateKey

    def import_command(self, *guns: str) -> list[str]:
        return [
            "import",
            "--database",
            self.our_url,
            "--from-notary-db",
            self.notary_url,
            "--signer-db",
            self.signer_url,
            *guns,
        ]


@pytest.fixture
def notary_rows(postgresql_admin: tuple[sa.Connection, sa.URL]) -> Iterator[NotaryRows]:
    """Rows as notary-server and notary-signer write them (as checked against the real
    binaries above), without running them."""
    with (
        scratch_database(*postgresql_admin) as notary_url,
        scratch_database(*postgresql_admin) as signer_url,
        scratch_database(*postgresql_admin) as our_url,
    ):
        create_notary_tables(notary_url, signer_url)
        upgrade(our_url)
        keys = {gun: PrivateKey.generate() for gun in (APP, CORRUPT)}
        for gun, key in keys.items():
            files = published_files(gun, key, 2, 3)
            write_notary_rows(notary_url, signer_url, gun, files, key, (OLD, OLD_PASSPHRASE))
        engine = make_engine(notary_url)
        with engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE tuf_files SET sha256 = :zero WHERE gun = :gun AND version = 2"),
                {"zero": "0" * 64, "gun": CORRUPT},
            )
        engine.dispose()
        yield NotaryRows(notary_url, signer_url, our_url, keys[APP])


_RUNNER_ENV = {"TUFNOTARY_KEY_PASSPHRASE": OUR_PASSPHRASE, "NOTARY_SIGNER_OLD": OLD_PASSPHRASE}


@pytest.mark.engines  # PostgreSQL
def test_a_repository_failing_its_checks_is_refused_alone(notary_rows: NotaryRows) -> None:
    """A GUN whose stored file does not match its SHA-256 is refused with nothing stored, the
    others are imported; a GUN named but not held refuses the whole import."""
    runner, our_url = CliRunner(env=_RUNNER_ENV), notary_rows.our_url
    unknown = runner.invoke(
        main, notary_rows.import_command(APP, "registry.example.com/imported/none")
    )
    assert unknown.exit_code == 1
    assert "notary-server holds no GUN registry.example.com/imported/none" in unknown.output
    assert _counts(our_url) == (0, 0, 0)

    done = runner.invoke(main, notary_rows.import_command())
    assert done.exit_code == 1, done.output
    assert f"{APP}: 7 of 7 versions added" in done.output
    assert f"{CORRUPT}: refused: notary-server {CORRUPT} " in done.output
    assert "do not match the stored SHA-256" in done.output
    assert f"1 of 2 GUNs refused (none of their versions stored): {CORRUPT}" in done.output
    stored = f"SELECT count(*) FROM tuf_files WHERE gun = '{CORRUPT}'"
    assert _counts(our_url)[:2] == (7, 2) and _scalar(our_url, stored) == 0

    only = runner.invoke(main, notary_rows.import_command(APP))
    assert only.exit_code == 0, only.output
    assert f"{APP}: 0 of 7 versions added" in only.output and CORRUPT not in only.output


@pytest.mark.engines  # PostgreSQL
def test_an_imported_timestamp_is_re_signed_with_the_imported_key(
    notary_rows: NotaryRows, tmp_path: Path
) -> None:
    """A read that finds the imported timestamp about to expire re-signs it with the key
    notary-signer held (spec 2.8), not a new one."""
    imported = CliRunner(env=_RUNNER_ENV).invoke(main, notary_rows.import_command(APP))
    assert imported.exit_code == 0, imported.output
    settings = Settings(
        data_dir=tmp_path,
        database_url=notary_rows.our_url,
        key_passphrase=OUR_PASSPHRASE,
        log_level="error",
    )
    app = create_app(settings)
    server_context(app).service.refresh_margin = timedelta(days=15)  # 14-day timestamps
    response = app.test_client().get(f"/v2/{APP}/_trust/tuf/timestamp.json")
    assert response.status_code == 200
    timestamp = Metadata.from_bytes(response.data, Timestamp)
    assert timestamp.signed.version == 3  # the import stored versions 1 and 2
    public = notary_rows.app_key.public
    verify_threshold(timestamp, {public.key_id: public}, 1, TIMESTAMP)
    assert [signature.keyid for signature in timestamp.signatures] == [public.key_id]


@pytest.mark.engines  # PostgreSQL
def test_a_gun_the_api_could_not_serve_is_refused_with_its_keys(notary_rows: NotaryRows) -> None:
    """Rows of a GUN with '..' and control characters: refused (printed escaped), neither its
    files nor its signer key stored, the others imported."""
    hostile = "registry.example.com/../\x1b[2Jevil"
    key = PrivateKey.generate()
    files = published_files(hostile, key, 1, 1)
    write_notary_rows(
        notary_rows.notary_url, notary_rows.signer_url, hostile, files, key, (OLD, OLD_PASSPHRASE)
    )
    done = CliRunner(env=_RUNNER_ENV).invoke(main, notary_rows.import_command())
    assert done.exit_code == 1, done.output
    assert f"{hostile!a}: refused: invalid repository name: contains '..'" in done.output
    assert "\x1b" not in done.output and f"{APP}: 7 of 7 versions added" in done.output
    stored = sa.text("SELECT count(*) FROM tuf_files WHERE gun = :gun")
    keys = sa.text("SELECT count(*) FROM server_keys WHERE gun = :gun")
    engine = make_engine(notary_rows.our_url)
    with engine.connect() as connection:
        assert connection.execute(stored, {"gun": hostile}).scalar() == 0
        assert connection.execute(keys, {"gun": hostile}).scalar() == 0
    engine.dispose()
