"""Timestep grids: which steps of the 0..T-1 chain a sampler visits (book §2.3, eq. 2.3).

A sampler with n steps evaluates the model at a descending grid t_1 > t_2 > ... > t_n and then
jumps to the clean sample (alpha_bar = 1). The grids below reproduce diffusers' three
``timestep_spacing`` options bit for bit (they are computed with numpy exactly as diffusers does),
so a test can hand a sampler the exact grid a diffusers scheduler uses:

============  ===================================  ====================================
spacing       grid (T = 1000, n = 10)              rule
============  ===================================  ====================================
``leading``   900, 800, ..., 0   (+ steps_offset)  k * (T // n), k = n-1..0
``trailing``  999, 899, ..., 99                    round(T - k T/n) - 1, k = 0..n-1
``linspace``  999, 888, ..., 0                     round(linspace(0, T-1, n)), reversed
============  ===================================  ====================================

``skip_last=True`` is the variant of diffusers' multistep solvers (DPMSolverMultistepScheduler):
build n+1 points and drop the one at t=0, because those solvers jump from the last grid point to
sigma = 0 themselves. ``discrete=False`` keeps the unrounded linspace values (EulerDiscreteScheduler
evaluates the model at fractional timesteps such as 978.6).
"""
from __future__ import annotations

import numpy as np
import torch

from ..schedules import NoiseSchedule

__all__ = ["SPACINGS", "timesteps_leading", "timesteps_trailing", "timesteps_linspace", "make_timesteps",
           "sigma_at"]

SPACINGS = ("leading", "trailing", "linspace")


def _check(num_steps: int, T: int) -> None:
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer in 1..T={T}, got {num_steps!r}")


def timesteps_leading(num_steps: int, T: int, steps_offset: int = 0, skip_last: bool = False) -> torch.Tensor:
    """Leading grid k * (T // n) + steps_offset, descending (book §2.3, eq. 2.3). Returns (n,) long.

    With ``skip_last`` the ratio is T // (n+1), as DPMSolverMultistepScheduler does.
    """
    _check(num_steps, T)
    ratio = T // (num_steps + 1) if skip_last else T // num_steps
    t = (np.arange(0, num_steps + skip_last) * ratio).round()[::-1].astype(np.int64)
    t = t[:-1] if skip_last else t
    return torch.from_numpy(t + steps_offset)


def timesteps_trailing(num_steps: int, T: int) -> torch.Tensor:
    """Trailing grid round(T - k T/n) - 1, which starts at t = T-1 (book §2.3, eq. 2.3). Returns (n,) long."""
    _check(num_steps, T)
    return torch.from_numpy(np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1)


def timesteps_linspace(num_steps: int, T: int, discrete: bool = True, skip_last: bool = False) -> torch.Tensor:
    """Evenly spaced grid from T-1 down to 0 (book §2.3, eq. 2.3).

    Returns (n,) long, or float32 fractional timesteps with ``discrete=False`` (Euler).
    """
    _check(num_steps, T)
    t = np.linspace(0, T - 1, num_steps + skip_last)
    if not discrete:
        return torch.from_numpy(t[::-1].astype(np.float32).copy())
    t = t.round()[::-1].astype(np.int64)
    return torch.from_numpy((t[:-1] if skip_last else t).copy())


def make_timesteps(num_steps: int, T: int, spacing: str = "leading", steps_offset: int = 0, *,
                   discrete: bool = True, skip_last: bool = False) -> torch.Tensor:
    """The grid of ``spacing`` in {"leading", "trailing", "linspace"} (book §2.3, eq. 2.3). Returns (n,).

    ``steps_offset`` applies to "leading" only (as in diffusers); ``discrete=False`` to "linspace" only.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if spacing == "leading":
        t = timesteps_leading(num_steps, T, steps_offset, skip_last)
    elif spacing == "trailing":
        t = timesteps_trailing(num_steps, T)
    else:
        t = timesteps_linspace(num_steps, T, discrete, skip_last)
    return t if discrete else t.to(torch.float32)


def sigma_at(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """sigma(t) = sqrt((1 - alpha_bar)/alpha_bar) at possibly fractional t, linearly interpolated
    between the integer steps like ``np.interp`` in diffusers' EulerDiscreteScheduler (book §1.2 eq. 1.7, §2.5).

    t: (n,) in [0, T-1]; returns (n,) float64 on the CPU.
    """
    sigma = schedule.sigma.detach().cpu().double()                                  # (T,)
    t = torch.as_tensor(t).detach().cpu().double()                                  # (n,)
    lo = t.floor().long().clamp(0, len(sigma) - 2)                                  # (n,)
    w = t - lo                                                                      # (n,) in [0, 1]
    return (1 - w) * sigma[lo] + w * sigma[lo + 1]                                  # (n,)
