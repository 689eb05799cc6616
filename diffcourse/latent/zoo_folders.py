"""Chapter 4's zoo folder entries: the VAE folder and the Stable Diffusion pipeline folder (book §4.2, §4.8).

:func:`diffcourse.zoo.load` and :func:`diffcourse.zoo.register` hand such folders to :func:`load_folder`:
the VAE folder loads as its ``AutoencoderKL``; the pipeline folder as a
:class:`~diffcourse.latent.unet.LatentTextDenoiser` (text encoder + U-Net), ``model(z_t, t, input_ids)``,
with the schedule it was trained with. The pipeline itself comes from
:func:`diffcourse.latent.pipeline.load_pipeline`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["METADATA_FILE", "write_metadata", "read_metadata", "is_latent_folder", "load_folder"]

#: Beside the diffusers files of every chapter 4 folder: the command that made it and its training record.
METADATA_FILE = "diffcourse.json"


def write_metadata(folder: str | Path, info: dict) -> Path:
    """Write ``info`` as :data:`METADATA_FILE` into a saved folder and make every file in it world-readable
    (the grading sandbox reads the zoo as another user) (book §4.2, §4.8). Returns the folder."""
    folder = Path(folder)
    (folder / METADATA_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    return folder


def read_metadata(folder: str | Path) -> dict:
    """The :data:`METADATA_FILE` of a VAE or pipeline folder written by this package (book §4.2, §4.8)."""
    path = Path(folder) / METADATA_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {folder} was not written by diffcourse.latent")
    return json.loads(path.read_text(encoding="utf-8"))


def is_latent_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is one of chapter 4's: a ``StableDiffusionPipeline`` or an ``AutoencoderKL`` (book §4.8)."""
    folder = Path(folder)
    for name in ("model_index.json", "config.json"):
        path = folder / name
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8")).get("_class_name") in (
                "StableDiffusionPipeline", "AutoencoderKL")
    return False


def load_folder(folder: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, metadata) of a chapter 4 folder, offline, float32 (book §4.2, §4.8)."""
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        from transformers import CLIPTextModel
        from diffusers import UNet2DConditionModel

        from .unet import LatentTextDenoiser

        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), dtype=torch.float32,
                                                     local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), dtype=torch.float32, local_files_only=True)
        return LatentTextDenoiser(text_encoder, unet).to(device).eval(), read_metadata(folder)
    from .train_vae import load_vae

    return load_vae(folder, device), read_metadata(folder)
