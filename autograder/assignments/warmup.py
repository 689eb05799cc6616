"""Builder of the warm-up assignment ``solutions/ch00_warmup/warmup.ipynb`` (the nbgrader source).

The committed source of truth is the notebook itself; this script is how it was written, so a
change to an exercise is made here and the notebook rewritten with::

    python -m autograder.assignments.warmup          # writes solutions/ch00_warmup/warmup.ipynb
    python -m autograder release ch00_warmup          # regenerates notebooks/ch00_warmup/ from it

Five exercises that prepare for diffusion: seeded noise (book §1.1, eq. 1.2 needs eps), scaling
images to [-1, 1], adding noise at a standard deviation sigma (eq. 1.7), a per-sample MSE (the
simple loss, eq. 1.10) and broadcasting a per-sample coefficient (as ``schedules.gather`` does).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ASSIGNMENT_ID = "ch00_warmup"
NOTEBOOK_ID = "warmup"


def _meta(grade_id: str, *, solution=False, grade=False, locked=False, points=0) -> dict:
    nbg = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
           "solution": solution, "task": False}
    if grade:
        nbg["points"] = points
    return {"nbgrader": nbg}


def md(grade_id: str, text: str):
    return new_markdown_cell(text.strip(), metadata=_meta(grade_id, locked=True))


def readonly(grade_id: str, code: str, tags=()):
    cell = new_code_cell(code.strip(), metadata=_meta(grade_id, locked=True))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def solution(grade_id: str, code: str):
    return new_code_cell(code.strip(), metadata=_meta(grade_id, solution=True))


def tests(grade_id: str, code: str, points: int):
    return new_code_cell(code.strip(), metadata=_meta(grade_id, grade=True, locked=True, points=points))


# ----------------------------------------------------------------------------- cells

INTRO = """
# Warm-up: tensors, seeded noise and the tools

Five small exercises that you will use in every chapter: drawing **reproducible** Gaussian noise
with a `torch.Generator`, scaling images to $[-1, 1]$, adding noise at a standard deviation
$\\sigma$, a per-sample mean-squared error and broadcasting a per-sample coefficient over a batch.

Write your code where the notebook says `# YOUR CODE HERE`, replacing
`raise NotImplementedError()`. Each exercise has a visible test you can run;
hidden tests run when the notebook is graded. Check your work with

```
nbgrader validate warmup.ipynb
```

Do not edit or delete the test cells, and do not rename this file.
"""

PARAMETERS = """
# Parameters: the autograder (papermill) injects its own values after this cell.
GRADING = False   # True when graded: heavy cells take their fast path
DEVICE = "cpu"    # "cuda" on a GPU machine (see the book's "Running on a GPU")
SEED = 0
"""

IMPORTS = """
import math

import torch

torch.manual_seed(SEED)


def expect(condition, message):
    \"\"\"Raise AssertionError(message) unless condition holds (used by the tests below).\"\"\"
    if not condition:
        raise AssertionError(message)
"""

EX1_TEXT = """
## Exercise 1: seeded Gaussian noise (2 + 2 points)

Every diffusion model starts from noise $\\varepsilon \\sim \\mathcal N(0, I)$ (book §1.1, eq. 1.2).
Experiments must be reproducible **without touching the global random state**, so draw the noise
from your own `torch.Generator`.

Write `seeded_noise(shape, seed, device="cpu", dtype=torch.float32)` that returns a tensor of
the given `shape` (any tuple, e.g. `(N, C, H, W)`) filled with standard Gaussian noise, the same
for the same `seed`, on `device` with `dtype`.
"""

EX1_SOLUTION = """
def seeded_noise(shape, seed, device="cpu", dtype=torch.float32):
    \"\"\"Standard Gaussian noise of `shape`, reproducible from `seed` (book §1.1, eq. 1.2).\"\"\"
    ### BEGIN SOLUTION
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    ### END SOLUTION
"""

EX1_VISIBLE = """
eps_a = seeded_noise((4, 1, 8, 8), seed=0)
expect(tuple(eps_a.shape) == (4, 1, 8, 8),
       f"seeded_noise((4, 1, 8, 8), 0) should have shape (4, 1, 8, 8); got {tuple(eps_a.shape)}")
