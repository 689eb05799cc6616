"""Temporal consistency of moving-shapes clips: colour constancy and smooth motion (book §8.6, eqs. 8.8-8.10).

A clip (F, 3, H, W) in [-1, 1] of the moving-shapes data shows one saturated shape on black. Its
object pixels are found with no model at all: a pixel belongs to the object when its brightest
channel is above half intensity. From them, per frame f::

    m_f  = {pixels p : max_c (x_f[c, p] + 1) / 2 > 1/2}                              object mask
    c_f  = mean over m_f of (x_f + 1) / 2   (3,)                                     object colour
    mu_f = mean over m_f of the pixel coordinates (y, x)   (2,)                      centroid

and the clip's scores (lower is more consistent)::

    colour_std = mean_c std_f c_f[c]                                                 (eq. 8.8)
    jerk       = mean_f || mu_{f+2} - 2 mu_{f+1} + mu_f ||    (second difference)    (eq. 8.9)
    area_cv    = std_f |m_f| / mean_f |m_f|                                          (eq. 8.10)

A real clip has colour_std = 0 (one colour), a small jerk (non-zero only at a bounce) and a
constant area. Frames drawn independently (an image model run per frame) change colour, shape and
place from frame to frame. ``motion`` (mean || mu_{f+1} - mu_f ||, pixels per frame) is reported
beside them so that a static clip, perfectly "consistent", is not mistaken for a good video.
"""
from __future__ import annotations

import math

import torch

__all__ = ["object_masks", "object_colours", "centroids", "clip_consistency", "consistency_table"]


def object_masks(clip: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W) bool: pixels whose brightest channel exceeds ``threshold`` (§8.6)."""
    return ((clip + 1) / 2).amax(dim=1) > threshold                                # (F, H, W)


def object_colours(clip: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Mean colour in [0, 1] of each frame's object pixels, (F, 3); NaN for a frame with none (§8.6)."""
    masks = object_masks(clip) if masks is None else masks                         # (F, H, W)
    w = masks[:, None].to(clip.dtype)                                               # (F, 1, H, W)
    total = (((clip + 1) / 2) * w).sum(dim=(2, 3))                                  # (F, 3)
    count = w.sum(dim=(2, 3))                                                       # (F, 1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def centroids(masks: torch.Tensor) -> torch.Tensor:
    """(F, H, W) bool -> (F, 2) mean (y, x) pixel coordinate of each mask; NaN for an empty one (§8.6)."""
    F, H, W = masks.shape
    w = masks.to(torch.float64)                                                     # (F, H, W)
    ys = torch.arange(H, dtype=torch.float64)[None, :, None]                        # (1, H, 1)
    xs = torch.arange(W, dtype=torch.float64)[None, None, :]                        # (1, 1, W)
    count = w.sum(dim=(1, 2))                                                       # (F,)
    cy, cx = (w * ys).sum(dim=(1, 2)) / count, (w * xs).sum(dim=(1, 2)) / count    # (F,), NaN where empty
    return torch.stack([cy, cx], dim=1).float()                                     # (F, 2)


def clip_consistency(clip: torch.Tensor, threshold: float = 0.5) -> dict:
    """colour_std (eq. 8.8), jerk (eq. 8.9), area_cv (eq. 8.10), motion and the share of frames with an
    object (``presence``) of one clip (F, 3, H, W) in [-1, 1] (book §8.6). Frames without an object are
    left out of the averages; a clip with fewer than three such frames scores NaN."""
    masks = object_masks(clip, threshold)                                           # (F, H, W)
    present = masks.flatten(1).any(dim=1)                                          # (F,)
    colours = object_colours(clip, masks)[present]                                 # (F', 3)
    mu = centroids(masks)[present]                                                  # (F', 2)
    area = masks.flatten(1).sum(dim=1)[present].float()                             # (F',)
    out = dict(presence=float(present.float().mean()))
    if len(mu) < 3:
        return dict(out, colour_std=math.nan, jerk=math.nan, area_cv=math.nan, motion=math.nan)
    out["colour_std"] = float(colours.std(dim=0, unbiased=False).mean())            # eq. 8.8
    out["jerk"] = float((mu[2:] - 2 * mu[1:-1] + mu[:-2]).norm(dim=1).mean())       # eq. 8.9
    out["area_cv"] = float(area.std(unbiased=False) / area.mean())                  # eq. 8.10
    out["motion"] = float((mu[1:] - mu[:-1]).norm(dim=1).mean())
    return out


def consistency_table(clips: torch.Tensor, threshold: float = 0.5) -> dict:
    """The mean of :func:`clip_consistency` over clips (N, F, 3, H, W), NaN clips left out (book §8.6)."""
    rows = [clip_consistency(c, threshold) for c in clips]
    keys = ["colour_std", "jerk", "area_cv", "motion", "presence"]
    table = {}
    for k in keys:
        vals = [r[k] for r in rows if not math.isnan(r[k])]
        table[k] = sum(vals) / len(vals) if vals else math.nan
    return table
