"""Euler and Euler ancestral in sigma space (Karras et al. 2022, k-diffusion; book §2.5, eqs. 2.5-2.6).

With sigma = sqrt((1 - alpha_bar) / alpha_bar) (eq. 1.7) and x = x_t / sqrt(alpha_bar) = x0 + sigma eps,
the probability-flow ODE is dx/dsigma = (x - x0_hat) / sigma. The model was trained on x_t, so its
input is scaled back: x_t = x / sqrt(1 + sigma^2) (diffusers' ``scale_model_input``). The two updates are::

    Euler            x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i,   d_i = (x_i - x0_hat) / sigma_i    (eq. 2.5)
    Euler ancestral  step to sigma_down with eq. 2.5, then add sigma_up z:                         (eq. 2.6)
                     sigma_up = eta sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2),
                     sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2)

The sigma grid comes from the timestep grid by linear interpolation (fractional timesteps allowed),
then sigma = 0 at the end; the model gets the float timesteps, as EulerDiscreteScheduler gives them.

Scale convention: ``x_T`` is N(0, I) like every other sampler's and is multiplied by
sqrt(1 + sigma_max^2). (diffusers' pipelines multiply by ``init_noise_sigma`` = sigma_max for
"linspace"/"trailing", a 1 / (2 sigma_max^2) relative difference.) Callback and trajectory x_t are
divided by sqrt(1 + sigma^2), back to the variance-preserving scale.

Random draws (ancestral only, eta > 0): x_T first (only when given as a shape), then one N(0, I)
draw per step (the last one included) after that step's model call -- EulerAncestralDiscreteScheduler's order.
"""
from __future__ import annotations

import math

import torch

from ..forward import sample_noise_like
from ..schedules import NoiseSchedule
from ..targets import predict_eps_x0
from .common import Recorder, batched_timesteps, call_model, check_prediction_type, initial_sample, resolve_timesteps
from .grids import sigma_at

__all__ = ["euler_sigmas", "sample_euler", "sample_euler_ancestral"]


def euler_sigmas(schedule: NoiseSchedule, timesteps: torch.Tensor) -> list[float]:
    """[sigma(t_1), ..., sigma(t_n), 0]: the sigma grid of a timestep grid (book §2.5, eq. 2.5). n+1 floats."""
    return sigma_at(schedule, timesteps).tolist() + [0.0]


def _setup(schedule, x_T, timesteps, num_steps, spacing, steps_offset, generator, prediction_type, device):
    check_prediction_type(prediction_type)
    if timesteps is None and num_steps is None:
        num_steps = 50
    ts = resolve_timesteps(schedule, timesteps, num_steps, spacing, steps_offset, discrete=False)  # (n,) float
    sigmas = euler_sigmas(schedule, ts)                                                  # n+1 floats
    x_vp = initial_sample(x_T, generator, device)                                        # (N, ...) ~ N(0, I)
    return ts, sigmas, x_vp


def _denoise(model, x, sigma, t, prediction_type):
    """x0_hat from the sigma-space state x: the model sees x / sqrt(1 + sigma^2) (book §2.5)."""
    scale = 1.0 / math.sqrt(1.0 + sigma * sigma)                                         # sqrt(alpha_bar)
    x_t = x * scale                                                                      # (N, ...) model input
    out = call_model(model, x_t, t)                                                      # (N, ...)
    return predict_eps_x0(out, x_t, scale * scale, prediction_type)[1]                   # x0_hat, eq. 1.11/1.12


def sample_euler(model, x_T, schedule: NoiseSchedule, *, timesteps=None, num_steps: int | None = None,
                 spacing: str = "linspace", steps_offset: int = 0, generator: torch.Generator | None = None,
                 prediction_type: str = "epsilon", callback=None, return_trajectory: bool = False,
                 progress: bool = False, device=None):
    """Euler's method for the probability-flow ODE in sigma space, deterministic (book §2.5, eq. 2.5).

    The shared interface is documented in :mod:`diffcourse.samplers`. Default grid: 50 unrounded
    "linspace" steps (EulerDiscreteScheduler's default); the model receives float timesteps.
    """
    ts, sigmas, x_vp = _setup(schedule, x_T, timesteps, num_steps, spacing, steps_offset, generator,
                              prediction_type, device)
    x = x_vp * math.sqrt(1.0 + sigmas[0] ** 2)                                          # (N, ...) sigma space
    t_batch = batched_timesteps(ts, len(x), x.device)                                    # (n, N) float
    rec = Recorder(len(ts), x_vp, ts, callback, return_trajectory, progress, "Euler")
    for i in rec.steps():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = _denoise(model, x, sigma, t_batch[i], prediction_type)                      # (1) x0_hat
        d = (x - x0) / sigma                                                             # (2) dx/dsigma
        x = x + (sigma_next - sigma) * d                                                 # (3) Euler step, eq. 2.5
        if rec.active:
            rec.record(i, x / math.sqrt(1.0 + sigma_next**2), x0)
    return rec.finish(x)


def sample_euler_ancestral(model, x_T, schedule: NoiseSchedule, *, timesteps=None, num_steps: int | None = None,
                           spacing: str = "linspace", steps_offset: int = 0,
                           generator: torch.Generator | None = None, prediction_type: str = "epsilon",
                           callback=None, return_trajectory: bool = False, progress: bool = False,
                           eta: float = 1.0, device=None):
    """Euler ancestral: an Euler step down to sigma_down, then fresh noise sigma_up (book §2.5, eq. 2.6).

    The shared interface is documented in :mod:`diffcourse.samplers`. ``eta`` in [0, 1] scales
    sigma_up (1: EulerAncestralDiscreteScheduler; 0: plain Euler). Default grid as :func:`sample_euler`.
    """
    if not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (1: ancestral, 0: plain Euler), got {eta!r}")
    ts, sigmas, x_vp = _setup(schedule, x_T, timesteps, num_steps, spacing, steps_offset, generator,
                              prediction_type, device)
    x = x_vp * math.sqrt(1.0 + sigmas[0] ** 2)                                          # (N, ...) sigma space
    t_batch = batched_timesteps(ts, len(x), x.device)                                    # (n, N) float
    rec = Recorder(len(ts), x_vp, ts, callback, return_trajectory, progress, "Euler ancestral")
    for i in rec.steps():
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))  # eq. 2.6
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)                              # eq. 2.6
        x0 = _denoise(model, x, sigma, t_batch[i], prediction_type)                      # (1) x0_hat
        d = (x - x0) / sigma                                                             # (2) dx/dsigma
        x = x + (sigma_down - sigma) * d                                                 # (3) Euler step to sigma_down
        if eta > 0:
            x = x + sigma_up * sample_noise_like(x, generator)                           # (4) + sigma_up z, eq. 2.6
        if rec.active:
            rec.record(i, x / math.sqrt(1.0 + sigma_next**2), x0)
    return rec.finish(x)
