"""The built-in token realm (auth_mode ``builtin``): who may do what.

The server is its own registry-style token service. Users have bcrypt passwords (in the
database, or read-only from an htpasswd file), may belong to groups, and get access through
rules that map GUN glob patterns to actions for a subject ``user:NAME`` or ``group:NAME``.

GUN patterns are segment-aware globs: ``*`` matches any run of characters except ``/`` (so
``registry.example.com/team-a/*`` covers ``registry.example.com/team-a/app`` but not
``registry.example.com/team-a/sub/app``), ``**`` matches any run of characters including
``/`` (``registry.example.com/team-a/**`` covers both), ``?`` matches one character except
``/``; everything else, ``[`` included, is literal and compared exactly (case counts).

Actions are ``pull``, ``push`` and ``*``; a rule's ``*`` grants every action, but asking for
``*`` needs a rule granting ``*`` (push and pull together are not ``*``, as in token mode).
Administrators, who also get ``registry:catalog:*`` (``/v2/``, the global changefeed, the
audit log), are the subjects of a rule with pattern ``**`` and action ``*``.

A token request without credentials is the user ``anonymous``: it gets only what rules for
``user:anonymous`` grant (nothing unless such a rule exists); no stored user may take that
name.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bcrypt
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tufnotary.server.auth import PublicKey, TokenAuth, TokenError, libtrust_key_id
from tufnotary.server.ratelimit import RateLimit
from tufnotary.server.signer import KeyVault
from tufnotary.server.storage import Stores
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.keys import TOKEN_KEY_GUN, TOKEN_KEY_ROLE, TokenKey, TokenKeyStore
from tufnotary.server.storage.realm import UserExists

log = logging.getLogger(__name__)

ACTIONS = ("pull", "push", "*")
ANONYMOUS = "anonymous"
ADMIN_PATTERN = "**"
DEFAULT_SERVICE = DEFAULT_ISSUER = "tufnotary"
DEFAULT_LIFETIME = 300
DEFAULT_ROUNDS = 12
FAILED_LOGIN_LIMIT = 10
"""Failed logins per user name and per client address within FAILED_LOGIN_WINDOW seconds."""
FAILED_LOGIN_WINDOW = 60
MAX_NAME = 255
_HTPASSWD_PREFIXES = ("$2y$", "$2b$", "$2a$")


class RealmError(ValueError):
    """A user, group, rule or pattern is malformed, or a user is unknown or already exists."""


# -- names, subjects, patterns and actions ------------------------------------------------------


def check_name(name: str, what: str = "user name") -> str:
    """1-255 characters, no ':' (basic credentials split on it), no whitespace or controls."""
    if not name or len(name) > MAX_NAME:
        raise RealmError(f"{what} must have 1-{MAX_NAME} characters")
    if ":" in name or any(char.isspace() or not char.isprintable() for char in name):
        raise RealmError(f"{what} {name!r} contains ':', whitespace or control characters")
    return name


def check_subject(subject: str) -> str:
    """``user:NAME`` or ``group:NAME``."""
    kind, _, name = subject.partition(":")
    if kind not in ("user", "group"):
        raise RealmError(f"subject {subject!r} must be user:NAME or group:NAME")
    check_name(name, f"{kind} name")
    return subject


def check_pattern(pattern: str) -> str:
    """A GUN glob: 1-255 characters, no whitespace or control characters."""
    if not pattern or len(pattern) > MAX_NAME:
        raise RealmError(f"pattern must have 1-{MAX_NAME} characters")
    if any(char.isspace() or not char.isprintable() for char in pattern):
        raise RealmError(f"pattern {pattern!r} contains whitespace or control characters")
    return pattern


def parse_actions(actions: str | Iterable[str]) -> tuple[str, ...]:
    """Comma-separated (or listed) actions among pull, push and *, deduplicated, in order."""
    items = actions.split(",") if isinstance(actions, str) else list(actions)
    parsed = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not parsed or any(action not in ACTIONS for action in parsed):
        raise RealmError(f"actions must be among {', '.join(ACTIONS)}, got {actions!r}")
    return parsed


def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in re.split(r"(\*\*|\*|\?)", pattern):
        parts.append(
            {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token)) if token else ""
        )
    return re.compile("".join(parts), re.DOTALL)


def gun_matches(pattern: str, gun: str) -> bool:
    """Whether ``gun`` matches the segment-aware glob ``pattern`` (see the module doc)."""
    return _glob_regex(pattern).fullmatch(gun) is not None


@dataclass(frozen=True)
class Rule:
    """An access rule; ``id`` is None for rules of the configuration file."""

    subject: str
    pattern: str
    actions: tuple[str, ...]
    id: int | None = None

    @classmethod
    def make(cls, subject: str, pattern: str, actions: str | Iterable[str]) -> Rule:
        """A checked rule."""
        return cls(check_subject(subject), check_pattern(pattern), parse_actions(actions))

    def grants(self, gun: str, action: str) -> bool:
        return ("*" in self.actions or action in self.actions) and gun_matches(self.pattern, gun)

    @property
    def admin(self) -> bool:
        return self.pattern == ADMIN_PATTERN and "*" in self.actions


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """``type:name:a,b`` (the name may contain ':') as (type, name, actions)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, [a for a in actions.split(",") if a]


