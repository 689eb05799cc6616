"""Benchmark the autograder: seconds per graded notebook (median) and notebooks per minute.

    python benchmarks/bench_grading.py [--students 8] [--jobs 2]
    python benchmarks/bench_grading.py --students 8 --dask-workers 1,2,4   # throughput on a Dask LocalCluster

Grades a class of warm-up submissions (half solved, half untouched) with
``python -m autograder grade --jobs N`` and reports: the median wall time of one notebook in its
sandbox (kernel start, papermill execution; from grades.csv), and the batch throughput in notebooks
per minute (everything included: release, nbgrader sanitize/autograde, feedback, gradebook).

With ``--dask-workers 1,2,...`` the same class is graded once per worker count on a Dask
``LocalCluster`` (``--scheduler local:N``, autograder/cluster.py; cluster start-up included) and
the throughput is reported as a ratio to one worker, with the machine it ran on.
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
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py: the script's folder is on sys.path)


def make_class(subs: Path, students: int) -> None:
    """``students`` warm-up submissions, half solved and half untouched."""
    release, solution = load_pair("ch00_warmup", "warmup", REPO)
    for i in range(students):
        folder = subs / f"s{i:03d}" / "ch00_warmup"
        folder.mkdir(parents=True)
        nbformat.write(student_copy(release, solution, solved=(i % 2 == 0)), str(folder / "warmup.ipynb"))


def grade(subs: Path, out: Path, *extra: str) -> tuple[float, list[dict]]:
    """Wall seconds of one ``python -m autograder grade`` and its grades.csv rows."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "--submissions", str(subs),
                           "--out", str(out), "--no-progress", *extra], cwd=REPO, capture_output=True, text=True)
    total = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    with open(out / "grades.csv") as f:
        return total, list(csv.DictReader(f))


def dask_scaling(students: int, workers: list[int]) -> int:
    """Throughput on a LocalCluster of each worker count, as ratios to the first (book: instructors' page)."""
    import os

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {students} warm-up notebooks per batch")
    print(f"{'workers':>8}{'batch s':>10}{'nb/min':>10}{'vs ' + str(workers[0]):>8}  statuses")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        subs = Path(tmp) / "submissions"
        make_class(subs, students)
        for n in workers:
            total, rows = grade(subs, Path(tmp) / f"out{n}", "--scheduler", f"local:{n}")
            rate = 60 * len(rows) / total
            base = base or rate
            print(f"{n:>8}{total:>10.1f}{rate:>10.2f}{rate / base:>8.2f}  {sorted({r['status'] for r in rows})}",
                  flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dask-workers", default=None, help="comma-separated worker counts, e.g. 1,2,4")
    args = parser.parse_args()
    if args.dask_workers:
        return dask_scaling(args.students, [int(n) for n in args.dask_workers.split(",")])
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
