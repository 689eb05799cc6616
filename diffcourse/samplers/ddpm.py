"""DDPM ancestral sampling (Ho et al. 2020; book §2.2, eq. 2.1).

    x_{t'} = mu~(x_t, x0_hat) + sqrt(beta~) z,   z ~ N(0, I),

the posterior of eqs. 1.8-1.9 with x0 replaced by the model's estimate. On a sub-grid t -> t' the
same formulas hold with the step's own beta = 1 - alpha_bar_t / alpha_bar_t' (DDPMScheduler with
fewer inference steps does the same). The variance is DDPM's "fixed_small" choice beta~.

Random draws: x_T first (only when given as a shape), then one N(0, I) draw per step whose t > 0,
after that step's model call -- the order of diffusers' DDPMScheduler, so both give the same samples
from the same generator.
"""
from __future__ import annotations

import math

import torch

from ..forward import sample_noise_like
from ..schedules import NoiseSchedule
from ..targets import predict_eps_x0
from .common import (Recorder, alpha_bar_f64, batched_timesteps, call_model, check_prediction_type, initial_sample,
                     resolve_timesteps)

__all__ = ["ddpm_coefficients", "sample_ddpm"]


def ddpm_coefficients(schedule: NoiseSchedule, timesteps: torch.Tensor) -> list[tuple[float, float, float, float]]:
    """Per step (alpha_bar_t, coef of x0, coef of x_t, std) on a grid (book §1.3 eqs. 1.8-1.9, §2.2 eq. 2.1).

    Python floats in float64, computed once per grid so the sampling loop does no schedule look-ups.
    The step after the last grid point lands on alpha_bar = 1 (the clean sample).
    """
    ab = alpha_bar_f64(schedule).tolist()
    t = timesteps.tolist()
    coefs = []
    for i, t_i in enumerate(t):
        ab_t = ab[t_i]
        ab_prev = ab[t[i + 1]] if i + 1 < len(t) else 1.0
        beta = 1 - ab_t / ab_prev                                                  # beta of this (sub-)step
        c_x0 = math.sqrt(ab_prev) * beta / (1 - ab_t)                              # eq. 1.8
        c_xt = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)                    # eq. 1.8
        var = max((1 - ab_prev) / (1 - ab_t) * beta, 1e-20)                       # eq. 1.9 (clamped like diffusers)
        coefs.append((ab_t, c_x0, c_xt, math.sqrt(var)))
    return coefs


def sample_ddpm(model, x_T, schedule: NoiseSchedule, *, timesteps=None, num_steps: int | None = None,
                spacing: str = "leading", steps_offset: int = 0, generator: torch.Generator | None = None,
                prediction_type: str = "epsilon", callback=None, return_trajectory: bool = False,
                progress: bool = False, clip_x0: float | None = None, device=None):
    """DDPM ancestral sampling with the posterior variance (book §2.2, eq. 2.1).

    The shared interface is documented in :mod:`diffcourse.samplers`. Default grid: all T steps
    (``num_steps=None``). ``clip_x0``: clamp x0_hat to [-clip_x0, clip_x0] before the posterior;
    the course default is no clipping (2-D toy data is not in [-1, 1]); diffusers' DDPMScheduler
    defaults to ``clip_sample=True``, which is ``clip_x0=1.0``.
    """
    check_prediction_type(prediction_type)
    if timesteps is None and num_steps is None:
        num_steps = schedule.T
    ts = resolve_timesteps(schedule, timesteps, num_steps, spacing, steps_offset)       # (n,) long
    x = initial_sample(x_T, generator, device)                                          # (N, ...)
    coefs = ddpm_coefficients(schedule, ts)
    t_batch = batched_timesteps(ts, len(x), x.device)                                   # (n, N)
    rec = Recorder(len(ts), x, ts, callback, return_trajectory, progress, "DDPM")
    t_list = ts.tolist()
    for i in rec.steps():
        ab_t, c_x0, c_xt, std = coefs[i]
        out = call_model(model, x, t_batch[i])                                          # (N, ...)
        _, x0 = predict_eps_x0(out, x, ab_t, prediction_type)                           # (1) x0_hat, eq. 1.11/1.12
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        x_next = c_x0 * x0 + c_xt * x                                                   # (2) mean mu~, eq. 1.8
        if t_list[i] > 0:
            x_next = x_next + std * sample_noise_like(x, generator)                     # (3) + sqrt(beta~) z, eq. 2.1
        x = x_next
        rec.record(i, x, x0)
    return rec.finish(x)
