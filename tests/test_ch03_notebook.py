"""Chapter 3's graded notebook (solutions/ch03_unet/unet.ipynb): the U-Net, part by part.

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

ASSIGNMENT, NOTEBOOK = "ch03_unet", "unet"
SKIP = ("explorer", "plot_gallery", "plot_shapes")
N_EXERCISES, MAX_SCORE = 6, 37


run_tests = exercise_runner(ASSIGNMENT, NOTEBOOK, SKIP, N_EXERCISES)


# ------------------------------------------------------------------------------------ exercise 1
def embedding_variant(freqs="max_period ** (-torch.arange(h, dtype=torch.float64) / h)", t="t.double()",
                      join="torch.cat([a.cos(), a.sin()], dim=1)"):
    return f"""def time_embedding(t, dim, max_period=10000.0):
    h = dim // 2
    a = {t}[:, None] * ({freqs})[None, :]
    return ({join}).float()
"""


# ------------------------------------------------------------------------------------ exercise 2
def resblock_variant(skip="nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()",
                     norm="nn.GroupNorm(groups, {c})", shift="self.time_proj(F.silu(temb))[:, :, None, None]",
                     shift_after=False, out="self.skip(x) + h"):
    between, after = ("", f"        h = h + {shift}\n") if shift_after else (f"        h = h + {shift}\n", "")
    return f"""class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, temb_dim, groups):
        super().__init__()
        self.norm1 = {norm.format(c="c_in")}
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, c_out)
        self.norm2 = {norm.format(c="c_out")}
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = {skip}

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
{between}        h = self.conv2(F.silu(self.norm2(h)))
{after}        return {out}
"""


# ------------------------------------------------------------------------------------ exercise 3
def attention_variant(scale="q.shape[-1] ** -0.5", softmax_dim="-1", kt="k.transpose(-2, -1)"):
    return f"""def attention(q, k, v, return_weights=False):
    w = torch.softmax(q @ {kt} * ({scale}), dim={softmax_dim})
    out = w @ v
    return (out, w) if return_weights else out
"""


# ------------------------------------------------------------------------------------ exercise 4
CROSS_INIT = """class CrossAttention(nn.Module):
    def __init__(self, channels, context_dim, groups, heads=1):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_dim, channels, bias=False)
        self.to_v = nn.Linear(context_dim, channels, bias=False)
        self.proj = nn.Linear(channels, channels)

"""


def cross_variant(flatten="self.norm(x).reshape(N, C, H * W).transpose(1, 2)", k_src="context", v_src="context",
                  split="a.reshape(a.shape[0], a.shape[1], self.heads, d).transpose(1, 2)",
                  merge="o.transpose(1, 2).reshape(N, H * W, C)",
                  back="u.transpose(1, 2).reshape(N, C, H, W)", ret="x + back"):
    return CROSS_INIT + f"""    def forward(self, x, context):
        N, C, H, W = x.shape
        d = C // self.heads
        split = lambda a: {split}
        tokens = {flatten}
        q, k, v = split(self.to_q(tokens)), split(self.to_k({k_src})), split(self.to_v({v_src}))
        o = F.scaled_dot_product_attention(q, k, v)
        u = self.proj({merge})
        back = {back}
        return {ret}
"""


# ------------------------------------------------------------------------------------ exercise 5
def shapes_variant(down_last=False, concat=True, up_order="reversed(range(L))"):
    cond = "True" if down_last else "i < L - 1"
    add = "c_below + c_i" if concat else "c_below"
    return f"""def unet_shapes(config, n=1):
    L, s = len(config.channels), config.sample_size
    skips = []
    for i, c in enumerate(config.channels):
        skips.append((n, c, s, s))
        if {cond}:
            s //= 2
    mid = (n, config.channels[-1], s, s)
    up_in, c_below = [], config.channels[-1]
    for i in {up_order}:
        c_i, s_i = config.channels[i], skips[i][2]
        up_in.append((n, {add}, s_i, s_i))
        c_below = c_i
    return {{"skips": skips, "mid": mid, "up_in": up_in,
            "out": (n, config.out_channels, config.sample_size, config.sample_size)}}
