"""Chapter 6's graded notebook (solutions/ch06_control/control.ipynb): ControlNet and LoRA.

Each exercise's plausible mistakes are rejected by its graded tests with a message that points at the
mistake, and correct alternatives are accepted; the released copy leaks nothing and is in sync; the
real autograder gives the solution full marks and the released notebook zero (slow).
The cells run in-process through ``tests/nbharness.py``. The mistakes are written as edits of the
solution cell (``variant``): each names the line it changes, so a change to the solution that makes an
edit miss fails here loudly instead of silently testing the solution itself.
"""
from __future__ import annotations

import pytest
import torch

from nbharness import (assert_full_marks_and_zero, assert_release_in_sync,
                       assert_released_has_stubs_and_no_secrets, exercise_runner, exercise_tests, grade_id,
                       load_solution, solution_sources)

ASSIGNMENT, NOTEBOOK = "ch06_control", "control"
SKIP = ("plot", "explorer")
N_EXERCISES, MAX_SCORE = 5, 34

run_tests = exercise_runner(ASSIGNMENT, NOTEBOOK, SKIP, N_EXERCISES)
SOURCES = {grade_id(c): c.source for c in load_solution(ASSIGNMENT, NOTEBOOK).cells if grade_id(c)}


def variant(k: int, *edits: tuple[str, str]) -> str:
    """Exercise k's solution cell with each (old, new) edit applied; every ``old`` must occur in it."""
    src = SOURCES[f"ex{k}_solution"]
    for old, new in edits:
        assert old in src, f"ex{k}_solution no longer contains {old!r}: update this mistake"
        src = src.replace(old, new)
    return src


ZERO_W = "    nn.init.zeros_(conv.weight)                                                # (C_out, C_in, 1, 1)\n"
ZERO_B = "    nn.init.zeros_(conv.bias)                                                  # (C_out,)\n"
FROZEN = "self.block = block.requires_grad_(False)"
COPY = "self.copy = copy.deepcopy(block).requires_grad_(True)"
CB_RETURN = "return self.block(x) + self.zero_out(self.copy(x + self.zero_in(c)))"
INJ_SKIPS = "new_skips = tuple(h + conditioning_scale * r for h, r in zip(skips, down_residuals))"
INJ_RETURN = "return new_skips, mid + conditioning_scale * mid_residual"
SCALING = "self.scaling = self.alpha / r"
DRAW_A = ("a = torch.empty(r, base.in_features, dtype=base.weight.dtype).uniform_(-bound, bound, "
          "generator=generator)")
B_ZERO = "self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype,"
LORA_RETURN = "return self.base(x) + self.scaling * (low @ self.lora_B.t())"
MERGE_W = "merged.weight.copy_(base.weight + layer.scaling * (layer.lora_B @ layer.lora_A))"
UNMERGE_W = "out.weight.copy_(merged.weight - layer.scaling * (layer.lora_B @ layer.lora_A))"
COMBO = "y = y + s * layer.scaling * ((x @ layer.lora_A.t()) @ layer.lora_B.t())"
FUSE = "w = w + s * layer.scaling * (layer.lora_B @ layer.lora_A)"

WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("zero conv with PyTorch's default init", variant(1, (ZERO_W, ""), (ZERO_B, "")), "weight 0"),
        ("3x3 zero conv", variant(1, ("kernel_size=1)", "kernel_size=3, padding=1)")), "1x1"),
        ("bias left at PyTorch's init", variant(1, (ZERO_B, "")), "bias 0"),
        ("the copy is the block itself (shared weights)", variant(1, (COPY, "self.copy = block")), "separate module"),
        ("the copy shares the block's parameters",
         variant(1, (COPY, "self.copy = copy.copy(block)\n        self.copy.requires_grad_(True)")), "deep copy"),
        ("the block is not frozen", variant(1, (FROZEN, "self.block = block")), "frozen"),
        ("the copy is frozen too", variant(1, (COPY, "self.copy = copy.deepcopy(block).requires_grad_(False)")),
         "trainable"),
        ("condition added after the copy",
         variant(1, (CB_RETURN, "return self.block(x) + self.zero_out(self.copy(x) + self.zero_in(c))")),
         "the copy's input"),
        ("copy reads the condition alone",
         variant(1, (CB_RETURN, "return self.block(x) + self.zero_out(self.copy(self.zero_in(c)))")), "x + Z(c)"),
        ("no output zero conv (the copy's output added directly)",
         variant(1, (CB_RETURN, "return self.block(x) + self.copy(x + self.zero_in(c))")), "F(x) exactly"),
        ("the frozen block is dropped", variant(1, (CB_RETURN, "return self.zero_out(self.copy(x + self.zero_in(c)))")),
         "F(x) exactly"),
        ("zero_in from channels, not cond_channels",
         variant(1, ("self.zero_in = zero_conv(cond_channels or channels, channels)",
                     "self.zero_in = zero_conv(channels, channels)")), "cond_channels"),
    ],
    "ex2_solution": [
        ("scale on the U-Net's features", variant(2, (INJ_SKIPS, INJ_SKIPS.replace("h + conditioning_scale * r",
                                                                                   "conditioning_scale * h + r"))),
         "not the U-Net's features"),
        ("mid residual not added", variant(2, (INJ_RETURN, "return new_skips, mid")), "mid residual was not added"),
        ("residuals in reverse order", variant(2, (INJ_SKIPS, INJ_SKIPS.replace("zip(skips, down_residuals)",
                                                                                "zip(skips, down_residuals[::-1])"))),
         "i-th residual"),
        ("skips written in place", variant(2, (INJ_SKIPS, INJ_SKIPS.replace("h + conditioning_scale * r",
                                                                            "h.add_(conditioning_scale * r)"))),
         "in place"),
        ("mid written in place", variant(2, (INJ_RETURN, "mid += conditioning_scale * mid_residual\n"
                                                         "    return new_skips, mid")), "in place"),
        ("scale on the mid residual only", variant(2, (INJ_SKIPS, INJ_SKIPS.replace("h + conditioning_scale * r",
                                                                                    "h + r"))),
         "need the conditioning_scale"),
        ("scale applied twice", variant(2, (INJ_SKIPS, INJ_SKIPS.replace("h + conditioning_scale * r",
                                                                         "h + conditioning_scale ** 2 * r"))),
         "applied once"),
        ("residuals detached", variant(2, (INJ_SKIPS, INJ_SKIPS.replace("conditioning_scale * r", "conditioning_scale"
                                                                        " * r.detach()"))), "gradient"),
    ],
    "ex3_solution": [
        ("B random at init", variant(3, (B_ZERO, "self.lora_B = nn.Parameter(0.1 * torch.randn(base.out_features, r, "
                                                 "dtype=base.weight.dtype,")), "B must start at zero"),
        ("scaling alpha instead of alpha / r", variant(3, (SCALING, "self.scaling = self.alpha")), "not alpha"),
        ("scaling r / alpha", variant(3, (SCALING, "self.scaling = r / self.alpha")), "not r / alpha"),
        ("no scaling in forward", variant(3, (LORA_RETURN, "return self.base(x) + low @ self.lora_B.t()")),
         "alpha / r"),
        ("A zero at init", variant(3, (DRAW_A, "a = torch.zeros(r, base.in_features, dtype=base.weight.dtype)")),
         "A must be random"),
        ("A drawn with randn", variant(3, (DRAW_A, "a = torch.randn(r, base.in_features, generator=generator, "
                                                   "dtype=base.weight.dtype)")), "uniform_"),
        ("base not frozen", variant(3, ("self.base = base.requires_grad_(False)", "self.base = base")), "frozen"),
        ("A and B plain tensors", variant(3, ("self.lora_A = nn.Parameter(a.to(base.weight.device))",
                                              "self.lora_A = a.to(base.weight.device).requires_grad_(True)"),
                                          (B_ZERO, "self.lora_B = (torch.zeros(base.out_features, r, "
                                                   "dtype=base.weight.dtype,"),
                                          ("device=base.weight.device))    # (d_out, r), zero",
                                           "device=base.weight.device)).requires_grad_(True)")), "nn.Parameter"),
        ("the base output dropped", variant(3, (LORA_RETURN, "return self.scaling * (low @ self.lora_B.t())")),
         "at initialisation"),
        ("A and B in float32 for a float64 base",
         variant(3, ("dtype=base.weight.dtype).uniform_(", ").uniform_("),
                 ("zeros(base.out_features, r, dtype=base.weight.dtype,", "zeros(base.out_features, r,")), "dtype"),
    ],
    "ex4_solution": [
        ("merge forgets alpha / r", variant(4, (MERGE_W, MERGE_W.replace("layer.scaling * ", ""))),
         "merge forgets the scale"),
        ("merge writes into the base weight",
         variant(4, (MERGE_W, "base.weight.add_(layer.scaling * (layer.lora_B @ layer.lora_A))\n"
                              "        merged.weight.copy_(base.weight)")), "in place"),
        ("merge returns the base layer, updated", variant(4, ("    return merged\n",
                                                              "    base.weight.data = merged.weight.data\n"
                                                              "    return base\n")), "in place"),
        ("merge drops the bias", variant(4, ("bias=base.bias is not None,\n                       dtype",
                                             "bias=False,\n                       dtype"),
                                         ("        if base.bias is not None:\n            merged.bias.copy_(base.bias)\n",
                                          "")), "bias"),
        ("merge with (B A) transposed", variant(4, (MERGE_W, MERGE_W.replace("(layer.lora_B @ layer.lora_A)",
                                                                            "(layer.lora_A.t() @ layer.lora_B.t())"))),
         "(d_out, d_in)"),
        ("unmerge adds the update", variant(4, (UNMERGE_W, UNMERGE_W.replace("merged.weight - ", "merged.weight + "))),
         "subtracts the update"),
        ("unmerge forgets alpha / r", variant(4, (UNMERGE_W, UNMERGE_W.replace("layer.scaling * ", ""))),
         "unmerge forgets the scale"),
        ("unmerge by re-initialisation", variant(4, (UNMERGE_W, "pass")), "re-initialisation"),
        ("unmerge returns a copy of the base", variant(4, ("    return out\n", "    return copy.deepcopy(layer.base)\n")),
         "not a reload"),
        ("unmerge writes into the merged layer",
         variant(4, (UNMERGE_W, "merged.weight.sub_(layer.scaling * (layer.lora_B @ layer.lora_A))\n"
                                "        out.weight.copy_(merged.weight)")), "in place"),
    ],
    "ex5_solution": [
        ("scale replaces alpha / r", variant(5, (COMBO, COMBO.replace("s * layer.scaling *", "s *"))),
         "does not replace it"),
        ("the first LoRA's alpha / r for all", variant(5, (COMBO, COMBO.replace("layer.scaling", "loras[0].scaling"))),
         "its own"),
        ("scales normalised to sum 1",
         variant(5, ("    y = base(x)  ", "    scales = [s / sum(scales) for s in scales]\n    y = base(x)  ")),
         "do not normalise"),
        ("the last LoRA only", variant(5, (COMBO, COMBO.replace("y = y + s", "y = base(x) + s"))), "weighted sum"),
        ("scale applied twice", variant(5, (COMBO, COMBO.replace("s * layer", "s * s * layer"))), "apply s_k once"),
        ("the base output scaled too",
         variant(5, ("    y = base(x)  ", "    y = sum(scales) * base(x)  ")), "is not scaled"),
        ("fused_weight writes into base.weight",
         variant(5, (FUSE, "w += s * layer.scaling * (layer.lora_B @ layer.lora_A)"),
                 ("    w = base.weight  ", "    w = base.weight.detach()  ")), "in place"),
        ("fused_weight forgets the scales", variant(5, (FUSE, FUSE.replace("s * layer.scaling", "layer.scaling"))),
         "forgets the scales"),
        ("lora_combination detached from A and B",
         variant(5, (COMBO, COMBO.replace("layer.lora_A.t()", "layer.lora_A.detach().t()"))), "gradient"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    "ex1_solution": """import copy as _copy


def zero_conv(channels_in, channels_out=None):
    conv = nn.Conv2d(channels_in, channels_in if channels_out is None else channels_out, 1)
    with torch.no_grad():
        conv.weight.fill_(0.0)
        conv.bias.zero_()
    return conv


class ControlledBlock(nn.Module):
    def __init__(self, block, channels, cond_channels=None):
        super().__init__()
        for p in block.parameters():
            p.requires_grad = False
        self.block = block
        self.copy = _copy.deepcopy(block)
        for p in self.copy.parameters():
            p.requires_grad = True
        self.zero_in = zero_conv(channels if cond_channels is None else cond_channels, channels)
        self.zero_out = zero_conv(channels, channels)

    def forward(self, x, c):
        h = x + self.zero_in(c)
        return self.zero_out(self.copy(h)) + self.block(x)
""",
    "ex2_solution": """def inject_residuals(skips, mid, down_residuals, mid_residual, conditioning_scale=1.0):
    out = []
    for i in range(len(skips)):
        out.append(torch.add(skips[i], down_residuals[i], alpha=conditioning_scale))
    return tuple(out), torch.add(mid, mid_residual, alpha=conditioning_scale)
""",
    "ex3_solution": """import torch.nn.functional as nnf


class LoRALinear(nn.Module):
    def __init__(self, base, r=4, alpha=None, generator=None):
        super().__init__()
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.base, self.r = base, r
        self.alpha = r if alpha is None else alpha
        self.scaling = self.alpha / self.r
        d_in, d_out = base.in_features, base.out_features
        w = base.weight
        self.lora_A = nn.Parameter(torch.rand(r, d_in, generator=generator, dtype=w.dtype).mul(2).sub(1)
                                   .div(math.sqrt(d_in)).to(w.device))
        self.lora_B = nn.Parameter(w.new_zeros(d_out, r))

    def forward(self, x):
        return self.base(x) + nnf.linear(nnf.linear(x, self.lora_A), self.lora_B) * self.scaling
""",
    "ex4_solution": """def merge(layer):
    merged = copy.deepcopy(layer.base)
    with torch.no_grad():
        merged.weight += layer.scaling * layer.lora_B @ layer.lora_A
    return merged


def unmerge(merged, layer):
    out = copy.deepcopy(merged)
    with torch.no_grad():
        out.weight -= layer.scaling * layer.lora_B @ layer.lora_A
    return out
""",
    "ex5_solution": """def lora_combination(x, base, loras, scales):
    updates = [s * l.scaling * torch.nn.functional.linear(torch.nn.functional.linear(x, l.lora_A), l.lora_B)
               for l, s in zip(loras, scales)]
    return base(x) + sum(updates) if updates else base(x)


def fused_weight(base, loras, scales):
    delta = torch.zeros_like(base.weight)
    for l, s in zip(loras, scales):
        delta = delta + (s * l.scaling) * torch.einsum("or,ri->oi", l.lora_B, l.lora_A)
    return base.weight + delta
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
    assert "fused_weight(" in sources["explorer"], "the explorer runs the student's fused_weight"
    assert "tqdm(" in sources["plot"] and "progress=True" in sources["explorer"], "long work shows a progress bar"
    assert "if not GRADING" in sources["plot"]
    for gid, src in sources.items():
        if gid.endswith("_solution"):
            for reference_call in ("course_ref.", "diffcourse.control", "control_refs", "peft", "diffusers"):
                assert reference_call not in src, f"{gid} may not call the course's implementation ({reference_call})"


def test_released_notebook_has_stubs_and_no_secrets():
    assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, N_EXERCISES, (
        "copy.deepcopy(block).requires_grad_(True)", "_ControlNetModel", "_LoraConfig",
        "mid + conditioning_scale * mid_residual", "merged.weight - layer.scaling"))


def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, MAX_SCORE, tmp_path)


def _tiny_unet_and_controlnet():
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4).eval()
    return unet, ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8)).eval()


@torch.no_grad()
def test_reference_versions_agree_with_diffusers_and_peft():
    """diffcourse.control_refs on its own: zero convolutions like ControlNetModel's, the written-out U-Net pass
    with eq. 6.5 equal to diffusers' residual arguments, the LoRA layer, merge/unmerge and eq. 6.4 equal to peft."""
    import copy
    import warnings

    from peft import LoraConfig, inject_adapter_in_model
    from torch import nn

    from diffcourse import control_refs as ref

    torch.set_num_threads(1)
    unet, cn = _tiny_unet_and_controlnet()
    for theirs in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
        mine = ref.zero_conv(theirs.in_channels)
        assert mine.kernel_size == theirs.kernel_size and torch.equal(mine.weight, theirs.weight)
        assert torch.equal(mine.bias, theirs.bias) and float(mine.weight.abs().sum()) == 0
    g = torch.Generator().manual_seed(1)
    block = ref.ControlledBlock(nn.Conv2d(3, 3, 3, padding=1), 3, cond_channels=1)
    x, c = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 1, 5, 5, generator=g)
    assert torch.equal(block(x, c), block.block(x)), "eq. 6.1 at initialisation is the block itself"
    z, ctx, y = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 8, generator=g), torch.rand(2, 3, 16, 16,
                                                                                                    generator=g)
    t = torch.tensor([5, 600])
    assert (ref.unet_with_injection(unet, z, t, ctx, *cn(z, t, encoder_hidden_states=ctx, controlnet_cond=y,
                                                        return_dict=False)) - unet(z, t, ctx).sample).abs().max() == 0
    for p in cn.parameters():                                                  # "trained" zero convolutions
        if float(p.abs().sum()) == 0:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    d1, m1 = cn(z, t, encoder_hidden_states=ctx, controlnet_cond=y, return_dict=False)
    d, m = cn(z, t, encoder_hidden_states=ctx, controlnet_cond=y, conditioning_scale=0.4, return_dict=False)
    want = unet(z, t, ctx, down_block_additional_residuals=d, mid_block_additional_residual=m).sample
    assert (ref.unet_with_injection(unet, z, t, ctx, d1, m1, 0.4) - want).abs().max() < 1e-5
    assert (want - unet(z, t, ctx).sample).abs().max() > 1e-3, "the residuals must change the output"

    torch.manual_seed(2)
    base = nn.Linear(12, 10)
    loras = [ref.LoRALinear(copy.deepcopy(base), r=r, alpha=a, generator=torch.Generator().manual_seed(r))
             for r, a in [(3, 6.0), (2, 5.0)]]
    for layer in loras:
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
    model = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=6.0, target_modules=["to_q"]),
                                    nn.ModuleDict({"to_q": copy.deepcopy(base)}), adapter_name="a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=5.0, target_modules=["to_q"]), model,
                                        adapter_name="b")
    layer = model.to_q
    layer.base_layer.load_state_dict(base.state_dict())
    for name, mine in zip("ab", loras):
        layer.lora_A[name].weight.copy_(mine.lora_A)
        layer.lora_B[name].weight.copy_(mine.lora_B)
    xs = torch.randn(4, 5, 12, generator=g)
    layer.set_adapter(["a"])
    assert (layer(xs) - loras[0](xs)).abs().max() < 1e-6
    assert (ref.merge(loras[0])(xs) - loras[0](xs)).abs().max() < 1e-5
    assert (ref.unmerge(ref.merge(loras[0]), loras[0]).weight - base.weight).abs().max() < 1e-6
    layer.set_adapter(["a", "b"])
    layer.set_scale("a", 0.3)
    layer.set_scale("b", -1.2)
    assert (ref.lora_combination(xs, base, loras, [0.3, -1.2]) - layer(xs)).abs().max() < 1e-5
    layer.merge(adapter_names=["a", "b"])
    assert (ref.fused_weight(base, loras, [0.3, -1.2]) - layer.base_layer.weight).abs().max() < 1e-5
