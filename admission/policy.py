"""The admission policy: trust servers, ordered image rules (first match wins), exemptions.

A YAML file::

    servers:
      main: {url: "https://notary.example.com", ca: "/etc/tufnotary/ca.crt", timeout: 3}
    rules:
      - images: "registry.example.com/team-a/**"   # * one path segment, ** any
        server: main
        require_roles: ["targets/releases"]
        pin_root_ca: "/etc/tufnotary/team-a-root-ca.pem"
        mode: enforce                                # enforce | warn | skip
      - images: "**"
        mode: enforce          # no server: nothing can sign it, so it is denied
    exempt_namespaces: ["kube-system"]
    refresh_seconds: 60       # how long trust data is used before it is updated

This module imports nothing that imports ``ssl`` users such as requests: the serving process
loads it before gunicorn's gevent workers patch ``ssl``.

Patterns match the repository name as docker normalises it (``nginx`` is
``docker.io/library/nginx``), without tag or digest: ``*`` is any characters but ``/``, ``**``
any characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from tufnotary.client.trusted import TrustPinning
from tufnotary.metadata.model import is_targets_role

DEFAULT_TIMEOUT = 3.0
DEFAULT_REFRESH = 60.0


class PolicyError(ValueError):
    """The policy file cannot be read or is not a valid policy; says where and why."""


class Mode(StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"
    SKIP = "skip"


@dataclass(frozen=True)
class TrustServer:
    """A trust server rules name: its URL, the CA that issued its certificate, the timeout."""

    name: str
    url: str
    ca: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def verify(self) -> str | bool:
        return self.ca if self.ca is not None else True


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A repository glob: ``*`` is any characters but ``/`` (within one path segment),
    ``**`` any characters (any number of segments)."""
    parts = re.split(r"(\*\*|\*)", pattern)
    wildcards = {"**": ".*", "*": "[^/]*"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


@dataclass(frozen=True)
class Rule:
    """One policy rule; ``index`` is its position in the file (from 0)."""

    index: int
    images: tuple[str, ...]
    mode: Mode = Mode.ENFORCE
    server: TrustServer | None = None
    require_roles: tuple[str, ...] = ()
    pin_root_ca: str | None = None
    pin_root_certs: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(compile_pattern(p) for p in self.images))

    def matches(self, gun: str) -> bool:
        return any(pattern.fullmatch(gun) for pattern in self.patterns)

    @property
    def pinning(self) -> TrustPinning | None:
        """Root pinning for every repository of this rule, or None (trust on first use)."""
        if self.pin_root_certs:
            return TrustPinning(certs={"*": list(self.pin_root_certs)})
        if self.pin_root_ca is not None:
            return TrustPinning(ca={"": Path(self.pin_root_ca)})
        return None

    def describe(self) -> str:
        return f"rule {self.index + 1} ({', '.join(self.images)})"


@dataclass(frozen=True)
class AdmissionPolicy:
    """The whole policy, checked when loaded."""

    rules: tuple[Rule, ...]
    exempt_namespaces: frozenset[str] = frozenset()
    refresh_seconds: float = DEFAULT_REFRESH

    def rule_for(self, gun: str) -> Rule | None:
        """The first rule whose images match ``gun``, or None."""
        return next((rule for rule in self.rules if rule.matches(gun)), None)

    @classmethod
    def load(cls, path: Path) -> AdmissionPolicy:
        try:
            document = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise PolicyError(f"{path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path}: not valid YAML: {exc}") from None
        try:
            return cls.from_dict(document)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, document: Any) -> AdmissionPolicy:
        top = _mapping(
            document, "the policy", {"servers", "rules", "exempt_namespaces", "refresh_seconds"}
        )
        servers = {
            name: _server(name, value)
            for name, value in _mapping(top.get("servers", {}), "servers").items()
        }
        rules = top.get("rules")
        if not isinstance(rules, list) or not rules:
            raise PolicyError("rules: must be a non-empty list of rules")
        refresh = top.get("refresh_seconds", DEFAULT_REFRESH)
        if isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh < 0:
            raise PolicyError("refresh_seconds: must be a number of seconds, 0 or more")
        exempt = _strings(top.get("exempt_namespaces", []), "exempt_namespaces")
        return cls(
            tuple(_rule(index, value, servers) for index, value in enumerate(rules)),
            frozenset(exempt),
            float(refresh),
        )


def _mapping(value: Any, where: str, allowed: set[str] | None = None) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: must be a mapping")
    unknown = sorted(set(value) - allowed) if allowed is not None else []
    if unknown:
        raise PolicyError(
            f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed or ()))})"
        )
    return value


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where}: must be a string or a list of strings")
    return value


def _server(name: str, value: Any) -> TrustServer:
    where = f"servers.{name}"
    fields = _mapping(value, where, {"url", "ca", "timeout"})
    url = fields.get("url")
    if not isinstance(url, str) or not re.match(r"https?://[^/]", url):
        raise PolicyError(f"{where}.url: must be the trust server's https:// URL")
    ca = fields.get("ca")
    if ca is not None and not isinstance(ca, str):
        raise PolicyError(f"{where}.ca: must be the path of a PEM CA file")
    timeout = fields.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise PolicyError(f"{where}.timeout: must be a number of seconds above 0")
    return TrustServer(str(name), url, ca, float(timeout))


def _rule(index: int, value: Any, servers: Mapping[str, TrustServer]) -> Rule:
    where = f"rules[{index}]"
    known = {"images", "server", "require_roles", "pin_root_ca", "pin_root_certs", "mode"}
    fields = _mapping(value, where, known)
    if "images" not in fields:
        raise PolicyError(f"{where}.images: missing (a pattern such as registry.example.com/**)")
    images = tuple(_strings(fields["images"], f"{where}.images"))
    mode_text = fields.get("mode", Mode.ENFORCE.value)
    if mode_text not in {m.value for m in Mode}:
        raise PolicyError(f"{where}.mode: must be enforce, warn or skip, not {mode_text!r}")
    server = None
    if "server" in fields:
        server = servers.get(fields["server"])
        if server is None:
            raise PolicyError(f"{where}.server: no server named {fields['server']!r} in servers")
    roles = tuple(_strings(fields.get("require_roles", []), f"{where}.require_roles"))
    certs = tuple(_strings(fields.get("pin_root_certs", []), f"{where}.pin_root_certs"))
    pin_ca = fields.get("pin_root_ca")
    if pin_ca is not None and not isinstance(pin_ca, str):
        raise PolicyError(f"{where}.pin_root_ca: must be the path of a PEM CA file")
    for role in roles:
        if not is_targets_role(role):
            raise PolicyError(
                f"{where}.require_roles: {role!r} is not a role such as targets/releases"
            )
    return Rule(index, images, Mode(mode_text), server, roles, pin_ca, certs)
