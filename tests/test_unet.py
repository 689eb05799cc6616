"""The digits U-Net and the digit classifier: shapes, zero initialisation, checkpoints, training (book §2.1, §3).

Files under test: diffcourse/models/unet.py, diffcourse/models/classifier.py, diffcourse/train.py (digits, classifier).
"""
from __future__ import annotations

import pytest
import torch

from diffcourse.models import DigitClassifier, DigitClassifierConfig, UNet, UNetConfig, build_model, config_of
from diffcourse.models.classifier import accuracy, shift_augment, train_classifier
from diffcourse.models.unet import Downsample, ResBlock, SelfAttention, Upsample
from diffcourse.schedules import make_schedule
from diffcourse.training import TrainConfig, load_checkpoint, save_checkpoint, train


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(seed: int = 0, **changes) -> UNet:
    torch.manual_seed(seed)
    cfg = UNetConfig.tiny()
    for k, v in changes.items():
        setattr(cfg, k, v)
    return UNet(UNetConfig(**cfg.to_dict()))


@pytest.mark.parametrize("size,channels,attention", [(8, (8, 16), True), (16, (8, 16, 16), False), (8, (8,), True)])
def test_unet_shapes(size, channels, attention):
    torch.manual_seed(0)
    model = UNet(UNetConfig(sample_size=size, channels=channels, attention=attention, groups=4, time_dim=8))
    x = torch.randn(3, 1, size, size)
    for t in (torch.tensor([0, 500, 999]), torch.tensor([0.5, 10.25, 998.9]), torch.tensor(7)):
        out = model(x, t)
        assert out.shape == x.shape, f"UNet{channels} on {tuple(x.shape)}: expected output {tuple(x.shape)}, got {tuple(out.shape)}"


def test_fresh_unet_predicts_zero_and_blocks_start_as_identity():
    model = tiny_unet()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([1, 2, 3, 4]))
    assert float(out.abs().max()) == 0.0, (f"a fresh UNet should predict exactly 0 (zero conv_out, see "
                                           f"UNet.initialize_weights); max |out| = {float(out.abs().max()):.3g}")
    block = ResBlock(8, 8, 16, 4)
    torch.nn.init.zeros_(block.conv2.weight), torch.nn.init.zeros_(block.conv2.bias)
    h = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        out_block = block(h, torch.randn(2, 16))
    torch.testing.assert_close(out_block, h, msg="a ResBlock with zero conv2 must be the identity")
    attn = model.mid_attn
    assert isinstance(attn, SelfAttention) and float(attn.proj.weight.detach().abs().max()) == 0.0, \
        "the attention output projection should start at zero (UNet.initialize_weights)"


def test_unet_parts_shapes():
    x = torch.randn(2, 8, 8, 8)
    assert Downsample(8)(x).shape == (2, 8, 4, 4), "Downsample should halve H and W"
    assert Upsample(8)(x).shape == (2, 8, 16, 16), "Upsample should double H and W"
    assert ResBlock(8, 16, 12, 4)(x, torch.randn(2, 12)).shape == (2, 16, 8, 8), "ResBlock 8->16 channels"
    assert SelfAttention(8, 4)(x).shape == x.shape, "SelfAttention keeps the shape"


def test_unet_time_embedding_matters():
    """With the zero-initialised layers made random, the output must depend on t (temb reaches the blocks)."""
    model = tiny_unet()
    with torch.no_grad():
        for p in model.parameters():
            if float(p.abs().max()) == 0.0:
                p.normal_(std=0.1)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        a, b = model(x, torch.tensor([10, 10])), model(x, torch.tensor([900, 900]))
    assert float((a - b).abs().max()) > 1e-4, "the U-Net's output does not change with t: is temb added in ResBlock?"


def test_unet_config_validation():
    with pytest.raises(ValueError, match="divisible by groups"):
        UNetConfig(channels=(10, 20), groups=4)
    with pytest.raises(ValueError, match="sample_size"):
        UNetConfig(sample_size=6, channels=(8, 8, 8), groups=4)


