"""Book §4.8-§4.9: the course's Stable Diffusion in diffusers' real pipelines, offline; its prompt adherence.

Files under test: diffcourse/latent/pipeline.py, sample_latent.py, adherence.py, zoo/shapes_sd/.
"""
from __future__ import annotations

import shutil
import socket

import pytest
import torch

from diffcourse.latent.adherence import adherence_prompts, measure_adherence
from diffcourse.latent.attributes import attribute_matches, read_attributes
from diffcourse.latent.pipeline import (DEFAULTS, ENV_VAR, SCHEDULERS, generate, load_pipeline, pipeline_folder,
                                        read_pipeline_metadata)
from diffcourse.latent.sample_latent import sample_latent, schedule_of

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a large red circle at the top left", "a small blue square at the bottom right",
           "a large yellow triangle in the center", "a small cyan diamond on the left"]


@pytest.fixture(scope="module")
def folder():
    return pipeline_folder()                        # the zoo's shapes_sd, its digest verified


@pytest.fixture(scope="module")
def pipe(folder):
    return load_pipeline(folder)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted while loading the course's pipeline")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_pipeline_loads_offline_with_sockets_blocked_and_no_safety_warning(folder, no_network, capfd, caplog):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in ("text2img", "img2img", "inpaint"):
            p = load_pipeline(folder, kind=kind)
            assert p.safety_checker is None and p.unet.dtype == torch.float32, (kind, p.unet.dtype)
        images = generate(p, PROMPTS[:1], seed=0, num_inference_steps=3,
                          image=torch.zeros(1, 3, 32, 32), mask=torch.ones(1, 1, 32, 32))
    assert images.shape == (1, 3, 32, 32)
    said = capfd.readouterr().err + caplog.text + " ".join(str(w.message) for w in caught)
    assert "safety" not in said.lower(), f"loading warned about the safety checker:\n{said}"
    assert "Loading weights" not in said, "diffusers' loading bars should be off unless progress=True"


def test_weights_are_float16_on_disk_and_the_folder_is_small(folder):
    from safetensors import safe_open

    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= 3_000_000, f"the pipeline folder is {total / 1e6:.2f} MB, more than 3 MB"
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        with safe_open(str(folder / part), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"F16"}, f"{part} stores {dtypes}, expected float16"
    meta = read_pipeline_metadata(folder)
    assert meta["command"].startswith("python -m diffcourse.train latent-sd"), meta["command"]


def test_course_latent_loop_agrees_with_the_pipeline(pipe):
    """encode the text -> the course's DDIM in latent space with eq. 4.11 -> decode, vs diffusers (§4.8)."""
    ours = sample_latent(pipe, PROMPTS, seed=3, **DEFAULTS)
    theirs = generate(pipe, PROMPTS, seed=3)
    err = float((ours - theirs).abs().max())
    assert err < 2e-3, f"the course's loop and StableDiffusionPipeline differ by {err:.2e} on the same seed"
    other_seed = sample_latent(pipe, PROMPTS, seed=4, **DEFAULTS)
    assert float((other_seed - theirs).abs().max()) > 0.1, "another seed should give other images"
    unguided = sample_latent(pipe, PROMPTS, seed=3, num_inference_steps=25, guidance_scale=1.0)
    assert torch.allclose(unguided, generate(pipe, PROMPTS, seed=3, guidance_scale=1.0), atol=2e-3), \
        "guidance 1 (one U-Net call per step) should agree too"
    assert schedule_of(pipe.scheduler).T == pipe.scheduler.config.num_train_timesteps


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_swaps_run_and_keep_the_prompt(folder, name):
    p = load_pipeline(folder, scheduler=name)
    assert type(p.scheduler).__name__ == {"ddim": "DDIMScheduler", "dpm2m": "DPMSolverMultistepScheduler",
                                          "euler": "EulerDiscreteScheduler",
                                          "euler_a": "EulerAncestralDiscreteScheduler"}[name]
    images = generate(p, PROMPTS, seed=1, num_inference_steps=20)
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(images).all()
    colour = attribute_matches(images, PROMPTS)["colour"]
    assert int(colour.sum()) >= 3, f"{name}: only {int(colour.sum())} of 4 images have the prompt's colour"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_course_samplers_match_the_swapped_schedulers(folder, name):
    """Chapter 2's DDIM, DPM-Solver++(2M), Euler and Euler ancestral against diffusers' schedulers on the
    pipeline's grid ("leading", offset 1) and weights, same seed (book §4.8)."""
    p = load_pipeline(folder, scheduler=name)
    ours = sample_latent(p, PROMPTS[:2], seed=5, num_inference_steps=10, sampler=name)
    theirs = generate(p, PROMPTS[:2], seed=5, num_inference_steps=10)
    err = float((ours - theirs).abs().max())
    assert err < 2e-3, f"course {name} vs diffusers' scheduler: max difference {err:.2e}"


