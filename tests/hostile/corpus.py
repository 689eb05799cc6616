"""The hostile corpus: broken or malicious warm-up submissions, each with its expected outcome.

Every case is the warm-up's solution with one described mutation, written as a student
submission ``{student_id}/ch00_warmup/warmup.ipynb`` by ``build_corpus``. ``Case.status`` and
``Case.score`` are what the autograder must report (max score 20: five exercises x (2 visible +
2 hidden)); ``forbidden`` strings must not appear anywhere in the graded notebook and ``required``
strings must. Paths the attacks aim at (solutions, gradebook, another submission, a canary file
outside the sandbox, a loopback listener) come from ``Targets``.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from autograder.demo import grade_id, load_pair, student_copy

ASSIGNMENT, NOTEBOOK, MAX = "ch00_warmup", "warmup", 20.0


@dataclass
class Targets:
    solutions: Path          # the course's solutions/ folder
    gradebook: Path          # OUT/gradebook.db
    other_submission: Path   # another student's notebook in the submissions folder
    canary: Path             # a file outside the sandbox that must never be created
    port: int                # a loopback listener on the host that must never get a connection


@dataclass
class Case:
    student_id: str
    what: str
    status: str
    score: float
    forbidden: list[str] = field(default_factory=list)
    required: list[str] = field(default_factory=list)


SOL = {}   # grade id -> solution source, filled by build_corpus


def _cell(nb, gid):
    return next(c for c in nb.cells if grade_id(c) == gid)


def _append(gid: str, code: str) -> dict:
    return {gid: SOL[gid] + "\n" + code}


def _prepend(gid: str, code: str) -> dict:
    return {gid: code + "\n" + SOL[gid]}


def _cases(t: Targets) -> list[tuple[Case, dict, callable]]:
    """(case, solution-cell overrides, extra notebook mutation or None)."""
    def edit_test_cell(nb):
        _cell(nb, "test_ex4_hidden").source = "pass  # all good"

    def delete_test_cell(nb):
        nb.cells.remove(_cell(nb, "test_ex2_hidden"))

    def duplicate_cell(nb):
        nb.cells.append(copy.deepcopy(_cell(nb, "test_ex1_visible")))

    def edit_points(nb):
        _cell(nb, "test_ex1_visible").metadata.nbgrader["points"] = 100

    def change_kernelspec(nb):
        nb.metadata["kernelspec"] = {"name": "bash", "display_name": "Bash", "language": "bash"}

    read = "print('LEAKED', open({!r}, 'rb').read()[:300])"
    return [
        (Case("h01_infinite_loop", "a top-level `while True: pass` in exercise 1's cell", "timeout", 16),
         _prepend("ex1_solution", "while True:\n    pass"), None),
        (Case("h02_swallow_interrupt", "a loop that catches KeyboardInterrupt in exercise 5's cell: the kernel "
              "is killed, later test cells score zero", "timeout", 16, required=["TestNotRun"]),
         _append("ex5_solution", "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
                 "    except KeyboardInterrupt:\n        pass"), None),
        (Case("h03_memory_bomb", "allocates 16 GiB before defining to_unit_range", "killed", 16),
         _prepend("ex2_solution", "hog = bytearray(16 * 2**30)"), None),
        (Case("h04_many_processes", "starts 500 `sleep` processes", "killed", 16),
         _prepend("ex4_solution", "import subprocess\nprocs = [subprocess.Popen(['sleep', '321']) for _ in range(500)]"),
         None),
        (Case("h05_os_exit", "os._exit(1) after exercise 3: the kernel dies, later tests score zero",
              "killed", 8, required=["TestNotRun"]),
         _append("ex3_solution", "import os\nos._exit(1)"), None),
        (Case("h06_segfault", "dereferences NULL with ctypes after exercise 4", "killed", 12),
         _append("ex4_solution", "import ctypes\nctypes.string_at(0)"), None),
        (Case("h07_output_flood", "prints 50,000 lines", "ok", MAX, required=["output truncated"]),
         _append("ex1_solution", "for i in range(50_000):\n    print('flood', i)"), None),
        (Case("h08_huge_line", "prints one 20 MB line", "ok", MAX, required=["output truncated"],
              forbidden=["y" * 200_000]),
         _append("ex1_solution", "print('y' * 20_000_000)"), None),
        (Case("h09_huge_image", "displays a 6 MiB PNG", "ok", MAX, required=["removed (limit"]),
         _append("ex1_solution", "import os\nfrom IPython.display import Image, display\n"
                 "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(6 * 2**20), format='png'))"), None),
        (Case("h10_input", "calls input() (there is no stdin when graded)", "error", MAX, required=["StdinNotImplementedError"]),
         _append("ex1_solution", "answer = input('your name? ')"), None),
        (Case("h11_edited_test", "replaces a hidden test cell by `pass`, with a wrong batch_mse (sum)",
              "flagged", 16),
         {"ex4_solution": "def batch_mse(pred, target):\n    return ((pred - target) ** 2).flatten(1).sum(1)"},
         edit_test_cell),
        (Case("h12_deleted_test", "deletes a hidden test cell, with to_unit_range hard-coding 255",
              "flagged", 18),
         {"ex2_solution": "def to_unit_range(images, max_value=255.0):\n    return (images.float() - 127.5) / 127.5"},
         delete_test_cell),
        (Case("h13_duplicated_grade_id", "duplicates a test cell (same grade id)", "flagged", MAX), {}, duplicate_cell),
        (Case("h14_edited_points", "sets a test cell's points to 100", "flagged", MAX), {}, edit_points),
        (Case("h15_kernelspec", "changes the kernelspec to bash", "ok", MAX), {}, change_kernelspec),
        (Case("h18_non_ascii", "non-ASCII comments, names and output", "ok", MAX, required=["σ = ½ → 噪声 🎲"]),
         _append("ex1_solution", "# Größe σ: Rauschen — 噪声\nσ_größe = '½'\nprint(f'σ = {σ_größe} → 噪声 🎲')"), None),
        (Case("h19_monkeypatch_helper", "rebinds the tests' `expect` to a no-op, with a wrong expand_like",
              "flagged", MAX),
         {"ex5_solution": "def expand_like(coef, x):\n    return coef.view(-1, 1, 1, 1)\n\n"
                          "expect = lambda condition, message: None"}, None),
        (Case("h20_monkeypatch_torch", "rebinds torch.equal so that the RNG-state check passes (and, "
              "as a side effect, the different-seeds check fails: the grade stands as computed)", "flagged", 18),
         {"ex1_solution": "def seeded_noise(shape, seed, device='cpu', dtype=torch.float32):\n"
                          "    torch.manual_seed(seed)\n    return torch.randn(shape, device=device, dtype=dtype)\n\n"
                          "torch.equal = lambda a, b: True"}, None),
        (Case("h21_read_solutions", "reads solutions/", "error", MAX, forbidden=["LEAKED"]),
         _append("ex1_solution", read.format(str(t.solutions / ASSIGNMENT / f"{NOTEBOOK}.ipynb"))), None),
        (Case("h22_read_gradebook", "reads the gradebook", "error", MAX, forbidden=["LEAKED"]),
         _append("ex1_solution", read.format(str(t.gradebook))), None),
        (Case("h23_read_other_submission", "reads another student's submission", "error", MAX, forbidden=["LEAKED"]),
         _append("ex1_solution", read.format(str(t.other_submission))), None),
        (Case("h24_network", "connects to a listener on the host's loopback", "error", MAX, forbidden=["CONNECTED"]),
         _append("ex1_solution", f"import socket\ns = socket.create_connection(('127.0.0.1', {t.port}), timeout=3)\n"
                 "s.sendall(b'PWNED')\nprint('CONNECTED')"), None),
        (Case("h25_write_outside", "writes outside its scratch directory (a canary, the venv, /tmp)", "error", MAX,
              forbidden=["WROTE"]),
         _append("ex1_solution", "import sys, os\nwritten = []\n"
                 f"for path in [{str(t.canary)!r}, sys.prefix + '/pwned.txt', '/work/pwned.txt']:\n"
                 "    try:\n        open(path, 'w').write('pwned')\n        written.append(path)\n"
                 "    except OSError as exc:\n        print('refused:', path, type(exc).__name__)\n"
                 "if written:\n    print('WROTE', written)\nelse:\n    raise PermissionError('nothing written')"), None),
        (Case("h26_first_cell_raises", "exercise 1's cell raises; the independent exercises 2-5 still earn points",
              "error", 16),
         {"ex1_solution": "raise ValueError('I give up on exercise 1')"}, None),
        (Case("h27_warning", "a correct batch_mse that emits a UserWarning: warnings do not cost points",
              "ok", MAX, required=["UserWarning: batch_mse is slow"]),
         {"ex4_solution": "import warnings\n\ndef batch_mse(pred, target):\n"
                          "    warnings.warn('batch_mse is slow', UserWarning)\n"
                          "    return ((pred - target) ** 2).flatten(1).mean(1)"}, None),
    ]


def build_corpus(dest: Path, targets: Targets, root: Path) -> list[Case]:
    """Write every hostile submission under ``dest`` and return the cases (with the file-level ones)."""
    release, solution = load_pair(ASSIGNMENT, NOTEBOOK, root)
    SOL.clear()
    SOL.update({grade_id(c): student_copy(release, solution).cells[i].source
                for i, c in enumerate(release.cells) if c.metadata.get("nbgrader", {}).get("solution")})
    cases = []
    for case, overrides, mutate in _cases(targets):
        nb = student_copy(release, solution, overrides)
        if mutate:
            mutate(nb)
        folder = dest / case.student_id / ASSIGNMENT
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{NOTEBOOK}.ipynb").write_text(json.dumps(nb, ensure_ascii=False, indent=1))
        cases.append(case)
    renamed = dest / "h16_renamed" / ASSIGNMENT
    renamed.mkdir(parents=True, exist_ok=True)
    nbformat.write(student_copy(release, solution), str(renamed / "warmup-Copy1.ipynb"))
    cases.append(Case("h16_renamed", "submits warmup-Copy1.ipynb instead of warmup.ipynb", "missing", 0))
    broken = dest / "h17_invalid_json" / ASSIGNMENT
    broken.mkdir(parents=True, exist_ok=True)
    (broken / f"{NOTEBOOK}.ipynb").write_text('{"cells": [ this is not json')
    cases.append(Case("h17_invalid_json", "a notebook file that is not JSON", "invalid", 0))
    return sorted(cases, key=lambda c: c.student_id)


def expected_cases() -> list[Case]:
    """The cases and their expected outcomes, without writing anything (for test ids)."""
    dummy = Targets(Path("/s"), Path("/g"), Path("/o"), Path("/c"), 1)
    SOL.setdefault("ex1_solution", "")
    for k in range(2, 6):
        SOL.setdefault(f"ex{k}_solution", "")
    cases = [case for case, _, _ in _cases(dummy)]
    cases += [Case("h16_renamed", "", "missing", 0), Case("h17_invalid_json", "", "invalid", 0)]
    return sorted(cases, key=lambda c: c.student_id)
