"""The flow-matching path, its velocity target and the loss; where on the path to train (book §7.1, §7.5).

Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022) joins a data point x0 and a noise
draw eps ~ N(0, I) by a straight line, with t = 0 at the data and t = 1 at the noise (diffusers'
convention: its ``sigma`` is this t)::

    x_t = (1 - t) x0 + t eps                                          (eq. 7.1)
    u_t = d x_t / dt = eps - x0                                       (eq. 7.2, the velocity target)
    L_FM = E_{t, x0, eps} || v_theta(x_t, t) - (eps - x0) ||^2        (eq. 7.3)

The minimiser of eq. 7.3 is the *marginal* velocity v*(x, t) = E[eps - x0 | x_t = x] (eq. 7.4), the
field whose ODE dx/dt = v*(x, t) carries N(0, I) at t = 1 to the data at t = 0 (:mod:`diffcourse.flow.samplers`).

Which t to train on (§7.5): uniform t, or SD3's logit-normal t = sigmoid(m + s z), z ~ N(0, 1), which
spends the steps in the middle of the path (eq. 7.12); and SD3's shift t' = a t / (1 + (a - 1) t), which
moves a grid or a training distribution towards the noise end (eq. 7.13). In signal-to-noise terms,
SNR(t) = ((1 - t) / t)^2 and the shift divides it by a^2 at every point (log-SNR drops by 2 log a).

Random draws: :func:`fm_loss` draws t first, then eps, from one generator (as the DDPM loss of
eq. 1.10 does), on the generator's device, then moves them to x0's device.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["interpolate", "velocity_target", "sample_t", "logit_normal_pdf", "shift_time", "snr", "fm_loss",
           "T_SAMPLERS"]

T_SAMPLERS = ("uniform", "logit_normal")


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t (N,) -> (N, 1, ..., 1) on like's device and dtype, to broadcast against like (N, ...)."""
    t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
    if t.ndim == 0:
        t = t.expand(len(like))
    if t.shape != (len(like),):
        raise ValueError(f"t must be a scalar or an (N,) tensor with N = {len(like)}, got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, the straight path from data (t=0) to noise (t=1) (book §7.1, eq. 7.1).

    ``x0``, ``eps``: (N, ...); ``t``: (N,) or a scalar in [0, 1]. Returns (N, ...) in x0's dtype.
    Same as diffusers' ``FlowMatchEulerDiscreteScheduler.scale_noise`` with sigma = t.
    """
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    tt = _per_sample(t, x0)                                                    # (N, 1, ..., 1)
    return (1 - tt) * x0 + tt * eps                                           # (N, ...)


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """u = eps - x0, the velocity of the straight path, the same at every t (book §7.1, eq. 7.2)."""
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    return eps - x0                                                           # (N, ...)


def sample_t(n: int, generator: torch.Generator | None = None, kind: str = "uniform", *, m: float = 0.0,
             s: float = 1.0, shift: float = 1.0) -> torch.Tensor:
    """n training times t in (0, 1), float32 on the generator's device (book §7.5, eqs. 7.12-7.13).

    ``kind="uniform"``: t ~ U(0, 1). ``kind="logit_normal"``: t = sigmoid(m + s z), z ~ N(0, 1) (SD3's
    default is m = 0, s = 1). ``shift`` != 1 then maps every t through :func:`shift_time` (eq. 7.13).
    """
    if kind not in T_SAMPLERS:
        raise ValueError(f"kind must be one of {T_SAMPLERS}, got {kind!r}")
    if s <= 0 or shift <= 0:
        raise ValueError(f"s and shift must be positive, got s={s}, shift={shift}")
    device = generator.device if generator is not None else torch.device("cpu")
    if kind == "uniform":
        t = torch.rand(n, generator=generator, device=device)                  # (n,)
    else:
        z = torch.randn(n, generator=generator, device=device)                 # (n,)
        t = torch.sigmoid(m + s * z)                                           # (n,) eq. 7.12
    return shift_time(t, shift) if shift != 1.0 else t


def logit_normal_pdf(t: torch.Tensor, m: float = 0.0, s: float = 1.0) -> torch.Tensor:
    """Density of t = sigmoid(m + s z) on (0, 1) (book §7.5, eq. 7.12)::

        p(t) = exp(-(logit t - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t))

    ``t``: values in (0, 1); returns float64 densities of t's shape.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    logit = torch.log(t) - torch.log1p(-t)
    return torch.exp(-(logit - m) ** 2 / (2 * s * s)) / (s * math.sqrt(2 * math.pi) * t * (1 - t))


def shift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """SD3's timestep shift t' = a t / (1 + (a - 1) t) (book §7.5, eq. 7.13).

    Fixes 0 and 1, is increasing, a = 1 is the identity, and ``shift_time(., 1/a)`` is its inverse.
    a > 1 moves every t towards the noise end: SNR(t') = SNR(t) / a^2. It is the map diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=a)`` applies to its sigmas. Works on floats and tensors.
    """
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def snr(t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of x_t on the path of eq. 7.1: ((1 - t) / t)^2 (book §7.5, eq. 7.13)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return ((1 - t) / t) ** 2


def fm_loss(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
            generator: torch.Generator | None = None, *, t_sampling: str = "uniform", shift: float = 1.0,
            t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One Monte-Carlo estimate of the flow-matching loss (book §7.1, eq. 7.3).

    Draws t (N,) with :func:`sample_t` and then eps ~ N(0, I) like x0, in that order, from ``generator``
    (either can be passed in instead), builds x_t (eq. 7.1) and returns
    mean || model(x_t, t) - (eps - x0) ||^2 over every element (a float32 scalar). ``model(x_t, t)`` gets
    t as an (N,) float tensor in [0, 1].
    """
    gen_device = generator.device if generator is not None else x0.device
    if t is None:
        t = sample_t(len(x0), generator, t_sampling, shift=shift)                        # (N,)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gen_device)  # (N, ...)
    t, noise = t.to(x0.device, x0.dtype), noise.to(x0.device)
    x_t = interpolate(x0, noise, t)                                                       # (N, ...) eq. 7.1
    pred = model(x_t, t)                                                                  # (N, ...)
    if pred.shape != x0.shape:
        raise ValueError(f"model(x_t, t) must return x_t's shape {tuple(x0.shape)}, got {tuple(pred.shape)}")
    return torch.mean((pred.float() - velocity_target(x0, noise).float()) ** 2)           # eq. 7.3
