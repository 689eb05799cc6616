"""Guidance over time: an interval, or a ramp (book §5.7, eq. 5.7).

Guidance matters most at intermediate noise levels: at high noise it pulls every sample towards the
class mean early (less diversity), at low noise there is little left to decide. Kynkäänniemi et al.
(2024) apply it only in an interval of t and use the conditional model (w = 1) elsewhere::

    w(t) = w  if t_lo <= t <= t_hi,  else 1                                        (eq. 5.7)

``kind="linear"`` instead ramps w(t) = 1 + (w - 1) t / T (strong early, none at the end), and
``kind="constant"`` is plain CFG. Returns per-sample weights for :func:`diffcourse.guidance.guided_eps`.
"""
from __future__ import annotations

import torch

__all__ = ["KINDS", "guidance_weights"]

KINDS = ("constant", "interval", "linear")


def guidance_weights(t: torch.Tensor, w: float, kind: str = "constant", interval: tuple[float, float] | None = None,
                     T: int = 1000) -> torch.Tensor:
    """w(t) for the timesteps t (N,) -> (N,) float32 (eq. 5.7). ``interval`` = (t_lo, t_hi), both included."""
    t = torch.as_tensor(t).float()                                              # (N,)
    if kind == "constant":
        return torch.full_like(t, float(w))
    if kind == "interval":
        if interval is None or not interval[0] <= interval[1]:
            raise ValueError(f"kind='interval' needs interval=(t_lo, t_hi) with t_lo <= t_hi, got {interval!r}")
        inside = (t >= interval[0]) & (t <= interval[1])                        # (N,) bool
        return torch.where(inside, torch.full_like(t, float(w)), torch.ones_like(t))
    if kind == "linear":
        return 1.0 + (float(w) - 1.0) * t / T                                   # (N,)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
