"""diffcourse.grading: the checks every graded notebook's tests are built from.

Each check must fail on the mistake it exists for, with a message that names what differs, and pass
on a correct call; these tests hold that for the checks themselves, independently of any notebook.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from diffcourse.grading import call_checked, check_close, check_differentiable, reference


class Doubler(nn.Module):
    """A module that writes into its input x: the in-place mistake, as a student's nn.Module makes it."""

    def forward(self, x, t):
        x.mul_(2)
        return x + t


class Clean(nn.Module):
    def forward(self, x, t):
        return 2 * x + t


def test_call_checked_sees_a_modules_forward_arguments():
    x = torch.arange(4.0)
    with pytest.raises(AssertionError) as err:
        call_checked("Doubler", Doubler(), x, torch.zeros(1))
    msg = str(err.value)
    assert "Doubler modified its input x" in msg and "3 of 4 entries changed, the first at index (1,)" in msg, msg
    assert torch.equal(x, torch.arange(4.0)), "call_checked must restore the caller's tensor before failing"
    assert torch.equal(call_checked("Clean", Clean(), x, torch.zeros(1)), 2 * torch.arange(4.0))


def test_call_checked_looks_inside_star_args_and_kwargs():
    def bump_first(*xs, **named):
        xs[0].add_(1)
        return xs[0]

    def bump_named(**named):
        named["eps"].sub_(1)

    with pytest.raises(AssertionError, match=r"modified its input xs\[0\]"):
        call_checked("bump_first", bump_first, torch.ones(2))
    with pytest.raises(AssertionError, match="modified its input eps"):
        call_checked("bump_named", bump_named, eps=torch.ones(2))


def test_call_checked_names_the_first_changed_index():
    def poke(x):
        x[1, 2] = 7.0
        return x

    with pytest.raises(AssertionError, match=r"1 of 12 entries changed, the first at index \(1, 2\)"):
        call_checked("poke", poke, torch.zeros(3, 4))


def test_check_close_names_the_worst_entry_and_shapes():
    want = torch.tensor([1.0, 2.0, 3.0])
    check_close("f(x)", want.clone() + 1e-7, want)
    with pytest.raises(AssertionError, match=r"expected 3, got 3\.5 at index 2"):
        check_close("f(x)", torch.tensor([1.0, 2.0, 3.5]), want)
    with pytest.raises(AssertionError, match=r"expected shape \(3,\); got shape \(3, 1\)"):
        check_close("f(x)", want[:, None], want)
    with pytest.raises(AssertionError, match="NaN or inf"):
        check_close("f(x)", torch.tensor([1.0, float("nan"), 3.0]), want)
    big = torch.tensor([1e30, 2e30], dtype=torch.float64)                # float64 precision is kept
    with pytest.raises(AssertionError, match="at index 1"):
        check_close("g(x)", big * torch.tensor([1.0, 1.001], dtype=torch.float64), big)


def test_check_differentiable_catches_no_grad_and_detach():
    w = torch.randn(3, requires_grad=True)
    check_differentiable("loss", (w ** 2).sum(), w)
    with torch.no_grad():
        frozen = (w ** 2).sum()
    with pytest.raises(AssertionError, match="no gradient"):
        check_differentiable("loss", frozen, w)
    with pytest.raises(AssertionError, match="no gradient reaches source 2"):
        check_differentiable("loss", (w ** 2).sum(), w, torch.randn(2, requires_grad=True))


def test_reference_swaps_names_and_restores_them():
    ns = {"step": "student's"}
    with reference(ns, step="course's", extra=1):
        assert ns == {"step": "course's", "extra": 1}
    assert ns == {"step": "student's"}
