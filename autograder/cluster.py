"""Grading on a Dask cluster: ``python -m autograder grade ... --scheduler tcp://HOST:PORT``.

Without ``--scheduler`` the batch runs on a local process pool (``--jobs N``, :mod:`autograder.grade`).
With it, each ``(student, assignment)`` becomes one Dask task that runs :func:`autograder.grade.grade_one`
on a worker, so the notebook executes in the *worker's* bubblewrap sandbox (same limits, same runner):

* ``--scheduler tcp://HOST:PORT``: an existing cluster (``dask scheduler`` and ``dask worker`` on
  any machines, or a cluster made by a deployer such as dask-jobqueue or dask-kubernetes);
* ``--scheduler local:N``: a ``LocalCluster`` of N worker processes (one thread each) on this
  machine's loopback, started for the batch and closed after it.

What the workers need. The same course checkout and virtual environment as the client, at the
same paths (each task is a function call with paths as arguments), bubblewrap, and ``OUT`` on a
file system they all see at the same path (an NFS home or an HPC scratch folder): the worker reads
the copied submission from ``OUT/submitted`` and writes ``OUT/autograded``, the feedback, its
done-marker and the gradebook. Gradebook writes are serialized by the same lock as on one machine
(``gradebook.GradebookLock``: a ``flock``, which Linux maps to an NFS lock, plus a PostgreSQL advisory
lock when the gradebook is in PostgreSQL, ``--db-url``: the better choice for a cluster). :func:`check_workers` asks every worker for this before
the batch starts, and refuses a cluster that cannot see it. A worker runs one submission at a time
(a process-wide lock): the grading context of :mod:`autograder.execute` is per process.

Lost workers. A worker that dies mid-task (killed, out of memory, its machine gone) loses only its
task: the scheduler hands it to another worker (up to ``allowed_failures`` deaths per task, Dask's
default 3), which re-grades the submission from the start. nbgrader's gradebook updates in place,
the done-marker is written atomically at the very end, and the client keeps one result per
task, so a re-run neither loses nor duplicates a grade.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

_ONE_AT_A_TIME = threading.Lock()   # per worker process: execute.CONTEXT is process-global


def grade_on_worker(out: str, root: str, sid: str, aid: str, digest: str, limits: dict,
                    parameters: dict) -> list[dict]:
    """One submission, graded on a Dask worker (the task body): :func:`autograder.grade.grade_one`."""
    from .env import ensure_venv_on_path
    from .grade import grade_one

    for path in (out, root):
        if not Path(path).is_dir():
            raise RuntimeError(f"worker {os.uname().nodename} cannot see {path}: OUT and the course folder "
                               f"must be on a file system every worker mounts at the same path")
    with _ONE_AT_A_TIME:
        ensure_venv_on_path()
        warnings.filterwarnings("ignore", message=".*not in session.*")   # nbgrader's SQLAlchemy noise
        return grade_one(out, root, sid, aid, digest, limits, parameters)


def _worker_facts(out: str, root: str) -> dict:
    import shutil
    import sys

    return {"host": os.uname().nodename, "pid": os.getpid(), "python": sys.executable,
            "sees_out": Path(out).is_dir(), "sees_root": (Path(root) / "solutions").is_dir(),
            "bwrap": shutil.which("bwrap") is not None}


def check_workers(client, out: Path, root: Path) -> dict:
    """Ask every worker whether it can grade (sees OUT and the course, has bwrap); raise if not."""
    facts = client.run(_worker_facts, str(out), str(root))
    bad = {addr: f for addr, f in facts.items() if not (f["sees_out"] and f["sees_root"] and f["bwrap"])}
    if bad:
        lines = [f"  {addr} on {f['host']}: sees OUT={f['sees_out']}, sees the course={f['sees_root']}, "
                 f"bwrap={f['bwrap']}" for addr, f in bad.items()]
        raise SystemExit("these Dask workers cannot grade this batch (see autograder/cluster.py):\n"
                         + "\n".join(lines))
    return facts


def connect(scheduler: str):
    """(client, cluster or None) for ``tcp://HOST:PORT`` or ``local:N``."""
    from distributed import Client, LocalCluster

    if scheduler.startswith("local:") or scheduler == "local":
        n = int(scheduler.partition(":")[2] or os.cpu_count() or 1)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
        return Client(cluster), cluster
    return Client(scheduler, timeout="30s"), None


def grade_todo_on_dask(scheduler: str, out: Path, root: Path, todo: list[tuple[str, str, str]], limits: dict,
                       parameters: dict, progress: bool = True) -> list[dict]:
    """Grade every ``(sid, aid, digest)`` of ``todo`` on the cluster; returns the rows (one task each)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    client, cluster = connect(scheduler)
    try:
        if cluster is None and not client.scheduler_info().get("workers"):
            client.wait_for_workers(1, timeout=60)
        facts = check_workers(client, out, root)
        hosts = sorted({f["host"] for f in facts.values()})
        print(f"Dask: {len(facts)} worker(s) on {', '.join(hosts)}; dashboard: {client.dashboard_link}", flush=True)
        futures = {client.submit(grade_on_worker, str(out), str(root), sid, aid, digest, limits, parameters,
                                 key=f"grade-{sid}-{aid}-{digest}", pure=False): (sid, aid)
                   for sid, aid, digest in todo}
        rows: list[dict] = []
        bar = tqdm(as_completed(futures), total=len(futures), desc="grading (dask)", unit="submission",
                   disable=not progress)
        for fut in bar:
            sid, aid = futures[fut]
            try:
                rows += fut.result()
            except Exception as exc:   # a grader bug, or a task whose workers kept dying (KilledWorker)
                rows.append({"student_id": sid, "assignment_id": aid, "notebook_id": "?", "score": 0.0,
                             "max_score": 0.0, "status": "error", "notes": f"grader failure: {exc!r}"[:300],
                             "seconds": 0.0})
        return rows
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
