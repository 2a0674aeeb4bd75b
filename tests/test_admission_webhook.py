"""`tufnotary-admission serve` (gunicorn, TLS) answering AdmissionReview v1 requests as the API
server sends them, against a real trust server populated by the real notary and docker CLIs.

The returned JSONPatch is applied with a JSON-Patch library and the pinned digests checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import requests
import yaml

from support.clients import DOCKER_HINT, NOTARY_HINT, DockerCLI, NotaryCLI, require_cli
from support.server import ServerInfo, free_port, launched, running_server, server_environment
from tufnotary.server.tls import ensure_self_signed

pytestmark = pytest.mark.e2e

APP = "registry.example.com/team/app"
SCANNED = "registry.example.com/scanned/app"
NGINX = "docker.io/library/nginx"
PORTED = "localhost:5000/tools/cli"
BIN = Path(sys.executable).parent


def manifest(name: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "layers": [], "name": name}).encode()


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(manifest(name)).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    with running_server(tmp_path_factory.mktemp("admission-trust")) as info:
        yield info


@pytest.fixture(scope="module")
def signed(server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tags signed with the notary CLI, and with docker trust's signer delegations."""
    base = tmp_path_factory.mktemp("signers")
    notary = NotaryCLI.for_server(server, base / "notary", require_cli("notary", NOTARY_HINT))
    for name in ("a", "b", "c", "scanned", "released"):
        (base / name).write_bytes(manifest(name))
    for gun, tags in (
        (APP, {"1.4": "a", "2.0": "b"}),
        (NGINX, {"latest": "c"}),
        (PORTED, {"v1": "a"}),
    ):
        notary.run("init", "-p", gun)
        for tag, content in tags.items():
            notary.run("add", "-p", gun, tag, str(base / content))

    docker = DockerCLI.for_server(server, base / "docker", require_cli("docker", DOCKER_HINT))
    (base / "keys").mkdir()
    docker.run("trust", "key", "generate", "scanner", "--dir", str(base / "keys"))
    docker.run(
        "trust", "signer", "add", "--key", str(base / "keys/scanner.pub"), "scanner", SCANNED
    )
    signer = docker.notary(require_cli("notary", NOTARY_HINT))
    releases, scanned = ("--roles", "targets/releases"), ("--roles", "targets/scanner")
    signer.run("add", "-p", SCANNED, "1.0", str(base / "scanned"), *releases, *scanned)
    signer.run("add", "-p", SCANNED, "1.1", str(base / "released"), *releases)


@dataclass(frozen=True)
class Webhook:
    url: str
    ca: Path
    log: Path

    def post(self, endpoint: str, body: Any) -> requests.Response:
        return requests.post(f"{self.url}/{endpoint}", json=body, verify=str(self.ca), timeout=30)

    def admit(self, endpoint: str, review: dict[str, Any]) -> dict[str, Any]:
        response = self.post(endpoint, review)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == review["request"]["uid"]
        return answer["response"]


def write_policy(path: Path, server: ServerInfo) -> Path:
    policy = {
        "servers": {"main": {"url": server.url, "ca": str(server.ca_cert), "timeout": 5}},
        "rules": [
            {
                "images": "registry.example.com/scanned/**",
                "server": "main",
                "require_roles": ["targets/releases", "targets/scanner"],
            },
            {"images": "registry.example.com/warn/**", "server": "main", "mode": "warn"},
            {"images": "registry.example.com/skip/*", "mode": "skip"},
            {
                "images": ["registry.example.com/**", "docker.io/library/*", "localhost:5000/**"],
                "server": "main",
            },
            {"images": "**"},
        ],
        "exempt_namespaces": ["kube-system"],
        "refresh_seconds": 30,
    }
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def webhook(
    server: ServerInfo, signed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webhook]:
    base = tmp_path_factory.mktemp("webhook")
    tls = ensure_self_signed(base)
    port = free_port()
    command = [str(BIN / "tufnotary-admission"), "serve", "--listen", f"127.0.0.1:{port}"]
    command += ["--policy", str(write_policy(base / "policy.yaml", server))]
    command += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--workers", "1"]
    command += ["--cache-dir", str(base)]
    log = base / "webhook.log"
    with launched(command, log, server_environment({})) as process:
        hook = Webhook(f"https://127.0.0.1:{port}", tls.ca_cert, log)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(f"{hook.url}/healthz", verify=str(tls.ca_cert), timeout=5).ok:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield hook


