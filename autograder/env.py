"""The course's Python environment: its ``bin/`` must be on PATH for nbgrader's helpers (alembic)."""
from __future__ import annotations

import os
import sys


def ensure_venv_on_path() -> None:
    """Prepend this interpreter's ``bin/`` to PATH (nbgrader calls ``alembic`` by name)."""
    bindir = os.path.join(sys.prefix, "bin")
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
