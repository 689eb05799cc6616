"""Attention for the U-Net: self-attention over pixels, cross-attention to a context (book §3.4, eqs. 3.4-3.6).

Scaled dot-product attention (eq. 3.4) lets every query position read from every key position,
weighted by how well their vectors match::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V          Q (Lq, d), K (Lk, d), V (Lk, d) -> (Lq, d)

- **Self-attention** (eq. 3.5): queries, keys and values all come from the image features, so a
  pixel can use any other pixel at once -- a convolution would need many layers to connect them.
  The U-Net applies it only at low resolution, because its cost grows as (H W)^2.
- **Cross-attention** (eq. 3.6): queries come from the image features, keys and values from a
  *context* (text tokens in Stable Diffusion, class tokens here): each pixel asks "which of the
  prompt's tokens concern me?" and reads their values.

Both are residual and their output projection starts at zero, so a fresh block is the identity.
:func:`attention` is checked against ``torch.nn.functional.scaled_dot_product_attention`` in the tests.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["attention", "split_heads", "merge_heads", "SelfAttention", "CrossAttention"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, softmax(Q K^T / sqrt(d)) V (book §3.4, eq. 3.4).

    ``q`` (..., Lq, d), ``k`` (..., Lk, d), ``v`` (..., Lk, d_v) -> (..., Lq, d_v), the same layout and
    result as ``torch.nn.functional.scaled_dot_product_attention(q, k, v)``. With ``return_weights``
    also returns the attention weights (..., Lq, Lk), each row a probability distribution over keys.
    The softmax runs in float32 even for half-precision inputs.
    """
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)                          # (..., Lq, Lk)
    weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)              # (..., Lq, Lk), rows sum to 1
    out = weights @ v                                                        # (..., Lq, d_v)
    return (out, weights) if return_weights else out


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, C) -> (N, heads, L, C / heads): each head attends with its own slice of the channels (book §3.4)."""
    N, L, C = x.shape
    if C % heads:
        raise ValueError(f"{C} channels cannot be split into {heads} heads")
    return x.reshape(N, L, heads, C // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, d) -> (N, L, heads * d): the inverse of :func:`split_heads` (book §3.4)."""
    N, h, L, d = x.shape
    return x.transpose(1, 2).reshape(N, L, h * d)


class SelfAttention(nn.Module):
    """Residual self-attention over the H*W positions of a feature map (book §3.4, eq. 3.5).

    ``forward(x)``: (N, C, H, W) -> (N, C, H, W). GroupNorm, then one 1x1 convolution makes Q, K and V,
    attention per head over the H*W pixels, a 1x1 output projection (zero at the start), plus x.
    Set ``keep_weights = True`` to keep the last attention weights in ``self.weights`` (N, heads, HW, HW).
    """

    def __init__(self, channels: int, groups: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(N, 3, C, H * W).transpose(2, 3).unbind(1)  # 3 x (N, HW, C)
        q, k, v = (split_heads(a, self.heads) for a in (q, k, v))                # 3 x (N, h, HW, C/h)
        out, weights = attention(q, k, v, return_weights=True)                   # (N, h, HW, C/h), (N, h, HW, HW)
        if self.keep_weights:
            self.weights = weights.detach()
        h = merge_heads(out).transpose(1, 2).reshape(N, C, H, W)                 # (N, C, H, W)
        return x + self.proj(h)                                                  # (N, C, H, W)


class CrossAttention(nn.Module):
    """Residual cross-attention: pixels query a context of tokens (book §3.4, eq. 3.6).

    ``forward(x, context)``: x (N, C, H, W), context (N, L, D) -> (N, C, H, W). Queries from the
    normalised image features, keys and values from the context (projected from D to C channels),
    a zero-initialised output projection, plus x. ``keep_weights`` as in :class:`SelfAttention`:
    ``self.weights`` is (N, heads, HW, L), how much each pixel reads from each token.
    """

    def __init__(self, channels: int, context_dim: int, groups: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels={channels} must be divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_dim, channels, bias=False)
        self.to_v = nn.Linear(context_dim, channels, bias=False)
        self.proj = nn.Linear(channels, channels)
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        if context.ndim != 3 or context.shape[0] != N:
            raise ValueError(f"context must be (N={N}, L, D) tokens, got shape {tuple(context.shape)}")
        tokens = self.norm(x).reshape(N, C, H * W).transpose(1, 2)               # (N, HW, C)
        q = split_heads(self.to_q(tokens), self.heads)                           # (N, h, HW, C/h)
        k = split_heads(self.to_k(context), self.heads)                          # (N, h, L, C/h)
        v = split_heads(self.to_v(context), self.heads)                          # (N, h, L, C/h)
        out, weights = attention(q, k, v, return_weights=True)                   # (N, h, HW, C/h), (N, h, HW, L)
        if self.keep_weights:
            self.weights = weights.detach()
        h = self.proj(merge_heads(out))                                          # (N, HW, C)
        return x + h.transpose(1, 2).reshape(N, C, H, W)                         # (N, C, H, W)