eps_b = seeded_noise((4, 1, 8, 8), seed=0)
expect(torch.equal(eps_a, eps_b),
       "the same seed must give the same noise: create torch.Generator().manual_seed(seed) "
       "and pass it as generator=")
print("Exercise 1, visible test passed.")
"""

EX1_HIDDEN = """
### BEGIN HIDDEN TESTS
state = torch.random.get_rng_state()
_ = seeded_noise((16,), seed=3)
expect(torch.equal(state, torch.random.get_rng_state()),
       "seeded_noise changed the global random state: did you call torch.manual_seed? "
       "Draw from a local torch.Generator instead")
expect(not torch.equal(seeded_noise((64,), seed=1), seeded_noise((64,), seed=2)),
       "different seeds gave identical noise: is the seed used?")
big = seeded_noise((200_000,), seed=7)
expect(float(big.min()) < 0,
       f"all values are >= 0 (min {float(big.min()):.3f}): this looks like uniform noise "
       "(torch.rand); Gaussian noise needs torch.randn")
expect(abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02,
       f"noise should have mean 0 and std 1; got mean {float(big.mean()):.3f}, "
       f"std {float(big.std()):.3f}")
expect(seeded_noise((3,), seed=0, dtype=torch.float64).dtype == torch.float64,
       "seeded_noise ignored dtype=torch.float64")
### END HIDDEN TESTS
"""

EX2_TEXT = """
## Exercise 2: images to $[-1, 1]$ (2 + 2 points)

Diffusion models work on pixels scaled to $[-1, 1]$, so that pure noise and data have comparable
scales. Write `to_unit_range(images, max_value=255.0)` that maps pixel values in
$[0, \\text{max\\_value}]$ (any dtype, **including `torch.uint8`**) linearly to a float tensor in
$[-1, 1]$: $0 \\mapsto -1$, $\\text{max\\_value} \\mapsto 1$. Shapes in and out: the same.
(The digits of `sklearn.datasets.load_digits` have `max_value = 16`.)
"""

EX2_SOLUTION = """
def to_unit_range(images, max_value=255.0):
    \"\"\"Map pixels in [0, max_value] to floats in [-1, 1]; shape unchanged.\"\"\"
    ### BEGIN SOLUTION
    return images.to(torch.float32) / max_value * 2 - 1
    ### END SOLUTION
"""

EX2_VISIBLE = """
pixels = torch.tensor([0, 255], dtype=torch.uint8)
scaled = to_unit_range(pixels)
expect(scaled.is_floating_point(), f"to_unit_range must return floats; got dtype {scaled.dtype}")
expect(torch.allclose(scaled, torch.tensor([-1.0, 1.0])),
       f"0 should map to -1 and 255 to 1; got {scaled.tolist()} "
       "(scaling to [0, 1] is not enough: multiply by 2 and subtract 1)")
print("Exercise 2, visible test passed.")
"""

EX2_HIDDEN = """
### BEGIN HIDDEN TESTS
ramp = torch.arange(256, dtype=torch.uint8)
got = to_unit_range(ramp)
want = torch.arange(256, dtype=torch.float32) / 255 * 2 - 1
bad = int((got - want).abs().argmax())
expect(torch.allclose(got, want, atol=1e-5),
       f"to_unit_range is wrong at pixel value {bad}: expected {float(want[bad]):.4f}, "
       f"got {float(got[bad]):.4f}; with uint8 input, convert to float before multiplying "
       "(uint8 arithmetic wraps around at 256)")
digits = torch.tensor([[0.0, 8.0, 16.0]])
got16 = to_unit_range(digits, max_value=16.0)
expect(torch.allclose(got16, torch.tensor([[-1.0, 0.0, 1.0]])),
       f"with max_value=16, [0, 8, 16] should map to [-1, 0, 1]; got {got16.tolist()}: "
       "did you hard-code 255 instead of using max_value?")
