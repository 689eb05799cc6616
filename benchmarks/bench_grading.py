"""Benchmark the autograder: seconds per graded notebook (median) and notebooks per minute.

    python benchmarks/bench_grading.py [--students 8] [--jobs 2]

Grades a class of warm-up submissions (half solved, half untouched) with
``python -m autograder grade --jobs N`` and reports: the median wall time of one notebook in its
sandbox (kernel start, papermill execution; from grades.csv), and the batch throughput in notebooks
per minute (everything included: release, nbgrader sanitize/autograde, feedback, gradebook).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autograder.demo import load_pair, student_copy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    release, solution = load_pair("ch00_warmup", "warmup", REPO)
    with tempfile.TemporaryDirectory() as tmp:
        subs, out = Path(tmp) / "submissions", Path(tmp) / "out"
        for i in range(args.students):
            folder = subs / f"s{i:03d}" / "ch00_warmup"
            folder.mkdir(parents=True)
            nb = student_copy(release, solution, solved=(i % 2 == 0))
            nbformat.write(nb, str(folder / "warmup.ipynb"))
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submissions", str(subs),
                               "--out", str(out), "--jobs", str(args.jobs), "--no-progress"],
                              cwd=REPO, capture_output=True, text=True)
        total = time.monotonic() - start
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        with open(out / "grades.csv") as f:
            rows = list(csv.DictReader(f))
    per_nb = [float(r["seconds"]) for r in rows]
    print(f"notebooks graded:              {len(rows)} (jobs={args.jobs}, {args.students} students)")
    print(f"median seconds per notebook:   {statistics.median(per_nb):.1f} s (sandboxed papermill run)")
    print(f"batch wall time:               {total:.1f} s")
    print(f"throughput:                    {60 * len(rows) / total:.1f} notebooks per minute")
    print(f"statuses:                      {sorted({r['status'] for r in rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
