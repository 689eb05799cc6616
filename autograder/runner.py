"""Runs ONE sanitized notebook with papermill, inside the sandbox (started by ``sandbox.py``).

This file is bind-mounted read-only into the sandbox and run by the course's Python as
``python -I /opt/autograder/runner.py /grader/config.json``. It imports nothing from the course
(the ``autograder`` package, which holds the solutions' builder, is not visible in the sandbox).

What it does, in order:

1. as root inside the sandbox: set the resource limits (memory, CPU time, processes, file size,
   no core dumps) as *hard* limits, then drop to an unprivileged uid and ``PR_SET_NO_NEW_PRIVS``,
   so student code can neither raise the limits nor regain privileges;
2. run the notebook with papermill, injecting the grading parameters into its ``parameters`` cell,
   with an nbclient that continues past errors (``allow_errors``), interrupts a cell that runs
   past the cell time limit, kills a kernel that ignores the interrupt, and caps the size of the
   outputs it keeps;
3. save the executed notebook after every cell (so a kill still leaves the cells that ran) and a
   small ``info.json`` saying how the run ended.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
import time
import traceback
from queue import Empty

TRUNCATION_NOTE = "\n[autograder: output truncated: this cell printed more than {limit} bytes or {lines} lines]\n"


def _set_limits(cfg: dict) -> None:
    """Hard resource limits for this process and everything it starts."""
    limits = [
        (resource.RLIMIT_AS, cfg["memory_bytes"]),
        (resource.RLIMIT_CPU, cfg["cpu_seconds"]),
        (resource.RLIMIT_NPROC, cfg["max_processes"]),
        (resource.RLIMIT_FSIZE, cfg["max_file_bytes"]),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 1024),
    ]
    for which, value in limits:
        resource.setrlimit(which, (value, value))


def _drop_privileges(uid: int) -> None:
    """Become an unprivileged uid with no capabilities; forbid regaining privileges."""
    if os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    PR_SET_NO_NEW_PRIVS = 38
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _make_engine(cfg: dict):
    """A papermill engine whose nbclient continues past errors and caps outputs."""
    from nbclient.exceptions import DeadKernelError
    from nbclient.util import ensure_async, run_sync
    from nbformat import from_dict
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine

    cell_limit = cfg["max_output_bytes_per_cell"]
    line_limit = cfg["max_output_lines_per_cell"]
    image_limit = cfg["max_image_bytes"]

    class KernelIgnoredInterrupt(DeadKernelError):
        """Raised (and the kernel killed) when a kernel stays busy after a timeout's interrupt."""

    class GradingClient(PapermillNotebookClient):
        """nbclient with output caps and a kernel health check after a timeout."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._bytes_per_cell: dict[int, int] = {}
            self._lines_per_cell: dict[int, int] = {}
            self._truncated: set[int] = set()
            self._timed_out = False
            self._timed_out_cell = None

        def output(self, outs, msg, display_id, cell_index):
            content = msg.get("content", {})
            size = len(json.dumps(content.get("data", content.get("text", "")), default=str))
            if msg["msg_type"] in ("display_data", "execute_result"):
                data = content.get("data", {})
                big = [k for k, v in data.items() if k.startswith("image/") and len(str(v)) > image_limit]
                if big:
                    msg = {**msg, "content": {**content, "metadata": {}, "data": {
                        "text/plain": f"[autograder: image of {len(str(data[big[0]]))} bytes "
                                      f"removed (limit {image_limit})]"}}}
                    size = 100
            used = self._bytes_per_cell.get(cell_index, 0)
            lines = self._lines_per_cell.get(cell_index, 0) + str(content.get("text", "")).count("\n")
            if used + size > cell_limit or lines > line_limit:
                if cell_index not in self._truncated:
                    self._truncated.add(cell_index)
                    note = {**msg, "msg_type": "stream", "content": {
                        "name": "stderr", "text": TRUNCATION_NOTE.format(limit=cell_limit, lines=line_limit)}}
                    return super().output(outs, note, None, cell_index)
                return None
            self._bytes_per_cell[cell_index] = used + size
            self._lines_per_cell[cell_index] = lines
            return super().output(outs, msg, display_id, cell_index)

        async def _async_handle_timeout(self, timeout, cell=None):
            self._timed_out = True
            self._timed_out_cell = cell
            return await super()._async_handle_timeout(timeout, cell)

        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if self._timed_out:
                await self._check_responsive()
            self._timed_out_cell = None
            result = await super().async_execute_cell(cell, cell_index, execution_count, store_history)
            if self._timed_out_cell is cell:   # say so in the cell: the kernel only reports KeyboardInterrupt
                limit = self.timeout
                cell.outputs.insert(0, from_dict({
                    "output_type": "error", "ename": "CellTimeoutError",
                    "evalue": f"this cell ran longer than {limit} s and was interrupted",
                    "traceback": [f"CellTimeoutError: this cell ran longer than {limit} s and was interrupted"]}))
            return result

        execute_cell = run_sync(async_execute_cell)   # papermill calls the sync name

        async def _check_responsive(self) -> None:
            """After a timeout: a kernel that swallowed the interrupt is killed (later cells do not run)."""
            self._timed_out = False
            msg_id = self.kc.kernel_info()
            deadline = time.monotonic() + cfg["interrupt_grace_seconds"]
            while time.monotonic() < deadline:
                try:
                    msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=0.2))
                except Empty:
                    continue
                if msg["parent_header"].get("msg_id") == msg_id:
                    return
            await ensure_async(self.km.shutdown_kernel(now=True))
            raise KernelIgnoredInterrupt("the kernel ignored the interrupt after a cell timeout and was killed")

    class GradingEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs):
            return GradingClient(
                nb_man, kernel_name=kernel_name, timeout=execution_timeout,
                startup_timeout=start_timeout, log_output=False, allow_errors=True,
                interrupt_on_timeout=True, raise_on_iopub_timeout=False, record_timing=True,
                error_on_timeout={"ename": "CellTimeoutError",
                                  "evalue": f"cell ran longer than {execution_timeout} s",
                                  "traceback": [f"CellTimeoutError: cell ran longer than {execution_timeout} s"]},
            ).execute()

    return GradingEngine


def main(config_path: str) -> int:
    with open(config_path) as f:
        cfg = json.load(f)
    _set_limits(cfg)
    os.chdir(cfg["cwd"])
    _drop_privileges(cfg["uid"])
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)

    info = {"ended": "completed", "error": None, "seconds": None}
    start = time.monotonic()
    try:
        import papermill
        from papermill.engines import papermill_engines
        from papermill.exceptions import PapermillExecutionError

        papermill_engines.register("autograder", _make_engine(cfg))
        try:
            papermill.execute_notebook(
                cfg["input"], cfg["output"], parameters=cfg["parameters"], engine_name="autograder",
                kernel_name="python3", progress_bar=False, log_output=False,
                request_save_on_cell_execute=True, autosave_cell_every=5,
                execution_timeout=cfg["cell_timeout"], start_timeout=60, cwd=cfg["cwd"])
        except PapermillExecutionError:
            pass   # cells raised; the outputs say which (allow_errors ran the rest)
    except Exception as exc:   # DeadKernelError, kernel start failure, ...
        info["ended"] = type(exc).__name__
        info["error"] = "".join(traceback.format_exception_only(type(exc), exc))[-2000:]
    info["seconds"] = round(time.monotonic() - start, 3)
    with open(cfg["info"], "w") as f:
        json.dump(info, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
