"""Book §7.2-7.4 and §7.6: Euler and Heun on the exact mixture velocity, straightness, FM vs DDPM at equal
NFE, and diffusers' FlowMatchEulerDiscreteScheduler driven by the course's models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffcourse.flow.compare import equal_nfe_comparison, sliced_wasserstein
from diffcourse.flow.diffusers_flow import make_scheduler, sample_with_scheduler
from diffcourse.flow.dit import DiT, DiTConfig
from diffcourse.flow.exact import GaussianMixtureVelocity
from diffcourse.flow.samplers import (check_grid, guided_velocity, heun_nfe, sample_euler_fm, sample_heun_fm,
                                      time_grid)
from diffcourse.flow.straightness import length_ratio, straightness
from diffcourse.gmm import GaussianMixture, GaussianMixtureEpsModel, anisotropic_mixture, eight_gaussians_mixture
from diffcourse.samplers import sample_ddim
from diffcourse.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def slope(nfe, err) -> float:
    """Least-squares slope of log(error) against log(NFE): -p for a method of order p (eq. 7.8)."""
    return float(np.polyfit(np.log(nfe), np.log(err), 1)[0])


# ----------------------------------------------------------------------------- grids and steps (§7.2)

def test_time_grid_and_its_checks():
    g = time_grid(4)
    assert g.dtype == torch.float64 and torch.allclose(g, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = time_grid(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and bool((shifted[1:-1] > g[1:-1]).all()), \
        "a shift > 1 should move the inner grid points towards the noise end (eq. 7.13)"
    for bad in ([0.0, 1.0], [1.0], [1.0, 0.5, 0.5, 0.0], [1.5, 0.0], [[1.0, 0.0]]):
        with pytest.raises(ValueError):
            check_grid(bad)
    with pytest.raises(ValueError):
        time_grid(0)
    assert heun_nfe(time_grid(5)) == 9 and heun_nfe(torch.tensor([1.0, 0.5, 0.1])) == 4


def test_one_euler_step_and_one_heun_step_by_hand():
    """Eqs. 7.6-7.7 on v(x, t) = x t (a field whose value changes along the step, so Heun differs from Euler)."""
    calls = []

    def v(x, t):
        calls.append(t.clone())
        return x * t[:, None]

    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    ts = torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64)
    out = sample_euler_fm(v, x, ts)
    x1 = x + (0.6 - 1.0) * x * 1.0
    expected = x1 + (0.0 - 0.6) * x1 * 0.6
    assert torch.allclose(out, expected), f"Euler (eq. 7.6): expected {expected}, got {out}"
    assert [c.tolist() for c in calls] == [[1.0], [0.6]], "Euler calls v once per step, at the step's start"
    calls.clear()
    out = sample_heun_fm(v, x, ts)
    h = -0.4
    pred = x + h * x * 1.0
    x1 = x + h * 0.5 * (x * 1.0 + pred * 0.6)                          # trapezoid (eq. 7.7)
    expected = x1 + (0.0 - 0.6) * x1 * 0.6                             # the last step onto t = 0 is Euler
    assert torch.allclose(out, expected), f"Heun (eq. 7.7): expected {expected}, got {out}"
    assert len(calls) == 3 == heun_nfe(ts), "Heun on 2 steps ending at 0 costs 3 model calls"


def test_samplers_draw_their_noise_from_the_generator_and_record_trajectories():
    v = GaussianMixtureVelocity(anisotropic_mixture())
    a = sample_euler_fm(v, (64, 2), time_grid(4), generator=gen(3))
    b = sample_euler_fm(v, torch.randn(64, 2, generator=gen(3)), time_grid(4))
    assert torch.equal(a, b), "a shape as x_1 should draw float32 N(0, I) from the generator"
    traj = sample_heun_fm(v, (64, 2), time_grid(4), generator=gen(3), return_trajectory=True)
    assert len(traj.x_t) == 5 and torch.equal(traj.x_t[-1], sample_heun_fm(v, (64, 2), time_grid(4), generator=gen(3)))


# ----------------------------------------------------------------------------- convergence order (§7.2, eq. 7.8)

def test_euler_is_first_order_and_heun_second_order_on_the_exact_field():
    """Measured on the exact mixture velocity (§7.3), so the only error is the solver's (eq. 7.8)."""
    v = GaussianMixtureVelocity(anisotropic_mixture())
    x1 = torch.randn(100, 2, generator=gen(0), dtype=torch.float64)
    ref = sample_heun_fm(v, x1, time_grid(512))                            # error ~1e-6, far below the rest
    steps = [8, 16, 32, 64]
    err = lambda sampler, n: (sampler(v, x1, time_grid(n)) - ref).norm(dim=1).mean().item()   # noqa: E731
    e_euler = [err(sample_euler_fm, n) for n in steps]
    e_heun = [err(sample_heun_fm, n) for n in steps]
    p_euler = -slope(steps, e_euler)
    p_heun = -slope([heun_nfe(time_grid(n)) for n in steps], e_heun)
    assert 0.85 < p_euler < 1.2, f"Euler's error should fall like NFE^-1; measured order {p_euler:.2f} ({e_euler})"
    assert 1.8 < p_heun < 2.3, f"Heun's error should fall like NFE^-2; measured order {p_heun:.2f} ({e_heun})"
    assert e_heun[-1] < 0.1 * e_euler[-1], "at 64 steps Heun should be far more accurate than Euler"


