"""Inside the U-Net (book §3.6): traced shapes, parameter counts per stage, receptive field by eq. 3.8 and by gradient.

Files under test: diffcourse/models/anatomy.py, diffcourse/metrics.py (class_agreement).
"""
from __future__ import annotations

import pytest
import torch

from diffcourse.models import UNet, UNetConfig
from diffcourse.models.anatomy import influence, measured_receptive_field, parameter_counts, receptive_field, trace

pytestmark = pytest.mark.usefixtures("one_thread")


def random_unet(cfg: UNetConfig, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
    return model


def test_trace_shapes_follow_the_u():
    cfg = UNetConfig(sample_size=16, channels=(8, 16, 32), groups=4, time_dim=8, num_classes=10)
    model = UNet(cfg)
    out = trace(model, torch.randn(2, 1, 16, 16), torch.tensor([3, 4]), class_labels=torch.tensor([1, 2]))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert list(shapes)[0] == "conv_in" and list(shapes)[-1] == "conv_out"
    assert shapes["conv_in"] == (2, 8, 16, 16)
    assert shapes["downsamplers.0"] == (2, 8, 8, 8) and shapes["downsamplers.1"] == (2, 16, 4, 4)
    assert "downsamplers.2" not in shapes, "no downsampling after the lowest level"
    assert shapes["mid_attn"] == (2, 32, 4, 4)
    assert shapes["up_blocks.0.0"] == (2, 32, 4, 4) and shapes["upsamplers.0"] == (2, 32, 8, 8)
    assert shapes["up_blocks.2.0"] == (2, 8, 16, 16) and shapes["conv_out"] == (2, 1, 16, 16)
    assert all(not h.requires_grad for h in out.values())
    assert not any(m._forward_hooks for m in model.modules()), "trace() must remove its hooks"


def test_parameter_counts_add_up():
    model = UNet(UNetConfig(channels=(16, 32), groups=8, num_classes=10, context_dim=12))
    counts = parameter_counts(model)
    assert sum(counts.values()) == model.num_parameters()
    assert counts["class embedding"] == 11 * 64
    assert list(counts) == ["time embedding", "class embedding", "conv_in", "down level 0", "down level 1",
                            "middle", "up level 1", "up level 0", "output"]
    # a 3x3 conv has (9 C_in + 1) C_out parameters: conv_in 1 -> 16
    assert counts["conv_in"] == (9 * 1 + 1) * 16


@pytest.mark.parametrize("channels,blocks", [((8,), 1), ((8, 8), 1), ((8, 8), 2), ((8, 8, 8), 1)])
def test_receptive_field_formula_matches_gradient(channels, blocks):
    cfg = UNetConfig(sample_size=128, channels=channels, attention=False, groups=4, time_dim=8,
                     blocks_per_level=blocks)
    expected = receptive_field(cfg)["output"]
    assert measured_receptive_field(random_unet(cfg), 128) == expected


def test_receptive_field_is_an_upper_bound_and_grows_with_depth():
    rf = [receptive_field(UNetConfig(sample_size=256, channels=(8,) * n, attention=False, groups=4))["output"]
          for n in (1, 2, 3, 4)]
    assert rf == sorted(rf) and rf[-1] > 4 * rf[0]
    cfg = UNetConfig(sample_size=256, channels=(8,) * 4, attention=False, groups=4, time_dim=8)
    assert measured_receptive_field(random_unet(cfg), 256) <= rf[-1]


def test_attention_and_groupnorm_make_every_pixel_count():
    cfg = UNetConfig(sample_size=32, channels=(8, 8), attention=True, groups=4, time_dim=8)
    model = random_unet(cfg)
    assert measured_receptive_field(model, 32) == 32, "self-attention at the bottleneck sees the whole image"
    no_attn = random_unet(UNetConfig(sample_size=32, channels=(8,), attention=False, groups=4, time_dim=8))
    grad = influence(no_attn, torch.randn(1, 1, 32, 32), torch.tensor([5]), (16, 16))
    assert bool((grad > 0).all()), "GroupNorm's image-wide statistics reach every pixel (weakly)"
    assert measured_receptive_field(no_attn, 32) == receptive_field(no_attn.config)["output"] < 32


def test_measuring_a_fresh_unet_is_a_clear_error():
    with pytest.raises(ValueError, match="zero-initialised"):
        measured_receptive_field(UNet(UNetConfig(sample_size=16, channels=(8,), groups=4)), 16)


def test_class_agreement_counts_per_requested_class():
    from diffcourse.data import load_digits
    from diffcourse.metrics import class_agreement, load_digit_classifier

    x, y = load_digits("heldout")
    clf = load_digit_classifier()
    share = class_agreement(x, y, clf)
    assert share.shape == (10,) and float(share.mean()) > 0.95, f"real digits, true labels: {share}"
    wrong = class_agreement(x, (y + 1) % 10, clf)
    assert float(wrong.mean()) < 0.1, f"shifted labels must score near zero: {wrong}"
    only_threes = class_agreement(x[y == 3], y[y == 3], clf)
    assert torch.isnan(only_threes[0]) and only_threes[3] > 0.9
    with pytest.raises(ValueError, match="one label per sample"):
        class_agreement(x[:5], y[:4], clf)
