"""Prompt adherence of a text-to-image pipeline, measured with the attribute checker (book §4.9).

:func:`adherence_prompts` draws one-shape captions from the dataset's grammar (seeded);
:func:`measure_adherence` samples one image per prompt through the pipeline and reports the share
of images whose colour, shape, size and position are the caption's, and the joint shares.
"""
from __future__ import annotations

import torch

from .attributes import attribute_matches

__all__ = ["adherence_prompts", "measure_adherence"]


def adherence_prompts(n: int, seed: int = 0) -> list[str]:
    """n one-shape captions of the shapes dataset (items of seed ``seed``) (book §4.9)."""
    from ..data.shapes import ShapesDataset

    ds = ShapesDataset(n, seed=seed, max_shapes=1)
    return [ds[i]["caption"] for i in range(n)]


@torch.no_grad()
def measure_adherence(pipe, n: int = 64, seed: int = 0, batch_size: int = 48, **kwargs) -> dict[str, float]:
    """Share of ``n`` samples matching their prompt, per attribute and jointly (book §4.9).

    Prompts from :func:`adherence_prompts` (``seed``), images from :func:`~diffcourse.latent.pipeline.generate`
    with seed ``seed + batch index`` and the chapter's defaults unless ``kwargs`` say otherwise.
    Returns ``{"colour": ..., "shape": ..., "size": ..., "position": ..., "colour+position+shape": ..., "all": ...}``.
    """
    from .pipeline import generate

    prompts = adherence_prompts(n, seed)
    images = torch.cat([generate(pipe, prompts[i:i + batch_size], seed=seed + i, **kwargs)
                        for i in range(0, n, batch_size)])
    matches = attribute_matches(images, prompts)
    return {k: round(float(v.float().mean()), 4) for k, v in matches.items()}
