"""The warm-up's graded tests: each exercise's plausible mistakes are rejected with a message that
points at the mistake, and correct alternatives are accepted.

Fast: the notebook's cells are executed in-process (no kernel) in a fresh namespace, exactly as
written in ``solutions/ch00_warmup/warmup.ipynb`` (the ``### BEGIN/END`` markers are comments), with
one solution cell replaced. Grading through the real kernel is tested in test_autograder_grade.py.
"""
from __future__ import annotations

import nbformat

import pytest

from nbharness import REPO, assert_full_marks_and_zero, assert_release_in_sync, exercise_tests, load_solution, \
    run_tests as _run

SOLUTION = load_solution("ch00_warmup", "warmup")


def run_tests(overrides: dict[str, str]) -> dict[str, str | None]:
    """The warm-up's test cells -> error message or None, with solution cells replaced (see nbharness)."""
    return _run(SOLUTION, overrides, skip=("explorer", "fast_path"))


WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("global seed", "def seeded_noise(shape, seed, device='cpu', dtype=torch.float32):\n"
                        "    torch.manual_seed(seed)\n    return torch.randn(shape, device=device, dtype=dtype)",
         "global random state"),
        ("uniform noise", "def seeded_noise(shape, seed, device='cpu', dtype=torch.float32):\n"
                          "    g = torch.Generator(device=device).manual_seed(seed)\n"
                          "    return torch.rand(shape, generator=g, device=device, dtype=dtype)", "torch.rand"),
        ("dtype ignored", "def seeded_noise(shape, seed, device='cpu', dtype=torch.float32):\n"
                          "    g = torch.Generator(device=device).manual_seed(seed)\n"
                          "    return torch.randn(shape, generator=g, device=device)", "dtype"),
        ("seed ignored", "def seeded_noise(shape, seed, device='cpu', dtype=torch.float32):\n"
                         "    g = torch.Generator(device=device).manual_seed(0)\n"
                         "    return torch.randn(shape, generator=g, device=device, dtype=dtype)", "is the seed used"),
        ("the default generator reseeded", "def seeded_noise(shape, seed, device='cpu', dtype=torch.float32):\n"
                                           "    g = torch.default_generator.manual_seed(seed)\n"
                                           "    return torch.randn(shape, generator=g, device=device, dtype=dtype)",
         "global random state"),
    ],
    "ex2_solution": [
        ("only [0, 1]", "def to_unit_range(images, max_value=255.0):\n    return images.float() / max_value",
         "multiply by 2 and subtract 1"),
        ("uint8 overflow", "def to_unit_range(images, max_value=255.0):\n    return images * 2 / max_value - 1",
         "uint8 arithmetic wraps"),
        ("hard-coded 255", "def to_unit_range(images, max_value=255.0):\n    return (images.float() - 127.5) / 127.5",
         "hard-code 255"),
        ("float input scaled in place", "def to_unit_range(images, max_value=255.0):\n"
                                        "    images = images.float()\n    images /= max_value\n"
                                        "    return images.mul_(2).sub_(1)", "in place"),
    ],
    "ex3_solution": [
        ("variance for std", "def add_noise(x, sigma, generator):\n"
                             "    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)\n"
                             "    return x + sigma ** 2 * eps, eps", "not sigma**2"),
        ("sqrt(sigma)", "def add_noise(x, sigma, generator):\n"
                        "    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)\n"
                        "    return x + math.sqrt(sigma) * eps, eps", "sqrt(sigma)"),
        ("global RNG", "def add_noise(x, sigma, generator):\n    eps = torch.randn(x.shape, dtype=x.dtype)\n"
                       "    return x + sigma * eps, eps", "generator=generator"),
        ("x noised in place", "def add_noise(x, sigma, generator):\n"
                              "    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)\n"
                              "    x += sigma * eps\n    return x, eps", "in place"),
        ("a generator of its own", "def add_noise(x, sigma, generator):\n"
                                   "    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)\n"
                                   "    return x + sigma * eps, eps", "generator you are given"),
    ],
    "ex4_solution": [
        ("one scalar", "def batch_mse(pred, target):\n    return ((pred - target) ** 2).mean()", "one value per sample"),
        ("sum", "def batch_mse(pred, target):\n    return ((pred - target) ** 2).flatten(1).sum(1)",
         "mean, not the sum"),
        ("four dims only", "def batch_mse(pred, target):\n    return ((pred - target) ** 2).mean(dim=(1, 2, 3))",
         "any number of dims"),
        ("RMSE", "def batch_mse(pred, target):\n    return ((pred - target) ** 2).flatten(1).mean(1).sqrt()",
         "square root (RMSE)"),
        ("detached", "def batch_mse(pred, target):\n    return ((pred - target) ** 2).flatten(1).mean(1).detach()",
         "gradient"),
        ("difference squared in place", "def batch_mse(pred, target):\n"
                                        "    return pred.sub_(target).pow_(2).flatten(1).mean(1)", "in place"),
    ],
    "ex5_solution": [
        ("hard-coded 4-D", "def expand_like(coef, x):\n    return coef.to(x).view(-1, 1, 1, 1)", "from x.ndim"),
        ("channel axis", "def expand_like(coef, x):\n    return coef.to(x)[None, :, None, None]", "dim 0 (the batch)"),
        ("dtype ignored", "def expand_like(coef, x):\n    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1)))",
         "x's dtype"),
        ("2-D only", "def expand_like(coef, x):\n    return coef.to(x)[:, None]", "from x.ndim"),
        ("coef unsqueezed in place", "def expand_like(coef, x):\n"
                                     "    for _ in range(x.ndim - 1):\n        coef.unsqueeze_(-1)\n"
                                     "    return coef.to(x)", "in place"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    "ex1_solution": ["def seeded_noise(shape, seed, device='cpu', dtype=torch.float32):\n"
                     "    g = torch.Generator(device=device).manual_seed(seed)\n"
                     "    return torch.empty(shape, device=device, dtype=dtype).normal_(generator=g)",
                     # NumPy's own generator: reproducible, and the global torch state is left alone
                     "import numpy as np\n\ndef seeded_noise(shape, seed, device='cpu', dtype=torch.float32):\n"
                     "    z = np.random.default_rng(seed).standard_normal(shape)\n"
                     "    return torch.from_numpy(z).to(device=device, dtype=dtype)"],
    "ex2_solution": "def to_unit_range(images, max_value=255.0):\n"
                    "    half = max_value / 2\n    return (images.to(torch.float32) - half) / half",
    "ex3_solution": ["def add_noise(x, sigma, generator):\n    eps = torch.empty_like(x).normal_(generator=generator)\n"
                     "    return x.add(eps, alpha=sigma), eps",
                     # in-place arithmetic on a copy is fine
                     "def add_noise(x, sigma, generator):\n"
                     "    eps = torch.normal(0.0, 1.0, x.shape, generator=generator).to(x)\n"
                     "    out = x.clone()\n    out.add_(sigma * eps)\n    return out, eps"],
    "ex4_solution": "import torch.nn.functional as F\n\ndef batch_mse(pred, target):\n"
                    "    return F.mse_loss(pred, target, reduction='none').reshape(len(pred), -1).mean(-1)",
    "ex5_solution": "def expand_like(coef, x):\n"
                    "    return coef.to(device=x.device, dtype=x.dtype)[(slice(None),) + (None,) * (x.ndim - 1)]",
}


(test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
 test_correct_alternative_is_accepted) = exercise_tests(run_tests, WRONG, RIGHT, 10)


def test_released_notebook_has_stubs_no_solutions_or_hidden_tests():
    released = nbformat.read(str(REPO / "notebooks" / "ch00_warmup" / "warmup.ipynb"), as_version=4)
    text = "\n".join(c.source for c in released.cells)
    for secret in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "torch.randn(shape, generator=generator",
                   "Draw from a local torch.Generator instead"):
        assert secret not in text, f"the released notebook leaks {secret!r}; regenerate it with `python -m autograder release`"
    stubs = [c for c in released.cells if c.cell_type == "code" and "raise NotImplementedError()" in c.source]
    assert len(stubs) == 5, f"expected 5 solution stubs in the released notebook; found {len(stubs)}"
    params = [c for c in released.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "GRADING = False" in params[0].source, "the released notebook needs one `parameters` cell with GRADING = False"


def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync("ch00_warmup", "warmup")


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero("ch00_warmup", "warmup", 20, tmp_path)
