"""Euler and Heun steps for the flow-matching ODE, on an explicit time grid (book §7.2, eqs. 7.5-7.7).

Sampling runs the ODE of the marginal velocity from noise (t = 1) to data (t = 0)::

    dx/dt = v(x, t),   x(1) ~ N(0, I)                                          (eq. 7.5)
    Euler   x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)                         (eq. 7.6)
    Heun    x~ = x_i + h v(x_i, t_i);  x_{i+1} = x_i + h (v(x_i, t_i) + v(x~, t_{i+1})) / 2,  h = t_{i+1} - t_i  (eq. 7.7)

Heun's last step, onto t = 0, is a plain Euler step (as in k-diffusion: the velocity is not needed at the
data end), so n Heun steps cost 2n - 1 model calls (NFE). Euler is first order and Heun second order:
on a smooth field the error at t = 0 falls like NFE^-1 and NFE^-2 (eq. 7.8), measured in the tests on the
exact field of :mod:`.exact`.

The interface, k-diffusion style: ``sample_*(model, x_1, ts, *, generator=None, callback=None,
return_trajectory=False, progress=False)``, where

- ``model(x, t) -> v``: x (N, ...), t an (N,) float tensor on x's device; returns x's shape;
- ``x_1``: the starting noise (a tensor, used as given) or a shape, drawn as float32 N(0, I) from
  ``generator`` on its device (the same rule as :func:`diffcourse.samplers.common.initial_sample`);
- ``ts``: the grid t_0 > t_1 > ... > t_n, usually ending at 0 (n + 1 values; :func:`time_grid` makes
  uniform and shifted ones; a diffusers ``FlowMatchEulerDiscreteScheduler``'s ``sigmas`` is one);
- ``callback(i, t_i, x_{i+1}, x0_hat)`` after step i, with x0_hat = x_i - t_i v(x_i, t_i) (eq. 7.1 solved
  for x0 along the predicted line); ``return_trajectory`` gives a :class:`~diffcourse.samplers.Trajectory`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..samplers.common import Recorder, initial_sample
from .path import shift_time

__all__ = ["time_grid", "check_grid", "sample_euler_fm", "sample_heun_fm", "heun_nfe", "guided_velocity"]

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(num_steps: int, shift: float = 1.0, t_max: float = 1.0) -> torch.Tensor:
    """n + 1 times from ``t_max`` down to 0, uniform, then shifted with eq. 7.13 (book §7.2, §7.5).

    Returns (num_steps + 1,) float64. ``shift`` > 1 puts more of the steps near the noise end.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    t = torch.linspace(t_max, 0.0, num_steps + 1, dtype=torch.float64)          # (n + 1,)
    return shift_time(t, shift) if shift != 1.0 else t


def check_grid(ts) -> list[float]:
    """The grid as Python floats after checking it: 1-D, >= 2 points, strictly descending, inside [0, 1] (§7.2)."""
    t = torch.as_tensor(ts, dtype=torch.float64).detach().cpu()
    if t.ndim != 1 or len(t) < 2:
        raise ValueError(f"ts must be a 1-D grid t_0 > ... > t_n with at least 2 points, got shape {tuple(t.shape)}")
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"ts must be strictly descending (noise at t=1 to data at t=0), got {t[:6].tolist()}...")
    if float(t.min()) < 0 or float(t.max()) > 1:
        raise ValueError(f"ts must lie in [0, 1], got [{float(t.min())}, {float(t.max())}]")
    return t.tolist()


def _velocity(model: Velocity, x: torch.Tensor, t: float) -> torch.Tensor:
    """v(x, t) with t given to the model as an (N,) tensor; checks the output's shape."""
    v = model(x, torch.full((len(x),), t, device=x.device, dtype=x.dtype))          # (N, ...)
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"model(x, t) must return a velocity shaped like x {tuple(x.shape)}, got {got}")
    return v


def sample_euler_fm(model: Velocity, x_1, ts, *, generator: torch.Generator | None = None, callback=None,
                    return_trajectory: bool = False, progress: bool = False, device=None):
    """Euler's method for dx/dt = v(x, t) on the grid ``ts`` (book §7.2, eq. 7.6). NFE = len(ts) - 1."""
    grid = check_grid(ts)
    x = initial_sample(x_1, generator, device)                                       # (N, ...) at t_0
    rec = Recorder(len(grid) - 1, x, torch.tensor(grid[:-1]), callback, return_trajectory, progress, "Euler (FM)")
    for i in rec.steps():
        t, t_next = grid[i], grid[i + 1]
        v = _velocity(model, x, t)                                                   # (N, ...) v(x_i, t_i)
        x0 = x - t * v if rec.active else None                                       # (N, ...) x0_hat
        x = x + (t_next - t) * v                                                     # eq. 7.6
        if rec.active:
            rec.record(i, x, x0)
    return rec.finish(x)


def sample_heun_fm(model: Velocity, x_1, ts, *, generator: torch.Generator | None = None, callback=None,
                   return_trajectory: bool = False, progress: bool = False, device=None):
    """Heun's method (the trapezoidal predictor-corrector) on the grid ``ts`` (book §7.2, eq. 7.7).

    A step that lands on t = 0 is an Euler step. NFE = :func:`heun_nfe` (2n - 1 on a grid ending at 0).
    """
    grid = check_grid(ts)
    x = initial_sample(x_1, generator, device)                                       # (N, ...)
    rec = Recorder(len(grid) - 1, x, torch.tensor(grid[:-1]), callback, return_trajectory, progress, "Heun (FM)")
    for i in rec.steps():
        t, t_next = grid[i], grid[i + 1]
        h = t_next - t                                                               # < 0: towards the data
        v = _velocity(model, x, t)                                                   # (N, ...) (1) slope at t_i
        x0 = x - t * v if rec.active else None
        x_euler = x + h * v                                                          # (N, ...) (2) predictor
        if t_next == 0.0:
            x = x_euler                                                              # last step: Euler
        else:
            v_next = _velocity(model, x_euler, t_next)                               # (N, ...) (3) slope at t_{i+1}
            x = x + h * 0.5 * (v + v_next)                                           # (4) corrector, eq. 7.7
        if rec.active:
            rec.record(i, x, x0)
    return rec.finish(x)


def heun_nfe(ts: Sequence[float] | torch.Tensor) -> int:
    """Model calls :func:`sample_heun_fm` makes on ``ts`` (book §7.2): 2 per step, 1 for a step onto t = 0."""
    grid = check_grid(ts)
    return 2 * (len(grid) - 1) - (1 if grid[-1] == 0.0 else 0)


def guided_velocity(model, class_labels: torch.Tensor, guidance_scale: float, null_label: int) -> Velocity:
    """Classifier-free guidance for a class-conditional velocity model (book §7.7, eq. 7.17)::

        v_w = v(x, t, null) + w (v(x, t, y) - v(x, t, null))

    w = 1 is the plain conditional model, w = 0 the unconditional one. Both calls run as one batch of 2N.
    ``model(x, t, class_labels=...)``; ``class_labels`` (N,) long; ``null_label`` is the "no class" label.
    """
    labels = torch.as_tensor(class_labels).long()

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance_scale == 1.0:
            return model(x, t, class_labels=labels.to(x.device))
        both = torch.cat([labels, torch.full_like(labels, null_label)]).to(x.device)   # (2N,)
        v_cond, v_null = model(torch.cat([x, x]), torch.cat([t, t]), class_labels=both).chunk(2)  # (N, ...) x2
        return v_null + guidance_scale * (v_cond - v_null)                            # eq. 7.17
    return v
