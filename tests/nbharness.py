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


def assert_mistake_caught(results: dict[str, str | None], k: int, what: str, fragment: str) -> None:
    """Exercise ``k``'s test cells reject the mistake ``what`` with a message containing ``fragment``,
    and no other exercise's tests fail because of it (exercises stay independent)."""
    mine = {gid: msg for gid, msg in results.items() if gid.startswith(f"test_ex{k}_")}
    failures = [msg for msg in mine.values() if msg]
    assert failures, f"exercise {k}: the wrong implementation '{what}' passed every test ({mine})"
    assert any(fragment in msg for msg in failures), (
        f"exercise {k}, mistake '{what}': expected a failure message containing {fragment!r}; got {failures}")
    others = {gid: msg for gid, msg in results.items() if msg and not gid.startswith(f"test_ex{k}_")}
    assert not others, f"a mistake in exercise {k} must not fail other exercises' tests: {others}"


def assert_release_in_sync(assignment: str, notebook: str) -> None:
    """``notebooks/{assignment}/{notebook}.ipynb`` equals a fresh nbgrader release of ``solutions/``."""
    import tempfile

    from autograder.release import _canonical, generate

    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "release"
        generate([assignment], root=REPO, release_dir=fresh, course_dir=Path(tmp))
        old = REPO / "notebooks" / assignment / f"{notebook}.ipynb"
        assert old.exists(), f"{old} is missing; run `python -m autograder release {assignment}`"
        assert _canonical(fresh / assignment / f"{notebook}.ipynb") == _canonical(old), (
            f"notebooks/{assignment}/{notebook}.ipynb differs from a fresh release of solutions/; "
            f"run `python -m autograder release {assignment}`")


def assert_full_marks_and_zero(assignment: str, notebook: str, max_score: float, tmp_path: Path) -> None:
    """Grade the solution and the untouched release with the real autograder (sandbox, papermill,
    nbgrader): the solution scores ``max_score`` with status ok in well under 30 s, the release 0."""
    import csv
    import subprocess
    import sys

    from autograder.demo import load_pair, student_copy

    release, solution = load_pair(assignment, notebook)
    for student, nb in [("solved", student_copy(release, solution)), ("untouched", release)]:
        folder = tmp_path / "submissions" / student / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / f"{notebook}.ipynb"))
    out = tmp_path / "grades"
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submissions", str(tmp_path / "submissions"),
                             "--assignment", assignment, "--jobs", "2", "--out", str(out), "--no-progress"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert (out / "grades.csv").exists(), f"grading failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    rows = {r["student_id"]: r for r in csv.DictReader((out / "grades.csv").open())}
    solved, untouched = rows["solved"], rows["untouched"]
    assert float(solved["score"]) == float(solved["max_score"]) == max_score, (
        f"the solution should score {max_score}/{max_score}; got {solved['score']}/{solved['max_score']} "
        f"({solved['status']}: {solved['notes']})")
    assert solved["status"] == "ok", f"the solution should grade cleanly; status {solved['status']}: {solved['notes']}"
    assert float(untouched["score"]) == 0, f"the untouched released notebook should score 0; got {untouched['score']}"
    assert float(solved["seconds"]) < 30, f"grading the solution took {solved['seconds']} s; it must stay well under 30 s"


def exercise_runner(assignment: str, notebook: str, skip: tuple[str, ...], n_exercises: int):
    """``run_tests(overrides, only=None)`` for one assignment's solution notebook (loaded once).

    ``only=k`` runs the test cells of exercise k alone (every solution cell still runs): fast.
    ``skip``: grade ids of cells never run (widgets, plots).
    """
    cache: list = []

    def run(overrides: dict[str, str], only: int | None = None) -> dict[str, str | None]:
        if not cache:
            cache.append(load_solution(assignment, notebook))
        others = () if only is None else tuple(f"test_ex{j}_{kind}" for j in range(1, n_exercises + 1) if j != only
                                               for kind in ("visible", "hidden"))
        return run_tests(cache[0], overrides, skip=skip + others)

    return run


def exercise_tests(run, wrong: dict, right: dict, n_test_cells: int, *, isolate: bool = False, wrong_marks=()):
    """The three tests every graded notebook's test module has, built once here (bind them to test_* names).

    - the solution passes all of its ``n_test_cells`` test cells;
    - every mistake in ``wrong`` ({cell: [(what, code, fragment)]}) is rejected by its exercise's tests with a
      message containing ``fragment`` (:func:`assert_mistake_caught`);
    - every correct alternative in ``right`` ({cell: code or [code, ...]}) passes every test.

    ``run(overrides[, only=k])`` runs the notebook (see :func:`exercise_runner`); with ``isolate`` the
    mistake and alternative runs pass ``only=k`` (exercise k's test cells only: faster, but other
    exercises' tests are then not checked to stay green). ``wrong_marks``: pytest marks for the
    mistake test (for example a filter for the warning a mistake raises).
    """
    import pytest

    only = (lambda cell: {"only": int(cell[2])}) if isolate else (lambda cell: {})
    alternatives = [(cell, i, code) for cell in sorted(right)
                    for i, code in enumerate(right[cell] if isinstance(right[cell], list) else [right[cell]])]

    def test_solution_passes_every_test():
        results = run({})
        assert len(results) == n_test_cells, f"expected {n_test_cells} test cells; found {sorted(results)}"
        failed = {k: v for k, v in results.items() if v}
        assert not failed, f"the solution fails its own tests: {failed}"

    @pytest.mark.parametrize("cell,what,code,fragment",
                             [(c, w, code, f) for c, cases in wrong.items() for w, code, f in cases],
                             ids=[f"{c}-{w}" for c, cases in wrong.items() for w, _, _ in cases])
    def test_wrong_implementation_is_rejected_with_a_pointed_message(cell, what, code, fragment):
        assert_mistake_caught(run({cell: code}, **only(cell)), int(cell[2]), what, fragment)

    for mark in wrong_marks:
        test_wrong_implementation_is_rejected_with_a_pointed_message = mark(
            test_wrong_implementation_is_rejected_with_a_pointed_message)

    @pytest.mark.parametrize("cell,code", [(c, code) for c, _, code in alternatives],
                             ids=[f"{c}-{i}" for c, i, _ in alternatives])
    def test_correct_alternative_is_accepted(cell, code):
        failed = {k: v for k, v in run({cell: code}, **only(cell)).items() if v}
        assert not failed, f"the correct alternative for {cell} was rejected: {failed}"

    return (test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
            test_correct_alternative_is_accepted)
