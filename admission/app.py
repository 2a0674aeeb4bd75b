"""The webhook's WSGI application: ``POST /mutate``, ``POST /validate``, ``GET /healthz``,
``GET /metrics``.

Every image decision is logged as one JSON line (logger ``tufnotary.admission.decisions``) and
counted in the Prometheus metrics.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from tufnotary.admission.cache import TrustCache
from tufnotary.admission.decide import Checker
from tufnotary.admission.policy import AdmissionPolicy
from tufnotary.admission.review import Review, ReviewError, ReviewRequest, review

POLICY_ENV = "TUFNOTARY_ADMISSION_POLICY"
MAX_BODY = 16 * 1024 * 1024
decision_log = logging.getLogger("tufnotary.admission.decisions")

DECISIONS = Counter(
    "tufnotary_admission_decisions_total",
    "Image admission decisions, by endpoint and result.",
    ["endpoint", "result"],
)
LATENCY = Histogram(
    "tufnotary_admission_request_duration_seconds",
    "Time to answer an AdmissionReview, by endpoint.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CACHE = Counter(
    "tufnotary_admission_cache_total",
    "Trust data lookups: hit (from memory), refresh (updated from the server), shared "
    "(waited for an update another admission ran).",
    ["event"],
)


def configure_decision_log() -> None:
    """Decision lines go to stderr as they are (each is one JSON object)."""
    if not decision_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        decision_log.addHandler(handler)
        decision_log.propagate = False
    decision_log.setLevel(logging.INFO)


def log_decisions(endpoint: str, done: Review) -> None:
    """One JSON line and one count per image decision."""
    req = done.request
    base = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "endpoint": endpoint,
        "uid": req.uid,
        "namespace": req.namespace,
        "kind": req.kind,
        "object": req.name,
        "operation": req.operation,
        "dry_run": req.dry_run,
    }
    if done.refusal is not None:
        DECISIONS.labels(endpoint, "denied").inc()
        decision_log.info(json.dumps({**base, "result": "denied", "reason": done.refusal}))
    for image, decision in done.decisions:
        DECISIONS.labels(endpoint, decision.result.value).inc()
        entry = {
            **base,
            "container": image.container,
            "image": decision.image,
            "result": decision.result.value,
            "reason": decision.reason,
            "pinned": decision.pinned,
            "rule": decision.rule,
        }
        decision_log.info(json.dumps(entry))


def _metrics() -> bytes:
    """Prometheus exposition, added up over gunicorn workers when PROMETHEUS_MULTIPROC_DIR
    is set (``tufnotary-admission serve`` sets it)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


def create_app(
    policy: AdmissionPolicy | Path | None = None, *, cache_dir: Path | None = None
) -> Flask:
    """The webhook for ``policy`` (default: the file named by $TUFNOTARY_ADMISSION_POLICY),
    with trust data kept under ``cache_dir`` (default: a temporary directory); PolicyError if
    the policy is not valid."""
    if not isinstance(policy, AdmissionPolicy):
        path = policy or os.environ.get(POLICY_ENV)
        if not path:
            raise ValueError(f"no policy: pass one, or name its file in ${POLICY_ENV}")
        policy = AdmissionPolicy.load(Path(path))
    cache = TrustCache(
        policy.refresh_seconds,
        directory=cache_dir,
        on_event=lambda event: CACHE.labels(event).inc(),
    )
    checker = Checker(policy, cache)
    configure_decision_log()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    def admit(endpoint: str) -> Response:
        started = time.perf_counter()
        try:
            parsed = ReviewRequest.parse(request.get_json(force=True, silent=True))
        except ReviewError as exc:
            return Response(f"{exc}\n", 400, mimetype="text/plain")
        done = review(checker, parsed)
        log_decisions(endpoint, done)
        body = json.dumps(done.response(mutate=endpoint == "mutate"))
        LATENCY.labels(endpoint).observe(time.perf_counter() - started)
        return Response(body, 200, mimetype="application/json")

    app.add_url_rule("/mutate", "mutate", lambda: admit("mutate"), methods=["POST"])
    app.add_url_rule("/validate", "validate", lambda: admit("validate"), methods=["POST"])
    app.add_url_rule("/healthz", "healthz", lambda: Response("ok\n", mimetype="text/plain"))
    app.add_url_rule(
        "/metrics", "metrics", lambda: Response(_metrics(), mimetype=CONTENT_TYPE_LATEST)
    )
    return app
