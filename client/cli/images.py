"""Deploy gates: verify-image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tufnotary.client.cli.context import current
from tufnotary.client.cli.options import (
    EXISTING_FILE,
    check_digest,
    global_options,
    image_reference,
    offline_option,
    split_roles,
)
from tufnotary.client.cli.output import (
    Failure,
    emit,
    offline_note,
    updating,
    utc,
)
from tufnotary.client.cli.progress import progress
from tufnotary.client.images import DEFAULT_TAG, ImageReference, Policy
from tufnotary.client.trusted import TrustPinning


@click.command(name="verify-image")
@click.argument("ref", metavar="REF", callback=image_reference)
@click.option(
    "--digest",
    callback=check_digest,
    metavar="sha256:HEX",
    help="Fail unless this is the signed digest (a digest in REF counts too).",
)
@click.option(
    "--require-role",
    "required",
    multiple=True,
    callback=split_roles,
    metavar="ROLE",
    help="Delegation that must sign the tag (repeat: all must, with one digest).",
)
@click.option(
    "--pin-cert-id",
    "cert_ids",
    multiple=True,
    metavar="ID",
    help="Accept only a root signed by this certificate key id (repeatable).",
)
@click.option(
    "--pin-ca",
    type=EXISTING_FILE,
    help="Accept only a root whose certificate chains to this CA bundle.",
)
@offline_option
@global_options
def verify_image(
    ref: ImageReference,
    digest: str | None,
    required: list[str],
    cert_ids: tuple[str, ...],
    pin_ca: Path | None,
    offline: bool,
) -> None:
    """Check that image REF is signed: `registry/repo:tag`, `registry/repo@sha256:...` or both.

    Without --require-role, docker's rule: the tag as targets/releases signs it, else as
    targets signs it. Exit status 0 trusted (the digest is printed), 1 not trusted (unsigned
    tag, other digest, missing signer, bad trust data, server unreachable, timing out or
    failing, TLS or CA file problem), 2 usage error. With --json, a refusal prints
    {"trusted": false, "reason": KIND, "error": MESSAGE, ...}.

    Fails closed: unlike notary and docker, cached trust data never stands in for a server
    that cannot be reached. --offline uses only the cache (still refusing expired data) and
    says how old it is. Pinning applies when this trust dir first sees the repository (and to
    root rotations).
    """
    if digest and ref.digest and digest != ref.digest:
        raise click.UsageError(f"--digest {digest} differs from the digest in REF {ref.digest}")
    digest = digest or ref.digest
    tag = ref.tag or (None if digest else DEFAULT_TAG)
    pinning = None
    if cert_ids or pin_ca:
        certs = {ref.gun: list(cert_ids)} if cert_ids else {}
        pinning = TrustPinning(certs=certs, ca={ref.gun: pin_ca} if pin_ca else {})
    settings = current()
    repo = settings.repository(ref.gun, pinning, offline=offline)
    try:
        with progress(updating(repo)):
            image = repo.verify_image(tag, digest, Policy(required, pinning))
    except Exception as exc:
        message = settings.explain(exc)
        if message is None:
            raise
        if not message.startswith("not trusted"):
            message = f"not trusted: {message}"
        refusal = {"gun": ref.gun, "tag": tag, "digest": digest, "trusted": False}
        emit(refusal | {"reason": type(exc).__name__, "error": message}, "")
        raise Failure(message) from exc
    data: dict[str, Any] = {
        "gun": image.gun,
        "tag": image.tag,
        "digest": image.digest,
        "role": image.role,
        "length": image.length,
        "trusted": True,
    }
    if offline:
        data["offline"] = True
        data["cached_at"] = utc(image.cached_at) if image.cached_at else None
    offline_note(repo)
    shown = f"{image.gun}:{image.tag}"
    emit(data, f"trusted: {shown} -> {image.digest} (signed by {image.role})")


COMMANDS: tuple[click.Command, ...] = (verify_image,)
