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

__all__ = ["is_latent_folder", "load_folder"]


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

        from .pipeline import read_pipeline_metadata
        from .unet import LatentTextDenoiser

        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), dtype=torch.float32,
                                                     local_files_only=True)
        unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), dtype=torch.float32, local_files_only=True)
        return LatentTextDenoiser(text_encoder, unet).to(device).eval(), read_pipeline_metadata(folder)
    from .train_vae import load_vae, read_metadata

    return load_vae(folder, device), read_metadata(folder)
