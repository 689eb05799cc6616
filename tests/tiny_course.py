"""A tiny nbgrader course for fast grading tests: one assignment, one notebook, no torch.

``solutions/tiny/tiny.ipynb`` has the locked ``parameters`` cell every graded notebook has, one
exercise (``square``) and two test cells: ``test_square`` (2 points, all or nothing) and
``test_cases`` (4 points, **partial credit**: the cell's last value is the points earned, which
nbgrader's ``determine_grade`` uses when a test cell ends with a number). A kernel that imports
nothing starts in about a second, so a class of four grades in seconds, not minutes.

Students: ``ada`` right (6 / 6), ``ben`` the untouched release (0), ``cat`` wrong for negative x
(2 + 3 of 4 = 5, partial credit), ``dan`` right (6).
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from autograder.demo import student_copy

ASSIGNMENT, NOTEBOOK = "tiny", "tiny"
EXPECTED = {"ada": 6.0, "ben": 0.0, "cat": 5.0, "dan": 6.0}
CAT = "def square(x):\n    return x * x if x >= 0 else x"


def _meta(grade_id: str, *, grade=False, solution=False, locked=True, points=None, tags=()):
    nbg = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution,
           "task": False}
    if points is not None:
        nbg["points"] = points
    meta = {"nbgrader": nbg}
    if tags:
        meta["tags"] = list(tags)
    return meta


def write_course(root: Path) -> Path:
    """``root/solutions/tiny/tiny.ipynb`` (the nbgrader source); returns ``root``."""
    cells = [
        new_code_cell('GRADING = False\nDEVICE = "cpu"\nSEED = 0', metadata=_meta("parameters", tags=["parameters"])),
        new_code_cell("def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION",
                      metadata=_meta("answer", solution=True, locked=False)),
        new_code_cell("assert square(3) == 9, 'square(3) should be 9'",
                      metadata=_meta("test_square", grade=True, points=2)),
        new_code_cell("cases = [(0, 0), (1, 1), (2, 4), (-3, 9)]\n"
                      "sum(4 / len(cases) for x, y in cases if square(x) == y)   # partial credit: points earned",
                      metadata=_meta("test_cases", grade=True, points=4)),
    ]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"display_name": "Python 3 (ipykernel)",
                                                            "language": "python", "name": "python3"},
                                             "language_info": {"name": "python"}})
    path = root / "solutions" / ASSIGNMENT / f"{NOTEBOOK}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return root


def write_class(root: Path, subs: Path, students=tuple(EXPECTED), timestamps: dict[str, str] | None = None) -> Path:
    """Submissions ``subs/{student}/tiny/tiny.ipynb`` (and ``timestamp.txt`` where given)."""
    from autograder.release import generate

    release_dir = root / "release"
    if not (release_dir / ASSIGNMENT / f"{NOTEBOOK}.ipynb").exists():
        (root / "_course").mkdir(exist_ok=True)
        generate([ASSIGNMENT], root=root, release_dir=release_dir, course_dir=root / "_course")
    release = nbformat.read(str(release_dir / ASSIGNMENT / f"{NOTEBOOK}.ipynb"), as_version=4)
    solution = nbformat.read(str(root / "solutions" / ASSIGNMENT / f"{NOTEBOOK}.ipynb"), as_version=4)
    notebooks = {"ada": student_copy(release, solution), "ben": release,
                 "cat": student_copy(release, solution, {"answer": CAT}), "dan": student_copy(release, solution)}
    for sid in students:
        folder = subs / sid / ASSIGNMENT
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebooks[sid], str(folder / f"{NOTEBOOK}.ipynb"))
        if timestamps and sid in timestamps:
            (folder / "timestamp.txt").write_text(timestamps[sid])
    return subs
