"""Feedback keeps hidden tests hidden (autograder/feedback.py), and the scores stay what nbgrader gave.

One small class of the warm-up is graded with the real autograder: "ada" hands in the solution,
"eve" a submission whose exercise 2 hard-codes 255 (it passes the visible test and fails the hidden
one). Eve's feedback HTML must show that ``test_ex2_hidden`` failed and its message, and no line of
any hidden test's source; the gradebook's per-cell scores must equal nbgrader's own scoring of the
autograded notebooks (which still hold the hidden tests).
"""
from __future__ import annotations

import html as html_lib
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from nbgrader.utils import determine_grade

from autograder.demo import load_pair, student_copy

REPO = Path(__file__).resolve().parents[1]
WRONG_EX2 = "def to_unit_range(images, max_value=255.0):\n    return (images.float() - 127.5) / 127.5"

pytestmark = pytest.mark.slow


def _text(path: Path) -> str:
    """The feedback page as a reader sees it: tags dropped, entities decoded."""
    raw = re.sub(r"<style.*?</style>|<script.*?</script>", "", path.read_text(), flags=re.S)
    return html_lib.unescape(re.sub(r"<[^>]+>", "", raw))


def _hidden_lines(nb) -> list[str]:
    """Lines (12+ characters) of the hidden regions that appear nowhere outside them."""
    lines, shown, inside = [], set(), False
    for cell in nb.cells:
        for line in cell.source.split("\n"):
            if "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END HIDDEN TESTS" in line:
                inside = False
            elif inside and len(line.strip()) >= 12:
                lines.append(line.strip())
            else:
                shown.add(line.strip())
    return [line for line in lines if line not in shown]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feedback")
    release, solution = load_pair("ch00_warmup", "warmup", REPO)
    for sid, nb in {"ada": student_copy(release, solution),
                    "eve": student_copy(release, solution, {"ex2_solution": WRONG_EX2})}.items():
        folder = tmp / "subs" / sid / "ch00_warmup"
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / "warmup.ipynb"))
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submissions", str(tmp / "subs"),
                           "--out", str(tmp / "out"), "--jobs", "2", "--assignment", "ch00_warmup", "--no-progress"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, f"grade exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return {"out": tmp / "out", "solution": solution}


def test_feedback_shows_the_failure_but_no_hidden_test_source(graded):
    out, solution = graded["out"], graded["solution"]
    hidden = _hidden_lines(solution)
    assert len(hidden) > 20, f"premise: the warm-up has hidden tests; found {len(hidden)} lines"
    for sid in ("ada", "eve"):
        text = _text(out / "feedback" / sid / "ch00_warmup" / "warmup.html")
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"{sid}'s feedback shows hidden-test source lines: {leaked[:5]}"
        assert "BEGIN HIDDEN TESTS" not in text, f"{sid}'s feedback shows the hidden-test markers"
    eve = _text(out / "feedback" / "eve" / "ch00_warmup" / "warmup.html")
    assert "AssertionError: with max_value=16, [0, 8, 16] should map to [-1, 0, 1]" in eve and \
        "did you hard-code 255" in eve, "eve's feedback must show the failing hidden test's message"
    assert "test_ex2_hidden" in eve and "Exercise 2, visible test passed." in eve, (
        "eve's feedback must name the failing test cell and keep the visible tests' output")
    assert "Score: 0.0 / 2.0" in eve, "eve's feedback must show the hidden test's score (0 of 2)"


def test_gradebook_scores_are_nbgraders_scores_of_the_autograded_notebooks(graded):
    out = graded["out"]
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", "diffcourse") as gb:
        stored = {(sid, g.name): g.auto_score for sid in ("ada", "eve")
                  for g in gb.find_submission_notebook("warmup", "ch00_warmup", sid).grades}
    for sid, total in (("ada", 20.0), ("eve", 18.0)):
        nb = nbformat.read(str(out / "autograded" / sid / "ch00_warmup" / "warmup.ipynb"), as_version=4)
        assert any("BEGIN HIDDEN TESTS" in c.source for c in nb.cells), "premise: autograded copies keep hidden tests"
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell.metadata.get("nbgrader", {}).get("grade"):
                assert stored[(sid, gid)] == determine_grade(cell)[0], (
                    f"{sid} {gid}: gradebook has {stored[(sid, gid)]}, nbgrader scores the cell {determine_grade(cell)[0]}")
        got = sum(score for (s, _), score in stored.items() if s == sid)
        assert got == total, f"{sid} should score {total}; the gradebook has {got}"
