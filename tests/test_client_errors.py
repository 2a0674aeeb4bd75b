"""The client's error hints: every template names only what ``explain`` fills in."""

from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import tufnotary.client.cli  # noqa: F401 - imports every module that defines a ClientError
from tufnotary.client.errors import ClientError, ErrorContext, explain
from tufnotary.client.images import ImageReference, RequiredSignerMissing
from tufnotary.client.remote import TLSError
from tufnotary.client.trustdir import KeyNotFound
from tufnotary.client.updater import RepositoryNotFound


def _subclasses(cls: type) -> list[type]:
    return [cls] + [sub for direct in cls.__subclasses__() for sub in _subclasses(direct)]


def test_every_hint_template_names_known_fields() -> None:
    context_fields = {field.name for field in dataclasses.fields(ErrorContext)}
    classes = _subclasses(ClientError)
    assert len(classes) > 20
    for cls in classes:
        for _, name, _, _ in string.Formatter().parse(cls.hint):
            if name is None:
                continue
            root, _, attribute = name.partition(".")
            assert root in ("error", "context", "prog"), (cls, name)
            if root == "context":
                assert attribute in context_fields, (cls, name)


def test_hints_name_the_context() -> None:
    context = ErrorContext("example.com/app", "https://notary:4443", Path("trust"), Path("ca.pem"))
    assert explain(RepositoryNotFound("example.com/app"), context) == (
        "example.com/app has no trust data on https://notary:4443: check the name and --server, "
        "or create it with `tufnotary init example.com/app`"
    )
    assert explain(KeyNotFound("abc"), context) == (
        "private key abc not found in trust: `tufnotary key list` shows the keys held there"
    )
    assert explain(RequiredSignerMissing("targets/qa", "v1"), context) == (
        "not trusted: required signer targets/qa does not sign v1: its holder signs it with "
        "`tufnotary addhash -r targets/qa`"
    )
    tls = explain(TLSError("the trust server", "bad certificate"), context)
    assert tls is not None and tls.endswith(
        "check that ca.pem holds the CA that issued its certificate"
    )
    assert explain(ValueError("bad value"), context) == "bad value"
    assert explain(KeyError("bug"), context) is None


def test_image_references_take_digests_in_either_case() -> None:
    upper = "sha256:" + "AB" * 32
    reference = ImageReference.parse(f"example.com/app:1@{upper}")
    assert reference == ImageReference("example.com/app", "1", upper.lower())
