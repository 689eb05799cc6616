"""Where the grades live, and the records an instructor keeps per student (book: "Grading the course").

**The database.** nbgrader's gradebook is reached through a SQLAlchemy URL (nbgrader's ``db_url``).
The default is ``sqlite:///OUT/gradebook.db``. ``--db-url postgresql://USER@HOST:PORT/DB`` puts
it in PostgreSQL (driver: ``psycopg``), so graders on several machines can share one gradebook.
The URL (and the late policy) of a batch is saved in ``OUT/.autograder/gradebook.json``, where
every worker of the batch reads it.

**The lock.** Workers write to the gradebook one at a time (:class:`GradebookLock`): an ``flock``
on ``OUT/.autograder/gradebook.lock`` and, for PostgreSQL, a session-level advisory lock
(``pg_advisory_lock``) on a key derived from the course id. The advisory lock also serializes
graders that share the database but not the folder (two machines, two batches). A grader killed
with ``kill -9`` loses its connection, and the server rolls back its open transaction and
releases the lock: nothing half-written stays in the gradebook.

**Late submissions.** A late policy is a TOML file::

    [penalty]
    method = "per_day"    # "none", "zero" (a late notebook scores 0) or "per_day"
    per_day = 0.10        # per_day: this fraction of the notebook's score per started day late
    max = 0.50            # ... at most this fraction
    grace_minutes = 15    # submissions this close to the deadline are on time

    [deadlines]
    ch00_warmup = "2026-12-01 17:00:00 UTC"

    [extensions.ch00_warmup]   # hours, per student
    ben = 48

The deadline goes into nbgrader's gradebook (``Assignment.duedate``), each extension into the
student's submission (``SubmittedAssignment.extension``), and the submission time is the
``timestamp.txt`` that ``nbgrader collect`` leaves in each submission folder. nbgrader computes
how late the submission is (deadline + extension); :class:`LatePolicy`, nbgrader's late-submission
plugin, turns that into a penalty in points, stored per notebook (``late_submission_penalty``).
"""
from __future__ import annotations

import csv
import datetime
import fcntl
import hashlib
import json
import math
import os
import tomllib
from pathlib import Path

from nbgrader.plugins import LateSubmissionPlugin
from traitlets import Enum, Float

COURSE_ID = "diffcourse"
SETTINGS = Path(".autograder") / "gradebook.json"
BREAKDOWN_COLUMNS = ["student_id", "assignment_id", "notebook_id", "test", "score", "max_score", "credit"]


# ----------------------------------------------------------------------------- the database

def default_db_url(out: Path) -> str:
    return f"sqlite:///{Path(out) / 'gradebook.db'}"


def is_postgres(db_url: str) -> bool:
    from sqlalchemy.engine import make_url
    return make_url(db_url).get_backend_name() == "postgresql"


def shown(db_url: str) -> str:
    """The URL with its password hidden (for messages)."""
    from sqlalchemy.engine import make_url
    return make_url(db_url).render_as_string(hide_password=True)


def save_settings(out: Path, db_url: str | None, policy: dict | None) -> dict:
    """Write the batch's database URL and late policy where its workers read them."""
    settings = {"db_url": db_url or default_db_url(out), "policy": policy}
    path = Path(out) / SETTINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # the URL may hold a password
    with os.fdopen(fd, "w") as f:
        json.dump(settings, f)
    os.replace(tmp, path)
    return settings


def load_settings(out: Path) -> dict:
    path = Path(out) / SETTINGS
    if path.exists():
        return json.loads(path.read_text())
    return {"db_url": default_db_url(out), "policy": None}


_LOCK_CONNECTIONS: dict = {}   # db_url -> the connection that holds this process's advisory locks
_LOCK_FDS: dict[str, int] = {}   # lock file -> this process's descriptor for it


def _lock_key(course_id: str) -> int:
    """A signed 64-bit advisory-lock key, the same on every machine for one course."""
    return int.from_bytes(hashlib.sha256(f"nbgrader-gradebook:{course_id}".encode()).digest()[:8], "big",
                          signed=True)


