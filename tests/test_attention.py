"""Attention (book §3.4, eqs. 3.4-3.6): the course's own against PyTorch's, and the blocks' behaviour.

Files under test: diffcourse/models/attention.py.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

from diffcourse.models.attention import CrossAttention, SelfAttention, attention, merge_heads, split_heads

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape_q,shape_k,dv", [((2, 5, 8), (2, 7, 8), 8), ((3, 4, 16, 6), (3, 4, 9, 6), 5),
                                                ((1, 1, 3), (1, 1, 3), 3)])
def test_attention_equals_torch_sdpa(shape_q, shape_k, dv):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(shape_q, generator=g), torch.randn(shape_k, generator=g)
    v = torch.randn(*shape_k[:-1], dv, generator=g)
    out, weights = attention(q, k, v, return_weights=True)
    torch.testing.assert_close(out, sdpa(q, k, v), msg="attention() must equal scaled_dot_product_attention")
    assert weights.shape == (*shape_q[:-1], shape_k[-2])
    torch.testing.assert_close(weights.sum(-1), torch.ones(shape_q[:-1]), msg="attention rows must sum to 1")


def test_attention_scale_is_sqrt_d():
    """Scaling q by sqrt(d) and k by 1 must equal sdpa with scale 1 (the 1/sqrt(d) is really there)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 6, 16, generator=g) for _ in range(3))
    torch.testing.assert_close(attention(q * 4.0, k, v), sdpa(q, k, v, scale=1.0))


def test_attention_half_precision_softmax_in_float32():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 8, 4, generator=g) * 30 for _ in range(3))
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), sdpa(q, k, v), atol=0.5, rtol=0.05)


def test_split_and_merge_heads_are_inverse():
    x = torch.arange(2 * 5 * 12.0).reshape(2, 5, 12)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4) and torch.equal(h[0, 1, 0], x[0, 0, 4:8]), "head i holds channels 4i..4i+3"
    assert torch.equal(merge_heads(h), x)
    with pytest.raises(ValueError, match="heads"):
        split_heads(x, 5)


def reference_self_attention(block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3.5 written with torch's sdpa and nn.functional, head by head."""
    N, C, H, W = x.shape
    qkv = torch.nn.functional.conv2d(block.norm(x), block.qkv.weight, block.qkv.bias)   # (N, 3C, H, W)
    q, k, v = qkv.flatten(2).transpose(1, 2).split(C, dim=-1)                          # 3 x (N, HW, C)
    d = C // block.heads
    heads = [sdpa(q[..., i * d:(i + 1) * d], k[..., i * d:(i + 1) * d], v[..., i * d:(i + 1) * d])
             for i in range(block.heads)]
    h = torch.cat(heads, -1).transpose(1, 2).reshape(N, C, H, W)
    return x + block.proj(h)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_self_attention_matches_sdpa_reference(heads):
    torch.manual_seed(0)
    block = SelfAttention(8, 4, heads)
    torch.nn.init.normal_(block.proj.weight, std=0.3)
    x = torch.randn(3, 8, 4, 5)
    block.keep_weights = True
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out, reference_self_attention(block, x))
    assert block.weights.shape == (3, heads, 20, 20)


def test_cross_attention_reads_the_context():
    torch.manual_seed(0)
    block = CrossAttention(8, 6, 4, heads=2)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, ctx = torch.randn(2, 8, 3, 4), torch.randn(2, 5, 6)
    block.keep_weights = True
    with torch.no_grad():
        out = block(x, ctx)
        tokens = block.norm(x).flatten(2).transpose(1, 2)                                # (N, HW, C)
        q, k, v = block.to_q(tokens), block.to_k(ctx), block.to_v(ctx)
        ref = torch.cat([sdpa(q[..., i * 4:(i + 1) * 4], k[..., i * 4:(i + 1) * 4], v[..., i * 4:(i + 1) * 4])
                         for i in range(2)], -1)
        ref = x + block.proj(ref).transpose(1, 2).reshape(2, 8, 3, 4)
    torch.testing.assert_close(out, ref)
    assert block.weights.shape == (2, 2, 12, 5), "cross-attention weights: (N, heads, HW pixels, L tokens)"
    with torch.no_grad():
        other = block(x, ctx.flip(1) * 2)
    assert float((other - out).abs().max()) > 1e-3, "the output must change when the context does"
    with torch.no_grad():
        perm = block(x, ctx[:, torch.randperm(5)])
    torch.testing.assert_close(perm, out, msg="attention is a weighted sum: the order of the tokens must not matter")
    with pytest.raises(ValueError, match="context"):
        block(x, ctx[0])


def test_fresh_attention_blocks_are_identity():
    from diffcourse.models import UNet, UNetConfig

    model = UNet(UNetConfig(channels=(8, 16), groups=4, time_dim=8, context_dim=6))
    with torch.no_grad():
        h = torch.randn(2, 16, 4, 4)
        torch.testing.assert_close(model.mid_attn(h), h)
        torch.testing.assert_close(model.mid_cross(h, torch.randn(2, 3, 6)), h)