"""


def forward_variant(embed="e = unet.time(t) + unet.class_emb(y)", pop="skips.pop()", cat="[h, s]"):
    return f"""def unet_forward(unet, x_t, t, class_labels=None):
    y = class_labels if class_labels is not None else torch.full_like(t, unet.config.num_classes)
    {embed}
    h, skips = unet.conv_in(x_t), []
    for blocks, down in zip(unet.down_blocks, unet.downsamplers):
        for b in blocks:
            h = b(h, e)
        skips.append(h)
        h = down(h)
    h = unet.mid2(unet.mid_attn(unet.mid1(h, e)), e)
    for blocks, up in zip(unet.up_blocks, unet.upsamplers):
        s = {pop}
        h = torch.cat({cat}, dim=1)
        for b in blocks:
            h = b(h, e)
        h = up(h)
    return unet.conv_out(F.silu(unet.norm_out(h)))
"""


GOOD_SHAPES, GOOD_FORWARD = shapes_variant(), forward_variant()


# ------------------------------------------------------------------------------------ exercise 6
def sampling_variant(call="unet(x_t, t, class_labels=labels)", steps="num_steps"):
    return f"""from diffcourse.samplers import sample_ddim


def sample_digits(unet, schedule, labels, num_steps=20, generator=None):
    dev = next(unet.parameters()).device
    labels = labels.to(dev)
    model = lambda x_t, t: {call}
    c = unet.config
    return sample_ddim(model, (len(labels), c.in_channels, c.sample_size, c.sample_size), schedule,
                       num_steps={steps}, generator=generator, device=dev)
"""


WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("sines first", embedding_variant(join="torch.cat([a.sin(), a.cos()], dim=1)"), "sines come first"),
        ("interleaved cos/sin", embedding_variant(join="torch.stack([a.cos(), a.sin()], dim=-1).flatten(1)"),
         "interleaved"),
        ("exponent over h - 1 (downscale_freq_shift=1)",
         embedding_variant(freqs="max_period ** (-torch.arange(h, dtype=torch.float64) / (h - 1))"),
         "downscale_freq_shift=1"),
        ("exponent over dim", embedding_variant(freqs="max_period ** (-torch.arange(h, dtype=torch.float64) / dim)"),
         "divided by dim"),
        ("t cast to long", embedding_variant(t="t.long().double()"), "rounded to integers"),
        ("the reference reused", "from diffcourse.models.embeddings import sinusoidal_embedding as time_embedding\n",
         "write time_embedding yourself"),
        ("t reshaped in place", embedding_variant(t="t.unsqueeze_(1).double()[:, 0]"), "in place"),
        ("max_period ignored", embedding_variant(freqs="10000.0 ** (-torch.arange(h, dtype=torch.float64) / h)"),
         "max_period is ignored"),
    ],
    "ex2_solution": [
        ("shift added after conv2", resblock_variant(shift_after=True), "added after conv2"),
        ("no SiLU on the embedding", resblock_variant(shift="self.time_proj(temb)[:, :, None, None]"),
         "SiLU is missing on e"),
        ("no 1x1 skip when widths differ", resblock_variant(skip="nn.Identity()"), "1x1 convolution"),
        ("activation after the sum", resblock_variant(out="F.silu(self.skip(x) + h)"), "nothing applied after"),
        ("no residual", resblock_variant(out="h"), "no residual"),
        ("BatchNorm", resblock_variant(norm="nn.BatchNorm2d({c})"), "not BatchNorm"),
        ("groups ignored", resblock_variant(norm="nn.GroupNorm(1, {c})"), "with the groups argument"),
        ("the reference subclassed", "from diffcourse.models.unet import ResBlock as _R\n\n\nclass ResBlock(_R):\n    pass\n",
         "write ResBlock yourself"),
        ("the residual added into x in place", resblock_variant(out="self.skip(x).add_(h)"), "in place"),
        ("the shift computed under no_grad", resblock_variant(shift="self.time_proj(F.silu(temb)).detach()[:, :, None, None]"),
         "no gradient reaches"),
        ("the whole block under no_grad", resblock_variant().replace("    def forward(self, x, temb):\n",
                                                                     "    @torch.no_grad()\n    def forward(self, x, temb):\n"),
         "gradient"),
    ],
    "ex3_solution": [
        ("no 1/sqrt(d)", attention_variant(scale="1.0"), "not scaled"),
        ("sqrt of the number of keys", attention_variant(scale="k.shape[-2] ** -0.5"), "number of keys"),
        ("divided by d", attention_variant(scale="1 / q.shape[-1]"), "divided by d:"),
        ("softmax over the queries", attention_variant(softmax_dim="-2"), "softmax runs over the queries"),
        ("k.T on batched tensors", attention_variant(kt="k.T"), "k.transpose(-2, -1)"),
        ("softmax as exp / sum (overflows)", """def attention(q, k, v, return_weights=False):
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).exp()
    w = w / w.sum(-1, keepdim=True)
    out = w @ v
    return (out, w) if return_weights else out
