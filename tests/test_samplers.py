"""Interface tests of diffcourse.samplers (book §2.2-2.5): inputs, reproducibility, callbacks, trajectories,
progress bars, errors, the equivalences in the samplers' table, and sampling a known distribution."""
from __future__ import annotations

import math

import pytest
import torch

from diffcourse.samplers import (SAMPLERS, Trajectory, make_timesteps, sample_ddim, sample_ddpm, sample_dpmpp_2m,
                                 sample_euler, sample_euler_ancestral, sigma_at)
from diffcourse.schedules import make_schedule

T = 1000
SCHED = make_schedule("linear", T)
STOCHASTIC = {"ddpm": {}, "ddim": dict(eta=1.0), "euler_ancestral": {}}
FAST = dict(num_steps=8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_denoiser(d: float = 0.5, schedule=SCHED):
    """Exact eps-prediction for data ~ N(0, d^2 I); t may be fractional (sigma interpolated as in the Euler samplers)."""
    sig = schedule.sigma.double()

    def model(x, t):
        t = t.double()
        lo = t.floor().long().clamp(0, len(sig) - 2)
        sigma = ((1 - (t - lo)) * sig[lo] + (t - lo) * sig[lo + 1]).to(x).reshape(-1, *([1] * (x.ndim - 1)))
        ab = 1 / (1 + sigma**2)                                                      # (N, 1, ...)
        return (1 - ab).sqrt() * x / (ab * d**2 + 1 - ab)                          # E[eps | x_t]
    return model


MODEL = gaussian_denoiser()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_shape_input_equals_tensor_drawn_from_the_same_generator(name):
    sampler = SAMPLERS[name]
    a = sampler(MODEL, (4, 2, 3), SCHED, generator=gen(0), **FAST)
    g = gen(0)
    x_T = torch.randn((4, 2, 3), generator=g)                                       # x_T is always the first draw
    b = sampler(MODEL, x_T, SCHED, generator=g, **FAST)
    assert a.shape == (4, 2, 3) and a.dtype == torch.float32
    assert torch.equal(a, b), f"{name}: a shape input should draw x_T first from the generator, then the step noise"


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_generator_reproducibility(name):
    sampler = SAMPLERS[name]
    a = sampler(MODEL, (5, 2), SCHED, generator=gen(1), **FAST)
    b = sampler(MODEL, (5, 2), SCHED, generator=gen(1), **FAST)
    c = sampler(MODEL, (5, 2), SCHED, generator=gen(2), **FAST)
    assert torch.equal(a, b), f"{name}: the same seed must give the same samples"
    assert not torch.equal(a, c), f"{name}: different seeds should give different samples"


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_stochastic_samplers_use_the_generator_for_step_noise(name):
    x_T = torch.randn(5, 2, generator=gen(3))
    a = SAMPLERS[name](MODEL, x_T, SCHED, generator=gen(4), **FAST, **STOCHASTIC[name])
    b = SAMPLERS[name](MODEL, x_T, SCHED, generator=gen(5), **FAST, **STOCHASTIC[name])
    assert not torch.equal(a, b), f"{name}: step noise should come from the generator"


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "euler"])
def test_deterministic_samplers_ignore_the_generator_given_a_tensor(name):
    x_T = torch.randn(5, 2, generator=gen(6))
    a = SAMPLERS[name](MODEL, x_T, SCHED, generator=gen(7), **FAST)
    b = SAMPLERS[name](MODEL, x_T, SCHED, **FAST)
    assert torch.equal(a, b), f"{name} is deterministic: the generator should only be used to draw x_T"


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_trajectory_and_progress(name, capsys):
    sampler, calls = SAMPLERS[name], []
    traj = sampler(MODEL, (3, 2), SCHED, generator=gen(8), num_steps=6, return_trajectory=True, progress=True,
                   callback=lambda i, t, x_t, x0: calls.append((i, t, x_t.shape, x0.shape)))
    plain = sampler(MODEL, (3, 2), SCHED, generator=gen(8), num_steps=6)
    assert isinstance(traj, Trajectory)
    assert [c[0] for c in calls] == list(range(6)), f"{name}: callback should be called once per step with i=0..5"
    assert all(c[2] == (3, 2) and c[3] == (3, 2) for c in calls)
    assert torch.equal(torch.stack([torch.as_tensor(c[1]) for c in calls]), traj.timesteps), \
        "callback t should be the grid timestep the model saw"
    assert len(traj.x_t) == 7 and len(traj.x0) == 6, (
        f"{name}: expected 7 states (x_T + 6 steps) and 6 x0 predictions, got {len(traj.x_t)}, {len(traj.x0)}")
    assert torch.equal(traj.sample, plain) and torch.equal(traj.x_t[-1], plain), \
        f"{name}: the trajectory's final state should be the plain return value"
    err = capsys.readouterr().err
    assert "/6 [" in err, f"{name}: progress=True should show a tqdm bar on stderr, got {err[-200:]!r}"


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_model_receives_batched_timesteps_of_the_right_kind_and_dtype_is_kept(name):
    seen = []

    def model(x, t):
        seen.append((t.shape, t.dtype, x.dtype))
        return MODEL(x, t)

    out = SAMPLERS[name](model, torch.randn(4, 3, generator=gen(9), dtype=torch.float64), SCHED, generator=gen(10),
                         num_steps=5)
    assert out.dtype == torch.float64, f"{name}: the sample should keep x_T's dtype, got {out.dtype}"
    want = torch.float32 if name.startswith("euler") else torch.long
    assert all(s == (4,) and d == want and xd == torch.float64 for s, d, xd in seen), (
        f"{name}: model(x_t, t) should get t as an (N,) {want} tensor, got {seen[0]}")