def grant(rules: Sequence[Rule], scopes: Iterable[str]) -> list[dict[str, Any]]:
    """The ``access`` claim: the intersection of the requested scopes and what rules allow.

    ``repository:GUN:ACTIONS`` keeps each asked action some rule grants on GUN;
    ``registry:catalog:*`` is kept for administrators; anything else is dropped.
    """
    access: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        kind, name, wanted = parse_scope(scope)
        if kind == "repository" and name:
            allowed = [a for a in wanted if a in ACTIONS and any(r.grants(name, a) for r in rules)]
        elif (kind, name) == ("registry", "catalog"):
            allowed = [a for a in wanted if a == "*" and any(r.admin for r in rules)]
        else:
            allowed = []
        if allowed:
            actions = access.setdefault((kind, name), [])
            actions.extend(a for a in allowed if a not in actions)
    return [{"type": t, "name": n, "actions": a} for (t, n), a in access.items()]


# -- passwords ----------------------------------------------------------------------------------


def hash_password(password: str, rounds: int = DEFAULT_ROUNDS) -> str:
    """A bcrypt (``$2b$``) hash of the password."""
    if not password:
        raise RealmError("the password is empty")
    if len(password.encode()) > 72:
        raise RealmError("bcrypt passwords are limited to 72 bytes")
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def read_htpasswd(path: Path) -> dict[str, str]:
    """``name:hash`` lines of bcrypt entries; other lines and hash types are skipped (logged)."""
    users: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith(_HTPASSWD_PREFIXES):
            log.warning("%s:%d: not a bcrypt htpasswd entry, skipped", path, number)
            continue
        users.setdefault(name, hashed)
    return users


# -- token-signing keys ---------------------------------------------------------------------------


def _context(key_id: str) -> bytes:
    return f"{key_id}\0{TOKEN_KEY_GUN}\0{TOKEN_KEY_ROLE}".encode()


class TokenKeys:
    """The realm's ECDSA P-256 token-signing keys, in token_keys encrypted by the KeyVault.

    The newest key signs; every stored key verifies (``kid`` = its libtrust id). Rotation adds a
    key, so tokens signed before stay valid until they expire; retiring deletes a key. Workers
    reread the list every ``refresh`` seconds, and at most once a second for an unknown kid.
    """

    def __init__(self, store: TokenKeyStore, vault: KeyVault, refresh: float = 30.0) -> None:
        self._store, self._vault, self._refresh = store, vault, refresh
        self._public: dict[str, PublicKey] = {}
        self._private: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._current: str | None = None
        self._loaded = -1e9
        self._lock = threading.Lock()

    def _load(self) -> None:
        stored = self._store.all()
        public: dict[str, PublicKey] = {}
        for key in stored:
            loaded = serialization.load_der_public_key(key.public)
            if isinstance(loaded, PublicKey):
                public[key.key_id] = loaded
        self._public = public
        self._current = stored[-1].key_id if stored else None
        self._loaded = time.monotonic()

    def reload(self) -> None:
        """Reread the key list now (workers also do every ``refresh`` seconds)."""
        with self._lock:
            self._load()

    def _fresh(self, max_age: float) -> None:
        if time.monotonic() - self._loaded > max_age:
            self._load()

    def create(self) -> str:
        """A new key that signs from now on; returns its kid."""
        private = ec.generate_private_key(ec.SECP256R1())
        kid = libtrust_key_id(private.public_key())
        pkcs8 = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        spki = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        blob = self._vault.encrypt(pkcs8, _context(kid))
        now = datetime.now(UTC)
        self._store.add(TokenKey(kid, "ecdsa", spki, blob, now))
        with self._lock:
            self._private[kid] = private
            self._load()
        return kid

    def kids(self) -> list[str]:
        """Every usable kid, oldest first (the last one signs)."""
        with self._lock:
            self._load()
            return list(self._public)

    def signing_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """The newest key (created if there is none) and its kid."""
        with self._lock:
            self._fresh(self._refresh)
            current = self._current
        if current is None:
            current = self.create()
        with self._lock:
            private = self._private.get(current)
            if private is None:
                stored = self._store.get(current)
                if stored is None:
                    raise TokenError(f"token key {current} vanished")
                loaded = serialization.load_der_private_key(
                    self._vault.decrypt(stored.private, _context(current)), None
                )
                if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                    raise TokenError(f"token key {current} is not an EC key")
                private = self._private.setdefault(current, loaded)
        return current, private

    def public(self, kid: str) -> PublicKey | None:
        """The verifying key named ``kid``, if it is a (non-retired) realm key."""
        with self._lock:
            self._fresh(self._refresh)
            if kid not in self._public:
                self._fresh(1.0)
            return self._public.get(kid)


