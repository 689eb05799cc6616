"""The hostile corpus (tests/hostile/corpus.py) graded in ONE batch with --jobs 2.

The batch must complete (exit 0) and every submission get its expected status and score; no
attack may leak the solutions, the gradebook or another submission, reach the host's network,
write outside its sandbox, or leave a process behind.
"""
from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from autograder.demo import load_pair, student_copy
from hostile.corpus import Targets, build_corpus, expected_cases
from hostile.procs import running_commands

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class Listener:
    """A TCP listener on the host's loopback that records every connection it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits: list[bytes] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                self.hits.append(conn.recv(100) or b"<connected>")
            except OSError:
                self.hits.append(b"<connected>")
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    subs, out = tmp / "submissions", tmp / "out"
    release, solution = load_pair("ch00_warmup", "warmup", REPO)
    honest = subs / "zz_honest" / "ch00_warmup"
    honest.mkdir(parents=True)
    nbformat.write(student_copy(release, solution), str(honest / "warmup.ipynb"))
    listener = Listener()
    targets = Targets(solutions=REPO / "solutions", gradebook=out / "gradebook.db",
                      other_submission=honest / "warmup.ipynb", canary=tmp / "canary.txt", port=listener.port)
    cases = build_corpus(subs, targets, REPO)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submissions", str(subs), "--out", str(out),
                           "--jobs", "2", "--cell-timeout", "10", "--notebook-timeout", "90", "--no-progress"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    seconds = time.monotonic() - start
    time.sleep(0.5)
    listener.close()
    rows = {}
    if (out / "grades.csv").exists():
        with open(out / "grades.csv") as f:
            rows = {r["student_id"]: r for r in csv.DictReader(f)}
    return {"proc": proc, "rows": rows, "out": out, "cases": cases, "listener": listener,
            "canary": targets.canary, "seconds": seconds}


def test_batch_completes(corpus):
    proc = corpus["proc"]
    assert proc.returncode == 0, f"the hostile batch must exit 0; got {proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(corpus["cases"]) >= 20, f"the corpus needs at least 20 cases; has {len(corpus['cases'])}"
    missing = {c.student_id for c in corpus["cases"]} - set(corpus["rows"])
    assert not missing, f"grades.csv lacks rows for {sorted(missing)}"
    print(f"hostile batch: {len(corpus['rows'])} notebooks in {corpus['seconds']:.1f} s")


@pytest.mark.parametrize("case", expected_cases(), ids=lambda c: c.student_id)
def test_case_status_and_score(corpus, case):
    row = corpus["rows"].get(case.student_id)
    assert row is not None, f"no grades.csv row for {case.student_id}"
    got = (row["status"], float(row["score"]))
    assert got == (case.status, float(case.score)), (
        f"{case.student_id}: expected status {case.status!r} and score {case.score}, got {got}; "
        f"notes: {row['notes']}  (see tests/hostile/corpus.py and autograder/execute.py:run_status)")


@pytest.mark.parametrize("case", [c for c in expected_cases() if c.forbidden or c.required],
                         ids=lambda c: c.student_id)
def test_graded_notebook_contents(corpus, case):
    path = corpus["out"] / "autograded" / case.student_id / "ch00_warmup" / "warmup.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    text = json.dumps(nb, ensure_ascii=False)
    printed = json.dumps([o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") != "error"],
                         ensure_ascii=False)   # what the code printed or displayed (not its source)
    for bad in case.forbidden:
        assert bad not in printed, f"{case.student_id}: {bad[:40]!r} must not be printed in the graded notebook {path}"
    for good in case.required:
        assert good in text, f"{case.student_id}: expected {good!r} in the graded notebook {path}"
    assert len(text) < 3_000_000, f"{case.student_id}: graded notebook is {len(text)} bytes; outputs are not capped"


def test_no_network_no_escape_no_leftovers(corpus):
    assert corpus["listener"].hits == [], f"a sandboxed notebook reached the host's loopback: {corpus['listener'].hits}"
    assert not corpus["canary"].exists(), f"a sandboxed notebook wrote {corpus['canary']} outside its sandbox"
    assert not (Path(sys.prefix) / "pwned.txt").exists(), "a sandboxed notebook wrote into the virtual environment"
    left = [c for c in running_commands() if c == "sleep 321"]
    assert not left, f"processes started by a submission outlived its sandbox: {left}"


def test_feedback_for_every_row(corpus):
    for sid in corpus["rows"]:
        fb = corpus["out"] / "feedback" / sid / "ch00_warmup" / "warmup.html"
        assert fb.exists() and fb.stat().st_size > 0, f"no feedback for {sid} at {fb}"
