"""Sample quality on the digits, measured by the course's own classifier (book §2.7, the speed/quality table).

The "digit FID" is the Fréchet Inception Distance of Heusel et al. (2017) with Inception replaced by
the small :class:`~diffcourse.models.classifier.DigitClassifier` (trained on the held-out split only).
Fit a Gaussian to the classifier's features of the samples (mu_s, S_s) and of real digits (mu_r, S_r)::

    FD = ||mu_s - mu_r||^2 + Tr(S_s + S_r - 2 (S_s S_r)^(1/2))

Like FID it is biased upwards for small sample counts, so a number means something only next to
the **floor**: the same distance between two sets of *real* digits of the same size
(:func:`real_floor`). The reference set is the held-out split (355 digits); the floor compares
train-split digits (which the classifier never saw, like a generator's samples) against it.

The second number is the share of samples the classifier assigns to one digit with probability
above a threshold (0.9 by default): blurry or hybrid samples are not classified confidently.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import nn

__all__ = ["gaussian_stats", "frechet_distance", "classifier_features", "digit_fid", "confident_share", "class_agreement",
           "real_floor", "load_digit_classifier", "reference_stats", "CLASSIFIER_NAME"]

CLASSIFIER_NAME = "digit_classifier"


def load_digit_classifier(device: torch.device | str | None = "cpu") -> nn.Module:
    """The zoo's digit classifier, its sha256 verified, in eval mode (book §2.7).

    It has no noise schedule, so it is loaded with :func:`diffcourse.training.load_checkpoint`
    after :func:`diffcourse.zoo.verify` rather than with :func:`diffcourse.zoo.load`.
    """
    from . import zoo
    from .training import load_checkpoint

    model, _ = load_checkpoint(zoo.verify(CLASSIFIER_NAME), device)
    return model.eval()


@torch.no_grad()
def classifier_features(classifier: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features of images x (N, 1, H, W) in [-1, 1], clamped to that range (book §2.7). Returns (N, F)."""
    device = next(classifier.parameters()).device
    feats = [classifier.features(xb.clamp(-1, 1).to(device, torch.float32)).cpu()
             for xb in x.split(batch_size)]
    return torch.cat(feats).double()                                            # (N, F)


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), float64 numpy (book §2.7)."""
    f = features.detach().cpu().double().numpy()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, F), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2) (book §2.7)::

        ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))

    The matrix square root is scipy's; its tiny imaginary part from round-off is dropped, and a
    singular product gets the usual eps * I regularisation of the FID reference code.
    """
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(cov1)) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = covmean.real
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def reference_stats(classifier: nn.Module, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and covariance of the 355 held-out real digits: the FID reference (book §2.7)."""
    from .data.digits import load_digits

    x, _ = load_digits("heldout", size)
    return gaussian_stats(classifier_features(classifier, x))


def digit_fid(samples: torch.Tensor, classifier: nn.Module, reference=None) -> float:
    """Digit FID of samples (N, 1, H, W) in [-1, 1] against the held-out digits (book §2.7).

    ``reference``: precomputed :func:`reference_stats` (computed here when None). Compare only with
    :func:`real_floor` for the same N.
    """
    mu_r, cov_r = reference if reference is not None else reference_stats(classifier, samples.shape[-1])
    mu_s, cov_s = gaussian_stats(classifier_features(classifier, samples))
    return frechet_distance(mu_s, cov_s, mu_r, cov_r)


@torch.no_grad()
def confident_share(samples: torch.Tensor, classifier: nn.Module, threshold: float = 0.9) -> float:
    """Share of samples (N, 1, H, W) whose top class probability exceeds ``threshold`` (book §2.7)."""
    device = next(classifier.parameters()).device
    probs = torch.softmax(classifier(samples.clamp(-1, 1).to(device, torch.float32)), dim=-1)   # (N, 10)
    return float((probs.max(dim=-1).values > threshold).float().mean())


@torch.no_grad()
def class_agreement(samples: torch.Tensor, labels: torch.Tensor, classifier: nn.Module,
                    num_classes: int = 10) -> torch.Tensor:
    """Per requested class, the share of samples the classifier assigns to that class (book §3.5).

    ``samples`` (N, 1, H, W) in [-1, 1], ``labels`` (N,) the classes they were generated for.
    Returns (num_classes,) float shares; a class with no samples gets NaN. The mean over classes is
    the chapter's headline number for a class-conditional model.
    """
    labels = torch.as_tensor(labels).cpu().long()
    if labels.shape != (len(samples),):
        raise ValueError(f"need one label per sample: {len(samples)} samples, labels of shape {tuple(labels.shape)}")
    device = next(classifier.parameters()).device
    predicted = classifier(samples.clamp(-1, 1).to(device, torch.float32)).argmax(-1).cpu()   # (N,)
    hits = torch.zeros(num_classes).index_add_(0, labels, (predicted == labels).float())
    counts = torch.bincount(labels, minlength=num_classes).float()
    return hits / counts                                                  # (num_classes,), NaN where no samples


def real_floor(n: int, classifier: nn.Module, reference=None, seed: int = 0, size: int = 8) -> float:
    """The digit FID of ``n`` real train-split digits (drawn without replacement with ``seed``) (book §2.7).

    The best value a perfect generator could expect with n samples: the Fréchet distance's small-sample bias
    plus the real difference between two halves of the same data set.
    """
    from .data.digits import load_digits

    x, _ = load_digits("train", size)
    if not 2 <= n <= len(x):
        raise ValueError(f"n must be in 2..{len(x)} (the train split's size), got {n}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return digit_fid(x[idx], classifier, reference)