def test_unet_checkpoint_roundtrip(tmp_path):
    model = tiny_unet(seed=3)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = save_checkpoint(tmp_path / "u.safetensors", model, schedule=make_schedule("linear", 1000))
    loaded, meta = load_checkpoint(path, "cpu")
    assert path.stat().st_mode & 0o777 == 0o644, (f"a checkpoint must be readable by all (the grading sandbox reads "
                                                  f"the zoo as another user); mode {oct(path.stat().st_mode & 0o777)}")
    assert meta["model_class"] == "UNet" and meta["config"]["channels"] == [8, 16], f"metadata: {meta}"
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 600])
    torch.testing.assert_close(loaded(x, t), model(x, t), msg="a reloaded UNet must give the same outputs")
    assert config_of(build_model("UNet", meta["config"]))[1] == model.config.to_dict()


def test_unet_learns_digits_briefly():
    """60 steps on the digits lower the simple loss (eq. 1.10) well below its starting value of ~1."""
    from diffcourse.data import load_digits

    x0, _ = load_digits("train")
    result = train(tiny_unet(), x0, make_schedule("linear", 1000),
                   TrainConfig(steps=60, batch_size=64, lr=3e-3, warmup_steps=5, progress=False, device="cpu"))
    first, last = sum(result.history.loss[:5]) / 5, result.history.final_loss(10)
    assert first > 0.8 and last < 0.6 * first, f"expected the loss to fall from ~1 to below 60%: {first:.3f} -> {last:.3f}"


def test_classifier_shapes_and_training():
    from diffcourse.data import load_digits

    x, y = load_digits("heldout")
    torch.manual_seed(0)
    model = DigitClassifier(DigitClassifierConfig.tiny())
    assert model(x[:5]).shape == (5, 10) and model.features(x[:5]).shape == (5, 16)
    before = accuracy(model, x, y)
    train_classifier(model, x, y, steps=300, batch_size=64, lr=1e-2, seed=0)
    after = accuracy(model, *load_digits("train"))
    assert after > 0.8 and after > before + 0.5, (f"a tiny classifier trained 300 steps on the held-out split should "
                                                  f"reach > 80% on the unseen train split; got {before:.2f} -> {after:.2f}")


def test_shift_augment_keeps_content():
    x = torch.full((5, 1, 8, 8), -1.0)
    x[:, :, 3:5, 3:5] = 1.0
    g = torch.Generator().manual_seed(0)
    out = shift_augment(x, g)
    assert out.shape == x.shape and torch.equal((out == 1).sum((1, 2, 3)), torch.full((5,), 4)), \
        "a 1-pixel shift of a centred 2x2 blob must keep all 4 bright pixels and fill with -1"


def test_train_cli_digits_and_classifier(tmp_path):
    """The two sub-commands write checkpoints whose recorded command reproduces them (tiny settings)."""
    from diffcourse import train as cli
    from diffcourse.training import read_metadata

    out = tmp_path / "d.safetensors"
    assert cli.main(["digits", "--out", str(out), "--preset", "tiny", "--steps", "3", "--batch-size", "8",
                     "--no-progress"]) == 0
    meta = read_metadata(out)
    assert meta["command"].startswith("python -m diffcourse.train digits") and "--steps 3" in meta["command"]
    assert meta["model_class"] == "UNet" and len(meta["loss_curve"]) == 3, meta
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}, f"--weights-dtype float16 (the default) should store float16 weights; got {dtypes}"
    unet, _ = load_checkpoint(out, "cpu")
    assert next(unet.parameters()).dtype == torch.float32, "float16 weights must load into a float32 model"
    out2 = tmp_path / "c.safetensors"
    assert cli.main(["classifier", "--out", str(out2), "--preset", "tiny", "--steps", "3", "--folds", "2",
                     "--no-progress"]) == 0
    meta2 = read_metadata(out2)
    assert meta2["model_class"] == "DigitClassifier" and 0 <= meta2["cv_accuracy"] <= 1, meta2
    model, _ = load_checkpoint(out2, "cpu")
    assert isinstance(model, DigitClassifier)


# ----------------------------------------------------------------------------- chapter 3: conditioning, skips

def randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            if float(p.abs().max()) == 0.0:
                p.normal_(std=0.1)
    return model


