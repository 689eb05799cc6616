"""The exact marginal velocity of a Gaussian mixture: samplers checked with no training (book §7.3, eqs. 7.9-7.10).

The minimiser of the flow-matching loss (eq. 7.3) is v*(x, t) = E[eps - x0 | x_t = x] (eq. 7.4). For
mixture data it has a closed form, and the course already has it: the path of eq. 7.1 is the
variance-preserving path of eq. 1.2 scaled by a number. With s(t) = sqrt((1 - t)^2 + t^2),

    x_t / s(t) = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps,   alpha_bar(t) = (1 - t)^2 / s(t)^2   (eq. 7.10)

so the posterior means E[eps | x_t] and E[x0 | x_t] are chapter 2's exact ones
(:meth:`diffcourse.gmm.GaussianMixture.eps` and ``x0_mean``, eq. 2.7) at that alpha_bar, and

    v*(x, t) = E[eps | x_t = x] - E[x0 | x_t = x]                                                (eq. 7.9)

A sampler driven by v* has no learning error, so what it gets wrong is its own discretisation error:
the convergence orders of Euler and Heun (eq. 7.8) are measured on it, and flow matching is compared
with DDPM at equal NFE through it (:mod:`.compare`).
"""
from __future__ import annotations

import torch

from ..gmm import GaussianMixture

__all__ = ["vp_alpha_bar", "vp_scale", "GaussianMixtureVelocity"]


def vp_scale(t: torch.Tensor) -> torch.Tensor:
    """s(t) = sqrt((1 - t)^2 + t^2): x_t / s(t) has the variance-preserving form of eq. 1.2 (book §7.3, eq. 7.10)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return ((1 - t) ** 2 + t**2).sqrt()


def vp_alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """alpha_bar(t) = (1 - t)^2 / ((1 - t)^2 + t^2), the VP noise level of the FM time t (book §7.3, eq. 7.10).

    1 at t = 0 (data), 1/2 at t = 1/2, 0 at t = 1 (noise). float64, t's shape.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    return (1 - t) ** 2 / ((1 - t) ** 2 + t**2)


class GaussianMixtureVelocity(torch.nn.Module):
    """``model(x, t) -> v*(x, t)`` for mixture data on the path of eq. 7.1 (book §7.3, eq. 7.9).

    ``x``: (N, D); ``t``: (N,) float tensor or a scalar in [0, 1]. Computed in float64 (chapter 2's
    :class:`~diffcourse.gmm.GaussianMixture`) and returned in x's dtype. No parameters; a Module only so
    that code which calls ``.eval()`` or ``.to()`` on a model works with it.
    """

    def __init__(self, gmm: GaussianMixture):
        super().__init__()
        self.gmm = gmm

    def posterior(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[eps | x_t = x], E[x0 | x_t = x]), each (N, D) float64 (book §7.3, eq. 7.10)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1)       # (N,) or (1,)
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"t must lie in [0, 1], got [{float(t.min())}, {float(t.max())}]")
        t = t.expand(len(x)) if len(t) == 1 else t                                      # (N,)
        x_vp = x.to(torch.float64) / vp_scale(t)[:, None]                               # (N, D) eq. 7.10
        ab = vp_alpha_bar(t)                                                            # (N,)
        return self.gmm.eps(x_vp, ab), self.gmm.x0_mean(x_vp, ab)                      # chapter 2's eq. 2.7

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """v*(x, t) = E[eps | x] - E[x0 | x] (book §7.3, eq. 7.9). (N, D), (N,) -> (N, D)."""
        eps, x0 = self.posterior(x, t)
        return (eps - x0).to(x.dtype)                                                   # (N, D)
