"""Book §6.4-§6.5: LoRA from scratch (identity at init, merge/unmerge, scale), against peft numerically, the
pipeline's save/load/set_adapters/fuse round trip, its size against the full U-Net, and a short training.

Files under test: diffcourse/control/lora.py, peft_lora.py, train_lora.py.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from diffcourse.control.lora import (LoRALinear, add_lora, lora_layers, lora_state_dict, merge_lora, set_lora_scale,
                                     trainable_share, unmerge_lora)
from diffcourse.control.peft_lora import (add_peft_lora, copy_scratch_to_peft, full_model_size, lora_file_size,
                                          max_disagreement, peft_lora_layers, save_unet_lora)
from diffcourse.control.train_lora import styled_images, train_lora

from latent_parts import shapes_sd_or_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return shapes_sd_or_tiny(tmp_path_factory.mktemp("tiny_sd"), "tiny pipeline for tests/test_control_lora.py")[0]


def _with_unet(pipe, unet):
    """The same pipeline class and parts, with another U-Net."""
    return type(pipe)(**dict(pipe.components, unet=unet))


def _randomise_b(model, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(0, std, generator=g)


def _layer(seed=0, d_in=12, d_out=10):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


def test_lora_layer_is_the_base_layer_at_init_and_learns_through_b():
    base = _layer()
    lora = LoRALinear(copy.deepcopy(base), r=3, alpha=6, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 7, 12)                                                   # (N, L, d_in)
    assert torch.equal(lora(x), base(x)), "B = 0 at init: the LoRA layer must return exactly W x + b"
    assert lora.lora_A.abs().sum() > 0, "A must be random (with A = B = 0 no gradient ever reaches either)"
    assert not lora.base.weight.requires_grad and not lora.base.bias.requires_grad, "W must be frozen"
    lora(x).pow(2).sum().backward()
    assert lora.lora_B.grad.abs().sum() > 0, "the first gradient on B must not be zero"
    assert lora.lora_A.grad.abs().sum() == 0, "with B = 0 the gradient on A is exactly zero at the first step"
    assert lora.scaling == 2.0 and lora.delta_weight().shape == (10, 12)


@torch.no_grad()
def test_merge_and_unmerge_round_trip():
    base = _layer(1).requires_grad_(False)
    lora = LoRALinear(copy.deepcopy(base), r=4, alpha=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora.lora_B.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    x = torch.randn(6, 12)
    unmerged = lora(x)
    expected = base(x) + 2.0 * (x @ lora.lora_A.t() @ lora.lora_B.t())        # eq. 6.5 written out
    assert (unmerged - expected).abs().max() < 1e-5
    lora.merge()
    assert lora.merged
    err_merged = float((lora(x) - unmerged).detach().abs().max())
    assert err_merged < 1e-5, f"merged forward differs from the unmerged one by {err_merged:.2e}"
    assert float((lora.base.weight - base.weight).abs().max()) > 1e-3, "merging must change W"
    with pytest.raises(RuntimeError):
        lora.merge()
    lora.scale = 0.5                                                            # re-merges with the new scale
    assert float((lora(x) - (base(x) + 0.5 * (unmerged - base(x)))).abs().max()) < 1e-5
    lora.unmerge()
    err = float((lora.base.weight - base.weight).abs().max())
    assert err < 1e-6, f"unmerge must give W back (up to float rounding): max error {err:.2e}"
    assert torch.equal(lora.base.bias, base.bias)


@torch.no_grad()
def test_scale_zero_is_the_base_model_and_the_scale_is_linear(pipe):
    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, r=4, alpha=4)
    _randomise_b(unet)
    assert max_disagreement(unet, pipe.unet) > 1e-3, "a LoRA with B != 0 must change the U-Net"
    set_lora_scale(unet, 0.0)
    assert max_disagreement(unet, pipe.unet) == 0.0, "scale 0 must be the base model exactly"
    x = torch.randn(6, 12)
    lora = LoRALinear(_layer(2), r=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora.lora_B.normal_(0, 0.3, generator=torch.Generator().manual_seed(3))
    full = lora(x)
    lora.scale = 0.25
    assert float((lora(x) - (lora.base(x) + 0.25 * (full - lora.base(x)))).abs().max()) < 1e-5


def test_add_lora_wraps_the_attention_projections_and_merges_in_the_unet(pipe):
    unet = copy.deepcopy(pipe.unet)
    names = add_lora(unet, r=4, alpha=4)
    assert names and all(n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0") for n in names)
    assert max_disagreement(unet, pipe.unet) == 0.0, "a freshly added LoRA must leave the U-Net unchanged"
    _randomise_b(unet)
    before = max_disagreement(unet, pipe.unet)
    reference = copy.deepcopy(unet)
    assert merge_lora(unet) == len(names)
    assert max_disagreement(unet, reference) < 1e-5
    unmerge_lora(unet)
    err = max(float((a.base.weight - b.base.weight).abs().max()) for a, b in zip(lora_layers(unet),
                                                                               lora_layers(reference)))
    assert err < 1e-6 and before > 1e-3
    assert set(lora_state_dict(unet)) == {f"{n}.lora_{m}" for n in names for m in "AB"}


def test_scratch_lora_equals_peft_numerically(pipe):
    ours = copy.deepcopy(pipe.unet)
    add_lora(ours, r=4, alpha=8, seed=0)
    _randomise_b(ours)
    theirs = add_peft_lora(copy.deepcopy(pipe.unet), r=4, alpha=8)
    assert max_disagreement(theirs, pipe.unet) == 0.0, "peft's B is zero at init too"
    copied = copy_scratch_to_peft(ours, theirs)
    assert copied == len(peft_lora_layers(theirs)) == len(lora_layers(ours))
    err = max_disagreement(ours, theirs)
    assert err < 1e-5, f"the course's LoRA and peft's differ by {err:.2e} with the same A, B, alpha, r"
    assert max_disagreement(ours, pipe.unet) > 1e-3
    other_alpha = add_peft_lora(copy.deepcopy(pipe.unet), r=4, alpha=4)
    with pytest.raises(ValueError, match="alpha/r"):
        copy_scratch_to_peft(ours, other_alpha)


def test_pipeline_save_load_set_adapters_fuse_round_trip(pipe, tmp_path):
    trained = add_peft_lora(copy.deepcopy(pipe.unet), r=4, alpha=8)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for layer in peft_lora_layers(trained).values():
            layer.lora_B["default"].weight.normal_(0, 0.05, generator=g)
    path = save_unet_lora(_with_unet(pipe, trained), tmp_path / "style")
    assert path.exists()
    fresh = _with_unet(pipe, copy.deepcopy(pipe.unet))
    fresh.load_lora_weights(str(tmp_path / "style"), adapter_name="style")
    err = max_disagreement(fresh.unet, trained)
    assert err < 1e-6, f"the loaded LoRA differs from the saved one by {err:.2e} (alpha lost?)"
    prompt, call = ["a large red circle at the top left"], dict(num_inference_steps=6, output_type="pt")
    image = fresh(prompt, generator=torch.Generator().manual_seed(0), **call).images
    fresh.set_adapters(["style"], adapter_weights=[0.0])
    assert max_disagreement(fresh.unet, pipe.unet) == 0.0, "adapter weight 0 must be the base U-Net"
    base_image = pipe(prompt, generator=torch.Generator().manual_seed(0), **call).images
    assert torch.allclose(fresh(prompt, generator=torch.Generator().manual_seed(0), **call).images, base_image,
                          atol=1e-6)
    fresh.set_adapters(["style"], adapter_weights=[1.0])
    fresh.fuse_lora(lora_scale=1.0)
    fused = fresh(prompt, generator=torch.Generator().manual_seed(0), **call).images
    assert float((fused - image).abs().max()) < 1e-4, "fusing must not change the images"
    assert float((image - base_image).abs().max()) > 1e-4, "the LoRA must change the images"
    fresh.unfuse_lora()
    fresh.unload_lora_weights()
    err = max_disagreement(fresh.unet, pipe.unet)
    assert err < 1e-5, f"unfuse + unload must give the base U-Net back, max error {err:.2e}"


def test_trainable_share_and_file_size_against_the_full_unet(pipe, tmp_path):
    unet = add_peft_lora(copy.deepcopy(pipe.unet), r=4, alpha=4)
    share = trainable_share(unet)
    lora_bytes = lora_file_size(save_unet_lora(_with_unet(pipe, unet), tmp_path / "lora").parent)
    full_bytes = full_model_size(pipe.unet, tmp_path / "full")
    report = (f"LoRA r=4 on the attention projections: {share['trainable']} of {share['total']} parameters "
              f"({100 * share['share']:.2f}%); file {lora_bytes} bytes vs full U-Net {full_bytes} bytes "
              f"({100 * lora_bytes / full_bytes:.2f}%)")
    print(report)
    assert 0 < share["share"] < 0.05, report
    assert lora_bytes < 0.05 * full_bytes, report
    ours = copy.deepcopy(pipe.unet)
    add_lora(ours, r=4, alpha=4)
    assert trainable_share(ours)["trainable"] == share["trainable"], "peft and the course's LoRA train as many"


def test_a_short_lora_training_lowers_the_loss(pipe):
    trained = _with_unet(pipe, copy.deepcopy(pipe.unet))
    add_lora(trained.unet, r=4, alpha=4, seed=0)
    frozen = {k: v.clone() for k, v in trained.unet.state_dict().items() if "lora_" not in k}
    images, captions = styled_images(16, "dusk", seed=0)
    result = train_lora(trained, images, captions, steps=40, lr=1e-2, batch_size=8, seed=0)
    report = (f"eval loss {result['eval_before']:.4f} -> {result['eval_after']:.4f} in 40 steps "
              f"({result['seconds']:.1f} s, {result['trainable']} trainable parameters)")
    print(report)
    assert result["eval_after"] < 0.8 * result["eval_before"], report
    after = trained.unet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items()), "training must only change A and B"
    set_lora_scale(trained.unet, 0.0)
    assert max_disagreement(trained.unet, pipe.unet) == 0.0


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")       # two adapters: intended
@torch.no_grad()
def test_two_loras_combine_as_a_weighted_sum_of_their_updates(pipe, tmp_path):
    for name, seed in (("a", 7), ("b", 8)):
        unet = add_peft_lora(copy.deepcopy(pipe.unet), r=4, alpha=4)
        g = torch.Generator().manual_seed(seed)
        for layer in peft_lora_layers(unet).values():
            layer.lora_B["default"].weight.normal_(0, 0.05, generator=g)
        save_unet_lora(_with_unet(pipe, unet), tmp_path / name)
    both = _with_unet(pipe, copy.deepcopy(pipe.unet))
    for name in "ab":
        both.load_lora_weights(str(tmp_path / name), adapter_name=name)
    layer_name, layer = next(iter(peft_lora_layers(both.unet).items()))
    x = torch.randn(3, 5, layer.in_features)                                   # (N, L, d_in)
    outputs = {}
    for wa, wb in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.7, -0.4)):
        both.set_adapters(["a", "b"], adapter_weights=[wa, wb])
        outputs[wa, wb] = layer(x)
    base = outputs[0.0, 0.0]
    combined = base + 0.7 * (outputs[1.0, 0.0] - base) - 0.4 * (outputs[0.0, 1.0] - base)
    err = float((outputs[0.7, -0.4] - combined).abs().max())
    assert err < 1e-5, f"{layer_name}: weights (0.7, -0.4) should give 0.7 dA - 0.4 dB; error {err:.2e}"
    assert float((outputs[1.0, 0.0] - outputs[0.0, 1.0]).abs().max()) > 1e-4, "the two LoRAs should differ"
    both.set_adapters(["a", "b"], adapter_weights=[0.0, 0.0])
    assert max_disagreement(both.unet, pipe.unet) == 0.0
