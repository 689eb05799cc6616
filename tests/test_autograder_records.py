"""Per-student records: late submissions, extensions and the penalty; the per-test breakdown; a
re-grade of one student that leaves the others' rows alone.

The tiny course (tests/tiny_course.py) is graded once with a late policy (deadline 1 Dec 17:00 UTC,
15 minutes' grace, 10 % of the score per started day late, at most 50 %) and nbgrader's
``timestamp.txt`` in each submission: ada 10 minutes late (within the grace), ben and cat a day
and a half late, dan as late but with a 48-hour extension. Then cat is granted an extension and
re-graded alone (``--student cat``) while ben's file has changed too: only cat's rows may move.
"""
from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from autograder.gradebook import late_penalty, load_policy
from tiny_course import EXPECTED, write_class, write_course

REPO = Path(__file__).resolve().parents[1]
POLICY = """
[penalty]
method = "per_day"
per_day = 0.10
max = 0.50
grace_minutes = 15

[deadlines]
tiny = "2026-12-01 17:00:00 UTC"

[extensions.tiny]
dan = 48
"""
STAMPS = {"ada": "2026-12-01 17:10:00.000000 UTC", "ben": "2026-12-03 05:00:00.000000 UTC",
          "cat": "2026-12-02 18:30:00.000000 UTC", "dan": "2026-12-02 18:30:00.000000 UTC"}


def _csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {r["student_id"]: r for r in csv.DictReader(f)}