def test_exact_velocity_carries_noise_to_the_data():
    gmm = eight_gaussians_mixture()
    v = GaussianMixtureVelocity(gmm)
    x = sample_heun_fm(v, (2000, 2), time_grid(64), generator=gen(1))
    data = gmm.sample(2000, gen(2))
    floor = sliced_wasserstein(gmm.sample(2000, gen(3)), data, generator=gen(4))
    got = sliced_wasserstein(x.double(), data, generator=gen(4))
    assert got < 2.5 * floor + 0.01, f"the exact field's samples should be as close to data as data is: {got:.4f} vs {floor:.4f}"
    noise = torch.randn(2000, 2, generator=gen(5), dtype=torch.float64)
    assert sliced_wasserstein(noise, data, generator=gen(4)) > 3 * got, "the check should tell noise from data"


# ----------------------------------------------------------------------------- straightness (§7.4, eq. 7.11)

def test_straightness_is_zero_for_lines_and_grows_with_curvature():
    ts = time_grid(16)
    a = torch.randn(50, 2, generator=gen(0), dtype=torch.float64)
    b = torch.randn(50, 2, generator=gen(1), dtype=torch.float64)
    line = [(1 - t) * a + t * b for t in (1 - ts).tolist()]                # constant speed along a line
    assert straightness(line, ts) < 1e-24 and length_ratio(line) == pytest.approx(1.0, abs=1e-9)
    theta = (1 - ts) * torch.pi / 2                                        # a quarter circle of radius 1
    arc = [torch.stack([torch.cos(th), torch.sin(th)]).expand(50, 2).float() for th in theta]
    s_arc = straightness(arc, ts)
    assert s_arc == pytest.approx((torch.pi / 2) ** 2 - 2, rel=0.02), \
        f"a unit quarter circle at constant speed has S = (pi/2)^2 - 2 = 0.467; got {s_arc:.3f}"
    assert length_ratio(arc) == pytest.approx(2 * 2**0.5 / torch.pi, rel=0.01)
    with pytest.raises(ValueError):
        straightness(line, ts[:-1])


def test_fm_paths_are_straight_towards_one_point_and_bend_where_modes_split():
    """Data N(mu, s^2 I) with s small: the marginal FM path x(t) = (1 - t) mu + sqrt((1 - t)^2 s^2 + t^2) x_1
    is nearly a line walked at constant speed (S ~ 0, eq. 7.11) and one Euler step nearly exact. The VP path
    to the same data is an arc. On eight Gaussians the FM paths bend (towards the mean, then out to a mode):
    the straight conditional lines of eq. 7.1 cross, the ODE's paths cannot."""
    mu = torch.tensor([[1.5, -0.5]], dtype=torch.float64)
    narrow = GaussianMixture([1.0], mu, 0.05**2 * torch.eye(2, dtype=torch.float64)[None])
    v = GaussianMixtureVelocity(narrow)
    x1 = torch.randn(300, 2, generator=gen(0), dtype=torch.float64)
    ts = time_grid(32)
    traj = sample_heun_fm(v, x1, ts, return_trajectory=True)
    s_narrow = straightness(traj.x_t, ts)
    assert s_narrow < 0.05 and length_ratio(traj.x_t) > 0.98, \
        f"FM paths to a narrow Gaussian should be near-straight constant-speed lines; S = {s_narrow:.4f}"
    one_step = (sample_euler_fm(v, x1, time_grid(1)) - traj.x_t[-1]).norm(dim=1).mean().item()
    assert one_step < 0.1, f"one Euler step should nearly reach the end of a straight path; off by {one_step:.3f}"
    schedule = make_schedule("linear", 1000)
    vp = sample_ddim(GaussianMixtureEpsModel(narrow, schedule), x1.float(), schedule, num_steps=32,
                     spacing="trailing", return_trajectory=True)
    assert length_ratio(vp.x_t) < 0.97, "the VP (DDPM) path to the same data is an arc"
    eight = sample_heun_fm(GaussianMixtureVelocity(eight_gaussians_mixture()), x1, ts, return_trajectory=True)
    s_eight = straightness(eight.x_t, ts)
    assert length_ratio(eight.x_t) < 0.8 and s_eight > 20 * s_narrow, \
        f"on eight Gaussians the marginal FM paths bend: S = {s_eight:.3f} vs {s_narrow:.4f} for one narrow mode"


