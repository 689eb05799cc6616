"""Flow matching against DDPM at equal NFE, on 2-D mixtures, with no training (book §7.4).

Every sampler below is driven by the *exact* model of the same mixture -- the exact velocity of
:mod:`.exact` for flow matching, chapter 2's exact eps of :mod:`diffcourse.gmm` for DDPM -- so the
only error left is the sampler's own (path and discretisation), and the comparison is between paths
and solvers, not between two trainings. Quality is the sliced Wasserstein-2 distance to fresh data
(:func:`sliced_wasserstein`), next to its floor: the same distance between two fresh data draws.

==================  ========================================================  ===========
name                sampler                                                   NFE
==================  ========================================================  ===========
``fm_euler``        Euler on the straight path (eq. 7.6), uniform grid        n steps
``fm_heun``         Heun (eq. 7.7), uniform grid                              2n - 1
``ddim``            DDIM eta = 0 on the VP path, "trailing" grid (eq. 2.4)    n steps
``ddpm``            DDPM ancestral on the same grid (eq. 2.1)                 n steps
``vp_euler``        Euler in sigma on the VP path (eq. 2.5), linspace grid    n steps
==================  ========================================================  ===========
"""
from __future__ import annotations

import numpy as np
import torch

from ..gmm import GaussianMixture, GaussianMixtureEpsModel
from ..samplers import sample_ddim, sample_ddpm, sample_euler
from ..schedules import make_schedule
from .exact import GaussianMixtureVelocity
from .samplers import sample_euler_fm, sample_heun_fm, time_grid

__all__ = ["sliced_wasserstein", "equal_nfe_comparison", "SAMPLER_NAMES"]

SAMPLER_NAMES = ("fm_euler", "fm_heun", "ddim", "ddpm", "vp_euler")


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, num_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance between two equal-size point clouds (N, D) (book §7.4).

    sqrt of the mean over random unit directions u of W2^2 between the sorted projections <x, u>, <y, u>.
    """
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"need two (N, D) clouds of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    u = torch.randn(x.shape[1], num_projections, generator=generator, dtype=torch.float64)   # (D, P)
    u = u / u.norm(dim=0, keepdim=True)
    px = np.sort((u.T @ x.detach().cpu().double().T).numpy(), axis=1)                        # (P, N) sorted
    py = np.sort((u.T @ y.detach().cpu().double().T).numpy(), axis=1)                        # (P, N) (numpy: 7x faster)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def _sample(name: str, gmm: GaussianMixture, x1: torch.Tensor, nfe: int, seed: int) -> tuple[torch.Tensor, int]:
    """(samples, NFE actually used) of sampler ``name`` at a budget of ``nfe`` model calls."""
    schedule = make_schedule("linear", 1000)
    eps_model = GaussianMixtureEpsModel(gmm, schedule)
    gen = torch.Generator().manual_seed(seed)
    if name == "fm_euler":
        return sample_euler_fm(GaussianMixtureVelocity(gmm), x1, time_grid(nfe)), nfe
    if name == "fm_heun":
        steps = (nfe + 1) // 2                                                    # 2 steps' worth minus one
        return sample_heun_fm(GaussianMixtureVelocity(gmm), x1, time_grid(steps)), 2 * steps - 1
    if name == "ddim":
        return sample_ddim(eps_model, x1, schedule, num_steps=nfe, spacing="trailing"), nfe
    if name == "ddpm":
        return sample_ddpm(eps_model, x1, schedule, num_steps=nfe, spacing="trailing", generator=gen), nfe
    if name == "vp_euler":
        return sample_euler(eps_model, x1, schedule, num_steps=nfe), nfe
    raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLER_NAMES}")


@torch.no_grad()
def equal_nfe_comparison(gmm: GaussianMixture, nfes=(2, 4, 8, 16, 32), n: int = 2000, seed: int = 0,
                         samplers=SAMPLER_NAMES) -> dict:
    """Sliced W2 to the data of each sampler at each NFE budget, exact models only (book §7.4).

    All samplers start from the same x_1 ~ N(0, I) (n, D), drawn from ``seed``. Returns
    ``{"nfe": [...], "floor": float, name: [distance per budget], name + "_nfe": [NFE used]}``.
    """
    x1 = torch.randn(n, gmm.D, generator=torch.Generator().manual_seed(seed))           # (n, D)
    data_gen = torch.Generator().manual_seed(seed + 1)
    ref, ref2 = gmm.sample(n, data_gen), gmm.sample(n, data_gen)                        # (n, D) each
    proj = lambda: torch.Generator().manual_seed(seed + 2)                              # noqa: E731  same directions
    out = {"nfe": list(nfes), "floor": sliced_wasserstein(ref, ref2, generator=proj())}
    for name in samplers:
        out[name], out[name + "_nfe"] = [], []
        for nfe in nfes:
            x, used = _sample(name, gmm, x1, nfe, seed)
            out[name].append(sliced_wasserstein(x, ref, generator=proj()))
            out[name + "_nfe"].append(used)
    return out
