"""The course's implementations of the graded notebooks' exercises that later exercises call.

The tests of a later exercise run the student's function with these in place of the student's
earlier ones (:func:`diffcourse.grading.reference`), so each mistake costs one exercise. Each has
the exact signature the notebook asks for and delegates to the package where the package has it.

Chapter 2 (``ch02_sampling``): :func:`q_sample`, :func:`ddpm_step`, :func:`ddim_step`, :func:`make_grid`,
:func:`ddim_sample`. Chapter 4 (``ch04_latent``): :func:`reparameterise`, :func:`kl_divergence`,
:func:`measure_scale`, :func:`encode_latents`, :func:`encode_text`, :func:`sample_latents`,
:func:`decode_latents`.
"""
from __future__ import annotations

import math

import torch

from .samplers.grids import make_timesteps

__all__ = ["q_sample", "ddpm_step", "ddim_step", "make_grid", "ddim_sample", "reparameterise", "kl_divergence",
           "measure_scale", "encode_latents", "encode_text", "sample_latents", "decode_latents"]


def q_sample(x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps, one t per sample (book §1.1, eq. 1.2)."""
    ab = alpha_bar.to(x0.device)[t.to(x0.device)].to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))   # (N, 1, ..)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def ddpm_step(eps_hat: torch.Tensor, x_t: torch.Tensor, t: int, alpha_bar: torch.Tensor,
              generator: torch.Generator | None) -> torch.Tensor:
    """One DDPM step x_t -> x_{t-1} with the posterior variance (book §2.2, eq. 2.1; eqs. 1.8-1.9)."""
    ab_t = float(alpha_bar[t])
    ab_prev = float(alpha_bar[t - 1]) if t > 0 else 1.0
    beta = 1 - ab_t / ab_prev
    x0_hat = (x_t - math.sqrt(1 - ab_t) * eps_hat) / math.sqrt(ab_t)                          # eq. 1.11
    mean = math.sqrt(ab_prev) * beta / (1 - ab_t) * x0_hat + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t) * x_t
    if t == 0:
        return mean
    z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
    return mean + math.sqrt((1 - ab_prev) / (1 - ab_t) * beta) * z


def ddim_step(eps_hat: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float, eta: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One DDIM step x_t -> x_t' with stochasticity eta (book §2.3, eq. 2.2)."""
    x0_hat = (x_t - math.sqrt(1 - alpha_bar_t) * eps_hat) / math.sqrt(alpha_bar_t)
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))
    x = math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps_hat
    if eta > 0:
        x = x + sigma * torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
    return x


def make_grid(num_steps: int, T: int, spacing: str) -> torch.Tensor:
    """Descending "leading" or "trailing" grid of num_steps of T steps (book §2.3, eq. 2.3). (n,) long."""
    if spacing not in ("leading", "trailing"):
        raise ValueError(f"unknown spacing {spacing!r}")
    return make_timesteps(num_steps, T, spacing)


def ddim_sample(model, x_T: torch.Tensor, alpha_bar: torch.Tensor, timesteps: torch.Tensor, eta: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM on a grid, each step to the next grid point, the last to alpha_bar = 1 (book §2.3, eqs. 2.2-2.3)."""
    ts = [int(t) for t in timesteps]
    x = x_T
    for k, t in enumerate(ts):
        ab_prev = float(alpha_bar[ts[k + 1]]) if k + 1 < len(ts) else 1.0
        eps_hat = model(x, torch.full((len(x),), t, dtype=torch.long, device=x.device))
        x = ddim_step(eps_hat, x, float(alpha_bar[t]), ab_prev, eta, generator)
    return x


# ----------------------------------------------------------------------------------- chapter 4: latent diffusion

def reparameterise(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps drawn from ``generator`` (book §4.2, eq. 4.3). Same shape as ``mean``."""
    from .latent.vae import reparameterise as _reparameterise

    return _reparameterise(mean, logvar, generator)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per example, summed over every dimension but the first: (N,) (book §4.2, eq. 4.4)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


@torch.no_grad()
def measure_scale(vae, images: torch.Tensor, generator: torch.Generator | None, batch_size: int = 64) -> float:
    """s = 1 / std of posterior samples z over all ``images`` (N, 3, H, W), encoded ``batch_size`` at a time
    (book §4.3, eq. 4.6)."""
    from .latent.vae import moments

    zs = [reparameterise(*moments(vae, images[i:i + batch_size]), generator)
          for i in range(0, len(images), batch_size)]                        # each (b, 4, h, w)
    return float(1.0 / torch.cat(zs).std())


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, scale: float, generator: torch.Generator | None) -> torch.Tensor:
    """Scaled latents s z, z a posterior sample of ``images`` (N, 3, H, W) -> (N, 4, h, w) (book §4.3, eq. 4.6)."""
    from .latent.vae import moments

    return scale * reparameterise(*moments(vae, images), generator)


@torch.no_grad()
def encode_text(tokenizer, text_encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids (N, L) long, attention_mask (N, L), c (N, L, d)) of ``prompts`` as StableDiffusionPipeline
    encodes them: padded to L = ``tokenizer.model_max_length`` with the padding token, truncated, and the
    whole padded sequence through the text encoder with no mask (book §4.5, eq. 4.8)."""
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    c = text_encoder(tokens.input_ids.to(text_encoder.device))[0]             # (N, L, d)
    return tokens.input_ids, tokens.attention_mask, c


@torch.no_grad()
def sample_latents(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor, z_T: torch.Tensor, num_steps: int,
                   guidance_scale: float = 4.0, generator: torch.Generator | None = None,
                   progress: bool = False) -> torch.Tensor:
    """The latent denoising loop with classifier-free guidance, both passes in one U-Net call per step
    (book §4.8, eq. 4.11), with any diffusers scheduler. cond, uncond (N, L, d); z_T (N, 4, h, w) -> z_0."""
    from tqdm.auto import tqdm

    scheduler.set_timesteps(num_steps)
    z = z_T * scheduler.init_noise_sigma                                      # (N, 4, h, w)
    context = torch.cat([uncond, cond])                                       # (2N, L, d)
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="latent denoising"):
        z_in = scheduler.scale_model_input(torch.cat([z, z]), t)             # (2N, 4, h, w)
        eps_uncond, eps_cond = unet(z_in, t, encoder_hidden_states=context).sample.chunk(2)
        eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)          # eq. 4.11
        z = scheduler.step(eps, t, z, generator=generator).prev_sample
    return z


@torch.no_grad()
def decode_latents(vae, z_scaled: torch.Tensor, scale: float) -> torch.Tensor:
    """Images in [0, 1] (N, 3, H, W) from scaled latents (N, 4, h, w): D(z' / s), then (x + 1) / 2 clamped
    (book §4.3, eq. 4.6)."""
    x = vae.decode(z_scaled / scale).sample                                   # (N, 3, H, W), about [-1, 1]
    return ((x + 1) / 2).clamp(0, 1)
