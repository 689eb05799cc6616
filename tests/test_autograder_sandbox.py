"""The bubblewrap sandbox on its own: small probe notebooks (no torch) run by sandbox.run_notebook."""
from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from autograder.limits import GiB, Limits
from autograder.sandbox import run_notebook
from hostile.procs import running_commands

REPO = Path(__file__).resolve().parents[1]


PROBE = r'''
import json, os, resource, socket, subprocess, sys
report = {"uid": os.getuid(), "cwd": os.getcwd(),
          "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
          "rlimit_nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
          "solutions_visible": os.path.exists(SOLUTIONS), "repo_visible": os.path.exists(REPO + "/tests")}
def attempt(f):
    try:
        f()
        return "allowed"
    except Exception as exc:
        return type(exc).__name__
report["connect_host_loopback"] = attempt(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
report["dns"] = attempt(lambda: socket.getaddrinfo("pypi.org", 443))
report["write_venv"] = attempt(lambda: open(sys.prefix + "/probe.txt", "w").write("x"))
report["write_home"] = attempt(lambda: open("probe.txt", "w").write("x"))
report["write_tmp"] = attempt(lambda: open("/tmp/probe.txt", "w").write("x"))
report["raise_limit"] = attempt(lambda: resource.setrlimit(resource.RLIMIT_AS, (-1, -1)))
subprocess.Popen(["sleep", "4321"], start_new_session=True)
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    setup = f"SOLUTIONS = {str(REPO / 'solutions')!r}\nREPO = {str(REPO)!r}\nPORT = {port}"
    nb = new_notebook(cells=[new_code_cell(setup), new_code_cell(PROBE)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    result = run_notebook(nb, tmp_path_factory.mktemp("probe") / "job", {}, Limits(cell_timeout=20, notebook_timeout=60))
    try:
        conn, _ = listener.accept()
        reached = True
        conn.close()
    except OSError:
        reached = False
    listener.close()
    assert result.nb is not None, f"the probe produced no notebook: ended {result.ended}, {result.error}"
    text = "".join(o.get("text", "") for o in result.nb.cells[-1].outputs if o.get("output_type") == "stream")
    errors = [o for c in result.nb.cells for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, f"the probe raised: {errors}"
    return json.loads(text.strip().splitlines()[-1]), reached, result


def test_runs_unprivileged_with_limits(probe):
    report, _, _ = probe
    assert report["uid"] != 0, "student code must not run as root in the sandbox"
    assert report["rlimit_as"] == 4 * GiB, f"expected a 4 GiB memory limit; got {report['rlimit_as']}"
    assert 0 < report["rlimit_nproc"] <= 256, f"expected a process limit; got {report['rlimit_nproc']}"
    assert report["raise_limit"] != "allowed", "student code could raise its own memory limit"


def test_no_network(probe):
    report, reached, _ = probe
    assert not reached and report["connect_host_loopback"] != "allowed", "the sandbox reached the host's loopback"
    assert report["dns"] != "allowed", "the sandbox resolved a name: it has network"


def test_filesystem_is_confined(probe):
    report, _, _ = probe
    assert not report["solutions_visible"], "solutions/ is visible inside the sandbox"
    assert not report["repo_visible"], "the repository (beyond the course environment) is visible in the sandbox"
    assert report["write_venv"] != "allowed", "the sandbox could write into the virtual environment"
    assert not (Path(sys.prefix) / "probe.txt").exists()
    assert report["write_home"] == "allowed" and report["write_tmp"] == "allowed", (
        f"the scratch directory and /tmp must be writable: {report}")


def test_every_process_is_gone_afterwards(probe):
    left = [c for c in running_commands() if c == "sleep 4321"]
    assert not left, f"a process started in the sandbox (a setsid'd sleep) outlived it: {left}"


def test_wall_time_limit_kills_the_sandbox(tmp_path):
    nb = new_notebook(cells=[new_code_cell("import time\ntime.sleep(600)")],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    start = time.monotonic()
    result = run_notebook(nb, tmp_path / "job", {}, Limits(cell_timeout=600, notebook_timeout=6))
    took = time.monotonic() - start
    assert result.ended == "wall_timeout", f"expected the notebook time limit to end the run; ended {result.ended}"
    assert took < 15, f"the sandbox should be killed at the 6 s limit; took {took:.1f} s"


def test_private_tmp_is_mounted_before_the_course_environment(tmp_path, monkeypatch):
    """A clone under /tmp (as CI may make) must stay visible: bwrap applies mounts in order, so the
    sandbox's private /tmp has to come before the read-only binds of the venv, diffcourse and zoo/."""
    import autograder.sandbox as sandbox

    fake_env = ["/tmp/some-ci-clone/.venv", "/tmp/some-ci-clone/diffcourse", "/usr/lib/python3"]
    monkeypatch.setattr(sandbox, "course_environment", lambda: fake_env)
    cmd = sandbox.bwrap_command(tmp_path, Limits())
    tmpfs = cmd.index("--tmpfs")
    assert cmd[tmpfs + 1] == "/tmp", f"expected `--tmpfs /tmp`, got {cmd[tmpfs:tmpfs + 2]}"
    for path in fake_env:
        bind = next(i for i in range(len(cmd) - 2) if cmd[i] == "--ro-bind" and cmd[i + 1] == path)
        assert bind > tmpfs, f"{path} is bound before the private /tmp is mounted, which would hide it"
