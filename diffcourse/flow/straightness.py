"""How straight are the sampling paths? (book §7.4, eq. 7.11)

Flow matching trains on straight lines from data to noise, but the *marginal* velocity it learns bends
paths wherever lines from different data points cross; the straighter the ODE's paths, the fewer steps
an ODE solver needs (a straight, constant-speed path is solved exactly by one Euler step). Two measures
of a sampled trajectory x(t_0), ..., x(t_n) (t_0 = 1: noise, t_n = 0: data)::

    S = (1 / |t_n - t_0|) sum_i |t_{i+1} - t_i| E || (x_{i+1} - x_i) / (t_{i+1} - t_i) - (x_n - x_0) / (t_n - t_0) ||^2   (eq. 7.11)

the discretised straightness of Liu et al. (2022) -- the mean squared deviation of the velocity from the
chord's constant velocity, 0 exactly for straight constant-speed paths -- and the length ratio
``|x_n - x_0| / sum_i |x_{i+1} - x_i|`` (1 for a straight path, smaller the more it bends).
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["straightness", "length_ratio"]


def _stack(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(xs) < 2:
        raise ValueError(f"a trajectory needs at least 2 states, got {len(xs)}")
    x = torch.stack([xi.detach().to(torch.float64) for xi in xs])                  # (n+1, N, ...)
    return x.reshape(len(xs), x.shape[1], -1)                                      # (n+1, N, D)


def straightness(xs: Sequence[torch.Tensor], ts) -> float:
    """Liu et al.'s straightness S of a trajectory (book §7.4, eq. 7.11); 0 for straight constant-speed paths.

    ``xs``: the n + 1 states (each (N, ...)), e.g. ``Trajectory.x_t``; ``ts``: the n + 1 times.
    """
    x = _stack(xs)                                                                  # (n+1, N, D)
    t = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)                        # (n+1,)
    if len(t) != len(x):
        raise ValueError(f"need one time per state: {len(x)} states, {len(t)} times")
    dt = (t[1:] - t[:-1])                                                           # (n,)
    seg = (x[1:] - x[:-1]) / dt[:, None, None]                                      # (n, N, D) segment velocities
    chord = (x[-1] - x[0]) / (t[-1] - t[0])                                         # (N, D) chord velocity
    dev = (seg - chord).pow(2).sum(-1).mean(-1)                                     # (n,) E ||.||^2 per segment
    return float((dt.abs() * dev).sum() / (t[-1] - t[0]).abs())                    # eq. 7.11


def length_ratio(xs: Sequence[torch.Tensor]) -> float:
    """Mean over samples of ``|x_n - x_0| / (path length)``: 1 for straight paths (book §7.4)."""
    x = _stack(xs)                                                                  # (n+1, N, D)
    path = (x[1:] - x[:-1]).norm(dim=-1).sum(0)                                     # (N,)
    chord = (x[-1] - x[0]).norm(dim=-1)                                             # (N,)
    return float((chord / path.clamp_min(1e-12)).mean())
