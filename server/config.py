"""Server settings: defaults < TOML config file < TUFNOTARY_* environment < explicit overrides."""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "TUFNOTARY_"
CONFIG_ENV = "TUFNOTARY_CONFIG"
KEY_ALGORITHMS = ("ecdsa", "ed25519")
KEY_BACKENDS = ("database", "pkcs11", "uri")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
AUTH_MODES = ("none", "token", "builtin")
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")
AUDIT_ACCESS = ("auth", "loopback")
MAX_CACHE_AGE = 31_536_000


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent; the message names the setting and source."""


@dataclass(frozen=True)
class Settings:
    """Everything the server reads at start-up.

    Build it with `Settings.load`, which converts and validates; direct construction (for tests)
    trusts its arguments.
    """

    listen: str = "127.0.0.1:4443"
    data_dir: Path = Path("./data")
    database_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = 2
    key_algorithm: str = "ecdsa"
    key_passphrase: str | None = None
    key_passphrase_file: Path | None = None
    key_backend: str = "database"
    pkcs11_module: str | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: str | None = None
    pkcs11_pin_file: Path | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    max_parts: int = 1000
    max_delegations: int = 10_000
    max_delegation_depth: int = 32
    max_signatures: int = 32
    max_json_values: int = 4_000_000
    max_root_bytes: int = 1024 * 1024
    max_snapshot_bytes: int = 8 * 1024 * 1024
    max_timestamp_bytes: int = 64 * 1024
    max_targets_bytes: int = 64 * 1024 * 1024
    max_concurrent_large_uploads: int = 2
    large_upload_bytes: int = 1024 * 1024
    cache_max_age_current: int = 300
    cache_max_age_consistent: int = 2_592_000
    gun_prefixes: tuple[str, ...] = ()
    log_level: str = "info"
    auth_mode: str = "none"
    token_realm: str | None = None
    token_service: str | None = None
    token_issuer: str | None = None
    token_rootcertbundle: Path | None = None
    token_lifetime: int = 300
    htpasswd_file: Path | None = None
    rules: tuple[tuple[str, str, str], ...] = ()
    bcrypt_rounds: int = 12
    auto_migrate: bool = False
    trusted_proxies: int = 0
    forwarded_header: str = "x-forwarded-for"
    audit_access: str = "auth"
    metrics_token: str | None = None
    max_token_lifetime: int = 3600
    key_creation_limit: int = 100
    resign_interval: int = 0
    client_timeout: int = 10
    response_cache_bytes: int = 64 * 1024 * 1024
    read_staleness_ms: int = 100

    @property
    def effective_database_url(self) -> str:
        """`database_url`, or an SQLite file `tufnotary.db` in `data_dir` when it is not set."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tufnotary.db').absolute()}"

    @classmethod
    def load(
        cls,
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Merge defaults, config file, environment and overrides, then validate.

        `config_file` defaults to `$TUFNOTARY_CONFIG`; a relative path in the file is resolved
        against the file's directory. `env` defaults to `os.environ`; each field is read from
        `TUFNOTARY_<FIELD>` (empty values count as unset; `gun_prefixes` is comma-separated).
        Overrides are field values; `None` means "not given".
        """
        env = os.environ if env is None else env
        unknown = sorted(set(overrides) - _FIELDS.keys())
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(unknown)}")
        raw: dict[str, tuple[object, str, Path | None]] = {}
        if config_file is None and env.get(CONFIG_ENV):
            config_file = Path(env[CONFIG_ENV])
        if config_file is not None:
            config_file = Path(config_file)
            source, base_dir = f"config file {config_file}", config_file.absolute().parent
            for name, value in _read_toml(config_file).items():
                if name not in _FIELDS:
                    raise ConfigError(f"{name}: unknown setting (from {source})")
                raw[name] = (value, source, base_dir)
        for name in _FIELDS:
            value = env.get(ENV_PREFIX + name.upper())
            if value:
                raw[name] = (value, f"environment variable {ENV_PREFIX}{name.upper()}", None)
        for name, value in overrides.items():
            if value is not None:
                raw[name] = (value, "command line", None)

        settings = cls(**{name: _convert(name, *entry) for name, entry in raw.items()})
        if (settings.tls_cert is None) != (settings.tls_key is None):
            given = "tls_cert" if settings.tls_cert is not None else "tls_key"
            raise ConfigError(
                f"tls_cert, tls_key: set both or neither ({given} from {raw[given][1]})"
            )
        if settings.key_passphrase is not None and settings.key_passphrase_file is not None:
            raise ConfigError(
                "key_passphrase, key_passphrase_file: set at most one (key_passphrase from "
                f"{raw['key_passphrase'][1]}, key_passphrase_file from "
                f"{raw['key_passphrase_file'][1]})"
            )
        _check_key_backend(settings, raw)
        _check_auth(settings, raw)
        if settings.token_lifetime > settings.max_token_lifetime:
            raise ConfigError(
                f"token_lifetime: {settings.token_lifetime} is over max_token_lifetime "
                f"{settings.max_token_lifetime} (raise max_token_lifetime or lower token_lifetime)"
            )
        return settings


def _check_key_backend(
    settings: Settings, raw: Mapping[str, tuple[object, str, Path | None]]
) -> None:
    """`pkcs11` needs the module, the token label and one of the PIN settings, and makes
    ECDSA keys only; with `uri` (keys registered by `tufnotary-server key add`) the PKCS#11
    settings are optional, for ``hsm:`` keys, but all or none."""
    if settings.key_backend == "database":
        return
    names = ("pkcs11_module", "pkcs11_token_label", "pkcs11_pin", "pkcs11_pin_file")
    if settings.key_backend == "uri" and all(getattr(settings, name) is None for name in names):
        return
    source = raw["key_backend"][1]
    missing = [name for name in names[:2] if getattr(settings, name) in (None, "")]
    if (settings.pkcs11_pin is None) == (settings.pkcs11_pin_file is None):
        missing.append("exactly one of pkcs11_pin, pkcs11_pin_file")
    if missing:
        needed = (
            "required with key_backend 'pkcs11'"
            if settings.key_backend == "pkcs11"
            else "required with key_backend 'uri' once one PKCS#11 setting is given (hsm: keys)"
        )
        raise ConfigError(f"{', '.join(missing)}: {needed} (from {source})")
    if settings.key_backend == "pkcs11" and settings.key_algorithm != "ecdsa":
        raise ConfigError(
            f"key_algorithm: key_backend 'pkcs11' makes ecdsa keys, not "
            f"{settings.key_algorithm} (from {raw['key_algorithm'][1]})"
        )


def _check_auth(settings: Settings, raw: Mapping[str, tuple[object, str, Path | None]]) -> None:
    """`token` needs realm, service, issuer and a readable root bundle; `builtin` ignores the
    realm and the bundle (it is its own token service) and needs a readable htpasswd file if
    one is named."""
    if settings.auth_mode == "builtin":
        for name in ("token_realm", "token_rootcertbundle"):
            if getattr(settings, name) not in (None, ""):
                raise ConfigError(
                    f"{name}: only with auth_mode 'token' (from {raw[name][1]}); builtin mode "
                    "is its own token service"
                )
        if settings.htpasswd_file is not None and not settings.htpasswd_file.is_file():
            raise ConfigError(
                f"htpasswd_file: no such file: {settings.htpasswd_file} "
                f"(from {raw['htpasswd_file'][1]})"
            )
        return
    if settings.auth_mode != "token":
        return
    names = ("token_realm", "token_service", "token_issuer", "token_rootcertbundle")
    missing = [name for name in names if getattr(settings, name) in (None, "")]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: required with auth_mode 'token' "
            f"(auth_mode from {raw['auth_mode'][1]})"
        )
    from tufnotary.server.auth import load_root_bundle

    assert settings.token_rootcertbundle is not None
    try:
        load_root_bundle(settings.token_rootcertbundle)
    except ValueError as exc:
        source = raw["token_rootcertbundle"][1]
        raise ConfigError(f"token_rootcertbundle: {exc} (from {source})") from None


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


def _convert(name: str, value: object, source: str, base_dir: Path | None) -> object:
    """Convert one raw value to the field's type and check it, naming `source` on failure."""
    hint = _FIELDS[name]
    if isinstance(hint, types.UnionType):  # X | None
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    try:
        if name == "rules":
            converted: object = _to_rules(value)
        elif hint is bool:
            converted = _to_bool(value)
        elif hint is int:
            converted = _to_int(value)
        elif hint is str:
            converted = _to_str(value)
        elif hint is Path:
            converted = _to_path(value, base_dir)
        else:
            converted = _to_str_tuple(value)
        check = _CHECKS.get(name)
        return converted if check is None else check(converted)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc} (from {source})") from None


