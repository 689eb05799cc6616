"""The attribute checker: read colour, shape, size and position back from an image (book §4.9).

A text-to-image model follows its prompt when the image shows what the caption says. For the
shapes the caption's four attributes can be measured directly, with no learned judge:

* coverage m(i, j) = the brightest channel in [0, 1] (the palette's colours all have a channel at 1,
  the background is black), and the object is where m > 1/2;
* position: the grid cell of the coverage-weighted centroid (every shape's centroid is its centre);
* colour: the palette colour nearest to the mean colour of the covered pixels;
* shape and size: the template among the 4 shapes x 2 sizes, drawn by the dataset's own rasteriser at
  the measured centroid, whose coverage is nearest (L1) to m.

:func:`read_attributes` does this for one-shape images; :func:`parse_caption` reads a caption back
into attributes; :func:`attribute_matches` compares the two, per attribute. On real rendered images
the checker is right on every attribute (tests/test_latent_attributes.py), so what it measures on
generated images is the model's adherence, not the checker's error.
"""
from __future__ import annotations

import torch

from ..data.shapes import COLOURS, POSITION_PHRASES, POSITIONS, SHAPES, SIZES, shape_mask

__all__ = ["ATTRIBUTES", "read_attributes", "parse_caption", "attribute_matches"]

ATTRIBUTES = ("colour", "shape", "size", "position")
_PALETTE = torch.tensor(list(COLOURS.values()))                               # (6, 3) in [0, 1]
_PHRASE_TO_POSITION = {v: k for k, v in POSITION_PHRASES.items()}


def read_attributes(image: torch.Tensor) -> dict:
    """Colour, shape, size and position of the one shape in ``image`` (3, H, W) in [-1, 1] (book §4.9).

    Returns ``dict(colour, shape, size, position, center=(cy, cx), area)``; an image with no covered
    pixel gives ``None`` for every attribute.
    """
    x = ((image.float().cpu() + 1) / 2).clamp(0, 1)                            # (3, H, W) in [0, 1]
    size = x.shape[-1]
    m = x.max(0).values                                                       # (H, W) coverage
    mask = m > 0.5
    if not mask.any():
        return dict(colour=None, shape=None, size=None, position=None, center=None, area=0.0)
    w = m * mask                                                              # (H, W) weights
    ys = torch.arange(size, dtype=torch.float32) + 0.5
    cy = float((w.sum(1) * ys).sum() / w.sum())
    cx = float((w.sum(0) * ys).sum() / w.sum())
    cell = size / 3
    row, col = min(int(cy // cell), 2), min(int(cx // cell), 2)
    mean_colour = (x * mask).flatten(1).sum(1) / mask.sum()                   # (3,)
    colour = list(COLOURS)[int(((_PALETTE - mean_colour) ** 2).sum(1).argmin())]
    best, best_err = None, float("inf")
    for shape in SHAPES:
        for size_name, frac in SIZES.items():
            template = shape_mask(shape, cy, cx, frac * size, size)           # (H, W)
            err = float((template - m.clamp(0, 1)).abs().sum())
            if err < best_err:
                best, best_err = (shape, size_name), err
    return dict(colour=colour, shape=best[0], size=best[1], position=POSITIONS[3 * row + col],
                center=(cy, cx), area=float(mask.sum()))


def parse_caption(caption: str) -> list[dict]:
    """``"a small red circle at the top left and ..."`` -> ``[dict(size, colour, shape, position), ...]``
    (book §4.9): the inverse of :func:`diffcourse.data.shapes.caption_for`. Raises ``ValueError`` on
    a caption that is not in the dataset's grammar."""
    objects = []
    for part in caption.lower().split(" and "):
        words = part.split()
        if len(words) < 5 or words[0] != "a":
            raise ValueError(f"{part!r} is not 'a <size> <colour> <shape> <position phrase>'")
        size, colour, shape, phrase = words[1], words[2], words[3], " ".join(words[4:])
        problems = [f"{name} {value!r}" for name, value, known in
                    (("size", size, SIZES), ("colour", colour, COLOURS), ("shape", shape, SHAPES),
                     ("position", phrase, _PHRASE_TO_POSITION)) if value not in known]
        if problems:
            raise ValueError(f"unknown {', '.join(problems)} in caption {caption!r}")
        objects.append(dict(size=size, colour=colour, shape=shape, position=_PHRASE_TO_POSITION[phrase]))
    return objects


def attribute_matches(images: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
    """Per image, whether each attribute read from the image is the caption's (book §4.9).

    images (N, 3, H, W) in [-1, 1], one-shape captions. Returns ``{attribute: (N,) bool}`` for
    :data:`ATTRIBUTES`, plus ``"colour+position+shape"`` and ``"all"`` (every attribute).
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    out = {a: torch.zeros(len(images), dtype=torch.bool) for a in ATTRIBUTES}
    for i, (image, caption) in enumerate(zip(images, captions)):
        wanted = parse_caption(caption)
        if len(wanted) != 1:
            raise ValueError(f"the checker reads one shape per image; caption {i} has {len(wanted)}: {caption!r}")
        got = read_attributes(image)
        for a in ATTRIBUTES:
            out[a][i] = got[a] == wanted[0][a]
    out["colour+position+shape"] = out["colour"] & out["position"] & out["shape"]
    out["all"] = out["colour+position+shape"] & out["size"]
    return out
