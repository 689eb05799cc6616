"""Grade a batch of submissions: nbgrader autograde (with papermill in a sandbox), in parallel.

Layout. ``OUT`` is an nbgrader course folder: ``OUT/gradebook.db`` (nbgrader's SQLite gradebook:
``nbgrader export`` and the formgrader work on it), ``OUT/release/`` (generated from
``solutions/``), ``OUT/submitted/`` (copied from ``--submissions``), ``OUT/autograded/``,
``OUT/feedback/{student}/{assignment}/{notebook}.html`` and ``OUT/grades.csv``.

Parallelism. Each ``(student, assignment)`` is graded by a worker process running nbgrader's
``Autograde`` and ``GenerateFeedback``. Workers hold one file lock (``flock``) whenever they touch
the gradebook and release it only while the sandbox executes, so execution is parallel and
gradebook writes are serialized.

Cluster. With ``Batch.scheduler`` (``--scheduler tcp://HOST:PORT`` or ``local:N``) each submission is a
task on a Dask cluster instead, graded by the same ``grade_one`` in the worker's sandbox (``cluster.py``).

Restart. After a submission's grades and feedback are committed, the worker writes a marker
``OUT/.autograder/done/{student}/{assignment}.json`` (atomically) holding a digest of the submission
and of the source. A batch started again skips submissions whose marker matches and re-grades the
rest; nbgrader's gradebook updates in place, so nothing is lost or duplicated. ``grades.csv`` is
rewritten from the markers at the end of every batch.

Gradebook and records (``gradebook.py``). ``Batch.db_url`` puts the gradebook in PostgreSQL (SQLite
in ``OUT`` by default); the lock is then also a PostgreSQL advisory lock. ``Batch.late_policy``
sets deadlines, extensions and the late penalty. ``Batch.students`` (with ``force``) re-grades
some students only; the others' rows come from their markers, untouched.
"""
from __future__ import annotations

import csv
import ctypes
import fcntl
import hashlib
import html
import json
import os
import shutil
import signal
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from .env import ensure_venv_on_path
from .limits import Limits
from .release import REPO, assignments, generate

COURSE_ID = "diffcourse"
STATUSES = ("ok", "error", "timeout", "killed", "invalid", "missing", "flagged")
BASE_COLUMNS = ["student_id", "assignment_id", "notebook_id", "score", "max_score", "status", "notes", "seconds",
                "raw_score", "late_penalty", "hours_late"]
NOT_TESTS = {"tests"}   # the per-test breakdown {test: [score, max]}: grades_by_test.csv


@dataclass
class Batch:
    """One grading batch (what ``python -m autograder grade`` was asked to do)."""
    submissions: Path
    out: Path
    assignment: str | None = None
    jobs: int = 1
    limits: Limits = field(default_factory=Limits)
    parameters: dict = field(default_factory=lambda: {"GRADING": True, "DEVICE": "cpu", "SEED": 0})
    root: Path = REPO                       # holds solutions/{assignment}/
    progress: bool = True
    db_url: str | None = None               # nbgrader db_url; None: sqlite:///OUT/gradebook.db (gradebook.py)
    late_policy: dict | None = None         # gradebook.load_policy(TOML): deadlines, extensions, penalty
    students: list[str] | None = None       # grade only these students (the others' rows are kept)
    force: bool = False                     # re-grade even when a submission is unchanged
    scheduler: str | None = None            # a Dask scheduler (tcp://HOST:PORT or local:N): cluster.py


