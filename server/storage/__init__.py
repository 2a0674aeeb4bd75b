"""The server's SQL database: one store per kind of data on a shared engine.

``engine`` (engine, transactions, errors), ``models`` (the schema), and the stores:
``metadata`` (TUF files and changefeed), ``keys`` (server and token-signing keys), ``audit``,
``realm`` (users, groups, rules) and ``ratelimit`` (rate-limit events).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from tufnotary.server.storage.audit import AuditLog
from tufnotary.server.storage.engine import Database, make_engine
from tufnotary.server.storage.keys import ServerKeyStore, TokenKeyStore
from tufnotary.server.storage.metadata import MetadataStore
from tufnotary.server.storage.ratelimit import RateEvents
from tufnotary.server.storage.realm import RealmStore


@dataclass(frozen=True)
class Stores:
    """Every store on one database."""

    database: Database
    metadata: MetadataStore
    keys: ServerKeyStore
    token_keys: TokenKeyStore
    audit: AuditLog
    realm: RealmStore
    rate_events: RateEvents

    @classmethod
    def on(cls, engine: Engine) -> Stores:
        """The stores on ``engine``."""
        database = Database(engine)
        return cls(
            database,
            MetadataStore(database),
            ServerKeyStore(database),
            TokenKeyStore(database),
            AuditLog(database),
            RealmStore(database),
            RateEvents(database),
        )

    @classmethod
    def from_url(cls, url: str) -> Stores:
        """The stores on a new engine for ``url`` (see :func:`make_engine`)."""
        return cls.on(make_engine(url))

    @property
    def engine(self) -> Engine:
        return self.database.engine
