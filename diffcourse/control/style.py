"""Measuring a style: which palette an image is in, and whether a texture survived (book §6.4, style LoRA).

A style LoRA is judged on two questions: did the samples take the new style, and did they keep what the
prompt asked for? The second is chapter 4's attribute checker (:mod:`diffcourse.latent.attributes`). The
first, for the shapes, needs no learned judge either: the styles of :data:`~diffcourse.control.train_lora.STYLE_PRESETS`
are background palettes, so an image's style is read from the colour of its background::

    background = the pixels whose brightest channel is below 0.45 (the shapes' brightest channel is 1)
    features   = mean background RGB of the top half, then of the bottom half           (6 numbers)
    style      = the reference style whose mean features are nearest (Euclidean)

:func:`style_features` computes the features, :func:`style_centroids` the reference means from rendered
images, :func:`classify_style` and :func:`style_share` the verdicts. :func:`stripe_contrast` asks whether
a 3-pixel stripe texture is still there (the VAE's 4x downsampling cannot keep it: measure before training
a LoRA on a texture).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["BACKGROUND_LEVEL", "style_features", "style_centroids", "classify_style", "style_share",
           "stripe_contrast"]

#: A pixel whose brightest channel (on the [0, 1] scale) is below this is background (backgrounds stay <= 0.35).
BACKGROUND_LEVEL = 0.45


def style_features(images: torch.Tensor) -> torch.Tensor:
    """Mean background colour of the top and of the bottom half, (N, 6) in [0, 1] (book §6.4).

    images (N, 3, H, W) in [-1, 1]. A half with no background pixel gives zeros for that half.
    """
    x = ((images.float().cpu() + 1) / 2).clamp(0, 1)                           # (N, 3, H, W)
    background = (x.max(1, keepdim=True).values < BACKGROUND_LEVEL).float()    # (N, 1, H, W)
    half = x.shape[-2] // 2
    parts = []
    for rows in (slice(0, half), slice(half, None)):
        w = background[:, :, rows]                                             # (N, 1, h, W)
        parts.append((x[:, :, rows] * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1))   # (N, 3)
    return torch.cat(parts, 1)                                                 # (N, 6)


def style_centroids(references: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{style: mean features (6,)}`` of reference images ``{style: (N, 3, H, W)}`` (book §6.4)."""
    return {name: style_features(images).mean(0) for name, images in references.items()}


def classify_style(images: torch.Tensor, centroids: dict[str, torch.Tensor]) -> list[str]:
    """The name of the nearest centroid for each image (N, 3, H, W) in [-1, 1] (book §6.4)."""
    names = list(centroids)
    c = torch.stack([centroids[n] for n in names])                             # (S, 6)
    d = torch.cdist(style_features(images), c)                                 # (N, S)
    return [names[i] for i in d.argmin(1).tolist()]


def style_share(images: torch.Tensor, style: str, centroids: dict[str, torch.Tensor]) -> float:
    """Share of images whose nearest style is ``style`` (book §6.4: "samples in the new style")."""
    if style not in centroids:
        raise ValueError(f"unknown style {style!r}; the centroids know {sorted(centroids)}")
    verdicts = classify_style(images, centroids)
    return sum(v == style for v in verdicts) / len(verdicts)


def stripe_contrast(images: torch.Tensor, period: float = 3.0) -> torch.Tensor:
    """Amplitude of a vertical-stripe texture of ``period`` pixels inside the shapes, per image (N,) (book §6.4).

    The brightness of the shape's interior (brightest channel >= 0.5, eroded by one pixel so that the
    anti-aliased outline does not count) is projected on cos and sin of 2 pi x / period; the amplitude is
    sqrt(a^2 + b^2) * 2 / (pixels): up to 0.225 for the dataset's stripes (brightness 0.775 + 0.225 cos),
    about 0 for flat shapes, and 0 for a shape with no interior pixel.
    """
    x = ((images.float().cpu() + 1) / 2).clamp(0, 1)                           # (N, 3, H, W)
    m = x.max(1).values                                                        # (N, H, W) brightness
    inside = -F.max_pool2d(-(m >= 0.5).float()[:, None], 3, stride=1, padding=1)[:, 0]   # (N, H, W) eroded
    cols = torch.arange(x.shape[-1], dtype=torch.float32) + 0.5                # (W,)
    phase = 2 * math.pi * cols / period
    centred = (m - (m * inside).sum((1, 2), keepdim=True) / inside.sum((1, 2), keepdim=True).clamp_min(1)) * inside
    a = (centred * torch.cos(phase)).sum((1, 2))                               # (N,)
    b = (centred * torch.sin(phase)).sum((1, 2))
    return 2 * torch.sqrt(a ** 2 + b ** 2) / inside.sum((1, 2)).clamp_min(1)