def test_ddim_with_step_counts_that_do_not_divide_T():
    for spacing in ("leading", "trailing", "linspace"):
        calls = []
        out = sample_ddim(MODEL, (64, 2), SCHED, generator=gen(11), num_steps=7, spacing=spacing,
                          callback=lambda i, t, x, x0: calls.append(int(t)))
        assert len(calls) == 7 and len(set(calls)) == 7, f"{spacing}: 7 distinct grid points expected, got {calls}"
        assert torch.isfinite(out).all()
    assert make_timesteps(7, T, "leading").tolist() == [852, 710, 568, 426, 284, 142, 0]


def test_ddim_eta1_equals_ddpm_on_the_same_subgrid():
    x_T = torch.randn(6, 2, generator=gen(12), dtype=torch.float64)
    grid = make_timesteps(20, T, "leading")
    a = sample_ddpm(MODEL, x_T, SCHED, timesteps=grid, generator=gen(13))
    b = sample_ddim(MODEL, x_T, SCHED, timesteps=grid, eta=1.0, generator=gen(13))
    err = float((a - b).abs().max())
    assert err < 1e-10, f"DDIM with eta=1 should be DDPM on the same grid with the same noise (eq. 2.2); off by {err:.2e}"


def test_euler_ancestral_eta0_is_euler_and_dpm_first_step_is_ddim():
    x_T = torch.randn(6, 2, generator=gen(14))
    assert torch.allclose(sample_euler_ancestral(MODEL, x_T, SCHED, eta=0.0, num_steps=10),
                          sample_euler(MODEL, x_T, SCHED, num_steps=10), atol=1e-6)
    grid = make_timesteps(10, T, "linspace", skip_last=True)
    dpm = sample_dpmpp_2m(MODEL, x_T, SCHED, timesteps=grid, return_trajectory=True)
    ddim = sample_ddim(MODEL, x_T, SCHED, timesteps=grid, return_trajectory=True)
    assert torch.allclose(dpm.x_t[1], ddim.x_t[1], atol=1e-5), "DPM-Solver++'s first (first-order) step is a DDIM step"
    assert not torch.allclose(dpm.x_t[2], ddim.x_t[2], atol=1e-5), "from step 2 on DPM-Solver++ is second order"


# Coarse grids shrink the spread (std at 25 steps: DDIM 0.45, Euler 0.45, DPM-Solver++ 0.49, DDPM 0.41);
# these step counts are where each sampler has converged to within 0.02 of d = 0.5.
@pytest.mark.parametrize("name,kw", [("ddpm", dict(num_steps=1000)), ("ddim", dict(num_steps=250)),
                                     ("ddim", dict(num_steps=1000, eta=1.0)), ("dpmpp_2m", dict(num_steps=25)),
                                     ("euler", dict(num_steps=250)), ("euler_ancestral", dict(num_steps=500))])
