"""The model zoo: small checkpoints made by the course's own training commands (book §2.1).

The book and the notebooks load trained models from ``zoo/`` instead of training at build
time. ``zoo/MANIFEST.json`` lists, for every entry, its file, sha256 and size, the exact
command that reproduces it, the model class and config, the schedule, the data and the steps.
:func:`load` checks the sha256 before it trusts a file, and a missing or altered file fails
with the name of the file, both hashes and the command that rebuilds it::

    from diffcourse import zoo
    toy = zoo.load("toy_two_moons")             # toy.model, toy.schedule, toy.prediction_type
    zoo.verify_all()                            # every entry present and unaltered

To (re)build an entry, run its ``command`` from the repository root; ``--update-manifest``
records the new file's hash (see :mod:`diffcourse.train`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .schedules import NoiseSchedule
from .training import load_checkpoint, read_metadata, schedule_of

__all__ = ["ZooError", "ZooModel", "ZOO_DIR", "zoo_dir", "manifest_path", "read_manifest", "names", "rebuild", "main",
           "entry", "sha256_of", "verify", "verify_all", "load", "register"]

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
MANIFEST = "MANIFEST.json"
ENV_VAR = "DIFFCOURSE_ZOO"


class ZooError(RuntimeError):
    """A zoo checkpoint is unknown, missing or not the file the manifest describes."""


@dataclass
class ZooModel:
    """A verified zoo checkpoint, loaded: the model (eval mode) and what it needs to be sampled."""

    name: str
    model: nn.Module
    schedule: NoiseSchedule
    prediction_type: str
    meta: dict


def zoo_dir(root: str | Path | None = None) -> Path:
    """The zoo folder: ``root`` if given, else ``$DIFFCOURSE_ZOO``, else the repository's ``zoo/``."""
    return Path(root or os.environ.get(ENV_VAR) or ZOO_DIR)


def manifest_path(path_in_zoo: str | Path) -> Path:
    """The MANIFEST.json that describes a checkpoint: the one in the same folder."""
    return Path(path_in_zoo).resolve().parent / MANIFEST