class GradebookLock:
    """Exclusive access to the gradebook: ``flock`` on a file of OUT, plus a PostgreSQL advisory lock.

    Same interface as ``grade.FileLock`` (``acquire``, ``release``, ``with``). The advisory lock is
    held by one dedicated connection (autocommit) per process and database, opened on first use and
    kept for the process's life (a worker grades many submissions: one connection, not one each).
    """

    def __init__(self, out: Path, db_url: str, course_id: str = COURSE_ID):
        path = Path(out).resolve() / ".autograder" / "gradebook.lock"
        if str(path) not in _LOCK_FDS:   # one descriptor per process and file: a worker grades thousands
            path.parent.mkdir(parents=True, exist_ok=True)
            _LOCK_FDS[str(path)] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.fd = _LOCK_FDS[str(path)]
        self.db_url, self.key = db_url, _lock_key(course_id)
        self.postgres = is_postgres(db_url)

    def _connection(self, fresh: bool = False):
        conn = _LOCK_CONNECTIONS.get(self.db_url)
        if conn is None or fresh:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool
            if conn is not None:
                conn.invalidate()
            engine = create_engine(self.db_url, poolclass=NullPool)
            conn = _LOCK_CONNECTIONS[self.db_url] = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return conn

    def acquire(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        if self.postgres:
            from sqlalchemy import text
            from sqlalchemy.exc import OperationalError
            try:
                try:
                    self._connection().execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
                except OperationalError:   # the kept connection was lost (server restart): once more, anew
                    self._connection(fresh=True).execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            except Exception:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                raise

    def release(self) -> None:
        try:
            if self.postgres and self.db_url in _LOCK_CONNECTIONS:
                from sqlalchemy import text
                _LOCK_CONNECTIONS[self.db_url].execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


# ----------------------------------------------------------------------------- the late policy

def load_policy(path: Path | None) -> dict | None:
    """Read and check a late-policy TOML file (see the module docstring); None without a file."""
    if path is None:
        return None
    from nbgrader.utils import parse_utc

    policy = tomllib.loads(Path(path).read_text())
    unknown = set(policy) - {"penalty", "deadlines", "extensions"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; expected penalty, deadlines, extensions")
    penalty = {"method": "none", "per_day": 0.0, "max": 1.0, "grace_minutes": 0.0, **policy.get("penalty", {})}
    if penalty["method"] not in ("none", "zero", "per_day"):
        raise ValueError(f"{path}: penalty.method must be none, zero or per_day, not {penalty['method']!r}")
    if not 0 <= float(penalty["max"]) <= 1 or float(penalty["per_day"]) < 0:
        raise ValueError(f"{path}: penalty.per_day must be >= 0 and penalty.max in [0, 1]")
    deadlines = {aid: parse_utc(str(ts)).isoformat() for aid, ts in policy.get("deadlines", {}).items()}
    extensions = {aid: {sid: float(h) for sid, h in per.items()} for aid, per in policy.get("extensions", {}).items()}
    return {"penalty": penalty, "deadlines": deadlines, "extensions": extensions}


def policy_for(policy: dict | None, sid: str, aid: str) -> dict | None:
    """The part of the policy that one student's assignment depends on (it goes into its digest)."""
    if not policy:
        return None
    return {"penalty": policy["penalty"], "deadline": policy["deadlines"].get(aid),
            "extension_hours": policy["extensions"].get(aid, {}).get(sid)}


def extension(policy: dict | None, sid: str, aid: str) -> datetime.timedelta | None:
    hours = (policy or {}).get("extensions", {}).get(aid, {}).get(sid)
    return datetime.timedelta(hours=hours) if hours else None


def apply_deadlines(gb, policy: dict | None, aids: list[str]) -> None:
    """Write each assignment's deadline (or none) into the gradebook; nothing without a policy."""
    if not policy:
        return
    for aid in aids:
        due = policy["deadlines"].get(aid)
        gb.update_or_create_assignment(aid, duedate=datetime.datetime.fromisoformat(due) if due else None)


def late_config(c, policy: dict | None) -> None:
    """Configure nbgrader's AssignLatePenalties to use :class:`LatePolicy` with the policy's numbers."""
    if not policy:
        return
    p = policy["penalty"]
    c.AssignLatePenalties.plugin_class = LatePolicy
    c.LatePolicy.method = p["method"]
    c.LatePolicy.per_day = float(p["per_day"])
    c.LatePolicy.max_fraction = float(p["max"])
    c.LatePolicy.grace_minutes = float(p["grace_minutes"])


class LatePolicy(LateSubmissionPlugin):
    """nbgrader late-submission plugin: none, zero, or a fraction of the score per started day late."""

    method = Enum(("none", "zero", "per_day"), default_value="none").tag(config=True)
    per_day = Float(0.0, help="fraction of the notebook's score lost per started day late").tag(config=True)
    max_fraction = Float(1.0, help="the most the penalty can take, as a fraction of the score").tag(config=True)
    grace_minutes = Float(0.0, help="no penalty this many minutes past the deadline").tag(config=True)

    def late_submission_penalty(self, student_id: str, score: float, total_seconds_late: float) -> float | None:
        if self.method == "none" or total_seconds_late <= self.grace_minutes * 60:
            return None
        if self.method == "zero":
            return score
        return late_penalty(score, total_seconds_late, self.per_day, self.max_fraction)


def late_penalty(score: float, seconds_late: float, per_day: float, max_fraction: float) -> float:
    """Points lost: ``score * min(max_fraction, per_day * ceil(days late))``."""
    days = math.ceil(seconds_late / 86400)
    return round(score * min(max_fraction, per_day * days), 6)


# ----------------------------------------------------------------------------- per-test breakdown

def test_breakdown(snb) -> dict[str, list[float]]:
    """``{test grade id: [points earned, points possible]}`` for one submitted notebook (autograded tests)."""
    tests = {}
    for grade in snb.grades:
        if grade.cell.__class__.__name__ == "GradeCell":
            tests[grade.name] = [round(float(grade.score), 3), round(float(grade.max_score), 3)]
    return dict(sorted(tests.items()))


def write_breakdown(rows: list[dict], path: Path) -> None:
    """One line per student x notebook x test: points earned and possible, credit full / partial / none."""
    lines = []
    for row in rows:
        for test, (score, max_score) in (row.get("tests") or {}).items():
            credit = "full" if score >= max_score else ("none" if score <= 0 else "partial")
            lines.append({"student_id": row["student_id"], "assignment_id": row["assignment_id"],
                          "notebook_id": row["notebook_id"], "test": test, "score": score,
                          "max_score": max_score, "credit": credit})
    lines.sort(key=lambda r: (r["student_id"], r["assignment_id"], r["notebook_id"], r["test"]))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BREAKDOWN_COLUMNS)
        writer.writeheader()
        writer.writerows(lines)
