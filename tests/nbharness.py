"""Run a graded notebook's cells in-process, fast, to test its graded tests (no kernel, no nbgrader).

The source notebook ``solutions/{assignment}/{notebook}.ipynb`` is executed as written (nbgrader's
``### BEGIN/END`` markers are comments), in one fresh namespace, with chosen solution cells
replaced by other code: a plausible mistake must make the exercise's test cells fail with a
message that points at it; a correct alternative must pass. Grading through the real kernel,
papermill and nbgrader is tested in ``test_autograder_grade.py``.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]


def load_solution(assignment: str, notebook: str) -> nbformat.NotebookNode:
    """The nbgrader source notebook of ``assignment``."""
    return nbformat.read(str(REPO / "solutions" / assignment / f"{notebook}.ipynb"), as_version=4)


def grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def run_tests(nb, overrides: dict[str, str] | None = None, *, skip: tuple[str, ...] = (),
              grading: bool = True) -> dict[str, str | None]:
    """Execute ``nb`` with solution cells replaced; maps each graded test cell's grade id to its error or None.

    ``overrides``: grade id -> replacement source. ``skip``: grade ids not to run (widgets,
    plots). With ``grading`` the ``parameters`` cell is followed by ``GRADING = True`` as the
    autograder injects it. A non-test cell that raises stops the run (it is a broken override).
    """
    overrides = overrides or {}
    ns: dict = {"__name__": "__main__"}
    results: dict[str, str | None] = {}
    for cell in nb.cells:
        gid = grade_id(cell)
        if cell.cell_type != "code" or gid in skip:
            continue
        source = overrides.get(gid, cell.source)
        if "parameters" in cell.metadata.get("tags", []) and grading:
            source += "\nGRADING = True"
        if cell.metadata.get("nbgrader", {}).get("grade"):
            try:
                exec(compile(source, gid or "<test>", "exec"), ns)
                results[gid] = None
            except Exception as exc:   # noqa: BLE001 - a failing test: keep its message
                results[gid] = f"{type(exc).__name__}: {exc}"
        else:
            exec(compile(source, gid or "<cell>", "exec"), ns)
    return results
