"""Settings: precedence of defaults, config file, environment and overrides; validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tufnotary.server.config import ConfigError, Settings


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "tufnotary.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    settings = Settings.load(env={})
    assert settings == Settings()
    assert settings.effective_database_url == (
        f"sqlite:///{(Path('data') / 'tufnotary.db').absolute()}"
    )


def test_precedence_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'listen = "0.0.0.0:1111"\nworkers = 3\nlog_level = "warning"\nmax_parts = 7\n',
    )
    env = {"TUFNOTARY_WORKERS": "5", "TUFNOTARY_LOG_LEVEL": "error"}
    settings = Settings.load(config, env=env, log_level="debug", workers=None)
    assert settings.listen == "0.0.0.0:1111"  # file only
    assert settings.max_parts == 7  # file only
    assert settings.workers == 5  # environment beats file; None override is ignored
    assert settings.log_level == "debug"  # override beats environment
    assert settings.max_delegations == 10_000  # default


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path, "workers = 9\n")
    assert Settings.load(env={"TUFNOTARY_CONFIG": str(config)}).workers == 9
    other = tmp_path / "other.toml"
    other.write_text("workers = 4\n")
    assert Settings.load(other, env={"TUFNOTARY_CONFIG": str(config)}).workers == 4


def test_relative_paths_resolve_against_config_file_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path,
        'data_dir = "state"\ntls_cert = "tls/cert.pem"\ntls_key = "/abs/key.pem"\n',
    )
    monkeypatch.chdir(tmp_path)
    settings = Settings.load(config, env={"TUFNOTARY_KEY_PASSPHRASE_FILE": "secret"})
    assert settings.data_dir == config.parent / "state"
    assert settings.tls_cert == config.parent / "tls" / "cert.pem"
    assert settings.tls_key == Path("/abs/key.pem")
    assert settings.key_passphrase_file == Path("secret")  # environment: relative to cwd
    assert settings.effective_database_url == (
        f"sqlite:///{config.parent / 'state' / 'tufnotary.db'}"
    )


def test_environment_conversions() -> None:
    settings = Settings.load(
        env={
            "TUFNOTARY_DATABASE_URL": "postgresql://u:p@db:5432/n",
            "TUFNOTARY_LISTEN": "[::1]:4443",
            "TUFNOTARY_GUN_PREFIXES": "docker.io/, registry.example.com/library/ ,",
            "TUFNOTARY_MAX_BODY_BYTES": " 1024 ",
            "TUFNOTARY_KEY_ALGORITHM": "ED25519",
            "TUFNOTARY_KEY_PASSPHRASE": "correct horse",
            "TUFNOTARY_DATA_DIR": "",  # empty counts as unset
            "TUFNOTARY_UNRELATED": "ignored",
        }
    )
    assert settings.database_url == settings.effective_database_url == "postgresql://u:p@db:5432/n"
    assert settings.listen == "[::1]:4443"
    assert settings.gun_prefixes == ("docker.io/", "registry.example.com/library/")
    assert settings.max_body_bytes == 1024
    assert settings.key_algorithm == "ed25519"
    assert settings.key_passphrase == "correct horse"
    assert settings.data_dir == Path("data")


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("postgres://u:p@db:5432/n", "postgresql://u:p@db:5432/n"),
        ("POSTGRES://db/n", "postgresql://db/n"),
        ("postgresql+psycopg://db/n", "postgresql://db/n"),
        ("mariadb+pymysql://root@db/n", "mariadb://root@db/n"),
        ("sqlite:////var/lib/x.db", "sqlite:////var/lib/x.db"),
    ],
)
def test_database_url_schemes_are_normalised(given: str, stored: str) -> None:
    assert Settings.load(env={"TUFNOTARY_DATABASE_URL": given}).effective_database_url == stored


def test_auto_migrate_from_file_environment_and_flag(tmp_path: Path) -> None:
    assert Settings.load(env={}).auto_migrate is False
    assert Settings.load(write_config(tmp_path, "auto_migrate = true\n"), env={}).auto_migrate
    assert Settings.load(env={"TUFNOTARY_AUTO_MIGRATE": "yes"}).auto_migrate is True
    assert Settings.load(env={"TUFNOTARY_AUTO_MIGRATE": "FALSE"}, auto_migrate=None) == Settings()
    assert Settings.load(env={"TUFNOTARY_AUTO_MIGRATE": "0"}, auto_migrate=True).auto_migrate


def test_file_lists_and_override_types(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'gun_prefixes = ["docker.io/"]\ncache_max_age_current = 0\n')
    settings = Settings.load(config, env={}, data_dir=str(tmp_path), gun_prefixes=["a/", "b/"])
    assert settings.gun_prefixes == ("a/", "b/")
    assert settings.cache_max_age_current == 0
    assert settings.data_dir == tmp_path


@pytest.mark.parametrize(
    ("env", "overrides", "expected"),
    [
        ({"TUFNOTARY_KEY_ALGORITHM": "rsa"}, {}, "key_algorithm: must be one of ecdsa, ed25519"),
        ({}, {"key_algorithm": "rsa"}, "key_algorithm: must be one of ecdsa, ed25519, got 'rsa'"),
        ({"TUFNOTARY_WORKERS": "many"}, {}, "workers: expected an integer, got 'many'"),
        ({}, {"workers": 0}, "workers: must be at least 1, got 0 (from command line)"),
        ({"TUFNOTARY_LISTEN": "4443"}, {}, "listen: expected HOST:PORT"),
        ({"TUFNOTARY_LISTEN": "[::1:4443"}, {}, "listen: expected HOST:PORT"),
        ({"TUFNOTARY_LISTEN": "[1.2.3.4]:4443"}, {}, "listen: '1.2.3.4' is not an IPv6 address"),
        ({"TUFNOTARY_LISTEN": "localhost:70000"}, {}, "listen: port must be 1-65535"),
        ({"TUFNOTARY_LOG_LEVEL": "loud"}, {}, "log_level: must be one of debug, info"),
        ({"TUFNOTARY_DATABASE_URL": "db.sqlite"}, {}, "database_url: expected a URL"),
        (
            {"TUFNOTARY_DATABASE_URL": "foo://db/x"},
            {},
            "database_url: unsupported database 'foo': use sqlite://, postgresql:// "
            "(or postgres://), mysql:// or mariadb://",
        ),
        ({}, {"database_url": "postgresql+asyncpg://db/x"}, "unsupported database"),
        ({"TUFNOTARY_AUTO_MIGRATE": "maybe"}, {}, "auto_migrate: expected true or false"),
        ({"TUFNOTARY_CACHE_MAX_AGE_CURRENT": "-1"}, {}, "cache_max_age_current: must be 0.."),
        (
            {"TUFNOTARY_CACHE_MAX_AGE_CONSISTENT": "31536001"},
            {},
            "cache_max_age_consistent: must be 0..31536000, got 31536001",
        ),
        ({"TUFNOTARY_GUN_PREFIXES": "docker.io"}, {}, "gun_prefixes: 'docker.io' must end"),
        ({"TUFNOTARY_GUN_PREFIXES": "/abs/"}, {}, "gun_prefixes: '/abs/' must end"),
        ({"TUFNOTARY_GUN_PREFIXES": "../x/"}, {}, "gun_prefixes: '../x/' must end"),
        ({"TUFNOTARY_GUN_PREFIXES": "a//b/"}, {}, "gun_prefixes: 'a//b/' must end"),
        ({"TUFNOTARY_MAX_DELEGATION_DEPTH": "0"}, {}, "max_delegation_depth: must be at least 1"),
        ({}, {"tls_cert": "cert.pem"}, "tls_cert, tls_key: set both or neither (tls_cert from"),
        (
            {"TUFNOTARY_KEY_PASSPHRASE": "x"},
            {"key_passphrase_file": "pw"},
            "key_passphrase, key_passphrase_file: set at most one (key_passphrase from "
            "environment variable TUFNOTARY_KEY_PASSPHRASE, key_passphrase_file from command line)",
        ),
    ],
)
def test_invalid_values_name_setting_and_source(
    env: dict[str, str], overrides: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(env=env, **overrides)
    message = str(caught.value)
    assert expected in message
    sources = [f"environment variable {name}" for name in env] + ["command line"] * bool(overrides)
    assert all(source in message for source in sources), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("workers = true\n", "workers: expected an integer, got True (from config file "),
        ("listen = 4443\n", "listen: expected a string, got int (from config file "),
        ("gun_prefixes = [1]\n", "gun_prefixes: expected a list of strings"),
        ("data_dir = 1\n", "data_dir: expected a file path"),
        ('auto_migrate = "sometimes"\n', "auto_migrate: expected true or false"),
        ("worker = 4\n", "worker: unknown setting (from config file "),
        ("workers = \n", "invalid TOML"),
    ],
)
def test_invalid_config_file(tmp_path: Path, text: str, expected: str) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        Settings.load(config, env={})
    assert expected in str(caught.value)
    assert str(config) in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(env={"TUFNOTARY_CONFIG": str(missing)})


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unknown settings: bogus"):
        Settings.load(env={}, bogus=1)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.workers = 4  # type: ignore[misc]
