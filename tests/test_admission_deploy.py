"""deploy/kubernetes/: every manifest validates against the Kubernetes schemas (the
kubernetes-validate package, strict), the webhooks are configured to fail closed, the policy in
the ConfigMap is a valid policy, and the certificate script fills caBundle."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from tufnotary.admission.policy import AdmissionPolicy

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
VERSION = kubernetes_validate.latest_version()
CERT_MANAGER = "cert-manager.io/v1"  # a CRD: not in the Kubernetes schemas
NAMESPACE = "tufnotary-admission"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def by_kind(name: str, kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents(name) if d["kind"] == kind]
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in DEPLOY.glob("*.yaml")))
def test_manifest_is_valid(name: str) -> None:
    for document in documents(name):
        if document["apiVersion"] == CERT_MANAGER:
            assert document["kind"] in {"Issuer", "Certificate"}
            continue
        kubernetes_validate.validate(document, VERSION, strict=True)


def test_every_listed_kind_is_shipped() -> None:
    kinds = {d["kind"] for p in DEPLOY.glob("*.yaml") for d in documents(p.name)}
    assert {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ConfigMap",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "StatefulSet",
        "Certificate",
    } <= kinds


@pytest.mark.parametrize("kind", ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"])
def test_webhooks_fail_closed_and_exempt_their_namespace(kind: str) -> None:
    (hook,) = by_kind("webhooks.yaml", kind)["webhooks"]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"] and 1 <= hook["timeoutSeconds"] <= 30
    assert hook["clientConfig"]["service"]["namespace"] == NAMESPACE
    (exemption,) = hook["namespaceSelector"]["matchExpressions"]
    assert exemption == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": [NAMESPACE],
    }
    resources = {r for rule in hook["rules"] for r in rule["resources"]}
    assert {"pods", "deployments", "cronjobs", "jobs", "statefulsets", "daemonsets"} <= resources


def test_deployment_is_hardened() -> None:
    deployment = by_kind("admission.yaml", "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] and container["readinessProbe"]
    assert container["command"][:2] == ["tufnotary-admission", "serve"]


def test_configmap_policy_is_valid() -> None:
    text = by_kind("policy.yaml", "ConfigMap")["data"]["policy.yaml"]
    policy = AdmissionPolicy.from_dict(yaml.safe_load(text))
    rule = policy.rule_for("registry.example.com/prod/shop")
    assert rule is not None and rule.require_roles == ("targets/releases", "targets/scanned")
    last = policy.rule_for("quay.io/anything/else")
    assert last is not None and last.server is None


def test_certificate_script_fills_the_ca_bundle(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(
        [str(DEPLOY / "make-webhook-cert.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    filled = [d for d in yaml.safe_load_all((tmp_path / "webhooks.yaml").read_text()) if d]
    ca = (tmp_path / "ca.crt").read_bytes()
    for config in filled:
        kubernetes_validate.validate(config, VERSION, strict=True)
        assert base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]) == ca
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"tufnotary-admission.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)
    assert cert.issuer == x509.load_pem_x509_certificate(ca).subject
