"""What importing one GUN ends in, whatever the source: its new versions stored, audited as one
``import``, or the GUN refused with nothing of it stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tufnotary.server.errors import InvalidGun
from tufnotary.server.names import check_gun
from tufnotary.server.storage.audit import AuditEntry
from tufnotary.server.storage.metadata import MetadataStore, NewFile

ACTOR = "cli"
"""Who the audit log names for an import."""


@dataclass(frozen=True)
class Refused:
    """A GUN not imported, and why; none of its versions were stored."""

    gun: str
    reason: str


def shown(gun: str) -> str:
    """``gun`` as printed: quoted and escaped if it holds control characters (a source may list
    any name)."""
    return gun if gun.isprintable() else ascii(gun)


def unservable(gun: str) -> str | None:
    """Why the API could not serve ``gun`` (decision 21, as for a publish), or None."""
    try:
        check_gun(gun)
    except InvalidGun as exc:
        return str(exc.detail)
    return None


def store_versions(
    store: MetadataStore,
    gun: str,
    files: Sequence[NewFile],
    detail: dict[str, Any],
    actor: str = ACTOR,
) -> list[NewFile]:
    """Store the files of ``gun`` not stored yet, all or none, with one ``import`` audit entry
    (``detail``: the source and what was read); returns those added. VersionConflict if one is
    stored with other bytes."""
    return store.add_versions(gun, files, AuditEntry(actor, "import", gun, detail))