class FileLock:
    """An exclusive ``flock`` on a file, shared by all workers of a batch."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


# ----------------------------------------------------------------------------- nbgrader set-up

def nbgrader_config(out: Path, root: Path):
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, GetGrades, IgnorePattern,
                                        LimitOutput, SaveAutoGrades)
    from traitlets.config import Config

    from .execute import PapermillExecute
    from .feedback import HideHiddenTests
    from .gradebook import late_config, load_settings

    settings = load_settings(out)
    c = Config()
    c.CourseDirectory.root = str(out)
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.db_url = settings["db_url"]
    c.CourseDirectory.source_directory = str((root / "solutions").resolve())
    c.CourseDirectory.release_directory = "release"
    c.Autograde.autograde_preprocessors = [PapermillExecute, IgnorePattern, LimitOutput, SaveAutoGrades,
                                           AssignLatePenalties, CheckCellMetadata]
    c.OverwriteCells.add_missing_cells = True
    c.LimitOutput.max_lines = 1000
    c.LimitOutput.max_traceback = 100
    # feedback without the hidden tests' code (autograder/feedback.py); GetGrades reads the gradebook
    c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
    late_config(c, settings["policy"])
    return c


def _api(out: Path, root: Path):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    c = nbgrader_config(out, root)
    return NbGraderAPI(coursedir=CourseDirectory(config=c), config=c)


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:20]


def _files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()] if d.is_dir() else []


# ----------------------------------------------------------------------------- one submission (worker)

def _worker_init() -> None:
    """Workers die with the batch process (a killed batch leaves no grader running)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    ensure_venv_on_path()
    warnings.filterwarnings("ignore", message=".*not in session.*")   # nbgrader's SQLAlchemy noise


def _stub_feedback(out: Path, sid: str, aid: str, nb_id: str, status: str, notes: list[str]) -> None:
    path = out / "feedback" / sid / aid / f"{nb_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = html.escape("; ".join(notes))
    path.write_text(f"<html><body><h1>{html.escape(nb_id)}: {status}</h1>"
                    f"<p>Score 0: no gradable notebook <code>{html.escape(nb_id)}.ipynb</code> was found "
                    f"in your submission.</p><p>{text}</p></body></html>\n")


