"""Book §6.2, §6.3, §6.6: condition maps (Sobel/Canny with torch, masks from the drawing parameters), ControlNet
from scratch and diffusers' ControlNetModel.from_unet on the course's U-Net (unchanged output at init, the two
agreeing once trained away from zero), and img2img strength semantics counted and measured.

Files under test: diffcourse/control/edges.py, controlnet.py, strength.py.
"""
from __future__ import annotations

import pytest
import torch

from diffcourse.control.controlnet import (ConditionEmbedding, ScratchControlNet, conditioning_sweep,
                                           controlled_eps, controlnet_loss, controlnet_pipeline, diffusers_controlnet,
                                           embedding_channels_for, sample_controlled, zero_conv)
from diffcourse.control.edges import (as_condition, canny, edge_agreement, edge_map, position_mask, segmentation_map,
                                      sobel)
from diffcourse.control.train_controlnet import control_dataset, drop_captions, train_controlnet
from diffcourse.control.strength import (count_denoising_steps, img2img_steps, img2img_timesteps, input_survival,
                                         inpaint_change, strength_table)
from diffcourse.data.shapes import caption_for, render_objects, sample_objects, shape_mask

from latent_parts import shapes_sd_or_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a large red circle at the top left", "a small blue square in the center"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe, pipe.diffcourse_trained = shapes_sd_or_tiny(tmp_path_factory.mktemp("tiny_sd"),
                                                      "tiny pipeline for tests/test_control_net.py")
    return pipe


def _square(cy=16.0, cx=16.0, r=8.0, size=32, colour="blue"):
    ob = dict(shape="square", colour=colour, size="large", position="center", center=(cy, cx), radius=r)
    return [ob], render_objects([ob], size)[None]                               # (1, 3, size, size)


