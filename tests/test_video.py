"""Chapter 8 reference code (diffcourse.video): reshaping, temporal attention, inflation, spacetime patches,
consistency metrics, diffusers' motion modules and the shipped video model (book §8)."""
from __future__ import annotations

import math

import pytest
import torch

from diffcourse.data.video import MovingShapesDataset, make_moving_shapes, render_clip
from diffcourse.models.unet import UNet, UNetConfig
from diffcourse.video.consistency import clip_consistency, consistency_table
from diffcourse.video.inflate import VideoUNet, VideoUNetConfig, inflate
from diffcourse.video.reshape import (batch_to_frames, frames_to_batch, from_spatial_tokens, from_temporal_tokens,
                                      to_spatial_tokens, to_temporal_tokens)
from diffcourse.video.spacetime import (PUBLISHED, SpacetimeDiT, SpacetimeDiTConfig, latent_grid,
                                        spacetime_patchify, spacetime_unpatchify, token_count)
from diffcourse.video.temporal import TemporalAttention, frame_position_embedding


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- reshape (§8.2)

def test_reshapes_round_trip_and_put_the_right_values_in_each_token():
    x = torch.randn(2, 3, 5, 4, 6)                                                   # (B, C, F, H, W)
    assert torch.equal(batch_to_frames(frames_to_batch(x), 5), x)
    assert torch.equal(from_spatial_tokens(to_spatial_tokens(x), 5, 4, 6), x)
    assert torch.equal(from_temporal_tokens(to_temporal_tokens(x), 4, 6), x)
    b, f, i, j = 1, 3, 2, 5
    assert torch.equal(frames_to_batch(x)[b * 5 + f], x[b, :, f])                    # frame f of clip b
    assert torch.equal(to_spatial_tokens(x)[b * 5 + f, i * 6 + j], x[b, :, f, i, j])   # token (i, j) of that frame
    assert torch.equal(to_temporal_tokens(x)[(b * 4 + i) * 6 + j, f], x[b, :, f, i, j])  # frame f at pixel (i, j)
    assert to_spatial_tokens(x).shape == (10, 24, 3) and to_temporal_tokens(x).shape == (48, 5, 3)
    with pytest.raises(ValueError):
        batch_to_frames(torch.randn(7, 3, 4, 4), 2)


# ----------------------------------------------------------------------------- temporal attention (§8.3)

def test_frame_position_embedding_is_the_sinusoidal_code():
    P = frame_position_embedding(6, 8)
    assert P.shape == (6, 8)
    assert torch.allclose(P[:, 0], torch.sin(torch.arange(6.0)))
    assert torch.allclose(P[:, 1], torch.cos(torch.arange(6.0)))
    assert torch.allclose(P[3, 2], torch.sin(torch.tensor(3.0 / 10_000 ** (2 / 8))))
    assert len({tuple(r.tolist()) for r in P}) == 6, "every frame needs its own code"


def test_fresh_temporal_attention_is_the_identity_and_mixes_only_across_frames():
    layer = TemporalAttention(8, heads=2)
    x = torch.randn(2 * 5, 8, 3, 4)                                                  # (B*F, C, H, W)
    assert torch.equal(layer(x, 5), x), "a zero-initialised output projection makes the layer the identity"
    torch.nn.init.normal_(layer.proj.weight)
    y = batch_to_frames(layer(x, 5), 5)                                              # (B, C, F, H, W)
    x2 = batch_to_frames(x, 5).clone()
    x2[1, :, 3, 2, 1] += torch.randn(8)                                              # clip 1, frame 3, pixel (2, 1)
    y2 = batch_to_frames(layer(frames_to_batch(x2), 5), 5)
    changed = (y2 - y).abs().amax(dim=1) > 0                                         # (B, F, H, W)
    expected = torch.zeros_like(changed)
    expected[1, :, 2, 1] = True
    assert torch.equal(changed, expected), "only pixel (2, 1) of clip 1 may change, in every frame"


def test_temporal_attention_sees_frame_order_through_the_position_code():
    layer = TemporalAttention(8)
    torch.nn.init.normal_(layer.proj.weight)
    x = torch.randn(1, 8, 4, 2, 2)
    perm = torch.tensor([2, 0, 3, 1])
    y = batch_to_frames(layer(frames_to_batch(x), 4), 4)
    y_perm = batch_to_frames(layer(frames_to_batch(x[:, :, perm]), 4), 4)
    assert not torch.allclose(y_perm, y[:, :, perm], atol=1e-5), "without P the layer would be permutation-equivariant"


# ----------------------------------------------------------------------------- inflation (§8.4)

def _trained_looking_unet(**kw) -> UNet:
    unet = UNet(UNetConfig(**dict(dict(in_channels=3, out_channels=3, channels=(8, 16), time_dim=16, groups=4), **kw)))
    with torch.no_grad():
        for p in unet.parameters():                                                  # no zeros anywhere
            p.add_(0.1 * torch.randn_like(p))
    return unet


