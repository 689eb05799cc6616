"""A CFG sampler for the course's class-conditional digits (book §5.5, eqs. 5.3, 5.6, 5.7 with DDIM, eq. 2.2).

:func:`guided_class_model` wraps a class-conditional U-Net (``model(x_t, t, class_labels=...)``, label
``num_classes`` = null, book §3.5) as the plain ``model(x_t, t)`` that chapter 2's samplers take; each call
is one network evaluation of batch 2N. :func:`sample_cfg_digits` runs it through
:func:`diffcourse.samplers.sample_ddim`.
"""
from __future__ import annotations

import torch

from .cfg import both_branches, guided_eps
from .rescale import rescale_guidance
from .schedule import guidance_weights

__all__ = ["null_label_of", "guided_class_model", "sample_cfg_digits"]


def null_label_of(model) -> int:
    """The "no class" label of a course U-Net: its ``config.num_classes`` (book §3.5)."""
    k = getattr(getattr(model, "config", None), "num_classes", 0)
    if not k:
        raise ValueError("classifier-free guidance needs a class-conditional model trained with label dropout "
                         "(config.num_classes > 0)")
    return int(k)


def guided_class_model(model, class_labels: torch.Tensor, w: float, *, phi: float = 0.0, kind: str = "constant",
                       interval: tuple[float, float] | None = None, T: int = 1000, null_label: int | None = None):
    """``model(x_t, t)`` returning the guided eps of eq. 5.3 for ``class_labels`` (N,) (book §5.5).

    ``w``: diffusers' guidance_scale (1 = conditional, 0 = unconditional); ``phi``: guidance rescale (eq. 5.6);
    ``kind``/``interval``/``T``: w over t (eq. 5.7). Both branches in one call of batch 2N.
    """
    null = null_label_of(model) if null_label is None else int(null_label)
    labels = torch.as_tensor(class_labels).long()                                  # (N,)

    def call(x, t, y):
        return model(x, t, class_labels=y)

    @torch.no_grad()
    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = labels.to(x_t.device)                                                  # (N,)
        eps_u, eps_c = both_branches(call, x_t, t, y, torch.full_like(y, null))    # (N, C, H, W) each
        ws = guidance_weights(t, w, kind, interval, T)                             # (N,)
        eps = guided_eps(eps_u, eps_c, ws)                                         # eq. 5.3
        return rescale_guidance(eps, eps_c, phi) if phi else eps                   # eq. 5.6
    return guided


@torch.no_grad()
def sample_cfg_digits(model, schedule, class_labels: torch.Tensor, w: float, *, x_T=None, seed: int = 0,
                      num_steps: int = 50, eta: float = 0.0, phi: float = 0.0, kind: str = "constant",
                      interval: tuple[float, float] | None = None, size: int = 8, progress: bool = False):
    """Guided DDIM samples (N, 1, size, size), not clamped, for ``class_labels`` (N,) (book §5.5).

    x_T: a starting tensor, or None to draw it from ``seed`` (the same x_T for every w, so a grid across
    w compares like with like). T is the schedule's length.
    """
    from ..samplers import sample_ddim

    labels = torch.as_tensor(class_labels).long()
    if x_T is None:
        x_T = torch.randn(len(labels), 1, size, size, generator=torch.Generator().manual_seed(seed))
    guided = guided_class_model(model, labels, w, phi=phi, kind=kind, interval=interval, T=schedule.T)
    generator = torch.Generator().manual_seed(seed + 1) if eta > 0 else None
    return sample_ddim(guided, x_T, schedule, num_steps=num_steps, eta=eta, generator=generator,
                       progress=progress)
