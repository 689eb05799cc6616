"""Chapter 1's graded notebook (``solutions/ch01_math/math.ipynb``): its graded tests reject each
exercise's plausible mistakes with a message that points at the mistake, and accept correct
alternatives; the released copy leaks nothing and is in sync; the real autograder gives the
solution full marks and the released notebook zero (slow).

Fast tests execute the notebook's cells in-process with ``tests/nbharness.py`` (no kernel), skipping
the training demo and the widget explorer, with one solution cell replaced.
"""
from __future__ import annotations

import time

import pytest

from nbharness import (assert_full_marks_and_zero, assert_release_in_sync,
                       assert_released_has_stubs_and_no_secrets, exercise_tests, grade_id, load_solution,
                       run_tests as _run)

ASSIGNMENT, NOTEBOOK = "ch01_math", "math"
SOLUTION = load_solution(ASSIGNMENT, NOTEBOOK)
SKIP = ("train", "explorer")


def _source(gid: str) -> str:
    return next(c.source for c in SOLUTION.cells if grade_id(c) == gid)


def run_tests(overrides: dict[str, str]) -> dict[str, str | None]:
    """Test-cell grade id -> error message (None when it passed), with solution cells replaced."""
    return _run(SOLUTION, overrides, skip=SKIP)


def _with(gid: str, redefinition: str) -> str:
    """The solution cell ``gid`` followed by a redefinition of one of its functions (the later def wins)."""
    return _source(gid) + "\n\n" + redefinition


WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("no square roots", "def q_sample(x0, t, alpha_bar, eps):\n"
                            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)\n"
                            "    return ab * x0 + (1 - ab) * eps", "instead of its square root"),
        ("1 - sqrt(alpha_bar) for the noise", "def q_sample(x0, t, alpha_bar, eps):\n"
                            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)\n"
                            "    return ab.sqrt() * x0 + (1 - ab.sqrt()) * eps", "not 1 - sqrt(alpha_bar)"),
        ("hard-coded 4-D", "def q_sample(x0, t, alpha_bar, eps):\n"
                           "    ab = alpha_bar[t].view(-1, 1, 1, 1).to(x0.dtype)\n"
                           "    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps", "from x0.ndim"),
        ("one t for the batch", "def q_sample(x0, t, alpha_bar, eps):\n"
                                "    ab = alpha_bar[t[0]].to(x0.dtype)\n"
                                "    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps", "one t for the whole batch"),
        ("1-based index", "def q_sample(x0, t, alpha_bar, eps):\n"
                          "    ab = alpha_bar[t - 1].reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)\n"
                          "    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps", "alpha_bar[t - 1]"),
        ("dtype of the schedule", "def q_sample(x0, t, alpha_bar, eps):\n"
                                  "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
                                  "    return (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).to(alpha_bar.dtype)",
         "return x0's dtype"),
        ("x0 scaled in place", "def q_sample(x0, t, alpha_bar, eps):\n"
                               "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)\n"
                               "    return x0.mul_(ab.sqrt()) + (1 - ab).sqrt() * eps", "in place"),
    ],
    "ex2_solution": [
        ("cosine without the offset s", _with("ex2_solution",
            "def cosine_betas(T, s=0.008, max_beta=0.999):\n"
            "    u = torch.arange(T + 1, dtype=torch.float64) / T\n"
            "    f = torch.cos(u * math.pi / 2) ** 2\n"
            "    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)"), "offset s"),
        ("cosine not clipped", _with("ex2_solution",
            "def cosine_betas(T, s=0.008, max_beta=0.999):\n"
            "    u = torch.arange(T + 1, dtype=torch.float64) / T\n"
            "    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2\n"
            "    return 1 - f[1:] / f[:-1]"), "clip the betas"),
        ("cosine with T points", _with("ex2_solution",
            "def cosine_betas(T, s=0.008, max_beta=0.999):\n"
            "    u = torch.arange(T, dtype=torch.float64) / T\n"
            "    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2\n"
            "    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)"), "T + 1 points"),
        ("quadratic squares the end points", _with("ex2_solution",
            "def quadratic_betas(T, beta_start=1e-4, beta_end=0.02):\n"
            "    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64) ** 2"),
         "space the square roots"),
        ("alpha_bar = 1 - beta", _with("ex2_solution",
            "def alpha_bar_from_betas(betas):\n    return 1 - betas"), "not the cumulative product"),
        ("alpha_bar as a cumulative sum", _with("ex2_solution",
            "def alpha_bar_from_betas(betas):\n    return 1 - torch.cumsum(betas, 0)"), "cumulative PRODUCT"),
        ("linear ignores its range", _with("ex2_solution",
            "def linear_betas(T, beta_start=1e-4, beta_end=0.02):\n"
            "    return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)"), "beta_start"),
        ("cosine clipped at a fixed 0.999", _with("ex2_solution",
            "def cosine_betas(T, s=0.008, max_beta=0.999):\n"
            "    u = torch.arange(T + 1, dtype=torch.float64) / T\n"
            "    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2\n"
            "    return (1 - f[1:] / f[:-1]).clamp(max=0.999)"), "max_beta"),
        ("quadratic ignores its range", _with("ex2_solution",
            "def quadratic_betas(T, beta_start=1e-4, beta_end=0.02):\n"
            "    return torch.linspace(0.01, 0.02 ** 0.5, T, dtype=torch.float64) ** 2"), "beta_end"),
        ("alpha_bar from the betas in place", _with("ex2_solution",
            "def alpha_bar_from_betas(betas):\n    return torch.cumprod(betas.neg_().add_(1), 0)"), "in place"),
    ],
    "ex3_solution": [
        ("torch.roll wraps round", "def posterior_coefficients(betas):\n"
            "    alphas = 1 - betas\n    alpha_bar = torch.cumprod(alphas, 0)\n"
            "    prev = torch.roll(alpha_bar, 1)\n"
            "    return (prev.sqrt() * betas / (1 - alpha_bar), alphas.sqrt() * (1 - prev) / (1 - alpha_bar),\n"
            "            (1 - prev) / (1 - alpha_bar) * betas)", "torch.roll"),
        ("alpha_bar_t for alpha_bar_{t-1}", "def posterior_coefficients(betas):\n"
            "    alphas = 1 - betas\n    alpha_bar = torch.cumprod(alphas, 0)\n"
            "    return (alpha_bar.sqrt() * betas / (1 - alpha_bar), alphas.sqrt() * (1 - alpha_bar) / (1 - alpha_bar),\n"
            "            (1 - alpha_bar) / (1 - alpha_bar) * betas)", "alpha_bar_{t-1}"),
        ("alpha_t for sqrt(alpha_t)", _with("ex3_solution",
            "def posterior_coefficients(betas, _right=posterior_coefficients):\n"
            "    c0, ct, var = _right(betas)\n    return c0, ct * (1 - betas).sqrt(), var"), "sqrt(alpha_t)"),
        ("beta_t as the variance", _with("ex3_solution",
            "def posterior_coefficients(betas, _right=posterior_coefficients):\n"
            "    c0, ct, var = _right(betas)\n    return c0, ct, betas"), "You returned beta_t"),
        ("alphas computed in place", "def posterior_coefficients(betas):\n"
            "    alphas = betas.neg_().add_(1)\n    alpha_bar = torch.cumprod(alphas, 0)\n"
            "    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])\n    b = 1 - alphas\n"
            "    return (prev.sqrt() * b / (1 - alpha_bar), alphas.sqrt() * (1 - prev) / (1 - alpha_bar),\n"
            "            (1 - prev) / (1 - alpha_bar) * b)", "in place"),
        ("alpha_bar_prev[0] = alpha_bar[0] instead of 1", "def posterior_coefficients(betas):\n"
            "    alphas = 1 - betas\n    alpha_bar = torch.cumprod(alphas, 0)\n"
            "    prev = torch.cat([alpha_bar[:1], alpha_bar[:-1]])\n"
            "    return (prev.sqrt() * betas / (1 - alpha_bar), alphas.sqrt() * (1 - prev) / (1 - alpha_bar),\n"
            "            (1 - prev) / (1 - alpha_bar) * betas)", "alpha_bar_prev[0] must be 1"),
    ],
    "ex4_solution": [
        ("v with the wrong sign", _with("ex4_solution",
            "def v_target(x0, eps, alpha_bar):\n"
            "    return (1 - alpha_bar).sqrt() * x0 - alpha_bar.sqrt() * eps"), "wrong sign"),
        ("v with swapped coefficients", _with("ex4_solution",
            "def v_target(x0, eps, alpha_bar):\n"
            "    return (1 - alpha_bar).sqrt() * eps - alpha_bar.sqrt() * x0"), "which coefficient goes with which"),
        ("x0_from_eps without sqrt", _with("ex4_solution",
            "def x0_from_eps(x_t, eps, alpha_bar):\n"
            "    return (x_t - (1 - alpha_bar) * eps) / alpha_bar"), "check both square roots"),
        ("eps_from_v with swapped roles", _with("ex4_solution",
            "def eps_from_v(x_t, v, alpha_bar):\n"
            "    return (1 - alpha_bar).sqrt() * v + alpha_bar.sqrt() * x_t"), "swap roles"),
        ("score divided by the variance", _with("ex4_solution",
            "def score_from_eps(eps, alpha_bar):\n    return -eps / (1 - alpha_bar)"), "not by its variance"),
        ("score with the wrong sign", _with("ex4_solution",
            "def score_from_eps(eps, alpha_bar):\n    return eps / (1 - alpha_bar).sqrt()"), "sign is flipped"),
        ("x0_from_eps writes into x_t", _with("ex4_solution",
            "def x0_from_eps(x_t, eps, alpha_bar):\n"
            "    return x_t.sub_((1 - alpha_bar).sqrt() * eps).div_(alpha_bar.sqrt())"), "in place"),
        ("score_from_eps negates eps in place", _with("ex4_solution",
            "def score_from_eps(eps, alpha_bar):\n    return eps.neg_() / (1 - alpha_bar).sqrt()"), "in place"),
    ],
    "ex5_solution": [
        ("model sees x0", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(0, len(alpha_bar), (len(x0),), generator=generator)\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    return ((eps - model(x0, t)) ** 2).mean()", "model is called on x_t"),
        ("target x0", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(0, len(alpha_bar), (len(x0),), generator=generator)\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "    return ((x0 - model(x_t, t)) ** 2).mean()", "target of eq. 1.10 is eps"),
        ("sum instead of mean", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(0, len(alpha_bar), (len(x0),), generator=generator)\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "    return ((eps - model(x_t, t)) ** 2).sum()", "not the sum"),
        ("one t for the batch", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(0, len(alpha_bar), (1,), generator=generator).expand(len(x0))\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "    return ((eps - model(x_t, t)) ** 2).mean()", "one t for the whole batch"),
        ("t from 1..T-1", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(1, len(alpha_bar), (len(x0),), generator=generator)\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "    return ((eps - model(x_t, t)) ** 2).mean()", "0-based"),
        ("global random state", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(0, len(alpha_bar), (len(x0),))\n"
            "    eps = torch.randn_like(x0)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "    return ((eps - model(x_t, t)) ** 2).mean()", "generator=generator"),
        ("a Python float", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(0, len(alpha_bar), (len(x0),), generator=generator)\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "    return ((eps - model(x_t, t)) ** 2).mean().item()", "0-dim tensor"),
        ("RMSE instead of MSE", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(0, len(alpha_bar), (len(x0),), generator=generator)\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "    return ((eps - model(x_t, t)) ** 2).mean().sqrt()", "root of the mean squared error"),
        ("computed under no_grad", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "  with torch.no_grad():\n"
            "      t = torch.randint(0, len(alpha_bar), (len(x0),), generator=generator)\n"
            "      eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "      ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "      x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "      return ((eps - model(x_t, t)) ** 2).mean()", "gradient"),
        ("a fresh generator of its own", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    generator = torch.Generator().manual_seed(0)\n"
            "    t = torch.randint(0, len(alpha_bar), (len(x0),), generator=generator)\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps\n"
            "    return ((eps - model(x_t, t)) ** 2).mean()", "generator"),
        ("x0 noised in place", "def simple_loss(model, x0, alpha_bar, generator):\n"
            "    t = torch.randint(0, len(alpha_bar), (len(x0),), generator=generator)\n"
            "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
            "    ab = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))\n"
            "    x_t = x0.mul_(ab.sqrt()).add_((1 - ab).sqrt() * eps)\n"
            "    return ((eps - model(x_t, t)) ** 2).mean()", "in place"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    "ex1_solution": ["def q_sample(x0, t, alpha_bar, eps):\n"
                    "    rows = [torch.sqrt(alpha_bar[ti]) * xi + torch.sqrt(1 - alpha_bar[ti]) * ei\n"
                    "            for xi, ti, ei in zip(x0, t, eps)]\n"
                    "    return torch.stack(rows).to(x0.dtype)",
                     # in-place arithmetic on its own copy is fine
                     "def q_sample(x0, t, alpha_bar, eps):\n"
                     "    ab = alpha_bar[t].to(x0).view(-1, *([1] * (x0.ndim - 1)))\n"
                     "    out = x0.clone().mul_(ab.sqrt())\n"
                     "    return out.addcmul_((1 - ab).sqrt(), eps)"],
    "ex2_solution": "def linear_betas(T, beta_start=1e-4, beta_end=0.02):\n"
                    "    return beta_start + (beta_end - beta_start) * torch.arange(T, dtype=torch.float64) / (T - 1)\n\n"
                    "def cosine_betas(T, s=0.008, max_beta=0.999):\n"
                    "    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2\n"
                    "    return torch.tensor([min(1 - f(t) / f(t - 1), max_beta) for t in range(1, T + 1)],\n"
                    "                        dtype=torch.float64)\n\n"
                    "def quadratic_betas(T, beta_start=1e-4, beta_end=0.02):\n"
                    "    return torch.from_numpy(__import__('numpy').linspace(beta_start ** 0.5, beta_end ** 0.5, T) ** 2)\n\n"
                    "def alpha_bar_from_betas(betas):\n"
                    "    return torch.exp(torch.cumsum(torch.log1p(-betas), 0))",
    "ex3_solution": "def posterior_coefficients(betas):\n"
                    "    alpha_bar = torch.cumprod(1 - betas, 0)\n"
                    "    prev = torch.nn.functional.pad(alpha_bar[:-1], (1, 0), value=1.0)\n"
                    "    variance = betas * (1 - prev) / (1 - alpha_bar)\n"
                    "    coef_x0 = betas * prev.sqrt() / (1 - alpha_bar)\n"
                    "    coef_xt = (1 - prev) * torch.sqrt(1 - betas) / (1 - alpha_bar)\n"
                    "    return coef_x0, coef_xt, variance",
    "ex4_solution": "def x0_from_eps(x_t, eps, alpha_bar):\n"
                    "    return torch.rsqrt(alpha_bar) * x_t - torch.sqrt(1 / alpha_bar - 1) * eps\n\n"
                    "def v_target(x0, eps, alpha_bar):\n"
                    "    return torch.sqrt(alpha_bar) * eps - torch.sqrt(1 - alpha_bar) * x0\n\n"
                    "def eps_from_v(x_t, v, alpha_bar):\n"
                    "    return torch.sqrt(alpha_bar) * v + torch.sqrt(1 - alpha_bar) * x_t\n\n"
                    "def x0_from_v(x_t, v, alpha_bar):\n"
                    "    return x0_from_eps(x_t, eps_from_v(x_t, v, alpha_bar), alpha_bar)\n\n"
                    "def score_from_eps(eps, alpha_bar):\n"
                    "    return eps * (-torch.rsqrt(1 - alpha_bar))",
    "ex5_solution": ["import torch.nn.functional as F\n\n"
                    "def simple_loss(model, x0, alpha_bar, generator):\n"
                    "    eps = torch.randn(x0.shape, generator=generator).to(x0)\n"
                    "    t = torch.randint(len(alpha_bar), (x0.shape[0],), generator=generator)\n"
                    "    x_t = q_sample(x0, t, alpha_bar, eps)\n"
                    "    return F.mse_loss(model(x_t, t), eps)",
                     # the squared norm per sample, averaged over samples and over the elements of one sample
                     "def simple_loss(model, x0, alpha_bar, generator):\n"
                     "    t = torch.randint(0, len(alpha_bar), (x0.shape[0],), generator=generator)\n"
                     "    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
                     "    x_t = course_ref.q_sample(x0, t, alpha_bar, eps)\n"
                     "    return (eps - model(x_t, t)).flatten(1).pow(2).sum(1).mean() / x0[0].numel()"],
}


(test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
 test_correct_alternative_is_accepted) = exercise_tests(run_tests, WRONG, RIGHT, 10)


def test_notebook_has_parameters_points_and_an_explorer():
    params = [c for c in SOLUTION.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"expected one `parameters` cell; found {len(params)}"
    for name in ("GRADING", "DEVICE", "SEED"):
        assert f"{name} =" in params[0].source, f"the parameters cell must set {name}"
    points = sum(c.metadata["nbgrader"].get("points", 0) for c in SOLUTION.cells
                 if c.metadata.get("nbgrader", {}).get("grade"))
    assert points == 25, f"expected 25 points (5 exercises x (2 visible + 3 hidden)); found {points}"
    explorer = _source("explorer")
    assert "widgets.interact" in explorer and "if not GRADING" in explorer, (
        "the explorer must be an ipywidgets interact that is skipped when graded")
    assert all(not c.get("outputs") for c in SOLUTION.cells if c.cell_type == "code"), (
        "the solution notebook must be committed with outputs cleared")


def test_training_demo_runs_its_fast_path_quickly():
    start = time.perf_counter()
    results = _run(SOLUTION, {}, skip=("explorer"))
    assert not any(results.values()), f"tests failed when the training demo ran too: {results}"
    assert time.perf_counter() - start < 25, "the notebook's graded path (training demo included) is too slow"


def test_released_notebook_has_stubs_and_no_secrets():
    released, stubs = assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, 5, (
        "torch.cumprod(1 - betas, dim=0)", "_ref_q_sample", "torch.roll wraps"))
    params = [c for c in released.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "GRADING = False" in params[0].source, (
        "the released notebook needs one `parameters` cell with GRADING = False")


def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, 25, tmp_path)
