"""Shared test configuration.

- Tests marked ``gpu`` skip on machines without CUDA.
- ``one_thread``: torch on one thread for the test, restored after.
- ``built_book``: the book built once per session exactly as ``make book`` builds it (same
  command, same ``_build`` folder, so the execution cache is shared); fails on any warning.
- ``make test`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadscope``): each module's
  tests run on one worker, so a module-scoped fixture (a JupyterLab, a graded class) is set up once.
  ``built_book`` is shared by modules on both workers: the first to need it builds the book under a
  file lock, the other waits and reuses that build (never two builds writing ``_build`` at once).
  (``--dist loadgroup`` would group by marks, but pytest-xdist 3.8 cannot rename node ids under pytest 9,
  so its groups are silently ignored.)
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
BUILD_ARGS = ["build", ".", "--warningiserror", "--keep-going", "--quiet"]


def build_book(folder: pathlib.Path) -> subprocess.CompletedProcess:
    """Build the Jupyter Book rooted at ``folder`` with the strict flags of ``make book``."""
    jb = pathlib.Path(sys.executable).with_name("jupyter-book")
    return subprocess.run([str(jb), *BUILD_ARGS], cwd=folder, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory, worker_id) -> pathlib.Path:
    from filelock import FileLock

    # pytest-xdist's workers of one run share the parent of their temp folders; a plain run has its own
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    record = shared / "book-build.json"
    with FileLock(str(shared / "book-build.lock")):
        if record.exists():                                  # another worker built it during this run
            result = json.loads(record.read_text())
        else:
            done = build_book(ROOT)
            result = {"returncode": done.returncode, "stdout": done.stdout[-4000:], "stderr": done.stderr[-4000:]}
            record.write_text(json.dumps(result))
    assert result["returncode"] == 0, (
        "the book did not build cleanly (warnings and cell errors are failures).\n"
        f"--- stdout (tail) ---\n{result['stdout']}\n--- stderr (tail) ---\n{result['stderr']}")
    return HTML


@pytest.fixture
def one_thread():
    """Small tensors run many times faster on one torch thread than on two fighting over a busy
    2-core CPU, and training on one thread is repeatable. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; the thread count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
