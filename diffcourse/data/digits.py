"""scikit-learn's bundled handwritten digits, as images for diffusion (book §3, the U-Net chapter).

``sklearn.datasets.load_digits`` ships inside scikit-learn (nothing is downloaded): 1797 grey
8x8 images of the digits 0-9, pixel values 0..16. Here they become float32 tensors (N, 1, 8, 8)
in [-1, 1] (x / 8 - 1), optionally resized to 16x16 with bilinear interpolation.

The fixed split (documented here because later chapters depend on it): within each digit class,
take the samples in the order ``load_digits`` returns them and number them 0, 1, 2, ...; every
sample whose number is congruent to 4 mod 5 is **held out** (20% of each class rounded down, 355 images in
all), the rest (1442 images) is the **train** part used to train diffusion models. The held-out
part trains the digit classifier that measures sample quality, so no diffusion model ever sees it.
The rule uses no random numbers, so it is the same on every machine and every library version.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["load_digits", "digits_split_indices", "digits_dataset", "HELDOUT_EVERY", "SPLITS"]

HELDOUT_EVERY = 5          # every 5th sample of each class (rank % 5 == 4) is held out
SPLITS = ("train", "heldout", "all")


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(1797, 8, 8) float32 pixel values 0..16 and (1797,) long labels, straight from sklearn."""
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    return torch.from_numpy(d.images).to(torch.float32), torch.from_numpy(d.target).to(torch.long)


def digits_split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into sklearn's order) of the train and held-out parts, both sorted (book §3).

    Stratified and deterministic: within each class, every ``HELDOUT_EVERY``-th sample (rank 4, 9,
    14, ...) is held out. Returns (train_idx, heldout_idx), long tensors, disjoint, covering all 1797.
    """
    _, labels = _raw_digits()
    rank = torch.zeros_like(labels)                                            # rank within its class
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    heldout = rank % HELDOUT_EVERY == HELDOUT_EVERY - 1
    return (~heldout).nonzero().flatten(), heldout.nonzero().flatten()


def load_digits(split: str = "train", size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, size, size) float32 in [-1, 1] and (N,) long labels (book §3).

    ``split``: ``"train"`` (for diffusion training), ``"heldout"`` (for the quality classifier) or
    ``"all"``. ``size``: 8 (native) or any larger size, reached by bilinear interpolation
    (``align_corners=False``); 16 is what the U-Net chapter uses.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8 (the native size), got {size!r}")
    images, labels = _raw_digits()
    if split != "all":
        train_idx, heldout_idx = digits_split_indices()
        idx = train_idx if split == "train" else heldout_idx
        images, labels = images[idx], labels[idx]
    x = (images / 8.0 - 1.0).unsqueeze(1)                                      # (N, 1, 8, 8) in [-1, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # (N, 1, size, size)
        x = x.clamp(-1.0, 1.0)
    return x.contiguous(), labels.clone()


def digits_dataset(split: str = "train", size: int = 8) -> torch.utils.data.TensorDataset:
    """The same as :func:`load_digits`, wrapped as a ``TensorDataset`` of (image, label) (book §3)."""
    return torch.utils.data.TensorDataset(*load_digits(split, size))