def test_class_labels_change_the_output_and_null_class_is_the_default():
    torch.manual_seed(0)
    model = randomised(UNet(UNetConfig(channels=(8, 16), groups=4, time_dim=8, num_classes=10)))
    assert model.class_emb.num_embeddings == 11, "10 classes + the 'no class' row (index 10)"
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([100, 100, 100])
    with torch.no_grad():
        a = model(x, t, class_labels=torch.tensor([1, 1, 1]))
        b = model(x, t, class_labels=torch.tensor([7, 7, 7]))
        none = model(x, t)
        null = model(x, t, class_labels=torch.tensor([10, 10, 10]))
        scalar = model(x, t, class_labels=torch.tensor(7))
    assert float((a - b).abs().max()) > 1e-4, "the class label must reach the network (eq. 3.7)"
    torch.testing.assert_close(none, null, msg="class_labels=None must mean the 'no class' label")
    torch.testing.assert_close(scalar, b, msg="a scalar label applies to the whole batch")
    # e = TimeMLP(t) + E[y], exactly (eq. 3.7)
    e = model.embed(t, torch.tensor([1, 7, 10]), 3)
    torch.testing.assert_close(e, model.time(t) + model.class_emb.weight[[1, 7, 10]])


@pytest.mark.parametrize("labels,match", [(torch.tensor([0, 11, 2]), "0..9"), (torch.tensor([-1, 0, 0]), "0..9"),
                                          (torch.tensor([0.0, 1.0, 2.0]), "integers"),
                                          (torch.tensor([0, 1]), "N=3")])
def test_bad_class_labels_are_clear_errors(labels, match):
    model = UNet(UNetConfig(channels=(8, 16), groups=4, time_dim=8, num_classes=10))
    with pytest.raises(ValueError, match=match):
        model(torch.randn(3, 1, 8, 8), 5, class_labels=labels)


def test_unconditional_unet_refuses_labels_and_context_is_required_exactly_with_cross_attention():
    plain = UNet(UNetConfig.tiny())
    with pytest.raises(ValueError, match="unconditional"):
        plain(torch.randn(2, 1, 8, 8), 5, class_labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="context"):
        plain(torch.randn(2, 1, 8, 8), 5, context=torch.randn(2, 3, 4))
    cross = randomised(UNet(UNetConfig(channels=(8, 16), groups=4, time_dim=8, context_dim=4)))
    with pytest.raises(ValueError, match="context"):
        cross(torch.randn(2, 1, 8, 8), 5)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        a, b = cross(x, 5, context=torch.randn(2, 3, 4)), cross(x, 5, context=torch.randn(2, 3, 4))
    assert a.shape == x.shape and float((a - b).abs().max()) > 1e-5, "the context must reach the output (eq. 3.6)"


def test_unet_without_skips_has_no_concatenation():
    with_skips, without = UNet(UNetConfig.tiny()), UNet(dataclass_replace(UNetConfig.tiny(), skips=False))
    assert with_skips.up_blocks[0][0].conv1.in_channels == 32, "lowest level up: 16 from below + 16 from the skip"
    assert without.up_blocks[0][0].conv1.in_channels == 16, "without skips the up block sees only what comes from below"
    assert without.num_parameters() < with_skips.num_parameters()
    assert without(torch.randn(2, 1, 8, 8), 3).shape == (2, 1, 8, 8)


def test_new_config_fields_keep_old_configs_and_checkpoints_unchanged():
    """Configs recorded before chapter 3 (no num_classes/context_dim/heads/skips) serialise as they were."""
    from diffcourse import zoo

    recorded = zoo.entry("digits_unet")["config"]
    assert UNetConfig(**recorded).to_dict() == recorded
    cond = UNetConfig(**dict(recorded, num_classes=10)).to_dict()
    assert cond["num_classes"] == 10 and "skips" not in cond


def dataclass_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def test_labelled_batches_drop_labels_at_the_requested_rate():
    from diffcourse.train import labelled_batches

    x0, y = torch.randn(50, 1, 8, 8), torch.arange(50) % 10
    draw = labelled_batches(x0, y, 10, p_uncond=0.3)
    xb, yb = draw(4000, torch.Generator().manual_seed(0))
    share = float((yb == 10).float().mean())
    assert xb.shape == (4000, 1, 8, 8) and 0.27 < share < 0.33, f"'no class' share {share:.3f}, wanted ~0.3"
    kept = yb != 10
    idx = [int((x0 == xb[i]).all(dim=(1, 2, 3)).nonzero()) for i in torch.nonzero(kept).flatten()[:50]]
    assert all(int(y[j]) == int(yb[i]) for i, j in zip(torch.nonzero(kept).flatten()[:50], idx)), \
        "a kept label must be the label of the image drawn with it"
    again = labelled_batches(x0, y, 10, 0.3)(4000, torch.Generator().manual_seed(0))[1]
    assert torch.equal(again, yb), "the same generator must draw the same labels"


