"""auth_mode builtin: the server as its own token realm (users, groups, rules, htpasswd, token
endpoint, signing-key rotation, failed-login limits, audit), in-process and end to end with the
real notary and docker CLIs and our own client."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from click.testing import CliRunner

from support.api import Server, error_of, multipart
from support.auth_flows import docker_flow, notary_flow, run_our_cli
from support.server import ServerInfo, running_server
from tufnotary.server import realm as realm_module
from tufnotary.server.app import create_app
from tufnotary.server.cli import main as server_cli
from tufnotary.server.config import ConfigError, Settings
from tufnotary.server.context import request_state, server_context
from tufnotary.server.realm import (
    Realm,
    RealmError,
    Rule,
    add_rule,
    add_user,
    grant,
    gun_matches,
    parse_actions,
    retire_token_key,
    rotate_token_key,
)
from tufnotary.server.signer import KeyVault
from tufnotary.server.storage import Stores

TEAM_A = "registry.example.com/team-a/app"
NESTED = "registry.example.com/team-a/sub/app"
TEAM_B = "registry.example.com/team-b/app"
PUBLIC = "registry.example.com/public/app"
PASSWORD = "correct horse"
SERVICE = "tufnotary"
HEX = "a" * 64
ROUNDS = 4  # fast hashes in tests; the default (12) is in DEFAULT_ROUNDS


# -- the glob, actions and the intersection ------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "gun", "matches"),
    [
        ("registry.example.com/team-a/*", TEAM_A, True),
        ("registry.example.com/team-a/*", NESTED, False),  # * stays within a segment
        ("registry.example.com/team-a/*", "registry.example.com/team-a", False),
        ("registry.example.com/team-a/**", NESTED, True),  # ** crosses segments
        ("registry.example.com/team-a/**", TEAM_A, True),
        ("registry.example.com/team-a/**", TEAM_B, False),
        ("registry.example.com/*/app", TEAM_B, True),
        ("registry.example.com/*/app", NESTED, False),
        ("**", NESTED, True),
        ("*", TEAM_A, False),
        ("*", "library", True),
        ("registry.example.com/team-?/app", TEAM_B, True),
        ("registry.example.com/team-?/app", "registry.example.com/team-/app", False),
        ("registry.example.com/team-a/app", TEAM_A, True),  # literal: exact
        ("registry.example.com/team-a/app", TEAM_A.upper(), False),  # case counts
        ("registry.example.com/team-a/ap", TEAM_A, False),  # whole name, not a prefix
        ("registry.example.com/[ab]/x", "registry.example.com/[ab]/x", True),  # [ is literal
        ("registry.example.com/[ab]/x", "registry.example.com/a/x", False),
        ("registry.example.com/team.a/*", "registry.example.comXteam-a/app", False),
    ],
)
def test_gun_glob(pattern: str, gun: str, matches: bool) -> None:
    assert gun_matches(pattern, gun) is matches


def test_actions_and_rule_checks() -> None:
    assert parse_actions("push, pull,push") == ("push", "pull")
    assert parse_actions(["*"]) == ("*",)
    for bad in ("", "delete", "pull,admin"):
        with pytest.raises(RealmError, match="actions"):
            parse_actions(bad)
    with pytest.raises(RealmError, match="subject"):
        Rule.make("alice", "**", "pull")
    with pytest.raises(RealmError, match="user name"):
        Rule.make("user:", "**", "pull")
    with pytest.raises(RealmError, match="pattern"):
        Rule.make("user:alice", "a b", "pull")


def test_grant_is_the_intersection() -> None:
    rules = [
        Rule.make("user:alice", "registry.example.com/team-a/*", "push,pull"),
        Rule.make("user:alice", "registry.example.com/public/**", "pull"),
    ]
    scopes = [
        f"repository:{TEAM_A}:pull,push,*",
        f"repository:{TEAM_B}:pull",
        f"repository:{PUBLIC}:push,pull",
        f"repository:{NESTED}:pull",
        "registry:catalog:*",
        "repository::pull",
        f"repository:{TEAM_A}:delete",
    ]
    assert grant(rules, scopes) == [
        {"type": "repository", "name": TEAM_A, "actions": ["pull", "push"]},
        {"type": "repository", "name": PUBLIC, "actions": ["pull"]},
    ]
    admin = [Rule.make("group:ops", "**", "*")]
    assert grant(admin, ["registry:catalog:*", f"repository:{NESTED}:*"]) == [
        {"type": "registry", "name": "catalog", "actions": ["*"]},
        {"type": "repository", "name": NESTED, "actions": ["*"]},
    ]
    # * on every GUN but not "**" itself: no catalog access
    assert (
        grant([Rule.make("user:x", "registry.example.com/**", "*")], ["registry:catalog:*"]) == []
    )


# -- an in-process server in builtin mode -------------------------------------------------------

CONFIG_RULES = (
    ("user:bob", "registry.example.com/team-a/*", "pull"),
    ("user:anonymous", "registry.example.com/public/**", "pull"),
    ("user:dave", "registry.example.com/team-a/*", "pull"),
)


def _htpasswd(path: Path) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(ROUNDS)).decode()
    path.write_text(
        "# htpasswd -B\n"
        f"dave:{hashed.replace('$2b$', '$2y$', 1)}\n"
        "erin:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
    )
    return path


@dataclass
class Builtin:
    server: Server
    realm: Realm
    store: Stores

    def token_response(
        self,
        scopes: list[str],
        user: str | None = None,
        password: str = PASSWORD,
        service: str = SERVICE,
        address: str = "127.0.0.1",
    ) -> Any:
        headers = {}
        if user is not None:
            encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {encoded}"
        query = [("service", service)] + [("scope", scope) for scope in scopes]
        return self.server.client.get(
            "/auth/token",
            query_string=query,
            headers=headers,
            environ_base={"REMOTE_ADDR": address},
        )

    def token(self, scopes: list[str], user: str | None = None) -> str:
        response = self.token_response(scopes, user)
        assert response.status_code == 200, response.data
        return str(json.loads(response.data)["token"])

    def open(self, path: str, token: str | None, method: str = "GET") -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.server.client.open(path, method=method, headers=headers)


def _builtin(tmp_path: Path, **settings: Any) -> Builtin:
    server = Server.start(
        tmp_path / "server",
        auth_mode="builtin",
        bcrypt_rounds=ROUNDS,
        rules=CONFIG_RULES,
        htpasswd_file=_htpasswd(tmp_path / "htpasswd"),
        **settings,
    )
    realm = server_context(server.app).realm
    assert realm is not None
    store = realm.store
    for name, groups in (("admin", ()), ("alice", ("team-a",)), ("bob", ()), ("carol", ())):
        add_user(store, name, PASSWORD, groups, rounds=ROUNDS)
    add_rule(store, "user:admin", "**", "*")
    add_rule(store, "group:team-a", "registry.example.com/team-a/*", "push,pull")
    add_rule(store, "user:carol", "registry.example.com/team-a/**", "*")
    return Builtin(server, realm, store)


@pytest.fixture
def builtin(tmp_path: Path) -> Builtin:
    return _builtin(tmp_path)


# -- the authorization matrix --------------------------------------------------------------------

PULL, PUSH_PULL, ALL, CATALOG = "pull", "push,pull", "*", "catalog"


def _routes(gun: str) -> list[tuple[str, str, str]]:
    """(method, path, what it needs) for every authenticated route."""
    tuf = f"/v2/{gun}/_trust/tuf/"
    return [
        ("GET", "/v2/", CATALOG),
        ("POST", tuf, PUSH_PULL),
        ("GET", f"{tuf}root.{HEX}.json", PULL),
        ("GET", f"{tuf}1.root.json", PULL),
        ("GET", f"{tuf}targets/releases.json", PULL),
        ("HEAD", f"{tuf}root.json", PULL),
        ("GET", f"{tuf}timestamp.key", PUSH_PULL),
        ("POST", f"{tuf}snapshot.key", ALL),
        ("DELETE", tuf, ALL),
        ("GET", f"/v2/{gun}/_trust/changefeed", PULL),
        ("GET", "/v2/_trust/changefeed", CATALOG),
        ("GET", "/_notary_server/audit", CATALOG),
        ("GET", f"{tuf}root.key", CATALOG),  # catch-all
    ]


# user -> GUN -> what the user's rules allow there (catalog: administrators only)
EXPECTED: dict[str | None, dict[str, set[str]]] = {
    "admin": {gun: {PULL, PUSH_PULL, ALL, CATALOG} for gun in (TEAM_A, NESTED, TEAM_B, PUBLIC)},
    "alice": {TEAM_A: {PULL, PUSH_PULL}},  # group team-a: push,pull on team-a/*
    "bob": {TEAM_A: {PULL}},  # config-file rule
    "carol": {TEAM_A: {PULL, PUSH_PULL, ALL}, NESTED: {PULL, PUSH_PULL, ALL}},
    "dave": {TEAM_A: {PULL}},  # htpasswd user, config rule
    None: {PUBLIC: {PULL}},  # anonymous
}


def _scope(gun: str, need: str) -> str:
    return "registry:catalog:*" if need == CATALOG else f"repository:{gun}:{need}"


@pytest.mark.parametrize("gun", [TEAM_A, NESTED, TEAM_B, PUBLIC])
@pytest.mark.parametrize("user", list(EXPECTED), ids=lambda u: u or "anonymous")
def test_authorization_matrix(builtin: Builtin, user: str | None, gun: str) -> None:
    allowed = EXPECTED[user].get(gun, set())
    for method, path, need in _routes(gun):
        token = builtin.token([_scope(gun, need)], user)
        response = builtin.open(path, token, method)
        if need in allowed:
            assert response.status_code not in (401, 403), (user, method, path, response.data)
        else:
            assert response.status_code == 401, (user, method, path)
            challenge = response.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="https://localhost/auth/token",')
            assert f'service="{SERVICE}"' in challenge
            assert challenge.endswith(',error="insufficient_scope"')


def test_challenge_points_at_the_servers_own_token_endpoint(builtin: Builtin) -> None:
    response = builtin.server.client.get(
        f"/v2/{TEAM_A}/_trust/tuf/root.json", headers={"Host": "notary.example.com:4443"}
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="https://notary.example.com:4443/auth/token",service="tufnotary",'
        f'scope="repository:{TEAM_A}:pull"'
    )
    assert builtin.server.client.get("/_notary_server/health").status_code == 200


def test_publish_as_pusher_and_refusal_for_puller(builtin: Builtin) -> None:
    body, content_type = multipart([("targets", b"{}")])

    def publish(user: str) -> Any:
        token = builtin.token([f"repository:{TEAM_A}:push,pull"], user)
        with builtin.server.client:
            response = builtin.server.client.post(
                f"/v2/{TEAM_A}/_trust/tuf/",
                data=body,
                content_type=content_type,
                headers={"Authorization": f"Bearer {token}"},
            )
            return response, request_state().actor

    refused, _ = publish("bob")
    assert refused.status_code == 401
    assert [d["Action"] for d in error_of(refused)["detail"]] == ["push", "pull"]
    reached, actor = publish("alice")  # authorized: the handler judges the (bad) upload
    assert reached.status_code == 400 and actor == "alice"


# -- the token endpoint -------------------------------------------------------------------------


def test_token_response_shape_and_claims(builtin: Builtin) -> None:
    response = builtin.token_response([f"repository:{TEAM_A}:pull,push"], "alice")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    body = json.loads(response.data)
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256"
    assert header["kid"] == builtin.realm.keys.kids()[-1]
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert (claims["iss"], claims["aud"], claims["sub"]) == ("tufnotary", SERVICE, "alice")
    assert claims["exp"] - claims["iat"] == 300
    issued = datetime.datetime.fromtimestamp(claims["iat"], datetime.UTC)
    assert body["issued_at"] == issued.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert claims["access"] == [{"type": "repository", "name": TEAM_A, "actions": ["pull", "push"]}]


def test_token_lifetime_is_configurable(tmp_path: Path) -> None:
    builtin = _builtin(tmp_path, token_lifetime=60)
    body = json.loads(builtin.token_response([], "bob").data)
    assert body["expires_in"] == 60
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 60


def test_token_grants_requested_and_allowed_only(builtin: Builtin) -> None:
    token = builtin.token(
        [
            f"repository:{TEAM_A}:pull,push,*",
            f"repository:{TEAM_B}:pull",
            "registry:catalog:*",
        ],
        "alice",
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": TEAM_A, "actions": ["pull", "push"]}]
    # space-separated scopes in one parameter, as some clients send them
    response = builtin.server.client.get(
        "/auth/token",
        query_string={"service": SERVICE, "scope": f"repository:{TEAM_A}:pull registry:catalog:*"},
        headers={
            "Authorization": "Basic " + base64.b64encode(b"admin:" + PASSWORD.encode()).decode()
        },
    )
    access = jwt.decode(json.loads(response.data)["token"], options={"verify_signature": False})
    assert [a["name"] for a in access["access"]] == [TEAM_A, "catalog"]
    anonymous = jwt.decode(
        builtin.token([f"repository:{PUBLIC}:pull,push", f"repository:{TEAM_A}:pull"]),
        options={"verify_signature": False},
    )
    assert anonymous["sub"] == ""
    assert anonymous["access"] == [{"type": "repository", "name": PUBLIC, "actions": ["pull"]}]


def test_wrong_service_is_refused(builtin: Builtin) -> None:
    response = builtin.token_response([f"repository:{TEAM_A}:pull"], "alice", service="other")
    assert response.status_code == 400
    assert error_of(response)["code"] == "INVALID_PARAMETERS"


def test_unknown_user_and_wrong_password_look_the_same(
    builtin: Builtin, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[bytes] = []
    real_checkpw = bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(realm_module.bcrypt, "checkpw", counting_checkpw)
    scopes = [f"repository:{TEAM_A}:pull"]
    wrong = builtin.token_response(scopes, "alice", password="wrong")
    unknown = builtin.token_response(scopes, "mallory", password="wrong")
    anonymous_name = builtin.token_response(scopes, "anonymous", password="")
    for response in (wrong, unknown, anonymous_name):
        assert response.status_code == 401
        assert response.data == wrong.data
        assert response.headers["WWW-Authenticate"] == 'Basic realm="tufnotary"'
    assert error_of(wrong) == {"code": "UNAUTHORIZED", "message": "wrong user name or password"}
    # every path ran exactly one bcrypt check, unknown users against a dummy hash of the
    # same cost as real ones
    assert len(checked) == 3 and builtin.realm.bcrypt_checks == 3
    assert checked[1].startswith(f"$2b${ROUNDS:02d}$".encode())
    assert checked[1] == checked[2] != checked[0]


def test_failed_logins_are_limited_per_user_and_per_address(builtin: Builtin) -> None:
    scopes = [f"repository:{TEAM_A}:pull"]
    # ten guesses at alice's password from ten addresses: the eleventh is refused anywhere
    for number in range(10):
        guess = builtin.token_response(scopes, "alice", "guess", address=f"192.0.2.{number}")
        assert guess.status_code == 401
    limited = builtin.token_response(scopes, "alice", "guess", address="198.51.100.1")
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert error_of(limited)["code"] == "TOOMANYREQUESTS"
    checks = builtin.realm.bcrypt_checks
    # even the right password waits: the limit is checked before any password
    assert builtin.token_response(scopes, "alice", address="198.51.100.1").status_code == 429
    assert builtin.realm.bcrypt_checks == checks
    # other users from those addresses are not locked out
    assert builtin.token_response(scopes, "bob", address="192.0.2.1").status_code == 200
    # ten failures from one address against ten users: that address is refused for everyone
    for number in range(10):
        guess = builtin.token_response(scopes, f"user{number}", "guess", address="203.0.113.5")
        assert guess.status_code == 401
    assert builtin.token_response(scopes, "bob", address="203.0.113.5").status_code == 429
    assert builtin.token_response(scopes, None, address="203.0.113.5").status_code == 429
    assert builtin.token_response(scopes, "bob", address="203.0.113.6").status_code == 200
    # successful logins do not count
    for _ in range(12):
        assert builtin.token_response(scopes, "carol", address="192.0.2.10").status_code == 200
    # the counts live in the database: a second app on it (another worker) sees them
    other = create_app(builtin.server.settings).test_client()
    answer = other.get(
        "/auth/token",
        query_string={"service": SERVICE, "scope": scopes[0]},
        environ_base={"REMOTE_ADDR": "203.0.113.5"},
    )
    assert answer.status_code == 429


def test_htpasswd_users(builtin: Builtin) -> None:
    assert builtin.realm.authenticate("dave", PASSWORD)
    assert not builtin.realm.authenticate("dave", "wrong")
    assert not builtin.realm.authenticate("erin", "password")  # {SHA} entries are skipped
    token = builtin.token([f"repository:{TEAM_A}:pull,push"], "dave")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": TEAM_A, "actions": ["pull"]}]


def test_tokens_of_other_signers_are_refused(builtin: Builtin) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from tufnotary.server.auth import libtrust_key_id

    token = builtin.token([f"repository:{TEAM_A}:pull"], "bob")
    claims = jwt.decode(token, options={"verify_signature": False})
    rogue = ec.generate_private_key(ec.SECP256R1())
    for header in (
        {"kid": libtrust_key_id(rogue.public_key())},
        {"kid": jwt.get_unverified_header(token)["kid"]},
    ):
        forged = jwt.encode(claims, rogue, algorithm="ES256", headers=header)
        response = builtin.open(f"/v2/{TEAM_A}/_trust/tuf/root.json", forged)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].endswith(',error="invalid_token"')
    assert builtin.open(f"/v2/{TEAM_A}/_trust/tuf/root.json", token).status_code == 404


def test_key_rotation_keeps_old_tokens_valid(builtin: Builtin) -> None:
    path = f"/v2/{TEAM_A}/_trust/tuf/root.json"
    before = builtin.token([f"repository:{TEAM_A}:pull"], "bob")
    old_kid = jwt.get_unverified_header(before)["kid"]
    new_kid = rotate_token_key(builtin.store, KeyVault(b"test passphrase"))
    assert new_kid != old_kid
    builtin.realm.keys.reload()  # workers do this by themselves every 30 s
    after = builtin.token([f"repository:{TEAM_A}:pull"], "bob")
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    assert builtin.open(path, before).status_code == 404  # signed by the old key: still valid
    assert builtin.open(path, after).status_code == 404
    retire_token_key(builtin.store, old_kid)
    builtin.realm.keys.reload()
    refused = builtin.open(path, before)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].endswith(',error="invalid_token"')
    assert builtin.open(path, after).status_code == 404
    with pytest.raises(RealmError, match="no token-signing key"):
        retire_token_key(builtin.store, old_kid)
    actions = [r.action for r in builtin.store.audit.records() if r.action.startswith("token-key")]
    assert actions == ["token-key-rotate", "token-key-retire"]


def test_token_endpoint_is_a_catch_all_in_other_modes(tmp_path: Path) -> None:
    server = Server.start(tmp_path / "none")
    assert server.client.get("/auth/token?service=tufnotary").status_code == 404


# -- configuration -------------------------------------------------------------------------------


def test_builtin_settings(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        'auth_mode = "builtin"\n'
        "token_lifetime = 600\n"
        'htpasswd_file = "htpasswd"\n'
        "[[rules]]\n"
        'subject = "group:team-a"\n'
        'pattern = "registry.example.com/team-a/*"\n'
        'actions = ["push", "pull"]\n'
        "[[rules]]\n"
        'subject = "user:bob"\n'
        'pattern = "registry.example.com/team-a/*"\n'
        'actions = "pull"\n'
    )
    _htpasswd(tmp_path / "htpasswd")
    settings = Settings.load(config, env={})
    assert settings.auth_mode == "builtin" and settings.token_lifetime == 600
    assert settings.htpasswd_file == tmp_path / "htpasswd"
    assert settings.rules == (
        ("group:team-a", "registry.example.com/team-a/*", "push,pull"),
        ("user:bob", "registry.example.com/team-a/*", "pull"),
    )
    env = {
        "TUFNOTARY_AUTH_MODE": "builtin",
        "TUFNOTARY_RULES": "user:a ** *; group:g registry.example.com/** pull,push",
    }
    assert Settings.load(env=env).rules == (
        ("user:a", "**", "*"),
        ("group:g", "registry.example.com/**", "pull,push"),
    )
    for bad, message in [
        ({"TUFNOTARY_RULES": "user:a **"}, "rules: expected 'SUBJECT PATTERN ACTIONS'"),
        ({"TUFNOTARY_RULES": "bob ** pull"}, "rules: subject 'bob'"),
        ({"TUFNOTARY_RULES": "user:bob ** admin"}, "rules: actions must be among"),
        ({"TUFNOTARY_TOKEN_LIFETIME": "5"}, "token_lifetime: must be 10..86400"),
        ({"TUFNOTARY_HTPASSWD_FILE": str(tmp_path / "missing")}, "htpasswd_file: no such file"),
        ({"TUFNOTARY_TOKEN_REALM": "https://x/token"}, "token_realm: only with auth_mode"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Settings.load(env={"TUFNOTARY_AUTH_MODE": "builtin"} | bad)
    config.write_text('[[rules]]\nsubject = "user:a"\npattern = "**"\n')
    with pytest.raises(ConfigError, match="rules: each rule needs exactly"):
        Settings.load(config, env={})


# -- the command line and the audit trail ---------------------------------------------------------


def test_group_memberships_change_after_creation(migrated_url: str) -> None:
    store = Stores.from_url(migrated_url)
    runner = CliRunner(env={"TUFNOTARY_BCRYPT_ROUNDS": str(ROUNDS)})

    def run(*args: str, stdin: str | None = None) -> str:
        result = runner.invoke(server_cli, [*args, "--database", migrated_url], input=stdin)
        assert result.exit_code == 0, f"{args}: {result.output}"
        return result.output

    run("user", "add", "carol", "--password-stdin", stdin=f"{PASSWORD}\n")
    assert "carol added to group team-a" in run("group", "add", "team-a", "carol")
    assert "already in group" in run("group", "add", "team-a", "carol")
    assert store.realm.groups_of("carol") == ["team-a"]
    assert "carol removed from group team-a" in run("group", "remove", "team-a", "carol")
    assert store.realm.groups_of("carol") == []
    actions = [(r.action, r.detail) for r in store.audit.records() if r.action.startswith("group")]
    assert actions == [
        ("group-add", {"group": "team-a", "user": "carol"}),
        ("group-remove", {"group": "team-a", "user": "carol"}),
    ]
    store.engine.dispose()


def test_command_line_manages_users_and_rules_with_audit(migrated_url: str) -> None:
    env_rounds = {"TUFNOTARY_BCRYPT_ROUNDS": str(ROUNDS)}
    store = Stores.from_url(migrated_url)
    runner = CliRunner(env=env_rounds)

    def run(*args: str, stdin: str | None = None, code: int = 0) -> str:
        result = runner.invoke(server_cli, [*args, "--database", migrated_url], input=stdin)
        assert result.exit_code == code, f"{args}: {result.output}"
        return result.output

    run(
        "user",
        "add",
        "alice",
        "--group",
        "team-a",
        "--group",
        "ops",
        "--password-stdin",
        stdin=f"{PASSWORD}\n",
    )
    run("user", "add", "bob", stdin="pw1\npw1\n")  # prompted twice
    assert "exists already" in run("user", "add", "bob", "--password-stdin", stdin="x\n", code=1)
    assert "requests without credentials" in run(
        "user", "add", "anonymous", "--password-stdin", stdin="x\n", code=1
    )
    users = [json.loads(line) for line in run("user", "list", "--json").splitlines()]
    assert [(u["name"], u["groups"]) for u in users] == [("alice", ["ops", "team-a"]), ("bob", [])]
    rule_id = int(run("rule", "add", "group:team-a", "registry.example.com/team-a/*", "push,pull"))
    run("rule", "add", "user:bob", "registry.example.com/team-a/*", "pull")
    run("rule", "add", "user:bob", "**", "delete", code=1)
    rules = [json.loads(line) for line in run("rule", "list", "--json").splitlines()]
    assert [(r["subject"], r["actions"], r["source"]) for r in rules] == [
        ("group:team-a", ["push", "pull"], "database"),
        ("user:bob", ["pull"], "database"),
    ]
    run("user", "passwd", "bob", "--password-stdin", stdin="pw2\n")
    run("user", "passwd", "nobody", "--password-stdin", stdin="pw2\n", code=1)
    run("rule", "remove", str(rule_id))
    run("rule", "remove", str(rule_id), code=1)
    run("user", "remove", "alice")
    run("user", "remove", "alice", code=1)
    assert store.realm.groups_of("alice") == []

    realm = Realm(store, realm_module.TokenKeys(store.token_keys, KeyVault(b"x")), rounds=ROUNDS)
    assert realm.authenticate("bob", "pw2") and not realm.authenticate("bob", "pw1")
    assert not realm.authenticate("alice", PASSWORD)
    assert [(r.subject, r.actions) for r in realm.rules_for("bob")] == [("user:bob", ("pull",))]

    log = [(r.actor, r.action, r.gun, r.detail) for r in store.audit.records()]
    assert log == [
        ("cli", "user-add", None, {"user": "alice", "groups": ["ops", "team-a"]}),
        ("cli", "user-add", None, {"user": "bob", "groups": []}),
        (
            "cli",
            "rule-add",
            None,
            {
                "subject": "group:team-a",
                "pattern": "registry.example.com/team-a/*",
                "actions": "push,pull",
                "rule": rule_id,
            },
        ),
        (
            "cli",
            "rule-add",
            None,
            {
                "subject": "user:bob",
                "pattern": "registry.example.com/team-a/*",
                "actions": "pull",
                "rule": rule_id + 1,
            },
        ),
        ("cli", "user-passwd", None, {"user": "bob"}),
        (
            "cli",
            "rule-remove",
            None,
            {
                "rule": rule_id,
                "subject": "group:team-a",
                "pattern": "registry.example.com/team-a/*",
                "actions": "push,pull",
            },
        ),
        ("cli", "user-remove", None, {"user": "alice"}),
    ]
    assert PASSWORD not in json.dumps([r.detail for r in store.audit.records()])
    store.engine.dispose()


# -- end to end: the real server, notary, docker and our CLI ---------------------------------------

E2E_PASSWORD = "e2e-password"


@dataclass
class BuiltinSetup:
    server: ServerInfo
    base: Path


def _server_cli(data_dir: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tufnotary.server.cli", *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), "TUFNOTARY_BCRYPT_ROUNDS": str(ROUNDS)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TUFNOTARY_")}


@pytest.fixture(scope="module")
def builtin_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltinSetup]:
    base = tmp_path_factory.mktemp("builtin-e2e")
    data = base / "data"
    _server_cli(data, "migrate")
    for name in ("alice", "bob"):
        _server_cli(data, "user", "add", name, "--password-stdin", stdin=E2E_PASSWORD + "\n")
    _server_cli(data, "rule", "add", "user:alice", "registry.example.com/team-a/**", "*")
    _server_cli(data, "rule", "add", "user:bob", "registry.example.com/team-a/**", "pull")
    env = {"TUFNOTARY_BCRYPT_ROUNDS": str(ROUNDS)}
    with running_server(base, "--auth-mode", "builtin", "--workers", "1", env=env) as server:
        yield BuiltinSetup(server, base)


@pytest.mark.e2e
def test_notary_cli_with_builtin_users(builtin_setup: BuiltinSetup, tmp_path: Path) -> None:
    notary_flow(builtin_setup.server, tmp_path, "registry.example.com/team-a/notary", E2E_PASSWORD)


@pytest.mark.e2e
def test_docker_cli_with_builtin_users(builtin_setup: BuiltinSetup, tmp_path: Path) -> None:
    docker_flow(builtin_setup.server, tmp_path, "registry.example.com/team-a/docker", E2E_PASSWORD)


def test_our_cli_with_builtin_users_and_key_rotation(
    builtin_setup: BuiltinSetup, tmp_path: Path
) -> None:
    server = builtin_setup.server
    gun = "registry.example.com/team-a/tufnotary"
    target = tmp_path / "artifact"
    target.write_bytes(b"payload")

    def run(
        user: str, *args: str, expect: int = 0, keys: str = "", password: str = E2E_PASSWORD
    ) -> str:
        credentials = ("--username", user, "--password", password)
        trust_dir = tmp_path / f"trust-{keys or user}"
        return run_our_cli(server, trust_dir, *credentials, *args, expect=expect)

    run("alice", "init", gun)
    run("alice", "add", gun, "v1", str(target), "-p")
    assert "v1" in run("bob", "list", gun)
    # a new token-signing key while the server runs: old and new tokens both work
    kid = _server_cli(server.data_dir, "token-key", "rotate").strip()
    assert kid in _server_cli(server.data_dir, "token-key", "list").split()
    run("alice", "add", gun, "v2", str(target), "-p")
    assert "v2" in run("bob", "list", gun)
    refused = run("bob", "add", gun, "v3", str(target), "-p", expect=1, keys="alice")
    assert "UNAUTHORIZED" in refused and "do not grant" in refused
    wrong = run("bob", "list", gun, expect=1, password="wrong", keys="wrong")
    assert "refused the credentials" in wrong
    audit = [
        json.loads(line)
        for line in _server_cli(server.data_dir, "audit", "--json", "--gun", gun).splitlines()
    ]
    assert {entry["actor"] for entry in audit if entry["action"] == "upload"} == {"alice"}
