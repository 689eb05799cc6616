"""2-D toy distributions, where every idea of the course can be seen before images (book §1.1, §2.1).

Each sampler returns (n, 2) float32, roughly zero-mean and of unit scale (fixed constants, not a
per-batch normalisation, so two batches come from exactly the same distribution), drawn with an
explicit ``torch.Generator``.

===================  ===============================================================
name                 what
===================  ===============================================================
``two_moons``        two interleaved half circles (as sklearn's ``make_moons``)
``swiss_roll``       the 2-D spiral of sklearn's ``make_swiss_roll``
``eight_gaussians``  eight small Gaussians on a circle (the exact mixture of §2.6)
``checkerboard``     uniform on the black squares of a 4x4 checkerboard on [-2, 2]^2
===================  ===============================================================

"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..gmm import eight_gaussians_mixture

__all__ = ["two_moons", "swiss_roll", "eight_gaussians", "checkerboard", "sample_toy", "TOYS"]


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """Two interleaved half circles, centred and scaled by 1/0.7 (book §1.1). Returns (n, 2) float32.

    ``noise`` is the standard deviation of Gaussian jitter in the returned units.
    """
    dev = _device(generator)
    upper = torch.rand(n, generator=generator, device=dev) < 0.5               # (n,) which moon
    theta = torch.rand(n, generator=generator, device=dev) * math.pi           # (n,)
    x = torch.where(upper, theta.cos(), 1 - theta.cos())                       # (n,)
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())                     # (n,)
    pts = (torch.stack([x, y], dim=1) - torch.tensor([0.5, 0.25], device=dev)) / 0.7  # (n, 2)
    return pts + noise * torch.randn(n, 2, generator=generator, device=dev)


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> torch.Tensor:
    """The spiral (t cos t, t sin t), t in [1.5 pi, 4.5 pi], centred and scaled by 1/6.8 (book §1.1). (n, 2)."""
    dev = _device(generator)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, device=dev))  # (n,)
    pts = (torch.stack([t * t.cos(), t * t.sin()], dim=1) - torch.tensor([2.0, 0.2], device=dev)) / 6.8
    return pts + noise * torch.randn(n, 2, generator=generator, device=dev)    # (n, 2)


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eight Gaussians (std 0.1) on a circle of radius 1.4: samples of the §2.6 mixture. (n, 2)."""
    return eight_gaussians_mixture().sample(n, generator)


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the 8 "black" unit squares of a checkerboard on [-2, 2]^2 (book §1.1). (n, 2).

    A square [i, i+1] x [j, j+1] is black when i + j is even, so the distribution has zero mean
    and a per-coordinate standard deviation of 2/sqrt(3) ~ 1.15.
    """
    dev = _device(generator)
    x = torch.rand(n, generator=generator, device=dev) * 4 - 2                 # (n,) uniform in [-2, 2)
    row = torch.randint(0, 2, (n,), generator=generator, device=dev)           # (n,) which of two rows
    y_cell = 2 * row - 2 + (x.floor().long() % 2)                              # (n,) i + j even
    y = y_cell + torch.rand(n, generator=generator, device=dev)                # (n,)
    return torch.stack([x, y], dim=1)                                          # (n, 2)


TOYS: dict[str, Callable[..., torch.Tensor]] = {
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` points from the toy ``name`` in :data:`TOYS` (book §1.1, §2.1). Returns (n, 2) float32."""
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; choose one of {sorted(TOYS)}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return TOYS[name](n, generator).to(torch.float32)