@dataclass(frozen=True)
class RealmTokenAuth(TokenAuth):
    """TokenAuth for tokens the realm issued itself: only ``kid`` naming a realm key."""

    keys: TokenKeys | None = field(default=None, compare=False)

    def for_host(self, host: str) -> RealmTokenAuth:
        """With the challenge realm ``https://<host>/auth/token`` (the reference's
        ``autoredirect``)."""
        return dataclasses.replace(self, realm=f"https://{host}/auth/token")

    def _signing_key(self, header: Mapping[str, Any]) -> PublicKey:
        kid = header.get("kid")
        if "x5c" in header or "jwk" in header or not isinstance(kid, str) or not kid:
            raise TokenError("realm tokens name their key by kid only")
        key = self.keys.public(kid) if self.keys is not None else None
        if key is None:
            raise TokenError(f"kid {kid!r} is not a realm key")
        return key


# -- the realm --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    issued_at: datetime


class Realm:
    """Authenticates users, intersects requested scopes with their rules and issues tokens."""

    def __init__(
        self,
        store: Stores,
        keys: TokenKeys,
        *,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        lifetime: int = DEFAULT_LIFETIME,
        htpasswd: Path | None = None,
        rules: Sequence[Rule] = (),
        rounds: int = DEFAULT_ROUNDS,
    ) -> None:
        self.store, self.keys = store, keys
        self.service, self.issuer, self.lifetime = service, issuer, lifetime
        self.htpasswd, self.config_rules, self.rounds = htpasswd, tuple(rules), rounds
        self.failed_logins = RateLimit(
            store.rate_events, "login", FAILED_LOGIN_LIMIT, FAILED_LOGIN_WINDOW
        )
        self.bcrypt_checks = 0  # how many passwords were checked (tests: both paths hash)
        self._htpasswd_users: dict[str, str] = {}
        self._htpasswd_stamp: tuple[float, int] | None = None
        self._dummy: bytes | None = None
        self._lock = threading.Lock()

    @property
    def verifier(self) -> RealmTokenAuth:
        return RealmTokenAuth(
            "", self.service, self.issuer, (), max_lifetime=self.lifetime, keys=self.keys
        )

    # -- users ------------------------------------------------------------------------------

    def _htpasswd_hash(self, name: str) -> str | None:
        if self.htpasswd is None:
            return None
        try:
            stat = self.htpasswd.stat()
            stamp = (stat.st_mtime, stat.st_size)
            with self._lock:
                if stamp != self._htpasswd_stamp:
                    self._htpasswd_users = read_htpasswd(self.htpasswd)
                    self._htpasswd_stamp = stamp
                return self._htpasswd_users.get(name)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read the htpasswd file %s: %s", self.htpasswd, exc)
            return None

    def _dummy_hash(self) -> bytes:
        if self._dummy is None:
            self._dummy = bcrypt.hashpw(uuid.uuid4().bytes, bcrypt.gensalt(self.rounds))
        return self._dummy

    def password_hash(self, name: str) -> str | None:
        """The stored hash of a database user, else of an htpasswd user, else None."""
        if name == ANONYMOUS:
            return None
        stored = self.store.realm.password_hash(name)
        return stored if stored is not None else self._htpasswd_hash(name)

    def authenticate(self, name: str, password: str) -> bool:
        """Whether the password is the user's; an unknown user costs one bcrypt check too."""
        stored = self.password_hash(name)
        hashed = stored.encode() if stored else self._dummy_hash()
        secret = password.encode()[:72]
        self.bcrypt_checks += 1
        try:
            matches = bcrypt.checkpw(secret, hashed)
        except ValueError:
            log.warning("unusable password hash of user %r", name)
            matches = False
        return matches and stored is not None

    # -- rights -------------------------------------------------------------------------------

    def rules_for(self, user: str) -> list[Rule]:
        """The rules that apply to ``user`` (``anonymous`` for no credentials): its own and
        its groups', from the database and the configuration."""
        subjects = [f"user:{user}"]
        if user != ANONYMOUS:
            subjects += [f"group:{group}" for group in self.store.realm.groups_of(user)]
        stored = [
            Rule(r.subject, r.pattern, tuple(r.actions.split(",")), r.id)
            for r in self.store.realm.rules(subjects)
        ]
        return stored + [rule for rule in self.config_rules if rule.subject in subjects]

    def granted(self, user: str, scopes: Iterable[str]) -> list[dict[str, Any]]:
        """The access claim for ``user``: requested ∩ allowed."""
        return grant(self.rules_for(user or ANONYMOUS), scopes)

    def issue(self, user: str, access: list[dict[str, Any]]) -> Issued:
        """A signed token for ``user`` ("" when anonymous) with ``access``."""
        kid, private = self.keys.signing_key()
        now = datetime.now(UTC).replace(microsecond=0)
        stamp = int(now.timestamp())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": stamp + self.lifetime,
            "nbf": stamp - 1,
            "iat": stamp,
            "jti": base64.urlsafe_b64encode(hashlib.sha256(uuid.uuid4().bytes).digest()[:18])
            .decode()
            .rstrip("="),
            "access": access,
        }
        token = jwt.encode(claims, private, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})
        return Issued(token, self.lifetime, now)