def read_manifest(root: str | Path | None = None) -> dict:
    """The manifest as a dict ``{"entries": {name: entry}}`` (empty if there is no manifest yet)."""
    path = zoo_dir(root) / MANIFEST
    if not path.exists():
        return {"entries": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def names(root: str | Path | None = None) -> list[str]:
    """The names of every zoo entry, sorted."""
    return sorted(read_manifest(root)["entries"])


def entry(name: str, root: str | Path | None = None) -> dict:
    """The manifest entry of ``name`` (file, sha256, bytes, command, model_class, config, ...)."""
    entries = read_manifest(root)["entries"]
    if name not in entries:
        raise ZooError(f"no zoo entry named {name!r} in {zoo_dir(root) / MANIFEST}; "
                       f"known entries: {sorted(entries)}")
    return entries[name]


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rebuild_hint(e: dict) -> str:
    return (f"Rebuild it from the repository root with:\n    {e['command']}\n"
            f"(add --update-manifest only if you mean to replace the recorded hash)")


def verify(name: str, root: str | Path | None = None) -> Path:
    """Check that ``name``'s file exists and has the manifest's sha256; returns its path.

    Raises :class:`ZooError` naming the file, the expected and actual hash, and the rebuild command.
    """
    e = entry(name, root)
    path = zoo_dir(root) / e["file"]
    if not path.exists():
        raise ZooError(f"zoo checkpoint {name!r} is missing: expected the file {path} "
                       f"(sha256 {e['sha256']}). {_rebuild_hint(e)}")
    got = sha256_of(path)
    if got != e["sha256"]:
        raise ZooError(f"zoo checkpoint {name!r} was altered: {path} has sha256 {got}, but "
                       f"{zoo_dir(root) / MANIFEST} expects {e['sha256']}. {_rebuild_hint(e)}")
    return path


def verify_all(root: str | Path | None = None) -> list[str]:
    """Verify every entry; returns their names, or raises one :class:`ZooError` listing every problem."""
    problems = []
    for name in names(root):
        try:
            verify(name, root)
        except ZooError as err:
            problems.append(str(err))
    if problems:
        raise ZooError(f"{len(problems)} zoo checkpoint(s) failed verification:\n\n" + "\n\n".join(problems))
    return names(root)


def load(name: str, device: torch.device | str | None = None, root: str | Path | None = None) -> ZooModel:
    """Verify and load the zoo checkpoint ``name`` onto ``device`` (default: diffcourse.device's choice).

    Book §2.1. The model is in eval mode; ``schedule`` and ``prediction_type`` are the ones it was
    trained with, so ``sample_ddim(toy.model, (N, 2), toy.schedule, prediction_type=toy.prediction_type)``
    samples from it.
    """
    e = entry(name, root)
    model, meta = load_checkpoint(verify(name, root), device)
    if meta["model_class"] != e["model_class"] or meta["config"] != e["config"]:
        raise ZooError(f"zoo checkpoint {name!r}: the file says {meta['model_class']}{meta['config']}, the "
                       f"manifest says {e['model_class']}{e['config']}; the manifest is out of date")
    return ZooModel(name=name, model=model, schedule=schedule_of(meta),
                    prediction_type=meta["prediction_type"], meta=meta)


def register(path: str | Path, name: str | None = None, **extra) -> dict:
    """Write (or overwrite) the manifest entry for the checkpoint at ``path``; returns the entry.

    The manifest is the MANIFEST.json beside the file. The entry copies the checkpoint's own metadata
    (command, model class and config, schedule, data, steps) and adds its sha256 and size, the
    parameter count, and ``extra`` (for example the measured training time).
    """
    path = Path(path)
    meta = read_metadata(path)
    model, _ = load_checkpoint(path, "cpu")
    name = name or path.stem
    new = dict(meta, name=name, file=path.name, sha256=sha256_of(path), bytes=path.stat().st_size,
               parameters=sum(p.numel() for p in model.parameters()), **extra)
    new.pop("format", None)
    manifest_file = manifest_path(path)
    entries = dict(read_manifest(manifest_file.parent)["entries"], **{name: dict(sorted(new.items()))})
    manifest = {"about": "Checkpoints made by the course's own training commands (see diffcourse/zoo.py). "
                         "Rebuild an entry by running its command from the repository root.",
                "entries": dict(sorted(entries.items()))}
    tmp = manifest_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(manifest_file)
    return manifest["entries"][name]


def rebuild(selected: list[str] | None = None, root: str | Path | None = None) -> dict[str, bool]:
    """Re-run the recorded command of each entry (all by default) from the repository root (book §2.1).

    The rebuilt file replaces the shipped one; the manifest is left as it is, so a following
    :func:`verify` says whether the rebuild reproduced the shipped bytes. Returns ``{name: same_bytes}``.
    Retraining is byte-identical on the machine that made the zoo; another CPU or torch build may
    round differently, and then only the quality checks in ``tests/test_zoo.py`` are expected to hold.
    """
    import shlex
    import subprocess
    import sys

    same = {}
    for name in selected or names(root):
        e = entry(name, root)
        argv = shlex.split(e["command"])
        if argv[:1] == ["python"]:
            argv[0] = sys.executable
        print(f"[zoo] {name}: {e['command']}", flush=True)
        subprocess.run(argv, cwd=ZOO_DIR.parent, check=True)
        same[name] = sha256_of(zoo_dir(root) / e["file"]) == e["sha256"]
    return same


def main(argv: list[str] | None = None) -> int:
    """``python -m diffcourse.zoo verify`` or ``python -m diffcourse.zoo rebuild [NAME ...]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m diffcourse.zoo", description=main.__doc__)
    parser.add_argument("action", choices=["verify", "rebuild"])
    parser.add_argument("names", nargs="*", help="entries to rebuild (default: all)")
    args = parser.parse_args(argv)
    if args.action == "rebuild":
        for name, same in rebuild(args.names).items():
            print(f"[zoo] {name}: " + ("reproduced the shipped bytes" if same else
                                       "differs from the shipped bytes (expected on another CPU or torch build)"))
    try:
        for name in verify_all():
            e = entry(name)
            print(f"[zoo] {name:24s} ok  {e['bytes']:>9,d} B  sha256 {e['sha256'][:16]}...")
    except ZooError as err:
        print(err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
