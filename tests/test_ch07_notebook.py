"""Chapter 7's graded notebook (solutions/ch07_flow/flow.ipynb): flow matching and the DiT.

Each exercise's plausible mistakes are rejected by its graded tests with a message that points at the
mistake, and correct alternatives are accepted; the released copy leaks nothing and is in sync; the
real autograder gives the solution full marks and the released notebook zero (slow).
The cells run in-process through ``tests/nbharness.py``. The mistakes are written as edits of the
solution cell (``variant``): each names the line it changes, so a change to the solution that makes an
edit miss fails here loudly instead of silently testing the solution itself.
"""
from __future__ import annotations

import pytest

from nbharness import (assert_full_marks_and_zero, assert_release_in_sync,
                       assert_released_has_stubs_and_no_secrets, solution_sources, exercise_runner,
                       exercise_tests, grade_id, load_solution)

ASSIGNMENT, NOTEBOOK = "ch07_flow", "flow"
SKIP = ("explorer", "plot")
N_EXERCISES, MAX_SCORE = 6, 37

run_tests = exercise_runner(ASSIGNMENT, NOTEBOOK, SKIP, N_EXERCISES)
SOURCES = {grade_id(c): c.source for c in load_solution(ASSIGNMENT, NOTEBOOK).cells if grade_id(c)}


def variant(k: int, *edits: tuple[str, str]) -> str:
    """Exercise k's solution cell with each (old, new) edit applied; every ``old`` must occur in it."""
    src = SOURCES[f"ex{k}_solution"]
    for old, new in edits:
        assert old in src, f"ex{k}_solution no longer contains {old!r}: update this mistake"
        src = src.replace(old, new)
    return src


FM_DRAW_T = "t = torch.rand(len(x0), generator=generator, dtype=x0.dtype)"
FM_DRAW_EPS = "eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)"
FM_RETURN = "return ((model(x_t, t) - velocity_target(x0, eps)) ** 2).mean()"
EULER_V = "v = model(x, torch.full((len(x),), t, dtype=x.dtype, device=x.device))"
EULER_RETURN = "return x + (t_next - t) * v "
HEUN_LAST = "    if t_next == 0:\n        return x_euler                                                       # the last step: Euler\n"
HEUN_RETURN = "return x + h * 0.5 * (v + v_next)"
PATCH_PERMUTE = "permute(0, 2, 4, 3, 5, 1)"
UNPATCH_RESHAPE = "tokens.reshape(N, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)"
MOD_RETURN = "return x * (1 + scale[:, None, :]) + shift[:, None, :]"
CHUNKS = "b1, s1, g1, b2, s2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)"
ZERO_INIT = ("        nn.init.zeros_(self.adaLN_modulation[-1].weight)                     # the zero of adaLN-Zero\n"
             "        nn.init.zeros_(self.adaLN_modulation[-1].bias)\n")
CF_RETURN = "return x - t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * F(x, t)"

WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("target x0 - eps", variant(1, ("return eps - x0", "return x0 - eps")), "not x0 - eps"),
        ("path reversed (t = 0 at the noise)",
         variant(1, ("return (1 - tt) * x0 + tt * eps", "return tt * x0 + (1 - tt) * eps")), "t = 0 is the data"),
        ("t broadcast along the last axis, not per sample",
         variant(1, ("tt = t.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))", "tt = t.to(x0.dtype)[:, None]")),
         "per sample"),
        ("sum instead of mean", variant(1, (FM_RETURN, FM_RETURN.replace(".mean()", ".sum()"))), "that is the sum"),
        ("RMSE", variant(1, (FM_RETURN, FM_RETURN.replace(".mean()", ".mean().sqrt()"))), "RMSE"),
        ("sum over features, mean over the batch",
         variant(1, (FM_RETURN, FM_RETURN.replace(".mean()", ".sum(dim=1).mean()"))), "sums over the features"),
        ("loss under no_grad", variant(1, (f"    x_t = interpolate(x0, eps, t)", "    torch.set_grad_enabled(False)\n"
                                           "    x_t = interpolate(x0, eps, t)"),
                                       (FM_RETURN, "loss = " + FM_RETURN[len("return "):]
                                        + "\n    torch.set_grad_enabled(True)\n    return loss")), "gradient"),
        ("t and eps from the global RNG", variant(1, (FM_DRAW_T, "t = torch.rand(len(x0), dtype=x0.dtype)"),
                                                  (FM_DRAW_EPS, "eps = torch.randn(x0.shape, dtype=x0.dtype)")),
         "generator"),
        ("eps drawn before t", variant(1, (FM_DRAW_T, "<t>"), (FM_DRAW_EPS, FM_DRAW_T), ("<t>", FM_DRAW_EPS)),
         "draw t first"),
        ("t drawn in float32 for float64 data",
         variant(1, (FM_DRAW_T, "t = torch.rand(len(x0), generator=generator)")), "dtype=x0.dtype"),
    ],
    "ex2_solution": [
        ("step with the wrong sign", variant(2, (EULER_RETURN, "return x + (t - t_next) * v ")), "wrong sign"),
        ("n grid points instead of n + 1",
         variant(2, ("torch.linspace(1.0, 0.0, num_steps + 1,", "torch.linspace(1.0, 0.0, num_steps,")), "num_steps + 1"),
        ("ascending grid", variant(2, ("torch.linspace(1.0, 0.0, num_steps + 1,", "torch.linspace(0.0, 1.0, num_steps + 1,")),
         "descending"),
        ("inverse shift", variant(2, ("return shift * t / (1 + (shift - 1) * t)", "return t / (shift - (shift - 1) * t)")),
         "eq. 7.13"),
        ("slope at t_next", variant(2, (EULER_V, EULER_V.replace("(len(x),), t,", "(len(x),), t_next,"))),
         "start of the step"),
        ("Python float t given to the model", variant(2, (EULER_V, "v = model(x, t)")), "(N,) tensor"),
        ("float32 times for float64 x", variant(2, (EULER_V, "v = model(x, torch.full((len(x),), t))")), "x's dtype"),
        ("euler_step updates x in place", variant(2, (EULER_RETURN, "x += (t_next - t) * v\n    return x ")), "in place"),
        ("sampler writes into x_1", variant(2, ("x = euler_step(model, x, float(ts[i]), float(ts[i + 1]))",
                                                "x.copy_(euler_step(model, x, float(ts[i]), float(ts[i + 1])))")),
         "in place"),
        ("sampler rebuilds a uniform grid", variant(2, ("    x = x_1\n", "    x = x_1\n    ts = time_grid(len(ts) - 1)\n")),
         "it is shifted"),
        ("sampler skips the last step", variant(2, ("range(len(ts) - 1)", "range(len(ts) - 2)")), "len(ts) - 1"),
    ],
    "ex3_solution": [
        ("corrector on the last step too (2n NFE)", variant(3, (HEUN_LAST, "")), "2n - 1"),
        ("slope at the predicted point alone", variant(3, (HEUN_RETURN, "return x + h * v_next")),
         "average the two slopes"),
        ("corrector from the predictor", variant(3, (HEUN_RETURN, "return x_euler + h * 0.5 * (v + v_next)")),
         "not from the predictor"),
        ("second slope at t instead of t_next",
         variant(3, ("v_next = model(x_euler, torch.full((n,), t_next,", "v_next = model(x_euler, torch.full((n,), t,")),
         "at t_next"),
        ("Euler by position (last grid step) instead of landing on 0",
         variant(3, (HEUN_LAST, ""),
                 ("        x = heun_step(model, x, float(ts[i]), float(ts[i + 1]))",
                  "        if i == len(ts) - 2:\n"
                  "            x = x + (float(ts[i + 1]) - float(ts[i])) * model(x, torch.full((len(x),), float(ts[i]),"
                  " dtype=x.dtype))\n"
                  "        else:\n"
                  "            x = heun_step(model, x, float(ts[i]), float(ts[i + 1]))")), "one model call"),
        ("sampler writes into x_1", variant(3, ("x = heun_step(model, x, float(ts[i]), float(ts[i + 1]))",
                                                "x[...] = heun_step(model, x, float(ts[i]), float(ts[i + 1]))")),
         "in place"),
    ],
    "ex4_solution": [
        ("column-major tokens", variant(4, (PATCH_PERMUTE, "permute(0, 4, 2, 3, 5, 1)")), "column-major"),
        ("channel-first features", variant(4, (PATCH_PERMUTE, "permute(0, 2, 4, 1, 3, 5)")), "channel"),
        ("a plain reshape", variant(4, ("x = x.reshape(N, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1)", "")),
         "p x p patch"),
        ("patch size fixed at 2", variant(4, ("    N, C, H, W = x.shape\n", "    N, C, H, W = x.shape\n    p = 2\n")),
         "patch size"),
        ("unpatchify swaps height and width", variant(4, (UNPATCH_RESHAPE, UNPATCH_RESHAPE.replace("h, w, p, p", "w, h, p, p"))),
         "non-square"),
        ("unpatchify with the wrong permutation",
         variant(4, (UNPATCH_RESHAPE, UNPATCH_RESHAPE.replace("permute(0, 5, 1, 3, 2, 4)", "permute(0, 5, 1, 2, 3, 4)"))),
         "inverse of patchify"),
        ("patchify through numpy (no gradient)",
         variant(4, ("    return x.reshape(N, h * w, p * p * C)",
                     "    return torch.from_numpy(x.detach().numpy().reshape(N, h * w, p * p * C))")), "gradient"),
    ],
    "ex5_solution": [
        ("modulate without 1 +", variant(5, (MOD_RETURN, "return x * scale[:, None, :] + shift[:, None, :]")), "1 + scale"),
        ("shift and scale swapped", variant(5, (MOD_RETURN, "return x * (1 + shift[:, None, :]) + scale[:, None, :]")),
         "swapped"),
        ("shift and scale not per sample", variant(5, (MOD_RETURN, "return x * (1 + scale) + shift")), "per sample"),
        ("no gates", variant(5, ("x = x + g1[:, None, :] * self.attn(", "x = x + self.attn("),
                             ("return x + g2[:, None, :] * self.mlp(", "return x + self.mlp(")), "gate"),
        ("chunk order (scale, shift, gate)", variant(5, (CHUNKS, CHUNKS.replace("b1, s1, g1, b2, s2, g2", "s1, b1, g1, s2, b2, g2"))),
         "(shift, scale, gate)"),
        ("chunk order gate first", variant(5, (CHUNKS, CHUNKS.replace("b1, s1, g1, b2, s2, g2", "g1, b1, s1, g2, b2, s2"))),
         "(shift, scale, gate)"),
        ("PyTorch's default init (not adaLN-Zero)", variant(5, (ZERO_INIT, "")), "zero"),
        ("both branches read the block's input",
         variant(5, ("        x = x + g1[:, None, :] * self.attn(modulate(self.norm(x), b1, s1))",
                     "        h = self.norm(x)\n        x = x + g1[:, None, :] * self.attn(modulate(h, b1, s1))"),
                 ("self.mlp(modulate(self.norm(x), b2, s2))", "self.mlp(modulate(h, b2, s2))")), "updated x"),
    ],
    "ex6_solution": [
        ("c_out = +t", variant(6, (CF_RETURN, CF_RETURN.replace("return x - t", "return x + t"))), "c_out = -t"),
        ("t along the last axis", variant(6, (CF_RETURN, "return x - t.to(x.dtype)[:, None] * F(x, t)")),
         "one t per sample"),
        ("no stop-gradient", variant(6, ("    with torch.no_grad():\n", "    if True:\n")), "stop-gradient"),
        ("the student takes the ODE step", variant(6, ("x_prev = x + h * teacher(x, t)", "x_prev = x + h * F(x, t)")),
         "teacher"),
        ("teacher step away from the data", variant(6, ("h = (t_prev - t)", "h = (t - t_prev)")), "towards the data"),
        ("target read at t", variant(6, ("return consistency_fn(F, x_prev, t_prev)", "return consistency_fn(F, x_prev, t)")),
         "t_prev"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    "ex1_solution": """import torch.nn.functional as nnf


def interpolate(x0, eps, t):
    return torch.lerp(x0, eps, t.view(-1, *[1] * (x0.dim() - 1)).type_as(x0))


def velocity_target(x0, eps):
    return -(x0 - eps)


def fm_loss(model, x0, generator):
    n = x0.shape[0]
    times = torch.rand(n, generator=generator, dtype=x0.dtype)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    return nnf.mse_loss(model(interpolate(x0, noise, times), times), velocity_target(x0, noise))
""",
    "ex2_solution": """def time_grid(num_steps, shift=1.0):
    t = torch.arange(num_steps, -1, -1, dtype=torch.float64) / num_steps
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def euler_step(model, x, t, t_next):
    return x + (t_next - t) * model(x, x.new_full((x.shape[0],), t))


def sample_euler(model, x_1, ts, progress=False):
    x = x_1
    pairs = list(zip(ts[:-1].tolist(), ts[1:].tolist()))
    for t, t_next in tqdm(pairs, disable=not progress):
        x = euler_step(model, x, t, t_next)
    return x
""",
    "ex3_solution": """def heun_step(model, x, t, t_next):
    h = t_next - t
    v = model(x, x.new_full((x.shape[0],), t))
    x_euler = x + h * v
    if t_next <= 0:
        return x_euler
    return x_euler + h / 2 * (model(x_euler, x.new_full((x.shape[0],), t_next)) - v)


def sample_heun(model, x_1, ts, progress=False):
    x, i = x_1, 0
    bar = tqdm(total=len(ts) - 1, disable=not progress)
    while i < len(ts) - 1:
        x = heun_step(model, x, ts[i].item(), ts[i + 1].item())
        i += 1
        bar.update()
    return x
""",
    "ex4_solution": """import torch.nn.functional as nnf


def patchify(x, p):
    N, C, H, W = x.shape
    cols = nnf.unfold(x, kernel_size=p, stride=p)                    # (N, C*p*p, L), L row-major
    return cols.reshape(N, C, p * p, -1).permute(0, 3, 2, 1).reshape(N, -1, p * p * C)


def unpatchify(tokens, p, channels, height, width):
    N, L, _ = tokens.shape
    cols = tokens.reshape(N, L, p * p, channels).permute(0, 3, 2, 1).reshape(N, channels * p * p, L)
    return nnf.fold(cols, output_size=(height, width), kernel_size=p, stride=p)
""",
    "ex5_solution": """def modulate(x, shift, scale):
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class AdaLNZeroBlock(nn.Module):
    def __init__(self, dim, attn, mlp):
        super().__init__()
        self.dim = dim
        self.attn = attn
        self.mlp = mlp
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        linear = nn.Linear(dim, 6 * dim)
        with torch.no_grad():
            linear.weight.fill_(0.0)
            linear.bias.fill_(0.0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), linear)

    def forward(self, x, c):
        mod = self.adaLN_modulation(c).unsqueeze(1)                      # (N, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = torch.split(mod, self.dim, dim=-1)
        h = self.norm(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn(h)
        h = self.norm(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)
""",
    "ex6_solution": """def consistency_fn(F, x, t):
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return x - t.view(shape).type_as(x) * F(x, t)


def cd_target(F, teacher, x, t, t_prev):
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    x_hat = x - (t - t_prev).view(shape).type_as(x) * teacher(x, t)
    return consistency_fn(F, x_hat.detach(), t_prev).detach()
""",
}


(test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
 test_correct_alternative_is_accepted) = exercise_tests(run_tests, WRONG, RIGHT, 2 * N_EXERCISES, isolate=True)


def test_every_exercise_has_four_mistakes_and_an_alternative():
    for k in range(1, N_EXERCISES + 1):
        assert len(WRONG[f"ex{k}_solution"]) >= 4 and f"ex{k}_solution" in RIGHT, f"exercise {k}"


def test_notebook_has_parameters_points_progress_and_explorer():
    sources = solution_sources(ASSIGNMENT, NOTEBOOK, MAX_SCORE)
    assert "ipywidgets" in sources["explorer"] and "if not GRADING" in sources["explorer"], "the explorer needs a widget"
    assert "tqdm(" in sources["ex2_solution"] and "tqdm(" in sources["ex3_solution"] and "tqdm(" in sources["plot"]
    for gid, src in sources.items():
        if gid.endswith("_solution"):
            for reference_call in ("sample_euler_fm", "sample_heun_fm", "course_ref.", "diffcourse.flow"):
                assert reference_call not in src, f"{gid} may not call the course's implementation ({reference_call})"


def test_released_notebook_has_stubs_and_no_secrets():
    assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, N_EXERCISES, (
        "permute(0, 2, 4, 3, 5, 1)", "_pkg_cd_loss", "return x + h * 0.5 * (v + v_next)"))



def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, MAX_SCORE, tmp_path)
