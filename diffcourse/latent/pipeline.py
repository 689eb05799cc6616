"""The course's parts as the real ``StableDiffusionPipeline``, saved and loaded offline (book §4.8).

    text -> tokenizer -> CLIPTextModel -> c (eq. 4.8)
    z_T ~ N(0, I) -> scheduler steps with eps_theta(z_t, t, c) and guidance -> z_0   (eqs. 4.9-4.11)
    image = D(z_0 / s)                                                            (eq. 4.6)

:func:`assemble_pipeline` builds it from the course's VAE, text encoder, tokenizer and U-Net, with a
``DDIMScheduler`` whose betas are the course's schedule; :func:`save_pipeline` writes it with
``save_pretrained`` (float16 weights, no safety checker, ``diffcourse.json`` beside it);
:func:`load_pipeline` loads it back with ``from_pretrained(folder, local_files_only=True)`` in float32 --
as text-to-image, img2img or inpainting on the same weights -- and :func:`swap_scheduler` swaps in
DDIM, DPM-Solver++(2M), Euler or Euler ancestral. :func:`generate` checks the prompts (no empty
prompt, no word the tokenizer does not know as one token) and returns images in [-1, 1].

A full Stable Diffusion folder loads the same way: set ``DIFFCOURSE_SD_PATH`` (or pass ``folder``).
Nothing here downloads anything.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .tokenizer import unknown_words
from .zoo_folders import write_metadata
from .zoo_folders import read_metadata as read_pipeline_metadata   # the name the book and callers use

__all__ = ["DEFAULTS", "SCHEDULERS", "ENV_VAR", "assemble_pipeline", "save_pipeline", "read_pipeline_metadata",
           "pipeline_folder", "load_pipeline", "swap_scheduler", "check_prompts", "check_image", "check_mask",
           "generate"]

#: The chapter's default sampling settings (book §4.8): 25 DDIM steps, guidance 4.
DEFAULTS = {"num_inference_steps": 25, "guidance_scale": 4.0}
ENV_VAR = "DIFFCOURSE_SD_PATH"
ZOO_NAME = "shapes_sd"


def _scheduler_classes() -> dict:
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler)

    return {"ddim": (DDIMScheduler, {}),
            "dpm2m": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2)),
            "euler": (EulerDiscreteScheduler, {}),
            "euler_a": (EulerAncestralDiscreteScheduler, {})}


#: Scheduler names for :func:`swap_scheduler` (book §4.8; the samplers of §2.2-§2.5).
SCHEDULERS = ("ddim", "dpm2m", "euler", "euler_a")


def assemble_pipeline(vae, text_encoder, tokenizer, unet, schedule, prediction_type: str = "epsilon"):
    """A ``StableDiffusionPipeline`` of the course's parts, DDIM with the course's ``schedule`` (book §4.8).

    No safety checker and no feature extractor (``requires_safety_checker=False``: nothing to warn about).
    The scheduler is SD's DDIM grid ("leading", steps_offset 1) landing on alpha_bar = 1 after the last
    step (``set_alpha_to_one=True``), as the course's samplers do, so that
    :func:`diffcourse.latent.sample_latent.sample_latent` reproduces the pipeline exactly.
    ``prediction_type``: what the U-Net was trained to predict ("epsilon", "v_prediction", "sample").
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ..models.diffusers_unet import make_scheduler

    ddpm = make_scheduler(schedule, prediction_type=prediction_type)          # checks the betas match
    scheduler = DDIMScheduler.from_config(ddpm.config, set_alpha_to_one=True, steps_offset=1, clip_sample=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_pipeline(folder: str | Path, pipe, **info) -> Path:
    """``save_pretrained`` with float16 weights, plus ``diffcourse.json`` holding ``info`` (book §4.8)."""
    import copy

    folder = Path(folder)
    half = copy.deepcopy(pipe)
    for part in (half.vae, half.text_encoder, half.unet):
        part.half()                                                           # float16 on disk: half the bytes
    half.save_pretrained(str(folder), safe_serialization=True)
    return write_metadata(folder, info)


def pipeline_folder(folder: str | Path | None = None) -> Path:
    """Which folder to load (book §4.8): ``folder``, else ``$DIFFCOURSE_SD_PATH``, else the zoo's verified
    ``shapes_sd``. A folder without ``model_index.json`` is an error that names it."""
    if folder is None and os.environ.get(ENV_VAR):
        folder = os.environ[ENV_VAR]
    if folder is None:
        from .. import zoo

        return zoo.verify(ZOO_NAME)
    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (no model_index.json); point "
                                f"{ENV_VAR} or `folder` at a folder written by save_pretrained")
    return folder