def _to_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise ValueError(f"expected true or false, got {value!r}")


def _to_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _to_path(value: object, base_dir: Path | None) -> Path:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise TypeError(f"expected a file path, got {type(value).__name__} {value!r}")
    path = Path(value)
    return base_dir / path if base_dir is not None and not path.is_absolute() else path


def _to_str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise TypeError(f"expected a list of strings, got {type(value).__name__} {value!r}")


def _to_rules(value: object) -> tuple[tuple[str, str, str], ...]:
    """A TOML list of tables {subject, pattern, actions}, or (environment) rules separated by
    ';', each "SUBJECT PATTERN ACTIONS"; actions a list or comma-separated."""
    from tufnotary.server.realm import RealmError, Rule

    items: list[tuple[object, object, object]] = []
    if isinstance(value, str):
        for text in value.split(";"):
            fields = text.split()
            if len(fields) != 3:
                if fields:
                    raise ValueError(f"expected 'SUBJECT PATTERN ACTIONS', got {text.strip()!r}")
                continue
            items.append((fields[0], fields[1], fields[2]))
    elif isinstance(value, list):
        for table in value:
            if not isinstance(table, dict) or set(table) != {"subject", "pattern", "actions"}:
                raise ValueError(f"each rule needs exactly subject, pattern and actions: {table!r}")
            items.append((table["subject"], table["pattern"], table["actions"]))
    else:
        raise TypeError(f"expected a list of rules, got {type(value).__name__}")
    rules = []
    for subject, pattern, actions in items:
        if not isinstance(subject, str) or not isinstance(pattern, str):
            raise TypeError(f"rule subject and pattern must be strings: {subject!r} {pattern!r}")
        if not isinstance(actions, str | list):
            raise TypeError(f"rule actions must be a string or a list: {actions!r}")
        try:
            rule = Rule.make(subject, pattern, actions)
        except RealmError as exc:
            raise ValueError(str(exc)) from None
        rules.append((rule.subject, rule.pattern, ",".join(rule.actions)))
    return tuple(rules)