def pod_spec(*images: str, init: tuple[str, ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    }
    if init:
        spec["initContainers"] = [{"name": f"init{i}", "image": im} for i, im in enumerate(init)]
    return spec


def review_of(
    kind: str,
    obj: dict[str, Any],
    *,
    operation: str = "CREATE",
    namespace: str = "default",
    old: dict[str, Any] | None = None,
    dry_run: bool = False,
    sub_resource: str | None = None,
) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it."""
    group, version = (
        ("", "v1") if kind == "Pod" else ("batch" if kind in ("Job", "CronJob") else "apps", "v1")
    )
    gvk = {"group": group, "version": version, "kind": kind}
    gvr = {"group": group, "version": version, "resource": kind.lower() + "s"}
    obj = {"apiVersion": f"{group}/{version}".lstrip("/"), "kind": kind, **obj}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": obj["metadata"].get("name", ""),
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def pod(*images: str, init: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": pod_spec(*images, init=init),
    }


def deployment(*images: str) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec(*images)}
    spec = {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template}
    return {"metadata": {"name": "web", "namespace": "default"}, "spec": spec}


def patched(review: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The object with the response's JSONPatch applied."""
    assert response["allowed"] is True, response
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(review["request"]["object"], patch)


def test_pod_tags_are_pinned_to_the_signed_digests(webhook: Webhook) -> None:
    review = review_of(
        "Pod", pod(f"{APP}:1.4", "nginx", "localhost:5000/tools/cli:v1", init=(f"{APP}:2.0",))
    )
    result = patched(review, webhook.admit("mutate", review))
    assert [c["image"] for c in result["spec"]["containers"]] == [
        f"{APP}:1.4@{digest('a')}",
        f"nginx:latest@{digest('c')}",
        f"localhost:5000/tools/cli:v1@{digest('a')}",
    ]
    assert result["spec"]["initContainers"][0]["image"] == f"{APP}:2.0@{digest('b')}"
    # the validating webhook sees the pinned object: allowed as is
    again = review_of("Pod", result)
    answer = webhook.admit("validate", again)
    assert answer["allowed"] is True and "patch" not in answer


def test_deployment_create_update_and_dry_run(webhook: Webhook) -> None:
    created = review_of("Deployment", deployment(f"{APP}:1.4"))
    first = patched(created, webhook.admit("mutate", created))
    assert first["spec"]["template"]["spec"]["containers"][0]["image"] == f"{APP}:1.4@{digest('a')}"

    update = review_of(
        "Deployment", deployment(f"{APP}:2.0"), operation="UPDATE", old=first, dry_run=True
    )
    second = patched(update, webhook.admit("mutate", update))
    assert (
        second["spec"]["template"]["spec"]["containers"][0]["image"] == f"{APP}:2.0@{digest('b')}"
    )


def test_cronjob_and_ephemeral_containers(webhook: Webhook) -> None:
    job = {"spec": {"template": {"spec": pod_spec(f"{APP}:1.4") | {"restartPolicy": "Never"}}}}
    cron = {"metadata": {"name": "nightly"}, "spec": {"schedule": "0 3 * * *", "jobTemplate": job}}
    review = review_of("CronJob", cron)
    result = patched(review, webhook.admit("mutate", review))
    image = result["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{APP}:1.4@{digest('a')}"

    debug = pod(f"{APP}:1.4@{digest('a')}")
    debug["spec"]["ephemeralContainers"] = [{"name": "debug", "image": f"{APP}:9.9"}]
    refused = webhook.admit(
        "validate", review_of("Pod", debug, operation="UPDATE", sub_resource="ephemeralcontainers")
    )
    assert refused["allowed"] is False
    assert f"{APP}:9.9: 9.9: the tag is not signed" in refused["status"]["message"]


def test_digests_are_checked_and_left_as_they_are(webhook: Webhook) -> None:
    review = review_of("Pod", pod(f"{APP}@{digest('b')}", f"{APP}:1.4@{digest('a')}"))
    for endpoint in ("mutate", "validate"):
        answer = webhook.admit(endpoint, review)
        assert answer["allowed"] is True and "patch" not in answer, answer


def test_required_signers(webhook: Webhook) -> None:
    review = review_of("Pod", pod(f"{SCANNED}:1.0"))
    assert patched(review, webhook.admit("mutate", review))["spec"]["containers"][0]["image"] == (
        f"{SCANNED}:1.0@{digest('scanned')}"
    )


DENIALS = {
    "registry.example.com/team/none:1": "repository registry.example.com/team/none does not exist",
    f"{APP}:9.9": "9.9: the tag is not signed",
    f"{APP}@sha256:{'0' * 64}": "no trusted tag is signed with this digest",
    f"{APP}:1.4@{digest('b')}": f"digest {digest('b')} is not the signed digest {digest('a')}",
    f"{SCANNED}:1.1": "required signer targets/scanner does not sign 1.1",
    "quay.io/team/app:1": "rule 5 (**) names no trust server: nothing can sign quay.io/team/app",
    "Bad Image!": "not a valid image reference",
}


@pytest.mark.parametrize("endpoint", ["mutate", "validate"])
def test_every_denial_names_the_image_and_the_reason(webhook: Webhook, endpoint: str) -> None:
    for image, reason in DENIALS.items():
        answer = webhook.admit(endpoint, review_of("Pod", pod(f"{APP}:1.4", image)))
        assert answer["allowed"] is False and "patch" not in answer, answer
        assert answer["status"]["code"] == 403
        message = answer["status"]["message"]
        assert message.startswith("image not trusted: ") and f"{image}: " in message, message
        assert reason in message, message
        assert f"{APP}:1.4: " not in message  # only the refused image is named


def test_warn_skip_and_exempt_namespaces(webhook: Webhook) -> None:
    warned = webhook.admit(
        "mutate", review_of("Pod", pod("registry.example.com/warn/app:1", f"{APP}:1.4"))
    )
    assert warned["allowed"] is True and len(warned["warnings"]) == 1, warned
    assert warned["warnings"][0].startswith("registry.example.com/warn/app:1: not trusted, allowed")
    skipped = webhook.admit("mutate", review_of("Pod", pod("registry.example.com/skip/app:1")))
    assert skipped["allowed"] is True and "patch" not in skipped
    exempt = webhook.admit("mutate", review_of("Pod", pod(f"{APP}:9.9"), namespace="kube-system"))
    assert exempt["allowed"] is True and "patch" not in exempt


def test_delete_and_bad_requests(webhook: Webhook) -> None:
    delete = review_of("Pod", pod(f"{APP}:9.9"), operation="DELETE")
    delete["request"]["object"] = None
    assert webhook.admit("validate", delete)["allowed"] is True
    assert webhook.post("validate", {"kind": "Pod"}).status_code == 400
    broken = review_of("Pod", {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}})
    answer = webhook.admit("validate", broken)
    assert answer["allowed"] is False and "has no image" in answer["status"]["message"]


def test_decisions_are_logged_and_counted(webhook: Webhook) -> None:
    review = review_of("Pod", pod(f"{APP}:9.9"), namespace="shop")
    webhook.admit("validate", review)
    uid = review["request"]["uid"]
    deadline = time.monotonic() + 10
    while uid not in webhook.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    (line,) = [json.loads(x) for x in webhook.log.read_text().splitlines() if uid in x]
    assert line["namespace"] == "shop" and line["object"] == "web" and line["image"] == f"{APP}:9.9"
    assert line["result"] == "denied" and "not signed" in line["reason"]
    metrics = requests.get(f"{webhook.url}/metrics", verify=str(webhook.ca), timeout=10).text
    assert 'tufnotary_admission_decisions_total{endpoint="validate",result="denied"}' in metrics
    assert 'tufnotary_admission_cache_total{event="hit"}' in metrics
    assert "tufnotary_admission_request_duration_seconds_bucket" in metrics


def test_check_command(server: ServerInfo, signed: None, tmp_path: Path) -> None:
    import subprocess

    policy = write_policy(tmp_path / "policy.yaml", server)
    command = [str(BIN / "tufnotary-admission"), "check", "--policy", str(policy)]
    ok = subprocess.run(
        [*command, f"{APP}:1.4", "nginx"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [
        f"allowed {APP}:1.4 -> {APP}:1.4@{digest('a')}",
        f"allowed nginx -> nginx:latest@{digest('c')}",
    ]
    refused = subprocess.run([*command, f"{APP}:9.9"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stdout.startswith(f"denied {APP}:9.9: 9.9: the tag")
    (tmp_path / "bad.yaml").write_text("rules: []\n")
    bad = subprocess.run(
        [*command[:-1], str(tmp_path / "bad.yaml"), "x"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "rules: must be a non-empty list" in bad.stderr
