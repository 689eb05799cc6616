"""img2img and inpainting: what ``strength`` and the mask mean, counted and measured (book §6.6, eqs. 6.7-6.9).

img2img starts the reverse process part-way, from the noised input (eq. 4.12). With n scheduler steps and
strength sigma in [0, 1], diffusers runs the *last* k of the n steps::

    k = min(floor(n * sigma), n),   t_s = the first of those k timesteps                          (eq. 6.7)
    z_{t_s} = sqrt(abar_{t_s}) E(x) s + sqrt(1 - abar_{t_s}) eps                                  (eqs. 4.12, 6.8)

so sigma = 0 returns (the VAE's reconstruction of) the input and sigma = 1 starts from almost pure noise. The
share of the input's amplitude left in the start latent is sqrt(abar_{t_s}) (eq. 6.8); :func:`strength_table`
lists it for a grid of strengths and :func:`input_survival` measures how close the output stays to the input.

Inpainting with a text-to-image U-Net (4 input channels, as the course's) keeps the unmasked region by
re-noising the input's latent to each step's level and pasting it outside the mask; the mask is 1 where to
repaint (eq. 6.9). :func:`inpaint_change` measures the change inside and outside the mask.
"""
from __future__ import annotations

import copy

import torch

__all__ = ["img2img_steps", "img2img_timesteps", "signal_share", "strength_table", "count_denoising_steps",
           "input_survival", "inpaint_change"]


def img2img_steps(num_inference_steps: int, strength: float) -> int:
    """k = min(floor(n sigma), n): how many of the n steps img2img runs at strength sigma (eq. 6.7)."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return min(int(num_inference_steps * strength), num_inference_steps)


def img2img_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The timesteps img2img visits: the last k of the scheduler's n (eq. 6.7). (k,) long; [0] is t_s."""
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_inference_steps)
    k = img2img_steps(num_inference_steps, strength)
    start = (num_inference_steps - k) * scheduler.order
    return scheduler.timesteps[start:]


def signal_share(scheduler, t: int) -> tuple[float, float]:
    """(sqrt(abar_t), sqrt(1 - abar_t)): the input's and the noise's amplitude in z_t (eqs. 4.12, 6.8)."""
    abar = float(scheduler.alphas_cumprod[int(t)])
    return abar ** 0.5, (1 - abar) ** 0.5


def strength_table(scheduler, num_inference_steps: int = 25,
                   strengths=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> list[dict]:
    """For each strength: steps run, t_s, sqrt(abar_{t_s}) and sqrt(1 - abar_{t_s}) (book §6.6, eqs. 6.7-6.8).

    With zero steps nothing is noised: t_s is None and the input's share is 1.
    """
    rows = []
    for s in strengths:
        ts = img2img_timesteps(scheduler, num_inference_steps, s)
        signal, noise = signal_share(scheduler, int(ts[0])) if len(ts) else (1.0, 0.0)
        rows.append(dict(strength=float(s), steps=len(ts), t_start=int(ts[0]) if len(ts) else None,
                         signal=signal, noise=noise))
    return rows


def count_denoising_steps(pipe, **call) -> int:
    """Run ``pipe(**call)`` and count its denoising steps with ``callback_on_step_end`` (book §6.6)."""
    count = 0

    def on_step(_pipe, _i, _t, kwargs):
        nonlocal count
        count += 1
        return kwargs

    pipe(callback_on_step_end=on_step, output_type="pt", **call)
    return count


@torch.no_grad()
def input_survival(pipe, images: torch.Tensor, prompts: list[str], strengths=(0.2, 0.4, 0.6, 0.8, 1.0),
                   seed: int = 0, num_inference_steps: int = 25, guidance_scale: float = 4.0) -> list[dict]:
    """How much of the input an img2img pipeline keeps, per strength (book §6.6, eq. 6.8), measured.

    images (N, 3, H, W) in [-1, 1]; ``pipe``: any Stable Diffusion pipeline (turned into img2img with
    ``from_pipe``). Each row: strength, steps run, sqrt(abar_{t_s}), the mean ``|output - input|``, the
    correlation between output and input pixels (1 = unchanged, about 0 = unrelated) and the correlation with
    the VAE's reconstruction D(E(x)) -- what strength 0 would return, the most img2img can keep.
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    def corr(u: torch.Tensor, v: torch.Tensor) -> float:
        a, b = u.flatten() - u.mean(), v.flatten() - v.mean()
        return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-12))

    recon = pipe.vae.decode(pipe.vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)   # (N, 3, H, W)
    rows = []
    for s in strengths:
        out = img2img(list(prompts), image=(images + 1) / 2, strength=s, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed),
                      output_type="pt").images * 2 - 1                          # (N, 3, H, W)
        ts = img2img_timesteps(pipe.scheduler, num_inference_steps, s)
        rows.append(dict(strength=float(s), steps=len(ts),
                         signal=signal_share(pipe.scheduler, int(ts[0]))[0] if len(ts) else 1.0,
                         mean_abs_change=float((out - images).abs().mean()),
                         correlation=corr(out, images), correlation_reconstruction=corr(out, recon)))
    return rows


@torch.no_grad()
def inpaint_change(pipe, images: torch.Tensor, masks: torch.Tensor, prompts: list[str], strength: float = 1.0,
                   seed: int = 0, num_inference_steps: int = 25, guidance_scale: float = 4.0) -> dict:
    """Mean ``|output - input|`` inside and outside the mask (1 = repaint) of an inpainting run (book §6.6).

    images (N, 3, H, W) in [-1, 1], masks (N, 1, H, W) in {0, 1}.
    """
    from diffusers import StableDiffusionInpaintPipeline

    inpaint = StableDiffusionInpaintPipeline.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    size = images.shape[-1]
    out = inpaint(list(prompts), image=(images + 1) / 2, mask_image=masks.float(), strength=strength,
                  height=size, width=size, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                  generator=torch.Generator().manual_seed(seed), output_type="pt").images * 2 - 1
    change = (out - images).abs().mean(1, keepdim=True)                         # (N, 1, H, W)
    inside = masks > 0.5
    return dict(inside=float(change[inside].mean()), outside=float(change[~inside].mean()), images=out)
