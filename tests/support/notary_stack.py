"""A self-hosted Notary: the reference notary-server with its trust service remote to the
reference notary-signer (gRPC over TLS), both on PostgreSQL or MariaDB (Debian's binaries lack
the sqlite3 driver).

Notary 0.7 ships its schema as SQL migrations outside the Debian package, and neither binary
creates its tables; ``create_notary_tables`` makes them as spec 5.1 and 5.2 describe them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwcrypto import jwe, jwk

from support.reference import launched_reference, reference_environment, require_reference_binary
from support.repo import RepoBuilder, expires_in, signed_bytes
from support.server import ServerInfo, free_port, launched
from tufnotary.metadata.model import ROOT, SNAPSHOT, TARGETS, TIMESTAMP, FileMeta, Timestamp
from tufnotary.metadata.signing import PrivateKey
from tufnotary.server.storage.engine import make_engine
from tufnotary.server.storage.metadata import NewFile
from tufnotary.server.tls import TLSFiles

SIGNER_BINARY = "/usr/bin/notary-signer"
SIGNER_ENV_PREFIX = "NOTARY_SIGNER_"  # its passphrases (one per alias) and config overrides
STARTUP_TIMEOUT = 30.0

_POSTGRES = (
    "CREATE TABLE tuf_files (id serial PRIMARY KEY, created_at timestamp, updated_at timestamp,"
    " deleted_at timestamp, gun varchar(255) NOT NULL, role varchar(255) NOT NULL,"
    " version integer NOT NULL, data bytea NOT NULL, sha256 char(64),"
    " UNIQUE (gun, role, version))",
    "CREATE INDEX tuf_files_sha256_idx ON tuf_files (sha256)",
    "CREATE TABLE changefeed (id serial PRIMARY KEY, created_at timestamp DEFAULT now(),"
    " gun varchar(255) NOT NULL, version integer NOT NULL, sha256 char(64),"
    " category varchar(20) NOT NULL DEFAULT 'update')",
    "CREATE INDEX idx_changefeed_gun ON changefeed (gun)",
)
_MYSQL = (
    "CREATE TABLE tuf_files (id int AUTO_INCREMENT PRIMARY KEY, created_at datetime NULL,"
    " updated_at datetime NULL, deleted_at datetime NULL, gun varchar(255) NOT NULL,"
    " role varchar(255) NOT NULL, version int NOT NULL, data longblob NOT NULL,"
    " sha256 char(64), UNIQUE KEY idx_gun (gun, role, version), KEY idx_sha256 (sha256))",
    "CREATE TABLE changefeed (id int AUTO_INCREMENT PRIMARY KEY,"
    " created_at datetime DEFAULT CURRENT_TIMESTAMP, gun varchar(255) NOT NULL,"
    " version int NOT NULL, sha256 char(64), category varchar(20) NOT NULL DEFAULT 'update',"
    " KEY idx_changefeed_gun (gun))",
)
# notary-server 0.7 does not create its tables; these are its gorm models' (spec 5.1).
NOTARY_SERVER_TABLES = {"postgresql": _POSTGRES, "mysql": _MYSQL, "mariadb": _MYSQL}
_SIGNER_TABLE = (
    "CREATE TABLE private_keys (id {serial} PRIMARY KEY, created_at {time} NULL,"
    " updated_at {time} NULL, deleted_at {time} NULL, key_id varchar(255) NOT NULL,"
    " encryption_alg varchar(255) NOT NULL, keywrap_alg varchar(255) NOT NULL,"
    " algorithm varchar(50) NOT NULL, passphrase_alias varchar(50) NOT NULL,"
    " public {blob} NOT NULL, private {blob} NOT NULL, gun varchar(255) NOT NULL,"
    " role varchar(255) NOT NULL, last_used {time} NULL DEFAULT NULL,"
    " UNIQUE (key_id), UNIQUE (key_id, algorithm))"
)
_TYPES = {
    "postgresql": {"serial": "serial", "time": "timestamp", "blob": "bytea"},
    "mysql": {"serial": "int AUTO_INCREMENT", "time": "datetime", "blob": "blob"},
    "mariadb": {"serial": "int AUTO_INCREMENT", "time": "datetime", "blob": "blob"},
}


def signer_ciphertext(private: PrivateKey, passphrase: str) -> str:
    """``private`` as notary-signer stores it (spec 5.2): SEC1 DER (ECDSA) or public || seed ||
    public (Ed25519), in a JWE compact serialization (PBES2-HS256+A128KW, A256GCM)."""
    key = private.crypto_key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = serialization.Encoding.Raw
        seed = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
        plaintext = public + seed + public
    else:
        plaintext = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    token = jwe.JWE(plaintext, protected={"alg": "PBES2-HS256+A128KW", "enc": "A256GCM"})
    token.add_recipient(jwk.JWK.from_password(passphrase))
    return token.serialize(compact=True)


def published_files(
    gun: str, timestamp_key: PrivateKey, publishes: int, tags_per_publish: int
) -> list[NewFile]:
    """The files notary-server stores for ``gun`` after ``publishes`` publishes that each add
    ``tags_per_publish`` tags (new targets, snapshot and timestamp versions, signed as the Go
    client and the server sign them; the owner holds the snapshot key)."""
    repo = RepoBuilder(gun, timestamp_key.public)
    files = [NewFile(ROOT, 1, repo.root_bytes())]
    for version in range(1, publishes + 1):
        for tag in range(tags_per_publish):
            name = f"v{version}.{tag}"
            repo.add_target(name, name.encode())
        targets = repo.targets_bytes()
        files.append(NewFile(TARGETS, repo.targets[TARGETS].version, targets))
        snapshot = repo.snapshot_bytes()
        files.append(NewFile(SNAPSHOT, repo.snapshot.version, snapshot))
        timestamp = Timestamp(version, expires_in(14), meta={SNAPSHOT: FileMeta.of(snapshot)})
        data = signed_bytes(timestamp, (timestamp_key, None))
        files.append(NewFile(TIMESTAMP, version, data))
    return files


def write_notary_rows(
    server_url: str,
    signer_url: str,
    gun: str,
    files: Sequence[NewFile],
    timestamp_key: PrivateKey,
    passphrases: tuple[str, str],
) -> None:
    """Store ``files`` as notary-server does (``tuf_files``, a ``changefeed`` row per
    timestamp) and ``timestamp_key`` as notary-signer does, under ``passphrases`` (alias,
    passphrase)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {"created_at": now, "updated_at": now, "gun": gun, "role": f.role, "version": f.version}
        | {"data": f.data, "sha256": hashlib.sha256(f.data).hexdigest()}
        for f in files
    ]
    changes = [
        {"gun": gun, "version": row["version"], "sha256": row["sha256"], "category": "update"}
        for row in rows
        if row["role"] == TIMESTAMP
    ]
    alias, passphrase = passphrases
    public = timestamp_key.public
    key = {"created_at": now, "updated_at": now, "key_id": public.key_id, "gun": gun}
    key |= {"encryption_alg": "A256GCM", "keywrap_alg": "PBES2-HS256+A128KW"}
    key |= {"algorithm": public.keytype, "passphrase_alias": alias, "public": public.public}
    key |= {"private": signer_ciphertext(timestamp_key, passphrase).encode()}
    key |= {"role": TIMESTAMP, "last_used": now}
    for url, table, values in (
        (server_url, "tuf_files", rows),
        (server_url, "changefeed", changes),
        (signer_url, "private_keys", [key]),
    ):
        engine = make_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.table(table, *map(sa.column, values[0])).insert(), values)
        engine.dispose()


