"""Tests of the forward process, the targets and the posterior (book §1.1 eq. 1.2, §1.3 eqs. 1.8-1.9,
§1.4 eq. 1.10, §1.5 eqs. 1.11-1.13)."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from diffcourse.forward import diffusion_loss, q_sample, sample_noise_like, sample_timesteps, simple_loss
from diffcourse.posterior import q_posterior_mean_variance
from diffcourse.schedules import make_schedule
from diffcourse.targets import (eps_from_score, eps_from_v, eps_from_x0, gather_like, predict_eps_x0, score_from_eps,
                                target, to_eps, to_x0, v_from_eps, v_target, x0_from_eps, x0_from_v)

# diffusers 0.42.1 + numpy 2.4 warn inside diffusers (not our code) about __array__(copy=...).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
SCHED = make_schedule("linear", T)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- q_sample (eq. 1.2)

def test_q_sample_statistics_match_eq_1_2():
    x0 = torch.full((20000, 1), 1.5)
    for t_ in (10, 300, 900):
        t = torch.full((len(x0),), t_)
        x_t = q_sample(x0, t, SCHED, sample_noise_like(x0, gen(t_)))
        ab = float(SCHED.alpha_bar[t_])
        mean, var = float(x_t.mean()), float(x_t.var())
        assert abs(mean - math.sqrt(ab) * 1.5) < 0.03, (
            f"t={t_}: mean of x_t should be sqrt(alpha_bar) x0 = {math.sqrt(ab) * 1.5:.3f}, got {mean:.3f}")
        assert abs(var - (1 - ab)) < 0.03, f"t={t_}: variance of x_t should be 1 - alpha_bar = {1 - ab:.3f}, got {var:.3f}"


def test_q_sample_at_t0_is_almost_x0_and_matches_diffusers_add_noise():
    x0 = torch.randn(4, 3, 8, 8, generator=gen(1))
    noise = sample_noise_like(x0, gen(2))
    x_t = q_sample(x0, torch.zeros(4, dtype=torch.long), SCHED, noise)
    assert float((x_t - x0).abs().max()) < 0.05, "q_sample at t=0 should return x0 almost unchanged"
    t = torch.tensor([0, 10, 500, 999])
    ref = DDPMScheduler(num_train_timesteps=T).add_noise(x0, noise, t)
    err = float((q_sample(x0, t, SCHED, noise) - ref).abs().max())
    assert err < 1e-5, f"q_sample differs from diffusers' add_noise by {err:.2e}; did you use alpha instead of alpha_bar?"


@pytest.mark.parametrize("shape", [(5, 2), (5, 3, 4, 4), (5, 2, 3, 4, 4)])
def test_q_sample_any_trailing_shape_and_dtype(shape):
    x0 = torch.randn(shape, generator=gen(3), dtype=torch.float64)
    out = q_sample(x0, torch.arange(5) * 100, SCHED, torch.randn(shape, generator=gen(4), dtype=torch.float64))
    assert out.shape == shape and out.dtype == torch.float64, f"expected {shape} float64, got {tuple(out.shape)} {out.dtype}"


@pytest.mark.parametrize("t,noise_shape,match", [
    (torch.tensor([0, 1]), (3, 2), "t must be an"),
    (torch.tensor([0, 1, 1000]), (3, 2), "timesteps must lie"),
    (torch.tensor([0, -1, 5]), (3, 2), "timesteps must lie"),
    (torch.tensor([0, 1, 2]), (3, 3), "noise must have"),
])
def test_q_sample_bad_inputs(t, noise_shape, match):
    with pytest.raises(ValueError, match=match):
        q_sample(torch.zeros(3, 2), t, SCHED, torch.zeros(noise_shape))


def test_noise_draws_are_reproducible_and_follow_the_data():
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    a, b = sample_noise_like(x0, gen(5)), sample_noise_like(x0, gen(5))
    assert torch.equal(a, b) and a.dtype == torch.float64 and a.shape == (2, 3)
    assert not torch.equal(a, sample_noise_like(x0, gen(6))), "different seeds should give different noise"
    t = sample_timesteps(1000, SCHED, gen(7))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= T - 1 and len(t.unique()) > 400


# ----------------------------------------------------------------------------- conversions (eqs. 1.11-1.13)

@pytest.mark.parametrize("alpha_bar", [0.9999, 0.5, 0.003, "tensor"])
def test_conversions_round_trip(alpha_bar):
    x0 = torch.randn(6, 2, 3, generator=gen(8), dtype=torch.float64)
    eps = torch.randn(6, 2, 3, generator=gen(9), dtype=torch.float64)
    ab = SCHED.alpha_bar.double()[torch.tensor([0, 5, 100, 400, 800, 999])].reshape(6, 1, 1) \
        if alpha_bar == "tensor" else alpha_bar
    sa = ab.sqrt() if isinstance(ab, torch.Tensor) else math.sqrt(ab)
    s1 = (1 - ab).sqrt() if isinstance(ab, torch.Tensor) else math.sqrt(1 - ab)
    x_t = sa * x0 + s1 * eps
    v = v_target(x0, eps, ab)
    checks = {
        "x0_from_eps": (x0_from_eps(x_t, eps, ab), x0),
        "eps_from_x0": (eps_from_x0(x_t, x0, ab), eps),
        "eps_from_v": (eps_from_v(x_t, v, ab), eps),
        "x0_from_v": (x0_from_v(x_t, v, ab), x0),
        "v_from_eps": (v_from_eps(x_t, eps, ab), v),
        "eps_from_score(score_from_eps)": (eps_from_score(score_from_eps(eps, ab), ab), eps),
    }
    for name, (got, want) in checks.items():
        err = float((got - want).abs().max())
        assert err < 1e-6, f"{name} at alpha_bar={alpha_bar}: round trip off by {err:.2e} (eqs. 1.11-1.13)"


def test_v_target_matches_diffusers_get_velocity():
    x0, eps = torch.randn(4, 2, 5, generator=gen(10)), torch.randn(4, 2, 5, generator=gen(11))
    t = torch.tensor([1, 200, 600, 999])
    ref = DDPMScheduler(num_train_timesteps=T).get_velocity(x0, eps, t)
    err = float((target("v_prediction", x0, eps, t, SCHED) - ref).abs().max())
    assert err < 1e-5, f"v target differs from diffusers' get_velocity by {err:.2e} (eq. 1.12: v = sqrt(ab) eps - sqrt(1-ab) x0)"
    assert target("epsilon", x0, eps, t, SCHED) is eps and target("sample", x0, eps, t, SCHED) is x0
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        target("score", x0, eps, t, SCHED)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_to_eps_and_to_x0_invert_every_target(kind):
    x0, eps = torch.randn(4, 3, generator=gen(12)), torch.randn(4, 3, generator=gen(13))
    t = torch.tensor([3, 250, 700, 990])
    x_t = q_sample(x0, t, SCHED, eps)
    out = target(kind, x0, eps, t, SCHED)
    assert torch.allclose(to_eps(out, x_t, t, SCHED, kind), eps, atol=1e-3), f"to_eps({kind}) did not recover eps"
    assert torch.allclose(to_x0(out, x_t, t, SCHED, kind), x0, atol=1e-3), f"to_x0({kind}) did not recover x0"
    e2, x2 = predict_eps_x0(out, x_t, gather_like(SCHED.alpha_bar, t, x_t), kind)
    assert torch.allclose(e2, eps, atol=1e-3) and torch.allclose(x2, x0, atol=1e-3)


def test_score_is_tweedie_for_gaussian_data():
    # data ~ N(mu, s^2): q(x_t) = N(sqrt(ab) mu, ab s^2 + 1 - ab), so the exact E[eps | x_t] and score are known.
    mu, s2 = 0.7, 0.3**2
    x_t = torch.linspace(-3, 3, 41, dtype=torch.float64).requires_grad_(True)
    for t_ in (50, 500, 950):
        ab = float(SCHED.alpha_bar[t_])
        var = ab * s2 + 1 - ab
        log_q = (-(x_t - math.sqrt(ab) * mu) ** 2 / (2 * var)).sum()
        (score_autograd,) = torch.autograd.grad(log_q, x_t)
        eps_mean = math.sqrt(1 - ab) * (x_t.detach() - math.sqrt(ab) * mu) / var        # E[eps | x_t]
        err = float((score_from_eps(eps_mean, ab) - score_autograd).abs().max())
        assert err < 1e-9, f"t={t_}: -E[eps|x_t]/sqrt(1-ab) should equal grad log q(x_t) (eq. 1.13); off by {err:.2e}"


# ----------------------------------------------------------------------------- loss (eq. 1.10)

@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_diffusion_loss_is_zero_for_the_true_target_and_positive_otherwise(kind):
    x0 = torch.randn(8, 2, generator=gen(14))
    t = sample_timesteps(8, SCHED, gen(15))
    noise = sample_noise_like(x0, gen(16))
    perfect = lambda x_t, t_: target(kind, x0, noise, t_, SCHED)                       # noqa: E731
    assert float(diffusion_loss(perfect, x0, SCHED, prediction_type=kind, t=t, noise=noise)) < 1e-12
    zero = diffusion_loss(lambda x_t, t_: torch.zeros_like(x_t), x0, SCHED, prediction_type=kind, t=t, noise=noise)
    want = float((target(kind, x0, noise, t, SCHED) ** 2).mean())
    assert math.isclose(float(zero), want, rel_tol=1e-5), f"loss of a zero model should be mean(target^2)={want}, got {float(zero)}"


def test_diffusion_loss_draws_t_then_noise_from_the_generator_and_has_gradients():
    x0 = torch.randn(16, 2, generator=gen(17))
    w = torch.tensor(0.5, requires_grad=True)
    model = lambda x_t, t: w * x_t                                                     # noqa: E731
    a = diffusion_loss(model, x0, SCHED, gen(18))
    g = gen(18)
    t, noise = sample_timesteps(16, SCHED, g), sample_noise_like(x0, g)
    b = diffusion_loss(model, x0, SCHED, t=t, noise=noise)
    assert torch.equal(a, b), "diffusion_loss should draw t first, then the noise, from the generator"
    a.backward()
    assert w.grad is not None and float(w.grad.abs()) > 0, "the loss should be differentiable in the model's parameters"
    assert a.ndim == 0
    with pytest.raises(ValueError, match="shape"):
        simple_loss(torch.zeros(2, 3), torch.zeros(3, 2))


# ----------------------------------------------------------------------------- posterior (eqs. 1.8-1.9)

def test_posterior_matches_schedule_and_diffusers_ddpm_step():
    x0 = torch.randn(3, 4, generator=gen(19)).clamp(-1, 1)
    x_t = torch.randn(3, 4, generator=gen(20))
    for t_ in (1, 37, 999):
        t = torch.full((3,), t_)
        mean, var, logvar = q_posterior_mean_variance(x0, x_t, t, SCHED)
        assert mean.shape == (3, 4) and var.shape == (3, 1) and logvar.shape == (3, 1)
        ddpm = DDPMScheduler(num_train_timesteps=T, prediction_type="sample", clip_sample=False)
        # diffusers' float32 alphas_cumprod makes 1 - ab_t/ab_{t-1} ~1e-3 inexact at small t; use float64.
        ddpm.alphas_cumprod = torch.cumprod(1 - ddpm.betas.double(), dim=0)
        prev = ddpm.step(x0, t_, x_t, generator=gen(21)).prev_sample                  # mean + sqrt(var) z
        z = randn_tensor(x_t.shape, generator=gen(21))
        ref_mean = prev - ddpm._get_variance(t_) ** 0.5 * z
        err = float((mean - ref_mean).abs().max())
        assert err < 1e-5, f"t={t_}: posterior mean (eq. 1.8) differs from DDPMScheduler.step by {err:.2e}"
        rel = abs(float(var[0]) / float(ddpm._get_variance(t_)) - 1)
        assert rel < 1e-5, f"t={t_}: posterior variance (eq. 1.9) differs from diffusers by {rel:.1e} relative"
        assert torch.allclose(logvar.exp(), var, rtol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        q_posterior_mean_variance(x0, x_t[:, :2], torch.zeros(3, dtype=torch.long), SCHED)
