"""Run a graded notebook's cells in-process, fast, to test its graded tests (no kernel, no nbgrader).

The source notebook ``solutions/{assignment}/{notebook}.ipynb`` is executed as written (nbgrader's
``### BEGIN/END`` markers are comments), in one fresh namespace, with chosen solution cells
replaced by other code: a plausible mistake must make the exercise's test cells fail with a
message that points at it; a correct alternative must pass. Grading through the real kernel,
papermill and nbgrader is tested in ``test_autograder_grade.py``.

The contract every graded notebook follows (chapters written later included; enforced for every
``solutions/*/*.ipynb`` by ``tests/test_assessment_contract.py``):

1. Exercise ``k`` has one solution cell ``ex{k}_solution`` and the test cells ``test_ex{k}_visible``
   and ``test_ex{k}_hidden`` (grade ids).
2. Each solution cell declares, in its cell metadata, every function and class it defines::

       "grading": {"ddim_step": {},
                   "simple_loss": {"differentiable": true},
                   "make_grid": {"exempt": {"in_place": "takes no tensors"}}}

   ``differentiable``: the result must carry gradients (a loss, a layer): the ``no_grad`` mutant
   applies. ``exempt``: mutant id -> the reason it cannot apply (a reason is required).
3. Generic mutants derived from each declared solution (``tests/nbmutants.py``: writes into its
   tensor inputs; runs under ``no_grad``; ignores its ``generator``; ignores each argument that has
   a default) must each fail exercise k's tests with a message naming the mistake. So the tests
   pass non-default values for every argument that has one, check that inputs are left unchanged
   (``diffcourse.grading.call_checked``), compare seeded draws against the reference with the same
   generator, and back-propagate through differentiable results (``check_differentiable``).
4. Exercises are independent: with exercise k's functions replaced by ones that raise ("poisoned"),
   only exercise k's tests fail. A later exercise's tests run the student's function with the
   course's implementation of the earlier ones (``diffcourse.grading.reference`` with
   ``diffcourse.notebook_refs``), so a mistake costs once. Non-test cells that fail are tolerated
   as the grader tolerates them (it runs with ``allow_errors``).
5. Messages name what differs (value and index, expected against got): ``diffcourse.grading.check_close``.
6. Each chapter's ``tests/test_chNN_notebook.py`` keeps its plausible chapter-specific mistakes
   (``WRONG``: the fragment each message must contain) and correct alternatives (``RIGHT``).
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
              grading: bool = True, allow_errors: bool = False, until: str | None = None) -> dict[str, str | None]:
    """Execute ``nb`` with solution cells replaced; maps each graded test cell's grade id to its error or None.

    ``overrides``: grade id -> replacement source. ``skip``: grade ids not to run (widgets,
    plots). With ``grading`` the ``parameters`` cell is followed by ``GRADING = True`` as the
    autograder injects it. A non-test cell that raises stops the run (it is a broken override),
    unless ``allow_errors`` (as the grader runs: later cells still run). ``until``: the grade id of
    the last cell to run (the cells after it cannot affect its result).
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
        elif allow_errors:
            try:
                exec(compile(source, gid or "<cell>", "exec"), ns)
            except Exception:   # noqa: BLE001 - the grader runs on past a failing cell
                pass
        else:
            exec(compile(source, gid or "<cell>", "exec"), ns)
        if until is not None and gid == until:
            break
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