expect(tuple(to_unit_range(torch.zeros(2, 3, 4, 5)).shape) == (2, 3, 4, 5),
       "to_unit_range must keep the input shape")
### END HIDDEN TESTS
"""

EX3_TEXT = """
## Exercise 3: add noise at a standard deviation $\\sigma$ (2 + 2 points)

The noise level of a diffusion model is a **standard deviation** $\\sigma$ (book §1.2, eq. 1.7):
$x_\\sigma = x + \\sigma\\,\\varepsilon$ with $\\varepsilon \\sim \\mathcal N(0, I)$.
Write `add_noise(x, sigma, generator)` that draws `eps` of `x`'s shape, dtype and device from
`generator` and returns the pair `(x + sigma * eps, eps)`. `sigma` is a Python float.
"""

EX3_SOLUTION = """
def add_noise(x, sigma, generator):
    \"\"\"Return (x + sigma * eps, eps), eps ~ N(0, I) drawn from `generator` (book §1.2, eq. 1.7).\"\"\"
    ### BEGIN SOLUTION
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * eps, eps
    ### END SOLUTION
"""

EX3_VISIBLE = """
x = torch.zeros(2, 1, 4, 4)
x_noisy, eps = add_noise(x, 0.5, torch.Generator().manual_seed(0))
expect(x_noisy.shape == x.shape and eps.shape == x.shape,
       f"add_noise should return two tensors of x's shape {tuple(x.shape)}; "
       f"got {tuple(x_noisy.shape)} and {tuple(eps.shape)}")
expect(torch.allclose(x_noisy - x, 0.5 * eps, atol=1e-6),
       "x_noisy - x should equal sigma * eps: sigma is a standard deviation, "
       "so multiply eps by sigma (not sigma**2, not sqrt(sigma))")
print("Exercise 3, visible test passed.")
"""

EX3_HIDDEN = """
### BEGIN HIDDEN TESTS
x = torch.full((100_000,), 3.0)
x_noisy, eps = add_noise(x, 0.3, torch.Generator().manual_seed(1))
std = float((x_noisy - x).std())
expect(abs(std - 0.3) < 0.01,
       f"the std of x_noisy - x should be sigma = 0.3; got {std:.3f} "
       "(0.09 means sigma**2 * eps; 0.548 means sqrt(sigma) * eps)")
state = torch.random.get_rng_state()
a, _ = add_noise(x[:10], 1.0, torch.Generator().manual_seed(5))
b, _ = add_noise(x[:10], 1.0, torch.Generator().manual_seed(5))
expect(torch.equal(a, b) and torch.equal(state, torch.random.get_rng_state()),
       "add_noise must draw eps from the generator it is given (generator=generator), "
       "not from the global random state")
x64 = torch.zeros(3, dtype=torch.float64)
expect(add_noise(x64, 1.0, torch.Generator().manual_seed(0))[1].dtype == torch.float64,
       "eps should have x's dtype (float64 here)")
### END HIDDEN TESTS
"""

EX4_TEXT = """
## Exercise 4: a per-sample mean-squared error (2 + 2 points)

The simple diffusion loss (book §1.4, eq. 1.10) is a mean-squared error. For logging and for
weighting by timestep you need **one value per sample**. Write `batch_mse(pred, target)` that
takes two tensors of shape `(N, ...)` (any number of dims after the batch) and returns shape
`(N,)`: the mean of the squared difference over every dimension except the first.
"""

EX4_SOLUTION = """
def batch_mse(pred, target):
    \"\"\"Per-sample mean squared error, (N, ...) x (N, ...) -> (N,) (book §1.4, eq. 1.10).\"\"\"
    ### BEGIN SOLUTION
    return ((pred - target) ** 2).flatten(start_dim=1).mean(dim=1)
    ### END SOLUTION
