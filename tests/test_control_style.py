"""Book §6.4: measuring a style (palette read from the background, stripe amplitude), the styled training sets,
the chapter 4 VAE's ability to draw each style, and the style-lora folder format (zoo entry and loader).

Files under test: diffcourse/control/style.py, diffcourse/control/train_lora.py (styles, CLI, folder loader).
"""
from __future__ import annotations

import shlex

import pytest
import torch

from diffcourse.control.style import classify_style, stripe_contrast, style_centroids, style_features, style_share
from diffcourse.control.train_lora import STYLE_PRESETS, styled_images
from diffcourse.data.shapes import make_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def centroids():
    refs = {"plain": make_shapes(32, seed=9, max_shapes=1)[0]}
    refs.update({s: styled_images(32, s, seed=9)[0] for s in ("dusk", "teal")})
    return style_centroids(refs)


def test_features_are_the_background_colour_of_each_half():
    plain = make_shapes(4, seed=1, max_shapes=1)[0]
    assert style_features(plain).abs().max() < 0.02, "black backgrounds must read as zero"
    teal = style_features(styled_images(4, "teal", seed=1)[0])                  # (4, 6)
    want = torch.tensor(STYLE_PRESETS["teal"]["bg_colour"] * 2)
    assert (teal - want).abs().max() < 0.02, f"teal background read as {teal[0].tolist()}"
    dusk = style_features(styled_images(4, "dusk", seed=1)[0])
    top, bottom = dusk[:, :3].mean(0), dusk[:, 3:].mean(0)
    assert top[0] > bottom[0] + 0.1, "the dusk gradient is redder at the top than at the bottom"
    assert style_features(plain).shape == (4, 6)


def test_real_images_of_every_style_are_classified_as_their_style(centroids):
    for style in ("plain", "dusk", "teal"):
        images = make_shapes(24, seed=3, max_shapes=1)[0] if style == "plain" else styled_images(24, style, seed=3)[0]
        verdicts = classify_style(images, centroids)
        assert verdicts == [style] * 24, f"{style}: read as {verdicts}"
        assert style_share(images, style, centroids) == 1.0
    with pytest.raises(ValueError, match="unknown style"):
        style_share(images, "neon", centroids)


def test_stripe_contrast_finds_the_stripes_and_not_flat_shapes():
    stripes = stripe_contrast(styled_images(16, "stripes", seed=2)[0])
    flat = stripe_contrast(styled_images(16, "dusk", seed=2)[0])
    assert stripes.mean() > 0.12, f"stripes of amplitude 0.225 measured as {stripes.mean():.3f}"
    assert flat.max() < 0.05, f"flat shapes must have no stripe amplitude, got {flat.max():.3f}"
    shifted = stripe_contrast(torch.roll(styled_images(16, "stripes", seed=2)[0], 1, dims=-1))
    assert (shifted - stripes).abs().max() < 0.05, "the amplitude must not depend on the stripes' phase"


