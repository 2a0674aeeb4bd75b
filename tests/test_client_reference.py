"""Our client against our real server, verifying what the real notary CLI published."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.clients import NOTARY_HINT, NotaryCLI, require_cli
from support.server import running_server
from tufnotary.client.images import ImageNotSigned, VerifiedImage
from tufnotary.client.remote import Remote
from tufnotary.client.repository import Repository
from tufnotary.client.trustdir import TrustDir
from tufnotary.client.updater import RELEASES, Updater
from tufnotary.metadata.model import ROOT, TARGETS, Metadata, Root

pytestmark = pytest.mark.e2e

GUN = "example.com/client/reference"


def write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def delegate_key(directory: Path) -> tuple[str, str]:
    """An EC P-256 key as (private PEM path, public PEM path)."""
    private = ec.generate_private_key(ec.SECP256R1())
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return write(directory / "delegate.key", key_pem), write(directory / "delegate.pub", public_pem)


def test_notary_published_repository_verifies(tmp_path: Path) -> None:
    binary = require_cli("notary", NOTARY_HINT)
    releases, targets, only = (f'{{"manifest":"{n}"}}'.encode() for n in ("rel", "tgt", "only"))
    (tmp_path / "server").mkdir()
    with running_server(tmp_path / "server") as server:
        owner = NotaryCLI.for_server(server, tmp_path / "owner", binary)
        owner.run("init", "-p", GUN)
        owner.run("key", "rotate", GUN, "snapshot", "-r")  # root 2: server-held snapshot
        key_pem, public_pem = delegate_key(tmp_path)
        owner.run("delegation", "add", "-p", GUN, RELEASES, public_pem, "--all-paths")
        delegate = NotaryCLI.for_server(server, tmp_path / "delegate", binary)
        delegate.run("key", "import", key_pem, "--role", RELEASES)
        delegate.run("add", "-p", GUN, "v1", write(tmp_path / "rel", releases), "--roles", RELEASES)
        owner.run("add", "-p", GUN, "v1", write(tmp_path / "tgt", targets))
        owner.run("add", "-p", GUN, "only", write(tmp_path / "only", only))

        fetched: list[str] = []
        session = requests.Session()
        session.hooks["response"].append(lambda response, *_, **__: fetched.append(response.url))
        remote = Remote(server.url, verify=str(server.ca_cert), session=session)
        cache = TrustDir(tmp_path / "ours")
        repo = Repository(GUN, remote, cache)

        sha = "sha256:" + hashlib.sha256(releases).hexdigest()
        assert repo.verify_image("v1") == VerifiedImage(GUN, "v1", sha, RELEASES, len(releases))
        image = repo.verify_image("only")
        assert (image.digest, image.role) == ("sha256:" + hashlib.sha256(only).hexdigest(), TARGETS)
        with pytest.raises(ImageNotSigned):
            repo.verify_image("missing")
        # notary's own lookup searches targets before its delegations; so does ours
        tgt = hashlib.sha256(targets).digest()
        assert owner.lookup(GUN, "v1") == (tgt.hex(), len(targets))
        hit = Updater(remote, cache, GUN).refresh().lookup("v1")
        assert hit is not None and (hit[0], hit[1].hashes["sha256"]) == (TARGETS, tgt)

        # two root key rotations: our client, holding root 2, walks 3.root.json to reach 4
        owner.run("key", "rotate", GUN, "root", input="yes\n")
        owner.run("key", "rotate", GUN, "root", input="yes\n")
        fetched.clear()
        trusted = Updater(remote, cache, GUN).refresh()
        assert trusted.root.version == 4
        assert [url.rsplit("/", 1)[1] for url in fetched if url.endswith(".root.json")] == [
            "3.root.json"
        ]
        cached_root = cache.read_metadata(GUN, ROOT)
        assert cached_root is not None
        assert Metadata.from_bytes(cached_root, Root).signed.version == 4
        assert repo.verify_image("v1").digest == sha