"""

EX4_VISIBLE = """
pred = torch.zeros(2, 1, 2, 2)
target = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 2.0)])
loss = batch_mse(pred, target)
expect(tuple(loss.shape) == (2,),
       f"batch_mse should return one value per sample, shape (2,); got {tuple(loss.shape)}: "
       "average over every dim except dim 0")
expect(torch.allclose(loss, torch.tensor([0.0, 4.0])),
       f"expected per-sample MSE [0, 4]; got {loss.tolist()}")
print("Exercise 4, visible test passed.")
"""

EX4_HIDDEN = """
### BEGIN HIDDEN TESTS
g = torch.Generator().manual_seed(0)
p, q = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
got = batch_mse(p, q)
want = torch.stack([((p[i] - q[i]) ** 2).mean() for i in range(5)])
expect(tuple(got.shape) == (5,), f"batch_mse on (5, 3, 4, 4) should return shape (5,); got {tuple(got.shape)}")
ratio = float(got.sum() / want.sum())
expect(abs(ratio - 48) > 1e-3,
       "per-sample values are C*H*W = 48 times too large: take the mean, not the sum")
expect(torch.allclose(got, want, atol=1e-6), f"expected {want.tolist()}; got {got.tolist()}")
p2, q2 = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
try:
    got2 = batch_mse(p2, q2)
    ok = tuple(got2.shape) == (4,) and torch.allclose(got2, ((p2 - q2) ** 2).mean(dim=1), atol=1e-6)
except Exception as exc:   # e.g. IndexError from .mean(dim=(1, 2, 3)) on a 2-D input
    got2, ok = f"{type(exc).__name__}: {exc}", False
expect(ok, "batch_mse must work for any number of dims, e.g. (N, D) as well as (N, C, H, W): "
           f"flatten everything after dim 0 instead of listing dims (1, 2, 3) (got {got2})")
### END HIDDEN TESTS
"""

EX5_TEXT = """
## Exercise 5: broadcasting a per-sample coefficient (2 + 2 points)

Each sample of a batch gets its own noise level, so a coefficient of shape `(N,)` (for example
$\\sqrt{\\bar\\alpha_t}$, eq. 1.2) must multiply an `x` of shape `(N, C, H, W)` **sample by sample**.
Write `expand_like(coef, x)` that returns `coef` reshaped to `(N, 1, ..., 1)` with as many dims as
`x` (2-D tabular data, 4-D images, 5-D video), on `x`'s device and dtype, so that
`expand_like(coef, x) * x` scales sample `i` by `coef[i]`.
"""

EX5_SOLUTION = """
def expand_like(coef, x):
    \"\"\"Reshape a per-sample coef (N,) to (N, 1, ..., 1) matching x.ndim, on x's device and dtype.\"\"\"
    ### BEGIN SOLUTION
    return coef.to(x).reshape(coef.shape[0], *([1] * (x.ndim - 1)))
    ### END SOLUTION
"""

EX5_VISIBLE = """
coef = torch.tensor([1.0, 2.0, 3.0])
x = torch.ones(3, 2, 4, 4)
c = expand_like(coef, x)
expect(tuple(c.shape) == (3, 1, 1, 1),
       f"for x of shape (3, 2, 4, 4), expand_like should return shape (3, 1, 1, 1); got {tuple(c.shape)}")
expect(torch.allclose((c * x)[:, 0, 0, 0], coef),
       "expand_like(coef, x) * x should scale sample i by coef[i]")
print("Exercise 5, visible test passed.")
"""

EX5_HIDDEN = """
### BEGIN HIDDEN TESTS
coef = torch.tensor([1.0, 2.0, 3.0])
x = torch.ones(3, 3, 2, 2)
c = expand_like(coef, x)
expect(tuple(c.shape)[0] == 3 and torch.allclose((c * x)[:, :, 0, 0], coef[:, None].expand(3, 3)),
       f"the coefficient must vary along dim 0 (the batch), not the channels; got shape {tuple(c.shape)}")
