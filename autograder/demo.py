"""Student copies of a notebook, and a small demo class to grade (``make grade``).

``student_copy`` turns the released notebook into what a student would submit: each solution
cell's ``raise NotImplementedError()`` stub replaced by the solution (markers removed) or by any
code given for that cell's grade id. The hostile corpus (``tests/hostile/``) is built on it too.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from .release import REPO

MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)[ \t]*\n?", re.M)


def grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def student_copy(release_nb, solution_nb, overrides: dict[str, str] | None = None,
                 solved: bool = True) -> nbformat.NotebookNode:
    """The released notebook with its solution cells filled in (or left as stubs if not ``solved``)."""
    overrides = overrides or {}
    solutions = {grade_id(c): MARKERS.sub("", c.source) for c in solution_nb.cells
                 if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
    nb = copy.deepcopy(release_nb)
    for cell in nb.cells:
        gid = grade_id(cell)
        if gid in overrides:
            cell.source = overrides[gid]
        elif solved and gid in solutions:
            cell.source = solutions[gid]
    return nb


def load_pair(assignment: str, notebook: str, root: Path = REPO):
    """(released, solution) notebooks of one assignment."""
    release = nbformat.read(str(root / "notebooks" / assignment / f"{notebook}.ipynb"), as_version=4)
    solution = nbformat.read(str(root / "solutions" / assignment / f"{notebook}.ipynb"), as_version=4)
    return release, solution


WRONG_BATCH_MSE = '''def batch_mse(pred, target):
    """Per-sample MSE."""
    return ((pred - target) ** 2).sum(dim=(1, 2, 3))
'''

LOOPING_ADD_NOISE = '''def add_noise(x, sigma, generator):
    while True:   # oops
        pass
'''


def build_demo_class(dest: Path, root: Path = REPO) -> Path:
    """Five students of the warm-up: full marks, untouched, one mistake, an infinite loop, missing."""
    release, solution = load_pair("ch00_warmup", "warmup", root)
    students = {
        "ada": student_copy(release, solution),
        "ben": student_copy(release, solution, solved=False),
        "cleo": student_copy(release, solution, {"ex4_solution": WRONG_BATCH_MSE}),
        "dev": student_copy(release, solution, {"ex3_solution": LOOPING_ADD_NOISE}),
        "eve": None,
    }
    for sid, nb in students.items():
        folder = dest / sid / "ch00_warmup"
        folder.mkdir(parents=True, exist_ok=True)
        if nb is not None:
            nbformat.write(nb, str(folder / "warmup.ipynb"))
    return dest
