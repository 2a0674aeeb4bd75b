"""The webhook's decisions when the trust server is down, slow, or tampered with, and its cache:
warm admissions do not reach the server, trust data is not used past its expiry, and concurrent
admissions of one repository share one update.

The trust server is ``support.tamper.TrustServer``, which serves metadata this test signs
itself (and records every request), so each test controls every byte the webhook sees.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from support.tamper import Repository, Stalled, TrustServer
from tufnotary.admission.cache import HIT, REFRESH, SHARED, TrustCache
from tufnotary.admission.decide import Checker, Decision, Result
from tufnotary.admission.policy import AdmissionPolicy
from tufnotary.metadata.model import SNAPSHOT, TARGETS, TIMESTAMP, format_expires

GUN = "registry.example.com/team/app"
MANIFEST = b'{"schemaVersion": 2, "layers": []}'


@pytest.fixture
def trust() -> Iterator[TrustServer]:
    with TrustServer().running() as server:
        yield server


@pytest.fixture
def repo(trust: TrustServer) -> Repository:
    """``GUN`` with tag 1.4 signed in targets."""
    repo = Repository(trust, GUN)
    repo.builder.add_target("1.4", MANIFEST)
    repo.publish(TARGETS)
    return repo


def checker(
    trust: TrustServer, *, refresh: float = 3600, timeout: float = 5, **kwargs: Any
) -> Checker:
    policy = AdmissionPolicy.from_dict(
        {
            "servers": {"main": {"url": trust.url, "timeout": timeout}},
            "rules": [{"images": "registry.example.com/**", "server": "main"}],
            "refresh_seconds": refresh,
        }
    )
    return Checker(policy, TrustCache(policy.refresh_seconds, **kwargs))


def fetches(trust: TrustServer, name: str = TIMESTAMP) -> int:
    return trust.requests.count(name)


def expect_denied(decision: Decision, *needles: str) -> None:
    assert decision.result is Result.DENIED, decision
    for needle in needles:
        assert needle in decision.reason, decision


def test_warm_admissions_do_not_reach_the_server(trust: TrustServer, repo: Repository) -> None:
    events: list[str] = []
    webhook = checker(trust, on_event=events.append)
    first = webhook.decide(f"{GUN}:1.4")
    assert first.result is Result.ALLOWED and first.pinned
    asked = len(trust.requests)
    for _ in range(20):
        assert webhook.decide(f"{GUN}:1.4").pinned == first.pinned
    expect_denied(webhook.decide(f"{GUN}:9.9"), "9.9: the tag is not signed")
    assert len(trust.requests) == asked, "a warm admission reached the trust server"
    assert events == [REFRESH] + [HIT] * 21


def test_after_the_refresh_interval_the_server_is_asked_again(
    trust: TrustServer, repo: Repository
) -> None:
    webhook = checker(trust, refresh=0)
    assert webhook.decide(f"{GUN}:1.4").allowed
    assert webhook.decide(f"{GUN}:1.4").allowed
    assert fetches(trust) == 2
    trust.files.clear()  # the repository is gone from the server: no stale answer
    expect_denied(webhook.decide(f"{GUN}:1.4"), f"repository {GUN} does not exist")


def test_trust_data_is_not_used_past_its_expiry(trust: TrustServer, repo: Repository) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    repo.timestamp.expires = format_expires(soon)
    repo.publish_snapshot()
    webhook = checker(trust, refresh=3600)
    assert webhook.decide(f"{GUN}:1.4").allowed
    while datetime.now(UTC) < soon + timedelta(milliseconds=100):
        time.sleep(0.1)
    expect_denied(webhook.decide(f"{GUN}:1.4"), "expired")
    assert fetches(trust) > 1  # it went back to the server instead of using what it had


def test_server_down_is_denied(trust: TrustServer, repo: Repository) -> None:
    webhook = checker(trust)
    url = trust.url
    trust._http.shutdown()
    trust._http.server_close()
    expect_denied(webhook.decide(f"{GUN}:1.4"), f"cannot reach the trust server {url}")


def test_slow_server_is_denied_within_the_timeout(trust: TrustServer, repo: Repository) -> None:
    stall = Stalled(limit=30)
    trust.hooks[TIMESTAMP] = stall
    try:
        started = time.monotonic()
        decision = checker(trust, timeout=0.5).decide(f"{GUN}:1.4")
        elapsed = time.monotonic() - started
    finally:
        stall.release.set()
    expect_denied(decision, "did not answer within 0.5 seconds")
    assert elapsed < stall.limit  # bounded by the timeout, not by the stalled server


def test_tampered_targets_are_denied(trust: TrustServer, repo: Repository) -> None:
    served = trust.files[TARGETS]
    forged = served.replace(b'"1.4"', b'"1.5"')
    assert forged != served
    for name in [n for n, data in trust.files.items() if data == served]:
        trust.files[name] = forged
    expect_denied(checker(trust).decide(f"{GUN}:1.4"), "failed verification")


def test_rolled_back_timestamp_is_denied(trust: TrustServer, repo: Repository) -> None:
    webhook = checker(trust, refresh=0)
    old = trust.files[TIMESTAMP]
    repo.publish_snapshot()
    assert webhook.decide(f"{GUN}:1.4").allowed
    trust.files[TIMESTAMP] = old
    expect_denied(webhook.decide(f"{GUN}:1.4"), "failed verification", "timestamp")


def test_root_pinning(trust: TrustServer, repo: Repository) -> None:
    def pinned(cert_id: str) -> Checker:
        policy = AdmissionPolicy.from_dict(
            {
                "servers": {"main": {"url": trust.url}},
                "rules": [{"images": "**", "server": "main", "pin_root_certs": [cert_id]}],
            }
        )
        return Checker(policy, TrustCache(policy.refresh_seconds))

    assert pinned(repo.builder.root_cert.key_id).decide(f"{GUN}:1.4").allowed
    expect_denied(pinned("0" * 64).decide(f"{GUN}:1.4"), "trust_pinning")


class _HeldSession(requests.Session):
    """Holds the first timestamp request until ``release`` is set (at most 30 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.held = 0

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if str(url).endswith("/timestamp.json") and not self.held:
            self.held += 1
            self.release.wait(30)
        return super().request(method, url, *args, **kwargs)


def test_concurrent_admissions_share_one_update(trust: TrustServer, repo: Repository) -> None:
    waiting = 5
    events: list[str] = []
    session = _HeldSession()
    webhook = checker(trust, session=session, on_event=events.append)
    results: list[Decision] = []
    threads = [
        threading.Thread(target=lambda: results.append(webhook.decide(f"{GUN}:1.4")))
        for _ in range(waiting + 1)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while events.count(SHARED) < waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    session.release.set()
    for thread in threads:
        thread.join(30)
    assert sorted(events) == sorted([REFRESH] + [SHARED] * waiting)
    assert fetches(trust) == 1 and fetches(trust, SNAPSHOT) <= 1
    assert len(results) == waiting + 1 and all(r.result is Result.ALLOWED for r in results)


def test_a_failed_update_is_not_cached(trust: TrustServer, repo: Repository) -> None:
    trust.files.clear()
    webhook = checker(trust)
    expect_denied(webhook.decide(f"{GUN}:1.4"), "does not exist")
    repo.publish_snapshot()  # the failure is not cached: the next admission asks again
    assert webhook.decide(f"{GUN}:1.4").allowed
