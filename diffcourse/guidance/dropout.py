"""Condition dropout: one network for p(x | c) and p(x) (book §5.1, eq. 5.1).

Training replaces the condition by the "null" condition with probability p_uncond::

    c~ = null with probability p_uncond, else c;    L = E || eps - eps_theta(x_t, t, c~) ||^2      (eq. 5.1)

so the same weights learn eps(x_t, t, c) and eps(x_t, t, null). For class labels the null condition is
an extra class (the course's U-Nets use label ``num_classes``, book §3.5); for text it is the empty
prompt "" (chapter 4's ``--p-uncond``). Nothing is modified in place.
"""
from __future__ import annotations

import torch

__all__ = ["drop_condition", "drop_prompts"]


def _check_p(p_uncond: float) -> float:
    if not 0.0 <= float(p_uncond) <= 1.0:
        raise ValueError(f"p_uncond must be a probability in [0, 1], got {p_uncond!r}")
    return float(p_uncond)


def drop_condition(labels: torch.Tensor, p_uncond: float, null_label: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Class labels (N,) with each replaced by ``null_label`` with probability ``p_uncond`` (eq. 5.1).

    One uniform draw per label from ``generator`` (on the CPU), in order; returns a new (N,) long tensor
    on the labels' device, the input untouched.
    """
    p = _check_p(p_uncond)
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be (N,) integers, got {tuple(labels.shape)} {labels.dtype}")
    drop = torch.rand(len(labels), generator=generator) < p                      # (N,) bool, CPU
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)   # (N,)


def drop_prompts(prompts: list[str], p_uncond: float, generator: torch.Generator | None = None,
                 null_prompt: str = "") -> list[str]:
    """Prompts with each replaced by the empty prompt with probability ``p_uncond`` (eq. 5.1, text)."""
    p = _check_p(p_uncond)
    drop = torch.rand(len(prompts), generator=generator) < p                     # (N,) bool
    return [null_prompt if d else s for s, d in zip(prompts, drop.tolist())]