""", "subtract each row's maximum"),
        ("q scaled in place", """def attention(q, k, v, return_weights=False):
    q /= math.sqrt(q.shape[-1])
    w = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return (w @ v, w) if return_weights else w @ v
""", "in place"),
        ("always returns the weights", """def attention(q, k, v, return_weights=False):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v, w
""", "return only the output"),
        ("weights detached", """def attention(q, k, v, return_weights=False):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1).detach()
    return (w @ v, w) if return_weights else w @ v
""", "gradient"),
    ],
    "ex4_solution": [
        ("keys from the image", cross_variant(k_src="tokens"), "keys come from the image"),
        ("values from the image", cross_variant(v_src="tokens"), "values come from the image"),
        ("no residual", cross_variant(ret="back"), "there is no residual"),
        ("channel/position mixup", cross_variant(flatten="self.norm(x).reshape(N, H * W, C)",
                                                 back="u.reshape(N, C, H, W)"), "mixes channels and pixels"),
        ("H and W swapped on the way back", cross_variant(back="u.transpose(1, 2).reshape(N, C, W, H).transpose(2, 3)"),
         "H and W are swapped"),
        ("H and W swapped in the reshape", cross_variant(back="u.transpose(1, 2).reshape(N, C, W, H)"),
         "in the order they were flattened"),
        ("heads split without the transpose", cross_variant(split="a.reshape(a.shape[0], self.heads, a.shape[1], d)",
                                                            merge="o.reshape(N, H * W, C)"), "plain reshape"),
        ("the update added into x in place", cross_variant(ret="x.add_(back)"), "in place"),
        ("attention under no_grad", cross_variant(ret="x + back.detach()"), "gradient"),
        ("heads ignored (one head)", cross_variant(split="a.reshape(a.shape[0], a.shape[1], 1, C).transpose(1, 2)"),
         "heads are ignored"),
    ],
    "ex5_solution": [
        ("concat does not add channels", shapes_variant(concat=False) + GOOD_FORWARD, "adds the skip's channels"),
        ("downsampling after the last level", shapes_variant(down_last=True) + GOOD_FORWARD,
         "no Downsample after the last level"),
        ("up path in the skips' order", shapes_variant(up_order="range(L)") + GOOD_FORWARD, "reverse order"),
        ("skips popped first-in first-out", GOOD_SHAPES + forward_variant(pop="skips.pop(0)"), "skips.pop()"),
        ("class labels ignored", GOOD_SHAPES + forward_variant(
            embed="e = unet.time(t) + unet.class_emb(torch.full_like(t, unet.config.num_classes))"),
         "class_labels are ignored"),
        ("skip concatenated first", GOOD_SHAPES + forward_variant(cat="[s, h]"), "puts the skip first"),
        ("class embedding instead of the time embedding", GOOD_SHAPES + forward_variant(embed="e = unet.class_emb(y)"),
         "replaces the time embedding"),
        ("the whole U-Net called", GOOD_SHAPES + "def unet_forward(unet, x_t, t, class_labels=None):\n"
                                                 "    return unet.forward(x_t, t, class_labels)\n",
         "assemble the forward pass from its parts"),
        ("the 'no class' row taken as class 0", GOOD_SHAPES + forward_variant().replace(
            "torch.full_like(t, unet.config.num_classes)", "torch.zeros_like(t)"), "class_labels None"),
        ("the forward under no_grad", GOOD_SHAPES + forward_variant().replace(
            "def unet_forward(", "@torch.no_grad()\ndef unet_forward("), "gradient"),
    ],
    "ex6_solution": [
        ("labels ignored (no class)", sampling_variant(call="unet(x_t, t)"), "the labels are ignored"),
        ("labels shifted by one", sampling_variant(call="unet(x_t, t, class_labels=labels + 1)"), "shifted by one"),
        ("the same label for all", sampling_variant(call="unet(x_t, t, class_labels=labels[:1].expand(len(x_t)))"),
         "same label"),
        ("num_steps ignored", sampling_variant(steps="50"), "called 12 times"),
        ("the generator not passed on", sampling_variant().replace("generator=generator, ", ""), "generator"),
        ("x_T from the global random state", sampling_variant().replace(
            "    return sample_ddim(model, (len(labels), c.in_channels, c.sample_size, c.sample_size), schedule,",
            "    x_T = torch.randn(len(labels), c.in_channels, c.sample_size, c.sample_size)\n"
            "    return sample_ddim(model, x_T, schedule,"), "generator"),
        ("the notebook's cond.schedule", sampling_variant().replace("schedule,\n", "cond.schedule,\n"), "schedule argument"),
        ("a generator of its own", sampling_variant().replace("generator=generator, ", "generator=torch.Generator().manual_seed(0), "),
         "generator"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    "ex1_solution": [
        # float64 powers, then cast; unsqueeze instead of indexing
        """def time_embedding(t, dim, max_period=10000.0):
    h = dim // 2
    freqs = max_period ** (-torch.arange(h, dtype=torch.float64, device=t.device) / h)
    angles = t.double().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((angles.cos(), angles.sin()), dim=-1).to(torch.float32)
