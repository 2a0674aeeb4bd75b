"""The Kubernetes admission webhook: pins signed digests, refuses the rest.

``create_app()`` is the WSGI application (``gunicorn 'tufnotary.admission:create_app()'`` with
$TUFNOTARY_ADMISSION_POLICY naming the policy file); ``tufnotary-admission serve`` runs it.
"""

from tufnotary.admission.app import create_app

__all__ = ["create_app"]
