"""notebooks/ is generated from solutions/ (never edited by hand), and nbgrader validate agrees."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder.release import assignments, out_of_sync

REPO = Path(__file__).resolve().parents[1]
NBGRADER = str(Path(sys.executable).parent / "nbgrader")


def test_notebooks_in_sync_with_solutions():
    assert "ch00_warmup" in assignments(), f"solutions/ should hold the warm-up; found {assignments()}"
    problems = out_of_sync()
    assert not problems, ("notebooks/ is out of sync with solutions/ — run `python -m autograder release`:\n"
                          + "\n".join(problems))


def test_hand_edit_of_a_released_notebook_is_detected(tmp_path):
    for folder in ("solutions", "notebooks"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    path = tmp_path / "notebooks" / "ch00_warmup" / "warmup.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[0].source += "\nA hand edit."
    nbformat.write(nb, str(path))
    (tmp_path / "notebooks" / "ch00_warmup" / "extra.txt").write_text("stray file")
    problems = out_of_sync(tmp_path)
    assert any("warmup.ipynb differs" in p for p in problems), f"a hand edit went unnoticed: {problems}"
    assert any("extra.txt" in p for p in problems), f"a stray file in notebooks/ went unnoticed: {problems}"


def _validate(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([NBGRADER, "validate", str(path)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)


@pytest.mark.slow
def test_nbgrader_validate_passes_solution_and_fails_release():
    good = _validate(REPO / "solutions" / "ch00_warmup" / "warmup.ipynb")
    assert good.returncode == 0 and "Success!" in good.stdout, f"the solution must pass nbgrader validate:\n{good.stdout[-3000:]}"
    bad = _validate(REPO / "notebooks" / "ch00_warmup" / "warmup.ipynb")
    assert "Success!" not in bad.stdout and "NotImplementedError" in bad.stdout, (
        f"the released notebook must fail its visible tests under nbgrader validate:\n{bad.stdout[-3000:]}")