def test_exact_gaussian_denoiser_reproduces_the_data_distribution(name, kw):
    d = 0.5
    out = SAMPLERS[name](gaussian_denoiser(d), (2000, 2), SCHED, generator=gen(15), **kw)
    std, mean = float(out.std()), float(out.mean())
    assert abs(std - d) < 0.02 and abs(mean) < 0.03, (
        f"{name}: with the exact denoiser of N(0, {d}^2) the samples should have std ~{d}, mean ~0; "
        f"got std {std:.3f}, mean {mean:.3f}")


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_every_sampler_accepts_every_parameterisation(kind):
    def model(x, t):                                                                # the same denoiser, other outputs
        eps = MODEL(x, t)
        sigma = sigma_at(SCHED, t).to(x).reshape(-1, *([1] * (x.ndim - 1)))
        a, s = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
        x0 = (x - s * eps) / a
        return x0 if kind == "sample" else a * eps - s * x0

    x_T = torch.randn(8, 2, generator=gen(16))
    for name, sampler in SAMPLERS.items():
        ref = sampler(MODEL, x_T, SCHED, num_steps=6, generator=gen(17))
        got = sampler(model, x_T, SCHED, num_steps=6, generator=gen(17), prediction_type=kind)
        assert torch.allclose(got, ref, atol=1e-3), f"{name}: prediction_type={kind} should give the eps-model's samples"


BAD = [
    (dict(num_steps=5, timesteps=[10, 5]), ValueError, "not both"),
    (dict(timesteps=[5, 10]), ValueError, "strictly descending"),
    (dict(timesteps=[1000, 5]), ValueError, "0..999"),
    (dict(timesteps=[[10, 5]]), ValueError, "1-D"),
    (dict(num_steps=0), ValueError, "num_steps"),
    (dict(num_steps=1001), ValueError, "num_steps"),
    (dict(num_steps=5, spacing="cosine"), ValueError, "spacing"),
    (dict(num_steps=5, prediction_type="eps"), ValueError, "prediction_type"),
    (dict(num_steps=5, callback=3), TypeError, "callback"),
]


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("kw,exc,match", BAD)
def test_bad_arguments_give_clear_errors(name, kw, exc, match):
    with pytest.raises(exc, match=match):
        SAMPLERS[name](MODEL, (2, 2), SCHED, **kw)


def test_more_bad_arguments():
    with pytest.raises(ValueError, match="descending"):     # linspace(0, 999, 1001).round() repeats timesteps
        sample_dpmpp_2m(MODEL, (2, 2), SCHED, num_steps=1000)
    with pytest.raises(ValueError, match="fractional"):
        sample_ddim(MODEL, (2, 2), SCHED, timesteps=[900.5, 10.0])
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eta"):
            sample_ddim(MODEL, (2, 2), SCHED, eta=eta)
        with pytest.raises(ValueError, match="eta"):
            sample_euler_ancestral(MODEL, (2, 2), SCHED, eta=eta)
    for bad in ("(2, 2)", (2, 0), (2, 2.0), torch.zeros(2, 2, dtype=torch.long)):
        with pytest.raises(TypeError, match="x_T"):
            sample_ddim(MODEL, bad, SCHED, num_steps=3)
    with pytest.raises(ValueError, match="shaped like x_t"):
        sample_ddim(lambda x, t: x[:, :1], (2, 2), SCHED, num_steps=3)
    # fractional timesteps are fine for the Euler samplers
    out = sample_euler(MODEL, (2, 2), SCHED, timesteps=[999.0, 500.5, 10.25], generator=gen(18))
    assert torch.isfinite(out).all()


def test_x_T_device_rule():
    out = sample_ddim(MODEL, (3, 2), SCHED, num_steps=3, generator=gen(19), device="cpu")
    assert out.device.type == "cpu"
    assert math.isfinite(float(out.sum()))
