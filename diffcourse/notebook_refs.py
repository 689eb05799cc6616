"""The course's implementations of the graded notebooks' exercises that later exercises call.

The tests of a later exercise run the student's function with these in place of the student's
earlier ones (:func:`diffcourse.grading.reference`), so each mistake costs one exercise. Each has
the exact signature the notebook asks for and delegates to the package where the package has it.
"""
from __future__ import annotations

import math

import torch

from .samplers.grids import make_timesteps

__all__ = ["q_sample", "ddpm_step", "ddim_step", "make_grid", "ddim_sample"]


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
