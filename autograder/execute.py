"""nbgrader's execute step, replaced: run the sanitized notebook with papermill in the sandbox.

``PapermillExecute`` takes the place of nbgrader's ``Execute`` in ``Autograde.autograde_preprocessors``.
It injects the grading parameters (``GRADING = True``, the device, the seed) into the notebook's
``parameters`` cell, runs it in a fresh sandbox (``sandbox.py``) and then makes the outcome safe
to score with nbgrader's rules:

* a test cell that did not run (kernel died, time limit, killed) gets an error output, so it
  scores zero: nbgrader would otherwise give full credit to a test cell with no output;
* warnings and other stderr output in a test cell do not cost points (nbgrader scores any stderr
  as a failure); they are kept, as stdout, in the feedback. Only exceptions fail a test;
* papermill's "An Exception was encountered" banner cells are removed.

The gradebook lock held by the worker is released while the sandbox runs, so several
submissions execute in parallel while gradebook writes stay serialized.
"""
from __future__ import annotations

import copy
import shutil
import uuid
from pathlib import Path
from typing import Any

from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader.preprocessors import NbGraderPreprocessor

from .limits import Limits
from .sandbox import run_notebook

# Set by the worker (grade.py) before it calls nbgrader: limits, parameters, jobs dir, lock, runs.
CONTEXT: dict[str, Any] = {}

NOT_RUN = "TestNotRun"
TIMEOUT_ENDINGS = ("wall_timeout", "CellTimeoutError", "KernelIgnoredInterrupt")
KILL_SIGNS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "BlockingIOError",
              "Resource temporarily unavailable")


def is_test_cell(cell) -> bool:
    nbg = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and nbg.get("grade", False) and not nbg.get("solution", False)


def ensure_parameters_tag(nb: NotebookNode) -> None:
    """The locked ``parameters`` cell keeps papermill's tag even if a student removed it."""
    for cell in nb.cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "parameters":
            tags = cell.metadata.setdefault("tags", [])
            if "parameters" not in tags:
                tags.append("parameters")


def not_run_output(reason: str) -> NotebookNode:
    return from_dict({"output_type": "error", "ename": NOT_RUN, "evalue": reason,
                      "traceback": [f"{NOT_RUN}: {reason}"]})


def finalize(executed: NotebookNode | None, sanitized: NotebookNode, ended: str) -> NotebookNode:
    """Drop papermill banners, zero test cells that did not run, stderr -> stdout in test cells."""
    nb = copy.deepcopy(executed if executed is not None else sanitized)
    nb.cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    reason = {"wall_timeout": "the notebook hit its time limit before this test ran"}.get(
        ended, f"the notebook stopped ({ended}) before this test ran")
    for cell in nb.cells:
        if not is_test_cell(cell):
            continue
        status = cell.get("metadata", {}).get("papermill", {}).get("status")
        if executed is None or status != "completed" or cell.get("execution_count") is None:
            cell.outputs = [not_run_output(reason)]
            continue
        for out in cell.outputs:
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                out["name"] = "stdout"
    return nb


def run_status(nb: NotebookNode, ended: str) -> tuple[str, list[str]]:
    """ok / error / timeout / killed for an executed notebook, with short notes."""
    errors = [(i, o) for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error" and o.get("ename") != NOT_RUN]
    def where(i):
        return nb.cells[i].get("metadata", {}).get("nbgrader", {}).get("grade_id") or f"cell {i}"
    notes = [f"{where(i)}: {o.get('ename')}: {str(o.get('evalue'))[:80]}" for i, o in errors[:3]]
    if ended != "completed":
        notes.insert(0, f"run ended: {ended}")
    text = " ".join(f"{o.get('ename')} {o.get('evalue')}" for _, o in errors)
    if ended in TIMEOUT_ENDINGS or any(o.get("ename") == "CellTimeoutError" for _, o in errors):
        return "timeout", notes
    if ended != "completed" or any(sign in text for sign in KILL_SIGNS):
        return "killed", notes
    return ("error" if errors else "ok"), notes


class PapermillExecute(NbGraderPreprocessor):
    """Replaces nbgrader's Execute: papermill + sandbox (see module docstring)."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        info = resources["nbgrader"]
        key = (info["student"], info["assignment"], info["notebook"])
        limits: Limits = CONTEXT["limits"]
        sanitized = copy.deepcopy(nb)
        ensure_parameters_tag(sanitized)
        job = Path(CONTEXT["jobs_dir"]) / f"{uuid.uuid4().hex[:12]}"
        lock = CONTEXT.get("lock")
        if lock is not None:
            lock.release()
        try:
            result = run_notebook(sanitized, job, CONTEXT["parameters"], limits)
        finally:
            if lock is not None:
                lock.acquire()
            shutil.rmtree(job, ignore_errors=True)
        graded = finalize(result.nb, sanitized, result.ended)
        status, notes = run_status(graded, result.ended)
        CONTEXT.setdefault("runs", {})[key] = {"status": status, "notes": notes,
                                               "seconds": round(result.seconds, 2), "error": result.error}
        return graded, resources
