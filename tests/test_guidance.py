"""Book §5: classifier-free guidance -- the guided estimate, its conventions, one batched call, negative prompts,
guidance rescale against diffusers, the course's CFG loop against StableDiffusionPipeline, and adherence on the
digits rising with w.

Files under test: diffcourse/guidance/.
"""
from __future__ import annotations

import pytest
import torch

from diffcourse import zoo
from diffcourse.guidance import (adherence, both_branches, clipping_share, diversity, drop_condition, drop_prompts,
                                 guidance_scale_from_paper, guidance_weights, guided_class_model, guided_eps, paper_w,
                                 off_palette_share, pixel_stats, rescale_guidance, sample_cfg_digits, sample_text_cfg)

from latent_parts import shapes_sd_or_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cond():
    return zoo.load("digits_cond_unet", device="cpu")


def _inputs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)                                    # (N, 1, 8, 8)
    t = torch.randint(0, 1000, (n,), generator=g)                               # (N,)
    y = torch.randint(0, 10, (n,), generator=g)                                 # (N,)
    return x, t, y


@torch.no_grad()
def test_w_one_is_the_conditional_model_and_w_zero_the_unconditional(cond):
    x, t, y = _inputs()
    eps_c = cond.model(x, t, class_labels=y)
    eps_u = cond.model(x, t, class_labels=torch.full_like(y, 10))
    assert float((eps_c - eps_u).abs().max()) > 1e-2, "the class should change the prediction"
    for w, want, name in ((1.0, eps_c, "conditional"), (0.0, eps_u, "unconditional")):
        got = guided_class_model(cond.model, y, w)(x, t)
        err = float((got - want).abs().max())
        assert err < 1e-5, f"w = {w} should be the {name} model, differs by {err:.2e}"
    w3 = guided_class_model(cond.model, y, 3.0)(x, t)
    assert torch.allclose(w3, eps_u + 3 * (eps_c - eps_u), atol=1e-5), "w = 3 is eps_u + 3 (eps_c - eps_u)"
    assert paper_w(4.0) == 3.0 and guidance_scale_from_paper(3.0) == 4.0 and paper_w(1.0) == 0.0


@torch.no_grad()
def test_one_batched_call_equals_two_calls(cond):
    x, t, y = _inputs(seed=1)
    batches = []

    def call(xb, tb, yb):
        batches.append(len(xb))
        return cond.model(xb, tb, class_labels=yb)

    null = torch.full_like(y, 10)
    eps_u, eps_c = both_branches(call, x, t, y, null)
    assert batches == [2 * len(x)], f"both branches should be one call of batch 2N, got calls of {batches}"
    assert torch.allclose(eps_u, cond.model(x, t, class_labels=null), atol=1e-5)
    assert torch.allclose(eps_c, cond.model(x, t, class_labels=y), atol=1e-5)
    per_sample = guided_eps(eps_u, eps_c, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]))
    for i, w in enumerate(range(6)):
        assert torch.allclose(per_sample[i], guided_eps(eps_u[i:i + 1], eps_c[i:i + 1], float(w))[0], atol=1e-6)


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_guidance_rescale_equals_diffusers(phi):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    g = torch.Generator().manual_seed(2)
    eps_u, eps_c = torch.randn(2, 3, 4, 8, 8, generator=g)                      # (N, 4, h, w) each
    eps_w = guided_eps(eps_u, eps_c, 7.5)
    ours = rescale_guidance(eps_w, eps_c, phi)
    theirs = rescale_noise_cfg(eps_w, eps_c, guidance_rescale=phi)
    assert float((ours - theirs).abs().max()) < 1e-6
    if phi == 1.0:
        assert torch.allclose(ours.flatten(1).std(1), eps_c.flatten(1).std(1), rtol=1e-5), "phi = 1 restores std(eps_c)"
    with pytest.raises(ValueError, match="phi"):
        rescale_guidance(eps_w, eps_c, 1.5)


def test_condition_dropout_share_is_seeded_and_leaves_the_input_alone():
    labels = torch.arange(10).repeat(500)                                        # (5000,)
    before = labels.clone()
    dropped = drop_condition(labels, 0.1, 10, generator=torch.Generator().manual_seed(0))
    share = float((dropped == 10).float().mean())
    assert 0.09 < share < 0.11, f"p_uncond = 0.1 dropped {share:.3f} of the labels"
    assert torch.equal(labels, before), "drop_condition must not modify its input"
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept]), "labels that are not dropped must be unchanged"
    again = drop_condition(labels, 0.1, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again), "the same seed should drop the same labels"
    assert torch.equal(drop_condition(labels, 0.0, 10), labels)
    assert bool((drop_condition(labels, 1.0, 10) == 10).all())
    prompts = drop_prompts(["a red circle"] * 1000, 0.2, torch.Generator().manual_seed(0))
    assert 150 < prompts.count("") < 250 and set(prompts) == {"", "a red circle"}


def test_guidance_interval_and_ramp():
    t = torch.tensor([999, 800, 500, 200, 0])
    assert guidance_weights(t, 4.0).tolist() == [4.0] * 5
    assert guidance_weights(t, 4.0, "interval", (200, 800)).tolist() == [1.0, 4.0, 4.0, 4.0, 1.0]
    ramp = guidance_weights(t, 4.0, "linear", T=1000)
    assert ramp[0] == pytest.approx(1 + 3 * 0.999) and ramp[-1] == 1.0
    with pytest.raises(ValueError, match="interval"):
        guidance_weights(t, 4.0, "interval")