for shape in [(3, 5), (3, 2, 4, 4, 4)]:
    got = expand_like(coef, torch.ones(shape))
    want_shape = (3,) + (1,) * (len(shape) - 1)
    expect(tuple(got.shape) == want_shape,
           f"for x of shape {shape}, expected shape {want_shape}; got {tuple(got.shape)}: "
           "build the shape from x.ndim instead of hard-coding four dims")
got64 = expand_like(coef, torch.ones(3, 2, dtype=torch.float64))
expect(got64.dtype == torch.float64,
       f"expand_like should return x's dtype (float64 here); got {got64.dtype}: use .to(x)")
### END HIDDEN TESTS
"""

FAST_PATH = """
# How close is the sample std to sigma? Many samples when exploring, few when graded (fast path).
from tqdm.auto import tqdm

n_samples = 2_000 if GRADING else 200_000
generator = torch.Generator().manual_seed(SEED)
for sigma in tqdm([0.1, 0.5, 1.0, 2.0], disable=GRADING):
    _, eps = add_noise(torch.zeros(n_samples), sigma, generator)
    print(f"sigma = {sigma:.1f}: sample std of sigma * eps = {float((sigma * eps).std()):.3f}")
"""

EXPLORER_TEXT = """
## Explore: how much noise can a digit take?

Move the slider: the digits of `sklearn.datasets.load_digits` (scaled with your `to_unit_range`)
are noised with your `add_noise` at standard deviation $\\sigma$. Around which $\\sigma$ can you no
longer read them? (This is what the forward process of chapter 1 does, step by step.)
"""

EXPLORER = """
if not GRADING:
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from sklearn.datasets import load_digits

    x0 = to_unit_range(torch.from_numpy(load_digits().images[:8]), max_value=16.0)   # (8, 8, 8)

    def show(sigma=0.5, seed=SEED):
        x_t, _ = add_noise(x0, sigma, torch.Generator().manual_seed(seed))          # (8, 8, 8)
        fig, axes = plt.subplots(1, 8, figsize=(10, 1.6))
        for ax, image in zip(axes, x_t):
            ax.imshow(image, cmap="gray", vmin=-2, vmax=2)
            ax.axis("off")
        fig.suptitle(f"digits + sigma * eps, sigma = {sigma:.2f}")
        plt.show()

    widgets.interact(show, sigma=widgets.FloatSlider(value=0.5, min=0.0, max=3.0, step=0.05),
                     seed=widgets.IntSlider(value=SEED, min=0, max=20))
"""


def build() -> nbformat.NotebookNode:
    """The warm-up notebook (nbgrader source, outputs cleared)."""
    cells = [
        md("intro", INTRO),
        readonly("parameters", PARAMETERS, tags=["parameters"]),
        readonly("imports", IMPORTS),
    ]
    exercises = [(EX1_TEXT, EX1_SOLUTION, EX1_VISIBLE, EX1_HIDDEN),
                 (EX2_TEXT, EX2_SOLUTION, EX2_VISIBLE, EX2_HIDDEN),
                 (EX3_TEXT, EX3_SOLUTION, EX3_VISIBLE, EX3_HIDDEN),
                 (EX4_TEXT, EX4_SOLUTION, EX4_VISIBLE, EX4_HIDDEN),
                 (EX5_TEXT, EX5_SOLUTION, EX5_VISIBLE, EX5_HIDDEN)]
    for k, (text, sol, visible, hidden) in enumerate(exercises, start=1):
        cells += [md(f"ex{k}_text", text), solution(f"ex{k}_solution", sol),
                  tests(f"test_ex{k}_visible", visible, points=2),
                  tests(f"test_ex{k}_hidden", hidden, points=2)]
    cells += [readonly("fast_path", FAST_PATH), md("explorer_text", EXPLORER_TEXT),
              readonly("explorer", EXPLORER)]
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:02d}-{cell.metadata['nbgrader']['grade_id'].replace('_', '-')}"
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2]
    path = root / "solutions" / ASSIGNMENT_ID / f"{NOTEBOOK_ID}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(build(), str(path))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
