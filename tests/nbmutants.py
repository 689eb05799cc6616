"""Generic wrong implementations of a graded exercise, derived from its own solution (see nbharness).

A *mutant* wraps the solution's function or class so that it makes one mistake every student can
make in every chapter; the exercise's tests must reject it with a message naming the mistake:

=====================  ===================================================  =======================
mutant id              what the wrapped solution does                       message must contain
=====================  ===================================================  =======================
``in_place``           returns the right result, then writes into its       ``in place``
                       tensor inputs (floats: ``x.mul_(-1).add_(0.5)``,
                       integers: ``x.add_(1)``); classes: in ``forward``
``no_grad``            computes under ``torch.no_grad()`` (no gradient)     ``gradient``
                       -- for classes (layers) and functions declared
                       differentiable
``ignore_generator``   replaces the ``generator`` argument by another       ``generator``
                       generator (seed + 12345): draws that ignore it
``default:<p>``        ignores argument ``p`` and uses its default value    ``<p>``
=====================  ===================================================  =======================

``FIRED`` counts, per mutant id, the calls in which the mutant changed something; a mutant that
never fired (``in_place`` on a function that takes no tensors) has nothing to catch.
"""
from __future__ import annotations

import ast
import functools
import inspect
from collections import Counter

import torch

FIRED: Counter = Counter()
FRAGMENT = {"in_place": "in place", "no_grad": "gradient", "ignore_generator": "generator"}


def fragment(kind: str) -> str:
    """The text the rejecting message must contain for mutant ``kind``."""
    return kind.split(":", 1)[1] if kind.startswith("default:") else FRAGMENT[kind]


def mutant_ids(source: str, name: str, differentiable: bool) -> list[str]:
    """Every generic mutant that applies to the function or class ``name`` defined in ``source``.

    Read from the source (no execution): a class contributes its ``__init__`` and ``forward`` parameters.
    """
    node = next(n for n in ast.parse(source).body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
    defs = [node] if isinstance(node, ast.FunctionDef) else \
        [n for n in node.body if isinstance(n, ast.FunctionDef) and n.name in ("__init__", "forward")]
    params, defaulted = [], []
    for d in defs:
        positional = d.args.posonlyargs + d.args.args
        params += [a.arg for a in positional + d.args.kwonlyargs]
        defaulted += [a.arg for a in positional[len(positional) - len(d.args.defaults):]] if d.args.defaults else []
        defaulted += [a.arg for a, v in zip(d.args.kwonlyargs, d.args.kw_defaults) if v is not None]
    ids = ["in_place"] + (["no_grad"] if differentiable or isinstance(node, ast.ClassDef) else [])   # a layer learns
    if any("generator" in p for p in params):
        ids.append("ignore_generator")
    return ids + [f"default:{p}" for p in defaulted if p != "self"]


def defined_names(source: str) -> list[str]:
    """The functions and classes a cell defines at top level."""
    return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]


def _scribble(value) -> bool:
    if isinstance(value, torch.Tensor) and value.numel() and value.dtype != torch.bool:
        with torch.no_grad():
            if value.is_floating_point() or value.is_complex():
                value.mul_(-1).add_(0.5)
            else:
                value.add_(1)
        return True
    return False


def _wrap_call(fn, kind: str, key: str):
    """``fn`` with mutant ``kind`` applied; ``key`` names it in FIRED."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        if kind == "no_grad":
            FIRED[key] += 1
            with torch.no_grad():
                return fn(*args, **kwargs)
        if kind.startswith("default:"):
            name = kind.split(":", 1)[1]
            if name in bound.arguments:
                if bound.arguments[name] != sig.parameters[name].default:
                    FIRED[key] += 1
                del bound.arguments[name]
            return fn(*bound.args, **bound.kwargs)
        if kind == "ignore_generator":
            for name, value in list(bound.arguments.items()):
                if "generator" in name and isinstance(value, torch.Generator):
                    FIRED[key] += 1
                    bound.arguments[name] = torch.Generator(device=value.device).manual_seed(value.initial_seed() + 12345)
            return fn(*bound.args, **bound.kwargs)
        if kind == "in_place":
            out = fn(*args, **kwargs)
            hits = [_scribble(v) for k, v in bound.arguments.items() if k != "self"]
            FIRED[key] += any(hits)
            return out
        raise ValueError(f"unknown mutant {kind!r}")

    return wrapper


def mutate(obj, kind: str, key: str):
    """The solution ``obj`` (function or ``nn.Module`` class) with mutant ``kind``."""
    if not isinstance(obj, type):
        return _wrap_call(obj, kind, key)
    name = kind.split(":", 1)[1] if kind.startswith("default:") else None
    in_init = name is not None and name in inspect.signature(obj.__init__).parameters
    attrs = {"__init__": _wrap_call(obj.__init__, kind, key)} if in_init else \
        {"forward": _wrap_call(obj.forward, kind, key)}
    return type(obj.__name__, (obj,), {**attrs, "__module__": obj.__module__, "__qualname__": obj.__qualname__})


def poisoned(name: str):
    """Stands for a solution that fails on every use (nbharness's independence check)."""
    def poison(*args, **kwargs):
        raise AssertionError(f"POISONED: {name} was called (this run replaces it to test exercise independence)")
    return poison
