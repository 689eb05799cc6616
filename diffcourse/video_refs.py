"""The course's implementations of chapter 8's graded exercises (``ch08_video``), for the notebook's tests.

The tests of a later exercise run the student's function with these in place of the student's earlier ones
(:func:`diffcourse.grading.reference`), so each mistake costs one exercise; every function has the exact
signature the notebook asks for and delegates to :mod:`diffcourse.video` where the package has it.

- exercise 1, the reshapes of factorised attention (book §8.2, eq. 8.2): :func:`to_spatial_tokens`,
  :func:`from_spatial_tokens`, :func:`to_temporal_tokens`, :func:`from_temporal_tokens`;
- exercise 2, temporal attention (book §8.3, eqs. 8.3-8.4): :func:`frame_position_embedding`,
  :func:`temporal_attention`;
- exercise 3, zero-init inflation (book §8.4, eq. 8.5): :class:`TemporalLayer`, :func:`inflated_block`;
- exercise 4, spacetime patches (book §8.7, eqs. 8.11-8.12): :func:`spacetime_patchify`,
  :func:`spacetime_unpatchify`, :func:`token_count`;
- exercise 5, temporal consistency (book §8.6, eqs. 8.8-8.10): :func:`object_masks`, :func:`centroids`,
  :func:`consistency_scores`.
"""
from __future__ import annotations

import torch
from torch import nn

from .models.attention import attention, merge_heads, split_heads
from .video import consistency as _consistency
from .video import reshape as _reshape
from .video import spacetime as _spacetime
from .video.temporal import TemporalAttention
from .video.temporal import frame_position_embedding as _frame_position_embedding

__all__ = ["to_spatial_tokens", "from_spatial_tokens", "to_temporal_tokens", "from_temporal_tokens",
           "frame_position_embedding", "temporal_attention", "TemporalLayer", "inflated_block",
           "spacetime_patchify", "spacetime_unpatchify", "token_count", "object_masks", "centroids",
           "consistency_scores"]


def to_spatial_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, H*W, C): one row-major sequence of pixel tokens per frame (book §8.2, eq. 8.2a)."""
    return _reshape.to_spatial_tokens(x)


def from_spatial_tokens(tokens: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """(B*F, H*W, C) -> (B, C, F, H, W), the inverse of :func:`to_spatial_tokens` (book §8.2, eq. 8.2a)."""
    return _reshape.from_spatial_tokens(tokens, num_frames, height, width)


def to_temporal_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*H*W, F, C): one sequence of frame tokens per pixel position (book §8.2, eq. 8.2b)."""
    return _reshape.to_temporal_tokens(x)


def from_temporal_tokens(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B*H*W, F, C) -> (B, C, F, H, W), the inverse of :func:`to_temporal_tokens` (book §8.2, eq. 8.2b)."""
    return _reshape.from_temporal_tokens(tokens, height, width)


def frame_position_embedding(num_frames: int, dim: int) -> torch.Tensor:
    """(F, dim) float32: P[f, 2i] = sin(f / 10000^(2i/dim)), P[f, 2i+1] = cos(...) (book §8.3, eq. 8.3)."""
    return _frame_position_embedding(num_frames, dim)


def temporal_attention(h: torch.Tensor, num_frames: int, norm: nn.Module, qkv: nn.Module, proj: nn.Module,
                       heads: int = 1) -> torch.Tensor:
    """Residual self-attention over the frames at each pixel position (book §8.3, eqs. 8.3-8.4).

    h (B*F, C, H, W), a clip's frames consecutive -> (B*F, C, H, W): z = norm(tokens) + P (eq. 8.3),
    out = tokens + proj(Attention(qkv(z) split into ``heads`` heads)) (eq. 8.4), tokens (B*H*W, F, C).
    The same computation as :class:`diffcourse.video.temporal.TemporalAttention`'s forward.
    """
    BF, C, H, W = h.shape
    tokens = to_temporal_tokens(_reshape.batch_to_frames(h, num_frames))                # (B*H*W, F, C)
    z = norm(tokens) + frame_position_embedding(num_frames, C).to(h)                     # (B*H*W, F, C) eq. 8.3
    q, k, v = qkv(z).chunk(3, dim=-1)                                                    # 3 x (B*H*W, F, C)
    q, k, v = (split_heads(a, heads) for a in (q, k, v))                                 # 3 x (B*H*W, h, F, C/h)
    out = tokens + proj(merge_heads(attention(q, k, v)))                                 # (B*H*W, F, C) eq. 8.4
    return _reshape.frames_to_batch(from_temporal_tokens(out, H, W))                     # (B*F, C, H, W)


class TemporalLayer(TemporalAttention):
    """A temporal attention layer whose output projection ``proj`` starts at zero, so it is the identity
    (book §8.4, eq. 8.5): ``TemporalLayer(channels, heads=1)``, ``forward(x (B*F, C, H, W), num_frames)``.
    The course's :class:`~diffcourse.video.temporal.TemporalAttention` (attributes norm, qkv, proj, heads)."""


