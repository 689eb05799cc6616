"""Run one notebook in a bubblewrap sandbox (``bwrap``, Debian package ``bubblewrap``).

The sandbox sees only: the system (``/usr``, ``/etc``, ...), the course environment read-only
(the virtual environment, its base Python, the ``diffcourse`` package, ``zoo/``), the runner
(read-only), its own scratch directory (read-write, the cwd and $HOME) and a private size-limited
``/tmp``. It has no network (``--unshare-net``: only its own loopback), its own PID namespace
(``--unshare-pid``: when it ends, every process it started is killed), ``--die-with-parent`` and
``--new-session``. ``runner.py`` sets the resource limits and drops to an unprivileged uid before
any student code runs. The grader kills the whole sandbox at the notebook time limit.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .limits import Limits

RUNNER = Path(__file__).with_name("runner.py")
SANDBOX_HOME = "/home/student"
SANDBOX_IO = "/grader"
SANDBOX_RUNNER = "/opt/autograder/runner.py"
UID_BASE = 61000


@dataclass
class RunResult:
    """How one sandboxed run ended and what it produced."""
    nb: nbformat.NotebookNode | None   # executed notebook (partial after a kill), None if nothing saved
    ended: str                         # "completed", "wall_timeout", "DeadKernelError", "no_output", ...
    error: str | None
    seconds: float


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise RuntimeError("bubblewrap is not installed: run `apt-get install -y bubblewrap` "
                           "(the sandbox needs the `bwrap` command)")
    return path


@functools.lru_cache(maxsize=None)
def _bwrap_has(option: str) -> bool:
    """Whether this bubblewrap knows ``option`` (``--size`` needs bubblewrap >= 0.7)."""
    return option in subprocess.run([bwrap_path(), "--help"], capture_output=True, text=True).stdout


def course_environment() -> list[str]:
    """Read-only paths the sandbox needs: the venv, its base Python, diffcourse, zoo/."""
    import diffcourse

    package = Path(diffcourse.__file__).resolve().parent
    paths = [Path(sys.prefix), Path(sys.base_prefix).resolve(), package]
    zoo = package.parent / "zoo"
    if zoo.is_dir():
        paths.append(zoo)
    unique = []
    for p in paths:
        if str(p) not in unique:
            unique.append(str(p))
    return unique


def sandbox_uid() -> int:
    """An unprivileged uid for this worker, so each sandbox has its own process limit."""
    return UID_BASE + os.getpid() % 4000


def bwrap_command(job: Path, limits: Limits) -> list[str]:
    cmd = [bwrap_path(), "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
           "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    for system in ("/usr", "/etc", "/bin", "/lib", "/lib64", "/sbin"):
        cmd += ["--ro-bind-try", system, system]
    # The private /tmp comes first: the course environment may itself live under /tmp (a CI clone,
    # say), and a tmpfs mounted after its bind would hide it.
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", *(["--size", str(limits.tmp_bytes)] if _bwrap_has("--size") else []), "--tmpfs", "/tmp"]
    made = {"/tmp"}
    for path in course_environment() + [SANDBOX_RUNNER, SANDBOX_HOME]:
        for parent in reversed(Path(path).parents):   # bwrap would make them 0700: unreadable
            if str(parent) not in ("/", *made) and not str(parent).startswith(("/usr", "/etc")):
                cmd += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
    for path in course_environment():
        cmd += ["--ro-bind", path, path]
    cmd += ["--ro-bind", str(RUNNER), SANDBOX_RUNNER,
            "--bind", str(job / "scratch"), SANDBOX_HOME,
            "--bind", str(job / "io"), SANDBOX_IO,
            "--chdir", SANDBOX_HOME, "--clearenv"]
    env = {"HOME": SANDBOX_HOME, "PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "TMPDIR": "/tmp", "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp/mpl",
           "IPYTHONDIR": "/tmp/ipython", "JUPYTER_RUNTIME_DIR": "/tmp/jupyter",
           "JUPYTER_PLATFORM_DIRS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "NBGRADER_EXECUTION": "autograde", "VIRTUAL_ENV": sys.prefix}
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    cmd += ["--", f"{sys.prefix}/bin/python", "-I", SANDBOX_RUNNER, f"{SANDBOX_IO}/config.json"]
    return cmd


def _prepare_job(job: Path, nb: nbformat.NotebookNode, parameters: dict, limits: Limits, uid: int) -> None:
    scratch, io = job / "scratch", job / "io"
    for d in (scratch, io):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, uid)
        os.chmod(d, 0o700)
    nbformat.write(nb, str(io / "input.ipynb"))
    config = {**limits.as_dict(), "uid": uid, "cwd": SANDBOX_HOME, "parameters": parameters,
              "input": f"{SANDBOX_IO}/input.ipynb", "output": f"{SANDBOX_IO}/output.ipynb",
              "info": f"{SANDBOX_IO}/info.json"}
    (io / "config.json").write_text(json.dumps(config))


def run_notebook(nb: nbformat.NotebookNode, job: Path, parameters: dict, limits: Limits) -> RunResult:
    """Execute ``nb`` in a fresh sandbox rooted at the empty directory ``job``."""
    uid = sandbox_uid()
    job.mkdir(parents=True, exist_ok=True)
    os.chmod(job, 0o700)
    _prepare_job(job, nb, parameters, limits, uid)
    start = time.monotonic()
    ended, error = "completed", None
    with open(job / "sandbox.log", "wb") as log:
        proc = subprocess.Popen(bwrap_command(job, limits), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=limits.notebook_timeout)
        except subprocess.TimeoutExpired:
            ended, error = "wall_timeout", f"the notebook ran longer than {limits.notebook_timeout} s"
        finally:
            _kill_group(proc)
    seconds = time.monotonic() - start
    io = job / "io"
    info_path = io / "info.json"
    if ended == "completed":
        if info_path.exists():
            try:
                info = json.loads(info_path.read_text())
                ended, error = info.get("ended", "completed"), info.get("error")
            except ValueError:
                ended, error = "runner_failed", "unreadable info.json"
        else:
            ended = "runner_failed" if proc.returncode == 0 else f"sandbox_exit_{proc.returncode}"
            error = _tail(job / "sandbox.log")
    executed = None
    if (io / "output.ipynb").exists():
        try:
            executed = nbformat.read(str(io / "output.ipynb"), as_version=4)
        except Exception as exc:   # truncated by a kill mid-write
            error = (error or "") + f"; output notebook unreadable: {exc}"
    return RunResult(nb=executed, ended=ended, error=error, seconds=seconds)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill bwrap's process group; --die-with-parent and the PID namespace take the rest."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""