def test_styled_images_keep_the_plain_captions():
    images, captions = styled_images(6, "teal", seed=4)
    _, plain_captions = styled_images(6, "dusk", seed=4)
    assert images.shape == (6, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert captions == plain_captions, "the style must not change the shapes or their captions"
    assert not any(w in c for c in captions for w in ("teal", "dusk")), "captions are style-free"


@torch.no_grad()
def test_the_vae_keeps_the_palettes_and_loses_the_stripes(centroids):
    """The check the book runs before training a style LoRA: only what D(E(x)) keeps can be learned."""
    from diffcourse.latent.pipeline import load_pipeline
    from diffcourse.latent.vae import decode, encode

    try:
        vae = load_pipeline().vae
    except Exception as err:                                                  # zoo being rebuilt
        pytest.skip(f"zoo shapes_sd unavailable: {err}")
    s = vae.config.scaling_factor
    for style in ("dusk", "teal"):
        recon = decode(vae, encode(vae, styled_images(24, style, seed=5)[0], s), s)
        share = style_share(recon, style, centroids)
        assert share >= 0.9, f"the VAE's reconstructions of {style} read as {style} in only {share:.0%}"
    real = styled_images(24, "stripes", seed=5)[0]
    kept = float(stripe_contrast(decode(vae, encode(vae, real, s), s)).mean() / stripe_contrast(real).mean())
    assert kept < 0.5, f"the VAE (f = 4) was expected to lose 3-pixel stripes; it kept {kept:.0%} of the amplitude"


def test_style_lora_command_parses_and_is_canonical():
    from diffcourse.train import build_parser, canonical_command

    line = ("python -m diffcourse.train style-lora --base zoo/shapes_sd --out zoo/shapes_lora_dusk --style dusk "
            "--images 16 --steps 200 --batch-size 8 --lr 0.005 --rank 4 --alpha 4.0 "
            "--targets to_q,to_k,to_v,to_out.0 --p-drop-caption 0.5 --seed 0 --threads 1")
    args = build_parser().parse_args(shlex.split(line)[3:])
    assert canonical_command(args) == line


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")       # two adapters: intended
def test_shipped_style_loras_load_and_change_the_unet():
    from diffcourse import zoo
    from diffcourse.control.peft_lora import max_disagreement
    from diffcourse.control.train_lora import STYLE_LORAS
    from diffcourse.latent.pipeline import load_pipeline

    if not all(name in zoo.names() for name in STYLE_LORAS.values()):
        pytest.skip("the style LoRAs are not in this zoo's manifest")
    pipe = load_pipeline()
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for style, name in STYLE_LORAS.items():
        loaded = zoo.load(name, "cpu")
        assert loaded.meta["style"] == style and loaded.meta["config"]["r"] >= 1
        assert loaded.meta["eval_loss_after"] < loaded.meta["eval_loss_before"]
        pipe.load_lora_weights(str(zoo.verify(name)), adapter_name=style)
    reference = load_pipeline().unet
    with torch.no_grad():
        pipe.set_adapters(list(STYLE_LORAS), adapter_weights=[0.0] * len(STYLE_LORAS))
        assert max_disagreement(pipe.unet, reference) == 0.0, "scale 0 must be the base model"
        pipe.set_adapters(list(STYLE_LORAS)[:1], adapter_weights=[1.0])
        assert max_disagreement(pipe.unet, reference) > 1e-3, "the trained LoRA must change the U-Net's output"
    pipe.unload_lora_weights()
    after = pipe.unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base.items()), "unloading must restore the base weights"


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")
def test_style_lora_cli_writes_a_float16_folder_that_diffusers_and_the_zoo_read(tmp_path):
    from diffcourse import zoo
    from diffcourse.control.peft_lora import LORA_FILE, max_disagreement
    from diffcourse.control.train_lora import is_lora_folder, load_lora_folder
    from diffcourse.latent.pipeline import load_pipeline, pipeline_folder
    from diffcourse.train import main
    from safetensors import safe_open

    try:
        base = pipeline_folder()
    except Exception as err:                                                  # zoo being rebuilt
        pytest.skip(f"zoo shapes_sd unavailable: {err}")
    out = tmp_path / "lora_teal"
    argv = ["style-lora", "--base", str(base), "--out", str(out), "--style", "teal", "--images", "4", "--steps", "3",
            "--batch-size", "2", "--rank", "2", "--alpha", "4.0", "--no-progress"]
    assert main(argv) == 0
    assert is_lora_folder(out) and sorted(p.name for p in out.iterdir()) == ["diffcourse.json", LORA_FILE]
    with safe_open(str(out / LORA_FILE), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert dtypes == {torch.float16}, f"the shipped LoRA must be float16, found {dtypes}"
        assert "unet.lora_alpha" in (f.metadata() or {}).get("lora_adapter_metadata", ""), "alpha must be saved too"
    weights, meta = load_lora_folder(out)
    assert meta["config"] == {"r": 2, "alpha": 4.0, "targets": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert sum(p.numel() for p in weights.parameters()) == meta["trainable_parameters"]
    first = zoo.sha256_of(out / LORA_FILE)
    import os
    import subprocess
    import sys

    for hash_seed in ("1", "2"):                          # peft keeps target_modules in a set: order varies by process
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        subprocess.run([sys.executable, "-m", "diffcourse.train", *argv], check=True, env=env, capture_output=True)
        assert zoo.sha256_of(out / LORA_FILE) == first, "the same command must write the same bytes in any process"
    pipe, reference = load_pipeline(), load_pipeline()
    pipe.load_lora_weights(str(out), adapter_name="teal")
    layer = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn1.to_q") and hasattr(m, "scaling"))
    assert layer.scaling["teal"] == 2.0, f"alpha / r must be 4 / 2 after loading, got {layer.scaling['teal']}"
    with torch.no_grad():
        assert max_disagreement(pipe.unet, reference.unet) > 0, "3 steps of training must change the U-Net"


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")
def test_shipped_style_loras_take_their_style(centroids):
    """Book §6.4, "style taken": at s = 1 each shipped LoRA turns plain samples into its palette. Measured on
    these 24 held-out captions (15 DDIM steps, w = 4): the base model draws 100% plain; dusk 58% dusk, teal 79%
    teal. With the previous recipe (no caption dropout, lr 0.01), the dusk LoRA on this base drew 0% dusk: guidance
    extrapolated a styled conditional prediction away from an unstyled unconditional one, into green."""
    from diffcourse import zoo
    from diffcourse.control.train_lora import STYLE_LORAS
    from diffcourse.latent.pipeline import load_pipeline

    if not all(name in zoo.names() for name in STYLE_LORAS.values()):
        pytest.skip("the style LoRAs are not in this zoo's manifest")
    pipe = load_pipeline()
    for style, name in STYLE_LORAS.items():
        pipe.load_lora_weights(str(zoo.verify(name)), adapter_name=style)
    _, prompts, _ = make_shapes(24, seed=77, max_shapes=1)

    def share(weights: dict, style: str) -> float:
        pipe.set_adapters(list(STYLE_LORAS), adapter_weights=[weights.get(k, 0.0) for k in STYLE_LORAS])
        x = pipe(prompts, generator=torch.Generator().manual_seed(0), num_inference_steps=15, guidance_scale=4.0,
                 output_type="pt").images * 2 - 1                                  # (24, 3, 32, 32)
        return style_share(x, style, centroids)

    assert share({}, "plain") == 1.0, "the base model draws shapes on black"
    assert share({"dusk": 1.0}, "dusk") >= 0.4, "the dusk LoRA at s = 1 should make most samples dusk"
    assert share({"teal": 1.0}, "teal") >= 0.6, "the teal LoRA at s = 1 should make most samples teal"
