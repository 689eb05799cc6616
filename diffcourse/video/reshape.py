"""Frame/batch reshaping for factorised space-time attention (book §8.2, eq. 8.2).

A video batch is (B, C, F, H, W) (diffusers' layout for video U-Nets). Factorised attention never
attends over all F*H*W positions at once; it folds one axis into the batch and attends along the other:

    spatial  (eq. 8.2a): each frame is an image of H*W tokens       (B, C, F, H, W) <-> (B*F, H*W, C)
    temporal (eq. 8.2b): each pixel position is a sequence of F tokens (B, C, F, H, W) <-> (B*H*W, F, C)

so one spatial layer costs F (HW)^2 pairs and one temporal layer HW F^2, instead of (F HW)^2 for full
attention. The image U-Net's layers see frames as a batch: (B, C, F, H, W) <-> (B*F, C, H, W).
Every function here has an exact inverse (tested as round trips).
"""
from __future__ import annotations

import torch

__all__ = ["frames_to_batch", "batch_to_frames", "to_spatial_tokens", "from_spatial_tokens",
           "to_temporal_tokens", "from_temporal_tokens"]


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), frame f of clip b at row b*F + f: frames as images (book §8.2)."""
    B, C, F, H, W = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(B * F, C, H, W)                    # (B*F, C, H, W)


def batch_to_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W): the inverse of :func:`frames_to_batch` (book §8.2)."""
    BF, C, H, W = x.shape
    if BF % num_frames:
        raise ValueError(f"a batch of {BF} frames is not a whole number of {num_frames}-frame clips")
    return x.reshape(BF // num_frames, num_frames, C, H, W).permute(0, 2, 1, 3, 4)   # (B, C, F, H, W)


def to_spatial_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, H*W, C): one sequence of H*W pixel tokens per frame (book §8.2, eq. 8.2a)."""
    B, C, F, H, W = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(B * F, H * W, C)                   # (B*F, H*W, C)


def from_spatial_tokens(tokens: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """(B*F, H*W, C) -> (B, C, F, H, W): the inverse of :func:`to_spatial_tokens` (book §8.2)."""
    BF, L, C = tokens.shape
    if L != height * width or BF % num_frames:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fit F={num_frames}, H={height}, W={width}")
    return tokens.reshape(BF // num_frames, num_frames, height, width, C).permute(0, 4, 1, 2, 3)


def to_temporal_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*H*W, F, C): one sequence of F frame tokens per pixel position (book §8.2, eq. 8.2b)."""
    B, C, F, H, W = x.shape
    return x.permute(0, 3, 4, 2, 1).reshape(B * H * W, F, C)                   # (B*H*W, F, C)


def from_temporal_tokens(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B*H*W, F, C) -> (B, C, F, H, W): the inverse of :func:`to_temporal_tokens` (book §8.2)."""
    BHW, F, C = tokens.shape
    if BHW % (height * width):
        raise ValueError(f"tokens {tuple(tokens.shape)} are not a whole number of {height}x{width} grids")
    return tokens.reshape(BHW // (height * width), height, width, F, C).permute(0, 4, 3, 1, 2)
