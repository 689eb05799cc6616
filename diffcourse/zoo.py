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

An entry is one file (``"file"``) or a folder (``"folder"``), such as the diffusers pipeline folder
of book §3.7. A folder entry records the sha256 of every file in it (``"files"``: path -> sha256) and
as its ``"sha256"`` the digest of those lines (:func:`folder_digest`); verification fails on a missing,
altered or unexpected file and names it. ``load`` of a folder entry returns its UNet wrapped as a
course denoiser (:func:`diffcourse.models.diffusers_unet.load_denoiser`); the diffusers pipeline itself
comes from :func:`diffcourse.models.diffusers_unet.load_pipeline` on the folder :func:`verify` returns.
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

__all__ = ["ZooError", "ZooModel", "ZOO_DIR", "zoo_dir", "manifest_path", "read_manifest", "names", "dependencies", "rebuild_order", "rebuild", "main",
           "entry", "sha256_of", "folder_files", "folder_digest", "verify", "verify_all", "load", "register"]

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
    schedule: NoiseSchedule | None      # None for a flow-matching model (book §7), which has none
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


def folder_files(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``, sorted by path ("/"-separated)."""
    folder = Path(folder)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return {rel: sha256_of(folder / rel) for rel in paths}


def folder_digest(files: dict[str, str]) -> str:
    """One sha256 for a folder: the digest of its ``"<sha256>  <path>\\n"`` lines sorted by path (the
    output of ``sha256sum`` run on the sorted files from inside the folder)."""
    listing = "".join(f"{files[rel]}  {rel}\n" for rel in sorted(files))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _rebuild_hint(e: dict) -> str:
    return (f"Rebuild it from the repository root with:\n    {e['command']}\n"
            f"(add --update-manifest only if you mean to replace the recorded hash)")


def verify(name: str, root: str | Path | None = None) -> Path:
    """Check that ``name``'s file exists and has the manifest's sha256; returns its path.

    A folder entry: every listed file present with its sha256 and no other file; returns the folder.
    Raises :class:`ZooError` naming the file, the expected and actual hash, and the rebuild command.
    """
    e = entry(name, root)
    if "folder" in e:
        return _verify_folder(name, e, root)
    path = zoo_dir(root) / e["file"]
    if not path.exists():
        raise ZooError(f"zoo checkpoint {name!r} is missing: expected the file {path} "
                       f"(sha256 {e['sha256']}). {_rebuild_hint(e)}")
    got = sha256_of(path)
    if got != e["sha256"]:
        raise ZooError(f"zoo checkpoint {name!r} was altered: {path} has sha256 {got}, but "
                       f"{zoo_dir(root) / MANIFEST} expects {e['sha256']}. {_rebuild_hint(e)}")
    return path


def _verify_folder(name: str, e: dict, root: str | Path | None) -> Path:
    """:func:`verify` for a folder entry: every recorded file present and unaltered, no other file."""
    folder = zoo_dir(root) / e["folder"]
    if not folder.is_dir():
        raise ZooError(f"zoo entry {name!r} is missing: expected the folder {folder} "
                       f"({len(e['files'])} files, sha256 {e['sha256']}). {_rebuild_hint(e)}")
    found = folder_files(folder)
    for rel, want in e["files"].items():
        path = folder / rel
        if rel not in found:
            raise ZooError(f"zoo entry {name!r} is missing the file {path} (sha256 {want}). {_rebuild_hint(e)}")
        if found[rel] != want:
            raise ZooError(f"zoo entry {name!r} was altered: {path} has sha256 {found[rel]}, but "
                           f"{zoo_dir(root) / MANIFEST} expects {want}. {_rebuild_hint(e)}")
    extra = sorted(set(found) - set(e["files"]))
    if extra:
        raise ZooError(f"zoo entry {name!r} has a file the manifest does not list: {folder / extra[0]}"
                       f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}; remove it, or "
                       f"{_rebuild_hint(e)}")
    if folder_digest(found) != e["sha256"]:
        raise ZooError(f"zoo entry {name!r}: its files match the manifest but their digest is not the recorded "
                       f"sha256 {e['sha256']}; the manifest is out of date. {_rebuild_hint(e)}")
    return folder


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
    if "folder" in e:
        from .device import default_device

        model, meta = _load_folder(verify(name, root), device or default_device())
    else:
        model, meta = load_checkpoint(verify(name, root), device)
    if meta["model_class"] != e["model_class"] or meta["config"] != e["config"]:
        raise ZooError(f"zoo checkpoint {name!r}: the file says {meta['model_class']}{meta['config']}, the "
                       f"manifest says {e['model_class']}{e['config']}; the manifest is out of date")
    schedule = schedule_of(meta) if meta.get("schedule") else None          # None: a flow model (book §7)
    return ZooModel(name=name, model=model, schedule=schedule,
                    prediction_type=meta["prediction_type"], meta=meta)


def _load_folder(folder: Path, device) -> tuple[nn.Module, dict]:
    """A folder entry's model and metadata: a DDPM pipeline's UNet (book §3.7), chapter 4's VAE or
    Stable Diffusion folder (:mod:`diffcourse.latent.zoo_folders`), chapter 6's ControlNet or LoRA folders,
    or chapter 7's LCM U-Net."""
    from .control.train_lora import is_lora_folder, load_lora_folder
    from .latent.zoo_folders import is_latent_folder, load_folder

    if is_lora_folder(folder):                          # a style LoRA (book §6.5)
        return load_lora_folder(folder, device)
    if is_latent_folder(folder):
        return load_folder(folder, device)
    config = folder / "config.json"
    kind = json.loads(config.read_text(encoding="utf-8")).get("_class_name") if config.exists() else None
    if kind == "ControlNetModel":                       # chapter 6's ControlNets (book §6.5)
        from .control.controlnet import load_controlnet_folder

        return load_controlnet_folder(folder, device)
    if kind == "UNet2DConditionModel":                  # chapter 7's LCM U-Net (book §7.9)
        from .flow.lcm import load_lcm_unet
        from .latent.zoo_folders import read_metadata as read_folder_metadata

        return load_lcm_unet(folder, device), read_folder_metadata(folder)
    from .models.diffusers_unet import load_denoiser

    return load_denoiser(folder, device)


def register(path: str | Path, name: str | None = None, **extra) -> dict:
    """Write (or overwrite) the manifest entry for the checkpoint at ``path``; returns the entry.

    The manifest is the MANIFEST.json beside the file. The entry copies the checkpoint's own metadata
    (command, model class and config, schedule, data, steps) and adds its sha256 and size, the
    parameter count, and ``extra`` (for example the measured training time).
    """
    path = Path(path)
    name = name or path.stem
    if path.is_dir():                                    # a diffusers folder (book §3.7, §4)
        model, meta = _load_folder(path, "cpu")
        files = folder_files(path)
        where = dict(folder=path.name, files=files, sha256=folder_digest(files),
                     bytes=sum((path / rel).stat().st_size for rel in files))
    else:
        meta = read_metadata(path)
        model, _ = load_checkpoint(path, "cpu")
        where = dict(file=path.name, sha256=sha256_of(path), bytes=path.stat().st_size)
    new = dict(meta, name=name, **where, parameters=sum(p.numel() for p in model.parameters()), **extra)
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


def dependencies(name: str, root: str | Path | None = None) -> list[str]:
    """The entries whose checkpoint ``name``'s command reads (book §2.1), sorted: an argument of the command,
    other than its ``--out``, that is another entry's name or its path (``zoo/<file>`` or ``zoo/<folder>``),
    such as ``--vae zoo/shapes_vae`` of the Stable Diffusion folder or ``--teacher toy_eight_gaussians_fm``."""
    import shlex

    argv = shlex.split(entry(name, root)["command"])
    args = {a.rstrip("/") for i, a in enumerate(argv) if i == 0 or argv[i - 1] != "--out"}
    found = []
    for other in names(root):
        e = entry(other, root)
        where = e.get("folder") or e.get("file")
        refs = {other} | ({f"zoo/{where}".rstrip("/"), str(where).rstrip("/")} if where else set())
        if other != name and args & refs:
            found.append(other)
    return sorted(found)


def rebuild_order(selected: list[str], root: str | Path | None = None) -> list[str]:
    """``selected`` entries in an order that rebuilds every dependency (:func:`dependencies`) before the
    entries that read it, otherwise alphabetical (book §2.1). A dependency that is not selected is not
    added: its shipped checkpoint is used. Raises :class:`ZooError` on a cycle."""
    pending, order, visiting = sorted(set(selected)), [], set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ZooError(f"the zoo commands depend on each other in a cycle through {name!r}")
        visiting.add(name)
        for dep in dependencies(name, root):
            if dep in pending:
                visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in pending:
        visit(name)
    return order


def rebuild(selected: list[str] | None = None, root: str | Path | None = None) -> dict[str, bool]:
    """Re-run the recorded command of each entry (all by default) from the repository root (book §2.1),
    dependencies first (:func:`rebuild_order`: the VAE before the Stable Diffusion folder that encodes with it).

    The rebuilt file replaces the shipped one; the manifest is left as it is, so a following
    :func:`verify` says whether the rebuild reproduced the shipped bytes. Returns ``{name: same_bytes}``.
    Retraining is byte-identical on the machine that made the zoo; another CPU or torch build may
    round differently, and then only the quality checks in ``tests/test_zoo.py`` are expected to hold.
    A folder entry is compared by its digest over every file (:func:`folder_digest`).
    """
    import shlex
    import subprocess
    import sys

    same = {}
    for name in rebuild_order(selected or names(root), root):
        e = entry(name, root)
        argv = shlex.split(e["command"])
        if argv[:1] == ["python"]:
            argv[0] = sys.executable
        print(f"[zoo] {name}: {e['command']}", flush=True)
        subprocess.run(argv, cwd=ZOO_DIR.parent, check=True)
        if "folder" in e:
            same[name] = folder_digest(folder_files(zoo_dir(root) / e["folder"])) == e["sha256"]
        else:
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
