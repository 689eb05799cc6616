"""Moving-shapes clips for video diffusion (book §8).

A clip (F, 3, H, W) in [-1, 1] shows one coloured shape (drawn as in :mod:`diffcourse.data.shapes`) moving with
constant velocity on black and bouncing off the walls like a billiard ball, with a caption such as
``"a red square moving right"``; the caption names the direction of the *first* frames (bounces
change it later). Clip ``i`` depends only on ``(seed, i)``.
"""
from __future__ import annotations

import math

import torch

from .shapes import COLOURS, SHAPES, _item_generator, render_objects, tokenize

__all__ = ["DIRECTIONS", "bounce", "direction_phrase", "sample_motion", "render_clip", "make_moving_shapes",
           "MovingShapesDataset"]

# compass directions as unit (dy, dx) with y pointing down the image
DIRECTIONS = {
    "right": (0.0, 1.0), "left": (0.0, -1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0),
    "up and right": (-1.0, 1.0), "up and left": (-1.0, -1.0),
    "down and right": (1.0, 1.0), "down and left": (1.0, -1.0),
}


def bounce(p: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Fold free positions ``p`` into [lo, hi] by mirror reflections at the walls (book §8).

    A point moving with constant velocity and reflected elastically at lo and hi is at
    lo + tri(p - lo), where tri is the triangle wave of period 2 (hi - lo). Any shape.
    """
    length = hi - lo
    u = torch.remainder(p - lo, 2 * length)
    return lo + length - (u - length).abs()


def direction_phrase(vy: float, vx: float) -> str:
    """"right", "up and left", ... for a velocity (y down): the nearest of :data:`DIRECTIONS` (book §8)."""
    angle = math.atan2(-vy, vx)                                               # counter-clockwise from right
    names = ["right", "up and right", "up", "up and left", "left", "down and left", "down", "down and right"]
    return names[round(angle / (math.pi / 4)) % 8]


def sample_motion(generator: torch.Generator, num_frames: int, size: int, radius: float,
                  speed: tuple[float, float]) -> dict:
    """Draw shape, colour, start and velocity, and the (F, 2) centres of the bouncing path (book §8)."""
    shape = SHAPES[int(torch.randint(len(SHAPES), (), generator=generator))]
    colour = list(COLOURS)[int(torch.randint(len(COLOURS), (), generator=generator))]
    direction = list(DIRECTIONS)[int(torch.randint(len(DIRECTIONS), (), generator=generator))]
    u = torch.rand(3, generator=generator, dtype=torch.float64)
    dy, dx = DIRECTIONS[direction]
    v = torch.tensor([dy, dx], dtype=torch.float64) / math.hypot(dy, dx)
    v = v * (speed[0] + u[0] * (speed[1] - speed[0]))                         # (2,) pixels per frame
    lo, hi = radius, size - radius                                            # centre range keeping the shape inside
    # start where the first step does not hit a wall, so frames 0 -> 1 move as the caption says
    first_lo, first_hi = lo + (-v).clamp(min=0), hi - v.clamp(min=0)          # (2,), (2,)
    start = first_lo + u[1:] * (first_hi - first_lo)                          # (2,) (cy, cx)
    f = torch.arange(num_frames, dtype=torch.float64)[:, None]                # (F, 1)
    centres = bounce(start + f * v, lo, hi)                                   # (F, 2)
    return dict(shape=shape, colour=colour, direction=direction, radius=radius,
                start=tuple(start.tolist()), velocity=tuple(v.tolist()), centres=centres)


def render_clip(motion: dict, size: int, antialias: int = 4, colours: list[str] | None = None) -> torch.Tensor:
    """Draw a motion (from :func:`sample_motion`) as a clip (F, 3, size, size) in [-1, 1] (book §8).

    ``colours`` (one name per frame) repaints frame f in ``colours[f]``: a flickering clip, the
    inconsistency the metrics of :mod:`diffcourse.video.consistency` must catch.
    """
    F = len(motion["centres"])
    colours = colours if colours is not None else [motion["colour"]] * F
    if len(colours) != F:
        raise ValueError(f"need one colour per frame ({F}), got {len(colours)}")
    frames = [render_objects([dict(shape=motion["shape"], colour=col, center=tuple(c.tolist()),
                                   radius=motion["radius"])], size, antialias)
              for c, col in zip(motion["centres"], colours)]                     # F x (3, H, W)
    return torch.stack(frames)                                                    # (F, 3, H, W)


def _caption(motion: dict) -> str:
    return f"a {motion['colour']} {motion['shape']} moving {motion['direction']}"


class MovingShapesDataset(torch.utils.data.Dataset):
    """``n`` clips of a bouncing shape, clip i determined by (seed, i) (book §8).

    An item is a dict: ``video`` (F, 3, size, size) float32 in [-1, 1], ``caption`` (str) and
    ``tokens`` (max_len,) long. ``radius`` is the shape's half-extent as a fraction of ``size``;
    ``speed`` the range of speeds in pixels per frame at size 32 (scaled with the size).
    """

    def __init__(self, n: int, seed: int = 0, num_frames: int = 16, size: int = 32,
                 radius: float = 0.12, speed: tuple[float, float] = (1.0, 2.5), antialias: int = 4,
                 max_len: int = 12):
        if not 0 < radius < 0.5:
            raise ValueError(f"radius must be a fraction of the size in (0, 0.5), got {radius}")
        self.n, self.seed, self.num_frames, self.size = n, seed, num_frames, size
        self.radius, self.speed, self.antialias, self.max_len = radius, speed, antialias, max_len

    def __len__(self) -> int:
        return self.n

    def motion(self, index: int) -> dict:
        """Shape, colour, direction, radius (px), start, velocity (px/frame), (F, 2) centres of clip i (§8)."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} clips")
        # offset the seed so clip i is not drawn from the same numbers as shapes image i
        gen = _item_generator(self.seed + 7_919, index)
        scale = self.size / 32
        return sample_motion(gen, self.num_frames, self.size, self.radius * self.size,
                             (self.speed[0] * scale, self.speed[1] * scale))

    def __getitem__(self, index: int) -> dict:
        m = self.motion(index)
        caption = _caption(m)
        return dict(video=render_clip(m, self.size, self.antialias), caption=caption,
                    tokens=tokenize(caption, self.max_len))


def make_moving_shapes(n: int, seed: int = 0, num_frames: int = 16, size: int = 32, **kwargs):
    """``n`` clips (n, F, 3, size, size) in [-1, 1], their captions and motions (book §8).

    Identical to items 0..n-1 of ``MovingShapesDataset(n, seed, num_frames, size, **kwargs)``.
    """
    ds = MovingShapesDataset(n, seed=seed, num_frames=num_frames, size=size, **kwargs)
    items = [ds[i] for i in range(n)]
    clips = torch.stack([it["video"] for it in items]) if n else torch.zeros(0, num_frames, 3, size, size)
    return clips, [it["caption"] for it in items], [ds.motion(i) for i in range(n)]
