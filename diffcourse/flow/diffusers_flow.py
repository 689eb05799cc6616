"""diffusers' ``FlowMatchEulerDiscreteScheduler`` driving the course's velocity model (book §7.6, eq. 7.14).

The scheduler walks the same ODE as :func:`~diffcourse.flow.samplers.sample_euler_fm`, in its own units::

    sigma = t (the path's time, eq. 7.1),   timestep = num_train_timesteps * sigma  (1000 sigma)   (eq. 7.14)
    step:  x <- x + (sigma_{i+1} - sigma_i) * model_output                                         (eq. 7.6)

so a course model, which takes t in [0, 1], is called with ``timestep / 1000``. Its grid after
``set_timesteps(n)`` is ``linspace(1, sigma_min, n)`` shifted by eq. 7.13, with 0 appended, where
``sigma_min`` = shift(1/1000) was already shifted once when the scheduler was built (so with
``shift`` != 1 its lowest nonzero sigma is shifted twice: 0.0089 rather than 0.0030 for shift 3). Handing ``scheduler.sigmas`` to the course's sampler gives the same samples (tested: equal to float32
round-off). This is the loop inside diffusers' SD3 and Flux pipelines, without the text encoders.
"""
from __future__ import annotations

from typing import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

__all__ = ["make_scheduler", "sample_with_scheduler"]


def make_scheduler(shift: float = 1.0, num_train_timesteps: int = 1000) -> FlowMatchEulerDiscreteScheduler:
    """A ``FlowMatchEulerDiscreteScheduler`` with SD3's ``shift`` (eq. 7.13) (book §7.6, eq. 7.14)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)


@torch.no_grad()
def sample_with_scheduler(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_1: torch.Tensor,
                          scheduler: FlowMatchEulerDiscreteScheduler, num_steps: int) -> torch.Tensor:
    """Sample with diffusers' scheduler loop and a course velocity model ``model(x, t)`` (book §7.6, eq. 7.14).

    ``x_1``: the starting noise (N, ...) (the scheduler's ``init_noise_sigma`` is 1, so it is used as is).
    Returns x at t = 0, (N, ...). ``scheduler.sigmas`` afterwards is the grid it walked.
    """
    scheduler.set_timesteps(num_steps, device=x_1.device)
    T = scheduler.config.num_train_timesteps
    x = x_1
    for timestep in scheduler.timesteps:
        t = (timestep / T).to(x.dtype).expand(len(x))                                # (N,) eq. 7.14: t = sigma
        v = model(x, t)                                                               # (N, ...) velocity
        x = scheduler.step(v, timestep, x).prev_sample                                # eq. 7.6
    return x
