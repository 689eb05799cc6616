"""Chapter 5's graded notebook (solutions/ch05_guidance/guidance.ipynb): classifier-free guidance.

Each exercise's plausible mistakes are rejected by its graded tests with a message that points at the
mistake, and correct alternatives are accepted; the released copy leaks nothing and is in sync; the
real autograder gives the solution full marks and the released notebook zero (slow).
The cells run in-process through ``tests/nbharness.py``; the notebook loads the zoo's ``digits_cond_unet``,
and no test depends on its exact weights.
"""
from __future__ import annotations

import pytest

from nbharness import (assert_full_marks_and_zero, assert_release_in_sync,
                       assert_released_has_stubs_and_no_secrets, solution_sources, exercise_runner,
                       exercise_tests)

ASSIGNMENT, NOTEBOOK = "ch05_guidance", "guidance"
SKIP = ("demo", "explorer")
N_EXERCISES, MAX_SCORE = 6, 28


run_tests = exercise_runner(ASSIGNMENT, NOTEBOOK, SKIP, N_EXERCISES)

DROP_HEAD = "def drop_condition(labels, p_uncond, null_label, generator=None):\n"
GUIDED_HEAD = "def guided_eps(eps_uncond, eps_cond, w):\n"
PER_SAMPLE_W = ("    if isinstance(w, torch.Tensor) and w.ndim > 0:\n"
                "        w = w.reshape(-1, *[1] * (eps_cond.ndim - 1))\n")
BOTH_HEAD = "def both_branches(model, x_t, t, cond, uncond):\n"
CFG_HEAD = "def cfg_model(model, labels, w, null_label, negative_labels=None):\n"
CFG_BODY = """    uncond = {uncond}

    def eps_fn(x_t, t):
        eps_u, eps_c = both_branches(model, x_t, t, {cond_arg}, {uncond_arg})
        return guided_eps(eps_u, eps_c, w)
    return eps_fn
"""
RESCALE_HEAD = "def rescale_guidance(eps_guided, eps_cond, phi):\n"
RESCALE_BODY = """    dims = list(range(1, eps_guided.ndim))
    std_c = {std_c}
    std_w = {std_w}
    rescaled = {rescaled}
    return {blend}
"""
INTERVAL_HEAD = "def interval_weights(t, w, t_lo, t_hi):\n"


def cfg_variant(uncond="torch.full_like(labels, null_label) if negative_labels is None else negative_labels",
                cond_arg="labels", uncond_arg="uncond"):
    return CFG_HEAD + CFG_BODY.format(uncond=uncond, cond_arg=cond_arg, uncond_arg=uncond_arg)


def rescale_variant(std_c="eps_cond.std(dim=dims, keepdim=True)", std_w="eps_guided.std(dim=dims, keepdim=True)",
                    rescaled="eps_guided * (std_c / std_w)", blend="phi * rescaled + (1 - phi) * eps_guided"):
    return RESCALE_HEAD + RESCALE_BODY.format(std_c=std_c, std_w=std_w, rescaled=rescaled, blend=blend)


WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("a fixed share dropped (the first round(p N))", DROP_HEAD + "    out = labels.clone()\n"
         "    out[:round(p_uncond * len(labels))] = null_label\n    return out\n", "fixed share"),
        ("a random subset of exactly round(p N)", DROP_HEAD + "    out = labels.clone()\n"
         "    idx = torch.randperm(len(labels), generator=generator)[:round(p_uncond * len(labels))]\n"
         "    out[idx] = null_label\n    return out\n", "fixed share"),
        ("the global RNG", DROP_HEAD + "    drop = torch.rand(len(labels)) < p_uncond\n"
         "    return torch.where(drop, torch.full_like(labels, null_label), labels)\n", "generator"),
        ("labels modified in place", DROP_HEAD + "    drop = torch.rand(len(labels), generator=generator) < p_uncond\n"
         "    labels[drop] = null_label\n    return labels\n", "in place"),
        ("p inverted (keeps with probability p)", DROP_HEAD + "    drop = torch.rand(len(labels), generator=generator) >= p_uncond\n"
         "    return torch.where(drop, torch.full_like(labels, null_label), labels)\n", "inverted"),
        ("the whole batch dropped at once", DROP_HEAD + "    if float(torch.rand(1, generator=generator)) < p_uncond:\n"
         "        return torch.full_like(labels, null_label)\n    return labels.clone()\n", "its own draw"),
        ("a hard-coded null label 10", DROP_HEAD + "    drop = torch.rand(len(labels), generator=generator) < p_uncond\n"
         "    return torch.where(drop, torch.full_like(labels, 10), labels)\n", "null_label passed in"),
    ],
    "ex2_solution": [
        ("the difference reversed", GUIDED_HEAD + PER_SAMPLE_W + "    return eps_cond + w * (eps_uncond - eps_cond)\n",
         "wrong way"),
        ("the paper's w' taken as guidance_scale", GUIDED_HEAD + PER_SAMPLE_W
         + "    return eps_cond + w * (eps_cond - eps_uncond)\n", "w' = w"),
        ("w * eps_cond only", GUIDED_HEAD + PER_SAMPLE_W + "    return w * eps_cond\n", "not guidance"),
        ("a per-sample w not reshaped", GUIDED_HEAD + "    return eps_uncond + w * (eps_cond - eps_uncond)\n",
         "(N, 1, ..., 1)"),
        ("a per-sample w reshaped for 4-d tensors only", GUIDED_HEAD
         + "    if isinstance(w, torch.Tensor) and w.ndim > 0:\n        w = w.view(-1, 1, 1, 1)\n"
         "    return eps_uncond + w * (eps_cond - eps_uncond)\n", "number of dimensions"),
        ("the difference computed in place", GUIDED_HEAD + PER_SAMPLE_W
         + "    return eps_cond.sub_(eps_uncond).mul_(w).add_(eps_uncond)\n", "in place"),
        ("float32 for float64 inputs", GUIDED_HEAD + PER_SAMPLE_W
         + "    return (eps_uncond + w * (eps_cond - eps_uncond)).float()\n", "float64"),
        ("a detached result", GUIDED_HEAD + PER_SAMPLE_W
         + "    return (eps_uncond + w * (eps_cond - eps_uncond)).detach()\n", "gradient"),
    ],
    "ex3_solution": [
        ("two calls", BOTH_HEAD + "    return model(x_t, t, class_labels=uncond), model(x_t, t, class_labels=cond)\n",
         "ONE call"),
        ("the chunk order swapped", BOTH_HEAD
         + "    eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), class_labels=torch.cat([uncond, cond])).chunk(2)\n"
         "    return eps_u, eps_c\n", "halves are swapped"),
        ("concatenated along the channels", BOTH_HEAD
         + "    out = model(torch.cat([x_t, x_t], dim=1), torch.cat([t, t]), class_labels=torch.cat([uncond, cond]))\n"
         "    return out.chunk(2)\n", "dim=0"),
        ("t not repeated", BOTH_HEAD
         + "    out = model(torch.cat([x_t, x_t]), t, class_labels=torch.cat([uncond, cond]))\n"
         "    return out.chunk(2)\n", "repeat t too"),
        ("cond in both halves", BOTH_HEAD
         + "    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), class_labels=torch.cat([cond, cond]))\n"
         "    return out.chunk(2)\n", "both halves used cond"),
        ("one call per sample", BOTH_HEAD + "    us, cs = [], []\n    for i in range(len(x_t)):\n"
         "        o = model(torch.cat([x_t[i:i+1]] * 2), torch.cat([t[i:i+1]] * 2), class_labels=torch.stack([uncond[i], cond[i]]))\n"
         "        us.append(o[:1]); cs.append(o[1:])\n    return torch.cat(us), torch.cat(cs)\n", "ONE call"),
        ("split(2) instead of chunk(2)", BOTH_HEAD
         + "    out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), class_labels=torch.cat([uncond, cond]))\n"
         "    return tuple(out.split(2))\n", ".chunk(2)"),
    ],
    "ex4_solution": [
        ("negative labels ignored", cfg_variant(uncond="torch.full_like(labels, null_label)"), "negative_labels were ignored"),
        ("the negative in the conditional branch", cfg_variant(
            uncond="torch.full_like(labels, null_label)",
            cond_arg="labels if negative_labels is None else negative_labels"), "went into the conditional branch"),
        ("labels and negatives swapped", cfg_variant(
            cond_arg="labels if negative_labels is None else uncond",
            uncond_arg="uncond if negative_labels is None else labels"), "swapped"),
        ("a null label fixed at 10", cfg_variant(uncond="torch.full_like(labels, 10) if negative_labels is None else "
                                                        "negative_labels"), "not a fixed 10"),
        ("a negative as a third branch", CFG_HEAD + """    null = torch.full_like(labels, null_label)

    def eps_fn(x_t, t):
        n = len(x_t)
        if negative_labels is None:
            out = model(torch.cat([x_t] * 2), torch.cat([t] * 2), class_labels=torch.cat([null, labels]))
            e_u, e_c = out.chunk(2)
            return guided_eps(e_u, e_c, w)
        out = model(torch.cat([x_t] * 3), torch.cat([t] * 3), class_labels=torch.cat([null, labels, negative_labels]))
        e_u, e_c, e_n = out.chunk(3)
        return e_u + w * (e_c - e_u) - w * (e_n - e_u)
    return eps_fn
""", "not a third branch"),
        ("two calls per step", CFG_HEAD + """    uncond = torch.full_like(labels, null_label) if negative_labels is None else negative_labels

    def eps_fn(x_t, t):
        return guided_eps(model(x_t, t, class_labels=uncond), model(x_t, t, class_labels=labels), w)
    return eps_fn
""", "both branches in one call"),
        ("x_t and t frozen at the first call", CFG_HEAD + """    uncond = torch.full_like(labels, null_label) if negative_labels is None else negative_labels
    cache = {}

    def eps_fn(x_t, t):
        if "eps" not in cache:
            cache["eps"] = guided_eps(*both_branches(model, x_t, t, labels, uncond), w)
        return cache["eps"]
    return eps_fn
""", "second call"),
    ],
    "ex5_solution": [
        ("std over the whole batch", rescale_variant(std_c="eps_cond.std()", std_w="eps_guided.std()"), "per sample"),
        ("phi inverted", rescale_variant(blend="(1 - phi) * rescaled + phi * eps_guided"), "phi is inverted"),
        ("the ratio inverted", rescale_variant(rescaled="eps_guided * (std_w / std_c)"), "ratio is inverted"),
        ("eps_cond rescaled", rescale_variant(rescaled="eps_cond * (std_c / std_w)"), "rescale the guided estimate"),
        ("one std per channel", rescale_variant(std_c="eps_cond.std(dim=dims[1:], keepdim=True)",
                                                std_w="eps_guided.std(dim=dims[1:], keepdim=True)"), "not one per channel"),
        ("dims (1, 2, 3) hard-coded", rescale_variant(std_c="eps_cond.std(dim=(1, 2, 3), keepdim=True)",
                                                      std_w="eps_guided.std(dim=(1, 2, 3), keepdim=True)"),
         "every dimension but the batch"),
        ("no blend (phi ignored)", rescale_variant(blend="rescaled"), "phi was ignored"),
        ("the rescale computed as a Python number per sample", RESCALE_HEAD + """    out = []
    for g, c in zip(eps_guided, eps_cond):
        r = float(c.std() / g.std())
        out.append(phi * g * r + (1 - phi) * g)
    return torch.stack(out)
""", "gradient"),
    ],
    "ex6_solution": [
        ("0 outside the interval", INTERVAL_HEAD + "    inside = (t >= t_lo) & (t <= t_hi)\n"
         "    return torch.where(inside, float(w), 0.0)\n", "not 0"),
        ("the ends excluded", INTERVAL_HEAD + "    inside = (t > t_lo) & (t < t_hi)\n"
         "    return torch.where(inside, float(w), 1.0)\n", "both ends"),
        ("guidance outside the interval", INTERVAL_HEAD + "    inside = (t >= t_lo) & (t <= t_hi)\n"
         "    return torch.where(inside, 1.0, float(w))\n", "not outside"),
        ("a long tensor (w truncated)", INTERVAL_HEAD + "    inside = (t >= t_lo) & (t <= t_hi)\n"
         "    return torch.where(inside, torch.full_like(t, w), torch.ones_like(t))\n", "float"),
        ("t_hi ignored", INTERVAL_HEAD + "    return torch.where(t >= t_lo, float(w), 1.0)\n", "upper end"),
        ("t rounded", INTERVAL_HEAD + "    r = t.round()\n"
         "    return torch.where((r >= t_lo) & (r <= t_hi), float(w), 1.0)\n", "do not round"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    # torch.bernoulli draws one uniform per entry from the generator, as torch.rand does; masked_fill on a copy
    "ex1_solution": [DROP_HEAD + "    keep = torch.bernoulli(torch.full((len(labels),), p_uncond), generator=generator).bool()\n"
                                 "    return labels.masked_fill(keep, null_label)\n",
                     DROP_HEAD + "    out = labels.clone()\n"
                                 "    u = torch.empty(len(labels)).uniform_(generator=generator)\n"
                                 "    out[u < p_uncond] = null_label\n    return out\n"],
    # (1 - w) eps_u + w eps_c, and torch.lerp
    "ex2_solution": [GUIDED_HEAD + "    w = torch.as_tensor(w, dtype=eps_cond.dtype)\n"
                                   "    w = w.reshape(-1, *[1] * (eps_cond.ndim - 1)) if w.ndim else w\n"
                                   "    return (1 - w) * eps_uncond + w * eps_cond\n",
                     GUIDED_HEAD + PER_SAMPLE_W + "    return torch.lerp(eps_uncond, eps_cond, w if isinstance(w, torch.Tensor) "
                                                  "else float(w))\n"],
    # the conditional half first; interleaved samples (repeat_interleave) split by stride
    "ex3_solution": [BOTH_HEAD + "    out = model(x_t.repeat(2, 1, 1, 1), t.repeat(2), class_labels=torch.cat([cond, uncond], dim=0))\n"
                                 "    eps_cond, eps_uncond = out.chunk(2, dim=0)\n    return eps_uncond, eps_cond\n",
                     BOTH_HEAD + "    y = torch.stack([uncond, cond], dim=1).reshape(-1)\n"
                                 "    out = model(x_t.repeat_interleave(2, dim=0), t.repeat_interleave(2), class_labels=y)\n"
                                 "    return out[0::2], out[1::2]\n"],
    # the guided estimate written out, no helper calls, w captured as a float
    "ex4_solution": CFG_HEAD + """    negative = torch.full_like(labels, null_label) if negative_labels is None else negative_labels
    y = torch.cat([negative, labels])
    scale = float(w)

    @torch.no_grad()
    def eps_fn(x_t, t):
        e_u, e_c = model(torch.cat([x_t, x_t]), torch.cat([t, t]), class_labels=y.to(x_t.device)).chunk(2)
        return e_u + scale * (e_c - e_u)
    return eps_fn
""",
    # biased stds (the correction cancels in the ratio); flatten(1) and torch.lerp
    "ex5_solution": [rescale_variant(std_c="eps_cond.std(dim=dims, keepdim=True, unbiased=False)",
                                     std_w="eps_guided.std(dim=dims, keepdim=True, unbiased=False)"),
                     RESCALE_HEAD + "    shape = (-1,) + (1,) * (eps_guided.ndim - 1)\n"
                                    "    ratio = (eps_cond.flatten(1).std(1) / eps_guided.flatten(1).std(1)).reshape(shape)\n"
                                    "    return torch.lerp(eps_guided, eps_guided * ratio, phi)\n"],
    "ex6_solution": INTERVAL_HEAD + "    return 1.0 + (w - 1.0) * ((t >= t_lo) & (t <= t_hi)).float()\n",
}


(test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
 test_correct_alternative_is_accepted) = exercise_tests(run_tests, WRONG, RIGHT, 2 * N_EXERCISES, isolate=True)


def test_every_exercise_has_four_mistakes_and_an_alternative():
    for k in range(1, N_EXERCISES + 1):
        assert len(WRONG[f"ex{k}_solution"]) >= 4 and f"ex{k}_solution" in RIGHT, f"exercise {k}"


def test_notebook_has_parameters_points_explorer_and_diffusers_oracles():
    sources = solution_sources(ASSIGNMENT, NOTEBOOK, MAX_SCORE)
    assert "widgets.FloatSlider" in sources["explorer"] and "widgets.interact" in sources["explorer"], \
        "the explorer needs a guidance-scale slider"
    assert "if not GRADING" in sources["explorer"] and "if not GRADING" in sources["demo"]
    assert "tqdm(" in sources["demo"] and "progress=True" in sources["explorer"], "the loops show a tqdm bar"
    assert "digits_cond_unet" in sources["imports"] and "load_digit_classifier" in sources["demo"]
    assert "ClassifierFreeGuidance" in sources["test_ex2_hidden"] and "rescale_noise_cfg" in sources["test_ex5_hidden"], \
        "the hidden tests compare with diffusers' guider and rescale_noise_cfg"
    for gid, src in sources.items():
        if gid.endswith("_solution"):
            assert "course_ref" not in src and "diffcourse" not in src, f"{gid} may not call the course's reference"


def test_released_notebook_has_stubs_and_no_secrets():
    assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, N_EXERCISES, (
        "std_cond / std_guided", "from diffusers.guiders", "course_ref.cfg_model(unet", "rescale_noise_cfg(_w", "out.chunk(2)"))



def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, MAX_SCORE, tmp_path)