def _grade(subs, out, root, policy, *extra):
    cmd = [sys.executable, "-m", "autograder", "grade", "--submissions", str(subs), "--out", str(out),
           "--course-root", str(root), "--late-policy", str(policy), "--jobs", "2", "--no-progress", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"grade exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _db_rows(out: Path, student: str) -> list[tuple]:
    """Everything the gradebook holds for one student's submission (ids, timestamps, scores, penalties)."""
    db = sqlite3.connect(out / "gradebook.db")
    rows = db.execute(
        "SELECT sa.id, sa.timestamp, sa.extension, sn.id, sn.late_submission_penalty, g.id, g.cell_id, g.auto_score, "
        "g.manual_score, g.extra_credit FROM submitted_assignment sa JOIN submitted_notebook sn "
        "ON sn.assignment_id = sa.id JOIN grade g ON g.notebook_id = sn.id WHERE sa.student_id = ? ORDER BY g.cell_id",
        (student,)).fetchall()
    db.close()
    return rows


@pytest.fixture(scope="module")
def late_class(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    root = write_course(tmp / "root")
    subs = write_class(root, tmp / "subs", timestamps=STAMPS)
    policy = tmp / "late.toml"
    policy.write_text(POLICY)
    out = tmp / "out"
    _grade(subs, out, root, policy)
    return {"root": root, "subs": subs, "out": out, "policy": policy, "rows": _csv(out / "grades.csv"),
            "tests": list(csv.DictReader(open(out / "grades_by_test.csv")))}


def test_late_penalty_policy_numbers():
    assert late_penalty(5.0, 25.5 * 3600, 0.10, 0.50) == 1.0, "25.5 h late = 2 started days = 20 % of 5 points"
    assert late_penalty(6.0, 30 * 86400, 0.10, 0.50) == 3.0, "the penalty is capped at max (50 %)"
    assert late_penalty(6.0, 1, 0.10, 0.50) == pytest.approx(0.6), "one second late is one started day"


def test_late_policy_file_is_checked(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[penalty]\nmethod = "halve"\n')
    with pytest.raises(ValueError, match="penalty.method"):
        load_policy(bad)
    bad.write_text('[deadline]\ntiny = "2026-12-01 17:00:00 UTC"\n')
    with pytest.raises(ValueError, match="unknown section"):
        load_policy(bad)
    shipped = load_policy(REPO / "autograder" / "late_policy.example.toml")   # shown on the instructors' page
    assert shipped["extensions"]["ch01_math"]["ben"] == 48.0 and set(shipped["deadlines"]) <= set(
        p.name for p in (REPO / "solutions").iterdir()), f"the example policy must name real assignments: {shipped}"
    good = tmp_path / "good.toml"
    good.write_text(POLICY)
    policy = load_policy(good)
    assert policy["deadlines"]["tiny"] == "2026-12-01T17:00:00" and policy["extensions"]["tiny"]["dan"] == 48.0


def test_late_submissions_extensions_and_penalty(late_class):
    rows = late_class["rows"]
    got = {sid: (float(r["raw_score"]), float(r["late_penalty"]), float(r["score"]), float(r["hours_late"]))
           for sid, r in rows.items()}
    want = {"ada": (6.0, 0.0, 6.0, 0.17),    # 10 min late: inside the 15 min grace
            "ben": (0.0, 0.0, 0.0, 36.0),    # late, but nothing to take
            "cat": (5.0, 1.0, 4.0, 25.5),    # 2 started days: 20 % of 5
            "dan": (6.0, 0.0, 6.0, 0.0)}     # as late as cat, with a 48 h extension
    assert got == want, f"(raw score, penalty, score, hours late): got {got}, expected {want}"
    with Gradebook(f"sqlite:///{late_class['out'] / 'gradebook.db'}", "diffcourse") as gb:
        assert str(gb.find_assignment("tiny").duedate) == "2026-12-01 17:00:00", "the deadline goes into nbgrader"
        dan = gb.find_submission("tiny", "dan")
        assert dan.extension.total_seconds() == 48 * 3600 and dan.total_seconds_late == 0, (
            f"dan's extension must be nbgrader's: {dan.extension}, {dan.total_seconds_late} s late")
        cat = gb.find_submission("tiny", "cat")
        assert cat.late_submission_penalty == 1.0 and cat.score == 5.0, (
            f"nbgrader's own record of cat's penalty: {cat.late_submission_penalty} on {cat.score}")


def test_per_test_breakdown(late_class):
    rows = late_class["rows"]
    assert [rows[s]["test_cases"] for s in "ada ben cat dan".split()] == ["4.0", "0.0", "3.0", "4.0"], (
        "grades.csv keeps one score column per test")
    tests = {(r["student_id"], r["test"]): (float(r["score"]), float(r["max_score"]), r["credit"])
             for r in late_class["tests"]}
    assert len(tests) == len(late_class["tests"]) == 8, f"4 students x 2 tests expected; got {late_class['tests']}"
    assert tests[("cat", "test_cases")] == (3.0, 4.0, "partial"), f"cat's partial credit: {tests[('cat', 'test_cases')]}"
    assert tests[("cat", "test_square")] == (2.0, 2.0, "full") and tests[("ben", "test_cases")] == (0.0, 4.0, "none")
    for sid, raw in EXPECTED.items():
        total = sum(s for (who, _), (s, _, _) in tests.items() if who == sid)
        assert total == raw, f"{sid}: the breakdown adds up to {total}, the raw score is {raw}"


def test_regrade_one_student_leaves_the_others_alone(late_class):
    out, subs = late_class["out"], late_class["subs"]
    others = ["ada", "ben", "dan"]
    before_db = {sid: _db_rows(out, sid) for sid in others}
    files = [p for sid in others for p in (out / "autograded" / sid).rglob("*") if p.is_file()] + \
            [p for sid in others for p in (out / "feedback" / sid).rglob("*") if p.is_file()]
    before_files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    # cat is granted 48 h; ben hands in a new file, but only cat is asked for
    late_class["policy"].write_text(POLICY.replace("dan = 48", "dan = 48\ncat = 48"))
    (subs / "ben" / "tiny" / "tiny.ipynb").write_bytes((subs / "ada" / "tiny" / "tiny.ipynb").read_bytes())
    _grade(subs, out, late_class["root"], late_class["policy"], "--student", "cat")
    rows = _csv(out / "grades.csv")
    assert sorted(rows) == ["ada", "ben", "cat", "dan"], f"grades.csv must still list every student: {sorted(rows)}"
    cat = rows["cat"]
    assert (float(cat["late_penalty"]), float(cat["score"]), float(cat["hours_late"])) == (0.0, 5.0, 0.0), (
        f"cat, re-graded with a 48 h extension, is on time: {cat}")
    for sid in others:
        assert rows[sid] == late_class["rows"][sid], f"{sid}'s row changed:\n{late_class['rows'][sid]}\n{rows[sid]}"
        assert _db_rows(out, sid) == before_db[sid], f"{sid}'s gradebook rows changed in a re-grade of cat"
    changed = [str(p.relative_to(out)) for p, v in before_files.items() if (p.stat().st_mtime_ns, p.read_bytes()) != v]
    assert not changed, f"files of other students were rewritten: {changed}"
    assert _db_rows(out, "cat")[0][4] is None, "cat's penalty in the gradebook must be gone"
