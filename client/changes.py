"""Staged changes to a repository, kept in the trust directory until they are published."""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tufnotary.client.errors import ClientError
from tufnotary.metadata.keys import Key
from tufnotary.metadata.model import (
    TARGETS,
    DelegatedRole,
    FileMeta,
    Targets,
    is_delegation_name,
    parent_role,
)

ADD_TARGET = "add-target"
REMOVE_TARGET = "remove-target"
ADD_DELEGATION = "add-delegation"
REMOVE_DELEGATION = "remove-delegation"
ACTIONS = (ADD_TARGET, REMOVE_TARGET, ADD_DELEGATION, REMOVE_DELEGATION)
FILE_NAME = "tufnotary-changes.json"


class ChangeError(ClientError, ValueError):
    """A change cannot be staged or applied (unknown role, missing delegation...)."""


@dataclass(frozen=True)
class StagedChange:
    """One staged change: ``role`` is the targets role it modifies."""

    action: str
    role: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ChangeError(f"unknown change {self.action!r}")
        if self.role != TARGETS and not is_delegation_name(self.role):
            raise ChangeError(f"{self.role!r} is not a targets role")

    @classmethod
    def add_target(cls, name: str, meta: FileMeta, role: str = TARGETS) -> StagedChange:
        return cls(ADD_TARGET, role, name, meta.to_dict())

    @classmethod
    def remove_target(cls, name: str, role: str = TARGETS) -> StagedChange:
        return cls(REMOVE_TARGET, role, name)

    @classmethod
    def add_delegation(
        cls, name: str, keys: list[Key], paths: list[str], threshold: int = 1
    ) -> StagedChange:
        """Add or extend delegation ``name``: more keys and paths, and its threshold."""
        if not is_delegation_name(name):
            raise ChangeError(f"{name!r} is not a valid delegation name (targets/<lower-case>)")
        if threshold < 1:
            raise ChangeError("a delegation threshold must be at least 1")
        data = {"keys": [key.to_dict() for key in keys], "paths": paths, "threshold": threshold}
        return cls(ADD_DELEGATION, parent_role(name), name, data)

    @classmethod
    def remove_delegation(cls, name: str, keyids: Collection[str] = ()) -> StagedChange:
        """Remove delegation ``name``, or with ``keyids`` only those keys of it."""
        data = {"keyids": list(keyids)} if keyids else {}
        return cls(REMOVE_DELEGATION, parent_role(name), name, data)

    def apply(self, targets: Targets) -> None:
        """Apply to the role's ``signed`` object (a fresh copy owned by the publisher)."""
        if self.action == ADD_TARGET:
            targets.targets[self.name] = FileMeta.from_dict(self.data, self.name)
        elif self.action == REMOVE_TARGET:
            targets.targets.pop(self.name, None)
        elif self.action == REMOVE_DELEGATION:
            delegations = targets.delegations
            if self.data.get("keyids"):
                self._remove_keys(targets)
            else:
                delegations.roles = [r for r in delegations.roles if r.name != self.name]
            used = {keyid for role in delegations.roles for keyid in role.keyids}
            delegations.keys = {k: v for k, v in delegations.keys.items() if k in used}
        else:
            self._add_delegation(targets)

    def _remove_keys(self, targets: Targets) -> None:
        """Drop keys from delegation ``name``: each must be listed, and enough must be left
        for its threshold."""
        entry = targets.delegations.role(self.name)
        if entry is None:
            raise ChangeError(f"{self.role} delegates no role {self.name}")
        removed = self.data["keyids"]
        unknown = [keyid for keyid in removed if keyid not in entry.keyids]
        if unknown:
            raise ChangeError(f"{self.name} lists no key {', '.join(unknown)}")
        left = [keyid for keyid in entry.keyids if keyid not in removed]
        if len(left) < max(entry.threshold, 1):
            raise ChangeError(
                f"{self.name} needs {entry.threshold} signatures; removing these keys would leave "
                f"{len(left)}: add keys first, or remove the whole delegation"
            )
        entry.keyids = left

    def _add_delegation(self, targets: Targets) -> None:
        keys = [Key.from_dict(key) for key in self.data["keys"]]
        delegations = targets.delegations
        for key in keys:
            delegations.keys[key.key_id] = key
        entry = delegations.role(self.name)
        if entry is None:
            entry = DelegatedRole(self.name, [], self.data["threshold"], [])
            delegations.roles.append(entry)
        entry.keyids += [key.key_id for key in keys if key.key_id not in entry.keyids]
        entry.paths += [path for path in self.data["paths"] if path not in entry.paths]
        entry.threshold = self.data["threshold"]
        if entry.threshold > len(entry.keyids):
            raise ChangeError(
                f"{self.name} needs {entry.threshold} signatures but lists {len(entry.keyids)} keys"
            )


class Changelist:
    """The staged changes of one GUN, as a JSON file in its trust directory folder."""

    def __init__(self, folder: Path) -> None:
        self._path = folder / FILE_NAME

    def load(self) -> list[StagedChange]:
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return []
        return [StagedChange(**item) for item in raw]

    def add(self, change: StagedChange) -> None:
        self._write([*self.load(), change])

    def drop(self, roles: Collection[str]) -> None:
        """Forget the changes to ``roles`` (published by other means)."""
        self._write([change for change in self.load() if change.role not in roles])

    def clear(self) -> None:
        self._path.unlink(missing_ok=True)

    def _write(self, changes: list[StagedChange]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        draft = self._path.with_suffix(f".{os.getpid()}.tmp")
        draft.write_text(json.dumps([asdict(change) for change in changes], indent=1))
        draft.replace(self._path)
