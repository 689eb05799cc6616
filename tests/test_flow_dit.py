"""Book §7.7-7.8: patchify/unpatchify, the DiT with adaLN-Zero, and diffusers' DiTTransformer2DModel beside it."""
from __future__ import annotations

import pytest
import torch

from diffcourse.flow.diffusers_dit import DiffusersVelocity, adaln_weight_norms, build_diffusers_dit
from diffcourse.flow.dit import DiT, DiTConfig, modulate, patchify, sincos_pos_embed_2d, unpatchify
from diffcourse.flow.path import fm_loss
from diffcourse.models import build_model, config_of

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- tokens (eq. 7.15)

@pytest.mark.parametrize("shape,p", [((2, 1, 8, 8), 2), ((3, 3, 12, 8), 4), ((1, 2, 6, 6), 1)])
def test_patchify_round_trip_and_token_layout(shape, p):
    x = torch.randn(*shape, generator=gen(0))
    N, C, H, W = shape
    tokens = patchify(x, p)
    assert tokens.shape == (N, (H // p) * (W // p), p * p * C), f"expected (N, T, p*p*C), got {tuple(tokens.shape)}"
    assert torch.equal(unpatchify(tokens, p, C, H, W), x), "unpatchify must invert patchify exactly"
    w = W // p
    for k in (0, 1, tokens.shape[1] - 1):                     # token k is the patch at (row k // w, column k % w)
        r, c = divmod(k, w)
        patch = x[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p]                      # (N, C, p, p)
        assert torch.equal(tokens[:, k], patch.permute(0, 2, 3, 1).reshape(N, -1)), \
            f"token {k} should hold patch ({r}, {c}) with features ordered (row, column, channel)"


def test_patchify_checks_sizes():
    with pytest.raises(ValueError, match="divide"):
        patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="do not fit"):
        unpatchify(torch.zeros(1, 16, 4), 2, 1, 6)


def test_the_position_embedding_tells_every_token_apart():
    pe = sincos_pos_embed_2d(64, 4)
    assert pe.shape == (16, 64) and pe.dtype == torch.float32
    d = torch.cdist(pe, pe) + torch.eye(16) * 1e3
    assert d.min() > 0.1, "two tokens with the same position embedding could not be told apart"
    assert torch.allclose(pe[:, :32].reshape(4, 4, 32)[:, 0], pe[:, :32].reshape(4, 4, 32)[:, 3]), \
        "the first half encodes the row only: tokens in one row share it"


# ----------------------------------------------------------------------------- adaLN-Zero (eq. 7.16)

def test_modulate_is_per_sample_scale_and_shift():
    x = torch.randn(2, 3, 4, generator=gen(0))
    shift, scale = torch.randn(2, 4, generator=gen(1)), torch.randn(2, 4, generator=gen(2))
    assert torch.allclose(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])


def test_a_fresh_dit_is_the_identity_on_its_residual_stream_and_outputs_zero():
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny())
    x = torch.randn(5, 64, 32, generator=gen(1))                             # (N, T, D) residual stream
    c = torch.randn(5, 32, generator=gen(2))                                 # (N, D) condition
    for i, block in enumerate(model.blocks):
        assert torch.equal(block(x, c), x), f"block {i} should be the identity at init (its gates g start at 0)"
    x_t = torch.randn(5, 1, 8, 8, generator=gen(3))
    out = model(x_t, torch.rand(5, generator=gen(4)), torch.tensor([0, 3, 9, 10, 1]))
    assert out.shape == x_t.shape and torch.equal(out, torch.zeros_like(out)), "a fresh DiT should predict v = 0"
    assert set(adaln_weight_norms(model).values()) == {0.0}


def test_adaln_zero_still_learns():
    """Zero init is not a dead init: the output layer gets a gradient at once, the gates after one step."""
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny())
    x0 = torch.randn(16, 1, 8, 8, generator=gen(0))
    labels = torch.arange(16) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = fm_loss(lambda x, t: model(x, t, labels), x0, gen(1))
    loss.backward()
    assert model.final_layer.linear.weight.grad.abs().max() > 0, "the zero output layer must get a gradient"
    assert model.blocks[0].adaLN_modulation[-1].weight.grad.abs().max() == 0, \
        "behind a zero output layer nothing else gets a gradient on the first step"
    opt.step()
    opt.zero_grad()
    fm_loss(lambda x, t: model(x, t, labels), x0, gen(2)).backward()
    assert model.blocks[0].adaLN_modulation[-1].weight.grad.abs().max() > 0, \
        "after one step the gates of adaLN-Zero should receive a gradient"


