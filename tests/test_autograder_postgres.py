"""The gradebook in PostgreSQL (``python -m autograder grade --db-url postgresql://...``).

A real PostgreSQL server (Debian's ``postgresql`` package, ``make sysdeps``) is started for the
module on a free loopback port in a temp dir (tests/pg_server.py) and stopped at the end. On it:

* two graders write to one database at the same time (two batches, two folders: two machines),
  and one of them is killed with ``kill -9`` half-way and started again;
* the result must be the same grades, test by test, as the same class graded into SQLite, with
  one submission per student and one grade per test cell: nothing lost, nothing duplicated.

The tiny course (tests/tiny_course.py) keeps it fast: a notebook with no imports, four students.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from pg_server import PostgresServer
from tiny_course import ASSIGNMENT, EXPECTED, write_class, write_course

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _grade(subs: Path, out: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autograder", "grade", "--submissions", str(subs), "--out", str(out),
            "--course-root", str(root), "--no-progress", *extra]


def _csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {r["student_id"]: r for r in csv.DictReader(f)}


def _gradebook(db_url: str) -> dict:
    """{student: {test: score}}, with the number of submissions and of grade rows per student."""
    with Gradebook(db_url, "diffcourse") as gb:
        out = {}
        for student in gb.students:
            subs = [s for s in student.submissions if s.assignment.name == ASSIGNMENT]
            grades = [g for s in subs for nb in s.notebooks for g in nb.grades if g.cell.__class__.__name__ == "GradeCell"]
            out[student.id] = {"submissions": len(subs), "grades": len(grades),
                               "tests": {g.name: float(g.score) for g in grades}}
        return out


@pytest.fixture(scope="module")
def graded(postgres, tmp_path_factory):
    """Two concurrent graders into one PostgreSQL database (B killed once and restarted); SQLite for reference."""
    tmp = tmp_path_factory.mktemp("pg")
    root = write_course(tmp / "root")
    subs_a = write_class(root, tmp / "subs_a", ["ada", "ben"])
    subs_b = write_class(root, tmp / "subs_b", ["cat", "dan"])
    subs_all = write_class(root, tmp / "subs_all")
    db_url = postgres.create_database("gradebook")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    logs = {k: open(tmp / f"{k}.log", "w+") for k in ("sqlite", "a")}   # files, not pipes: nothing can block
    sq = subprocess.Popen(_grade(subs_all, tmp / "out_sqlite", root, "--jobs", "1"), cwd=REPO, env=env,
                          stdout=logs["sqlite"], stderr=subprocess.STDOUT)   # meanwhile, for reference
    a = subprocess.Popen(_grade(subs_a, tmp / "out_a", root, "--db-url", db_url, "--jobs", "1"), cwd=REPO, env=env,
                         stdout=logs["a"], stderr=subprocess.STDOUT)
    cmd_b = _grade(subs_b, tmp / "out_b", root, "--db-url", db_url, "--jobs", "1")
    b = subprocess.Popen(cmd_b, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    done_b = tmp / "out_b" / ".autograder" / "done"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (done_b.exists() and list(done_b.rglob("*.json"))) \
            and b.poll() is None:
        time.sleep(0.1)
    os.killpg(b.pid, signal.SIGKILL)   # the batch and its worker, wherever they are (in a write or a run)
    b.wait()
    killed_after = len(list(done_b.rglob("*.json"))) if done_b.exists() else 0
    again = subprocess.run(cmd_b, cwd=REPO, capture_output=True, text=True, timeout=300)
    a.wait(timeout=300)
    out_a = (tmp / "a.log").read_text()
    pg_seconds = time.monotonic() - start
    sq.wait(timeout=300)
    out_sq = (tmp / "sqlite.log").read_text()
    for f in logs.values():
        f.close()
    assert a.returncode == 0, f"grader A failed:\n{out_a[-3000:]}"
    assert again.returncode == 0, f"grader B, restarted, failed:\n{again.stdout[-2000:]}\n{again.stderr[-3000:]}"
    assert sq.returncode == 0, f"the SQLite batch failed:\n{out_sq[-3000:]}"
    print(f"\nPostgreSQL: 2 concurrent graders (one killed and restarted), SQLite alongside: {pg_seconds:.1f} s; "
          f"all done: {time.monotonic() - start:.1f} s")
    return {"db_url": db_url, "tmp": tmp, "killed_after": killed_after, "b_stdout": again.stdout,
            "rows": {**_csv(tmp / "out_a" / "grades.csv"), **_csv(tmp / "out_b" / "grades.csv")},
            "sqlite_rows": _csv(tmp / "out_sqlite" / "grades.csv"),
            "sqlite_url": f"sqlite:///{tmp / 'out_sqlite' / 'gradebook.db'}"}


def test_postgres_server_runs_on_loopback(postgres):
    import psycopg

    with psycopg.connect(postgres.url()) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        address = conn.execute("SELECT inet_server_addr()::text").fetchone()[0]
    assert address.startswith("127.0.0.1"), f"the test server must listen on loopback only; got {address}"
    assert int(version.split(".")[0]) >= 13, f"PostgreSQL {version} is older than nbgrader's SQLAlchemy supports"


def test_concurrent_graders_lose_nothing(graded):
    assert 0 < graded["killed_after"] < 2, (
        f"grader B should have been killed half-way (1 of 2 submissions done); {graded['killed_after']} were done")
    book = _gradebook(graded["db_url"])
    assert sorted(book) == sorted(EXPECTED), f"every student of both graders must be in the gradebook; got {sorted(book)}"
    for sid, entry in book.items():
        assert entry["submissions"] == 1 and entry["grades"] == 2, (
            f"{sid}: expected 1 submission with 2 graded tests (nothing duplicated, nothing lost); got {entry}")
    scores = {sid: sum(e["tests"].values()) for sid, e in book.items()}
    assert scores == EXPECTED, f"PostgreSQL gradebook scores {scores}, expected {EXPECTED}"
    csv_scores = {sid: float(r["score"]) for sid, r in graded["rows"].items()}
    assert csv_scores == EXPECTED, f"grades.csv of the two graders: {csv_scores}, expected {EXPECTED}"
    assert "postgresql://grader@127.0.0.1" in graded["b_stdout"], "the command must say which gradebook it wrote"


def test_postgres_and_sqlite_give_the_same_grades(graded):
    pg, sq = _gradebook(graded["db_url"]), _gradebook(graded["sqlite_url"])
    assert {s: e["tests"] for s, e in pg.items()} == {s: e["tests"] for s, e in sq.items()}, (
        f"test-by-test grades differ:\nPostgreSQL {pg}\nSQLite {sq}")
    keys = ("score", "max_score", "status", "test_square", "test_cases")
    want = {s: tuple(r[k] for k in keys) for s, r in graded["sqlite_rows"].items()}
    got = {s: tuple(r[k] for k in keys) for s, r in graded["rows"].items()}
    assert got == want, f"grades.csv rows differ between PostgreSQL and SQLite:\n{got}\n{want}"
    assert graded["rows"]["cat"]["test_cases"] == "3.0", "cat's partial credit (3 of 4) must survive PostgreSQL"


def test_nbgrader_export_reads_the_postgres_gradebook(graded, tmp_path):
    nbgrader = Path(sys.executable).parent / "nbgrader"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(nbgrader), "export", "--to", str(tmp_path / "export.csv"),
                           f"--CourseDirectory.root={graded['tmp'] / 'out_a'}",
                           f"--CourseDirectory.db_url={graded['db_url']}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, f"nbgrader export failed on the PostgreSQL gradebook:\n{proc.stderr[-2000:]}"
    with open(tmp_path / "export.csv") as f:
        exported = {r["student_id"]: float(r["score"]) for r in csv.DictReader(f)}
    assert exported == EXPECTED, f"nbgrader export of the PostgreSQL gradebook: {exported}, expected {EXPECTED}"


_HOLD = """import sys, time
sys.path.insert(0, {repo!r})
from autograder.gradebook import GradebookLock
lock = GradebookLock({out!r}, {url!r})
lock._connection()
print("ready", flush=True)
start = time.monotonic()
lock.acquire()
print(round(time.monotonic() - start, 2), flush=True)
"""


def test_advisory_lock_serializes_graders_in_different_folders(postgres, tmp_path):
    """Two folders (two machines) share no file lock: the PostgreSQL advisory lock alone must serialize them."""
    from autograder.gradebook import GradebookLock

    url = postgres.create_database("locktest")
    held = GradebookLock(tmp_path / "machine_a", url)
    held.acquire()
    other = subprocess.Popen([sys.executable, "-c", _HOLD.format(repo=str(REPO), out=str(tmp_path / "machine_b"),
                                                                 url=url)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "ready", "the other grader did not start"
    time.sleep(2)
    assert other.poll() is None, "a grader in another folder got the gradebook while this one held it"
    held.release()
    waited = float(other.communicate(timeout=60)[0])
    assert waited >= 2, f"the other grader waited {waited} s, less than the lock was held after it asked"
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(500):   # a worker grades thousands of submissions: no descriptor or connection per lock
        with GradebookLock(tmp_path / "machine_a", url):
            pass
    assert len(os.listdir("/proc/self/fd")) <= fds + 1, "each GradebookLock leaked a file descriptor or connection"
