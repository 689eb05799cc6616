"""Tests of the exact Gaussian-mixture denoiser (diffcourse/gmm.py, book §2.6 eq. 2.7).

The sampler-driven tests at the end run the course's DDPM and DDIM with the exact denoiser. With no
learning error left, what they measure is Monte-Carlo error plus the sampler's own discretisation
error; the second is predicted exactly for a Gaussian by a linear recursion (written out here from
eqs. 1.8, 1.11, 2.1, 2.2), so every tolerance below is "5 standard errors + that predicted bias".
"""
from __future__ import annotations

import math

import pytest
import torch

from diffcourse.gmm import (GaussianMixture, alpha_bar_at, anisotropic_mixture, eight_gaussians_mixture,
                            mode_statistics)
from diffcourse.schedules import make_schedule


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def schedule():
    return make_schedule("linear", 1000)


def _points(n=64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 2, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- construction

@pytest.mark.parametrize("weights, means, covs, match", [
    ([0.5, 0.5], [[0.0, 0.0]], torch.eye(2).expand(2, 2, 2), "means must have shape"),
    ([0.5, 0.6], [[0.0, 0.0], [1.0, 1.0]], torch.eye(2).expand(2, 2, 2), "sum to 1"),
    ([1.2, -0.2], [[0.0, 0.0], [1.0, 1.0]], torch.eye(2).expand(2, 2, 2), "positive"),
    ([1.0], [[0.0, 0.0]], torch.eye(3)[None], "covs must have shape"),
    ([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
    ([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
    ([1.0], [[float("nan"), 0.0]], torch.eye(2)[None], "finite"),
])
def test_invalid_parameters_give_clear_errors(weights, means, covs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(weights, means, covs)


def test_log_prob_matches_torch_distributions():
    gmm = anisotropic_mixture()
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gmm.weights),
        torch.distributions.MultivariateNormal(gmm.means, covariance_matrix=gmm.covs))
    x = _points()
    ours, theirs = gmm.log_prob(x), ref.log_prob(x)
    err = (ours - theirs).abs().max().item()
    assert err < 1e-10, f"log_prob differs from MixtureSameFamily by {err:.3g} (expected < 1e-10); check _log_joint"
    m = gmm.marginal(0.3)
    ref_t = torch.distributions.MultivariateNormal(math.sqrt(0.3) * gmm.means,
                                                   covariance_matrix=0.3 * gmm.covs + 0.7 * torch.eye(2))
    assert torch.allclose(m.covs, ref_t.covariance_matrix) and torch.allclose(m.means, ref_t.mean), \
        "marginal(0.3) should have means sqrt(0.3) mu_k and covariances 0.3 Sigma_k + 0.7 I"


def test_sampling_statistics():
    gmm = anisotropic_mixture()
    n = 20_000
    x, k = gmm.sample(n, torch.Generator().manual_seed(1), return_labels=True)
    assert x.shape == (n, 2) and x.dtype == torch.float32 and k.shape == (n,)
    w_hat = torch.bincount(k, minlength=3) / n
    se_w = (gmm.weights * (1 - gmm.weights) / n).sqrt()
    assert ((w_hat - gmm.weights).abs() < 5 * se_w).all(), f"component frequencies {w_hat} vs weights {gmm.weights}"
    for j in range(3):
        xj = x[k == j].double()
        se_mu = (torch.diagonal(gmm.covs[j]) / len(xj)).sqrt()
        assert ((xj.mean(0) - gmm.means[j]).abs() < 5 * se_mu).all(), \
            f"component {j}: sample mean {xj.mean(0)} vs {gmm.means[j]} (5 SE = {5 * se_mu})"
        S = gmm.covs[j]
        se_S = ((torch.diagonal(S)[:, None] * torch.diagonal(S)[None] + S**2) / len(xj)).sqrt()
        assert ((torch.cov(xj.T) - S).abs() < 5 * se_S).all(), f"component {j}: sample covariance off"
    again = gmm.sample(n, torch.Generator().manual_seed(1))
    assert torch.equal(x, again), "sampling with the same seed should give the same points"


# ----------------------------------------------------------------------------- the exact denoiser

@pytest.mark.parametrize("alpha_bar", [0.999, 0.5, 0.02])
@pytest.mark.parametrize("make", [anisotropic_mixture, eight_gaussians_mixture])
def test_eps_is_minus_scaled_autograd_score(make, alpha_bar):
    """eq. 2.7: eps* = -sqrt(1 - ab) grad log p_t, checked against autograd of the marginal's log_prob."""
    gmm = make()
    x = _points(seed=2).requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.marginal(alpha_bar).log_prob(x).sum(), x)
    expected = -math.sqrt(1 - alpha_bar) * grad
    got = gmm.eps(x.detach(), alpha_bar)
    err = (got - expected).abs().max().item()
    assert err < 1e-8, (f"eps at alpha_bar={alpha_bar} differs from -sqrt(1-ab) * autograd score by {err:.3g}; "
                        "check the sign and the sqrt(1 - alpha_bar) factor in GaussianMixture._posterior")
    score = gmm.score(x.detach(), alpha_bar)
    assert torch.allclose(score, grad, atol=1e-8), "score() should equal the autograd gradient of log p_t"


def test_eps_for_a_single_gaussian_has_the_textbook_form():
    """K = 1: eps* = sqrt(1 - ab) S^{-1} (x - sqrt(ab) mu), S = ab Sigma + (1 - ab) I."""
    mu, Sigma = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)
    gmm, ab, x = GaussianMixture([1.0], mu[None], Sigma[None]), 0.4, _points(seed=3)
    S = ab * Sigma + (1 - ab) * torch.eye(2, dtype=torch.float64)
    expected = math.sqrt(1 - ab) * torch.linalg.solve(S, (x - math.sqrt(ab) * mu).T).T
    assert torch.allclose(gmm.eps(x, ab), expected, atol=1e-12)


def test_x0_mean_is_tweedie_and_limits():
    gmm = anisotropic_mixture()
    x = _points(seed=4)
    for ab in (0.9, 0.3):
        tweedie = (x - math.sqrt(1 - ab) * gmm.eps(x, ab)) / math.sqrt(ab)
        err = (gmm.x0_mean(x, ab) - tweedie).abs().max().item()
        assert err < 1e-10, f"x0_mean at alpha_bar={ab} differs from Tweedie (x - sqrt(1-ab) eps)/sqrt(ab) by {err:.3g}"
    err = (gmm.x0_mean(x, 1.0 - 1e-9) - x).abs().max().item()
    assert err < 1e-6, f"as alpha_bar -> 1, E[x0 | x_t] should be x_t itself; max |diff| = {err:.3g}"
    prior_mean = (gmm.weights[:, None] * gmm.means).sum(0)
    assert torch.allclose(gmm.x0_mean(x, 0.0), prior_mean.expand_as(x), atol=1e-12), \
        "at alpha_bar = 0, x_t says nothing about x0, so E[x0 | x_t] should be the data mean"
    assert torch.allclose(gmm.eps(x, 0.0), x, atol=1e-12), "at alpha_bar = 0, x_t is pure noise, so eps* = x_t"


def test_eps_is_stable_far_from_every_mode_and_keeps_dtype():
    gmm = eight_gaussians_mixture()
    far = torch.tensor([[300.0, -200.0], [1e3, 1e3]], dtype=torch.float32)
    eps = gmm.eps(far, 0.999)
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all(), \
        f"eps should be finite far from the modes (log-sum-exp responsibilities); got {eps}"


def test_per_point_alpha_bar_matches_scalar_calls():
    gmm = anisotropic_mixture()
    x = _points(n=6, seed=5)
    ab = torch.tensor([0.9, 0.1, 0.9, 0.5, 0.1, 0.5], dtype=torch.float64)
    batched = gmm.eps(x, ab)
    single = torch.stack([gmm.eps(x[i:i + 1], float(ab[i]))[0] for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-12), "eps with one alpha_bar per point should match per-point calls"
    with pytest.raises(ValueError, match="one value per point"):
        gmm.eps(x, ab[:4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gmm.eps(x, 1.5)


# ----------------------------------------------------------------------------- timesteps

def test_as_model_integer_and_fractional_timesteps(schedule):
    gmm = anisotropic_mixture()
    model = gmm.as_model(schedule)
    x = _points(n=4, seed=6).float()
    t = torch.tensor([0, 10, 500, 999])
    expected = gmm.eps(x, schedule.alpha_bar[t].double())
    assert torch.allclose(model(x, t), expected, atol=1e-6), "integer t must use schedule.alpha_bar[t]"
    assert torch.allclose(model(x, t.float()), expected, atol=1e-5), "t = 10.0 must mean the same as t = 10"
    ab_mid = alpha_bar_at(schedule, torch.tensor([10.5]))
    assert schedule.alpha_bar[11] < ab_mid < schedule.alpha_bar[10], \
        f"alpha_bar at t = 10.5 ({float(ab_mid)}) should lie between the values at t = 10 and t = 11"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # numpy 2 copy-keyword warning inside diffusers
def test_fractional_timesteps_match_diffusers_euler_sigmas(schedule):
    """diffusers' EulerDiscreteScheduler interpolates sigma linearly in t; alpha_bar = 1 / (1 + sigma^2)."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    sched.set_timesteps(37)                                  # linspace spacing: fractional timesteps
    t = sched.timesteps
    assert (t != t.round()).any(), "test set-up: expected some fractional timesteps"
    expected = 1 / (1 + sched.sigmas[:-1].double() ** 2)
    got = alpha_bar_at(schedule, t)
    rel = ((got - expected).abs() / expected).max().item()
    assert rel < 1e-4, f"alpha_bar at diffusers' Euler timesteps is off by a relative {rel:.3g}; check alpha_bar_at"


# ----------------------------------------------------------------------------- samplers + exact denoiser

DDIM_GRID = torch.arange(980, -1, -20)                       # 50 "leading" steps, as DDIMScheduler
N_SAMPLES = 4000


def _step_coefficients(schedule, grid, kind):
    """Per step (alpha_bar_t, A, B, std) with x_next = A x0_hat + B x_t + std z (eqs. 1.8, 2.1, 2.2)."""
    ab = schedule.alpha_bar.double().tolist()
    ts = grid.tolist()
    out = []
    for i, t in enumerate(ts):
        a, ap = ab[t], (ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        if kind == "ddpm":
            beta = 1 - a / ap
            A, B = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
            std = math.sqrt((1 - ap) / (1 - a) * beta) if t > 0 else 0.0
        else:  # ddim, eta = 0: x' = sqrt(ap) x0 + sqrt(1 - ap) (x - sqrt(a) x0) / sqrt(1 - a)
            B = math.sqrt((1 - ap) / (1 - a))
            A, std = math.sqrt(ap) - B * math.sqrt(a), 0.0
        out.append((a, A, B, std))
    return out


def predicted_gaussian_output(schedule, grid, kind, mean, var):
    """Exact mean and variance of the sampler's output for 1-D N(mean, var) data and x_T ~ N(0, 1).

    For Gaussian data E[x0 | x_t] = mean + k (x_t - sqrt(ab) mean), k = sqrt(ab) var / (ab var + 1 - ab),
    so every step is linear in x_t and the output is Gaussian with this mean and variance.
    """
    m, v = 0.0, 1.0
    for a, A, B, std in _step_coefficients(schedule, grid, kind):
        k = math.sqrt(a) * var / (a * var + 1 - a)
        m = A * (mean * (1 - k * math.sqrt(a)) + k * m) + B * m
        v = (A * k + B) ** 2 * v + std**2
    return m, v


def _run(kind, model, schedule, seed=0):
    from diffcourse.samplers import sample_ddim, sample_ddpm

    gen = torch.Generator().manual_seed(seed)
    if kind == "ddpm":
        return sample_ddpm(model, (N_SAMPLES, 2), schedule, generator=gen)
    return sample_ddim(model, (N_SAMPLES, 2), schedule, timesteps=DDIM_GRID, eta=0.0, generator=gen)


def _grid(kind, schedule):
    return torch.arange(schedule.T - 1, -1, -1) if kind == "ddpm" else DDIM_GRID


def _outside(value, a, b, tol):
    """True when value lies outside [min(a, b) - tol, max(a, b) + tol]."""
    return value < min(a, b) - tol or value > max(a, b) + tol


def mixture_mismatches(x, gmm, schedule, kind, exact):
    """Compare samples with the mixture; returns a list of failure messages (empty when it matches).

    Nearest-mode statistics, each mode seen in the eigenbasis u_i (eigenvalues lam_i) of its covariance:
    - weights: w_k +- 5 SE, SE = sqrt(w (1 - w) / N);
    - means and variances along u_i: with ``exact`` (a single Gaussian, where the recursion is exact)
      the predicted mean pm and variance pv +- 5 SE; otherwise anywhere between the truth (m_i, lam_i)
      and that prediction, +- 5 SE: in a mixture the other modes change the discretisation error, and
      measured it lies between none and the single-Gaussian value (DDIM-50 on the anisotropic
      mixture's std-0.2 directions keeps 0.83-0.90 of the variance at N = 20 000, where a single
      Gaussian predicts 0.78-0.79);
    - the covariance between the two eigen-directions: 0 +- 5 SE, SE = sqrt(lam_1 lam_2 / n_k).
    Standard errors: mean sqrt(v / n_k), variance v sqrt(2 / n_k), with v the larger of lam_i and pv.
    """
    st, n, bad = mode_statistics(x, gmm), len(x), []
    for k in range(gmm.K):
        w, n_k = float(gmm.weights[k]), int(st["counts"][k])
        if abs(float(st["weights"][k]) - w) > 5 * math.sqrt(w * (1 - w) / n):
            bad.append(f"mode {k}: weight {float(st['weights'][k]):.4f}, expected {w:.4f}")
            continue
        lam, U = torch.linalg.eigh(gmm.covs[k])                                  # (2,), (2, 2)
        mean_u = U.T @ st["means"][k]                                            # (2,) in the eigenbasis
        C = U.T @ st["covs"][k] @ U                                              # (2, 2) in the eigenbasis
        for i in range(2):
            m_i, lam_i = float(U[:, i] @ gmm.means[k]), float(lam[i])
            pm, pv = predicted_gaussian_output(schedule, _grid(kind, schedule), kind, m_i, lam_i)
            ref_m, ref_v = (pm, pv) if exact else (m_i, lam_i)
            v = max(pv, lam_i)
            if _outside(float(mean_u[i]), pm, ref_m, 5 * math.sqrt(v / n_k)):
                bad.append(f"mode {k}, direction {i}: mean {float(mean_u[i]):.4f}, expected {pm:.4f}"
                           + ("" if exact else f" to {m_i:.4f}") + f" +- {5 * math.sqrt(v / n_k):.4f}")
            if _outside(float(C[i, i]), pv, ref_v, 5 * v * math.sqrt(2 / n_k)):
                bad.append(f"mode {k}, direction {i}: variance {float(C[i, i]):.4f}, expected {pv:.4f}"
                           + ("" if exact else f" to {lam_i:.4f}") + f" +- {5 * v * math.sqrt(2 / n_k):.4f} "
                           f"(the sampler's predicted ratio for a Gaussian is {pv / lam_i:.3f})")
        if abs(float(C[0, 1])) > 5 * math.sqrt(float(lam[0] * lam[1]) / n_k):
            bad.append(f"mode {k}: covariance between eigen-directions {float(C[0, 1]):.4f}, expected 0")
    return bad


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_sampler_output_for_gaussian_data_matches_exact_prediction(kind, schedule):
    """K = 1: the output is exactly Gaussian with the recursion's mean and variance (DDIM-50 shrinks
    a std-0.15 direction's variance to about 0.6 of its value; DDPM-1000 to about 0.95)."""
    lam = torch.tensor([0.15**2, 0.6**2], dtype=torch.float64)
    R = torch.tensor([[math.cos(0.5), -math.sin(0.5)], [math.sin(0.5), math.cos(0.5)]], dtype=torch.float64)
    gmm = GaussianMixture([1.0], [[0.4, -0.3]], (R @ torch.diag(lam) @ R.T)[None])
    x = _run(kind, gmm.as_model(schedule), schedule)
    assert x.shape == (N_SAMPLES, 2) and torch.isfinite(x).all()
    bad = mixture_mismatches(x, gmm, schedule, kind, exact=True)
    assert not bad, f"{kind} with the exact denoiser on Gaussian data: " + "; ".join(bad)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_sampler_with_exact_denoiser_reproduces_mixture(kind, schedule):
    """DDPM (1000 steps) and DDIM (50 steps) driven by eq. 2.7 reproduce the anisotropic mixture.

    Tolerances (see mixture_mismatches): 5 Monte-Carlo standard errors for N = 4000 points (e.g.
    +-0.040 on the weight 0.5, +-0.02 to +-0.09 on a mean, +-16 % to +-25 % on a variance) around
    the range from the true value to the value the exact Gaussian recursion predicts for this sampler
    (DDPM-1000: 0.96-0.99 of each variance; DDIM-50: 0.78-0.90). Nearest-mode assignment is safe:
    every mode is >= 4 SD from its region's boundary, so < 1 point in 10 000 is misassigned.
    """
    gmm = anisotropic_mixture()
    x = _run(kind, gmm.as_model(schedule), schedule)
    bad = mixture_mismatches(x, gmm, schedule, kind, exact=False)
    assert not bad, f"{kind} with the exact denoiser does not reproduce the mixture: " + "; ".join(bad)


@pytest.mark.parametrize("wrong", ["weights", "covs", "alpha_bar index"])
def test_mixture_check_rejects_a_wrong_denoiser(wrong, schedule):
    """The tolerances above are tight enough to catch plausible mistakes in a denoiser."""
    gmm = anisotropic_mixture()
    if wrong == "weights":
        model = GaussianMixture([0.4, 0.4, 0.2], gmm.means, gmm.covs).as_model(schedule)
    elif wrong == "covs":
        model = GaussianMixture(gmm.weights, gmm.means, 1.5 * gmm.covs).as_model(schedule)
    else:
        def model(x_t, t):                                   # off by a few steps: alpha_bar[t + 10]
            return gmm.eps(x_t, schedule.alpha_bar[(t + 10).clamp(max=schedule.T - 1)].double())
    x = _run("ddim", model, schedule)
    assert mixture_mismatches(x, gmm, schedule, "ddim", exact=False), f"a denoiser with wrong {wrong} passed the mixture check"
