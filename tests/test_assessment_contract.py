"""Every graded notebook, present and future, is held to the assessment contract of tests/nbharness.py.

For each ``solutions/*/*.ipynb`` (a chapter added later is picked up with no change here):

- each exercise's solution cell declares its functions and classes (``grading`` cell metadata);
- each exercise is independent: with its functions poisoned, only its own tests fail;
- each generic mutant of each declared solution (writes into its inputs, drops the gradient,
  ignores its generator, ignores an argument with a default) fails that exercise's tests with a
  message naming the mistake.

The chapter-specific mistakes live in each chapter's ``tests/test_chNN_notebook.py``.
"""
from __future__ import annotations

import pytest
import torch

from nbharness import REPO, assert_independent, assert_mutant_rejected, contract_problems, load_solution, \
    mutant_cases, solution_cells

NOTEBOOKS = sorted((p.parent.name, p.stem) for p in (REPO / "solutions").glob("*/*.ipynb"))
# Notebooks being brought under the contract (issue 10): each is listed here until it complies, and
# the xfail is strict, so a notebook that complies must leave this list. A new chapter is never listed.
PENDING: set[str] = set()
_CACHE: dict = {}


def _nb(assignment: str, notebook: str):
    if (assignment, notebook) not in _CACHE:
        _CACHE[assignment, notebook] = load_solution(assignment, notebook)
    return _CACHE[assignment, notebook]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_assignment_is_found():
    assert len(NOTEBOOKS) >= 4 and ("ch02_sampling", "sampling") in NOTEBOOKS, f"found {NOTEBOOKS}"


def _pending(assignment: str):
    return [pytest.mark.xfail(strict=True, reason="issue 10: not yet under the contract")] if assignment in PENDING else []


@pytest.mark.parametrize("assignment,notebook", [pytest.param(a, n, marks=_pending(a)) for a, n in NOTEBOOKS],
                         ids=[a for a, _ in NOTEBOOKS])
def test_notebook_declares_its_exercises(assignment, notebook):
    problems = contract_problems(_nb(assignment, notebook))
    assert not problems, f"solutions/{assignment}/{notebook}.ipynb breaks the contract of tests/nbharness.py: {problems}"


INDEPENDENCE = [(a, n, k) for a, n in NOTEBOOKS for k in sorted(solution_cells(_nb(a, n)))]


@pytest.mark.parametrize("assignment,notebook,k", INDEPENDENCE, ids=[f"{a}-ex{k}" for a, _, k in INDEPENDENCE])
def test_exercise_is_independent(assignment, notebook, k):
    assert_independent(_nb(assignment, notebook), k)


MUTANTS = [(a, n, k, name, kind) for a, n in NOTEBOOKS for k, _, name, kind in mutant_cases(_nb(a, n))]


@pytest.mark.parametrize("assignment,notebook,k,name,kind", MUTANTS,
                         ids=[f"{a}-{name}-{kind}" for a, _, _, name, kind in MUTANTS])
def test_generic_mutant_is_rejected(assignment, notebook, k, name, kind):
    assert_mutant_rejected(_nb(assignment, notebook), k, name, kind)
