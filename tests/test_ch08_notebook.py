"""Chapter 8's graded notebook (solutions/ch08_video/video.ipynb): video diffusion.

Each exercise's plausible mistakes are rejected by its graded tests with a message that points at the
mistake, and correct alternatives are accepted; the released copy leaks nothing and is in sync; the
real autograder gives the solution full marks and the released notebook zero (slow).
The cells run in-process through ``tests/nbharness.py``. The mistakes are written as edits of the
solution cell (``variant``): each names the line it changes, so a change to the solution that makes an
edit miss fails here loudly instead of silently testing the solution itself.
"""
from __future__ import annotations

import ast

import pytest
import torch

from nbharness import (assert_full_marks_and_zero, assert_release_in_sync,
                       assert_released_has_stubs_and_no_secrets, solution_sources, exercise_runner,
                       exercise_tests, grade_id, load_solution)

ASSIGNMENT, NOTEBOOK = "ch08_video", "video"
SKIP = ("explorer", "plot")
N_EXERCISES, MAX_SCORE = 5, 35

run_tests = exercise_runner(ASSIGNMENT, NOTEBOOK, SKIP, N_EXERCISES)
SOURCES = {grade_id(c): c.source for c in load_solution(ASSIGNMENT, NOTEBOOK).cells if grade_id(c)}


def variant(k: int, *edits: tuple[str, str]) -> str:
    """Exercise k's solution cell with each (old, new) edit applied; every ``old`` must occur in it."""
    src = SOURCES[f"ex{k}_solution"]
    for old, new in edits:
        assert old in src, f"ex{k}_solution no longer contains {old!r}: update this mistake"
        src = src.replace(old, new)
    return src


SPATIAL = "x.permute(0, 2, 3, 4, 1).reshape(B * F, H * W, C)"
TEMPORAL = "x.permute(0, 3, 4, 2, 1).reshape(B * H * W, F, C)"
FROM_SPATIAL = "tokens.reshape(BF // num_frames, num_frames, height, width, C)"
FROM_TEMPORAL = "tokens.reshape(BHW // (height * width), height, width, F, C)"
PE_STACK = "torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(num_frames, dim)"
PE_FREQS = "10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)"
Z = "z = norm(tokens) + frame_position_embedding(num_frames, C).to(tokens)"
OUT = "out = tokens + proj(merge_heads(attention(q, k, v)))"
ZERO = ("        nn.init.zeros_(self.proj.weight)                                     # W_o = 0: out_f = h_f (eq. 8.4)\n"
        "        nn.init.zeros_(self.proj.bias)\n")
INFLATE = "h = spatial(frames_to_batch(x))"
PATCH_PERMUTE = "permute(0, 2, 4, 6, 3, 5, 7, 1)"
UNPATCH = "tokens.reshape(B, f, h, w, pt, p, p, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)"
COUNT = "return math.ceil(f_lat / pt) * (h_lat // p) * (w_lat // p)"
MASK = "return ((clip + 1) / 2).amax(dim=1) > threshold"
CENTROID = "torch.stack([(w * ys).sum(dim=(1, 2)) / count, (w * xs).sum(dim=(1, 2)) / count], dim=1)"
COLOUR_STD = "colours.std(dim=0, unbiased=False).mean()"
JERK = "(mu[2:] - 2 * mu[1:-1] + mu[:-2]).norm(dim=1).mean()"
AREA_CV = "area.std(unbiased=False) / area.mean()"

WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("spatial: a plain reshape", variant(1, (SPATIAL, "x.reshape(B * F, H * W, C)")), "plain reshape"),
        ("spatial: channels first", variant(1, (SPATIAL, "x.permute(0, 2, 1, 3, 4).reshape(B * F, H * W, C)")),
         "channels last"),
        ("spatial: column-major tokens", variant(1, (SPATIAL, "x.permute(0, 2, 4, 3, 1).reshape(B * F, H * W, C)")),
         "row-major"),
        ("spatial: frame-major sequences", variant(1, (SPATIAL, "x.permute(2, 0, 3, 4, 1).reshape(B * F, H * W, C)")),
         "clip-major"),
        ("temporal: channels and frames swapped",
         variant(1, (TEMPORAL, "x.permute(0, 3, 4, 1, 2).reshape(B * H * W, F, C)")), "channels last"),
        ("temporal: column-major positions", variant(1, (TEMPORAL, "x.permute(0, 4, 3, 2, 1).reshape(B * H * W, F, C)")),
         "row-major"),
        ("temporal: pixel-major sequences", variant(1, (TEMPORAL, "x.permute(3, 4, 0, 2, 1).reshape(B * H * W, F, C)")),
         "clip-major"),
        ("from_spatial_tokens with height and width swapped",
         variant(1, (FROM_SPATIAL, FROM_SPATIAL.replace("height, width", "width, height")),
                 ("return x.permute(0, 4, 1, 2, 3)", "return x.permute(0, 4, 1, 3, 2)")), "height and width are swapped"),
        ("from_temporal_tokens as a plain reshape",
         variant(1, (FROM_TEMPORAL, "tokens.reshape(BHW // (height * width), C, F, height, width)"),
                 ("return x.permute(0, 4, 3, 1, 2)", "return x")), "plain reshape"),
        ("from_temporal_tokens with height and width swapped",
         variant(1, (FROM_TEMPORAL, FROM_TEMPORAL.replace("height, width, F", "width, height, F")),
                 ("return x.permute(0, 4, 3, 1, 2)", "return x.permute(0, 4, 3, 2, 1)")), "height and width are swapped"),
        ("to_temporal_tokens through numpy (no gradient)",
         variant(1, (f"return {TEMPORAL}", "return torch.from_numpy(x.detach().numpy().transpose(0, 3, 4, 2, 1)"
                                            ".reshape(B * H * W, F, C))")),
         "gradient"),
    ],
    "ex2_solution": [
        ("sin and cos in two blocks", variant(2, (PE_STACK, "torch.cat([angles.sin(), angles.cos()], dim=-1)")),
         "interleave"),
        ("cos and sin swapped", variant(2, (PE_STACK, PE_STACK.replace("angles.sin(), angles.cos()", "angles.cos(), angles.sin()"))),
         "swapped"),
        ("exponent i/dim instead of 2i/dim",
         variant(2, (PE_FREQS, "10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / dim)")), "2i/dim"),
        ("float64 position code", variant(2, (PE_STACK + ".float()", PE_STACK)), "float32"),
        ("no position code", variant(2, (Z, "z = norm(tokens)")), "position code"),
        ("LayerNorm after adding P", variant(2, (Z, "z = norm(tokens + frame_position_embedding(num_frames, C).to(tokens))")),
         "normalise first"),
        ("no residual", variant(2, (OUT, "out = proj(merge_heads(attention(q, k, v)))")), "residual is missing"),
        ("residual of z", variant(2, (OUT, "out = z + proj(merge_heads(attention(q, k, v)))")), "un-normalised"),
        ("heads ignored", variant(2, ("split_heads(a, heads)", "split_heads(a, 1)")), "heads"),
        ("attention over the pixels of a frame",
         variant(2, ("tokens = to_temporal_tokens(batch_to_frames(h, num_frames))",
                     "tokens = to_spatial_tokens(batch_to_frames(h, num_frames))"),
                 (Z, "z = norm(tokens)"),
                 ("return frames_to_batch(from_temporal_tokens(out, H, W))",
                  "return frames_to_batch(from_spatial_tokens(out, num_frames, H, W))")), "pixel"),
    ],
    "ex3_solution": [
        ("PyTorch's default init of proj", variant(3, (ZERO, "")), "PyTorch's default initialisation"),
        ("proj's bias left random", variant(3, ("        nn.init.zeros_(self.proj.bias)\n", "")), "bias"),
        ("qkv zeroed instead of proj",
         variant(3, (ZERO, "        nn.init.zeros_(self.qkv.weight)\n        nn.init.zeros_(self.qkv.bias)\n")),
         "zeroed qkv instead"),
        ("LayerNorm zeroed instead of proj",
         variant(3, (ZERO, "        nn.init.zeros_(self.norm.weight)\n        nn.init.zeros_(self.norm.bias)\n")),
         "zeroed the LayerNorm"),
        ("qkv zeroed as well", variant(3, (ZERO, ZERO + "        nn.init.zeros_(self.qkv.weight)\n")), "qkv should keep"),
        ("heads not used in forward", variant(3, ("self.proj, self.heads)", "self.proj)")), "heads"),
        ("frames by a plain reshape", variant(3, (INFLATE, "h = spatial(x.reshape(-1, *x.shape[1:2], *x.shape[3:]))")),
         "plain reshape"),
        ("temporal layer skipped", variant(3, ("return batch_to_frames(temporal(h, F), F)", "return batch_to_frames(h, F)")),
         "temporal layer is missing"),
        ("temporal layer before the spatial one",
         variant(3, (INFLATE, "h = temporal(frames_to_batch(x), F)"),
                 ("return batch_to_frames(temporal(h, F), F)", "return batch_to_frames(spatial(h), F)")), "spatial layer first"),
        ("num_frames = the batch size", variant(3, ("return batch_to_frames(temporal(h, F), F)",
                                                    "return batch_to_frames(temporal(h, x.shape[0]), F)")), "num_frames"),
        ("output reshaped to x's frame size",
         variant(3, ("return batch_to_frames(temporal(h, F), F)",
                     "B, C, F, H, W = x.shape\n    return temporal(h, F).reshape(B, F, -1, H, W).transpose(1, 2)")),
         "spatial layer may change"),
    ],
    "ex4_solution": [
        ("space-major tokens", variant(4, (PATCH_PERMUTE, "permute(0, 4, 6, 2, 3, 5, 7, 1)")), "frame-major"),
        ("channel-first values", variant(4, (PATCH_PERMUTE, "permute(0, 2, 4, 6, 1, 3, 5, 7)")), "channel last"),
        ("(p, p, pt) inside a token", variant(4, (PATCH_PERMUTE, "permute(0, 2, 4, 6, 5, 7, 3, 1)")), "(pt, p, p, C)"),
        ("a plain reshape", variant(4, ("x = x.reshape(B, C, f, pt, h, p, w, p).permute(0, 2, 4, 6, 3, 5, 7, 1)", "")),
         "plain reshape"),
        ("unpatchify with height and width swapped",
         variant(4, (UNPATCH, UNPATCH.replace("f, h, w, pt", "f, w, h, pt"))),
         "non-square"),
        ("a non-causal VAE", variant(4, ("f_lat = 1 + (frames - 1) // ct", "f_lat = frames // ct")), "causal"),
        ("no padding of the latent frames", variant(4, (COUNT, "return (f_lat // pt) * (h_lat // p) * (w_lat // p)")),
         "pad"),
        ("patches cut from the pixels", variant(4, (COUNT, "return math.ceil(frames / pt) * (height // p) * (width // p)")),
         "compress first"),
        ("a float count", variant(4, (COUNT, "return f_lat / pt * (h_lat // p) * (w_lat // p)")), "int"),
    ],
    "ex5_solution": [
        ("mask from the mean of the channels", variant(5, (MASK, "return ((clip + 1) / 2).mean(dim=1) > threshold")),
         "not the mean"),
        ("mask from the raw [-1, 1] values", variant(5, (MASK, "return clip.amax(dim=1) > threshold")), "(x + 1) / 2"),
        ("threshold fixed at 0.5", variant(5, (MASK, MASK.replace("> threshold", "> 0.5"))), "threshold"),
        ("centroid as (x, y)", variant(5, (CENTROID, "torch.stack([(w * xs).sum(dim=(1, 2)) / count, "
                                                     "(w * ys).sum(dim=(1, 2)) / count], dim=1)")), "(y, x)"),
        ("empty mask gives 0, not NaN", variant(5, ("/ count,", "/ count.clamp(min=1),"), ("/ count]", "/ count.clamp(min=1)]")),
         "NaN"),
        ("unbiased std", variant(5, (COLOUR_STD, "colours.std(dim=0).mean()"), (AREA_CV, "area.std() / area.mean()")),
         "population std"),
        ("colours in [-1, 1]", variant(5, ("colours = (((clip[present] + 1) / 2) * m)", "colours = ((clip[present]) * m)")),
         "(x + 1) / 2"),
        ("jerk from the first difference", variant(5, (JERK, "(mu[1:] - mu[:-1]).norm(dim=1).mean()")), "second difference"),
        ("area std not divided by the mean", variant(5, (AREA_CV, "area.std(unbiased=False)")), "divides"),
        ("empty frames kept", variant(5, ("present = masks.flatten(1).any(dim=1)",
                                          "present = torch.ones(len(masks), dtype=torch.bool)")), "left out"),
        ("a tensor instead of a float", variant(5, ("\"jerk\": float(", "\"jerk\": (")), "Python float"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    "ex1_solution": """def to_spatial_tokens(x):
    return x.movedim(1, -1).flatten(2, 3).flatten(0, 1)          # (B, F, H, W, C) -> (B*F, H*W, C)


def from_spatial_tokens(tokens, num_frames, height, width):
    return tokens.unflatten(1, (height, width)).unflatten(0, (-1, num_frames)).movedim(-1, 1)


def to_temporal_tokens(x):
    return x.movedim(1, -1).movedim(1, -2).flatten(0, 2)          # (B, H, W, F, C) -> (B*H*W, F, C)


def from_temporal_tokens(tokens, height, width):
    return tokens.unflatten(0, (-1, height, width)).movedim(-1, 1).movedim(-1, 2)
""",
    "ex2_solution": """def frame_position_embedding(num_frames, dim):
    P = torch.zeros(num_frames, dim)
    pos = torch.arange(num_frames, dtype=torch.float64).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    P[:, 0::2] = torch.sin(pos * div).float()
    P[:, 1::2] = torch.cos(pos * div).float()
    return P


def temporal_attention(h, num_frames, norm, qkv, proj, heads=1):
    BF, C, H, W = h.shape
    tokens = to_temporal_tokens(batch_to_frames(h, num_frames))
    z = norm(tokens) + frame_position_embedding(num_frames, C).to(dtype=h.dtype, device=h.device)
    q, k, v = torch.split(qkv(z), C, dim=-1)
    N, F, _ = q.shape
    q, k, v = (a.reshape(N, F, heads, C // heads).transpose(1, 2) for a in (q, k, v))
    att = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    att = att.transpose(1, 2).reshape(N, F, C)
    return frames_to_batch(from_temporal_tokens(proj(att) + tokens, H, W))
""",
    "ex3_solution": """class TemporalLayer(nn.Module):
    def __init__(self, channels, heads=1):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        with torch.no_grad():
            self.proj.weight.mul_(0)
            self.proj.bias.fill_(0.0)

    def forward(self, x, num_frames):
        return temporal_attention(x, num_frames, self.norm, self.qkv, self.proj, heads=self.heads)


def inflated_block(spatial, temporal, x):
    B, C, F, H, W = x.shape
    frames = x.transpose(1, 2).flatten(0, 1)                          # (B*F, C, H, W)
    h = temporal(spatial(frames), num_frames=F)
    return h.unflatten(0, (B, F)).transpose(1, 2)
""",
    "ex4_solution": """def spacetime_patchify(x, pt, p):
    B, C, F, H, W = x.shape
    tokens = []
    for i in range(F // pt):
        for j in range(H // p):
            for k in range(W // p):
                cube = x[:, :, i * pt:(i + 1) * pt, j * p:(j + 1) * p, k * p:(k + 1) * p]    # (B, C, pt, p, p)
                tokens.append(cube.permute(0, 2, 3, 4, 1).reshape(B, -1))
    return torch.stack(tokens, dim=1)


def spacetime_unpatchify(tokens, pt, p, channels, frames, height, width):
    B = tokens.shape[0]
    out = tokens.new_zeros(B, channels, frames, height, width)
    n = 0
    for i in range(frames // pt):
        for j in range(height // p):
            for k in range(width // p):
                cube = tokens[:, n].reshape(B, pt, p, p, channels).permute(0, 4, 1, 2, 3)
                out[:, :, i * pt:(i + 1) * pt, j * p:(j + 1) * p, k * p:(k + 1) * p] = cube
                n += 1
    return out


def token_count(frames, height, width, ct=4, cs=8, pt=1, p=2):
    f_lat = (frames - 1) // ct + 1
    return -(-f_lat // pt) * (height // (cs * p)) * (width // (cs * p))
""",
    "ex5_solution": """def object_masks(clip, threshold=0.5):
    return clip.max(dim=1).values > 2 * threshold - 1


def centroids(masks):
    F, H, W = masks.shape
    out = torch.full((F, 2), float("nan"))
    for f in range(F):
        idx = masks[f].nonzero().double()                            # (n, 2) as (row, column)
        if len(idx):
            out[f] = idx.mean(dim=0).float()
    return out


def consistency_scores(clip, threshold=0.5):
    import numpy as np
    masks = object_masks(clip, threshold)
    cols, mus, areas = [], [], []
    for f in range(len(clip)):
        m = masks[f]
        if m.any():
            cols.append(((clip[f][:, m] + 1) / 2).double().mean(dim=1).numpy())
            mus.append(centroids(m[None])[0].double().numpy())
            areas.append(float(m.sum()))
    if len(mus) < 3:
        return dict(colour_std=float("nan"), jerk=float("nan"), area_cv=float("nan"))
    cols, mus, areas = np.array(cols), np.array(mus), np.array(areas)
    jerk = np.linalg.norm(np.diff(mus, n=2, axis=0), axis=1).mean()
    return dict(colour_std=float(cols.std(axis=0).mean()), jerk=float(jerk), area_cv=float(areas.std() / areas.mean()))
""",
}


(test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
 test_correct_alternative_is_accepted) = exercise_tests(run_tests, WRONG, RIGHT, 2 * N_EXERCISES, isolate=True)


def test_solution_passes_with_a_second_seed():
    """The autograder may inject another SEED (``--seed``): the tests' data follow it and the solution still passes."""
    results = run_tests({"parameters": SOURCES["parameters"] + "\nSEED = 1"})
    failed = {k: v for k, v in results.items() if v}
    assert len(results) == 2 * N_EXERCISES and not failed, f"with SEED = 1: {failed}"


def test_every_exercise_has_four_mistakes_and_an_alternative():
    for k in range(1, N_EXERCISES + 1):
        assert len(WRONG[f"ex{k}_solution"]) >= 4 and f"ex{k}_solution" in RIGHT, f"exercise {k}"


def test_notebook_has_parameters_points_progress_and_explorer():
    sources = solution_sources(ASSIGNMENT, NOTEBOOK, MAX_SCORE)
    assert "ipywidgets" in sources["explorer"] and "if not GRADING" in sources["explorer"], "the explorer needs a widget"
    assert "if not GRADING" in sources["plot"] and "tqdm(" in sources["plot"] and 'zoo.load("shapes_video"' in sources["plot"]
    for gid, src in sources.items():
        if gid.endswith("_solution"):
            for reference_call in ("course_ref.", "diffcourse.video", "TemporalAttention("):
                assert reference_call not in src, f"{gid} may not call the course's implementation ({reference_call})"


def test_the_hidden_tests_copy_of_diffusers_temporal_reshape_is_diffusers_own():
    """Exercise 1's hidden test compares with two functions copied from diffusers' AnimateDiffTransformer3D.forward
    (importing diffusers in the graded notebook would cost seconds of grading); they must be what diffusers does."""
    from torch import nn
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    hidden = SOURCES["test_ex1_hidden"]
    ns: dict = {"torch": torch}
    for node in ast.parse(hidden).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("_diffusers_"):
            exec(compile(ast.Module([node], []), "<hidden>", "exec"), ns)
    assert {"_diffusers_to_temporal", "_diffusers_from_temporal"} <= set(ns)

    class Tap(nn.Module):
        def __init__(self, replace=None):
            super().__init__()
            self.seen, self.replace = None, replace

        def forward(self, input):
            self.seen = input.detach().clone()
            return input if self.replace is None else self.replace

    g = torch.Generator().manual_seed(0)
    B, C, F, H, W = 2, 5, 3, 3, 4
    motion = AnimateDiffTransformer3D(num_attention_heads=1, attention_head_dim=C, in_channels=C, norm_num_groups=1,
                                      num_layers=0)
    new = torch.randn(B * H * W, F, C, generator=g)
    motion.norm, motion.proj_in, motion.proj_out = nn.Identity(), Tap(), Tap(replace=new)
    h = torch.randn(B * F, C, H, W, generator=g)
    with torch.no_grad():
        out = motion(h, num_frames=F)
    assert torch.equal(ns["_diffusers_to_temporal"](h, F), motion.proj_in.seen)
    torch.testing.assert_close(ns["_diffusers_from_temporal"](new, B * F, F, C, H, W), out - h, atol=1e-6, rtol=0)


def test_released_notebook_has_stubs_and_no_secrets():
    assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, N_EXERCISES, (
        "permute(0, 2, 4, 6, 3, 5, 7, 1)", "_diffusers_to_temporal", "nn.init.zeros_(self.proj.weight)",
        "colours.std(dim=0, unbiased=False)"))


def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, MAX_SCORE, tmp_path)
