"""The grading command end to end: papermill + sandbox + nbgrader, grades.csv, feedback, gradebook.

A small class is graded once with ``python -m autograder grade --jobs 2``: the solution must score
full marks, the released notebook zero, and a notebook whose kernel dies half-way must get zero
for every test cell that did not run. ``finalize`` is also checked on its own against nbgrader's
scoring rule (a test cell with no output would otherwise get full credit).
"""
from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output
from nbgrader.utils import determine_grade

from autograder.demo import load_pair, student_copy
from autograder.execute import finalize

REPO = Path(__file__).resolve().parents[1]
TESTS = [f"test_ex{k}_{kind}" for k in range(1, 6) for kind in ("visible", "hidden")]


def _test_cell(status: str, outputs=()):
    cell = new_code_cell("expect(True, 'x')", outputs=list(outputs),
                         metadata={"nbgrader": {"grade": True, "solution": False, "locked": True,
                                                "grade_id": "t", "points": 2, "schema_version": 3},
                                   "papermill": {"status": status}})
    cell.execution_count = 3 if status == "completed" else None
    return cell


def test_unrun_test_cell_scores_zero():
    for status in ("pending", "running"):
        nb = new_notebook(cells=[_test_cell(status)])
        assert determine_grade(nb.cells[0]) == (2, 2), "premise: nbgrader gives full credit to an empty test cell"
        graded = finalize(nb, nb, "DeadKernelError")
        assert determine_grade(graded.cells[0]) == (0, 2), (
            f"a test cell that did not run ({status}) must score 0; outputs {graded.cells[0].outputs}")
    sanitized = new_notebook(cells=[_test_cell("pending")])
    graded = finalize(None, sanitized, "wall_timeout")   # killed before anything was saved
    assert determine_grade(graded.cells[0]) == (0, 2), "with no executed notebook at all, every test must score 0"


def test_ran_test_cell_keeps_its_points_and_warnings_do_not_cost_points():
    ok = _test_cell("completed", [new_output("stream", name="stderr", text="UserWarning: slow\n")])
    assert determine_grade(ok) == (0, 2), "premise: nbgrader scores any stderr in a test cell as a failure"
    graded = finalize(new_notebook(cells=[ok]), new_notebook(cells=[ok]), "completed")
    assert determine_grade(graded.cells[0]) == (2, 2), "a test that ran and only warned must keep its points"
    assert "UserWarning: slow" in graded.cells[0].outputs[0]["text"], "the warning must stay visible in the feedback"


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class")
    subs, out = tmp / "submissions", tmp / "out"
    release, solution = load_pair("ch00_warmup", "warmup", REPO)
    sol = student_copy(release, solution)
    dying = student_copy(release, solution, {"ex2_solution": next(
        c.source for c in sol.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex2_solution")
        + "\nimport os\nos._exit(3)"})
    class_ = {"ada": sol, "ben": release, "cat": dying, "dan": None}
    for sid, nb in class_.items():
        folder = subs / sid / "ch00_warmup"
        folder.mkdir(parents=True)
        if nb is not None:
            nbformat.write(nb, str(folder / "warmup.ipynb"))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submissions", str(subs), "--out", str(out),
                           "--jobs", "2", "--assignment", "ch00_warmup"], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, f"grade exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    with open(out / "grades.csv") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return {"rows": rows, "out": out, "subs": subs, "proc": proc, "seconds": time.monotonic() - start}


def test_grades_csv_scores(graded_class):
    rows = graded_class["rows"]
    header = list(rows["ada"])
    for col in ["student_id", "assignment_id", "notebook_id", "score", "max_score", "status"] + TESTS:
        assert col in header, f"grades.csv lacks column {col!r}; has {header}"
    expected = {"ada": ("ok", 20.0), "ben": ("error", 0.0), "cat": ("killed", 4.0), "dan": ("missing", 0.0)}
    got = {sid: (r["status"], float(r["score"])) for sid, r in rows.items()}
    assert got == expected, f"expected (status, score) {expected}; got {got}"
    assert all(float(r["max_score"]) == 20 for r in rows.values()), "max_score must be 20 for the warm-up"
    cat = rows["cat"]
    assert float(cat["test_ex2_visible"]) == 0 and float(cat["test_ex1_visible"]) == 2, (
        f"cat's kernel died in exercise 2's cell: ex1 tests ran (2 each), later ones did not (0): {cat}")
    assert all(float(cat[t]) == 0 for t in TESTS[2:]), f"test cells after the kernel died must score 0: {cat}"
    assert "total" in graded_class["proc"].stdout, "the command must end with a summary table"
    assert float(rows["ada"]["seconds"]) < 30, (
        f"a graded notebook must run in well under 30 s; the warm-up took {rows['ada']['seconds']} s")


def test_feedback_and_parameters(graded_class):
    out = graded_class["out"]
    for sid in ("ada", "ben", "cat", "dan"):
        fb = out / "feedback" / sid / "ch00_warmup" / "warmup.html"
        assert fb.exists(), f"missing feedback {fb}"
    html = (out / "feedback" / "ada" / "ch00_warmup" / "warmup.html").read_text()
    assert "Exercise 1, visible test passed." in html and "20.0" in html, "ada's feedback should show her outputs and score"
    graded = nbformat.read(str(out / "autograded" / "ada" / "ch00_warmup" / "warmup.ipynb"), as_version=4)
    injected = [c for c in graded.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "GRADING = True" in injected[0].source, "papermill must inject GRADING = True when grading"


def test_gradebook_works_with_nbgrader_export(graded_class, tmp_path):
    out = graded_class["out"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "export", "--to", str(tmp_path / "export.csv"),
                           f"--CourseDirectory.root={out}", f"--CourseDirectory.db_url=sqlite:///{out / 'gradebook.db'}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, f"nbgrader export failed on OUT/gradebook.db:\n{proc.stderr[-2000:]}"
    with open(tmp_path / "export.csv") as f:
        exported = {r["student_id"]: float(r["score"]) for r in csv.DictReader(f)}
    assert exported.get("ada") == 20.0 and exported.get("ben") == 0.0, f"nbgrader export disagrees: {exported}"


@pytest.mark.slow
def test_killed_batch_resumes_without_lost_or_duplicated_grades(graded_class, tmp_path):
    subs, out = graded_class["subs"], tmp_path / "out"
    cmd = [sys.executable, "-m", "autograder", "grade", "--submissions", str(subs), "--out", str(out),
           "--jobs", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / ".autograder" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (done.exists() and list(done.rglob("*.json"))):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = list(done.rglob("*.json"))
    assert 1 <= len(first) < 4, f"the batch should have been killed half-way; {len(first)} of 4 were done"
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, f"the restarted batch failed:\n{again.stderr[-2000:]}"
    with open(out / "grades.csv") as f:
        rows = {r["student_id"]: (r["status"], r["score"]) for r in csv.DictReader(f)}
    want = {sid: (r["status"], r["score"]) for sid, r in graded_class["rows"].items()}
    assert rows == want, f"after a kill and restart expected {want}; got {rows}"
    db = sqlite3.connect(out / "gradebook.db")
    subs_per_student = db.execute("select count(*) from submitted_assignment group by student_id").fetchall()
    grades = db.execute("select count(*) from grade").fetchone()[0]
    assert all(n == (1,) for n in subs_per_student) and len(subs_per_student) == 4, (
        f"one submission per student expected; got {subs_per_student}")
    assert grades == 4 * 10, f"expected 4 students x 10 graded cells = 40 grades; got {grades}"
