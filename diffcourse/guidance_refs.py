"""The course's implementations of chapter 5's graded exercises (``ch05_guidance``), for the notebook's tests.

The tests of a later exercise run the student's function with these in place of the student's earlier ones
(:func:`diffcourse.grading.reference`), so each mistake costs one exercise; every function has the exact
signature the notebook asks for and delegates to :mod:`diffcourse.guidance` where the package has it.
(Chapters 2 and 4 keep theirs in :mod:`diffcourse.notebook_refs`; the notebook imports both.)

:func:`drop_condition` (eq. 5.1), :func:`guided_eps` (eq. 5.3), :func:`both_branches` (§5.3),
:func:`cfg_model` (eqs. 5.3, 5.5), :func:`rescale_guidance` (eq. 5.6), :func:`interval_weights` (eq. 5.7).
"""
from __future__ import annotations

import torch

from .guidance import cfg as _cfg
from .guidance.dropout import drop_condition as _drop_condition
from .guidance.rescale import rescale_guidance as _rescale_guidance
from .guidance.schedule import guidance_weights

__all__ = ["drop_condition", "guided_eps", "both_branches", "cfg_model", "rescale_guidance", "interval_weights"]


def drop_condition(labels: torch.Tensor, p_uncond: float, null_label: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Labels (N,) each replaced by ``null_label`` where ``torch.rand(N, generator=generator) < p_uncond``
    (book §5.1, eq. 5.1); a new tensor, the input untouched."""
    return _drop_condition(labels, p_uncond, null_label, generator)


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u), w diffusers' guidance_scale, a number or one per sample (N,) (book §5.2, eq. 5.3)."""
    return _cfg.guided_eps(eps_uncond, eps_cond, w)


def both_branches(model, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                  uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_uncond, eps_cond), each (N, ...), from ONE call ``model(x, t, class_labels=y)`` of batch 2N (book §5.3)."""
    return _cfg.both_branches(lambda x, tt, y: model(x, tt, class_labels=y), x_t, t, cond, uncond)


def cfg_model(model, labels: torch.Tensor, w: float, null_label: int, negative_labels: torch.Tensor | None = None):
    """``eps_fn(x_t, t)``: the guided estimate for ``labels`` (N,), one model call of 2N per call; the unconditional
    branch uses ``negative_labels`` (N,) when given, else ``null_label`` (book §5.3-5.4, eqs. 5.3, 5.5)."""
    labels = torch.as_tensor(labels).long().clone()                                         # (N,)
    uncond = torch.full_like(labels, int(null_label)) if negative_labels is None else \
        torch.as_tensor(negative_labels).long().clone()                                     # (N,)

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_u, eps_c = both_branches(model, x_t, t, labels.to(x_t.device), uncond.to(x_t.device))   # (N, ...) each
        return guided_eps(eps_u, eps_c, w)                                                  # eq. 5.3 / 5.5
    return eps_fn


def rescale_guidance(eps_guided: torch.Tensor, eps_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al.'s guidance rescale, stds per sample over every non-batch dimension (book §5.6, eq. 5.6)."""
    return _rescale_guidance(eps_guided, eps_cond, phi)


def interval_weights(t: torch.Tensor, w: float, t_lo: float, t_hi: float) -> torch.Tensor:
    """(N,) float32 per-sample guidance scales: w where t_lo <= t <= t_hi, 1 elsewhere (book §5.7, eq. 5.7)."""
    return guidance_weights(t, w, "interval", (t_lo, t_hi)).to(torch.as_tensor(t).device)