def grade_one(out: str, root: str, sid: str, aid: str, digest: str, limits: dict, parameters: dict) -> list[dict]:
    """Autograde one student's assignment and write its feedback; returns one row per notebook."""
    import nbformat
    from nbgrader.api import Gradebook, MissingEntry

    from . import execute
    from .gradebook import GradebookLock, extension, load_settings, test_breakdown
    from .tamper import normalize, tamper_flags

    out_p, root_p = Path(out), Path(root)
    settings = load_settings(out_p)
    db_url = settings["db_url"]
    lock = GradebookLock(out_p, db_url)
    execute.CONTEXT.update(limits=Limits(**limits), parameters=parameters, lock=lock,
                           jobs_dir=str(out_p / ".autograder" / "jobs"), runs={})
    sub_dir = out_p / "submitted" / sid / aid
    with lock:
        with Gradebook(db_url, COURSE_ID) as gb:
            expected = [nb.name for nb in gb.find_assignment(aid).notebooks]
            if settings["policy"]:   # the student's extension, before nbgrader computes the lateness
                gb.update_or_create_student(sid)
                gb.update_or_create_submission(aid, sid, extension=extension(settings["policy"], sid, aid))
        pre: dict[str, tuple[str, list[str]]] = {}
        checks: dict[str, tuple[list[str], list[str]]] = {}
        unexpected = sorted(p.name for p in sub_dir.glob("*.ipynb") if p.stem not in expected)
        for nb_id in expected:
            path = sub_dir / f"{nb_id}.ipynb"
            if not path.exists():
                extra = [f"unexpected notebook(s): {', '.join(unexpected)} (rename and re-grade)"] if unexpected else []
                pre[nb_id] = ("missing", [f"no {nb_id}.ipynb submitted"] + extra)
                continue
            try:
                nb = nbformat.read(str(path), as_version=4)
                nbformat.validate(nb)
            except Exception as exc:   # invalid JSON, not a notebook, bad schema
                path.rename(path.with_name(path.name + ".invalid"))
                pre[nb_id] = ("invalid", [f"unreadable notebook: {type(exc).__name__}: {str(exc)[:120]}"])
                continue
            release = nbformat.read(str(out_p / "release" / aid / f"{nb_id}.ipynb"), as_version=4)
            flags, notes = tamper_flags(nb, release)
            repaired = normalize(nb)
            if repaired or any(f.startswith("duplicated") for f in flags):
                nbformat.write(nb, str(path))   # nbgrader crashes on these; the duplicates just run
            checks[nb_id] = (sorted(set(flags + repaired)), notes)
        grader_error = None
        if checks:
            api = _api(out_p, root_p)
            result = api.autograde(aid, sid, force=True, create=True)
            if result["success"]:
                api.generate_feedback(aid, sid, force=True)
            else:
                grader_error = (result.get("error") or "").strip().splitlines()[-1:] or ["nbgrader failed"]
        with Gradebook(db_url, COURSE_ID) as gb:
            try:
                submission = gb.find_submission(aid, sid)
            except MissingEntry:
                gb.update_or_create_student(sid)
                submission = gb.update_or_create_submission(aid, sid)
            rows = []
            for snb in submission.notebooks:
                nb_id = snb.notebook.name
                if nb_id in pre or grader_error:
                    for grade in snb.grades:
                        grade.auto_score, grade.needs_manual_grade = 0, False
                    snb.late_submission_penalty = None
                    gb.db.commit()
                if nb_id in pre:
                    status, notes = pre[nb_id]
                    _stub_feedback(out_p, sid, aid, nb_id, status, notes)
                elif grader_error:
                    status, notes = "invalid", [f"nbgrader could not grade it: {grader_error[0][:150]}"]
                    _stub_feedback(out_p, sid, aid, nb_id, status, notes)
                else:
                    run = execute.CONTEXT["runs"].get((sid, aid, nb_id), {"status": "error", "notes": ["not executed"]})
                    flags, tamper_notes = checks[nb_id]
                    status = "flagged" if flags else run["status"]
                    notes = [f"flag: {f}" for f in flags] + ([f"run: {run['status']}"] if flags else []) \
                        + run["notes"] + tamper_notes
                penalty = float(snb.late_submission_penalty or 0.0)
                row = {"student_id": sid, "assignment_id": aid, "notebook_id": nb_id,
                       "score": round(float(snb.score) - penalty, 3), "max_score": round(float(snb.max_score), 3),
                       "status": status, "notes": " | ".join(notes)[:500],
                       "seconds": execute.CONTEXT["runs"].get((sid, aid, nb_id), {}).get("seconds", 0.0),
                       "raw_score": round(float(snb.score), 3), "late_penalty": round(penalty, 3),
                       "hours_late": round(submission.total_seconds_late / 3600, 2), "tests": test_breakdown(snb)}
                for grade in sorted(snb.grades, key=lambda g: g.cell.notebook.name + g.name):
                    if grade.cell.__class__.__name__ == "GradeCell":
                        row[grade.name] = round(float(grade.score), 3)
                rows.append(row)
        marker = out_p / ".autograder" / "done" / sid / f"{aid}.json"
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"digest": digest, "rows": rows}))
        os.replace(tmp, marker)
    return rows


# ----------------------------------------------------------------------------- the batch

def _tasks(batch: Batch, aids: list[str]) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """Submissions still to grade, and the rows of those already graded (by an earlier run)."""
    from .gradebook import policy_for

    out, subs = batch.out, batch.submissions
    students = sorted(p.name for p in subs.iterdir() if p.is_dir() and not p.name.startswith("."))
    todo, done_rows = [], []
    for sid in students:
        for aid in aids:
            src = subs / sid / aid
            if batch.students and sid not in batch.students:   # not asked for: keep its last rows as they are
                marker = out / ".autograder" / "done" / sid / f"{aid}.json"
                if marker.exists():
                    done_rows += json.loads(marker.read_text())["rows"]
                continue
            settings = json.dumps([batch.limits.as_dict(), batch.parameters, policy_for(batch.late_policy, sid, aid),
                                   batch.db_url], sort_keys=True)   # another gradebook: grade it again there
            digest = _digest(_files(src) + _files(batch.root / "solutions" / aid)) + "-" + \
                hashlib.sha256(settings.encode()).hexdigest()[:8]
            marker = out / ".autograder" / "done" / sid / f"{aid}.json"
            if marker.exists():
                try:
                    saved = json.loads(marker.read_text())
                except ValueError:
                    saved = {}
                if saved.get("digest") == digest and not batch.force:
                    done_rows += saved["rows"]
                    continue
            dest = out / "submitted" / sid / aid
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            for f in _files(src):
                target = dest / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
            todo.append((sid, aid, digest))
    return todo, done_rows


