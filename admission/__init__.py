"""The Kubernetes admission webhook: pins signed digests, refuses the rest.

``create_app()`` is the WSGI application (``gunicorn 'tufnotary.admission:create_app()'`` with
$TUFNOTARY_ADMISSION_POLICY naming the policy file); ``tufnotary-admission serve`` runs it.
It is imported on first use, so that importing the command line does not import requests.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from tufnotary.admission.app import create_app

        return create_app
    raise AttributeError(name)
