"""Shared test configuration.

- Tests marked ``gpu`` skip on machines without CUDA.
- ``one_thread``: torch on one thread for the test, restored after.
- ``built_book``: the book built once per session exactly as ``make book`` builds it (same
  command, same ``_build`` folder, so the execution cache is shared); fails on any warning.
- ``make test`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadgroup``). Every test that
  uses the built book goes to one worker (group ``book``: one build, never two writing ``_build`` at once),
  and the tests of a module with module-scoped fixtures (a JupyterLab, a graded class) stay together, so
  each such fixture is set up once. Everything else is spread test by test.
"""
from __future__ import annotations

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
def built_book() -> pathlib.Path:
    result = build_book(ROOT)
    assert result.returncode == 0, (
        "the book did not build cleanly (warnings and cell errors are failures).\n"
        f"--- stdout (tail) ---\n{result.stdout[-4000:]}\n--- stderr (tail) ---\n{result.stderr[-4000:]}")
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


def _xdist_group(item) -> str | None:
    """The pytest-xdist group of ``item`` (see the module docstring), or None to spread it freely."""
    if "built_book" in item.fixturenames:
        return "book"
    info = getattr(item, "_fixtureinfo", None)
    for name in item.fixturenames:
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
            if fixturedef.scope in ("module", "package", "class"):
                return item.nodeid.split("::")[0]
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = _xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