@pytest.mark.parametrize("kw", [dict(), dict(blocks_per_level=2, skips=False), dict(num_classes=3)])
def test_inflated_unet_equals_the_image_unet_frame_by_frame_at_init(kw):
    unet = _trained_looking_unet(**kw)
    video = inflate(unet)
    x, t = torch.randn(2, 3, 4, 8, 8), torch.tensor([5, 800])
    labels = torch.tensor([0, 2]) if kw.get("num_classes") else None
    with torch.no_grad():
        out = video(x, t, class_labels=labels)                                       # (B, C, F, H, W)
        frames = unet(frames_to_batch(x), t.repeat_interleave(4),
                      class_labels=None if labels is None else labels.repeat_interleave(4))
        assert out.shape == x.shape and out.abs().mean() > 0.01
        assert torch.equal(out, batch_to_frames(frames, 4)), "eq. 8.5 must hold exactly at initialisation"
        single = unet(x[1, :, 2][None], t[1:], class_labels=None if labels is None else labels[1:])  # one frame
        assert torch.allclose(out[1, :, 2], single[0], atol=1e-5)
        for layer in video.temporal_down:
            torch.nn.init.normal_(layer.proj.weight)
        assert not torch.allclose(video(x, t, class_labels=labels), out), "trained temporal layers must change it"


def test_freeze_spatial_trains_only_the_temporal_layers():
    video = VideoUNet(VideoUNetConfig.tiny()).freeze_spatial()
    loss = video(torch.randn(1, 1, 3, 8, 8), torch.tensor([10])).pow(2).mean() + sum(
        p.sum() for p in video.temporal_parameters())
    loss.backward()
    assert all(p.grad is None for p in video.unet.parameters())
    assert all(p.grad is not None for p in video.temporal_parameters())


# ----------------------------------------------------------------------------- spacetime patches (§8.7)

def test_spacetime_patchify_round_trips_and_cuts_tubelets():
    x = torch.randn(2, 3, 8, 16, 12)
    tokens = spacetime_patchify(x, 2, 4)
    assert tokens.shape == (2, 4 * 4 * 3, 2 * 4 * 4 * 3)
    assert torch.equal(spacetime_unpatchify(tokens, 2, 4, 3, 8, 16, 12), x)
    # token (i=1, j=2, k=0) holds frames 2-3, rows 8-11, columns 0-3, ordered (pt, p, p, C)
    tube = x[0, :, 2:4, 8:12, 0:4].permute(1, 2, 3, 0).reshape(-1)
    assert torch.equal(tokens[0, (1 * 4 + 2) * 3 + 0], tube)
    with pytest.raises(ValueError):
        spacetime_patchify(x, 3, 4)


def test_token_count_arithmetic():
    assert latent_grid(49, 480, 720) == (13, 60, 90)                                  # causal 4x8x8 VAE
    assert latent_grid(48, 480, 720, causal=False) == (12, 60, 90)
    cog = token_count(**PUBLISHED["CogVideoX-5B"], causal=True)
    assert cog["grid"] == (13, 30, 45) and cog["tokens"] == 17550
    wan = token_count(**PUBLISHED["Wan2.1-14B (480p)"], causal=True)
    assert wan["tokens"] == 21 * 30 * 52
    small = token_count(8, 16, 16, patch=(2, 4))
    assert small["grid"] == (4, 4, 4) and small["tokens"] == 64 and small["full_pairs"] == 64 ** 2
    assert small["factorised_pairs"] == 4 * 16 ** 2 + 16 * 4 ** 2
    assert SpacetimeDiTConfig().num_tokens == 64


def test_spacetime_dit_shapes_zero_init_and_full_attention():
    model = SpacetimeDiT(SpacetimeDiTConfig(frames=4, input_size=8, patch_t=2, patch_size=4, hidden_size=32,
                                            depth=2, num_heads=2))
    x = torch.randn(2, 3, 4, 8, 8)
    assert torch.equal(model(x, torch.tensor([1.0, 500.0])), torch.zeros_like(x)), "adaLN-Zero: a fresh DiT outputs 0"
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    y = model(x, torch.tensor(10.0))
    x2 = x.clone()
    x2[0, :, 0, 0, 0] += 1.0                                                         # one pixel of the first tubelet
    changed = (model(x2, torch.tensor(10.0)) - y).abs().amax(dim=1)                  # (B, F, H, W)
    assert (changed[0, 3, 4:, 4:] > 0).all(), "full spacetime attention reaches the far tubelet"
    assert (changed[1] == 0).all(), "clips do not mix"


# ----------------------------------------------------------------------------- consistency (§8.6)

