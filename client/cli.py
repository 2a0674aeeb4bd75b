"""`tufnotary`: sign and verify container image trust data from the command line.

The commands mirror the ``notary`` CLI (``init``, ``add``, ``list``, ``delegation add``, ``key
rotate`` ...) and add ``verify-image`` for deploy gates. Exit status: 0 on success (trusted),
1 when verification fails or the operation cannot be done (untrusted or missing trust data,
server unreachable or refusing, missing keys or passphrases), 2 on usage errors. Reads fail
closed: cached trust data answers only with ``--offline``, never as a silent fallback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tufnotary.client.changes import ADD_DELEGATION, ADD_TARGET, REMOVE_TARGET, Change
from tufnotary.client.images import (
    DigestMismatch,
    ImageNotSigned,
    ImageVerificationError,
    Policy,
    RequiredSignerMissing,
    VerifiedImage,
    resolve_image,
)
from tufnotary.client.publisher import PublishError, RepositoryExists
from tufnotary.client.remote import (
    DEFAULT_TIMEOUT,
    CAFileError,
    NotFoundError,
    RejectedError,
    Remote,
    RemoteError,
    ServerError,
    ServerTimeout,
    ServerUnreachable,
    TLSError,
)
from tufnotary.client.repository import Repository, Target, TargetNotFound
from tufnotary.client.trustdir import (
    KeyFileError,
    KeyNotFound,
    PassphraseRequired,
    Passphrases,
    TrustDir,
    TrustDirError,
    WrongPassphrase,
)
from tufnotary.client.trusted import TrustPinning, UntrustedRootError
from tufnotary.client.updater import NotCached, RepositoryNotFound
from tufnotary.metadata.canonical import encode_canonical, loads
from tufnotary.metadata.errors import FormatError, MetadataError
from tufnotary.metadata.keys import ECDSA, ED25519, RSA, Key
from tufnotary.metadata.model import (
    ABSENT,
    BASE_ROLES,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    FileMeta,
    is_targets_role,
    is_valid_role,
)

PROG = "tufnotary"
DEFAULT_SERVER = "https://127.0.0.1:4443"
DEFAULT_TRUST_DIR = "~/.tufnotary"
PROGRESS_DELAY_ENV = "TUFNOTARY_PROGRESS_DELAY"
PROGRESS_DELAY = 1.0
EXIT_FAILED = 1
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_MAX_GUN = 255
_ALL_PATHS = '"" <all paths>'


logger = logging.getLogger("tufnotary")


# -- settings and the repository ----------------------------------------------------------------


@dataclass
class Settings:
    """The global options; each subcommand may repeat them after its name (as notary allows)."""

    server: str = DEFAULT_SERVER
    trust_dir: Path = Path(DEFAULT_TRUST_DIR)
    tlscacert: Path | None = None
    json: bool = False
    username: str | None = None
    password: str | None = None
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    gun: str | None = None  # the repository the command works on, for error hints
    staged: int = 0  # staged changes a publish under way sends (kept if it fails)
    token_realm_hosts: tuple[str, ...] = ()
    _trustdir: TrustDir | None = field(default=None, repr=False)

    @property
    def verify(self) -> str | bool:
        return str(self.tlscacert) if self.tlscacert else True

    def trustdir(self) -> TrustDir:
        """The trust directory, with passphrases from the environment or a terminal prompt."""
        if self._trustdir is None:
            prompt = _prompt_passphrase if _interactive() else None
            passphrases = Passphrases(prompt=prompt)
            self._trustdir = TrustDir(self.trust_dir.expanduser(), passphrases)
        return self._trustdir

    def repository(
        self, gun: str, pinning: TrustPinning | None = None, *, offline: bool = False
    ) -> Repository:
        self.gun = gun
        remote = Remote(
            self.server,
            self.verify,
            self.timeout,
            username=self.username,
            password=self.password,
            token=self.token,
            realm_hosts=self.token_realm_hosts,
        )
        return Repository(
            gun, remote, self.trustdir(), verify=self.verify, pinning=pinning, offline=offline
        )


def _settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _prompt_passphrase(role: str, gun: str | None, creating: bool) -> str:
    _Progress.hold()
    text = f"Passphrase for the {'new ' if creating else ''}{role} key" + (
        f" of {gun}" if gun else ""
    )
    return click.prompt(
        text,
        hide_input=True,
        confirmation_prompt=creating,
        default="",
        show_default=False,
        err=True,
    )


# -- output -------------------------------------------------------------------------------------


def _emit(data: Any, human: str | Callable[[], None]) -> None:
    """``data`` as JSON with --json, else the human text (or what ``human`` prints)."""
    if _settings().json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif callable(human):
        human()
    elif human:
        click.echo(human)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns aligned like notary's: header, a ruler of dashes, then the rows."""
    cells = [list(headers), ["-" * len(h) for h in headers]]
    cells += [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["    ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _note(message: str) -> None:
    """A line for the person at the terminal (stderr, so stdout stays machine-readable)."""
    click.echo(message, err=True)


class _Progress:
    """Says on stderr what a network operation is doing, once it has taken ``delay`` seconds."""

    _current: _Progress | None = None

    def __init__(self, message: str) -> None:
        self.message = message
        self.shown = False
        self._lock = threading.Lock()
        self._finished = False
        self._timer: threading.Timer | None = None

    @classmethod
    def hold(cls) -> None:
        """Stop the pending indication (a prompt is about to be shown)."""
        current = cls._current
        if current is not None and current._timer is not None:
            current._timer.cancel()

    def _show(self) -> None:
        with self._lock:
            if not self._finished:
                self.shown = True
                click.echo(f"{self.message} ...", err=True)

    @contextmanager
    def running(self) -> Iterator[None]:
        delay = _progress_delay()
        if delay <= 0:
            self._show()
        else:
            self._timer = threading.Timer(delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        _Progress._current, outcome = self, "failed"
        try:
            yield
            outcome = "done"
        finally:
            _Progress._current = None
            if self._timer is not None:
                self._timer.cancel()
            with self._lock:
                self._finished = True
                if self.shown:
                    click.echo(f"{self.message}: {outcome}", err=True)


def _progress_delay() -> float:
    try:
        return float(os.environ.get(PROGRESS_DELAY_ENV, PROGRESS_DELAY))
    except ValueError:
        return PROGRESS_DELAY


def _progress(message: str) -> Any:
    return _Progress(message).running()


class _StderrHandler(logging.Handler):
    """Library warnings as ``tufnotary: warning: ...`` on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        click.echo(f"{PROG}: {level}: {record.getMessage()}", err=True)


def _configure_logging(verbose: bool) -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


# -- errors -------------------------------------------------------------------------------------


class Failure(click.ClickException):
    """An expected failure: one ``tufnotary: error:`` line on stderr, exit status 1."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        click.echo(f"{PROG}: error: {self.format_message()}", err=True)


def _explain(exc: Exception, settings: Settings) -> str | None:
    """The message, with what to do next, for an expected failure; None for a bug."""
    gun = settings.gun or "GUN"
    server = settings.server
    if isinstance(exc, PassphraseRequired):
        return f"{exc} (or run {PROG} in a terminal to be asked for it)"
    if isinstance(exc, WrongPassphrase):
        return f"{exc}: check the passphrase environment variables or type it again"
    if isinstance(exc, KeyNotFound):
        return f"{exc} in {settings.trust_dir}: `{PROG} key list` shows the keys held there"
    if isinstance(exc, TrustDirError):
        return f"{exc}"
    if isinstance(exc, RepositoryNotFound):
        return (
            f"{gun} has no trust data on {server}: check the name and --server, or create it "
            f"with `{PROG} init {gun}`"
        )
    if isinstance(exc, RepositoryExists):
        return f"{exc}: `{PROG} list {gun}` shows it; choose another name to create a new one"
    if isinstance(exc, PublishError):
        return str(exc)
    if isinstance(exc, TargetNotFound):
        return f"{exc}: `{PROG} list {gun}` shows the signed targets"
    if isinstance(exc, ImageNotSigned):
        return f"not trusted: {exc}: `{PROG} list {gun}` shows the signed tags"
    if isinstance(exc, DigestMismatch):
        return f"not trusted: {exc}: deploy the signed digest, or have this one signed"
    if isinstance(exc, RequiredSignerMissing):
        return f"not trusted: {exc}: its holder signs it with `{PROG} addhash -r {exc.role}`"
    if isinstance(exc, ImageVerificationError):
        return f"not trusted: {exc}"
    if isinstance(exc, UntrustedRootError):
        return f"root of {gun} not trusted: {exc}; check --pin-cert-id and --pin-ca"
    if isinstance(exc, MetadataError):
        return (
            f"trust data of {gun} failed verification: {exc}; do not trust it until you know "
            f"why (`{PROG} delete {gun}` forgets the local copy if the repository was "
            "legitimately re-created)"
        )
    if isinstance(exc, NotCached):
        return f"offline: {exc}: run once without --offline to fetch and verify it"
    if isinstance(exc, RejectedError):
        written = exc.method not in ("GET", "HEAD")
        return f"{exc}; nothing was changed on the server" if written else str(exc)
    if isinstance(exc, NotFoundError):
        return f"{exc}: check the GUN and --server"
    if isinstance(exc, CAFileError):
        return (
            f"{exc}: --tlscacert (or TUFNOTARY_TLSCACERT) must name a PEM file of CA certificates"
        )
    if isinstance(exc, TLSError):
        if settings.tlscacert:
            return (
                f"{exc}; check that {settings.tlscacert} holds the CA that issued its certificate"
            )
        return f"{exc}; pass the CA that issued the server's certificate with --tlscacert"
    if isinstance(exc, ServerTimeout):
        return f"{exc}; check that it is up, or allow it longer with --timeout"
    if isinstance(exc, ServerError):
        return f"{exc}; try again later, or see the server's log"
    if isinstance(exc, ServerUnreachable):
        return f"{exc}; check --server ({server}) and that the server is running"
    if isinstance(exc, RemoteError):
        return f"{exc}: check --server ({server})"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    if isinstance(exc, ValueError):
        return str(exc)
    return None


class _Cli(click.Group):
    """The root group: turns expected exceptions into one-line errors with exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            settings = ctx.ensure_object(Settings)
            message = _explain(exc, settings)
            if message is None:
                raise
            if settings.staged:
                message += (
                    f"; the {settings.staged} staged change(s) are kept: `{PROG} publish "
                    f"{settings.gun}` tries again, `{PROG} reset {settings.gun}` drops them"
                )
            raise Failure(message) from exc


def _fail(message: str) -> NoReturn:
    raise Failure(message)


# -- parameter types ----------------------------------------------------------------------------


class _Gun(click.ParamType):
    name = "GUN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        parts = text.split("/")
        if (
            not text
            or len(text.encode()) > _MAX_GUN
            or any(part in ("", ".", "..") for part in parts)
            or any(c in text for c in "\\\0")
            or any(ord(c) < 0x20 or c == "\x7f" for c in text)
        ):
            self.fail(f"{text!r} is not a repository name such as registry.example.com/team/app")
        return text


class _Role(click.ParamType):
    """A role name: any valid one, or only targets roles (``targets``, ``targets/<name>``)."""

    name = "ROLE"

    def __init__(self, targets_only: bool = True) -> None:
        self.targets_only = targets_only

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        role = str(value)
        ok = is_valid_role(role) and (is_targets_role(role) or not self.targets_only)
        if not ok:
            kind = "a targets role" if self.targets_only else "a role"
            self.fail(
                f"{role!r} is not {kind}: use targets or a full delegation name such as "
                "targets/releases (lower case)"
            )
        return role


GUN = _Gun()
TARGETS_ROLE = _Role()
ANY_ROLE = _Role(targets_only=False)


def _split_roles(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
    """``-r a -r b`` or ``-r a,b`` (notary's string lists), each checked as a targets role."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return [TARGETS_ROLE.convert(name, param, ctx) for name in dict.fromkeys(names)]


def _split_paths(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[str]:
    return [part for value in values for part in value.split(",") if part]


def _hex_digest(size: int) -> Callable[[click.Context, click.Parameter, str | None], bytes | None]:
    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
        if value is None:
            return None
        if len(value) != size * 2 or not _HEX.fullmatch(value):
            raise click.BadParameter(f"must be {size * 2} hex digits")
        return bytes.fromhex(value)

    return check


def _digest(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    digest = value.lower()
    if not _DIGEST.fullmatch(digest):
        raise click.BadParameter("must be sha256:<64 hex digits>")
    return digest


# -- global options -----------------------------------------------------------------------------


def _override(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option repeated after the subcommand's name overrides the global one."""
    if value is not None and value is not False:
        setattr(ctx.ensure_object(Settings), str(param.name), value)


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _configure_logging(True)


def _global_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Accept -s/-d/--tlscacert/--timeout/--json/-v after the subcommand too, as notary's flags
    are."""
    options = [
        click.option(
            "-s",
            "--server",
            metavar="URL",
            callback=_override,
            expose_value=False,
            help="Trust server (see `tufnotary --help`).",
        ),
        click.option(
            "-d",
            "--trust-dir",
            "--trustDir",
            "trust_dir",
            metavar="DIR",
            type=click.Path(file_okay=False, path_type=Path),
            callback=_override,
            expose_value=False,
            help="Trust directory (keys and cached trust data).",
        ),
        click.option(
            "--tlscacert",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            callback=_override,
            expose_value=False,
            help="CA bundle of the server.",
        ),
        click.option(
            "--timeout",
            type=_TIMEOUT,
            metavar="SECONDS",
            callback=_override,
            expose_value=False,
            help="How long to wait for the server (see `tufnotary --help`).",
        ),
        click.option(
            "--json",
            "json",
            is_flag=True,
            default=None,
            callback=_override,
            expose_value=False,
            help="Machine-readable output on stdout.",
        ),
        click.option(
            "-v",
            "--verbose",
            is_flag=True,
            callback=_verbose,
            expose_value=False,
            help="Report what the update does.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_TIMEOUT = click.FloatRange(min=0, min_open=True)

_offline_option = click.option(
    "--offline",
    is_flag=True,
    help="Do not contact the server: use the trust data cached by the last update, with every "
    "check (expired data is still refused); says how old it is. Without it a server that "
    "cannot be reached means exit 1, cache or not.",
)


def _offline_note(repo: Repository) -> None:
    """Say on stderr that the answer came from the cache, and how old that is."""
    if repo.offline:
        _note(f"{PROG}: warning: offline: {_cache_age(repo.gun, repo.cached_at)}")


def _cache_age(gun: str, cached_at: datetime | None) -> str:
    if cached_at is None:
        return f"trust data of {gun} from the cache, of unknown age"
    seconds = max(0, int((datetime.now(UTC) - cached_at).total_seconds()))
    units = [("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)]
    name, size = next((name, size) for name, size in units if seconds >= size or size == 1)
    count = seconds // size
    return (
        f"trust data of {gun} from the cache, last updated from the server {count} {name}"
        f"{'s' if count != 1 else ''} ago ({_utc(cached_at)})"
    )


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _publish_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-p",
        "--publish",
        "publish_now",
        is_flag=True,
        help="Publish right away (with any other staged changes).",
    )(command)


def _roles_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "-r",
        "--roles",
        multiple=True,
        metavar="ROLE",
        callback=_split_roles,
        help=help_text,
    )


@click.group(
    cls=_Cli,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        "Exit status: 0 success (trusted); 1 verification failed or the operation could not be "
        "done (no or untrusted trust data, server unreachable, timing out or failing, TLS or "
        "CA file problem, missing keys or passphrases); 2 usage error. A server that cannot "
        "be reached is never replaced by cached trust data, unlike notary and docker: "
        "list, lookup, verify and verify-image use the cache only with --offline.\n\n"
        "Passphrases come from NOTARY_ROOT_PASSPHRASE, NOTARY_TARGETS_PASSPHRASE, "
        "NOTARY_SNAPSHOT_PASSPHRASE, NOTARY_DELEGATION_PASSPHRASE or docker's "
        "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE / DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE; "
        "otherwise they are asked for when stdin is a terminal."
    ),
)
@click.option(
    "-s",
    "--server",
    metavar="URL",
    envvar="TUFNOTARY_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    help="Trust server URL (env TUFNOTARY_SERVER); the default is where "
    "`tufnotary-server serve` listens.",
)
@click.option(
    "-d",
    "--trust-dir",
    "--trustDir",
    "trust_dir",
    metavar="DIR",
    envvar="TUFNOTARY_TRUST_DIR",
    default=DEFAULT_TRUST_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Keys and cached trust data (env TUFNOTARY_TRUST_DIR); ~/.notary or ~/.docker/trust "
    "share them with notary or docker.",
)
@click.option(
    "--tlscacert",
    envvar="TUFNOTARY_TLSCACERT",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust only server certificates issued by this CA (env TUFNOTARY_TLSCACERT).",
)
@click.option(
    "--timeout",
    envvar="TUFNOTARY_TIMEOUT",
    type=_TIMEOUT,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Give up on a server that does not answer, or stops sending, for this long "
    "(env TUFNOTARY_TIMEOUT).",
)
@click.option(
    "--username",
    envvar="TUFNOTARY_USERNAME",
    help="User for the server's token service (env TUFNOTARY_USERNAME).",
)
@click.option(
    "--password",
    envvar="TUFNOTARY_PASSWORD",
    help="Password for --username (env TUFNOTARY_PASSWORD; prefer the variable).",
)
@click.option(
    "--token",
    envvar="TUFNOTARY_TOKEN",
    help="Bearer token sent to the server as is (env TUFNOTARY_TOKEN).",
)
@click.option(
    "--token-realm-host",
    "token_realm_hosts",
    metavar="HOST",
    multiple=True,
    envvar="TUFNOTARY_TOKEN_REALM_HOSTS",
    help="Also send --username/--password to a token service on HOST (repeatable; * for any; "
    "env TUFNOTARY_TOKEN_REALM_HOSTS, space-separated). By default they go only to the "
    "server's own host.",
)
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Report what the update does.")
@click.version_option(package_name="tufnotary", prog_name=PROG)
@click.pass_context
def cli(
    ctx: click.Context,
    server: str,
    trust_dir: Path,
    tlscacert: Path | None,
    timeout: float,
    username: str | None,
    password: str | None,
    token: str | None,
    token_realm_hosts: tuple[str, ...],
    json_output: bool,
    verbose: bool,
) -> None:
    """Sign and verify container image trust data on a Notary-compatible server."""
    ctx.obj = Settings(
        server,
        trust_dir,
        tlscacert,
        json_output,
        username or None,
        password,
        token or None,
        timeout,
        token_realm_hosts=token_realm_hosts,
    )
    _configure_logging(verbose)


# -- creating and publishing --------------------------------------------------------------------


@cli.command()
@click.argument("gun", type=GUN)
@click.option("-p", "--publish", "_publish", is_flag=True, hidden=True, help="Implied.")
@click.option(
    "--server-snapshot", is_flag=True, help="Let the server hold the snapshot key and sign it."
)
@click.option(
    "--root-key",
    "root_key_id",
    metavar="KEY_ID",
    help="Sign with this root key of the trust directory (when it holds several).",
)
@click.option("--new-root-key", is_flag=True, help="Make a new root key even if one is held.")
@_global_options
def init(
    gun: str, _publish: bool, server_snapshot: bool, root_key_id: str | None, new_root_key: bool
) -> None:
    """Create and publish the repository GUN with new targets (and snapshot) keys.

    Like notary, it signs with the root key already in the trust directory (`key list`), and
    makes a new one only if there is none or --new-root-key is given. Needs the root, targets
    and snapshot passphrases. Exits 1 if GUN already exists.
    """
    if root_key_id and new_root_key:
        raise click.UsageError("give --root-key or --new-root-key, not both")
    settings = _settings()
    repo = settings.repository(gun)
    with _progress(f"initializing {gun} on {settings.server}"):
        done = repo.initialize(
            server_snapshot=server_snapshot, root_key_id=root_key_id, new_root_key=new_root_key
        )
    reused = "root key found, using" if done.root_key_reused else "new root key"
    _emit(
        {
            "gun": gun,
            "server": settings.server,
            "initialized": True,
            "root_key_id": done.root_key_id,
            "root_key_reused": done.root_key_reused,
        },
        f"Initialized {gun} on {settings.server} ({reused}: {done.root_key_id}).",
    )


def _publish(repo: Repository) -> list[str]:
    """Publish the staged changes of ``repo``; the roles sent."""
    settings = _settings()
    settings.staged = len(repo.staged())
    with _progress(f"publishing {settings.staged} change(s) to {repo.gun} on {settings.server}"):
        roles = repo.publish()
    settings.staged = 0
    return roles


def _staged(repo: Repository, changes: list[Change], publish_now: bool, human: str) -> None:
    """Report staged ``changes``; publish them (and earlier ones) with -p."""
    data: dict[str, Any] = {"gun": repo.gun, "staged": [_change_dict(c) for c in changes]}
    if not publish_now:
        _emit(data, f"{human} staged; `{PROG} publish {repo.gun}` publishes it.")
        return
    roles = _publish(repo)
    data |= {"staged": [], "published": roles}
    _emit(data, f"{human} published ({', '.join(roles)}).")


def _custom_json(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """--custom: any JSON value with a canonical form (integers only, no duplicate keys)."""
    if value is None:
        return ABSENT
    try:
        custom = loads(value)
        encode_canonical(custom)
    except FormatError as exc:
        raise click.BadParameter(str(exc)) from None
    return custom


_custom_option = click.option(
    "--custom",
    callback=_custom_json,
    metavar="JSON",
    help='Custom data signed with the target, e.g. \'{"git":"abc123"}\'.',
)


@cli.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_roles_option("Delegation roles to sign the target in (default: targets).")
@_custom_option
@_publish_option
@_global_options
def add(gun: str, name: str, file: Path, roles: list[str], custom: Any, publish_now: bool) -> None:
    """Stage FILE (its length and hashes) as target NAME of GUN."""
    repo = _settings().repository(gun)
    roles = roles or [TARGETS]
    meta = repo.add_file(name, file, roles, custom)
    changes = [Change.add_target(name, meta, role) for role in roles]
    _staged(repo, changes, publish_now, f"Target {name!r} ({', '.join(roles)})")


@cli.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@click.argument("size", type=click.IntRange(min=0))
@click.option("--sha256", callback=_hex_digest(32), metavar="HEX", help="sha256 of the target.")
@click.option("--sha512", callback=_hex_digest(64), metavar="HEX", help="sha512 of the target.")
@_roles_option("Delegation roles to sign the target in (default: targets).")
@_custom_option
@_publish_option
@_global_options
def addhash(
    gun: str,
    name: str,
    size: int,
    sha256: bytes | None,
    sha512: bytes | None,
    roles: list[str],
    custom: Any,
    publish_now: bool,
) -> None:
    """Stage target NAME of GUN by its SIZE in bytes and hashes (e.g. an image manifest)."""
    hashes = {alg: value for alg, value in (("sha256", sha256), ("sha512", sha512)) if value}
    if not hashes:
        raise click.UsageError("give --sha256 and/or --sha512")
    repo = _settings().repository(gun)
    roles = roles or [TARGETS]
    changes = repo.add_target(name, FileMeta(size, hashes, custom), roles)
    _staged(repo, changes, publish_now, f"Target {name!r} ({', '.join(roles)})")


@cli.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@_roles_option("Delegation roles to remove the target from (default: targets).")
@_publish_option
@_global_options
def remove(gun: str, name: str, roles: list[str], publish_now: bool) -> None:
    """Stage the removal of target NAME from GUN."""
    repo = _settings().repository(gun)
    roles = roles or [TARGETS]
    repo.remove_target(name, roles)
    changes = [Change.remove_target(name, role) for role in roles]
    _staged(repo, changes, publish_now, f"Removal of {name!r} ({', '.join(roles)})")


@cli.command()
@click.argument("gun", type=GUN)
@click.option(
    "--signed",
    "signed",
    nargs=2,
    multiple=True,
    type=(TARGETS_ROLE, click.Path(exists=True, dir_okay=False, path_type=Path)),
    metavar="ROLE FILE",
    help="Publish FILE, a version of ROLE signed with `sign` and `cosign`, as it is.",
)
@_global_options
def publish(gun: str, signed: tuple[tuple[str, Path], ...]) -> None:
    """Sign and upload the staged changes of GUN (or, with --signed, files signed already).

    Needs the trust server: exits 1 if it cannot be reached or refuses.
    """
    settings = _settings()
    repo = settings.repository(gun)
    if signed:
        documents = {role: path.read_bytes() for role, path in signed}
        settings.staged = len(repo.staged())
        with _progress(f"publishing {', '.join(documents)} to {settings.server}"):
            roles = repo.publish_signed(documents)
        settings.staged = 0
        _emit({"gun": gun, "published": roles}, f"Published {gun} ({', '.join(roles)}).")
        return
    if not repo.staged():
        _emit({"gun": gun, "published": []}, f"No unpublished changes for {gun}.")
        return
    roles = _publish(repo)
    _emit({"gun": gun, "published": roles}, f"Published {gun} ({', '.join(roles)}).")


_ACTIONS = {ADD_TARGET: "create", REMOVE_TARGET: "delete", ADD_DELEGATION: "create"}


def _change_dict(change: Change) -> dict[str, Any]:
    return {"action": change.action, "role": change.role, "name": change.name}


@cli.command()
@click.argument("gun", type=GUN)
@_global_options
def status(gun: str) -> None:
    """Show the unpublished changes of GUN (offline)."""
    changes = _settings().repository(gun).staged()

    def human() -> None:
        if not changes:
            click.echo(f"No unpublished changes for {gun}.")
            return
        rows = []
        for number, change in enumerate(changes):
            action = _ACTIONS.get(change.action, "delete")
            if change.action in (ADD_TARGET, REMOVE_TARGET):
                rows.append((number, action, change.role, "target", change.name))
            else:
                rows.append((number, action, change.name, "delegation", ""))
        click.echo(f"Unpublished changes for {gun}:\n")
        click.echo(_table(("#", "ACTION", "SCOPE", "TYPE", "PATH"), rows))

    _emit({"gun": gun, "changes": [_change_dict(c) for c in changes]}, human)


@cli.command()
@click.argument("gun", type=GUN)
@click.option("--all", "_all", is_flag=True, hidden=True, help="Implied (notary compatibility).")
@_global_options
def reset(gun: str, _all: bool) -> None:
    """Drop every unpublished change of GUN."""
    repo = _settings().repository(gun)
    count = len(repo.staged())
    repo.reset()
    _emit({"gun": gun, "dropped": count}, f"Dropped {count} unpublished change(s) of {gun}.")


# -- reading ------------------------------------------------------------------------------------


def _digest_of(meta: FileMeta) -> str | None:
    return f"sha256:{meta.sha256_hex}" if meta.sha256_hex else None


def _target_dict(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "role": target.role,
        "length": target.meta.length,
        "digest": _digest_of(target.meta),
        "hashes": {alg: value.hex() for alg, value in sorted(target.meta.hashes.items())},
    }


@cli.command(name="list")
@click.argument("gun", type=GUN)
@_roles_option("List only these roles' targets (they shadow targets).")
@_offline_option
@_global_options
def list_(gun: str, roles: list[str], offline: bool) -> None:
    """List the trusted targets of GUN: NAME DIGEST SIZE ROLE.

    Needs the trust server: exits 1 if it cannot be reached, times out or fails, even with
    trust data cached (--offline reads only the cache).
    """
    settings = _settings()
    repo = settings.repository(gun, offline=offline)
    with _progress(_updating(repo)):
        targets = repo.targets(roles or (TARGETS,))
    _offline_note(repo)

    def human() -> None:
        if not targets:
            click.echo("No targets present in this repository.")
            return
        rows = [(t.name, t.meta.sha256_hex or "-", t.meta.length, t.role) for t in targets]
        click.echo(_table(("NAME", "DIGEST", "SIZE (BYTES)", "ROLE"), rows))

    _emit([_target_dict(t) for t in targets], human)


@cli.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@_offline_option
@_global_options
def lookup(gun: str, name: str, offline: bool) -> None:
    """Print the signed digest and size of target NAME: `NAME sha256:HEX SIZE`.

    Needs the trust server: exits 1 if it cannot be reached, times out or fails, even with
    trust data cached (--offline reads only the cache).
    """
    settings = _settings()
    repo = settings.repository(gun, offline=offline)
    with _progress(_updating(repo)):
        target = repo.lookup(name)
    _offline_note(repo)
    hexes = target.meta.hashes
    alg = "sha256" if "sha256" in hexes else next(iter(sorted(hexes)), "sha256")
    digest = f"{alg}:{hexes[alg].hex()}" if alg in hexes else "-"
    _emit(_target_dict(target), f"{name} {digest} {target.meta.length}")


@cli.command()
@click.argument("gun", type=GUN)
@click.argument("name")
@click.option(
    "-i", "--input", "source", type=click.File("rb"), default="-", help="Read FILE, not stdin."
)
@click.option("-o", "--output", type=click.File("wb"), help="Write the content to FILE.")
@click.option("-q", "--quiet", is_flag=True, help="Do not write the content out.")
@_offline_option
@_global_options
def verify(gun: str, name: str, source: Any, output: Any, quiet: bool, offline: bool) -> None:
    """Check that the content on stdin is target NAME of GUN; on success write it to stdout.

    Exits 1 if the length or a hash differs, or NAME is not signed. Needs the trust server:
    exits 1 if it cannot be reached, times out or fails, even with trust data cached
    (--offline reads only the cache).
    """
    data = source.read()
    settings = _settings()
    repo = settings.repository(gun, offline=offline)
    with _progress(_updating(repo)):
        target = repo.lookup(name)
    _offline_note(repo)
    try:
        target.meta.verify(data, name)
    except MetadataError as exc:
        _fail(f"{name} of {gun} does not match the content: {exc}")
    if settings.json:
        _emit(_target_dict(target) | {"verified": True}, "")
    elif output is not None:
        output.write(data)
    elif not quiet:
        with click.open_file("-", "wb") as stdout:
            stdout.write(data)


# -- delegations --------------------------------------------------------------------------------


@cli.group()
@_global_options
def delegation() -> None:
    """Add, remove and list delegated roles (e.g. targets/releases)."""


def _read_public_keys(path: Path) -> Key:
    """A PEM public key or x509 certificate chain (leaf first) as a metadata key."""
    data = path.read_bytes()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return Key.from_certificates(x509.load_pem_x509_certificates(data))
        public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise click.BadParameter(f"{path}: unreadable PEM: {exc}", param_hint="PEMFILE") from None
    if not isinstance(
        public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
    ):
        raise click.BadParameter(
            f"{path}: unsupported {type(public).__name__}", param_hint="PEMFILE"
        )
    return Key.from_public_key(public)


@delegation.command(name="add")
@click.argument("gun", type=GUN)
@click.argument("role", type=TARGETS_ROLE)
@click.argument("pemfiles", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--paths", multiple=True, callback=_split_paths, metavar="PATH", help="Target path prefixes."
)
@click.option("--all-paths", is_flag=True, help="Delegate every target name.")
@click.option("--threshold", type=click.IntRange(min=1), default=1, show_default=True)
@_publish_option
@_global_options
def delegation_add(
    gun: str,
    role: str,
    pemfiles: tuple[Path, ...],
    paths: list[str],
    all_paths: bool,
    threshold: int,
    publish_now: bool,
) -> None:
    """Stage delegation ROLE of GUN to the public keys or x509 certificates in PEMFILEs."""
    if role == TARGETS:
        raise click.BadParameter("delegations are named targets/<name>", param_hint="ROLE")
    if all_paths and paths:
        raise click.UsageError("give --paths or --all-paths, not both")
    if not pemfiles and not paths and not all_paths:
        raise click.UsageError("give PEM files with the keys, and --paths or --all-paths")
    keys = [_read_public_keys(path) for path in pemfiles]
    paths = [""] if all_paths else paths
    repo = _settings().repository(gun)
    repo.add_delegation(role, keys, paths, threshold)
    change = Change.add_delegation(role, keys, paths, threshold)
    ids = ", ".join(key.key_id for key in keys) or "no new keys"
    shown = ", ".join(_ALL_PATHS if p == "" else p for p in paths) or "no new paths"
    _staged(repo, [change], publish_now, f"Delegation {role} (keys {ids}; paths {shown})")


@delegation.command(name="remove")
@click.argument("gun", type=GUN)
@click.argument("role", type=TARGETS_ROLE)
@_publish_option
@_global_options
def delegation_remove(gun: str, role: str, publish_now: bool) -> None:
    """Stage the removal of delegation ROLE (and its targets) from GUN."""
    if role == TARGETS:
        raise click.BadParameter("delegations are named targets/<name>", param_hint="ROLE")
    repo = _settings().repository(gun)
    repo.remove_delegation(role)
    _staged(repo, [Change.remove_delegation(role)], publish_now, f"Removal of delegation {role}")


@delegation.command(name="list")
@click.argument("gun", type=GUN)
@_global_options
def delegation_list(gun: str) -> None:
    """List the delegations of GUN: ROLE PATHS KEY IDS THRESHOLD.

    Needs the trust server: exits 1 if it cannot be reached or refuses.
    """
    settings = _settings()
    repo = settings.repository(gun)
    with _progress(f"updating trust data of {gun} from {settings.server}"):
        entries = [
            {
                "role": entry.name,
                "paths": list(entry.paths),
                "keyids": list(entry.keyids),
                "threshold": entry.threshold,
            }
            for entry in repo.delegations()
        ]

    def human() -> None:
        if not entries:
            click.echo(f"No delegations present in {gun}.")
            return
        rows = [
            (
                e["role"],
                ", ".join(_ALL_PATHS if p == "" else p for p in e["paths"]),
                ", ".join(e["keyids"]),
                e["threshold"],
            )
            for e in entries
        ]
        click.echo(_table(("ROLE", "PATHS", "KEY IDS", "THRESHOLD"), rows))

    _emit(entries, human)


@cli.command()
@click.argument("gun", type=GUN)
@click.argument("role", type=TARGETS_ROLE)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the signed version.",
)
@_global_options
def sign(gun: str, role: str, output: Path) -> None:
    """Sign the next version of ROLE (with its staged changes) with the keys held here,
    without publishing: for roles whose threshold needs several signers (then `cosign`)."""
    settings = _settings()
    repo = settings.repository(gun)
    with _progress(f"updating trust data of {gun} from {settings.server}"):
        data = repo.sign_role(role)
    output.write_bytes(data)
    _emit({"gun": gun, "role": role, "file": str(output)}, f"Signed {role} into {output}.")


@cli.command()
@click.argument("gun", type=GUN)
@click.argument("role", type=TARGETS_ROLE)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_global_options
def cosign(gun: str, role: str, file: Path) -> None:
    """Add the signatures of the keys held here to FILE, a version of ROLE made by `sign`;
    once enough signers did, publish it with `publish GUN --signed ROLE FILE`."""
    settings = _settings()
    repo = settings.repository(gun)
    with _progress(f"updating trust data of {gun} from {settings.server}"):
        data = repo.cosign(role, file.read_bytes())
    file.write_bytes(data)
    _emit({"gun": gun, "role": role, "file": str(file)}, f"Added signatures to {file}.")


@cli.command()
@click.argument("gun", type=GUN)
@click.argument("roles", nargs=-1, required=True, type=TARGETS_ROLE)
@_global_options
def witness(gun: str, roles: tuple[str, ...]) -> None:
    """Re-sign ROLES of GUN as they are and publish them now (renews or re-validates them)."""
    settings = _settings()
    repo = settings.repository(gun)
    with _progress(f"re-signing {', '.join(roles)} of {gun} on {settings.server}"):
        sent = repo.witness(roles)
    _emit({"gun": gun, "published": sent}, f"Re-signed and published {', '.join(sent)}.")


@cli.command()
@click.argument("gun", type=GUN)
@click.option("--remote", is_flag=True, help="Also delete GUN's trust data on the server.")
@_global_options
def delete(gun: str, remote: bool) -> None:
    """Forget the local trust data and staged changes of GUN (keys are kept)."""
    settings = _settings()
    repo = settings.repository(gun)
    if remote:
        with _progress(f"deleting {gun} on {settings.server}"):
            repo.delete(remote=True)
    else:
        repo.delete()
    where = f"local and remote ({settings.server})" if remote else "local"
    _emit(
        {"gun": gun, "deleted": "remote" if remote else "local"},
        f"Deleted {where} trust data of {gun}.",
    )


# -- keys ---------------------------------------------------------------------------------------


@cli.group()
@_global_options
def key() -> None:
    """Generate, list, rotate, import and export keys."""


def _public_pem(public: Key) -> bytes:
    return public.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@key.command(name="generate")
@click.argument(
    "algorithm_arg", metavar="[ALGORITHM]", required=False, type=click.Choice([ECDSA, ED25519, RSA])
)
@click.option(
    "-a",
    "--algorithm",
    type=click.Choice([ECDSA, ED25519, RSA]),
    help="Key algorithm  [default: ecdsa]",
)
@click.option("-r", "--role", type=ANY_ROLE, default="root", show_default=True)
@click.option("-g", "--gun", type=GUN, help="Repository of a targets or snapshot key.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the public key (PEM) here, e.g. for `delegation add`.",
)
@_global_options
def key_generate(
    algorithm_arg: str | None,
    algorithm: str | None,
    role: str,
    gun: str | None,
    output: Path | None,
) -> None:
    """Generate a key for ROLE into the trust directory (encrypted with its passphrase)."""
    if algorithm_arg and algorithm and algorithm_arg != algorithm:
        raise click.UsageError("ALGORITHM and --algorithm differ")
    chosen = algorithm or algorithm_arg or ECDSA
    if role in (TARGETS, SNAPSHOT) and not gun:
        raise click.UsageError(f"a {role} key belongs to a repository: give --gun")
    if role == TIMESTAMP:
        raise click.BadParameter("the server holds the timestamp key", param_hint="--role")
    private = _settings().trustdir().generate_key(role, gun, chosen)
    pem = _public_pem(private.public)
    if output is not None:
        output.write_bytes(pem)
    data = {
        "key_id": private.public.key_id,
        "role": role,
        "gun": gun,
        "algorithm": chosen,
        "public_key": pem.decode(),
    }
    _emit(data, f"Generated new {chosen} {role} key with keyID: {private.public.key_id}")


@key.command(name="list")
@_global_options
def key_list() -> None:
    """List the private keys in the trust directory: ROLE GUN KEY ID LOCATION."""
    settings = _settings()
    infos = sorted(settings.trustdir().list_keys(), key=lambda k: (k.role, k.gun or "", k.key_id))
    data = [{"key_id": k.key_id, "role": k.role, "gun": k.gun, "path": str(k.path)} for k in infos]

    def human() -> None:
        if not infos:
            click.echo(f"No signing keys found in {settings.trust_dir}.")
            return
        rows = [(k.role, k.gun or "", k.key_id, k.path.parent) for k in infos]
        click.echo(_table(("ROLE", "GUN", "KEY ID", "LOCATION"), rows))

    _emit(data, human)


@key.command(name="rotate")
@click.argument("gun", type=GUN)
@click.argument("role", type=click.Choice(list(BASE_ROLES)))
@click.option(
    "-r",
    "--server-managed",
    is_flag=True,
    help="The server holds the new key (snapshot; implied for timestamp).",
)
@_global_options
def key_rotate(gun: str, role: str, server_managed: bool) -> None:
    """Replace ROLE's key of GUN by a new one and publish the new root at once.

    Needs the trust server: exits 1 if it cannot be reached or refuses.
    """
    if server_managed and role not in (SNAPSHOT, TIMESTAMP):
        raise click.UsageError("only the snapshot and timestamp keys can be server-managed")
    settings = _settings()
    repo = settings.repository(gun)
    with _progress(f"rotating the {role} key of {gun} on {settings.server}"):
        new = repo.rotate_key(role, server_managed=server_managed)
    data = {"gun": gun, "role": role, "key_id": new.key_id, "server_managed": server_managed}
    _emit(data, f"Rotated the {role} key of {gun}: new key {new.key_id}")


def _pem_blocks(data: bytes) -> list[bytes]:
    """Each ``-----BEGIN ...-----`` to ``-----END ...-----`` block of ``data``."""
    blocks = re.findall(rb"-----BEGIN [^\n]*-----.*?-----END [^\n]*-----", data, re.DOTALL)
    return blocks or [data]


@key.command(name="import")
@click.argument(
    "pemfiles",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("-r", "--role", type=ANY_ROLE, help="Role, if the PEM has no role header.")
@click.option("-g", "--gun", type=GUN, help="Repository, if the PEM has no gun header.")
@_global_options
def key_import(pemfiles: tuple[Path, ...], role: str | None, gun: str | None) -> None:
    """Import private keys (PEM: PKCS#8, SEC1, PKCS#1; notary exports) into the trust dir."""
    trustdir = _settings().trustdir()
    imported = []
    for path in pemfiles:
        for block in _pem_blocks(path.read_bytes()):
            try:
                key_id = trustdir.import_key(block, role, gun)
            except ValueError as exc:
                _fail(f"{path}: {exc} (give --role)")
            except KeyFileError as exc:
                _fail(f"{path}: {exc}")
            imported.append({"key_id": key_id, "file": str(path)})
    _emit(imported, "\n".join(f"Imported key {k['key_id']} from {k['file']}" for k in imported))


@key.command(name="export")
@click.argument("key_ids", nargs=-1)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE (mode 0600) instead of stdout.",
)
@_global_options
def key_export(key_ids: tuple[str, ...], output: Path | None) -> None:
    """Export private keys (encrypted, with role and gun headers); all keys without KEY_IDS."""
    trustdir = _settings().trustdir()
    ids = key_ids or tuple(info.key_id for info in trustdir.list_keys())
    pem = b"".join(trustdir.export_key(key_id) for key_id in ids)
    if output is None:
        with click.open_file("-", "wb") as stdout:
            stdout.write(pem)
        return
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    _note(f"Exported {len(ids)} key(s) to {output}")


@key.command(name="remove")
@click.argument("key_id")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@_global_options
def key_remove(key_id: str, yes: bool) -> None:
    """Delete the private key KEY_ID from the trust directory (irreversible)."""
    if not yes:
        if not _interactive():
            raise click.UsageError("removing a key is irreversible: confirm with --yes")
        click.confirm(f"Delete key {key_id}?", abort=True, err=True)
    _settings().trustdir().remove_key(key_id)
    _emit({"key_id": key_id, "removed": True}, f"Deleted key {key_id}.")


# -- deploy gates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageReference:
    """``[registry/]repo[:tag][@sha256:...]`` split into the GUN, the tag and the digest."""

    gun: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Docker's reading: no registry means docker.io (``library/`` for one-part names)."""
        name, _, digest = text.partition("@")
        tag = None
        slash = name.rfind("/")
        if ":" in name[slash + 1 :]:
            name, tag = name.rsplit(":", 1)
            if not tag:
                raise ValueError("empty tag")
        if digest and not _DIGEST.fullmatch(digest.lower()):
            raise ValueError("the digest must be sha256:<64 hex digits>")
        first = name.split("/", 1)[0]
        if "/" not in name:
            name = f"docker.io/library/{name}"
        elif "." not in first and ":" not in first and first != "localhost":
            name = f"docker.io/{name}"
        return cls(GUN.convert(name, None, None), tag, digest.lower() or None)


def _reference(ctx: click.Context, param: click.Parameter, value: str) -> ImageReference:
    try:
        return ImageReference.parse(value)
    except (ValueError, click.BadParameter) as exc:
        message = exc.message if isinstance(exc, click.BadParameter) else str(exc)
        raise click.BadParameter(f"{value!r}: {message}") from None


def _updating(repo: Repository) -> str:
    """What the progress line says while ``repo`` is read."""
    if repo.offline:
        return f"reading the cached trust data of {repo.gun}"
    return f"updating trust data of {repo.gun} from {repo.remote.url}"


def _by_digest(repo: Repository, digest: str, roles: Sequence[str]) -> VerifiedImage:
    """The first tag (by name) signed with ``digest`` that passes the policy."""
    trusted = repo.refresh()
    wanted = digest.removeprefix("sha256:")
    names = {
        name
        for role in trusted.walk()
        for name, meta in trusted.targets_of(role).items()
        if meta.sha256_hex == wanted
    }
    for tag in sorted(names):
        try:
            return resolve_image(repo.updater, tag, digest, roles)
        except ImageVerificationError:
            continue
    raise ImageNotSigned(digest, "no trusted tag is signed with this digest")


@cli.command(name="verify-image")
@click.argument("ref", metavar="REF", callback=_reference)
@click.option(
    "--digest",
    callback=_digest,
    metavar="sha256:HEX",
    help="Fail unless this is the signed digest (a digest in REF counts too).",
)
@click.option(
    "--require-role",
    "required",
    multiple=True,
    callback=_split_roles,
    metavar="ROLE",
    help="Delegation that must sign the tag (repeat: all must, with one digest).",
)
@click.option(
    "--pin-cert-id",
    "cert_ids",
    multiple=True,
    metavar="ID",
    help="Accept only a root signed by this certificate key id (repeatable).",
)
@click.option(
    "--pin-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Accept only a root whose certificate chains to this CA bundle.",
)
@_offline_option
@_global_options
def verify_image(
    ref: ImageReference,
    digest: str | None,
    required: list[str],
    cert_ids: tuple[str, ...],
    pin_ca: Path | None,
    offline: bool,
) -> None:
    """Check that image REF is signed: `registry/repo:tag`, `registry/repo@sha256:...` or both.

    Without --require-role, docker's rule: the tag as targets/releases signs it, else as
    targets signs it. Exit status 0 trusted (the digest is printed), 1 not trusted (unsigned
    tag, other digest, missing signer, bad trust data, server unreachable, timing out or
    failing, TLS or CA file problem), 2 usage error. With --json, a refusal prints
    {"trusted": false, "reason": KIND, "error": MESSAGE, ...}.

    Fails closed: unlike notary and docker, cached trust data never stands in for a server
    that cannot be reached. --offline uses only the cache (still refusing expired data) and
    says how old it is. Pinning applies when this trust dir first sees the repository (and to
    root rotations).
    """
    if digest and ref.digest and digest != ref.digest:
        raise click.UsageError(f"--digest {digest} differs from the digest in REF {ref.digest}")
    digest = digest or ref.digest
    tag = ref.tag or (None if digest else "latest")
    pinning = None
    if cert_ids or pin_ca:
        certs = {ref.gun: list(cert_ids)} if cert_ids else {}
        pinning = TrustPinning(certs=certs, ca={ref.gun: pin_ca} if pin_ca else {})
    settings = _settings()
    repo = settings.repository(ref.gun, pinning, offline=offline)
    try:
        with _progress(_updating(repo)):
            if tag is None:
                assert digest is not None
                image = _by_digest(repo, digest, required)
            else:
                image = repo.verify_image(tag, digest, Policy(required, pinning))
    except Exception as exc:
        message = _explain(exc, settings)
        if message is None:
            raise
        if not message.startswith("not trusted"):
            message = f"not trusted: {message}"
        if settings.json:
            click.echo(
                json.dumps(
                    {
                        "gun": ref.gun,
                        "tag": tag,
                        "digest": digest,
                        "trusted": False,
                        "reason": type(exc).__name__,
                        "error": message,
                    },
                    indent=2,
                    sort_keys=True,
                )
            )
        raise Failure(message) from exc
    data: dict[str, Any] = {
        "gun": image.gun,
        "tag": image.tag,
        "digest": image.digest,
        "role": image.role,
        "length": image.length,
        "trusted": True,
    }
    if offline:
        data["offline"] = True
        data["cached_at"] = _utc(image.cached_at) if image.cached_at else None
    _offline_note(repo)
    shown = f"{image.gun}:{image.tag}"
    _emit(data, f"trusted: {shown} -> {image.digest} (signed by {image.role})")


def main() -> None:
    """Entry point of the ``tufnotary`` script."""
    cli(prog_name=PROG)


if __name__ == "__main__":
    main()