def test_img2img_and_inpainting_on_the_same_weights(folder):
    from diffcourse.data.shapes import make_shapes

    x, captions, _ = make_shapes(4, seed=99, max_shapes=1)
    i2i = load_pipeline(folder, kind="img2img")
    kept = generate(i2i, captions, seed=0, image=x, strength=0.3)
    redrawn = generate(i2i, captions, seed=0, image=x, strength=1.0)
    near = float((kept - x).abs().mean())
    assert near < float((redrawn - x).abs().mean()), "strength 0.3 should stay nearer the input than strength 1"
    assert near < 0.1, f"img2img at strength 0.3 moved the image by {near:.3f} on average"
    inpaint = load_pipeline(folder, kind="inpaint")
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., :, 16:] = 1                               # repaint the right half
    out = generate(inpaint, ["a large green circle on the right"] * 4, seed=0, image=x, mask=mask)
    assert out.shape == (4, 3, 32, 32)
    left_err = float((out - x)[..., :, :12].abs().mean())
    assert left_err < 0.1, f"inpainting changed the kept left part by {left_err:.3f} on average"
    greens = [read_attributes(torch.where(mask[i].bool(), out[i], -torch.ones_like(out[i])))["colour"]
              for i in range(4)]
    assert greens.count("green") >= 3, f"the repainted right halves show {greens}, asked for green"


def test_bad_input_gets_a_clear_error(pipe, folder):
    with pytest.raises(ValueError, match="never saw.*zebra"):
        generate(pipe, ["a large zebra circle at the top"])
    with pytest.raises(ValueError, match="empty"):
        generate(pipe, ["  "])
    i2i = load_pipeline(folder, kind="img2img")
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        generate(i2i, PROMPTS[:1], image=torch.zeros(1, 3, 64, 64))
    inpaint = load_pipeline(folder, kind="inpaint")
    with pytest.raises(ValueError, match="mask must be"):
        generate(inpaint, PROMPTS[:1], image=torch.zeros(1, 3, 32, 32), mask=torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match="unknown scheduler"):
        load_pipeline(folder, scheduler="heun")
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_latent(pipe, PROMPTS[:1], sampler="heun")


def test_diffcourse_sd_path_loads_a_local_folder(folder, tmp_path, monkeypatch, no_network):
    copy = tmp_path / "my_sd"
    shutil.copytree(folder, copy)
    monkeypatch.setenv(ENV_VAR, str(copy))
    assert pipeline_folder() == copy
    p = load_pipeline()
    assert str(copy) in str(p.config._name_or_path), p.config._name_or_path
    images = generate(p, PROMPTS[:1], seed=0, num_inference_steps=4)
    assert images.shape == (1, 3, 32, 32)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline()
    monkeypatch.delenv(ENV_VAR)
    assert pipeline_folder() == folder, "without the variable the zoo's folder is loaded"


def test_shipped_model_follows_its_prompts(pipe):
    """Prompt adherence at the chapter's defaults (book §4.9), against issue 11's floor: colour+position+shape
    >= 85%. Measured on the shipped model (VAE with the edge term eq. 4.5', U-Net 3,600 steps): colour, size and
    position 100%, shape 99% (95 of 96). The previous model (eq. 4.5 VAE, 1,800 steps) scored 55% jointly here:
    squares came back as circles."""
    scores = measure_adherence(pipe, 96, seed=2024)
    assert min(scores["colour"], scores["position"], scores["size"]) >= 0.95, f"prompt adherence of shapes_sd: {scores}"
    assert scores["colour+position+shape"] >= 0.85, f"below the course's 85% floor (issue 11): {scores}"
    assert len(set(adherence_prompts(96, seed=2024))) > 60, "the prompts should be varied"


def test_layout_follows_the_text_not_the_starting_noise(pipe):
    """Diagnosis (c) of the adherence hunt (book §4.7): an eps-predicting model read left/right from the
    starting noise (mirroring z_T mirrored its output in 11 of 17 cases); the v-predicting one follows the words."""
    from diffcourse.data.shapes import POSITIONS

    prompts = ["a large red circle at the top left", "a large blue square at the bottom right",
               "a small green diamond on the left", "a large yellow circle on the right"] * 3
    z = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    want = [0 if "left" in p else 2 for p in prompts]
    for latents in (z, z.flip(-1)):
        images = pipe(prompts, latents=latents, output_type="pt", **DEFAULTS).images * 2 - 1
        cols = [POSITIONS.index(read_attributes(x)["position"] or "center") % 3 for x in images]
        right = sum(c == w for c, w in zip(cols, want))
        assert right >= 10, f"{right} of {len(prompts)} images in the asked column (left/right): {cols}"