def create_notary_tables(server_url: str, signer_url: str) -> None:
    """notary-server's tables in ``server_url``, notary-signer's in ``signer_url``."""
    for url, signer in ((server_url, False), (signer_url, True)):
        engine = make_engine(url)
        try:
            with engine.begin() as connection:
                dialect = connection.dialect.name
                statements = (
                    (_SIGNER_TABLE.format(**_TYPES[dialect]),)
                    if signer
                    else NOTARY_SERVER_TABLES[dialect]
                )
                for statement in statements:
                    connection.exec_driver_sql(statement)
        finally:
            engine.dispose()


def go_storage(url: str) -> dict[str, str]:
    """The notary storage settings (backend, Go DSN) of a SQLAlchemy database URL."""
    parsed = sa.make_url(url)
    user = parsed.username or ""
    if parsed.password:
        user += f":{parsed.password}"
    if parsed.get_backend_name() == "postgresql":
        dsn = f"postgres://{user}@{parsed.host}:{parsed.port or 5432}/{parsed.database}"
        return {"backend": "postgres", "db_url": dsn + "?sslmode=disable"}
    dsn = f"{user}@tcp({parsed.host}:{parsed.port or 3306})/{parsed.database}?parseTime=True"
    return {"backend": "mysql", "db_url": dsn}


@dataclass(frozen=True)
class NotaryStack:
    """A running notary-server (``server``) backed by notary-signer at ``signer_port``."""

    server: ServerInfo
    signer_port: int


def _wait_for_port(port: int, process: subprocess.Popen[bytes], process_log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"notary-signer not listening on {port}:\n{process_log.read_text()}"
                ) from None
            time.sleep(0.1)


@contextmanager
def running_notary_stack(
    directory: Path,
    tls: TLSFiles,
    server_url: str,
    signer_url: str,
    passphrases: Mapping[str, str],
    *,
    default_alias: str,
    key_algorithm: str = "ecdsa",
) -> Iterator[NotaryStack]:
    """notary-signer (keys in ``signer_url``, encrypted under ``passphrases[default_alias]``)
    and notary-server (metadata in ``server_url``, trust service remote to that signer over
    TLS, new server keys of ``key_algorithm``), both with the TLS files ``tls``; the tables
    must exist. Skips without the binaries (fails when CI=true)."""
    binary = require_reference_binary()
    if not os.access(SIGNER_BINARY, os.X_OK):
        import pytest

        pytest.fail(f"{SIGNER_BINARY} is missing: install the Debian package notary")
    directory.mkdir(parents=True, exist_ok=True)
    signer_port = free_port()
    signer_config = directory / "signer-config.json"
    signer_config.write_text(
        json.dumps(
            {
                "server": {
                    "grpc_addr": f"127.0.0.1:{signer_port}",
                    "tls_cert_file": str(tls.cert),
                    "tls_key_file": str(tls.key),
                },
                "storage": go_storage(signer_url) | {"default_alias": default_alias},
                "logging": {"level": "info"},
            }
        )
    )
    signer_env = {k: v for k, v in os.environ.items() if not k.startswith(SIGNER_ENV_PREFIX)}
    signer_env |= {f"{SIGNER_ENV_PREFIX}{alias.upper()}": p for alias, p in passphrases.items()}
    signer_log = directory / "notary-signer.log"
    trust_service = {
        "type": "remote",
        "hostname": "127.0.0.1",
        "port": str(signer_port),
        "key_algorithm": key_algorithm,
        "tls_ca_file": str(tls.ca_cert),
    }
    with launched([SIGNER_BINARY, "-config", str(signer_config)], signer_log, signer_env) as p:
        _wait_for_port(signer_port, p, signer_log)
        with launched_reference(
            directory,
            tls,
            binary=binary,
            env=reference_environment(),
            storage=go_storage(server_url),
            trust_service=trust_service,
        ) as server:
            yield NotaryStack(server, signer_port)