def test_dit_conditions_on_time_and_class_and_checks_labels():
    torch.manual_seed(0)
    model = DiT(DiTConfig.tiny()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen(7)))
    x = torch.randn(2, 1, 8, 8, generator=gen(0))
    base = model(x, torch.tensor([0.3, 0.3]), torch.tensor([1, 1]))
    assert not torch.allclose(base, model(x, torch.tensor([0.7, 0.7]), torch.tensor([1, 1]))), "t must matter"
    assert not torch.allclose(base, model(x, torch.tensor([0.3, 0.3]), torch.tensor([2, 2]))), "the class must matter"
    assert torch.equal(model(x, torch.tensor([0.3, 0.3]), None), model(x, torch.tensor([0.3, 0.3]), torch.tensor([10, 10]))), \
        "None should mean the 'no class' label num_classes"
    assert torch.allclose(model(x, 0.3, torch.tensor([1, 1])), base), "a scalar t broadcasts"
    for bad in (torch.tensor([0, 11]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0]), torch.tensor([0, 1, 2])):
        with pytest.raises(ValueError):
            model(x, torch.tensor([0.3, 0.3]), bad)
    with pytest.raises(ValueError, match="unconditional"):
        DiT(DiTConfig(num_classes=0, hidden_size=32, num_heads=2))(x, torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        DiTConfig(hidden_size=30, num_heads=3)


def test_the_dit_round_trips_through_the_model_registry():
    model = DiT(DiTConfig.tiny())
    name, cfg = config_of(model)
    rebuilt = build_model(name, cfg)
    assert name == "DiT" and isinstance(rebuilt, DiT) and rebuilt.config == model.config


# ----------------------------------------------------------------------------- diffusers side by side (§7.8)

def test_the_course_dit_and_diffusers_dit_have_the_same_interface_and_shape():
    cfg = DiTConfig.digits()
    torch.manual_seed(0)
    ours = DiT(cfg).eval()
    theirs = build_diffusers_dit(cfg, seed=0).eval()
    x, t, y = torch.randn(4, 1, 8, 8, generator=gen(0)), torch.rand(4, generator=gen(1)), torch.tensor([0, 4, 9, 10])
    with torch.no_grad():
        a, b = ours(x, t, y), DiffusersVelocity(theirs)(x, t, y)
        b_direct = theirs(x, timestep=1000 * t, class_labels=y).sample
    assert a.shape == b.shape == x.shape
    assert torch.equal(b, b_direct), "DiffusersVelocity should call the model with timestep = 1000 t"
    assert len(theirs.transformer_blocks) == len(ours.blocks) == cfg.depth
    assert theirs.pos_embed.proj.kernel_size == (cfg.patch_size, cfg.patch_size)
    assert theirs.transformer_blocks[0].attn1.to_q.weight.shape == ours.blocks[0].qkv.weight[:cfg.hidden_size].shape
    n_ours = ours.num_parameters()
    n_theirs = sum(p.numel() for p in theirs.parameters())
    per_block_embed = sum(p.numel() for p in theirs.transformer_blocks[0].norm1.emb.parameters())
    assert n_theirs > n_ours, "diffusers embeds (t, y) in every block, so it has more parameters at the same shape"
    assert abs((n_theirs - n_ours) - (cfg.depth - 1) * per_block_embed) < 0.1 * n_ours, \
        f"the gap {n_theirs - n_ours} should be mostly the {cfg.depth - 1} extra per-block embedders ({per_block_embed} each)"


def test_diffusers_dit_does_not_zero_its_adaln_but_the_course_does():
    cfg = DiTConfig.digits()
    torch.manual_seed(0)
    ours, theirs = adaln_weight_norms(DiT(cfg)), adaln_weight_norms(build_diffusers_dit(cfg, seed=0))
    assert set(ours.values()) == {0.0}, f"the course's adaLN-Zero layers should be zero: {ours}"
    assert len(theirs) == cfg.depth + 2 and min(theirs.values()) > 0.01, \
        f"diffusers' DiTTransformer2DModel keeps the default init for its modulation and output: {theirs}"
    model = build_diffusers_dit(cfg, seed=0).eval()
    x = torch.randn(4, 1, 8, 8, generator=gen(0))
    with torch.no_grad():
        out = DiffusersVelocity(model)(x, torch.rand(4, generator=gen(1)), torch.tensor([0, 1, 2, 3]))
    assert out.abs().mean() > 1e-3, "a fresh diffusers DiT does not output zero"
    with pytest.raises(TypeError):
        adaln_weight_norms(torch.nn.Linear(2, 2))
