"""The guidance dial on chapter 4's text-to-image shapes model, measured (book §5.5, eq. 5.3).

The digits of §5.5 have one attribute to obey (the class); a caption of the shapes has four: colour, shape,
size and position, each read back from the image by chapter 4's attribute checker (§4.9). For each guidance
scale ``w`` the same prompts and the same starting noises go through the course's CFG loop
(:func:`.text.sample_text_cfg`, which applies eq. 5.3 for every w, also 0 <= w < 1 where the pipeline would
silently drop guidance), and :func:`guidance_curve` reports:

- **adherence** per attribute and jointly (colour+position+shape, and all four);
- **diversity**: per prompt, the mean pairwise distance between its samples (pixels after clamping),
  averaged over prompts (:func:`.measure.diversity` with the prompt as the label);
- **saturation**: :func:`.measure.pixel_stats` of the decoder's output before clipping. On the shapes the
  black background already sits at -1, so about half the pixels are at the clipping limit at every w; the
  artifacts of a large w show better as :func:`off_palette_share`, the pixels that are neither background
  nor one of the palette's colours.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .measure import diversity, pixel_stats
from .text import sample_text_cfg

__all__ = ["curve_prompts", "off_palette_share", "guidance_curve"]


def curve_prompts(n_prompts: int, repeats: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """``n_prompts`` one-shape captions (chapter 4's :func:`~diffcourse.latent.adherence.adherence_prompts`),
    each repeated ``repeats`` times, and the prompt index of every sample (N,) with N = n_prompts * repeats."""
    from ..latent.adherence import adherence_prompts

    if n_prompts < 1 or repeats < 2:
        raise ValueError(f"need at least one prompt and two samples per prompt, got {n_prompts} and {repeats}")
    prompts = adherence_prompts(n_prompts, seed)
    return [p for p in prompts for _ in range(repeats)], torch.arange(n_prompts).repeat_interleave(repeats)


def off_palette_share(images: torch.Tensor, tol: float = 0.25) -> float:
    """Share of pixels of images (N, 3, H, W) in [-1, 1] farther than ``tol`` (RGB distance in [0, 1] units)
    from black and from every colour of the shapes' palette: smudges, halos and washed-out colours (§5.5)."""
    from ..data.shapes import COLOURS

    palette = torch.tensor([[0.0, 0.0, 0.0], *COLOURS.values()])                # (7, 3): background + colours
    x = ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).reshape(-1, 3)   # (N*H*W, 3) in [0, 1]
    nearest = torch.cdist(x, palette).min(dim=1).values                          # (N*H*W,)
    return float((nearest > tol).float().mean())


@torch.no_grad()
def guidance_curve(pipe, w_grid, n_prompts: int = 8, repeats: int = 6, *, seed: int = 0,
                   num_inference_steps: int = 15, progress: bool = True) -> dict[float, dict]:
    """Adherence, diversity and saturation of the shapes pipeline ``pipe`` for each w in ``w_grid`` (§5.5).

    Every w sees the same prompts (:func:`curve_prompts`) and the same noise (``seed``). Returns
    ``{w: {"colour", "shape", "size", "position", "colour+position+shape", "all", "diversity", "clipped",
    "saturated", "mean_abs", "std", "max_abs", "off_palette", "images"}}`` with ``images`` (N, 3, H, W) clamped to [-1, 1].
    """
    from ..latent.attributes import attribute_matches

    prompts, labels = curve_prompts(n_prompts, repeats, seed)
    out = {}
    for w in tqdm(list(w_grid), desc="guidance scales", disable=not progress):
        raw = sample_text_cfg(pipe, prompts, seed=seed, num_inference_steps=num_inference_steps,
                              guidance_scale=float(w), clamp=False)                 # (N, 3, H, W), not clipped
        images = raw.clamp(-1, 1)
        row = {k: float(v.float().mean()) for k, v in attribute_matches(images, prompts).items()}
        row["diversity"] = diversity(images, labels)
        row.update(pixel_stats(raw))
        row["off_palette"] = off_palette_share(images)
        row["images"] = images
        out[float(w)] = row
    return out