def test_train_cli_class_conditional_and_no_skips(tmp_path):
    from diffcourse import train as cli
    from diffcourse.training import read_metadata

    out = tmp_path / "cond.safetensors"
    assert cli.main(["digits", "--out", str(out), "--preset", "tiny", "--steps", "3", "--batch-size", "8",
                     "--num-classes", "10", "--p-uncond", "0.1", "--skips", "off", "--no-progress"]) == 0
    meta = read_metadata(out)
    assert meta["config"]["num_classes"] == 10 and meta["config"]["skips"] is False, meta["config"]
    assert meta["command"].endswith("--num-classes 10 --p-uncond 0.1 --skips off"), meta["command"]
    model, _ = load_checkpoint(out, "cpu")
    assert model.class_emb is not None and model(torch.randn(2, 1, 8, 8), 5, class_labels=torch.tensor([3, 4])).shape \
        == (2, 1, 8, 8)
    with pytest.raises(SystemExit, match="needs --num-classes"):
        cli.main(["digits", "--out", str(tmp_path / "x.safetensors"), "--preset", "tiny", "--steps", "1",
                  "--p-uncond", "0.1", "--no-progress"])
    out2 = tmp_path / "xattn.safetensors"
    assert cli.main(["digits", "--out", str(out2), "--preset", "tiny", "--steps", "2", "--batch-size", "8",
                     "--num-classes", "10", "--conditioning", "cross", "--no-progress"]) == 0
    meta2 = read_metadata(out2)
    assert meta2["config"]["conditioning"] == "cross" and meta2["config"]["context_dim"] == 16, meta2["config"]
    assert meta2["command"].endswith("--num-classes 10 --conditioning cross"), meta2["command"]
    with pytest.raises(SystemExit, match="needs --num-classes"):
        cli.main(["digits", "--out", str(tmp_path / "y.safetensors"), "--preset", "tiny", "--steps", "1",
                  "--conditioning", "cross", "--no-progress"])


def test_cross_conditioning_gives_the_class_as_tokens_to_cross_attention():
    torch.manual_seed(0)
    cfg = UNetConfig(channels=(8, 16), groups=4, time_dim=8, num_classes=10, context_dim=12, conditioning="cross")
    model = randomised(UNet(cfg))
    assert model.class_emb.embedding_dim == 12 and model.start_token.shape == (1, 1, 12)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([50, 50, 50])
    with torch.no_grad():
        temb = model.embed(t, torch.tensor([1, 2, 3]), 3)
        torch.testing.assert_close(temb, model.time(t), msg="with 'cross' the class must not be added to e")
        ctx = model.class_context(torch.tensor([1, 2, 10]), 3)
        assert ctx.shape == (3, 2, 12)
        torch.testing.assert_close(ctx[:, 0], model.start_token[0].expand(3, 12))
        torch.testing.assert_close(ctx[:, 1], model.class_emb.weight[[1, 2, 10]])
        model.mid_cross.keep_weights = True
        a = model(x, t, class_labels=torch.tensor([1, 1, 1]))
        assert model.mid_cross.weights.shape == (3, 1, 16, 2), "16 bottleneck pixels attend over 2 tokens"
        b = model(x, t, class_labels=torch.tensor([7, 7, 7]))
    assert float((a - b).abs().max()) > 1e-4, "the class tokens must reach the output through cross-attention"
    with pytest.raises(ValueError, match="not context"):
        model(x, t, class_labels=torch.tensor([1, 1, 1]), context=torch.randn(3, 2, 12))
    for bad in (dict(conditioning="cross", num_classes=10), dict(conditioning="cross", context_dim=8),
                dict(conditioning="concat", num_classes=10, context_dim=8)):
        with pytest.raises(ValueError, match="conditioning"):
            UNetConfig(channels=(8, 16), groups=4, **bad)