# -- administration (the command line) -----------------------------------------------------------


def _entry(actor: str, action: str, **detail: Any) -> AuditEntry:
    return AuditEntry(actor, action, None, detail)


def add_user(
    store: Stores,
    name: str,
    password: str,
    groups: Sequence[str] = (),
    *,
    actor: str = "cli",
    rounds: int = DEFAULT_ROUNDS,
) -> None:
    """Create a database user; RealmError if the name is taken or malformed."""
    check_name(name)
    if name == ANONYMOUS:
        raise RealmError(f"{ANONYMOUS!r} names requests without credentials")
    for group in groups:
        check_name(group, "group name")
    hashed = hash_password(password, rounds)
    entry = _entry(actor, "user-add", user=name, groups=sorted(set(groups)))
    try:
        store.realm.add_user(name, hashed, groups, entry)
    except UserExists:
        raise RealmError(f"user {name!r} exists already") from None


def set_password(
    store: Stores,
    name: str,
    password: str,
    *,
    actor: str = "cli",
    rounds: int = DEFAULT_ROUNDS,
) -> None:
    """Change a database user's password; RealmError if there is no such user."""
    hashed = hash_password(password, rounds)
    if not store.realm.set_password(name, hashed, _entry(actor, "user-passwd", user=name)):
        raise RealmError(f"no user {name!r} in the database")


def remove_user(store: Stores, name: str, *, actor: str = "cli") -> None:
    """Delete a database user and its memberships (rules naming it stay)."""
    if not store.realm.remove_user(name, _entry(actor, "user-remove", user=name)):
        raise RealmError(f"no user {name!r} in the database")


def set_member(store: Stores, group: str, user: str, member: bool, *, actor: str = "cli") -> bool:
    """Add a user (database or htpasswd) to a group, or remove it; False if it already was."""
    check_name(group, "group name")
    check_name(user)
    action = "group-add" if member else "group-remove"
    return store.realm.set_member(
        group, user, member, _entry(actor, action, group=group, user=user)
    )


def add_rule(store: Stores, subject: str, pattern: str, actions: str, *, actor: str = "cli") -> int:
    """Store a checked rule; returns its id."""
    rule = Rule.make(subject, pattern, actions)
    joined = ",".join(rule.actions)
    entry = _entry(actor, "rule-add", subject=rule.subject, pattern=rule.pattern, actions=joined)
    return store.realm.add_rule(rule.subject, rule.pattern, joined, entry)


def remove_rule(store: Stores, rule_id: int, *, actor: str = "cli") -> None:
    if store.realm.remove_rule(rule_id, _entry(actor, "rule-remove", rule=rule_id)) is None:
        raise RealmError(f"no rule {rule_id} in the database")


def rotate_token_key(store: Stores, vault: KeyVault, *, actor: str = "cli") -> str:
    """A new token-signing key; the previous ones still verify. Returns its kid."""
    kid = TokenKeys(store.token_keys, vault).create()
    store.audit.record(_entry(actor, "token-key-rotate", key_id=kid))
    return kid


def retire_token_key(store: Stores, kid: str, *, actor: str = "cli") -> None:
    """Delete a token-signing key: tokens it signed stop verifying (within 30 s per worker)."""
    if not store.token_keys.delete(kid, _entry(actor, "token-key-retire", key_id=kid)):
        raise RealmError(f"no token-signing key {kid!r}")
