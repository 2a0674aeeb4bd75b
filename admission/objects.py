"""The container images of a Kubernetes object, each with the JSON Pointer of its field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POD_SPEC_PATHS: Mapping[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
"""Where each kind keeps its pod spec."""
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


class ObjectError(ValueError):
    """The object is not what its kind says (e.g. a container without an image)."""


@dataclass(frozen=True)
class ContainerImage:
    """One container's ``image`` and the JSON Pointer (RFC 6901) of that field."""

    pointer: str
    container: str
    image: str


def container_images(kind: str, obj: Mapping[str, Any]) -> list[ContainerImage]:
    """Every container image of ``obj`` (init, regular and ephemeral containers); [] for a
    kind that has no pod spec."""
    path = POD_SPEC_PATHS.get(kind)
    if path is None:
        return []
    spec: Any = obj
    for key in path:
        spec = spec.get(key) if isinstance(spec, Mapping) else None
    if not isinstance(spec, Mapping):
        raise ObjectError(f"{kind} without {'.'.join(path)}")
    found = []
    for field_name in CONTAINER_LISTS:
        containers = spec.get(field_name) or []
        if not isinstance(containers, list):
            raise ObjectError(f"{'.'.join(path)}.{field_name} is not a list")
        for index, container in enumerate(containers):
            image = container.get("image") if isinstance(container, Mapping) else None
            name = str(container.get("name", index)) if isinstance(container, Mapping) else ""
            if not isinstance(image, str) or not image:
                raise ObjectError(f"{field_name}[{index}] ({name}) has no image")
            pointer = "/" + "/".join((*path, field_name, str(index), "image"))
            found.append(ContainerImage(pointer, name, image))
    return found
