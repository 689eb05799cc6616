"""The forward-process posterior q(x_{t-1} | x_t, x0) (book §1.3, eqs. 1.8-1.9).

q(x_{t-1} | x_t, x0) = N(mu~_t(x_t, x0), beta~_t I) with::

    mu~_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0
            + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t         (eq. 1.8)
    beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t                    (eq. 1.9)

DDPM's reverse step (§2.2, eq. 2.1) is this posterior with x0 replaced by the model's estimate.
"""
from __future__ import annotations

import torch

from .schedules import NoiseSchedule
from .targets import gather_like

__all__ = ["q_posterior_mean_variance"]


def q_posterior_mean_variance(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                              schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (book §1.3, eqs. 1.8-1.9).

    x0, x_t: (N, ...); t: (N,) long, 0-based. Returns (mean (N, ...), variance (N, 1, ..., 1),
    log_variance (N, 1, ..., 1)); the log-variance is clipped at t=0 where beta~ = 0, as in DDPM.
    """
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x_t {tuple(x_t.shape)} must have the same shape")
    coef_x0 = gather_like(schedule.posterior_mean_coef_x0, t, x_t)                 # (N, 1, ..., 1)
    coef_xt = gather_like(schedule.posterior_mean_coef_xt, t, x_t)                 # (N, 1, ..., 1)
    mean = coef_x0 * x0 + coef_xt * x_t                                             # (N, ...)  eq. 1.8
    variance = gather_like(schedule.posterior_variance, t, x_t)                     # (N, 1, ..., 1)  eq. 1.9
    log_variance = gather_like(schedule.posterior_log_variance_clipped, t, x_t)    # (N, 1, ..., 1)
    return mean, variance, log_variance