""",
        # diffusers' own helper with the course's convention
        """from diffusers.models.embeddings import get_timestep_embedding


def time_embedding(t, dim, max_period=10000.0):
    return get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0, max_period=max_period).float()
"""],
    # activation modules, view instead of indexing
    "ex2_solution": ["""class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, temb_dim, groups):
        super().__init__()
        self.act = nn.SiLU()
        self.norm1, self.norm2 = nn.GroupNorm(groups, c_in), nn.GroupNorm(groups, c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1)
        self.time_proj = nn.Linear(temb_dim, c_out)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x, temb):
        shift = self.time_proj(self.act(temb)).view(len(x), -1, 1, 1)
        h = self.conv2(self.act(self.norm2(self.conv1(self.act(self.norm1(x))) + shift)))
        return h + self.skip(x)
"""],
    # einsum and an explicit exp-normalise softmax
    "ex3_solution": ["""def attention(q, k, v, return_weights=False):
    s = torch.einsum('...qd,...kd->...qk', q, k) / q.size(-1) ** 0.5
    w = (s - s.amax(-1, keepdim=True)).exp()
    w = w / w.sum(-1, keepdim=True)
    out = torch.einsum('...qk,...kv->...qv', w, v)
    if return_weights:
        return out, w
    return out
"""],
    # column-major tokens (consistently both ways), heads by permute, the course's attention formula by hand
    "ex4_solution": [CROSS_INIT + """    def forward(self, x, context):
        N, C, H, W = x.shape
        h = self.heads
        tokens = self.norm(x).transpose(2, 3).flatten(2).permute(0, 2, 1)            # (N, WH, C), column-major
        q = self.to_q(tokens).unflatten(-1, (h, C // h)).permute(0, 2, 1, 3)
        k = self.to_k(context).unflatten(-1, (h, C // h)).permute(0, 2, 1, 3)
        v = self.to_v(context).unflatten(-1, (h, C // h)).permute(0, 2, 1, 3)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // h), dim=-1)
        o = self.proj((w @ v).permute(0, 2, 1, 3).flatten(2))                          # (N, WH, C)
        return x + o.permute(0, 2, 1).reshape(N, C, W, H).transpose(2, 3)
""",
        # the student's own attention from exercise 3, heads with explicit reshapes
        CROSS_INIT + """    def forward(self, x, context):
        B, C, H, W = x.shape
        nh, hd = self.heads, C // self.heads
        t = self.norm(x).flatten(2).transpose(1, 2)                                     # (B, HW, C)
        q = self.to_q(t).view(B, H * W, nh, hd).permute(0, 2, 1, 3)
        k = self.to_k(context).view(B, -1, nh, hd).permute(0, 2, 1, 3)
        v = self.to_v(context).view(B, -1, nh, hd).permute(0, 2, 1, 3)
        o = attention(q, k, v).permute(0, 2, 1, 3).reshape(B, H * W, C)
        return x + self.proj(o).transpose(1, 2).view(B, C, H, W)
"""],
    # shapes from list arithmetic; the forward indexing the levels and walking the skips backwards
    "ex5_solution": ["""def unet_shapes(config, n=1):
    res = [config.sample_size // 2 ** i for i in range(len(config.channels))]
    skips = [(n, c, r, r) for c, r in zip(config.channels, res)]
    below = [config.channels[-1]] + list(config.channels[::-1][:-1])
    up_in = [(n, b + c, r, r) for b, c, r in zip(below, config.channels[::-1], res[::-1])]
    return dict(skips=skips, mid=skips[-1], up_in=up_in,
                out=(n, config.out_channels, config.sample_size, config.sample_size))


def unet_forward(unet, x_t, t, class_labels=None):
    y = class_labels if class_labels is not None else torch.full_like(t, unet.config.num_classes)
    e = unet.time(t) + unet.class_emb(y)
    h = unet.conv_in(x_t)
    skips = []
    for i in range(len(unet.down_blocks)):
        for block in unet.down_blocks[i]:
            h = block(h, e)
        skips.append(h)
        h = unet.downsamplers[i](h)
    h = unet.mid1(h, e)
    h = unet.mid_attn(h)
    h = unet.mid2(h, e)
    for i, skip in enumerate(reversed(skips)):
        h = torch.cat((h, skip), 1)
        for block in unet.up_blocks[i]:
            h = block(h, e)
        h = unet.upsamplers[i](h)
    return unet.conv_out(F.silu(unet.norm_out(h)))
"""],
    # x_T drawn explicitly, labels passed positionally through functools.partial
    "ex6_solution": ["""from functools import partial

from diffcourse.samplers import sample_ddim


def sample_digits(unet, schedule, labels, num_steps=20, generator=None):
    dev = next(unet.parameters()).device
    c = unet.config
    x_T = torch.randn(len(labels), c.in_channels, c.sample_size, c.sample_size, generator=generator).to(dev)
    with torch.no_grad():
        return sample_ddim(partial(unet, class_labels=labels.to(dev)), x_T, schedule, num_steps=num_steps)
"""],
}


(test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
 test_correct_alternative_is_accepted) = exercise_tests(
    run_tests, WRONG, RIGHT, 2 * N_EXERCISES, isolate=True,
    wrong_marks=[pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")])   # the k.T mistake


def test_notebook_has_parameters_points_explorer_and_reference_oracles():
    sources = solution_sources(ASSIGNMENT, NOTEBOOK, MAX_SCORE)
    explorer = sources["explorer"]
    assert "ipywidgets" in explorer and "if not GRADING" in explorer and "Dropdown" in explorer and "IntSlider" in explorer, \
        "the explorer needs a class selector and a step slider"
    oracles = {"test_ex1_hidden": "sinusoidal_embedding", "test_ex2_hidden": "load_state_dict",
               "test_ex3_hidden": "scaled_dot_product_attention", "test_ex4_hidden": "load_state_dict",
               "test_ex5_hidden": "recorded_shapes", "test_ex6_hidden": "classifier("}
    for gid, needle in oracles.items():
        assert needle in sources[gid], f"{gid} should compare with the reference ({needle!r})"
    assert "_ref_attention" in sources["test_ex3_hidden"], "exercise 3 must also be compared with diffcourse's attention"
    for gid, src in sources.items():
        if gid.endswith("_solution"):
            assert "diffcourse.models" not in src, f"{gid} may not use the reference implementation"


def test_released_notebook_has_stubs_and_no_secrets():
    _, stubs = assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, N_EXERCISES, (
        "torch.softmax(scores, dim=-1)", "self.skip(x) + h", "_MISTAKES", "torch.cat([h, skips.pop()]", "return unet(x_t, t, class_labels=labels)"))
    assert sum(c.source.count("raise NotImplementedError()") for c in stubs) == 8, \
        "expected 8 stubs: one per function, two in ResBlock (__init__ and forward)"


def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, MAX_SCORE, tmp_path)
