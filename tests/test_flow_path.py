"""Book §7.1 and §7.5: the straight path, the velocity target, the FM loss, logit-normal t and the SD3 shift."""
from __future__ import annotations

import math

import pytest
import torch

from diffcourse.flow.exact import GaussianMixtureVelocity
from diffcourse.flow.path import (fm_loss, interpolate, logit_normal_pdf, sample_t, shift_time, snr,
                                  velocity_target)
from diffcourse.gmm import GaussianMixture, anisotropic_mixture

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- path and target (§7.1)

def test_the_path_joins_data_to_noise_and_its_velocity_is_the_target():
    x0, eps = torch.randn(5, 1, 4, 4, generator=gen(0)), torch.randn(5, 1, 4, 4, generator=gen(1))
    assert torch.equal(interpolate(x0, eps, torch.zeros(5)), x0), "eq. 7.1 at t=0 should be the data x0"
    assert torch.equal(interpolate(x0, eps, torch.ones(5)), eps), "eq. 7.1 at t=1 should be the noise eps"
    t = torch.rand(5, generator=gen(2), dtype=torch.float64)
    x0d, epsd, h = x0.double(), eps.double(), 1e-6
    fd = (interpolate(x0d, epsd, t + h) - interpolate(x0d, epsd, t - h)) / (2 * h)   # d x_t / dt
    diff = (fd - velocity_target(x0d, epsd)).abs().max().item()
    assert diff < 1e-8, f"d x_t/dt should equal eps - x0 (eq. 7.2); max |diff| = {diff:.2e} (sign or order swapped?)"
    mid = interpolate(x0, eps, torch.full((5,), 0.25))
    assert torch.allclose(mid, 0.75 * x0 + 0.25 * eps), "x_t at t=0.25 should be 0.75 x0 + 0.25 eps (t weighs the noise)"


def test_the_path_checks_its_inputs():
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="shape"):
        interpolate(x0, torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="N = 3"):
        interpolate(x0, torch.zeros(3, 2), torch.zeros(4))


def test_fm_loss_is_zero_for_the_target_and_draws_t_then_eps():
    x0 = torch.randn(64, 2, generator=gen(3))
    t, eps = torch.rand(64, generator=gen(4)), torch.randn(64, 2, generator=gen(5))
    assert fm_loss(lambda x_t, tt: eps - x0, x0, t=t, noise=eps).item() == 0.0, \
        "the loss of a model that outputs eps - x0 should be exactly 0 (eq. 7.3)"
    zero = fm_loss(lambda x_t, tt: torch.zeros_like(x_t), x0, t=t, noise=eps).item()
    assert zero == pytest.approx(((eps - x0) ** 2).mean().item(), rel=1e-6), "the loss of v = 0 is mean (eps - x0)^2"

    seen = {}

    def spy(x_t, tt):
        seen["x_t"], seen["t"] = x_t, tt
        return torch.zeros_like(x_t)

    fm_loss(spy, x0, gen(7))
    g = gen(7)
    t_ref = torch.rand(64, generator=g)                       # t first ...
    eps_ref = torch.randn(64, 2, generator=g)                  # ... then eps, from the same generator
    assert torch.equal(seen["t"], t_ref), "fm_loss should draw t ~ U(0, 1) first from the generator"
    assert torch.allclose(seen["x_t"], interpolate(x0, eps_ref, t_ref)), "x_t should be (1-t) x0 + t eps, eps drawn after t"


def test_the_minimiser_of_the_fm_loss_is_the_marginal_velocity():
    """Eq. 7.4: E[eps - x0 | x_t] = v*, so L(v* + c) - L(v*) = |c|^2 / D with no cross term."""
    gmm = anisotropic_mixture()
    v_star = GaussianMixtureVelocity(gmm)
    g = gen(11)
    x0 = gmm.sample(40_000, g).double()
    levels = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)         # few distinct t: the exact field
    t = levels[torch.randint(25, (40_000,), generator=g)]                  # is computed once per level
    eps = torch.randn(40_000, 2, generator=g, dtype=torch.float64)
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    loss = lambda model: fm_loss(model, x0, t=t, noise=eps).item()   # noqa: E731
    base, shifted = loss(v_star), loss(lambda x, tt: v_star(x, tt) + c)
    expected = float(c @ c) / 2                                            # the loss averages over the D = 2 coordinates
    assert shifted - base == pytest.approx(expected, abs=0.005), (
        f"L(v* + c) - L(v*) should be |c|^2 / D = {expected:.3f} (no cross term, eq. 7.4), got {shifted - base:.3f}")
    for wrong, name in [(lambda x, tt: 1.1 * v_star(x, tt), "1.1 v*"),
                        (lambda x, tt: v_star(x, (tt * 0.9)), "v* at 0.9 t")]:
        assert loss(wrong) > base + 1e-3, f"{name} should have a higher FM loss than the marginal velocity v*"


# ----------------------------------------------------------------------------- where to train (§7.5)