def _conditions(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.stack([render_objects(sample_objects(g, 32, 1), 32) for _ in range(n)])
    return as_condition(canny(images))                                          # (N, 3, 32, 32) in {0, 1}


# ----------------------------------------------------------------------------- condition maps (§6.2)

@pytest.mark.parametrize("colour", ["blue", "yellow"])
def test_sobel_and_canny_edges_of_a_square_lie_on_its_border(colour):
    objects, image = _square(colour=colour)
    half = 0.85 * 8.0                                                           # the square's half side
    centres = torch.arange(32) + 0.5
    dist = torch.maximum((centres[:, None] - 16).abs(), (centres[None, :] - 16).abs())   # (32, 32) L-inf radius
    border = (dist - half).abs()                                                # distance to the border
    for name, edges in {"sobel": edge_map(image, 0.5), "canny": canny(image)}.items():
        e = edges[0, 0].bool()
        assert e.sum() >= 4 * 12, f"{name}: too few edge pixels ({int(e.sum())}) for a 14-pixel square"
        assert float(border[e].max()) <= 1.5, f"{name}: an edge pixel lies {float(border[e].max()):.1f} px off"
        for side in (e[:, :16].any(0), e[:16].any(1)):                          # every side is seen
            assert side.any()
    thin = canny(image)[0, 0]
    assert thin.sum() < edge_map(image, 0.5)[0, 0].sum(), "non-maximum suppression should thin the Sobel edges"
    assert canny(torch.zeros(1, 3, 32, 32)).sum() == 0 and edge_map(torch.ones(1, 3, 32, 32)).sum() == 0
    magnitude, theta = sobel(image)
    assert magnitude.shape == theta.shape == (1, 1, 32, 32)
    assert float(magnitude[0, 0, 16, 16]) == 0.0, "no gradient inside a flat square"


def test_masks_from_the_drawing_parameters():
    g = torch.Generator().manual_seed(3)
    objects = sample_objects(g, 32, 2)
    seg = segmentation_map(objects, 32)
    for ob in objects:
        cover = shape_mask(ob["shape"], *ob["center"], ob["radius"], 32)
        assert (seg[cover > 0.5] > 0).all()
    assert (seg == 0).float().mean() > 0.5, "most of the image is background"
    box = position_mask(objects, 32)
    assert ((seg > 0) <= (box > 0)).all(), "every shape pixel lies in its box"
    cond = as_condition(seg[None])
    assert cond.shape == (1, 3, 32, 32) and 0 <= float(cond.min()) and float(cond.max()) <= 1


def test_edge_agreement_scores_the_condition_against_generated_edges():
    _, image = _square()
    condition = canny(image)
    score = edge_agreement(condition, image)
    assert float(score["f1"][0]) == 1.0, score
    _, moved = _square(cy=10.0, cx=10.0)                                        # the same square moved 6 px
    assert float(edge_agreement(condition, moved)["f1"][0]) < 0.5
    _, smaller = _square(r=6.0)                                                 # 2 px inside: within tolerance 2
    assert float(edge_agreement(condition, smaller, tolerance=2)["f1"][0]) > float(
        edge_agreement(condition, smaller, tolerance=0)["f1"][0])
    assert float(edge_agreement(condition, -torch.ones(1, 3, 32, 32))["f1"][0]) == 0.0


# ----------------------------------------------------------------------------- ControlNet (§6.3)

def test_zero_convolution_outputs_zero_but_its_weight_gets_a_gradient():
    conv = zero_conv(8, 4)
    x = torch.randn(2, 8, 5, 5)
    out = conv(x)
    assert torch.equal(out, torch.zeros(2, 4, 5, 5))
    (out * torch.randn_like(out)).sum().backward()
    assert conv.weight.grad.abs().sum() > 0, "a zero convolution must still learn: dL/dW = input x upstream grad"
    assert embedding_channels_for(4) == (16, 32, 64) and embedding_channels_for(8) == (16, 32, 64, 128)
    with pytest.raises(ValueError):
        embedding_channels_for(3)
    e = ConditionEmbedding(32, 3, embedding_channels_for(4))
    assert e(torch.rand(2, 3, 32, 32)).shape == (2, 32, 8, 8), "E must downsample by the VAE's factor"


def test_scratch_controlnet_at_init_leaves_the_pipeline_unchanged(pipe):
    net = ScratchControlNet(pipe.unet, factor=pipe.vae_scale_factor)
    y = _conditions()
    g = torch.Generator().manual_seed(0)
    z, t, c = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 7, 64, generator=g)
    down, mid = net(z, t, c, y)
    assert all(float(r.detach().abs().max()) == 0 for r in (*down, mid)), "zero convolutions: residuals are 0 at init"
    with torch.no_grad():
        assert torch.equal(controlled_eps(pipe.unet, net, z, t, c, y), controlled_eps(pipe.unet, None, z, t, c, y))
    reference = pipe(PROMPTS, generator=torch.Generator().manual_seed(3), num_inference_steps=8, guidance_scale=4.0,
                     output_type="pt").images * 2 - 1                         # (N, 3, H, W)
    ours = sample_controlled(pipe, PROMPTS, y, net, seed=3, num_inference_steps=8, guidance_scale=4.0)
    err = float((ours - reference).abs().max())
    assert err < 1e-4, f"a fresh ControlNet changed StableDiffusionPipeline's images by {err:.2e}"
    with pytest.raises(ValueError, match="image-sized"):
        net(z, t, c, torch.rand(2, 3, 8, 8))