def _int_range(minimum: int, maximum: int | None = None) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum}..{maximum}"
            raise ValueError(f"must be {bounds}, got {value}")
        return value

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    return check


UNIX_PREFIX = "unix:"  # listen on a unix socket, plain HTTP: for a local TLS-terminating proxy
_LISTEN = re.compile(r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]{1,5})")


def _check_listen(value: str) -> str:
    if value.startswith(UNIX_PREFIX):
        if not value.startswith(UNIX_PREFIX + "/"):
            raise ValueError(f"a unix socket needs an absolute path (unix:/PATH), got {value!r}")
        return value
    match = _LISTEN.fullmatch(value)
    if match is None:
        raise ValueError(f"expected HOST:PORT (IPv6 as [ADDR]:PORT) or unix:/PATH, got {value!r}")
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            raise ValueError(f"{match['ipv6']!r} is not an IPv6 address") from None
    if not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"port must be 1-65535, got {match['port']}")
    return value


_DATABASE_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://.*", re.DOTALL)
DATABASE_SCHEMES = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql",
    "postgresql+psycopg": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mysql+pymysql": "mysql",
    "mariadb": "mariadb",
    "mariadb+pymysql": "mariadb",
}
"""URL schemes accepted (lower-cased), and the scheme each is stored under."""


def _check_database_url(value: str) -> str:
    """A URL of a supported database; ``postgres://`` becomes ``postgresql://``."""
    match = _DATABASE_URL.fullmatch(value)
    if match is None:
        raise ValueError("expected a URL such as postgresql://user:password@host:5432/name")
    scheme = match["scheme"].lower()
    if scheme not in DATABASE_SCHEMES:
        raise ValueError(
            f"unsupported database {match['scheme']!r}: use sqlite://, postgresql:// "
            "(or postgres://), mysql:// or mariadb://"
        )
    return DATABASE_SCHEMES[scheme] + value[len(scheme) :]


def _check_gun_prefixes(value: tuple[str, ...]) -> tuple[str, ...]:
    for prefix in value:
        cleaned = posixpath.normpath(prefix) + "/"
        if not prefix.endswith("/") or prefix.startswith(("/", "..")) or cleaned != prefix:
            raise ValueError(
                f"{prefix!r} must end with '/', not start with '/' or '..', and be in clean form"
            )
    return value


_FIELDS: dict[str, Any] = typing.get_type_hints(Settings)
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "listen": _check_listen,
    "database_url": _check_database_url,
    "workers": _int_range(1),
    "key_algorithm": _one_of(KEY_ALGORITHMS),
    "key_backend": _one_of(KEY_BACKENDS),
    "max_body_bytes": _int_range(1),
    "max_parts": _int_range(1),
    "max_delegations": _int_range(1),
    "max_delegation_depth": _int_range(1),
    "max_signatures": _int_range(1),
    "max_json_values": _int_range(1),
    "max_root_bytes": _int_range(1),
    "max_snapshot_bytes": _int_range(1),
    "max_timestamp_bytes": _int_range(1),
    "max_targets_bytes": _int_range(1),
    "max_concurrent_large_uploads": _int_range(1),
    "large_upload_bytes": _int_range(0),
    "cache_max_age_current": _int_range(0, MAX_CACHE_AGE),
    "cache_max_age_consistent": _int_range(0, MAX_CACHE_AGE),
    "gun_prefixes": _check_gun_prefixes,
    "log_level": _one_of(LOG_LEVELS),
    "auth_mode": _one_of(AUTH_MODES),
    "token_lifetime": _int_range(10, 86_400),
    "bcrypt_rounds": _int_range(4, 31),
    "trusted_proxies": _int_range(0, 10),
    "forwarded_header": _one_of(FORWARDED_HEADERS),
    "audit_access": _one_of(AUDIT_ACCESS),
    "max_token_lifetime": _int_range(10, 604_800),
    "key_creation_limit": _int_range(1),
    "resign_interval": _int_range(0),
    "client_timeout": _int_range(1, 3600),
    "response_cache_bytes": _int_range(0),
    "read_staleness_ms": _int_range(0, 60_000),
}
