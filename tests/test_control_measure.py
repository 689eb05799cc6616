"""Chapter 6, §6.3: the shipped ControlNet (zoo ``shapes_controlnet``) follows its edges, measured through diffusers'
``StableDiffusionControlNetPipeline`` loaded from the zoo folders; the scale sweep, the weak-condition trap and
the training command that writes the zoo folder.

Files under test: diffcourse/control/measure.py, controlnet.py (save/load), train_controlnet.py (CLI).
"""
from __future__ import annotations

import json

import pytest
import torch

from diffcourse.control.controlnet import ScratchControlNet, load_controlnet, load_controlnet_pipeline, sample_controlled
from diffcourse.control.measure import (DEGRADATIONS, degrade, edge_f1_table, generate, held_out_conditions,
                                        weak_condition_table)

pytestmark = pytest.mark.usefixtures("one_thread")

N = 8                                                                           # held-out conditions per test


@pytest.fixture(scope="module")
def control():
    return load_controlnet_pipeline()                                           # zoo shapes_sd + shapes_controlnet


@pytest.fixture(scope="module")
def held_out():
    return held_out_conditions(N)                                               # (captions, (N, 3, 32, 32))


def test_shipped_controlnet_embeds_the_condition_at_the_latent_resolution(control):
    net = control.controlnet
    factor = control.vae_scale_factor
    assert factor == 4 and len(net.config.conditioning_embedding_out_channels) == 3, "log2(f) + 1 = 3 entries"
    y = held_out_conditions(2)[1]
    e = net.controlnet_cond_embedding(y)
    assert e.shape == (2, control.unet.config.block_out_channels[0], 32 // factor, 32 // factor), e.shape
    assert e.shape[-1] == control.unet.config.sample_size, "E lands on the U-Net's latent grid"
    assert float(e.detach().abs().max()) > 0, "a trained embedding is no longer zero"


def test_trained_controlnet_beats_the_same_prompt_without_it(control, held_out):
    captions, conditions = held_out
    empty = edge_f1_table(control, [""] * N, conditions, scales=(0.0, 1.0), seed=0)
    report = ", ".join(f"scale {r['scale']}: F1 {r['f1']:.3f}" for r in empty)
    print("empty prompt:", report)
    by = {r["scale"]: r for r in empty}
    assert by[1.0]["f1"] > by[None]["f1"] + 0.4, f"the ControlNet should draw the condition's edges: {report}"
    assert by[1.0]["f1"] > 0.8, report
    assert abs(by[0.0]["f1"] - by[None]["f1"]) < 1e-6, f"scale 0 must be the plain pipeline: {report}"
    text = edge_f1_table(control, captions, conditions, scales=(1.0,), seed=0)
    report = ", ".join(f"scale {r['scale']}: F1 {r['f1']:.3f}" for r in text)
    print("captions:", report)
    assert text[0]["f1"] > text[1]["f1"] + 0.05, f"edges should sharpen what the caption already says: {report}"


def test_the_course_loop_draws_what_the_pipeline_draws_with_the_shipped_weights(control, held_out):
    captions, conditions = held_out
    theirs = generate(control, captions[:2], conditions[:2], 1.5, seed=4, num_inference_steps=6)
    ours = generate(control, captions[:2], conditions[:2], 1.5, seed=4, num_inference_steps=6, loop="course")
    assert float((theirs - ours).abs().max()) < 1e-4
    scratch = ScratchControlNet(control.unet, factor=control.vae_scale_factor,
                                embedding_first=control.controlnet.config.conditioning_embedding_out_channels[0])
    scratch.load_state_dict(load_controlnet().state_dict(), strict=True)
    again = sample_controlled(control, captions[:2], conditions[:2], scratch, seed=4, num_inference_steps=6,
                              conditioning_scale=1.5)
    assert float((again - theirs).abs().max()) < 1e-4, "the scratch ControlNet with the zoo weights must agree"


def test_degrade_makes_the_condition_weaker_as_it_says():
    _, y = held_out_conditions(4)
    edges = y[:, :1] > 0.5
    for kind in DEGRADATIONS:
        assert torch.equal(degrade(y, kind, 0.0), y), kind
    noisy = degrade(y, "noise", 0.2)[:, :1] > 0.5
    assert (noisy >= edges).all() and 0.15 < float((noisy & ~edges).sum() / (~edges).sum()) < 0.25
    dropped = degrade(y, "drop", 0.5)[:, :1] > 0.5
    assert (dropped <= edges).all() and 0.35 < float(dropped.sum() / edges.sum()) < 0.65
    cropped = degrade(y, "crop", 0.25)
    assert cropped[..., 24:].sum() == 0 and torch.equal(cropped[..., :24], y[..., :24])
    with pytest.raises(ValueError):
        degrade(y, "blur", 0.1)


def test_a_weak_condition_is_not_rescued_by_the_controlnet(control, held_out):
    _, conditions = held_out
    rows = weak_condition_table(control, [""] * N, conditions, {"drop": (0.0, 0.9), "noise": (0.3,)}, scale=1.0)
    report = "; ".join(f"{r['kind']} {r['amount']}: F1 vs clean {r['f1_clean']:.3f}, vs given {r['f1_given']:.3f}"
                       for r in rows)
    print(report)
    clean, dropped, noisy = rows
    assert dropped["f1_clean"] < clean["f1_clean"] - 0.2, report
    assert noisy["f1_clean"] < clean["f1_clean"] - 0.2, report
    louder = weak_condition_table(control, [""] * N, conditions, {"drop": (0.9,)}, scale=2.0)[0]
    print(f"drop 0.9 at scale 2: F1 vs clean {louder['f1_clean']:.3f}")
    assert louder["f1_clean"] < clean["f1_clean"] - 0.2, "a larger scale does not restore the missing edges"


def test_the_training_command_writes_a_float16_diffusers_folder(tmp_path):
    from diffusers import ControlNetModel
    from safetensors import safe_open

    from diffcourse.train import main

    out = tmp_path / "cn"
    assert main(["controlnet", "--out", str(out), "--images", "16", "--steps", "2", "--batch-size", "4",
                 "--eval-samples", "2", "--no-progress"]) == 0
    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    net = ControlNetModel.from_pretrained(str(out))
    assert list(net.config.conditioning_embedding_out_channels) == [8, 16, 32]
    meta = json.loads((out / "diffcourse.json").read_text())
    assert meta["command"].startswith("python -m diffcourse.train controlnet ") and meta["steps"] == 2
    assert meta["model_class"] == "ControlNetModel" and meta["prediction_type"] == "v_prediction"


def test_box_agreement_scores_a_shape_in_its_box_and_nothing_outside():
    from diffcourse.control.measure import box_agreement

    box = torch.zeros(3, 3, 32, 32)
    box[:, :, 4:14, 4:14] = 1.0                                                 # the same box three times
    images = -torch.ones(3, 3, 32, 32)                                          # black, [-1, 1]
    images[0, 0, 5:13, 5:13] = 1.0                                              # a red square inside the box
    images[1, 1, 20:28, 20:28] = 1.0                                            # a green square elsewhere
    scores = box_agreement(box, images)                                         # image 2 stays black
    assert scores["inside"].tolist() == [1.0, 0.0, 0.0]
    assert scores["iou"][0].item() == pytest.approx(64 / 100) and scores["iou"][1] == 0 and scores["iou"][2] == 0
    assert torch.equal(images[2], -torch.ones(3, 32, 32)), "box_agreement must not modify its inputs"


def test_shipped_position_controlnet_puts_the_shape_in_its_box():
    from diffcourse import zoo
    from diffcourse.control.controlnet import controlnet_pipeline
    from diffcourse.control.measure import box_table
    from diffcourse.latent.pipeline import load_pipeline

    entry = zoo.entry("shapes_controlnet_position")
    assert "--condition position" in entry["command"] and entry["eval_loss"]["after"] < entry["eval_loss"]["shuffled"]
    pipe = controlnet_pipeline(load_pipeline(), load_controlnet(zoo.verify("shapes_controlnet_position")))
    _, boxes = held_out_conditions(16, condition="position")
    off, on = box_table(pipe, [""] * 16, boxes, scales=(0.0, 1.0), baseline=False)
    assert on["inside"] >= 0.8 and on["inside"] > off["inside"] + 0.5, (off, on)
    assert on["iou"] > off["iou"] + 0.2, (off, on)
