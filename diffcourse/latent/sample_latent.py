"""The course's own latent diffusion loop, next to diffusers' pipeline (book §4.8, eqs. 4.6, 4.8, 4.11).

What ``StableDiffusionPipeline.__call__`` does, written with the course's parts::

    c = TextEncoder(tokenize(prompt)),  c_empty = TextEncoder(tokenize(""))              (eq. 4.8)
    eps_guided(z_t, t) = eps(z_t, t, c_empty) + w (eps(z_t, t, c) - eps(z_t, t, c_empty))   (eq. 4.11)
    z_T ~ N(0, I)  --diffcourse sampler (DDIM, DPM-Solver++(2M), Euler, Euler a)-->  z_0
    image = D(z_0 / s)                                                                   (eq. 4.6)

:func:`schedule_of` reads the course's :class:`~diffcourse.schedules.NoiseSchedule` back from a pipeline's
scheduler (its betas), :func:`guided_denoiser` is eq. 4.11 as a ``model(z_t, t)`` for the samplers of
chapter 2, and :func:`sample_latent` runs the whole loop. With the same seed it draws the same z_T
as the pipeline (diffusers' ``randn_tensor`` rule) and walks the same grid, so its images agree with
:func:`diffcourse.latent.pipeline.generate` to float precision (tests/test_latent_pipeline.py).
"""
from __future__ import annotations

import torch

from ..schedules import NoiseSchedule
from .text_encoder import encode_prompt, prompt_ids

__all__ = ["SAMPLERS", "schedule_of", "guided_denoiser", "sample_latent"]


def _samplers() -> dict:
    from ..samplers.ddim import sample_ddim
    from ..samplers.dpm_solver import sample_dpmpp_2m
    from ..samplers.euler import sample_euler, sample_euler_ancestral

    return {"ddim": sample_ddim, "dpm2m": sample_dpmpp_2m, "euler": sample_euler, "euler_a": sample_euler_ancestral}


#: The course's samplers by the scheduler names of :data:`diffcourse.latent.pipeline.SCHEDULERS` (book §4.8).
SAMPLERS = ("ddim", "dpm2m", "euler", "euler_a")


def schedule_of(scheduler) -> NoiseSchedule:
    """The course's schedule with the betas of a diffusers ``scheduler`` (book §4.8; §1.2, eq. 1.7)."""
    return NoiseSchedule.from_betas(scheduler.betas.double(), name=str(scheduler.config.beta_schedule))


def guided_denoiser(text_encoder, unet, input_ids: torch.Tensor, empty_ids: torch.Tensor, guidance_scale: float):
    """eps_guided(z_t, t) of eq. 4.11 as a ``model(z_t, t)`` for the course's samplers (book §4.8).

    input_ids (N, L) for the prompts, empty_ids (N, L) for the empty prompt. The text is encoded once;
    ``guidance_scale`` <= 1 calls the U-Net on the prompts alone (no guidance), as the pipeline does.
    """
    with torch.no_grad():
        c = encode_prompt(text_encoder, input_ids)                             # (N, L, d)
        c_empty = encode_prompt(text_encoder, empty_ids)                       # (N, L, d)
    guided = guidance_scale > 1.0

    @torch.no_grad()
    def model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not guided:
            return unet(z_t, t, encoder_hidden_states=c).sample                # (N, 4, h, w)
        both = unet(torch.cat([z_t, z_t]), torch.cat([t, t]),
                    encoder_hidden_states=torch.cat([c_empty, c])).sample     # (2N, 4, h, w), the pipeline's batch
        eps_empty, eps_cond = both.chunk(2)
        return eps_empty + guidance_scale * (eps_cond - eps_empty)            # eq. 4.11
    return model


@torch.no_grad()
def sample_latent(pipe, prompts: list[str], seed: int = 0, num_inference_steps: int = 25,
                  guidance_scale: float = 4.0, sampler: str = "ddim", return_latents: bool = False):
    """Text to image with the pipeline's parts and the course's samplers (book §4.8, eqs. 4.6, 4.8, 4.11).

    ``pipe``: a pipeline from :func:`~diffcourse.latent.pipeline.load_pipeline` (only its tokenizer, text
    encoder, U-Net, VAE and scheduler config are used). The grid is the scheduler's own (its
    ``timestep_spacing`` and ``steps_offset``: "leading" and 1 for the course's pipeline), and so is the
    prediction type. Returns images (N, 3, H, W) in [-1, 1], or (images, z_0) with ``return_latents``
    (z_0 (N, 4, h, w), scaled).
    """
    from .pipeline import check_prompts

    samplers = _samplers()
    if sampler not in samplers:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    prompts = list(prompts)
    check_prompts(pipe.tokenizer, prompts)
    ids = prompt_ids(pipe.tokenizer, prompts)                                 # (N, L)
    empty = prompt_ids(pipe.tokenizer, [""] * len(prompts))                   # (N, L)
    model = guided_denoiser(pipe.text_encoder, pipe.unet, ids, empty, guidance_scale)
    config = pipe.scheduler.config
    grid = dict(spacing=config.timestep_spacing, steps_offset=config.steps_offset)   # the scheduler's own grid
    size = pipe.unet.config.sample_size
    shape = (len(prompts), pipe.unet.config.in_channels, size, size)          # z_T's shape
    generator = torch.Generator().manual_seed(seed)                           # z_T: the generator's first draw
    z0 = samplers[sampler](model, shape, schedule_of(pipe.scheduler), num_steps=num_inference_steps,
                           generator=generator, prediction_type=config.prediction_type, **grid)   # (N, 4, h, w)
    images = pipe.vae.decode(z0 / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)   # (N, 3, H, W), eq. 4.6
    return (images, z0) if return_latents else images
