"""The course's implementations of the graded notebooks' exercises that later exercises call.

The tests of a later exercise run the student's function with these in place of the student's
earlier ones (:func:`diffcourse.grading.reference`), so each mistake costs one exercise. Each has
the exact signature the notebook asks for and delegates to the package where the package has it.

Chapter 2 (``ch02_sampling``): :func:`q_sample`, :func:`ddpm_step`, :func:`ddim_step`, :func:`make_grid`,
:func:`ddim_sample`. Chapter 4 (``ch04_latent``): :func:`reparameterise`, :func:`kl_divergence`,
:func:`measure_scale`, :func:`encode_latents`, :func:`encode_text`, :func:`sample_latents`,
:func:`decode_latents`. Chapter 7 (``ch07_flow``): :func:`interpolate`, :func:`velocity_target`, :func:`fm_loss`,
:func:`time_grid`, :func:`euler_step`, :func:`sample_euler`, :func:`heun_step`, :func:`sample_heun`, :func:`patchify`,
:func:`unpatchify`, :func:`modulate`, :func:`consistency_fn`, :func:`cd_target`.
"""
from __future__ import annotations

import math

import torch

from .samplers.grids import make_timesteps

__all__ = ["q_sample", "ddpm_step", "ddim_step", "make_grid", "ddim_sample", "reparameterise", "kl_divergence",
           "measure_scale", "encode_latents", "encode_text", "sample_latents", "decode_latents",
           "interpolate", "velocity_target", "fm_loss", "time_grid", "euler_step", "sample_euler", "heun_step",
           "sample_heun", "patchify", "unpatchify", "modulate", "consistency_fn", "cd_target"]


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


# ----------------------------------------------------------------------------------- chapter 7: flow matching, DiT

def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, one t per sample: x0, eps (N, ...), t (N,) -> (N, ...) (book §7.1, eq. 7.1)."""
    from .flow.path import interpolate as _interpolate

    return _interpolate(x0, eps, t)


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """u = eps - x0, the velocity of the straight path (book §7.1, eq. 7.2). (N, ...)."""
    return eps - x0


def fm_loss(model, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The flow-matching loss (book §7.1, eq. 7.3): t = torch.rand(N) then eps = torch.randn like x0, both in
    x0's dtype from ``generator``; mean over every element of (model(x_t, t) - (eps - x0))^2. A scalar."""
    t = torch.rand(len(x0), generator=generator, dtype=x0.dtype)                    # (N,)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)                # (N, ...)
    return ((model(interpolate(x0, eps, t), t) - velocity_target(x0, eps)) ** 2).mean()


def time_grid(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """num_steps + 1 float64 times from 1 down to 0, uniform, then shifted (book §7.2, §7.5, eq. 7.13)."""
    from .flow.samplers import time_grid as _time_grid

    return _time_grid(num_steps, shift)


def euler_step(model, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """x + (t_next - t) v(x, t), the model called with t as an (N,) tensor in x's dtype (book §7.2, eq. 7.6)."""
    v = model(x, torch.full((len(x),), float(t), dtype=x.dtype, device=x.device))   # (N, ...)
    return x + (float(t_next) - float(t)) * v


def sample_euler(model, x_1: torch.Tensor, ts: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Euler's method from x_1 at ts[0] through every point of the grid ts (book §7.2, eq. 7.6)."""
    from .flow.samplers import sample_euler_fm

    return sample_euler_fm(model, x_1, ts, progress=progress)


def heun_step(model, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Heun step t -> t_next, a plain Euler step when t_next = 0 (book §7.2, eq. 7.7)."""
    n = len(x)
    v = model(x, torch.full((n,), float(t), dtype=x.dtype, device=x.device))        # (N, ...)
    h = float(t_next) - float(t)
    x_euler = x + h * v
    if float(t_next) == 0.0:
        return x_euler
    v_next = model(x_euler, torch.full((n,), float(t_next), dtype=x.dtype, device=x.device))
    return x + h * 0.5 * (v + v_next)


def sample_heun(model, x_1: torch.Tensor, ts: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Heun's method on the grid ts, 2n - 1 model calls on a grid ending at 0 (book §7.2, eq. 7.7)."""
    from .flow.samplers import sample_heun_fm

    return sample_heun_fm(model, x_1, ts, progress=progress)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, T, p*p*C), row-major patches, features (row, column, channel) (book §7.7, eq. 7.15)."""
    from .flow.dit import patchify as _patchify

    return _patchify(x, p)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, height: int, width: int) -> torch.Tensor:
    """(N, T, p*p*C) -> (N, C, H, W), the inverse of :func:`patchify` (book §7.7, eq. 7.15)."""
    from .flow.dit import unpatchify as _unpatchify

    return _unpatchify(tokens, p, channels, height, width)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (1 + scale) + shift per sample: x (N, T, D), shift and scale (N, D) (book §7.7, eq. 7.16)."""
    from .flow.dit import modulate as _modulate

    return _modulate(x, shift, scale)


def consistency_fn(F, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(x, t) = x - t F(x, t), one t per sample (book §7.9, eq. 7.18). (N, ...)."""
    return x - t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * F(x, t)


@torch.no_grad()
def cd_target(F, teacher, x: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
    """The consistency-distillation target (book §7.9, eq. 7.19): one teacher Euler step from (x, t) to t_prev,
    then the student's f there, under stop-gradient. x (N, ...), t and t_prev (N,) -> (N, ...)."""
    h = (t_prev - t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))                 # (N, 1, ..)
    x_prev = x + h * teacher(x, t)
    return consistency_fn(F, x_prev, t_prev)