def test_consistency_metric_ranks_a_steady_clip_above_a_flickering_one():
    ds = MovingShapesDataset(4, num_frames=8, size=16, radius=0.2)
    for i in range(4):
        m = ds.motion(i)
        steady = ds[i]["video"]
        assert torch.equal(steady, render_clip(m, 16))
        others = [c for c in ("red", "green", "blue", "yellow") if c != m["colour"]]
        flicker = render_clip(m, 16, colours=[m["colour"] if f % 2 else others[f % 3] for f in range(8)])
        s, fl = clip_consistency(steady), clip_consistency(flicker)
        assert s["presence"] == 1.0 and s["colour_std"] < 0.05 and s["motion"] > 0.3
        assert fl["colour_std"] > s["colour_std"] + 0.2, (s, fl)
        shuffled = steady[torch.tensor([0, 5, 2, 7, 1, 6, 3, 4])]                    # jumpy positions
        assert clip_consistency(shuffled)["jerk"] > s["jerk"] + 1.0
    empty = torch.full((8, 3, 16, 16), -1.0)
    assert math.isnan(clip_consistency(empty)["jerk"]) and clip_consistency(empty)["presence"] == 0.0


def test_consistency_table_of_real_clips_against_frames_drawn_independently():
    clips, _, _ = make_moving_shapes(24, num_frames=8, size=16, radius=0.2)
    g = torch.Generator().manual_seed(0)
    mixed = clips[torch.randint(24, (24, 8), generator=g), torch.arange(8)]          # each frame from a random clip
    real, indep = consistency_table(clips), consistency_table(mixed)
    assert real["colour_std"] < 0.05 < 0.2 < indep["colour_std"]
    assert real["jerk"] * 4 < indep["jerk"]


# ----------------------------------------------------------------------------- diffusers (§8.8)

def test_diffusers_motion_model_shapes_and_zeroed_modules_equal_the_image_unet():
    from diffcourse.video.diffusers_motion import (build_image_unet, build_motion_adapter, build_motion_unet,
                                                   image_unet_per_frame, motion_modules, motion_unet_call,
                                                   zero_motion_modules)

    image = build_image_unet()
    adapter = build_motion_adapter()
    assert max(float(m.proj_out.weight.detach().abs().max()) for m in motion_modules(adapter)) > 0.01, \
        "a fresh MotionAdapter is not zero-initialised"
    motion = build_motion_unet(image, adapter)
    x, ctx, t = torch.randn(2, 4, 5, 16, 16), torch.randn(2, 3, 32), torch.tensor([10, 600])
    with torch.no_grad():
        ref = image_unet_per_frame(image, x, t, ctx)                                 # (B, C, F, H, W)
        out = motion_unet_call(motion, x, t, ctx)
        assert out.shape == x.shape == ref.shape
        assert (out - ref).abs().max() > 1e-2, "random motion modules change the output"
        assert zero_motion_modules(motion) == len(motion_modules(motion)) > 0
        out = motion_unet_call(motion, x, t, ctx)
        assert torch.allclose(out, ref, atol=1e-5), float((out - ref).abs().max())


# ----------------------------------------------------------------------------- training and the shipped model (§8.5-8.6)

def test_video_subcommand_trains_and_saves_a_loadable_video_unet(tmp_path):
    from diffcourse.train import build_parser, canonical_command
    from diffcourse.training import load_checkpoint
    from diffcourse.video.train_video import train_video

    out = tmp_path / "v.safetensors"
    args = build_parser().parse_args(["video", "--out", str(out), "--num-clips", "8", "--frames", "4", "--size", "8",
                                      "--image-steps", "3", "--video-steps", "3", "--batch-size", "2",
                                      "--image-batch-size", "8", "--no-progress"])
    info = train_video(args)
    model, meta = load_checkpoint(out, "cpu")
    assert isinstance(model, VideoUNet) and meta["frames"] == 4 and meta["command"] == canonical_command(args)
    assert model(torch.randn(1, 3, 4, 8, 8), torch.tensor([3])).shape == (1, 3, 4, 8, 8)
    assert info["seconds"] > 0 and math.isfinite(meta["final_loss"])


def test_shipped_video_model_is_small_and_more_consistent_than_its_image_model_per_frame():
    from diffcourse import zoo
    from diffcourse.video.train_video import compare_consistency

    entry = zoo.entry("shapes_video")
    assert entry["bytes"] < 400_000
    m = zoo.load("shapes_video", "cpu")
    assert isinstance(m.model, VideoUNet) and all(p.dtype == torch.float32 for p in m.model.parameters())
    table = compare_consistency(m.model, m.schedule, m.meta["frames"], n=16, seed=0, num_steps=20)
    assert table["temporal"]["presence"] > 0.9 and table["temporal"]["motion"] > 0.3
    assert table["temporal"]["colour_std"] < table["per_frame"]["colour_std"], table
