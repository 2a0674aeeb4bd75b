"""`tufnotary-admission serve | check`.

The serving process imports nothing that uses ``ssl`` (requests, urllib3) before gunicorn's
gevent workers patch it: the application is imported in the workers.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from gunicorn.app.base import BaseApplication

from tufnotary.admission.policy import AdmissionPolicy, PolicyError

if TYPE_CHECKING:
    from flask import Flask

PROG = "tufnotary-admission"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
GRACEFUL_TIMEOUT = 20


class UsageFailure(click.ClickException):
    """Bad policy or settings: one line on stderr, exit status 2."""

    exit_code = 2


def _load_policy(path: Path) -> AdmissionPolicy:
    try:
        return AdmissionPolicy.load(path)
    except PolicyError as exc:
        raise UsageFailure(f"policy: {exc}") from None


_file = click.Path(path_type=Path, dir_okay=False)
policy_option = click.option(
    "--policy", "policy_file", type=_file, required=True, help="The policy (YAML)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tufnotary", prog_name=PROG)
def main() -> None:
    """Kubernetes admission webhook: admit only images whose tags are signed in a tufnotary
    (Notary v1) trust server, pinned to the signed digest."""


@main.command()
@policy_option
@click.option("--listen", default="0.0.0.0:8443", show_default=True, metavar="HOST:PORT")
@click.option("--tls-cert", type=_file, required=True, help="PEM certificate chain.")
@click.option("--tls-key", type=_file, required=True, help="PEM private key.")
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Writable directory for trust data and metrics (default: the system's temporary one).",
)
def serve(
    policy_file: Path,
    listen: str,
    tls_cert: Path,
    tls_key: Path,
    workers: int,
    cache_dir: Path | None,
) -> None:
    """Serve POST /mutate and /validate (AdmissionReview v1), GET /healthz and /metrics over
    HTTPS. Each worker keeps its own trust data cache."""
    _load_policy(policy_file)  # a bad policy stops the start here, in one line
    for name, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if not path.is_file():
            raise UsageFailure(f"{name}: no such file: {path}")
    base = Path(tempfile.mkdtemp(prefix=f"{PROG}-", dir=cache_dir))
    (base / "metrics").mkdir()
    os.environ.setdefault(METRICS_ENV, str(base / "metrics"))
    # gunicorn imported ssl before the gevent worker patches it; harmless here.
    warnings.filterwarnings("ignore", message=".*[Mm]onkey-patching ssl.*")

    def when_ready(_arbiter: Any) -> None:
        click.echo(f"{PROG}: listening on https://{listen}", err=True)

    def child_exit(_arbiter: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    _Gunicorn(
        policy_file,
        base,
        {
            "bind": [listen],
            "workers": workers,
            "worker_class": "gevent",
            "certfile": str(tls_cert),
            "keyfile": str(tls_key),
            "accesslog": None,
            "errorlog": "-",
            "graceful_timeout": GRACEFUL_TIMEOUT,
            "proc_name": PROG,
            "when_ready": when_ready,
            "child_exit": child_exit,
        },
    ).run()


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, policy_file: Path, cache_dir: Path, options: dict[str, Any]) -> None:
        self.policy_file = policy_file
        self.cache_dir = cache_dir
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from tufnotary.admission.app import create_app

        return create_app(self.policy_file, cache_dir=self.cache_dir)


@main.command()
@policy_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@click.argument("images", nargs=-1, required=True)
def check(policy_file: Path, as_json: bool, images: tuple[str, ...]) -> None:
    """Print the decision for each IMAGE as the webhook would make it (without a cluster);
    exit 0 when all are allowed, 1 if one is denied."""
    from tufnotary.admission.cache import TrustCache
    from tufnotary.admission.decide import Checker

    policy = _load_policy(policy_file)
    checker = Checker(policy, TrustCache(policy.refresh_seconds))
    decisions = [checker.decide(image) for image in images]
    for decision in decisions:
        if as_json:
            fields = {
                "image": decision.image,
                "result": decision.result.value,
                "reason": decision.reason,
                "pinned": decision.pinned,
            }
            click.echo(json.dumps(fields))
        else:
            click.echo(decision.describe())
    if not all(decision.allowed for decision in decisions):
        raise SystemExit(1)
