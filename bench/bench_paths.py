"""What the benchmark scripts share: the repository root, and ``tests/`` on the import path so
that they start servers and build repositories with the tests' ``support`` package."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