def test_logit_normal_times_have_the_documented_distribution():
    t = sample_t(200_000, gen(0), "logit_normal", m=0.5, s=0.8).double()
    assert bool(((t > 0) & (t < 1)).all()), "logit-normal times must lie strictly inside (0, 1)"
    logit = torch.log(t) - torch.log1p(-t)
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01) and logit.std().item() == pytest.approx(0.8, abs=0.01), \
        f"logit(t) should be N(0.5, 0.8^2); got mean {logit.mean():.3f}, std {logit.std():.3f} (eq. 7.12)"
    edges = torch.linspace(0, 1, 11, dtype=torch.float64)
    grid = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
    pdf = logit_normal_pdf(grid, 0.5, 0.8)
    assert torch.trapezoid(pdf, grid).item() == pytest.approx(1.0, abs=1e-3), "the logit-normal density should integrate to 1"
    hist = torch.histc(t, bins=10, min=0, max=1) / len(t)
    for i in range(10):
        inside = (grid >= edges[i]) & (grid < edges[i + 1])
        mass = torch.trapezoid(pdf[inside], grid[inside]).item()
        assert hist[i].item() == pytest.approx(mass, abs=0.004), \
            f"bin [{edges[i]:.1f}, {edges[i + 1]:.1f}): sampled share {hist[i]:.4f}, density says {mass:.4f}"
    u = sample_t(50_000, gen(0), "uniform")
    assert abs(u.mean().item() - 0.5) < 0.01 and u.min() >= 0 and u.max() < 1, "uniform t should be U(0, 1)"
    mid = lambda x: ((x > 0.25) & (x < 0.75)).double().mean().item()   # noqa: E731
    assert mid(sample_t(50_000, gen(1), "logit_normal")) > mid(u) + 0.1, \
        "logit-normal(0, 1) should put more of the training times in the middle of the path than uniform t"
    with pytest.raises(ValueError, match="kind"):
        sample_t(4, gen(0), "lognormal")


def test_the_shift_map_fixes_the_ends_divides_the_snr_and_inverts():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for a in (0.5, 3.0):
        s = shift_time(t, a)
        assert s[0].item() == 0.0 and s[-1].item() == 1.0, f"shift a={a} must fix t=0 and t=1 (eq. 7.13)"
        assert bool((s[1:] > s[:-1]).all()), f"shift a={a} must be increasing"
        assert torch.allclose(shift_time(s, 1 / a), t, atol=1e-12), f"shift by 1/a should undo shift by a={a}"
        inner = t[1:-1]
        ratio = snr(shift_time(inner, a)) / snr(inner)
        assert torch.allclose(ratio, torch.full_like(ratio, 1 / a**2)), \
            f"the shift a={a} should divide SNR = ((1-t)/t)^2 by a^2 everywhere; got ratios {ratio[:3].tolist()}"
    assert torch.equal(shift_time(t, 1.0), t), "a = 1 is the identity"
    assert bool((shift_time(t[1:-1], 3.0) > t[1:-1]).all()), "a > 1 moves every time towards the noise end"
    g1, g2 = gen(5), gen(5)
    assert torch.allclose(sample_t(100, g1, "logit_normal", shift=3.0), shift_time(sample_t(100, g2, "logit_normal"), 3.0)), \
        "sample_t(shift=a) should be shift_time of the unshifted draw with the same generator"


def test_the_shift_is_the_one_diffusers_scheduler_applies():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for a in (1.0, 3.0):
        sched = FlowMatchEulerDiscreteScheduler(shift=a)
        sched.set_timesteps(10)
        # diffusers' grid: linspace(1, sigma_min, n), shifted, where sigma_min = shift_time(1/1000, a) is
        # already shifted once at construction (so the lowest point is shifted twice; see diffusers_flow)
        ours = shift_time(torch.linspace(1.0, shift_time(1e-3, a), 10, dtype=torch.float64), a).float()
        assert torch.allclose(sched.sigmas[:-1], ours, atol=1e-6), \
            f"shift={a}: diffusers' sigmas {sched.sigmas[:4].tolist()} vs shift_time {ours[:4].tolist()}"


def test_exact_velocity_matches_the_single_gaussian_closed_form():
    """Eq. 7.9 through chapter 2's mixture, checked against the one-Gaussian formula."""
    mu, var = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.3
    gmm = GaussianMixture([1.0], mu[None], var * torch.eye(2, dtype=torch.float64)[None])
    x = torch.randn(50, 2, generator=gen(9), dtype=torch.float64)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        d = (1 - t) ** 2 * var + t**2                               # variance of x_t per coordinate
        r = x - (1 - t) * mu
        expected = t / d * r - (mu + (1 - t) * var / d * r)        # E[eps | x] - E[x0 | x]
        got = GaussianMixtureVelocity(gmm)(x, torch.full((50,), t, dtype=torch.float64))
        assert torch.allclose(got, expected, atol=1e-10), \
            f"t={t}: exact velocity differs from the closed form by {(got - expected).abs().max():.2e}"
    # a Python float t and an (N,) tensor t give the same field; the tensor is float64 here, since a
    # float32 0.3 is a different time (0.30000001192...) and moves v* by ~1e-9 relative
    assert math.isclose(float(GaussianMixtureVelocity(gmm)(x, 0.3)[0, 0]),
                        float(GaussianMixtureVelocity(gmm)(x, torch.full((50,), 0.3, dtype=torch.float64))[0, 0]),
                        rel_tol=1e-12), "a scalar t should broadcast to every sample like an (N,) tensor of t"
