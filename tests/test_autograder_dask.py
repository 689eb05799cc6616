"""Grading on a Dask cluster (``python -m autograder grade --scheduler ...``, autograder/cluster.py).

One small warm-up class (a full-marks student, an untouched notebook, a missing one) is graded three
times, all on this machine's loopback:

1. on the local process pool (``--jobs 2``): the reference;
2. on a ``LocalCluster`` of two worker processes (``--scheduler local:2``): the grades must be the
   reference's, and the command prints the dashboard link;
3. on a cluster started with the ``dask scheduler`` / ``dask worker`` commands (two worker
   processes, no nanny, reached as ``--scheduler tcp://127.0.0.1:PORT``), where the worker that is
   running a sandbox is killed (SIGKILL) mid-batch: the batch must still finish with the reference's
   grades, one row and one gradebook submission per student, none lost or duplicated.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from autograder.demo import load_pair, student_copy

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEEP = ("student_id", "assignment_id", "notebook_id", "score", "max_score", "status")


def _grade(subs: Path, out: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "autograder", "grade", "--submissions", str(subs), "--out", str(out),
           "--assignment", "ch00_warmup", "--no-progress", *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"grade {extra} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _rows(out: Path) -> list[tuple]:
    with open(out / "grades.csv") as f:
        return [tuple(r[k] for k in KEEP) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The class, and its grades from the local path (no scheduler)."""
    tmp = tmp_path_factory.mktemp("dask")
    subs = tmp / "submissions"
    release, solution = load_pair("ch00_warmup", "warmup", REPO)
    for sid, nb in {"ada": student_copy(release, solution), "ben": release, "dan": None}.items():
        folder = subs / sid / "ch00_warmup"
        folder.mkdir(parents=True)
        if nb is not None:
            nbformat.write(nb, str(folder / "warmup.ipynb"))
    _grade(subs, tmp / "local", "--jobs", "2")
    rows = _rows(tmp / "local")
    statuses = {r[0]: (r[5], float(r[3])) for r in rows}
    assert statuses == {"ada": ("ok", 20.0), "ben": ("error", 0.0), "dan": ("missing", 0.0)}, (
        f"premise: the local path grades the class as before; got {statuses}")
    return {"tmp": tmp, "subs": subs, "rows": rows}


def test_local_cluster_gives_the_local_grades(reference):
    out = reference["tmp"] / "local_cluster"
    proc = _grade(reference["subs"], out, "--scheduler", "local:2")
    assert "Dask: 2 worker(s)" in proc.stdout and "dashboard: http://127.0.0.1:" in proc.stdout, (
        f"the command must say how many workers it got and print the dashboard link:\n{proc.stdout[-1500:]}")
    assert _rows(out) == reference["rows"], (
        f"grades on a 2-worker LocalCluster differ from the local path:\n{_rows(out)}\nvs\n{reference['rows']}")
    assert (out / "feedback" / "ada" / "ch00_warmup" / "warmup.html").exists(), "the workers must write the feedback"


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _has_sandbox(pid: int) -> bool:
    try:
        return any(c.name() == "bwrap" for c in psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return False


def test_a_worker_killed_mid_batch_loses_nothing(reference):
    tmp = reference["tmp"]
    info = tmp / "scheduler.json"
    started = [_start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                       "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info)], tmp / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert info.exists(), f"dask scheduler did not start:\n{(tmp / 'scheduler.log').read_text()[-2000:]}"
        address = json.loads(info.read_text())["address"]
        workers = [_start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                           "--host", "127.0.0.1", "--name", f"w{i}"], tmp / f"worker{i}.log") for i in range(2)]
        started += workers
        logs = [tmp / f"worker{i}.log" for i in range(2)]
        deadline = time.monotonic() + 60
        while not all(b"Registered to" in log.read_bytes() for log in logs) and time.monotonic() < deadline:
            time.sleep(0.2)
        out = tmp / "tcp"
        batch = _grade(reference["subs"], out, "--scheduler", address, wait=False)
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and batch.poll() is None and time.monotonic() < deadline:
            victim = next((w for w in workers if _has_sandbox(w.pid)), None)
            time.sleep(0.1)
        assert victim is not None, "no worker ever ran a sandbox: the batch did not reach the cluster"
        os.killpg(victim.pid, signal.SIGKILL)          # the worker and its sandbox, mid-notebook
        victim.wait()
        stdout, stderr = batch.communicate(timeout=240)
        assert batch.returncode == 0, f"the batch failed after a worker died:\n{stdout[-2000:]}\n{stderr[-3000:]}"
        assert "Dask: 2 worker(s)" in stdout, stdout[-1500:]
        assert _rows(out) == reference["rows"], (
            f"after a worker was killed the grades differ from the local path:\n{_rows(out)}\nvs\n{reference['rows']}")
        db = sqlite3.connect(out / "gradebook.db")
        per_student = db.execute("select student_id, count(*) from submitted_assignment group by student_id").fetchall()
        grades = db.execute("select count(*) from grade").fetchone()[0]
        db.close()
        assert sorted(per_student) == [("ada", 1), ("ben", 1), ("dan", 1)], f"one submission per student: {per_student}"
        assert grades == 3 * 10, f"3 students x 10 graded cells = 30 grades expected; got {grades}"
        markers = sorted(p.parent.name for p in (out / ".autograder" / "done").rglob("*.json"))
        assert markers == ["ada", "ben", "dan"], f"one done-marker per student expected; got {markers}"
    finally:
        _stop(started)
