"""Tests of diffcourse.schedules (book §1.2, eqs. 1.3-1.7; §1.3, eqs. 1.8-1.9), with diffusers as the oracle."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from diffcourse.schedules import NoiseSchedule, gather, make_schedule, quadratic_betas

# diffusers 0.42.1 + numpy 2.4 warn inside diffusers (not our code) about __array__(copy=...).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
# our name, its kwargs, diffusers' beta_schedule, its kwargs
ORACLE = [
    ("linear", {}, "linear", {}),
    ("scaled_linear", {}, "scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
    ("cosine", {}, "squaredcos_cap_v2", {}),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()).abs() / b.double().abs()).max())


@pytest.mark.parametrize("name,kw,d_name,d_kw", ORACLE)
def test_alpha_bar_matches_diffusers(name, kw, d_name, d_kw):
    ours = make_schedule(name, T, **kw)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=d_name, **d_kw)
    err = rel_err(ours.alpha_bar, ref.alphas_cumprod)
    assert err <= 1e-4, (f"{name}: alpha_bar differs from diffusers' {d_name} alphas_cumprod by {err:.2e} relative "
                         "(allowed 1e-4); check the beta formula in schedules.py (eqs. 1.3-1.6)")
    assert rel_err(ours.betas, ref.betas) <= 1e-5, f"{name}: betas differ from diffusers' {d_name}"


@pytest.mark.parametrize("name,kw,d_name,d_kw", ORACLE)
def test_sigma_matches_diffusers_euler_sigmas(name, kw, d_name, d_kw):
    ours = make_schedule(name, T, **kw)
    ref = EulerDiscreteScheduler(num_train_timesteps=T, beta_schedule=d_name, **d_kw)
    # diffusers derives sigma from a float32 alphas_cumprod; where 1 - alpha_bar ~ 1e-4 (the first steps of
    # the cosine schedule) that cancels to ~1e-3 relative, so the exact reference is its betas in float64.
    ab64 = torch.cumprod(1 - ref.betas.double(), dim=0)
    err = rel_err(ours.sigma, ((1 - ab64) / ab64).sqrt())
    assert err <= 1e-4, f"{name}: sigma differs from diffusers' (float64) sigma by {err:.2e} (eq. 1.7)"
    err = rel_err(ours.sigma[20:], ref.sigmas[:-1].flip(0)[20:])
    assert err <= 1e-4, f"{name}: sigma differs from EulerDiscreteScheduler.sigmas by {err:.2e} for t >= 20"


def test_quadratic_is_squared_linspace_of_sqrt_betas():
    s = make_schedule("quadratic", T)
    expected = torch.linspace(1e-4**0.5, 0.02**0.5, T, dtype=torch.float64) ** 2
    assert torch.allclose(s.betas.double(), expected, rtol=1e-6), "quadratic betas should be linspace(sqrt b0, sqrt b1)^2 (eq. 1.5)"
    assert math.isclose(float(s.betas[0]), 1e-4, rel_tol=1e-5) and math.isclose(float(s.betas[-1]), 0.02, rel_tol=1e-5)
    sl = make_schedule("scaled_linear", 10)
    assert torch.allclose(sl.betas.double(), quadratic_betas(10, 0.00085, 0.012), rtol=1e-6), \
        "scaled_linear should be the quadratic form with Stable Diffusion's end points (eq. 1.6)"


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic", "scaled_linear"])
def test_monotone_and_in_range(name):
    s = make_schedule(name, T)
    assert bool((s.alpha_bar[1:] < s.alpha_bar[:-1]).all()), f"{name}: alpha_bar must decrease strictly"
    assert bool((s.sigma[1:] > s.sigma[:-1]).all()), f"{name}: sigma must increase strictly"
    assert 0.99 < float(s.alpha_bar[0]) < 1 and float(s.alpha_bar[-1]) < 0.01, (
        f"{name}: alpha_bar should run from ~1 to ~0, got {float(s.alpha_bar[0])} .. {float(s.alpha_bar[-1])}")
    for f in ("betas", "alpha_bar", "sigma", "posterior_variance"):
        v = getattr(s, f)
        assert v.dtype == torch.float32 and v.shape == (T,), f"{name}.{f}: expected float32 ({T},), got {v.dtype} {tuple(v.shape)}"


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_posterior_coefficient_identities(name):
    s = make_schedule(name, T)
    d = {f: getattr(s, f).double() for f in ("alphas", "alpha_bar", "alpha_bar_prev", "posterior_mean_coef_x0",
                                             "posterior_mean_coef_xt", "posterior_variance", "betas")}
    # noise-free x_t = sqrt(ab_t) x0 must give mean sqrt(ab_{t-1}) x0 (eq. 1.8)
    lhs = d["posterior_mean_coef_x0"] + d["posterior_mean_coef_xt"] * d["alpha_bar"].sqrt()
    assert torch.allclose(lhs, d["alpha_bar_prev"].sqrt(), atol=1e-6), "eq. 1.8: c_x0 + c_xt sqrt(ab_t) != sqrt(ab_{t-1})"
    # variance decomposition: 1 - ab_{t-1} = c_xt^2 (1 - ab_t) + beta~ (eq. 1.9)
    rhs = d["posterior_mean_coef_xt"] ** 2 * (1 - d["alpha_bar"]) + d["posterior_variance"]
    assert torch.allclose(rhs, 1 - d["alpha_bar_prev"], atol=1e-6), "eq. 1.9: variance decomposition fails"
    assert float(s.posterior_variance[0]) == 0.0, "beta~ at t=0 should be 0 (alpha_bar_prev = 1)"
    assert math.isclose(float(s.posterior_log_variance_clipped[0]), math.log(float(s.posterior_variance[1])),
                        rel_tol=1e-6), "the clipped log-variance at t=0 should repeat t=1's value (DDPM)"
    assert bool((d["posterior_variance"] <= d["betas"] + 1e-9).all()), "beta~_t <= beta_t must hold"


def test_posterior_variance_matches_diffusers():
    s = make_schedule("linear", T)
    ref = DDPMScheduler(num_train_timesteps=T)
    ref_var = torch.stack([ref._get_variance(t) for t in range(1, T)])
    assert rel_err(s.posterior_variance[1:], ref_var) <= 1e-3, "posterior_variance differs from DDPMScheduler._get_variance"


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_snr_and_sigma_identities(name):
    s = make_schedule(name, T)
    ab = torch.cumprod(1 - s.betas.double(), dim=0)            # float64: 1 - alpha_bar cancels in float32
    assert rel_err(s.snr, ab / (1 - ab)) <= 1e-4, "snr should be alpha_bar / (1 - alpha_bar) (eq. 1.7)"
    assert rel_err(s.sigma, ((1 - ab) / ab).sqrt()) <= 1e-4, "sigma should be sqrt((1-ab)/ab) (eq. 1.7)"
    assert torch.allclose(s.sigma.double() ** 2 * s.snr.double(), torch.ones(T, dtype=torch.float64), atol=1e-4), \
        "sigma^2 * snr should be 1"
    assert torch.allclose(s.log_snr.double(), s.snr.double().log(), atol=1e-4), "log_snr should be log(snr)"
    assert torch.allclose(s.sqrt_alpha_bar**2 + s.sqrt_one_minus_alpha_bar**2, torch.ones(T), atol=1e-6)


def test_gather_shapes_and_values():
    s = make_schedule("linear", T)
    t = torch.tensor([0, 10, 999])
    g = gather(s.alpha_bar, t, 4)
    assert g.shape == (3, 1, 1, 1), f"gather should give (N, 1, 1, 1) for ndim=4, got {tuple(g.shape)}"
    assert torch.equal(g.flatten(), s.alpha_bar[t])
    assert gather(s.alpha_bar, 5, 2).shape == (1, 1)


def test_to_device_keeps_values():
    s = make_schedule("cosine", 50)
    s2 = s.to("cpu")
    assert isinstance(s2, NoiseSchedule) and torch.equal(s2.alpha_bar, s.alpha_bar) and s2.name == "cosine"
    assert len(s2) == 50 and s2.T == 50


@pytest.mark.parametrize("call,match", [
    (lambda: make_schedule("sigmoid", T), "unknown schedule"),
    (lambda: make_schedule("linear", 1), "T must be"),
    (lambda: make_schedule("linear", 10.0), "T must be"),
    (lambda: NoiseSchedule.from_betas(torch.tensor([0.1, 1.5])), "strictly between"),
    (lambda: NoiseSchedule.from_betas(torch.tensor([0.0, 0.1])), "strictly between"),
    (lambda: NoiseSchedule.from_betas(torch.ones(2, 2) * 0.1), "1-D"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
