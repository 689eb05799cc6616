"""The forward (noising) process and the simple training loss (book §1.1, eq. 1.2; §1.4, eq. 1.10).

Random draws: every function that draws takes an explicit ``torch.Generator``. Draws happen on the
generator's device, in the data's dtype, and are then moved to the data's device (the same rule as
diffusers' ``randn_tensor``), so a CPU generator gives the same numbers whatever device the data is on.
"""
from __future__ import annotations

from typing import Callable

import torch

from .schedules import NoiseSchedule
from .targets import gather_like, target

__all__ = ["q_sample", "sample_noise_like", "sample_timesteps", "simple_loss", "diffusion_loss"]


def _generator_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def sample_noise_like(x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """eps ~ N(0, I) shaped like x0, drawn from ``generator`` (book §1.1, eq. 1.2).

    Drawn on the generator's device in x0's dtype, then moved to x0's device. Returns (N, ...).
    """
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                      device=_generator_device(generator, x0))
    return eps.to(x0.device)


def sample_timesteps(n: int, schedule: NoiseSchedule, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """t ~ Uniform{0, ..., T-1}, an (n,) long tensor (book §1.4, eq. 1.10), moved to ``device``."""
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(0, schedule.T, (n,), generator=generator, device=gen_device)
    return t.to(device if device is not None else gen_device)


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x0) in closed form (book §1.1, eq. 1.2).

    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.
    x0: (N, ...) any trailing shape; t: (N,) long, 0-based as in diffusers; noise: like x0.
    Returns (N, ...) on x0's device and dtype. Same as diffusers' ``DDPMScheduler.add_noise``.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    t = torch.as_tensor(t)
    if t.ndim != 1 or len(t) != len(x0):
        raise ValueError(f"t must be an (N,) tensor with N = {len(x0)} (one timestep per sample), "
                         f"got shape {tuple(t.shape)}")
    if bool((t < 0).any()) or bool((t >= schedule.T).any()):
        raise ValueError(f"timesteps must lie in 0..{schedule.T - 1}, got min {int(t.min())}, max {int(t.max())}")
    sqrt_ab = gather_like(schedule.sqrt_alpha_bar, t, x0)                          # (N, 1, ..., 1)
    sqrt_1m_ab = gather_like(schedule.sqrt_one_minus_alpha_bar, t, x0)             # (N, 1, ..., 1)
    return sqrt_ab * x0 + sqrt_1m_ab * noise                                        # (N, ...)


def simple_loss(pred: torch.Tensor, target_: torch.Tensor) -> torch.Tensor:
    """L_simple = mean ||target - prediction||^2 over every element (book §1.4, eq. 1.10). Returns a scalar."""
    if pred.shape != target_.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target_.shape)}")
    return torch.mean((pred.float() - target_.float()) ** 2)


def diffusion_loss(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                   schedule: NoiseSchedule, generator: torch.Generator | None = None,
                   prediction_type: str = "epsilon", *, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """One Monte-Carlo estimate of the simple loss (book §1.4, eq. 1.10).

    Draws t ~ Uniform{0..T-1} (N,) and then eps ~ N(0, I) like x0, in that order, from ``generator``
    (either can be passed in instead), builds x_t with eq. 1.2, and returns
    mean ||target - model(x_t, t)||^2 for the target of ``prediction_type`` (eqs. 1.10-1.12).
    """
    if t is None:
        t = sample_timesteps(len(x0), schedule, generator, device=x0.device)      # (N,)
    if noise is None:
        noise = sample_noise_like(x0, generator)                                   # (N, ...)
    x_t = q_sample(x0, t, schedule, noise)                                          # (N, ...)
    return simple_loss(model(x_t, t), target(prediction_type, x0, noise, t, schedule))
