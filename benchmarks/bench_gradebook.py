"""Grading time with the gradebook in SQLite and in PostgreSQL (book: instructors' page, "The gradebook
in PostgreSQL").

    python benchmarks/bench_gradebook.py --students 8 --jobs 2 [--repeats 1]

Grades a class of N students of the tiny course (tests/tiny_course.py: one notebook, no imports, so
the gradebook's share of the time is as large as it gets) into a fresh SQLite gradebook and into a
fresh database on a throw-away PostgreSQL server (tests/pg_server.py), alternately, and prints the
wall time of each batch and the ratio PostgreSQL / SQLite.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pg_server import PostgresServer          # noqa: E402
from tiny_course import write_class, write_course   # noqa: E402


def grade(subs: Path, out: Path, root: Path, jobs: int, *extra: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "autograder", "grade", "--submissions", str(subs), "--out", str(out),
                    "--course-root", str(root), "--jobs", str(jobs), "--no-progress", *extra],
                   cwd=REPO, check=True, capture_output=True, text=True)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gradebook-"))
    try:
        root = write_course(tmp / "root")
        base = write_class(root, tmp / "base", ["ada", "cat"])
        subs = tmp / "subs"
        for k in range(args.students):   # alternate a full-marks and a partial-credit notebook
            shutil.copytree(base / ("ada" if k % 2 == 0 else "cat"), subs / f"s{k:03d}")
        times = {"sqlite": [], "postgresql": []}
        with PostgresServer() as pg:
            for r in range(args.repeats):
                times["sqlite"].append(grade(subs, tmp / f"out_sqlite{r}", root, args.jobs))
                url = pg.create_database(f"bench{r}")
                times["postgresql"].append(grade(subs, tmp / f"out_pg{r}", root, args.jobs, "--db-url", url))
        best = {k: min(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"{k:<11} {args.students} submissions, --jobs {args.jobs}: best {best[k]:.1f} s "
                  f"({best[k] / args.students:.2f} s per submission); runs {[round(t, 1) for t in v]}")
        print(f"PostgreSQL / SQLite: {best['postgresql'] / best['sqlite']:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