def solution_sources(assignment: str, notebook: str, max_score: float) -> dict[str, str]:
    """Check the solution notebook's frame (CHAPTER.md): one papermill ``parameters`` cell with GRADING, DEVICE and
    SEED, and graded cells worth ``max_score`` points in all. Returns each cell's source by grade id."""
    nb = load_solution(assignment, notebook)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and all(k in params[0].source for k in ("GRADING", "DEVICE", "SEED")), \
        "the notebook needs one `parameters` cell with GRADING, DEVICE and SEED"
    points = sum(c.metadata["nbgrader"].get("points", 0) for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade"))
    assert points == max_score, f"expected {max_score} points in all; found {points}"
    return {grade_id(c): c.source for c in nb.cells}


def assert_released_has_stubs_and_no_secrets(assignment: str, notebook: str, n_stubs: int,
                                             secrets: tuple[str, ...] = ()) -> tuple:
    """The released ``notebooks/{assignment}/{notebook}.ipynb`` leaks no solution or hidden test (nbgrader's
    markers, and ``secrets``: lines of the solution or of the hidden tests), has one ``raise NotImplementedError()``
    cell per exercise (``n_stubs``) and no outputs. Returns (released notebook, stub cells) for further checks."""
    released = nbformat.read(str(REPO / "notebooks" / assignment / f"{notebook}.ipynb"), as_version=4)
    text = "\n".join(c.source for c in released.cells)
    for secret in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", *secrets):
        assert secret not in text, f"the released notebook leaks {secret!r}; run `python -m autograder release {assignment}`"
    stubs = [c for c in released.cells if c.cell_type == "code" and "raise NotImplementedError()" in c.source]
    assert len(stubs) == n_stubs, f"expected {n_stubs} solution stubs in the released notebook; found {len(stubs)}"
    assert all(not c.get("outputs") for c in released.cells if c.cell_type == "code"), "outputs must be cleared"
    return released, stubs


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
    print(f"{assignment}: the solution scored {solved['score']}/{max_score} in {solved['seconds']} s")


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


# ----------------------------------------------------------------------------- the contract (see the docstring)

def solution_cells(nb) -> dict[int, object]:
    """Exercise number -> its solution cell (grade id ``ex{k}_solution``)."""
    import re

    cells = {}
    for cell in nb.cells:
        m = re.fullmatch(r"ex(\d+)_solution", grade_id(cell) or "")
        if m:
            cells[int(m.group(1))] = cell
    return cells


def contract_problems(nb) -> list[str]:
    """What the notebook ``nb`` lacks of points 1-2 of the contract (empty when it complies)."""
    from nbmutants import defined_names

    problems = []
    tests = {grade_id(c) for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}
    cells = solution_cells(nb)
    if not cells:
        problems.append("no solution cell named ex{k}_solution")
    for k, cell in sorted(cells.items()):
        for kind in ("visible", "hidden"):
            if f"test_ex{k}_{kind}" not in tests:
                problems.append(f"exercise {k} has no test cell test_ex{k}_{kind}")
        declared = cell.metadata.get("grading")
        names = defined_names(cell.source)
        if not declared:
            problems.append(f"ex{k}_solution declares no 'grading' metadata (it defines {names})")
            continue
        for name in names:
            if name not in declared:
                problems.append(f"ex{k}_solution defines {name} but does not declare it in its 'grading' metadata")
        for name, spec in declared.items():
            if name not in names:
                problems.append(f"ex{k}_solution declares {name}, which it does not define")
            for mutant, reason in spec.get("exempt", {}).items():
                if not str(reason).strip():
                    problems.append(f"ex{k}_solution: {name} is exempt from {mutant} without a reason")
    return problems


def mutant_cases(nb) -> list[tuple[int, str, str, str]]:
    """(exercise, solution grade id, name, mutant id) for every declared, non-exempt generic mutant."""
    from nbmutants import mutant_ids

    cases = []
    for k, cell in sorted(solution_cells(nb).items()):
        for name, spec in cell.metadata.get("grading", {}).items():
            for kind in mutant_ids(cell.source, name, bool(spec.get("differentiable"))):
                if kind not in spec.get("exempt", {}):
                    cases.append((k, grade_id(cell), name, kind))
    return cases


def mutant_source(source: str, name: str, kind: str) -> str:
    """The solution cell ``source`` with ``name`` replaced by its mutant ``kind``."""
    return (source + f"\nfrom nbmutants import mutate as _nbm_mutate\n"
            f"{name} = _nbm_mutate({name}, {kind!r}, {f'{name}:{kind}'!r})\n")


def poisoned_source(source: str) -> str:
    """The solution cell ``source`` with every function and class it defines replaced by one that raises."""
    from nbmutants import defined_names

    return source + "\nfrom nbmutants import poisoned as _nbm_poisoned\n" + "".join(
        f"{name} = _nbm_poisoned({name!r})\n" for name in defined_names(source))


def assert_independent(nb, k: int, *, skip: tuple[str, ...] = ()) -> None:
    """With exercise k poisoned, exercise k's tests fail and every other exercise's tests pass."""
    import re

    cell = solution_cells(nb)[k]
    earlier = tuple(g for g in (grade_id(c) for c in nb.cells) if g and (m := re.fullmatch(r"test_ex(\d+)_\w+", g))
                    and int(m.group(1)) < k)           # they run before exercise k's cell: nothing to learn there
    results = run_tests(nb, {grade_id(cell): poisoned_source(cell.source)}, skip=skip + earlier, allow_errors=True)
    mine = {g: m for g, m in results.items() if g.startswith(f"test_ex{k}_")}
    assert mine and all(mine.values()), f"with exercise {k} poisoned its own tests should fail; got {mine}"
    others = {g: m for g, m in results.items() if m and not g.startswith(f"test_ex{k}_")}
    assert not others, (f"exercise {k}'s functions are used by other exercises' tests, so one mistake costs several "
                        f"exercises: run them with diffcourse.grading.reference(globals(), ...) instead: {others}")


def assert_mutant_rejected(nb, k: int, name: str, kind: str, *, skip: tuple[str, ...] = ()) -> None:
    """Exercise k's tests reject mutant ``kind`` of ``name`` with a message containing its fragment."""
    import pytest

    from nbmutants import FIRED, fragment

    cell = solution_cells(nb)[k]
    others = tuple(g for g in (grade_id(c) for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade"))
                   if not g.startswith(f"test_ex{k}_"))
    key = f"{name}:{kind}"
    FIRED[key] = 0
    results = run_tests(nb, {grade_id(cell): mutant_source(cell.source, name, kind)}, skip=skip + others,
                        allow_errors=True, until=f"test_ex{k}_hidden")
    if kind == "in_place" and not FIRED[key]:
        pytest.skip(f"{name} never receives a tensor in the tests: nothing to write into")
    assert kind.startswith("default:") or FIRED[key], f"the mutant {kind} of {name} never changed a call"
    assert_mistake_caught(results, k, f"{name}: {kind}", fragment(kind))
