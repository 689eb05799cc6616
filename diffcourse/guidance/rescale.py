"""Guidance rescale (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed", §3.4;
book §5.6, eq. 5.6).

A large w inflates the guided prediction's scale (eq. 5.3 extrapolates), which over-exposes images.
Rescale brings the per-sample standard deviation back to the conditional prediction's and blends::

    eps_rescaled = eps_w * std(eps_c) / std(eps_w),     eps = phi eps_rescaled + (1 - phi) eps_w      (eq. 5.6)

std is over all dimensions but the batch (unbiased, as torch.std). The paper used phi = 0.7. This is the
computation of diffusers' ``rescale_noise_cfg`` (``guidance_rescale=phi``); tests check they agree.
"""
from __future__ import annotations

import torch

__all__ = ["rescale_guidance"]


def rescale_guidance(eps_guided: torch.Tensor, eps_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Eq. 5.6: eps_w (N, ...) rescaled towards std(eps_c) (N, ...) per sample, mixed with weight phi in [0, 1]."""
    if not 0.0 <= float(phi) <= 1.0:
        raise ValueError(f"phi (guidance_rescale) must be in [0, 1], got {phi!r}")
    dims = list(range(1, eps_guided.ndim))
    std_cond = eps_cond.std(dim=dims, keepdim=True)                             # (N, 1, ..., 1)
    std_guided = eps_guided.std(dim=dims, keepdim=True)                         # (N, 1, ..., 1)
    rescaled = eps_guided * (std_cond / std_guided)                             # (N, ...)
    return phi * rescaled + (1 - phi) * eps_guided                              # (N, ...), eq. 5.6
