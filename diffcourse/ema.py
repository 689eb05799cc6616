"""An exponential moving average (EMA) of a model's parameters (book §2.1, training a denoiser).

Diffusion models are sampled with averaged weights: the raw weights jitter from batch to batch
(each step sees only a few timesteps per sample), and the average is a visibly better denoiser.
After each optimiser step, every parameter's shadow copy moves a little towards it::

    shadow <- decay_k * shadow + (1 - decay_k) * theta,    decay_k = min(decay, (1 + k) / (10 + k))

with k = step - 1 (the first update, k = 0, is a plain copy). The warm-up term (1 + k)/(10 + k)
is 0.18 at k = 1, 0.5 at k = 8 and 0.9 at k = 80: early on the average forgets its random
initialisation quickly; later it settles at ``decay``. The same rule as diffusers'
``EMAModel(decay=..., use_ema_warmup=False)``, so the two agree number for number.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_decay", "EMA"]


def ema_decay(step: int, decay: float) -> float:
    """The decay used at the ``step``-th update (1-based), with warm-up (book §2.1).

    0 at the first update (the shadow becomes a plain copy), then min(decay, (1 + k)/(10 + k)), k = step - 1.
    """
    k = step - 1
    if k <= 0:
        return 0.0
    return min(decay, (1 + k) / (10 + k))


class EMA:
    """Shadow copies (float32) of a model's floating-point parameters and buffers (book §2.1).

    ``update(model)`` after every optimiser step; ``copy_to(model)`` writes the average into a
    model (for sampling or saving); ``state_dict()`` / ``load_state_dict()`` for resuming.
    Buffers (for example running statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.step = 0
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()
                       if p.requires_grad}
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move every shadow towards the model's current value; returns the decay used (book §2.1)."""
        self.step += 1
        d = ema_decay(self.step, self.decay)
        for name, p in model.named_parameters():
            if name in self.shadow:
                s = self.shadow[name]
                s.lerp_(p.detach().to(s.dtype), 1.0 - d)          # s <- d * s + (1 - d) * p
        for name, b in model.named_buffers():
            self.buffers[name].copy_(b)
        return d

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Overwrite ``model``'s parameters and buffers with the averages; returns ``model``."""
        params = dict(model.named_parameters())
        missing = set(self.shadow) - set(params)
        if missing:
            raise KeyError(f"model has no parameters named {sorted(missing)[:5]}; "
                           f"was this EMA built from a different architecture?")
        for name, s in self.shadow.items():
            params[name].copy_(s)
        bufs = dict(model.named_buffers())
        for name, b in self.buffers.items():
            bufs[name].copy_(b)
        return model

    def to(self, device: torch.device | str) -> "EMA":
        """Move the shadows to ``device`` (keep them beside the model they follow)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "step": self.step,
                "shadow": {k: v.clone() for k, v in self.shadow.items()},
                "buffers": {k: v.clone() for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise KeyError("EMA state has different parameter names from this EMA's model")
        self.decay, self.step = float(state["decay"]), int(state["step"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
        for k, v in state.get("buffers", {}).items():
            self.buffers[k].copy_(v)
