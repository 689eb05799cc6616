"""Checks the graded notebooks' tests share: messages that name what differs, and one cost per mistake.

Every check raises ``AssertionError`` with a message that says *what* differs (a value and its
index, expected against got, a shape, a dtype) and *where to look* (the ``hint``), so that a
student reads the failure and knows which equation to revisit. They accept tensors of any dtype
(float64, bfloat16, integers, bool) and device, Python numbers and nested lists.

- :func:`check_close`: ``got`` against ``want`` (shape, then values), naming the worst entry.
- :func:`call_checked`: call a student's function and check it left its tensor inputs unchanged.
- :func:`check_differentiable`: a result that must carry gradients back to an input or a parameter.
- :func:`reference`: run code with the course's reference implementation of earlier exercises in
  place of the student's, so a mistake in exercise 3 costs exercise 3 only (not 5 and 6 too).
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

__all__ = ["check_close", "call_checked", "check_differentiable", "reference", "describe"]


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.as_tensor(value)


def describe(value: Any) -> str:
    """A short description of a value: type, shape and dtype for tensors."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:120]


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def check_close(name: str, got: Any, want: Any, hint: str = "", *, atol: float = 1e-5, rtol: float = 1e-5,
                check_dtype: bool = False) -> None:
    """Assert ``got`` equals ``want`` within ``atol + rtol * |want|``; the message names the worst entry.

    ``name`` says what is compared ("ddim_step(x_t, 0.5, 0.7, eta=0)"), ``hint`` where to look.
    Shapes must match exactly (a (N,) result never broadcasts against (N, 1)); ``check_dtype``
    also requires the same dtype. Compared in float64, so float64 inputs keep their precision.
    """
    hint = f" -- {hint}" if hint else ""
    if isinstance(want, torch.Tensor) and not isinstance(got, torch.Tensor):
        raise AssertionError(f"{name}: expected a tensor ({describe(want)}); got {describe(got)}{hint}")
    try:
        g, w = _as_tensor(got), _as_tensor(want)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AssertionError(f"{name}: expected {describe(want)}; got {describe(got)} ({exc}){hint}") from None
    if tuple(g.shape) != tuple(w.shape):
        raise AssertionError(f"{name}: expected shape {tuple(w.shape)}; got shape {tuple(g.shape)}{hint}")
    if check_dtype and g.dtype != w.dtype:
        raise AssertionError(f"{name}: expected dtype {w.dtype}; got {g.dtype}{hint}")
    g64, w64 = g.to("cpu", torch.float64), w.to("cpu", torch.float64)
    finite = torch.isfinite(g64)
    if not bool(finite.all()) and bool(torch.isfinite(w64).all()):
        idx = tuple(int(i) for i in (~finite).nonzero()[0])
        raise AssertionError(f"{name}: got {_fmt(float(g64[idx]))} at index {idx if len(idx) != 1 else idx[0]} "
                             f"(expected {_fmt(float(w64[idx]))}); {int((~finite).sum())} entries are NaN or inf{hint}")
    diff = (g64 - w64).abs()
    bad = diff > atol + rtol * w64.abs()
    bad &= ~(torch.isnan(g64) & torch.isnan(w64)) & ~(g64 == w64)
    if not bool(bad.any()):
        return
    worst = diff.masked_fill(~bad, -1.0)
    flat = int(worst.reshape(-1).argmax()) if worst.ndim else 0
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(w64.shape))) if w64.ndim else ()
    where = f" at index {idx[0] if len(idx) == 1 else idx}" if idx else ""
    raise AssertionError(
        f"{name}: expected {_fmt(float(w64[idx]))}, got {_fmt(float(g64[idx]))}{where} "
        f"(max |difference| {_fmt(float(diff.max()))}; {int(bad.sum())} of {w64.numel()} entries differ "
        f"by more than {atol:g} + {rtol:g} |expected|){hint}")


def _tensors(fn, args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """The tensor arguments of the call ``fn(*args, **kwargs)``, each with its parameter's name. An
    ``nn.Module`` is called through ``forward`` (its ``__call__`` only shows ``*args, **kwargs``), and the
    contents of ``*args`` / ``**kwargs`` parameters are listed one by one."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        sig = inspect.signature(target)
        bound = sig.bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        named = [(f"argument {i + 1}", a) for i, a in enumerate(args)] + list(kwargs.items())
    else:
        named = []
        for k, v in bound.items():
            kind = sig.parameters[k].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                named += [(f"{k}[{i}]", a) for i, a in enumerate(v)]
            elif kind is inspect.Parameter.VAR_KEYWORD:
                named += list(v.items())
            else:
                named.append((k, v))
    return [(k, v) for k, v in named if isinstance(v, torch.Tensor)]


def call_checked(name: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, then assert every tensor argument still holds its old values.

    A function that writes into its inputs (``x_t.mul_(...)``, ``x[...] = ...``) corrupts the
    caller's data: the sampler's state, the schedule, a batch used twice. ``name`` is the function's name.
    The inputs are restored before the error is raised, so later tests see the caller's data intact.
    """
    before = [(k, v.detach().clone()) for k, v in _tensors(fn, args, kwargs)]
    out = fn(*args, **kwargs)
    for (k, old), (_, new) in zip(before, _tensors(fn, args, kwargs)):
        if old.shape != new.shape or not torch.equal(old, new.detach()):
            changed = (old != new.detach()) if old.shape == new.shape else None
            where = (f"; {int(changed.sum())} of {old.numel()} entries changed, the first at index "
                     f"{tuple(int(i) for i in changed.nonzero()[0])}") if changed is not None and changed.any() else ""
            if old.shape == new.shape:
                with torch.no_grad():
                    new.copy_(old)
            raise AssertionError(f"{name} modified its input {k} ({describe(old)}) in place{where}: compute a new "
                                 "tensor (x = x + ..., not x += ... or x.add_(...)) and leave the caller's tensors alone")
    return out


def check_differentiable(name: str, out: Any, *sources: torch.Tensor) -> None:
    """Assert ``out`` (a tensor) carries a gradient back to each of ``sources`` (inputs or parameters)."""
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"{name} should return a tensor that can be back-propagated; got {describe(out)}")
    if not out.requires_grad or out.grad_fn is None:
        raise AssertionError(f"{name} returned a tensor with no gradient (requires_grad={out.requires_grad}): do not "
                             "compute it under torch.no_grad(), call .detach(), .item() or .numpy(), or rebuild it "
                             "with torch.tensor(...); training needs loss.backward() to reach the weights")
    grads = torch.autograd.grad(out.float().sum(), sources, allow_unused=True)
    for i, g in enumerate(grads):
        if g is None or not bool(torch.isfinite(g).all()) or float(g.abs().sum()) == 0:
            raise AssertionError(f"{name}: no gradient reaches source {i + 1} ({describe(sources[i])}); "
                                 "the result must be computed from it with differentiable torch operations")


@contextlib.contextmanager
def reference(namespace: dict, **implementations):
    """Within the block, ``namespace[name]`` is the given reference implementation; restored after.

    The notebook's later exercises call the earlier ones by name (``ddim_sample`` calls
    ``ddim_step``), so the tests of a later exercise run it with the course's implementation of the
    earlier ones: ``with reference(globals(), ddim_step=ref.ddim_step): ddim_sample(...)``.
    """
    missing = object()
    saved = {k: namespace.get(k, missing) for k in implementations}
    namespace.update(implementations)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                namespace.pop(k, None)
            else:
                namespace[k] = v
