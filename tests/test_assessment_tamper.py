"""The autograder's static tamper scan (autograder/tamper.py): a student's local variable that shares
a test helper's name is not tampering; rebinding the helper itself is (flagged for a person to look)."""
from __future__ import annotations

import pytest

from autograder.tamper import rebinding_flags

PROTECTED = {"expect", "reference", "check_close", "torch", "math"}


@pytest.mark.parametrize("source", [
    "def ddim_convergence(model, x_T):\n    reference = model(x_T)\n    return reference",
    "def f(xs):\n    return [expect for expect in xs]",
    "g = lambda reference: reference + 1",
    "def f():\n    for check_close in range(3):\n        pass",
    "def f():\n    def g():\n        global z\n        z = 1\n    reference = 2\n    return reference",
])
def test_local_variables_named_like_a_helper_are_not_flagged(source):
    assert rebinding_flags(source, PROTECTED) == [], f"false alarm on a local variable: {rebinding_flags(source, PROTECTED)}"


@pytest.mark.parametrize("source,flag", [
    ("reference = None", "rebinds the test helper 'reference'"),
    ("expect, x = (lambda c, m: None), 1", "rebinds the test helper 'expect'"),
    ("for expect in [print]:\n    pass", "rebinds the test helper 'expect'"),
    ("def f():\n    global expect\n    expect = print\nf()", "rebinds the test helper 'expect'"),
    ("def check_close(*a, **k):\n    pass", "redefines the test helper 'check_close'"),
    ("def f():\n    torch.allclose = lambda *a, **k: True", "rebinds torch.allclose"),
    ("with open('x') as reference:\n    pass", "rebinds the test helper 'reference'"),
])
def test_rebinding_a_helper_is_flagged(source, flag):
    flags = rebinding_flags(source, PROTECTED)
    assert flag in flags, f"expected the flag {flag!r} for {source!r}; got {flags}"