def inflated_block(spatial: nn.Module, temporal: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An image layer on every frame, then a temporal layer across frames (book §8.4, eq. 8.5).

    x (B, C, F, H, W) -> frames as a batch (B*F, C, H, W) -> ``spatial`` -> (B*F, C', H', W')
    -> ``temporal(h, F)`` -> (B, C', F, H', W'). With a fresh (zero-initialised) temporal layer the
    result is ``spatial`` applied to each frame on its own.
    """
    F = x.shape[2]
    h = spatial(_reshape.frames_to_batch(x))                                             # (B*F, C', H', W')
    return _reshape.batch_to_frames(temporal(h, F), F)                                   # (B, C', F, H', W')


def spacetime_patchify(x: torch.Tensor, pt: int, p: int) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, N, pt*p*p*C): tubelets frame-major then row-major, values (pt, p, p, C)
    (book §8.7, eq. 8.11)."""
    return _spacetime.spacetime_patchify(x, pt, p)


def spacetime_unpatchify(tokens: torch.Tensor, pt: int, p: int, channels: int, frames: int, height: int,
                         width: int) -> torch.Tensor:
    """(B, N, pt*p*p*C) -> (B, C, F, H, W), the inverse of :func:`spacetime_patchify` (book §8.7, eq. 8.11)."""
    return _spacetime.spacetime_unpatchify(tokens, pt, p, channels, frames, height, width)


def token_count(frames: int, height: int, width: int, ct: int = 4, cs: int = 8, pt: int = 1, p: int = 2) -> int:
    """Tokens N of a clip through a causal video VAE (c_t, c_s) and (p_t, p, p) tubelets (book §8.7, eqs. 8.11-8.12).

    F' = 1 + (F - 1) / c_t, H' = H / c_s, W' = W / c_s (eq. 8.12); the latent frames are padded up to a
    multiple of p_t; N = ceil(F' / p_t) (H' / p) (W' / p) (eq. 8.11).
    """
    return int(_spacetime.token_count(frames, height, width, (ct, cs), (pt, p), causal=True)["tokens"])


def object_masks(clip: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W) bool: brightest channel, mapped to [0, 1], above ``threshold`` (§8.6)."""
    return _consistency.object_masks(clip, threshold)


def centroids(masks: torch.Tensor) -> torch.Tensor:
    """(F, H, W) bool -> (F, 2) float32 mean (row, column) = (y, x) of each mask; NaN for an empty one (§8.6)."""
    return _consistency.centroids(masks)


def consistency_scores(clip: torch.Tensor, threshold: float = 0.5) -> dict:
    """``colour_std`` (eq. 8.8), ``jerk`` (eq. 8.9) and ``area_cv`` (eq. 8.10) of a clip (F, 3, H, W) in [-1, 1],
    as Python floats; frames without an object are left out, and fewer than three frames with one give NaN (§8.6)."""
    scores = _consistency.clip_consistency(clip, threshold)
    return {k: scores[k] for k in ("colour_std", "jerk", "area_cv")}
