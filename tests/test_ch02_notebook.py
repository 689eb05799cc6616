"""Chapter 2's graded notebook (solutions/ch02_sampling/sampling.ipynb): DDPM and DDIM.

Each exercise's plausible mistakes are rejected by its graded tests with a message that points at the
mistake, and correct alternatives are accepted; the released copy leaks nothing and is in sync; the
real autograder gives the solution full marks and the released notebook zero (slow).
The cells run in-process through ``tests/nbharness.py``.
"""
from __future__ import annotations

import pytest

from nbharness import (assert_full_marks_and_zero, assert_release_in_sync,
                       assert_released_has_stubs_and_no_secrets, solution_sources, exercise_runner,
                       exercise_tests)

ASSIGNMENT, NOTEBOOK = "ch02_sampling", "sampling"
SKIP = ("explorer", "fast_path", "plot")
N_EXERCISES, MAX_SCORE = 6, 35


run_tests = exercise_runner(ASSIGNMENT, NOTEBOOK, SKIP, N_EXERCISES)


STEP_HEAD = "def ddpm_step(eps_hat, x_t, t, alpha_bar, generator):\n"
DDIM_HEAD = "def ddim_step(eps_hat, x_t, alpha_bar_t, alpha_bar_prev, eta, generator=None):\n"
SAMPLE_HEAD = "def ddim_sample(model, x_T, alpha_bar, timesteps, eta=0.0, generator=None):\n"
DDIM_SAMPLE_BODY = """    x = x_T
    ts = [int(t) for t in timesteps]
    for k, t in enumerate(ts):
        ab_prev = {prev}
        eps_hat = model(x, torch.full((len(x),), t, dtype=torch.long))
        x = ddim_step(eps_hat, x, float(alpha_bar[t]), ab_prev, {eta}, generator)
    return x
"""


def ddpm_step_variant(x0_line="x0 = (x_t - math.sqrt(1 - ab_t) * eps_hat) / math.sqrt(ab_t)",
                      prev_line="ab_prev = float(alpha_bar[t - 1]) if t > 0 else 1.0",
                      noise_line="return mean + math.sqrt(var) * z", var_line="var = (1 - ab_prev) / (1 - ab_t) * beta"):
    return STEP_HEAD + f"""    ab_t = float(alpha_bar[t])
    {prev_line}
    beta = 1 - ab_t / ab_prev
    alpha_t = 1 - float(1 - alpha_bar[t] / (alpha_bar[t - 1] if t > 0 else 1.0))
    {x0_line}
    mean = math.sqrt(ab_prev) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t) * x_t
    if t == 0:
        return mean
    {var_line}
    z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype)
    {noise_line}
"""


def ddim_step_variant(sigma="eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)",
                      c_eps="math.sqrt(1 - ab_prev - sigma**2)", noise="if eta > 0:\n        x = x + sigma * z()"):
    return DDIM_HEAD + f"""    ab_t, ab_prev = alpha_bar_t, alpha_bar_prev
    z = lambda: torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype)
    x0 = (x_t - math.sqrt(1 - ab_t) * eps_hat) / math.sqrt(ab_t)
    sigma = {sigma}
    x = math.sqrt(ab_prev) * x0 + {c_eps} * eps_hat
    {noise}
    return x
"""


WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("alpha_t in x0_hat", ddpm_step_variant(x0_line="x0 = (x_t - math.sqrt(1 - alpha_t) * eps_hat) / math.sqrt(alpha_t)"),
         "alpha_bar_t, not alpha_t"),
        ("beta_t variance (fixed_large)", ddpm_step_variant(var_line="var = beta"), "not beta_t"),
        ("variance without sqrt", ddpm_step_variant(noise_line="return mean + var * z"), "forget the square root"),
        ("alpha_bar[t-1] wraps at t=0", ddpm_step_variant(prev_line="ab_prev = float(alpha_bar[t - 1])"),
         "must return x0_hat exactly"),
        ("eps_hat scaled in place", ddpm_step_variant(
            x0_line="x0 = (x_t - eps_hat.mul_(math.sqrt(1 - ab_t))) / math.sqrt(ab_t)"), "in place"),
        ("the notebook's alpha_bar instead of the argument",
         ddpm_step_variant().replace("t, alpha_bar, generator", "t, schedule_alpha_bar, generator"),
         "not the notebook's alpha_bar"),
        ("noise from the global RNG", ddpm_step_variant().replace("generator=generator, ", ""), "generator"),
    ],
    "ex2_solution": [
        ("ascending loop", "def ddpm_sample(model, shape, alpha_bar, generator, progress=False):\n"
                           "    x = torch.randn(shape, generator=generator)\n"
                           "    for t in range(len(alpha_bar)):\n"
                           "        x = ddpm_step(model(x, torch.full((shape[0],), t)), x, t, alpha_bar, generator)\n"
                           "    return x", "start at t = T-1"),
        ("x_T from the global RNG", "def ddpm_sample(model, shape, alpha_bar, generator, progress=False):\n"
                                    "    x = torch.randn(shape)\n"
                                    "    for t in reversed(range(len(alpha_bar))):\n"
                                    "        x = ddpm_step(model(x, torch.full((shape[0],), t)), x, t, alpha_bar, generator)\n"
                                    "    return x", "draw x_T from the generator first"),
        ("float timesteps", "def ddpm_sample(model, shape, alpha_bar, generator, progress=False):\n"
                            "    x = torch.randn(shape, generator=generator)\n"
                            "    for t in reversed(range(len(alpha_bar))):\n"
                            "        x = ddpm_step(model(x, torch.full((shape[0],), float(t))), x, t, alpha_bar, generator)\n"
                            "    return x", "(N,) long tensor"),
        ("the notebook's T", "def ddpm_sample(model, shape, alpha_bar, generator, progress=False):\n"
                             "    x = torch.randn(shape, generator=generator)\n"
                             "    for t in reversed(range(T)):\n"
                             "        x = ddpm_step(model(x, torch.full((shape[0],), t)), x, t, alpha_bar, generator)\n"
                             "    return x", "len(alpha_bar)"),
        ("a new generator for every step", "def ddpm_sample(model, shape, alpha_bar, generator, progress=False):\n"
                                           "    x = torch.randn(shape, generator=generator)\n"
                                           "    for t in reversed(range(len(alpha_bar))):\n"
                                           "        x = ddpm_step(model(x, torch.full((shape[0],), t)), x, t, alpha_bar,"
                                           " torch.Generator().manual_seed(t))\n"
                                           "    return x", "same generator"),
    ],
    "ex3_solution": [
        ("no sigma^2 subtraction", ddim_step_variant(c_eps="math.sqrt(1 - ab_prev)"), "subtract sigma_t^2"),
        ("sigma missing its second square root", ddim_step_variant(
            sigma="eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * (1 - ab_t / ab_prev)"), "noise std"),
        ("noise drawn at eta = 0", ddim_step_variant(
            noise="x = x + sigma * torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype)"),
         "draw no noise"),
        ("noise from the global RNG", ddim_step_variant().replace("generator=generator, ", ""), "generator"),
        ("x_t scaled in place", ddim_step_variant().replace(
            "x0 = (x_t - math.sqrt(1 - ab_t) * eps_hat) / math.sqrt(ab_t)",
            "x0 = x_t.sub_(math.sqrt(1 - ab_t) * eps_hat).div_(math.sqrt(ab_t))"), "in place"),
    ],
    "ex4_solution": [
        ("ascending grid", "import numpy as np\ndef make_grid(num_steps, T, spacing):\n"
                           "    if spacing == 'leading':\n        return torch.arange(num_steps) * (T // num_steps)\n"
                           "    if spacing == 'trailing':\n"
                           "        return torch.from_numpy(np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1)\n"
                           "    raise ValueError(spacing)", "descending"),
        ("trailing without -1", "import numpy as np\ndef make_grid(num_steps, T, spacing):\n"
                                "    if spacing == 'leading':\n"
                                "        return torch.arange(num_steps - 1, -1, -1) * (T // num_steps)\n"
                                "    if spacing == 'trailing':\n"
                                "        return torch.from_numpy(np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64))\n"
                                "    raise ValueError(spacing)", "first point is T-1"),
        ("leading as linspace", "import numpy as np\ndef make_grid(num_steps, T, spacing):\n"
                                "    if spacing == 'leading':\n"
                                "        return torch.linspace(T - T // num_steps, 0, num_steps).round().long()\n"
                                "    if spacing == 'trailing':\n"
                                "        return torch.from_numpy(np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1)\n"
                                "    raise ValueError(spacing)", "diffusers' grid"),
    ],
    "ex5_solution": [
        ("alpha_bar[t-1] instead of the next grid point",
         SAMPLE_HEAD + DDIM_SAMPLE_BODY.format(prev="float(alpha_bar[t - 1]) if t > 0 else 1.0", eta="eta"),
         "NEXT GRID POINT"),
        ("last step to alpha_bar[0]",
         SAMPLE_HEAD + DDIM_SAMPLE_BODY.format(prev="float(alpha_bar[ts[k + 1]] if k + 1 < len(ts) else alpha_bar[0])",
                                               eta="eta"), "alpha_bar = 1"),
        ("eta ignored",
         SAMPLE_HEAD + DDIM_SAMPLE_BODY.format(prev="float(alpha_bar[ts[k + 1]]) if k + 1 < len(ts) else 1.0", eta="0.0"),
         "pass eta and the generator"),
        ("eta = 1 where 0 is asked",
         SAMPLE_HEAD + DDIM_SAMPLE_BODY.format(prev="float(alpha_bar[ts[k + 1]]) if k + 1 < len(ts) else 1.0", eta="1.0"),
         "pass eta to ddim_step"),
        ("steps to t - T // n (diffusers' rule, right on leading grids only)",
         SAMPLE_HEAD + DDIM_SAMPLE_BODY.format(prev="float(alpha_bar[t - T // len(ts)]) if t - T // len(ts) >= 0 else 1.0",
                                               eta="eta"), "NEXT GRID POINT"),
        ("the notebook's alpha_bar", SAMPLE_HEAD.replace("alpha_bar, timesteps", "ab_given, timesteps")
         + DDIM_SAMPLE_BODY.format(prev="float(alpha_bar[ts[k + 1]]) if k + 1 < len(ts) else 1.0", eta="eta"),
         "alpha_bar argument"),
        ("x_T updated in place", SAMPLE_HEAD + DDIM_SAMPLE_BODY.format(
            prev="float(alpha_bar[ts[k + 1]]) if k + 1 < len(ts) else 1.0", eta="eta").replace(
            "x = ddim_step(", "x[...] = ddim_step("), "in place"),
    ],
    "ex6_solution": [
        ("mean squared error", "def ddim_convergence(model, x_T, alpha_bar, step_counts, reference_steps=1000):\n"
                               "    ref = ddim_sample(model, x_T, alpha_bar, make_grid(reference_steps, len(alpha_bar), 'leading'))\n"
                               "    return {n: float(((ddim_sample(model, x_T, alpha_bar, make_grid(n, len(alpha_bar), 'leading'))"
                               " - ref) ** 2).mean()) for n in step_counts}", "take the square root"),
        ("fresh noise for the reference", "def ddim_convergence(model, x_T, alpha_bar, step_counts, reference_steps=1000):\n"
                                          "    ref = ddim_sample(model, torch.randn(x_T.shape, generator=torch.Generator().manual_seed(99)),"
                                          " alpha_bar, make_grid(reference_steps, len(alpha_bar), 'leading'))\n"
                                          "    return {n: float(((ddim_sample(model, x_T, alpha_bar, make_grid(n, len(alpha_bar), 'leading'))"
                                          " - ref) ** 2).mean().sqrt()) for n in step_counts}", "same x_T"),
        ("the notebook's T", "def ddim_convergence(model, x_T, alpha_bar, step_counts, reference_steps=1000):\n"
                             "    ref = ddim_sample(model, x_T, alpha_bar, make_grid(reference_steps, T, 'leading'))\n"
                             "    return {n: float(((ddim_sample(model, x_T, alpha_bar, make_grid(n, T, 'leading'))"
                             " - ref) ** 2).mean().sqrt()) for n in step_counts}", "len(alpha_bar)"),
        ("reference_steps ignored", "def ddim_convergence(model, x_T, alpha_bar, step_counts, reference_steps=1000):\n"
                                    "    ref = ddim_sample(model, x_T, alpha_bar, make_grid(1000, len(alpha_bar), 'leading'))\n"
                                    "    return {n: float(((ddim_sample(model, x_T, alpha_bar, make_grid(n, len(alpha_bar), 'leading'))"
                                    " - ref) ** 2).mean().sqrt()) for n in step_counts}", "reference_steps"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    # eps-form of the posterior mean (DDPM paper, Algorithm 2) with tensors, noise through normal_
    "ex1_solution": STEP_HEAD + """    ab_t = alpha_bar[t].double()
    ab_prev = alpha_bar[t - 1].double() if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    alpha_t = ab_t / ab_prev
    beta_t = 1 - alpha_t
    mean = ((x_t.double() - beta_t / (1 - ab_t).sqrt() * eps_hat.double()) / alpha_t.sqrt()).to(x_t.dtype)
    if t > 0:
        z = torch.empty_like(x_t).normal_(generator=generator)
        mean = mean + (((1 - ab_prev) / (1 - ab_t) * beta_t).sqrt()).to(x_t.dtype) * z
    return mean
""",
    "ex2_solution": "def ddpm_sample(model, shape, alpha_bar, generator, progress=False):\n"
                    "    x = torch.randn(shape, generator=generator)\n"
                    "    t = len(alpha_bar) - 1\n"
                    "    while t >= 0:\n"
                    "        x = ddpm_step(model(x, torch.tensor([t] * shape[0])), x, t, alpha_bar, generator)\n"
                    "        t -= 1\n"
                    "    return x",
    "ex3_solution": DDIM_HEAD + """    ab_t, ab_prev = torch.tensor(alpha_bar_t), torch.tensor(alpha_bar_prev)
    var = eta**2 * (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)
    x0 = (x_t - (1 - ab_t).sqrt() * eps_hat) / ab_t.sqrt()
    out = ab_prev.sqrt() * x0 + (1 - ab_prev - var).clamp(min=0).sqrt() * eps_hat
    if eta:
        out = out + var.sqrt() * torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
    return out
""",
    "ex4_solution": "def make_grid(num_steps, T, spacing):\n"
                    "    k = torch.arange(num_steps, dtype=torch.float64)\n"
                    "    if spacing == 'leading':\n"
                    "        return ((num_steps - 1 - k) * (T // num_steps)).long()\n"
                    "    if spacing == 'trailing':\n"
                    "        return (torch.round(T - k * T / num_steps) - 1).long()\n"
                    "    raise ValueError(f'unknown spacing {spacing}')",
    "ex5_solution": SAMPLE_HEAD + """    ts = timesteps.tolist()
    prev = alpha_bar[timesteps[1:]].tolist() + [1.0]
    x = x_T
    for t, ab_prev in zip(ts, prev):
        x = ddim_step(model(x, torch.tensor(t).repeat(len(x))), x, alpha_bar[t].item(), ab_prev, eta, generator)
    return x
""",
    "ex6_solution": "def ddim_convergence(model, x_T, alpha_bar, step_counts, reference_steps=1000):\n"
                    "    T = len(alpha_bar)\n"
                    "    run = lambda n: ddim_sample(model, x_T, alpha_bar, make_grid(n, T, 'leading'))\n"
                    "    ref = run(reference_steps)\n"
                    "    return {n: torch.sqrt(torch.mean((run(n) - ref) ** 2)).item() for n in step_counts}",
}


(test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
 test_correct_alternative_is_accepted) = exercise_tests(run_tests, WRONG, RIGHT, 2 * N_EXERCISES, isolate=True)


def test_notebook_has_parameters_points_explorer_and_diffusers_oracle():
    sources = solution_sources(ASSIGNMENT, NOTEBOOK, MAX_SCORE)
    assert "ipywidgets" in sources["explorer"] and "if not GRADING" in sources["explorer"], "the explorer needs a widget"
    assert "DDIMScheduler" in sources["test_ex5_hidden"] and "DDPMScheduler" in sources["test_ex1_hidden"], \
        "the hidden tests must compare with diffusers' schedulers"
    for gid, src in sources.items():
        if gid.endswith("_solution"):
            assert "sample_ddim(" not in src and "sample_ddpm(" not in src, f"{gid} may not call the reference sampler"


def test_released_notebook_has_stubs_and_no_secrets():
    assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, N_EXERCISES, (
        "math.sqrt(max(1 - alpha_bar_prev - sigma**2", "_diffusers_ddim"))



def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, MAX_SCORE, tmp_path)
