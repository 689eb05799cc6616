"""Command line: ``python -m autograder {grade, release, check-sync, demo}``.

    python -m autograder grade --submissions DIR [--assignment A] [--jobs N] [--out OUT]
                               [--scheduler tcp://HOST:PORT | --scheduler local:N]   # on Dask (cluster.py)
                               [--db-url postgresql://USER@HOST:PORT/DB] [--late-policy late.toml]
                               [--student SID ... [--force]]       # gradebook.py
    python -m autograder release [A ...]      # notebooks/ from solutions/ (nbgrader generate_assignment)
    python -m autograder check-sync           # exit 1 if notebooks/ is out of sync with solutions/
    python -m autograder demo [--out grades/demo]   # build a demo class and grade it (make grade)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .limits import Limits


def _add_limits(p: argparse.ArgumentParser) -> None:
    d = Limits()
    p.add_argument("--cell-timeout", type=int, default=d.cell_timeout, help="seconds per cell (default %(default)s)")
    p.add_argument("--notebook-timeout", type=int, default=d.notebook_timeout,
                   help="seconds per notebook, kernel start included (default %(default)s)")
    p.add_argument("--memory-gib", type=float, default=d.memory_bytes / 2 ** 30, help="GiB per process (default %(default)s)")
    p.add_argument("--device", default="cpu", help="DEVICE parameter injected into the notebooks")
    p.add_argument("--seed", type=int, default=0, help="SEED parameter injected into the notebooks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _limits(args) -> Limits:
    return Limits(cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout,
                  memory_bytes=int(args.memory_gib * 2 ** 30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade a folder of submissions {student}/{assignment}/{notebook}.ipynb")
    g.add_argument("--submissions", type=Path, required=True)
    g.add_argument("--assignment", default=None)
    g.add_argument("--jobs", type=int, default=1)
    g.add_argument("--out", type=Path, default=Path("grading"))
    g.add_argument("--scheduler", default=None,
                   help="grade on a Dask cluster: tcp://HOST:PORT (workers need OUT and the course at the same "
                        "paths) or local:N (N local worker processes); default: a local process pool (--jobs)")
    g.add_argument("--db-url", default=None,
                   help="nbgrader gradebook URL, e.g. postgresql://grader@db.example:5432/gradebook "
                        "(default: sqlite:///OUT/gradebook.db)")
    g.add_argument("--late-policy", type=Path, default=None,
                   help="TOML file: deadlines, per-student extensions, late penalty (see the instructors' page)")
    g.add_argument("--student", action="append", default=None,
                   help="grade only this student (repeat for several); the others' rows are kept as they are")
    g.add_argument("--force", action="store_true", help="re-grade even the submissions that did not change")
    g.add_argument("--course-root", type=Path, default=None,
                   help="the folder holding solutions/{assignment}/ (default: this repository)")
    _add_limits(g)
    r = sub.add_parser("release", help="regenerate notebooks/ from solutions/")
    r.add_argument("assignments", nargs="*")
    sub.add_parser("check-sync", help="fail if notebooks/ is out of sync with solutions/")
    d = sub.add_parser("demo", help="build a demo class and grade it")
    d.add_argument("--out", type=Path, default=Path("grades/demo"))
    d.add_argument("--jobs", type=int, default=2)
    _add_limits(d)
    d.set_defaults(cell_timeout=10)   # the demo's looping student should not take minutes
    args = parser.parse_args(argv)

    if args.command == "release":
        from .release import assignments, generate
        ids = args.assignments or assignments()
        generate(ids)
        print(f"released {', '.join(ids)} into notebooks/")
        return 0
    if args.command == "check-sync":
        from .release import out_of_sync
        problems = out_of_sync()
        for p in problems:
            print(p)
        print("notebooks/ is in sync with solutions/" if not problems else
              "run `python -m autograder release` (never edit notebooks/ by hand)")
        return 1 if problems else 0

    from .grade import Batch, grade_batch
    from .gradebook import load_policy, load_settings, shown
    params = {"GRADING": True, "DEVICE": args.device, "SEED": args.seed}
    if args.command == "demo":
        from .demo import build_demo_class
        subs = build_demo_class(args.out / "submissions")
        batch = Batch(submissions=subs, out=args.out / "graded", jobs=args.jobs, limits=_limits(args),
                      parameters=params, progress=not args.no_progress)
    else:
        if not args.submissions.is_dir():
            parser.error(f"--submissions {args.submissions} is not a folder")
        batch = Batch(submissions=args.submissions, out=args.out, assignment=args.assignment, jobs=args.jobs,
                      limits=_limits(args), parameters=params, progress=not args.no_progress,
                      scheduler=args.scheduler, db_url=args.db_url, students=args.student, force=args.force)
        unknown = [s for s in args.student or [] if not (args.submissions / s).is_dir()]
        if unknown:
            parser.error(f"--student {', '.join(unknown)}: no such folder in {args.submissions}")
        if args.course_root is not None:
            batch.root = args.course_root.resolve()
        try:
            batch.late_policy = load_policy(args.late_policy)
        except (OSError, ValueError) as exc:
            parser.error(f"--late-policy: {exc}")
    grade_batch(batch)
    print(f"wrote {batch.out / 'grades.csv'}, {batch.out / 'grades_by_test.csv'}, {batch.out / 'feedback'}/, "
          f"gradebook {shown(load_settings(batch.out)['db_url'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
