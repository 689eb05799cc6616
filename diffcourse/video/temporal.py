"""Temporal self-attention: each pixel position attends over the frames of its clip (book §8.3, eqs. 8.3-8.4).

A spatial layer of the image U-Net treats the F frames of a clip as F unrelated images. A temporal
layer lets them talk: at every pixel position (and every layer's resolution) the F feature vectors
along time form a sequence, and self-attention (eq. 3.4) runs over that sequence alone::

    z_f   = LN(h_f) + P_f                      f = 0..F-1, P the frame-position embedding (eq. 8.3)
    out_f = h_f + W_o Attention(W_q z, W_k z, W_v z)_f                                  (eq. 8.4)

LayerNorm normalises each token by itself, so nothing leaks between pixel positions: a change of
frame k at pixel p changes the output at pixel p only (all its frames), never at another pixel.
``W_o`` starts at zero, so a fresh temporal layer is exactly the identity -- the trick that lets it be
added to a trained image model without changing it (AnimateDiff's motion modules, SVD's temporal layers).
Without P the attention would be blind to frame order (it is permutation-equivariant over frames).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models.attention import attention, merge_heads, split_heads
from .reshape import batch_to_frames, frames_to_batch, from_temporal_tokens, to_temporal_tokens

__all__ = ["frame_position_embedding", "TemporalAttention"]


def frame_position_embedding(num_frames: int, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of frame indices 0..F-1, (F, dim) (book §8.3, eq. 8.3).

    P[f, 2i] = sin(f / max_period^(2i/dim)), P[f, 2i+1] = cos(...): the Transformer's position code,
    used by AnimateDiff's motion modules. ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"the frame-position embedding needs an even width, got {dim}")
    f = torch.arange(num_frames, dtype=torch.float64)[:, None]                     # (F, 1)
    freqs = max_period ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)    # (dim/2,)
    angles = f * freqs                                                             # (F, dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(num_frames, dim).float()   # (F, dim)


class TemporalAttention(nn.Module):
    """Residual self-attention over frames at each pixel position, zero-initialised output (book §8.3, eq. 8.4).

    ``forward(x, num_frames)``: x (B*F, C, H, W), frames of a clip consecutive as in
    :func:`~diffcourse.video.reshape.frames_to_batch` -> (B*F, C, H, W). Set ``keep_weights`` to keep
    the last attention weights in ``self.weights`` (B*H*W, heads, F, F).
    """

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        if channels % heads or channels % 2:
            raise ValueError(f"channels={channels} must be even and divisible by heads={heads}")
        self.channels, self.heads = channels, heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)                                           # a fresh layer is the identity
        nn.init.zeros_(self.proj.bias)
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        BF, C, H, W = x.shape
        tokens = to_temporal_tokens(batch_to_frames(x, num_frames))                # (B*H*W, F, C)
        z = self.norm(tokens) + frame_position_embedding(num_frames, C).to(x)      # (B*H*W, F, C), eq. 8.3
        q, k, v = self.qkv(z).chunk(3, dim=-1)                                     # 3 x (B*H*W, F, C)
        q, k, v = (split_heads(a, self.heads) for a in (q, k, v))                  # 3 x (B*H*W, h, F, C/h)
        out, weights = attention(q, k, v, return_weights=True)                     # (B*H*W, h, F, C/h)
        if self.keep_weights:
            self.weights = weights.detach()
        out = tokens + self.proj(merge_heads(out))                                 # (B*H*W, F, C), eq. 8.4
        return frames_to_batch(from_temporal_tokens(out, H, W))                    # (B*F, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}"
