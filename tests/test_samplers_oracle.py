"""Oracle tests: every diffcourse sampler against the matching diffusers scheduler loop (book §2.2-2.5).

A deterministic toy model (a smooth nonlinear function of x and t) drives both loops from the same
x_T (and, for the stochastic samplers, the same generator seed); the states after every step and the
final samples must agree to 1e-4 relative. If one fails, the message names the step; look at the
numbered comments of that sampler's update in diffcourse/samplers/.
"""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)
from diffusers.utils.torch_utils import randn_tensor

from diffcourse.samplers import (sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_euler, sample_euler_ancestral,
                                 sigma_at)
from diffcourse.schedules import make_schedule

# diffusers 0.42.1 + numpy 2.4 warn inside diffusers (not our code) about __array__(copy=...).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
SHAPE = (3, 2, 4, 4)
RTOL = 1e-4
DIFFUSERS_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
SCHEDULE_KW = {"linear": {}, "scaled_linear": dict(beta_start=0.00085, beta_end=0.012), "cosine": {}}


def make_toy_model(schedule, prediction_type: str = "epsilon", d: float = 0.5):
    """A deterministic stand-in for a trained network: model(x (N, ...), t (N,)) -> (N, ...).

    The exact denoiser for data ~ N(0, d^2 I) plus a smooth nonlinear term g(x, t), added as
    eps_hat = eps*(x) + sqrt(ab) g and x0_hat = x0*(x) - sqrt(1-ab) g (which keeps x_t = sqrt(ab) x0_hat +
    sqrt(1-ab) eps_hat exact). Both predictions stay O(1) at every t, so the comparison is well
    conditioned (a toy that is not a denoiser sends x0_hat to 1e4 and turns float32 round-off into
    failures). It returns eps, x0 or v as asked; t may be fractional (Euler): alpha_bar(t) then comes
    from sigma interpolated linearly, as in diffusers.
    """
    sig = schedule.sigma.double()                                                   # (T,)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.double().reshape(-1, *([1] * (x.ndim - 1)))                           # (N, 1, ..., 1)
        lo = t.floor().long().clamp(0, T - 2)
        sigma = (1 - (t - lo)) * sig[lo] + (t - lo) * sig[lo + 1]
        ab = 1 / (1 + sigma**2)
        a, s, u = ab.sqrt().to(x.dtype), (1 - ab).sqrt().to(x.dtype), (t / T).to(x.dtype)
        denom = (ab * d**2 + 1 - ab).to(x.dtype)
        g = 0.3 * torch.tanh(x) * (1 - u) + 0.2 * torch.sin(2 * x + 3 * u)          # (N, ...)
        eps = s * x / denom + a * g
        x0 = a * d**2 * x / denom - s * g
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction_type]

    return model


def schedules(name: str):
    ours = make_schedule(name, T, **SCHEDULE_KW[name])
    kw = dict(num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[name])
    if name == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)
    return ours, kw