def load_pipeline(folder: str | Path | None = None, kind: str = "text2img", scheduler: str | None = None,
                  device: torch.device | str = "cpu", progress: bool = False):
    """``from_pretrained`` of a local pipeline folder, offline, float32 (book §4.8).

    ``kind``: "text2img" (``StableDiffusionPipeline``), "img2img" or "inpaint", all on the same weights.
    ``scheduler``: one of :data:`SCHEDULERS` (default: the folder's own). ``progress``: diffusers' bars.
    """
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    classes = {"text2img": StableDiffusionPipeline, "img2img": StableDiffusionImg2ImgPipeline,
               "inpaint": StableDiffusionInpaintPipeline}
    if kind not in classes:
        raise ValueError(f"kind must be one of {sorted(classes)}, got {kind!r}")
    from transformers.utils import logging as transformers_logging

    folder = pipeline_folder(folder)
    shown = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    if not progress:                                   # both libraries' "Loading ..." bars off
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    try:
        pipe = classes[kind].from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    finally:
        if shown[0]:
            diffusers_logging.enable_progress_bar()
        if shown[1]:
            transformers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=not progress)
    if scheduler is not None:
        swap_scheduler(pipe, scheduler)
    return pipe.to(device)


def swap_scheduler(pipe, name: str):
    """Replace ``pipe.scheduler`` by DDIM, DPM-Solver++(2M), Euler or Euler ancestral built from the same
    config (same betas and grid) (book §4.8; samplers of §2.2-§2.5). Returns the pipeline."""
    classes = _scheduler_classes()
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")
    cls, extra = classes[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    return pipe


def check_prompts(tokenizer, prompts: list[str]) -> None:
    """Raise ``ValueError`` for an empty prompt or a word the tokenizer does not know as one token (book §4.5).

    (The empty prompt is what classifier-free guidance uses internally; as the request itself it is a mistake.)
    """
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty; describe a shape, e.g. 'a small red circle at the top left'")
        unknown = unknown_words(tokenizer, prompt)
        if unknown:
            raise ValueError(f"prompt {i} ({prompt!r}) has words the model never saw: {unknown}; it knows "
                             f"{len(tokenizer.get_vocab())} tokens (see diffcourse.latent.tokenizer.caption_words)")
        n = len(tokenizer(prompt).input_ids)
        if n > tokenizer.model_max_length:
            raise ValueError(f"prompt {i} has {n} tokens, more than the {tokenizer.model_max_length} the text "
                             f"encoder takes")


def check_image(image: torch.Tensor, size: int, name: str = "image") -> None:
    """Raise ``ValueError`` unless ``image`` is (N, 3, size, size) (book §4.8, img2img and inpainting)."""
    if image.ndim != 4 or tuple(image.shape[1:]) != (3, size, size):
        raise ValueError(f"{name} must be (N, 3, {size}, {size}) in [-1, 1]; got {tuple(image.shape)}")


def check_mask(mask: torch.Tensor, image: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``mask`` is (N, 1, H, W) matching ``image`` (N, 3, H, W) (book §4.8)."""
    n, _, h, w = image.shape
    if mask.ndim != 4 or tuple(mask.shape) != (n, 1, h, w):
        raise ValueError(f"mask must be (N, 1, H, W) = ({n}, 1, {h}, {w}) with 1 where to repaint; "
                         f"got {tuple(mask.shape)}")


def generate(pipe, prompts: list[str], seed: int = 0, image: torch.Tensor | None = None,
             mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Run ``pipe`` on ``prompts`` with a seeded generator; images (N, 3, H, W) in [-1, 1] (book §4.8).

    ``image`` (img2img / inpainting) and ``mask`` (inpainting, 1 = repaint) are (N, 3, H, W) in [-1, 1]
    and (N, 1, H, W) in [0, 1]. ``kwargs`` override :data:`DEFAULTS` (steps, guidance_scale, strength...).
    """
    prompts = list(prompts)
    check_prompts(pipe.tokenizer, prompts)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    call = dict(DEFAULTS, **kwargs)
    if image is not None:
        check_image(image, size)
        call["image"] = (image.float() + 1) / 2                                # the pipelines take [0, 1]
    if mask is not None:
        if image is None:
            raise ValueError("inpainting needs the image to repaint as well as the mask")
        check_mask(mask, image)
        call["mask_image"] = mask.float()
        call.update(height=size, width=size)
    generator = torch.Generator().manual_seed(seed)
    out = pipe(prompts, generator=generator, output_type="pt", **call).images    # (N, 3, H, W) in [0, 1]
    return out * 2 - 1