def test_equal_nfe_comparison_orders_the_samplers_as_the_book_says():
    res = equal_nfe_comparison(eight_gaussians_mixture(), nfes=(2, 4), n=1000, samplers=("fm_euler", "ddim", "fm_heun"))
    assert res["fm_heun_nfe"] == [1, 3] and res["fm_euler_nfe"] == [2, 4]
    assert res["fm_euler"][1] < res["fm_euler"][0], "more steps should bring FM Euler closer to the data"
    for i, nfe in enumerate(res["nfe"]):
        assert res["fm_euler"][i] < 0.7 * res["ddim"][i], \
            f"at {nfe} NFE, FM Euler should beat DDIM clearly: {res['fm_euler'][i]:.3f} vs {res['ddim'][i]:.3f}"
    assert res["floor"] < res["fm_euler"][0]


# ----------------------------------------------------------------------------- diffusers' scheduler (§7.6, eq. 7.14)

@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_diffusers_scheduler_driven_by_the_exact_field_matches_the_course_euler(shift):
    v = GaussianMixtureVelocity(anisotropic_mixture())
    x1 = torch.randn(200, 2, generator=gen(0))
    sched = make_scheduler(shift)
    theirs = sample_with_scheduler(v, x1, sched, 12)
    ours = sample_euler_fm(v, x1, sched.sigmas)
    assert torch.allclose(theirs, ours, atol=1e-6), \
        f"shift {shift}: diffusers' loop and the course's Euler on its sigmas differ by {(theirs - ours).abs().max():.2e}"
    plain = sample_euler_fm(v, x1, time_grid(12, shift=shift))
    assert not torch.allclose(plain, ours, atol=1e-4), "diffusers' grid ends at sigma_min, not a uniform grid: they differ"


def test_diffusers_scheduler_driven_by_a_course_dit_matches_the_course_euler():
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny()).eval()
    with torch.no_grad():                                            # leave adaLN-Zero's zeros: v would be 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen(7)))
    labels = torch.arange(8) % 11
    v = guided_velocity(model, labels, 2.0, null_label=10)
    x1 = torch.randn(8, 1, 8, 8, generator=gen(1))
    sched = make_scheduler(3.0)
    with torch.no_grad():
        theirs = sample_with_scheduler(v, x1, sched, 6)
        ours = sample_euler_fm(v, x1, sched.sigmas)
    assert (theirs - x1).abs().max() > 0.1, "the perturbed DiT should move the samples"
    assert torch.allclose(theirs, ours, atol=1e-5), f"differ by {(theirs - ours).abs().max():.2e}"


def test_guided_velocity_combines_conditional_and_null_predictions():
    def model(x, t, class_labels):
        return x * 0 + class_labels[:, None].float()                 # v = the label, to see the mix
    v = guided_velocity(model, torch.tensor([3, 5]), 2.5, null_label=10)
    out = v(torch.zeros(2, 1), torch.zeros(2))
    assert torch.allclose(out, torch.tensor([[10 + 2.5 * (3 - 10)], [10 + 2.5 * (5 - 10)]])), \
        f"v_w = v_null + w (v_cond - v_null) (eq. 7.17); got {out.ravel().tolist()}"
    plain = guided_velocity(model, torch.tensor([3, 5]), 1.0, null_label=10)(torch.zeros(2, 1), torch.zeros(2))
    assert torch.equal(plain, torch.tensor([[3.0], [5.0]])), "w = 1 is the plain conditional model"