def x_start(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def diffusers_loop(scheduler, model, x: torch.Tensor, generator=None, **step_kwargs):
    """The standard diffusers loop: scale_model_input, model, step. Returns (final, states, x0 preds)."""
    states, x0s = [], []
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        out = model(x_in, t.expand(len(x)))
        res = scheduler.step(out, t, x, generator=generator, **step_kwargs)
        x = res.prev_sample
        states.append(x)
        x0s.append(getattr(res, "pred_original_sample", None))
    return x, states, x0s


def ours_loop(sampler, model, x_T, schedule, **kw):
    """Run a diffcourse sampler, collecting (t, x_t, x0) through the callback."""
    seen = []
    out = sampler(model, x_T, schedule, callback=lambda i, t, x, x0: seen.append((t, x, x0)), **kw)
    return out, seen


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    err = float((ours - ref).abs().max())
    scale = max(float(ref.abs().max()), 1.0)
    assert err <= rtol * scale, (f"{what}: diffcourse and diffusers differ by max |diff| = {err:.3g} "
                                 f"(allowed {rtol * scale:.3g}); look at that sampler's numbered update lines")


def assert_trajectories(ours_seen, ref_states, name: str, to_ref=lambda i, x: x) -> None:
    assert len(ours_seen) == len(ref_states), (
        f"{name}: expected {len(ref_states)} steps (diffusers' grid), the callback saw {len(ours_seen)}")
    for i, ((_, x, _), ref) in enumerate(zip(ours_seen, ref_states)):
        assert_close(to_ref(i, x), ref, f"{name}, state after step {i}")


# ----------------------------------------------------------------------------- DDPM (§2.2)

@pytest.mark.parametrize("schedule_name,f64_table", [("linear", False), ("cosine", True)])
def test_ddpm_full_chain_matches_diffusers_with_same_seed(schedule_name, f64_table):
    schedule, kw = schedules(schedule_name)
    model = make_toy_model(schedule)
    ref_sched = DDPMScheduler(**kw, clip_sample=False)
    ref_sched.set_timesteps(T)
    if f64_table:
        # Near t = 0 the cosine schedule has 1 - alpha_bar ~ 4e-5, where diffusers' float32 alphas_cumprod
        # cancels to ~1e-3 relative error in its coefficients (final samples then differ by ~4e-4).
        # diffcourse computes them in float64 (samplers/common.py: alpha_bar_f64); give diffusers the same table.
        ref_sched.alphas_cumprod = torch.cumprod(1 - ref_sched.betas.double(), dim=0)
    g = torch.Generator().manual_seed(1)
    x_T = randn_tensor(SHAPE, generator=g)                       # a pipeline's first draw
    ref, ref_states, ref_x0 = diffusers_loop(ref_sched, model, x_T, generator=g)
    ours, seen = ours_loop(sample_ddpm, model, SHAPE, schedule, generator=torch.Generator().manual_seed(1))
    assert_close(seen[0][2], ref_x0[0], "DDPM x0 prediction at the first step")
    assert_trajectories(seen, ref_states, f"DDPM ({schedule_name}, 1000 steps)")
    assert_close(ours, ref, "DDPM final sample")


@pytest.mark.parametrize("num_steps,spacing", [(50, "leading"), (7, "trailing"), (10, "linspace")])
def test_ddpm_subgrid_matches_diffusers(num_steps, spacing):
    schedule, kw = schedules("linear")
    model = make_toy_model(schedule)
    ref_sched = DDPMScheduler(**kw, clip_sample=False, timestep_spacing=spacing)
    ref_sched.set_timesteps(num_steps)
    x_T = x_start(2)
    ref, ref_states, _ = diffusers_loop(ref_sched, model, x_T, generator=torch.Generator().manual_seed(3))
    ours, seen = ours_loop(sample_ddpm, model, x_T, schedule, num_steps=num_steps, spacing=spacing,
                           generator=torch.Generator().manual_seed(3))
    assert_trajectories(seen, ref_states, f"DDPM {num_steps} {spacing} steps")
    assert_close(ours, ref, "DDPM sub-grid final sample")


def test_ddpm_clip_x0_matches_diffusers_clip_sample():
    schedule, kw = schedules("linear")
    model = make_toy_model(schedule)
    ref_sched = DDPMScheduler(**kw, clip_sample=True)            # diffusers' default
    ref_sched.set_timesteps(20)
    x_T = 3 * x_start(4)
    ref, _, ref_x0 = diffusers_loop(ref_sched, model, x_T, generator=torch.Generator().manual_seed(5))
    ours, seen = ours_loop(sample_ddpm, model, x_T, schedule, num_steps=20, clip_x0=1.0,
                           generator=torch.Generator().manual_seed(5))
    assert float(seen[0][2].abs().max()) <= 1.0, "clip_x0=1.0 should clamp x0_hat into [-1, 1]"
    assert_close(ours, ref, "DDPM with clip_x0=1.0 vs diffusers clip_sample=True")


# ----------------------------------------------------------------------------- DDIM (§2.3)

@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("num_steps", [10, 7, 50])
def test_ddim_matches_diffusers(num_steps, eta):
    schedule, kw = schedules("linear")
    model = make_toy_model(schedule)
    ref_sched = DDIMScheduler(**kw, clip_sample=False)           # leading spacing, set_alpha_to_one=True
    ref_sched.set_timesteps(num_steps)
    x_T = x_start(6)
    ref, ref_states, ref_x0 = diffusers_loop(ref_sched, model, x_T, generator=torch.Generator().manual_seed(7), eta=eta)
    ours, seen = ours_loop(sample_ddim, model, x_T, schedule, num_steps=num_steps, eta=eta,
                           generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.stack([t for t, _, _ in seen]), ref_sched.timesteps), (
        f"DDIM grid for {num_steps} steps differs from diffusers': {[int(t) for t, _, _ in seen]} vs "
        f"{ref_sched.timesteps.tolist()} (see samplers/grids.py)")
    for i, (_, _, x0) in enumerate(seen):
        assert_close(x0, ref_x0[i], f"DDIM eta={eta} x0 prediction at step {i}")
    assert_trajectories(seen, ref_states, f"DDIM eta={eta}, {num_steps} steps")
    assert_close(ours, ref, f"DDIM eta={eta}, {num_steps} steps, final sample")


def test_ddim_trailing_grid_matches_diffusers_when_n_divides_T():
    # (for "linspace", or "trailing" with n not dividing T, DDIMScheduler steps to t - T//n, off its own grid;
    # see the module docstring of samplers/ddim.py)
    schedule, kw = schedules("linear")
    model = make_toy_model(schedule)
    ref_sched = DDIMScheduler(**kw, clip_sample=False, timestep_spacing="trailing")
    ref_sched.set_timesteps(10)
    x_T = x_start(14)
    ref, ref_states, _ = diffusers_loop(ref_sched, model, x_T, eta=0.0)
    ours, seen = ours_loop(sample_ddim, model, x_T, schedule, num_steps=10, spacing="trailing")
    assert_trajectories(seen, ref_states, "DDIM, 10 trailing steps")
    assert_close(ours, ref, "DDIM trailing final sample")


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_ddim_other_parameterisations_match_diffusers(prediction_type):
    schedule, kw = schedules("scaled_linear")
    model = make_toy_model(schedule, prediction_type)
    ref_sched = DDIMScheduler(**kw, clip_sample=False, prediction_type=prediction_type, timestep_spacing="trailing",
                              steps_offset=0)
    ref_sched.set_timesteps(10)
    x_T = x_start(8)
    ref, ref_states, _ = diffusers_loop(ref_sched, model, x_T, eta=0.0)
    ours, seen = ours_loop(sample_ddim, model, x_T, schedule, timesteps=ref_sched.timesteps, prediction_type=prediction_type)
    assert_trajectories(seen, ref_states, f"DDIM with prediction_type={prediction_type}")
    assert_close(ours, ref, f"DDIM ({prediction_type}) final sample")


# ----------------------------------------------------------------------------- DPM-Solver++(2M) (§2.4)

@pytest.mark.parametrize("num_steps", [8, 20])
@pytest.mark.parametrize("schedule_name", ["linear", "scaled_linear"])
def test_dpmpp_2m_matches_diffusers(num_steps, schedule_name):
    schedule, kw = schedules(schedule_name)
    model = make_toy_model(schedule)
    ref_sched = DPMSolverMultistepScheduler(**kw)                # dpmsolver++, order 2, midpoint, final sigma 0
    ref_sched.set_timesteps(num_steps)
    x_T = x_start(9)
    ref, ref_states, _ = diffusers_loop(ref_sched, model, x_T)
    ours, seen = ours_loop(sample_dpmpp_2m, model, x_T, schedule, num_steps=num_steps)
    assert torch.equal(torch.stack([t for t, _, _ in seen]), ref_sched.timesteps), "DPM-Solver++ grid differs"
    assert_trajectories(seen, ref_states, f"DPM-Solver++(2M) {num_steps} steps ({schedule_name})")
    assert_close(ours, ref, "DPM-Solver++(2M) final sample")


def test_dpmpp_2m_v_prediction_matches_diffusers():
    schedule, kw = schedules("cosine")
    model = make_toy_model(schedule, "v_prediction")
    ref_sched = DPMSolverMultistepScheduler(**kw, prediction_type="v_prediction")
    ref_sched.set_timesteps(12)
    x_T = x_start(10)
    ref, ref_states, _ = diffusers_loop(ref_sched, model, x_T)
    ours, seen = ours_loop(sample_dpmpp_2m, model, x_T, schedule, timesteps=ref_sched.timesteps,
                           prediction_type="v_prediction")
    assert_trajectories(seen, ref_states, "DPM-Solver++(2M) with v-prediction")
    assert_close(ours, ref, "DPM-Solver++(2M) v-prediction final sample")


# ----------------------------------------------------------------------------- Euler (§2.5)

def _euler_ref(cls, model, kw, num_steps, x_T, generator=None, **sched_kw):
    ref_sched = cls(**kw, **sched_kw)
    ref_sched.set_timesteps(num_steps)
    sigma0 = float(ref_sched.sigmas[0])
    x = x_T * math.sqrt(1 + sigma0**2)                           # our x_T convention (module docstring of euler.py)
    return ref_sched, diffusers_loop(ref_sched, model, x, generator=generator)


def _to_sigma_space(ref_sched):
    sig = ref_sched.sigmas.double()
    return lambda i, x: x * math.sqrt(1 + float(sig[i + 1]) ** 2)


@pytest.mark.parametrize("num_steps,spacing,prediction_type", [
    (10, "linspace", "epsilon"), (30, "linspace", "epsilon"), (25, "leading", "epsilon"),
    (15, "trailing", "v_prediction")])
def test_euler_matches_diffusers(num_steps, spacing, prediction_type):
    schedule, kw = schedules("scaled_linear")
    model = make_toy_model(schedule, prediction_type)
    x_T = x_start(11)
    ref_sched, (ref, ref_states, ref_x0) = _euler_ref(EulerDiscreteScheduler, model, kw, num_steps, x_T,
                                                      timestep_spacing=spacing, prediction_type=prediction_type)
    ours, seen = ours_loop(sample_euler, model, x_T, schedule, num_steps=num_steps, spacing=spacing,
                           prediction_type=prediction_type)
    assert torch.allclose(torch.stack([t for t, _, _ in seen]), ref_sched.timesteps), "Euler grid differs"
    assert_close(torch.tensor([sigma_at(schedule, t) for t, _, _ in seen]).float(), ref_sched.sigmas[:-1],
                 "Euler sigma grid (linear interpolation of sigma at fractional t)")
    for i, (_, _, x0) in enumerate(seen):
        assert_close(x0, ref_x0[i], f"Euler x0 prediction at step {i}")
    assert_trajectories(seen, ref_states, f"Euler {num_steps} {spacing}", _to_sigma_space(ref_sched))
    assert_close(ours, ref, "Euler final sample")


def test_euler_starts_within_tolerance_of_diffusers_init_noise_sigma_for_linear_schedule():
    # diffusers scales x_T by sigma_max; we use sqrt(1 + sigma_max^2): the same to 2e-5 for the linear schedule.
    ref_sched = EulerDiscreteScheduler(num_train_timesteps=T)
    ref_sched.set_timesteps(10)
    sigma0 = float(ref_sched.sigmas[0])
    ratio = math.sqrt(1 + sigma0**2) / float(ref_sched.init_noise_sigma)
    assert abs(ratio - 1) < 1e-4, f"sqrt(1 + sigma_max^2) / init_noise_sigma = {ratio}, expected within 1e-4 of 1"


@pytest.mark.parametrize("num_steps,prediction_type", [(10, "epsilon"), (20, "v_prediction")])
def test_euler_ancestral_matches_diffusers_with_same_noise(num_steps, prediction_type):
    schedule, kw = schedules("linear")
    model = make_toy_model(schedule, prediction_type)
    x_T = x_start(12)
    ref_sched, (ref, ref_states, _) = _euler_ref(EulerAncestralDiscreteScheduler, model, kw, num_steps, x_T,
                                                 generator=torch.Generator().manual_seed(13),
                                                 prediction_type=prediction_type)
    ours, seen = ours_loop(sample_euler_ancestral, model, x_T, schedule, num_steps=num_steps,
                           prediction_type=prediction_type, generator=torch.Generator().manual_seed(13))
    assert_trajectories(seen, ref_states, f"Euler ancestral {num_steps} steps", _to_sigma_space(ref_sched))
    assert_close(ours, ref, "Euler ancestral final sample")
