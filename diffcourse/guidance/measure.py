"""What guidance buys and what it costs, measured (book §5.5): adherence, diversity, saturation.

- **adherence**: the share of samples the course's digit classifier (§2.7) assigns to the requested class,
  averaged over classes (:func:`diffcourse.metrics.class_agreement`).
- **diversity**: per requested class, the mean pairwise Euclidean distance between its samples (pixels, or
  any features passed in), averaged over classes. Guidance that collapses a class onto one prototype drives it
  towards 0.
- **saturation**: the share of pixel values outside [-1, 1] (they are clipped when the image is shown or saved),
  and pixel statistics: large w extrapolates (eq. 5.3) and pushes values past the data's range.
"""
from __future__ import annotations

import torch

__all__ = ["adherence", "diversity", "clipping_share", "pixel_stats"]


@torch.no_grad()
def adherence(samples: torch.Tensor, labels: torch.Tensor, classifier) -> float:
    """Mean over the requested classes of the share classified as requested; samples (N, 1, H, W), labels (N,)."""
    from ..metrics import class_agreement

    per_class = class_agreement(samples, labels, classifier)                    # (10,), NaN where no samples
    return float(per_class[~per_class.isnan()].mean())


def diversity(samples: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> float:
    """Mean pairwise L2 distance within each class, averaged over classes with >= 2 samples.

    samples (N, ...) (flattened) or ``features`` (N, F) instead of pixels; labels (N,).
    """
    x = (samples if features is None else features).flatten(1).double()        # (N, D)
    labels = torch.as_tensor(labels).cpu()
    means = []
    for k in labels.unique():
        xk = x[labels == k]                                                      # (n_k, D)
        n = len(xk)
        if n < 2:
            continue
        d = torch.cdist(xk, xk)                                                  # (n_k, n_k), zero diagonal
        means.append(d.sum() / (n * (n - 1)))
    if not means:
        raise ValueError("diversity needs at least one class with two samples")
    return float(torch.stack(means).mean())


def clipping_share(samples: torch.Tensor, limit: float = 1.0) -> float:
    """Share of pixel values with ``|x| > limit`` (those a display clips), samples (N, ...) before clamping."""
    return float((samples.abs() > limit).float().mean())


def pixel_stats(samples: torch.Tensor, limit: float = 1.0, near: float = 0.9) -> dict[str, float]:
    """Saturation readout of samples (N, ...) before clamping: clipping share (``|x| > limit``), share near the
    extremes (``|x| > near * limit`` after clamping), mean ``|x|``, std and max ``|x|``."""
    x = samples.detach().float()
    return {"clipped": clipping_share(x, limit),
            "saturated": float((x.clamp(-limit, limit).abs() > near * limit).float().mean()),
            "mean_abs": float(x.abs().mean()), "std": float(x.std()), "max_abs": float(x.abs().max())}