def write_csv(rows: list[dict], path: Path) -> None:
    tests = []
    for row in rows:
        tests += [k for k in row if k not in BASE_COLUMNS and k not in NOT_TESTS and k not in tests]
    rows = sorted(rows, key=lambda r: (r["student_id"], r["assignment_id"], r["notebook_id"]))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BASE_COLUMNS + tests, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def summary(rows: list[dict], seconds: float) -> str:
    lines = [f"{'status':<10}{'notebooks':>10}{'mean score':>12}", "-" * 32]
    for status in STATUSES:
        sel = [r for r in rows if r["status"] == status]
        if sel:
            mean = sum(r["score"] for r in sel) / len(sel)
            lines.append(f"{status:<10}{len(sel):>10}{mean:>12.2f}")
    lines.append("-" * 32)
    lines.append(f"{'total':<10}{len(rows):>10}   in {seconds:.1f} s")
    return "\n".join(lines)


def grade_batch(batch: Batch) -> list[dict]:
    """Grade every submission of the batch; returns the rows written to ``grades.csv``."""
    from tqdm.auto import tqdm

    from nbgrader.api import Gradebook

    from .gradebook import GradebookLock, apply_deadlines, save_settings, write_breakdown
    from .sandbox import bwrap_path

    ensure_venv_on_path()
    bwrap_path()
    start = time.monotonic()
    out = batch.out.resolve()
    batch.out = out
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / ".autograder" / "jobs", ignore_errors=True)   # scratch left by a killed batch
    (out / ".autograder" / "jobs").mkdir(parents=True, exist_ok=True)
    db_url = save_settings(out, batch.db_url, batch.late_policy)["db_url"]
    available = assignments(batch.root)
    if batch.assignment:
        if batch.assignment not in available:
            raise SystemExit(f"unknown assignment {batch.assignment!r}: solutions/ has {available}")
        aids = [batch.assignment]
    else:
        aids = [a for a in available if any((s / a).is_dir() for s in batch.submissions.iterdir())]
    with GradebookLock(out, db_url):
        generate(aids, root=batch.root, release_dir=out / "release", course_dir=out, use_db=True, db_url=db_url)
        with Gradebook(db_url, COURSE_ID) as gb:
            apply_deadlines(gb, batch.late_policy, aids)
    todo, rows = _tasks(batch, aids)
    if batch.scheduler:
        from .cluster import grade_todo_on_dask
        rows += grade_todo_on_dask(batch.scheduler, out, Path(batch.root).resolve(), todo, batch.limits.as_dict(),
                                   batch.parameters, progress=batch.progress)
        todo = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, batch.jobs), mp_context=ctx, initializer=_worker_init) as pool:
        futures = {pool.submit(grade_one, str(out), str(batch.root), sid, aid, digest,
                               batch.limits.as_dict(), batch.parameters): (sid, aid)
                   for sid, aid, digest in todo}
        bar = tqdm(as_completed(futures), total=len(futures), desc="grading", unit="submission",
                   disable=not batch.progress)
        for fut in bar:
            sid, aid = futures[fut]
            try:
                rows += fut.result()
            except Exception as exc:   # a grader bug: report it, keep the batch going
                rows.append({"student_id": sid, "assignment_id": aid, "notebook_id": "?", "score": 0.0,
                             "max_score": 0.0, "status": "error", "notes": f"grader failure: {exc!r}"[:300],
                             "seconds": 0.0})
    write_csv(rows, out / "grades.csv")
    write_breakdown(rows, out / "grades_by_test.csv")
    print(summary(rows, time.monotonic() - start))
    return rows
