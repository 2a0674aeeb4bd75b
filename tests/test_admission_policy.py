"""The admission policy file: patterns, first match wins, clear errors; image normalisation;
the images of each kind of object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tufnotary.admission.objects import ObjectError, container_images
from tufnotary.admission.policy import AdmissionPolicy, Mode, PolicyError, compile_pattern
from tufnotary.client.images import ImageReference

DIGEST = "sha256:" + "ab" * 32


def test_patterns() -> None:
    one, any_ = compile_pattern("registry.example.com/team-a/*"), compile_pattern("reg.io/**")
    assert one.fullmatch("registry.example.com/team-a/app")
    assert not one.fullmatch("registry.example.com/team-a/sub/app")
    assert not one.fullmatch("registryXexample.com/team-a/app")  # dots are literal
    assert any_.fullmatch("reg.io/a/b/c") and not any_.fullmatch("reg.io")
    assert compile_pattern("**").fullmatch("docker.io/library/nginx")


def test_first_matching_rule_wins() -> None:
    policy = AdmissionPolicy.from_dict(
        {
            "servers": {"main": {"url": "https://notary.example.com", "ca": "/ca.crt"}},
            "rules": [
                {"images": "r.io/team/app", "mode": "skip"},
                {"images": ["r.io/team/**", "x.io/*"], "server": "main", "mode": "warn"},
                {"images": "**"},
            ],
            "exempt_namespaces": "kube-system",
        }
    )
    assert [policy.rule_for(g).index for g in ("r.io/team/app", "r.io/team/b", "x.io/a")] == [
        0,
        1,
        1,
    ]
    assert policy.rule_for("x.io/a/b").index == 2  # type: ignore[union-attr]
    assert policy.rules[1].mode is Mode.WARN and policy.rules[1].server.verify == "/ca.crt"  # type: ignore[union-attr]
    assert policy.exempt_namespaces == {"kube-system"} and policy.refresh_seconds == 60


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"rules": []}, "rules: must be a non-empty list"),
        ({"rules": [{"mode": "enforce"}]}, "rules[0].images: missing"),
        ({"rules": [{"images": "**", "mode": "audit"}]}, "rules[0].mode: must be enforce, warn"),
        ({"rules": [{"images": "**", "server": "nope"}]}, "no server named 'nope'"),
        ({"rules": [{"images": "**", "require_roles": ["releases"]}]}, "'releases' is not a role"),
        ({"rules": [{"images": "**", "imgaes": "x"}]}, "unknown field 'imgaes'"),
        ({"servers": {"m": {"url": "notary"}}, "rules": [{"images": "**"}]}, "servers.m.url"),
        ({"rules": [{"images": "**"}], "refresh_seconds": -1}, "refresh_seconds"),
        ([], "the policy: must be a mapping"),
    ],
)
def test_policy_errors(document: Any, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        AdmissionPolicy.from_dict(document)
    assert message in str(raised.value)


def test_unreadable_policy_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("rules: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        AdmissionPolicy.load(tmp_path / "p.yaml")
    with pytest.raises(PolicyError, match="No such file"):
        AdmissionPolicy.load(tmp_path / "missing.yaml")


def test_docker_normalisation() -> None:
    cases = {
        "nginx": ("docker.io/library/nginx", None, None, "latest"),
        "docker.io/nginx:1": ("docker.io/library/nginx", "1", None, "1"),
        "index.docker.io/team/app": ("docker.io/team/app", None, None, "latest"),
        f"localhost:5000/app:v1@{DIGEST}": ("localhost:5000/app", "v1", DIGEST, "v1"),
        f"r.io:443/a/b@{DIGEST}": ("r.io:443/a/b", None, DIGEST, None),
    }
    for text, (gun, tag, digest, pull_tag) in cases.items():
        ref = ImageReference.parse(text)
        assert (ref.gun, ref.tag, ref.digest, ref.pull_tag) == (gun, tag, digest, pull_tag), text
    for bad in ("Nginx", "a b", "r.io/app:bad tag", "r.io/App"):
        with pytest.raises(ValueError):
            ImageReference.parse(bad)


def test_images_of_each_kind() -> None:
    spec = {
        "initContainers": [{"name": "i", "image": "a"}],
        "containers": [{"name": "c", "image": "b"}, {"name": "d", "image": "c"}],
        "ephemeralContainers": [{"name": "e", "image": "d"}],
    }
    pod = container_images("Pod", {"spec": spec})
    assert [(i.pointer, i.image) for i in pod] == [
        ("/spec/initContainers/0/image", "a"),
        ("/spec/containers/0/image", "b"),
        ("/spec/containers/1/image", "c"),
        ("/spec/ephemeralContainers/0/image", "d"),
    ]
    template = {"template": {"spec": spec}}
    for kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"):
        assert container_images(kind, {"spec": template})[1].pointer == (
            "/spec/template/spec/containers/0/image"
        )
    cron = container_images("CronJob", {"spec": {"jobTemplate": {"spec": template}}})
    assert cron[0].pointer == "/spec/jobTemplate/spec/template/spec/initContainers/0/image"
    assert container_images("ConfigMap", {"data": {}}) == []
    with pytest.raises(ObjectError, match=r"Deployment without spec\.template\.spec"):
        container_images("Deployment", {"spec": {}})