def test_measurement_helpers_on_known_inputs():
    x = torch.zeros(4, 1, 2, 2)
    x[1] += 1.0                                                                  # class 0: distance 2 apart
    labels = torch.tensor([0, 0, 1, 1])
    assert diversity(x, labels) == pytest.approx((2.0 + 0.0) / 2)               # classes 0 and 1 averaged
    y = torch.tensor([[-1.5, 0.2], [0.99, 1.01]])
    assert clipping_share(y) == 0.5
    stats = pixel_stats(y)
    assert stats["max_abs"] == pytest.approx(1.5) and stats["clipped"] == 0.5 and stats["saturated"] == 0.75


def test_adherence_rises_with_guidance_on_the_digits(cond):
    from diffcourse.metrics import load_digit_classifier

    classifier = load_digit_classifier()
    labels = torch.arange(10).repeat_interleave(5)                              # (50,)
    scores = {w: adherence(sample_cfg_digits(cond.model, cond.schedule, labels, w, seed=0, num_steps=20), labels,
                           classifier) for w in (0.0, 3.0)}
    assert scores[0.0] < 0.4, f"unguided-by-class samples (w = 0) should rarely be the requested digit: {scores}"
    assert scores[3.0] >= 0.9 and scores[3.0] > scores[0.0] + 0.5, f"adherence should rise from w=0 to w=3: {scores}"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import DDIMScheduler

    pipe, _ = shapes_sd_or_tiny(tmp_path_factory.mktemp("tiny_sd"), "tiny pipeline for tests/test_guidance.py")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)   # the course's end
    return pipe


@pytest.mark.parametrize("w, negative, phi", [(3.0, False, 0.0), (5.0, True, 0.7)])
@torch.no_grad()
def test_course_cfg_loop_agrees_with_stable_diffusion_pipeline(pipe, w, negative, phi):
    prompts = ["a large red circle at the top left", "a small blue square at the bottom right"]
    negatives = ["a large blue square", "a small red circle"] if negative else None
    ours = sample_text_cfg(pipe, prompts, negatives, seed=3, num_inference_steps=8, guidance_scale=w,
                           guidance_rescale=phi)
    out = pipe(prompts, negative_prompt=negatives, generator=torch.Generator().manual_seed(3), num_inference_steps=8,
               guidance_scale=w, guidance_rescale=phi, output_type="pt").images * 2 - 1    # (N, 3, H, W)
    err = float((ours - out).abs().max())
    assert err < 2e-3, f"the course's CFG loop and StableDiffusionPipeline differ by {err:.2e} (w={w}, phi={phi})"
    other = sample_text_cfg(pipe, prompts, negatives, seed=3, num_inference_steps=8, guidance_scale=w + 2,
                            guidance_rescale=phi)
    assert float((other - out).abs().max()) > 1e-2, "another guidance scale should give other images"


def test_course_cfg_loop_refuses_a_scheduler_that_ends_elsewhere(pipe):
    from diffusers import DDIMScheduler

    saved = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(saved.config, set_alpha_to_one=False)
    try:
        with pytest.raises(ValueError, match="set_alpha_to_one"):
            sample_text_cfg(pipe, ["a large red circle"], num_inference_steps=2)
    finally:
        pipe.scheduler = saved


def test_off_palette_share_is_small_on_real_shapes_and_large_on_noise():
    from diffcourse.data.shapes import ShapesDataset
    from diffcourse.guidance import off_palette_share

    real = torch.stack([item["image"] for item in ShapesDataset(24, seed=5, max_shapes=1)])   # (24, 3, 32, 32)
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert off_palette_share(real) < 0.03, f"real shapes should be background or palette, got {off_palette_share(real):.3f}"
    assert off_palette_share(noise) > 0.5, f"uniform noise should be mostly off-palette, got {off_palette_share(noise):.3f}"
    grey = torch.zeros(2, 3, 8, 8)                                                # mid-grey: no palette colour
    assert off_palette_share(grey) == 1.0


@torch.no_grad()
def test_guidance_curve_on_the_shapes_model_same_noise_and_colour_rises_with_w():
    from diffusers import DDIMScheduler

    from diffcourse.guidance import curve_prompts, guidance_curve
    from diffcourse.latent.pipeline import load_pipeline

    prompts, labels = curve_prompts(3, 4, seed=1)
    assert len(prompts) == 12 and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert prompts[0] == prompts[3] != prompts[4]
    with pytest.raises(ValueError, match="two samples per prompt"):
        curve_prompts(3, 1)
    pipe = load_pipeline()                                                        # the shipped zoo/shapes_sd
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)
    curve = guidance_curve(pipe, [0.0, 3.0], n_prompts=6, repeats=4, seed=2, num_inference_steps=8, progress=False)
    assert set(curve) == {0.0, 3.0}
    for w, row in curve.items():
        assert row["images"].shape == (24, 3, 32, 32) and float(row["images"].abs().max()) <= 1.0
        assert {"colour", "shape", "size", "position", "colour+position+shape", "diversity", "off_palette",
                "clipped", "max_abs"} <= set(row)
    again = guidance_curve(pipe, [3.0], n_prompts=6, repeats=4, seed=2, num_inference_steps=8, progress=False)
    assert torch.equal(again[3.0]["images"], curve[3.0]["images"]), "the same seed must give the same samples"
    # w = 0 is the unconditional model: colour at chance (1 in 6); w = 3 follows the caption's colour
    assert curve[3.0]["colour"] >= curve[0.0]["colour"] + 0.4, \
        f"colour adherence {curve[0.0]['colour']:.2f} at w = 0 and {curve[3.0]['colour']:.2f} at w = 3"
