"""DPM-Solver++(2M): the second-order multistep solver in log-SNR time (Lu et al. 2022; book §2.4, eq. 2.4).

In lambda = log(alpha / sigma) (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), half the log-SNR of
eq. 1.7) the probability-flow ODE for the data prediction x0_hat is solved exactly up to the
linear extrapolation of x0_hat between the last two steps:

    h_i   = lambda_{i+1} - lambda_i,   r_i = h_{i-1} / h_i
    D_i   = x0_i + (x0_i - x0_{i-1}) / (2 r_i)                        (D_i = x0_i on first-order steps)
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h_i} - 1) D_i                      (eq. 2.4)

The first step has no previous x0_hat and is first order (it is then exactly DDIM, eta = 0); the last
step lands on sigma = 0, where the update is x0_hat itself (first order, "lower_order_final").
This is DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
solver_type="midpoint", final_sigmas_type="zero"), diffusers' default. It draws no noise.
"""
from __future__ import annotations

import math

import torch

from ..schedules import NoiseSchedule
from ..targets import predict_eps_x0
from .common import (Recorder, alpha_bar_f64, batched_timesteps, call_model, check_prediction_type, initial_sample,
                     resolve_timesteps)

__all__ = ["dpmpp_2m_coefficients", "sample_dpmpp_2m"]


def dpmpp_2m_coefficients(schedule: NoiseSchedule,
                          timesteps: torch.Tensor) -> list[tuple[float, float, float, float]]:
    """Per step (alpha_bar_i, sigma_{i+1}/sigma_i, -alpha_{i+1}(e^{-h}-1), 1/(2 r_i) or 0) (book §2.4, eq. 2.4).

    Python floats in float64, computed once per grid. The last step lands on sigma = 0: (0, 1, 0).
    """
    ab = alpha_bar_f64(schedule)[timesteps].tolist()
    lam = [0.5 * (math.log(a) - math.log1p(-a)) for a in ab]                      # lambda = log(alpha/sigma)
    n = len(ab)
    coefs = []
    for i in range(n):
        if i == n - 1:                                                            # to sigma = 0: x = x0_hat
            coefs.append((ab[i], 0.0, 1.0, 0.0))
            continue
        h = lam[i + 1] - lam[i]
        c_x = math.sqrt((1 - ab[i + 1]) / (1 - ab[i]))                            # sigma_{i+1} / sigma_i
        c_d = -math.sqrt(ab[i + 1]) * math.expm1(-h)                              # -alpha_{i+1} (e^{-h} - 1)
        w_prev = 0.0 if i == 0 else 1.0 / (2 * (lam[i] - lam[i - 1]) / h)         # 1 / (2 r_i)
        coefs.append((ab[i], c_x, c_d, w_prev))
    return coefs


def sample_dpmpp_2m(model, x_T, schedule: NoiseSchedule, *, timesteps=None, num_steps: int | None = None,
                    spacing: str = "linspace", steps_offset: int = 0, generator: torch.Generator | None = None,
                    prediction_type: str = "epsilon", callback=None, return_trajectory: bool = False,
                    progress: bool = False, device=None):
    """DPM-Solver++(2M), deterministic (book §2.4, eq. 2.4).

    The shared interface is documented in :mod:`diffcourse.samplers`. Default grid: 20 "linspace" steps
    built the multistep way (n+1 points, the one at t=0 dropped), as DPMSolverMultistepScheduler does.
    ``generator`` is only used to draw x_T from a shape.
    """
    check_prediction_type(prediction_type)
    if timesteps is None and num_steps is None:
        num_steps = 20
    ts = resolve_timesteps(schedule, timesteps, num_steps, spacing, steps_offset, skip_last=True)   # (n,) long
    x = initial_sample(x_T, generator, device)                                          # (N, ...)
    coefs = dpmpp_2m_coefficients(schedule, ts)
    t_batch = batched_timesteps(ts, len(x), x.device)                                   # (n, N)
    rec = Recorder(len(ts), x, ts, callback, return_trajectory, progress, "DPM-Solver++(2M)")
    x0_prev = None
    for i in rec.steps():
        ab_i, c_x, c_d, w_prev = coefs[i]
        out = call_model(model, x, t_batch[i])                                          # (N, ...)
        _, x0 = predict_eps_x0(out, x, ab_i, prediction_type)                           # (1) data prediction x0_i
        d = x0 if w_prev == 0.0 else x0 + w_prev * (x0 - x0_prev)                       # (2) D_i, eq. 2.4
        x = c_x * x + c_d * d                                                           # (3) x_{i+1}, eq. 2.4
        x0_prev = x0
        rec.record(i, x, x0)
    return rec.finish(x)
