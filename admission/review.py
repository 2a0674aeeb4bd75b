"""Kubernetes ``admission.k8s.io/v1`` AdmissionReview: the request in, the response out.

``/mutate`` pins each verified ``name:tag`` to ``name:tag@sha256:<signed digest>`` with a
JSONPatch; ``/validate`` only allows or denies. Both deny the object when any of its images is
denied, with a message naming each such image and why.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tufnotary.admission.decide import Checker, Decision, Result
from tufnotary.admission.objects import ContainerImage, ObjectError, container_images

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
DENIED_STATUS = 403
MAX_WARNING = 512


class ReviewError(ValueError):
    """The body is not an AdmissionReview v1 request (answered 400)."""


@dataclass(frozen=True)
class ReviewRequest:
    """The parts of ``request`` a decision needs."""

    uid: str
    kind: str
    namespace: str
    name: str
    operation: str
    dry_run: bool
    object: Mapping[str, Any] | None

    @classmethod
    def parse(cls, body: Any) -> ReviewRequest:
        if not isinstance(body, dict) or body.get("kind") != KIND:
            raise ReviewError(f"expected a {KIND} object")
        if body.get("apiVersion") != API_VERSION:
            raise ReviewError(f"only {API_VERSION} is supported, not {body.get('apiVersion')!r}")
        request = body.get("request")
        if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
            raise ReviewError(f"{KIND} without request.uid")
        kind = request.get("kind")
        obj = request.get("object")
        return cls(
            uid=request["uid"],
            kind=str(kind.get("kind", "")) if isinstance(kind, dict) else "",
            namespace=str(request.get("namespace") or ""),
            name=str(request.get("name") or _metadata_name(obj)),
            operation=str(request.get("operation", "")),
            dry_run=bool(request.get("dryRun", False)),
            object=obj if isinstance(obj, dict) else None,
        )


def _metadata_name(obj: Any) -> str:
    """A name for the log: ``metadata.name``, or ``generateName`` + ``*``."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(metadata, dict):
        return ""
    return str(metadata.get("name") or (metadata.get("generateName", "") + "*"))


@dataclass(frozen=True)
class Review:
    """The decisions for one request and the response that carries them."""

    request: ReviewRequest
    decisions: list[tuple[ContainerImage, Decision]]
    refusal: str | None = None  # the object itself is refused (unreadable)

    @property
    def allowed(self) -> bool:
        return self.refusal is None and all(d.allowed for _, d in self.decisions)

    def message(self) -> str:
        if self.refusal is not None:
            return self.refusal
        denied = [f"{d.image}: {d.reason}" for _, d in self.decisions if not d.allowed]
        return "image not trusted: " + "; ".join(denied) if denied else ""

    def patch(self) -> list[dict[str, str]]:
        """The JSONPatch that pins every verified tag to its signed digest."""
        return [
            {"op": "replace", "path": image.pointer, "value": decision.pinned}
            for image, decision in self.decisions
            if decision.pinned is not None and decision.pinned != image.image
        ]

    def warnings(self) -> list[str]:
        return [
            f"{d.image}: not trusted, allowed by policy (warn): {d.reason}"[:MAX_WARNING]
            for _, d in self.decisions
            if d.result is Result.WARNED
        ]

    def response(self, *, mutate: bool) -> dict[str, Any]:
        """The AdmissionReview to answer with."""
        answer: dict[str, Any] = {"uid": self.request.uid, "allowed": self.allowed}
        if not self.allowed:
            answer["status"] = {"code": DENIED_STATUS, "message": self.message()}
        else:
            patch = self.patch() if mutate else []
            if patch:
                answer["patchType"] = "JSONPatch"
                answer["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        if warnings := self.warnings():
            answer["warnings"] = warnings
        return {"apiVersion": API_VERSION, "kind": KIND, "response": answer}


def review(checker: Checker, request: ReviewRequest) -> Review:
    """Decide every container image of the request's object."""
    if request.object is None:  # DELETE, CONNECT: nothing will run
        return Review(request, [])
    try:
        images = container_images(request.kind, request.object)
    except ObjectError as exc:
        return Review(request, [], f"{request.kind} {request.name}: {exc}")
    if request.namespace in checker.policy.exempt_namespaces:
        reason = f"namespace {request.namespace} is exempt"
        return Review(request, [(i, Decision(i.image, Result.EXEMPT, reason)) for i in images])
    decided: dict[str, Decision] = {}
    for image in images:
        if image.image not in decided:
            decided[image.image] = checker.decide(image.image)
    return Review(request, [(image, decided[image.image]) for image in images])
