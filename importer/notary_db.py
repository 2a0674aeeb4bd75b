"""Reading a self-hosted Notary's databases (spec 5.1, 5.2): notary-server's ``tuf_files`` and
notary-signer's ``private_keys``, on PostgreSQL, MySQL/MariaDB or SQLite. Rows the ORM
soft-deleted (``deleted_at`` set) do not exist for Notary and are skipped here too.

Notary's ``changefeed`` is not read: the import gives each imported timestamp version a new
changefeed entry on this server (MetadataStore.add_versions), since the change IDs are this
server's own sequence (see README, "From a self-hosted Notary").
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from tufnotary.importer.signer_keys import SignerKey
from tufnotary.server.storage.engine import make_engine
from tufnotary.server.storage.metadata import NewFile

# A Go MySQL DSN as notary's storage.db_url holds it: user[:password]@tcp(host[:port])/db[?...]
# (the password is literal, up to the last "@tcp(")
_GO_MYSQL = re.compile(
    r"(?P<user>[^:@/]*)(?::(?P<password>.*))?@tcp\((?P<address>[^)]*)\)/(?P<db>[^?]+)"
)

_TUF_FILES = sa.table(
    "tuf_files",
    *(sa.column(name) for name in ("gun", "role", "version", "data", "sha256", "deleted_at")),
)
_PRIVATE_KEYS = sa.table(
    "private_keys",
    *(
        sa.column(name)
        for name in (
            "key_id",
            "gun",
            "role",
            "algorithm",
            "public",
            "private",
            "passphrase_alias",
            "created_at",
            "last_used",
            "deleted_at",
        )
    ),
)


class NotaryDatabaseError(Exception):
    """A Notary database cannot be read, or holds something Notary would not have written."""


class BadNotaryFile(NotaryDatabaseError):
    """A stored file fails its checks (SHA-256, JSON, version): its GUN cannot be imported."""


def sqlalchemy_url(url: str) -> str:
    """A SQLAlchemy URL for ``url``, which may also be notary's own ``storage.db_url`` (a Go
    MySQL DSN, or ``postgres://``)."""
    go_mysql = _GO_MYSQL.fullmatch(url.split("?", 1)[0])
    if go_mysql:
        host, _, port = go_mysql["address"].partition(":")
        return sa.URL.create(
            "mysql",
            username=go_mysql["user"] or None,
            password=go_mysql["password"],
            host=host or "127.0.0.1",
            port=int(port) if port else None,
            database=go_mysql["db"],
        ).render_as_string(hide_password=False)
    if url.startswith("postgres://"):
        return "postgresql://" + url.removeprefix("postgres://")
    return url


@contextmanager
def connected(url: str, what: str) -> Iterator[Connection]:
    """A connection to the database at ``url`` (the import only reads it); its errors become
    NotaryDatabaseError."""
    try:
        parsed = sa.make_url(sqlalchemy_url(url))
    except sa.exc.ArgumentError as exc:
        raise NotaryDatabaseError(f"{what}: not a database URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise NotaryDatabaseError(f"{what}: no such SQLite file: {parsed.database}")
    engine = make_engine(parsed.render_as_string(hide_password=False))
    try:
        with engine.connect() as connection:
            yield connection
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise NotaryDatabaseError(f"{what} {parsed!r}: {reason}") from None
    finally:
        engine.dispose()


def read_guns(connection: Connection) -> list[str]:
    """Every GUN notary-server holds metadata for, sorted."""
    query = sa.select(_TUF_FILES.c.gun).where(_TUF_FILES.c.deleted_at.is_(None)).distinct()
    return sorted(connection.execute(query).scalars())


def read_files(connection: Connection, gun: str) -> list[NewFile]:
    """Every stored version of every role of ``gun``, checked: each file's SHA-256 is the one
    stored with it, and it is JSON metadata whose ``signed.version`` is its row's version."""
    columns = _TUF_FILES.c
    query = (
        sa.select(columns.role, columns.version, columns.data, columns.sha256)
        .where(columns.gun == gun, columns.deleted_at.is_(None))
        .order_by(columns.role, columns.version)
    )
    files = []
    for role, version, data, sha256 in connection.execute(query):
        data = bytes(data)
        what = f"notary-server {gun} {role} version {version}"
        if sha256 and sha256.strip() != hashlib.sha256(data).hexdigest():
            raise BadNotaryFile(f"{what}: its bytes do not match the stored SHA-256")
        try:
            stated = json.loads(data)["signed"]["version"]
        except (ValueError, TypeError, KeyError) as exc:
            raise BadNotaryFile(f"{what}: not TUF metadata ({exc!r})") from None
        if stated != version:
            raise BadNotaryFile(f"{what}: the file says version {stated}")
        files.append(NewFile(role, version, data))
    return files


def read_signer_keys(connection: Connection, guns: Sequence[str] | None) -> list[SignerKey]:
    """notary-signer's keys (of ``guns`` when given), by GUN, role and creation."""
    columns = _PRIVATE_KEYS.c
    query = (
        sa.select(*(column for column in columns if column.name != "deleted_at"))
        .where(columns.deleted_at.is_(None))
        .order_by(columns.gun, columns.role, columns.created_at, columns.key_id)
    )
    if guns is not None:
        query = query.where(columns.gun.in_(guns))
    return [
        SignerKey(
            **dict(row._mapping) | {"public": bytes(row.public), "private": _text(row.private)}
        )
        for row in connection.execute(query)
    ]


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else bytes(value).decode("ascii", "replace")
