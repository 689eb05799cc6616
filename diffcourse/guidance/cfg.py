"""The guided estimate, its two conventions, and both branches in one call (book §5.2-5.4, eqs. 5.3-5.5).

Bayes' rule turns the two predictions into an implicit classifier: with eps = -sigma_t * score,
grad log p(c | x_t) = grad log p(x_t | c) - grad log p(x_t) = -(eps_c - eps_u) / sigma_t (eq. 5.2), so
adding w - 1 times the classifier's gradient to the conditional score gives::

    eps_w = eps_u + w (eps_c - eps_u)                                              (eq. 5.3)

**Conventions.** ``w`` here is diffusers' ``guidance_scale``: w = 0 is the unconditional model, w = 1 the
conditional one (no guidance), w > 1 guidance. Ho & Salimans (2022) write the same line as
eps~ = (1 + w') eps_c - w' eps_u, so w' = w - 1 (eq. 5.4): their w' = 0 is no guidance and their
"w = 3" is guidance_scale 4. (diffusers' pipelines skip the unconditional pass when guidance_scale <= 1,
so they cannot run 0 < w < 1 or w = 0 at all: they return the conditional model there.)

**Two passes in one call.** eps_u and eps_c are two network evaluations; stacking [x_t; x_t] with
[null; c] makes them one call of batch 2N, as the pipeline does (unconditional half first).

**Negative prompts** replace the null condition by a condition to move away from (eq. 5.5)::

    eps_w = eps(x_t, t, c_neg) + w (eps(x_t, t, c) - eps(x_t, t, c_neg))          (eq. 5.5)
"""
from __future__ import annotations

import torch

__all__ = ["guided_eps", "paper_w", "guidance_scale_from_paper", "broadcast_w", "both_branches"]


def broadcast_w(w, like: torch.Tensor) -> torch.Tensor | float:
    """A float w, or a per-sample w (N,) reshaped to (N, 1, ..., 1) to broadcast against ``like`` (N, ...)."""
    if isinstance(w, torch.Tensor) and w.ndim > 0:
        if w.shape != (like.shape[0],):
            raise ValueError(f"a per-sample w must be (N,) = ({like.shape[0]},), got {tuple(w.shape)}")
        return w.to(like.device, like.dtype).reshape(-1, *[1] * (like.ndim - 1))   # (N, 1, ..., 1)
    return float(w)


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u), eq. 5.3 (w: diffusers' guidance_scale; a float or a per-sample (N,) tensor).

    eps_uncond, eps_cond (N, ...) -> (N, ...). w = 1 gives eps_cond, w = 0 eps_uncond. With eps_uncond the
    prediction for a negative prompt this is eq. 5.5.
    """
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"the two branches differ in shape: {tuple(eps_uncond.shape)} vs {tuple(eps_cond.shape)}")
    return eps_uncond + broadcast_w(w, eps_cond) * (eps_cond - eps_uncond)     # (N, ...), eq. 5.3


def paper_w(guidance_scale: float) -> float:
    """Ho & Salimans' w' of eq. 5.4 for a diffusers ``guidance_scale`` (= the course's w): w' = w - 1."""
    return float(guidance_scale) - 1.0


def guidance_scale_from_paper(w_paper: float) -> float:
    """diffusers' ``guidance_scale`` (the course's w) for Ho & Salimans' w' (eq. 5.4): w = w' + 1."""
    return float(w_paper) + 1.0


def both_branches(call, x_t: torch.Tensor, t: torch.Tensor, cond, uncond) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_u, eps_c) from ONE network call on a batch of 2N (book §5.3).

    ``call(x, t, condition)`` evaluates the network; x_t (N, ...), t (N,), ``cond`` and ``uncond`` (N, ...)
    conditions (labels (N,) or text embeddings (N, L, d); ``uncond`` is the null condition or a negative
    prompt). The batch is [uncond; cond], the order of diffusers' pipelines.
    """
    out = call(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond]))   # (2N, ...)
    eps_uncond, eps_cond = out.chunk(2)                                                # (N, ...) each
    return eps_uncond, eps_cond
