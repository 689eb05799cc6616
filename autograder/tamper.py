"""Tampering checks on a submitted notebook, against the released version of the same notebook.

A flag never changes the grade (nbgrader restores locked cells from the gradebook before it runs
anything); it asks a person to look. Flagged: edited or deleted locked cells (tests, read-only
cells), duplicated grade ids, edited points, and code that rebinds the tests' helpers or builtins
(``expect = ...``, ``torch.allclose = ...``, ``import builtins``, ``setattr(...)``,
``__builtins__``). A changed kernelspec is only noted: nbgrader runs the course's kernel anyway.
"""
from __future__ import annotations

import ast
from collections import Counter

from nbgrader.utils import compute_checksum

WATCHED_MODULES = {"torch", "np", "numpy", "math", "builtins", "sys", "nbgrader", "F"}
SUSPICIOUS_NAMES = {"__builtins__", "builtins", "setattr", "__import__", "globals", "exec", "eval"}


def _nbg(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _locked_names(release) -> set[str]:
    """Names bound at top level by the locked cells (the tests' helpers and imports)."""
    names = set()
    for cell in release.cells:
        if cell.get("cell_type") != "code" or not _nbg(cell).get("locked"):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names - {"GRADING", "DEVICE", "SEED"}


def _module_level_names(tree: ast.AST) -> set[int]:
    """ids of the ``ast.Name`` targets that bind a module-level (global) name.

    An assignment inside a function or lambda binds a local, which cannot touch the tests' helpers,
    unless the function declares the name ``global``; a comprehension's variables are local too.
    """
    found: set[int] = set()

    def visit(node, globals_: set[str] | None):
        # globals_ is None at module level, else the names this function declares global
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                declared = {n for g in ast.walk(child) if isinstance(g, ast.Global) for n in g.names}
                visit(child, declared)
                continue
            if isinstance(child, ast.Name) and isinstance(child.ctx, (ast.Store, ast.Del)):
                if globals_ is None or child.id in globals_:
                    found.add(id(child))
            if isinstance(child, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                visit(child, set() if globals_ is None else globals_)
                continue
            visit(child, globals_)

    visit(tree, None)
    return found


def rebinding_flags(source: str, protected: set[str]) -> list[str]:
    """Static scan of one student cell for rebinding of helpers, modules' attributes or builtins.

    A helper's name bound at module level (or declared ``global``) is flagged; the same name as a
    local variable of the student's function (``reference = ddim_sample(...)``) is not.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    flags = []
    modules = WATCHED_MODULES | {n for n in protected if n in {"torch", "math", "np"}}
    module_level = _module_level_names(tree)
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith, ast.NamedExpr)):
            targets = ([node.target] if isinstance(node, (ast.For, ast.AsyncFor, ast.NamedExpr)) else
                       [i.optional_vars for i in node.items if i.optional_vars is not None])
        targets = [n for t in targets for n in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]
        for target in targets:
            if isinstance(target, ast.Attribute):
                base = target.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in modules:
                    flags.append(f"rebinds {ast.unparse(target)}")
            elif isinstance(target, ast.Name) and target.id in protected and id(target) in module_level:
                flags.append(f"rebinds the test helper '{target.id}'")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in protected:
            flags.append(f"redefines the test helper '{node.name}'")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name.split(".")[0] == "builtins" for a in node.names) or \
                    (isinstance(node, ast.ImportFrom) and node.module == "builtins"):
                flags.append("imports builtins")
        if isinstance(node, ast.Name) and node.id in SUSPICIOUS_NAMES - {"exec", "eval", "globals"}:
            flags.append(f"uses {node.id}")
    return sorted(set(flags))


def tamper_flags(submitted, release) -> tuple[list[str], list[str]]:
    """(flags, notes) for a submitted notebook compared with the released one."""
    flags, notes = [], []
    ids = [_nbg(c).get("grade_id") for c in submitted.cells if _nbg(c).get("grade_id")]
    for grade_id, n in Counter(ids).items():
        if n > 1:
            flags.append(f"duplicated grade id '{grade_id}'")
    by_id = {}
    for cell in submitted.cells:
        by_id.setdefault(_nbg(cell).get("grade_id"), cell)
    for ref in release.cells:
        meta = _nbg(ref)
        grade_id = meta.get("grade_id")
        if not grade_id:
            continue
        cell = by_id.get(grade_id)
        if cell is None:
            if meta.get("locked") or meta.get("grade"):
                flags.append(f"deleted cell '{grade_id}'")
            continue
        if meta.get("grade") and str(_nbg(cell).get("points")) != str(meta.get("points")):
            flags.append(f"edited points of '{grade_id}': {meta.get('points')} -> {_nbg(cell).get('points')}")
        elif meta.get("locked") and "checksum" in meta:
            if cell.get("source", "") != ref.source or compute_checksum(cell) != meta["checksum"]:
                flags.append(f"edited locked cell '{grade_id}'")
    protected = _locked_names(release)
    for cell in submitted.cells:
        if cell.get("cell_type") == "code" and not _nbg(cell).get("locked"):
            flags += rebinding_flags(cell.get("source", ""), protected)
    kernel = submitted.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != release.metadata.get("kernelspec", {}).get("name"):
        notes.append(f"kernelspec '{kernel}' replaced by the course's")
    return sorted(set(flags)), notes


def normalize(nb) -> list[str]:
    """Repair nbgrader metadata that would crash nbgrader: later duplicates of a grade id and
    cells with nbgrader metadata but no grade id become ordinary cells. Returns flags."""
    flags, seen = [], set()
    for cell in nb.cells:
        meta = cell.get("metadata", {})
        if "nbgrader" not in meta:
            continue
        gid = meta["nbgrader"].get("grade_id")
        if not gid:
            flags.append("malformed nbgrader metadata (no grade id)")
            del meta["nbgrader"]
        elif gid in seen:
            del meta["nbgrader"]
        else:
            seen.add(gid)
    return sorted(set(flags))