def test_diffusers_controlnet_from_unet_in_the_real_pipeline_and_against_scratch(pipe):
    factor = pipe.vae_scale_factor
    cn = diffusers_controlnet(pipe.unet, factor=factor)
    y = _conditions()
    emb = cn.controlnet_cond_embedding(y)
    assert emb.shape == (2, pipe.unet.config.block_out_channels[0], 32 // factor, 32 // factor)
    call = dict(num_inference_steps=8, guidance_scale=4.0, output_type="pt")
    reference = pipe(PROMPTS, generator=torch.Generator().manual_seed(3), **call).images
    control = controlnet_pipeline(pipe, cn)
    theirs = control(PROMPTS, image=y, generator=torch.Generator().manual_seed(3), **call).images
    err = float((theirs - reference).abs().max())
    assert err < 1e-4, f"StableDiffusionControlNetPipeline at init differs from StableDiffusionPipeline by {err:.2e}"
    # move every weight off its init: the course's ControlNet with the same weights must still agree
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in cn.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    scratch = ScratchControlNet(pipe.unet, factor=factor)
    scratch.load_state_dict(cn.state_dict(), strict=True)
    moved = control(PROMPTS, image=y, generator=torch.Generator().manual_seed(3), **call).images * 2 - 1
    ours = sample_controlled(pipe, PROMPTS, y, scratch, seed=3, num_inference_steps=8, guidance_scale=4.0)
    err = float((ours - moved).abs().max())
    assert err < 1e-4, f"the course's ControlNet and diffusers' differ by {err:.2e} with the same weights"
    assert float((moved - (reference * 2 - 1)).abs().max()) > 1e-2, "a trained-away ControlNet must steer the images"
    rows = conditioning_sweep(pipe, scratch, PROMPTS, y, scales=(0.0, 1.0), seed=3, num_inference_steps=8)
    assert float((rows[0]["images"] - (reference * 2 - 1)).abs().max()) < 1e-4, "scale 0 must be the plain U-Net"
    assert float((rows[1]["images"] - ours).abs().max()) == 0.0
    assert all(0 <= r["f1"] <= 1 for r in rows)


def test_controlnet_loss_trains_only_the_copy(pipe):
    net = ScratchControlNet(pipe.unet, factor=pipe.vae_scale_factor)
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    loss = controlnet_loss(pipe, net, latents, ids, _conditions(), generator=g)
    loss.backward()
    assert net.controlnet_mid_block.weight.grad.abs().sum() > 0, "the zero convolutions must receive gradients"
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_caption_dropout_replaces_whole_prompts_by_the_empty_one(pipe):
    ids = pipe.tokenizer(PROMPTS * 200, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids                        # (400, L)
    empty = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                           return_tensors="pt").input_ids[0]                   # (L,)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_captions(ids, empty, 0.0, g), ids)
    assert (drop_captions(ids, empty, 1.0, g) == empty).all()
    half = drop_captions(ids, empty, 0.5, g)
    dropped = (half == empty).all(1)                                           # (400,) whole rows only
    assert ((half == ids).all(1) | dropped).all() and 0.4 < float(dropped.float().mean()) < 0.6


def test_a_short_controlnet_training_lowers_the_loss(pipe):
    images, captions, conditions = control_dataset(16, "canny", seed=0)
    assert conditions.shape == (16, 3, 32, 32) and set(conditions.unique().tolist()) <= {0.0, 1.0}
    net = ScratchControlNet(pipe.unet, factor=pipe.vae_scale_factor)
    frozen = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = train_controlnet(pipe, net, images, captions, conditions, steps=25, lr=1e-3, batch_size=8, seed=0)
    report = (f"ControlNet loss {result['eval_before']:.4f} -> {result['eval_after']:.4f} in 25 steps "
              f"({result['seconds']:.1f} s; shuffled conditions {result['eval_shuffled']:.4f})")
    print(report)
    assert result["eval_after"] < 0.93 * result["eval_before"], report
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in frozen.items()), "the U-Net must stay frozen"
    assert float(net.controlnet_mid_block.weight.detach().abs().max()) > 0, "the zero convolutions must move"


# ----------------------------------------------------------------------------- img2img strength (§6.6)

def test_strength_counts_steps_as_the_pipeline_runs_them(pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    image = (_square()[1] + 1) / 2
    for strength in (0.15, 0.5, 1.0):
        ran = count_denoising_steps(img2img, prompt=PROMPTS[1:], image=image, strength=strength,
                                    num_inference_steps=10)
        assert ran == img2img_steps(10, strength) == len(img2img_timesteps(pipe.scheduler, 10, strength))
    rows = strength_table(pipe.scheduler, 25)
    signal = [r["signal"] for r in rows]
    assert signal[0] == 1.0 and all(a > b for a, b in zip(signal, signal[1:])), rows
    assert rows[-1]["steps"] == 25 and rows[-1]["signal"] < 0.15, rows


def test_measured_input_survival_falls_with_strength_and_inpainting_keeps_the_outside(pipe):
    if not pipe.diffcourse_trained:
        pytest.skip("measures what a trained model keeps of its input; random weights keep nothing")
    g = torch.Generator().manual_seed(0)
    objects = [sample_objects(g, 32, 1) for _ in range(4)]
    images = torch.stack([render_objects(o, 32) for o in objects])
    captions = [caption_for(o) for o in objects[::-1]]                         # other prompts: change is visible
    rows = input_survival(pipe, images, captions, strengths=(0.2, 0.6, 1.0), num_inference_steps=10)
    kept = [r["correlation_reconstruction"] for r in rows]
    report = "; ".join(f"strength {r['strength']}: corr {r['correlation_reconstruction']:.3f} "
                       f"(input {r['correlation']:.3f}), sqrt(abar) {r['signal']:.3f}" for r in rows)
    print(report)
    assert kept[0] > kept[1] > kept[2] and kept[0] > kept[-1] + 0.3, report
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., :, :16] = 1                                                       # repaint the left half
    change = inpaint_change(pipe, images, mask, captions, num_inference_steps=10)
    print(f"inpainting: mean change inside {change['inside']:.3f}, outside {change['outside']:.3f}")
    assert change["inside"] > 1.5 * change["outside"], change
