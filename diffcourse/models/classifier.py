"""A small CNN that classifies 8x8 digits: the course's judge of sample quality (book §2.3, the speed/quality table).

It is trained only on the **held-out** split of :mod:`diffcourse.data.digits`, which no diffusion
model ever sees. Its penultimate features (``features``) are what :mod:`diffcourse.metrics`
compares between samples and real digits (the "digit FID"); its softmax says how confidently a
sample looks like one digit::

    x (N, 1, 8, 8) -> [conv 3x3 -> GN -> SiLU] x 2 -> avg-pool 2 -> [conv 3x3 -> GN -> SiLU]
                   -> global mean -> features (N, F) -> dropout -> linear -> logits (N, 10)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["DigitClassifierConfig", "DigitClassifier", "shift_augment", "train_classifier", "accuracy"]


@dataclass
class DigitClassifierConfig:
    """Size of a :class:`DigitClassifier` (book §2.3)."""

    in_channels: int = 1
    width: int = 32                  # channels of the first two convolutions
    features: int = 64               # F, the width of the feature vector the digit FID uses
    num_classes: int = 10
    dropout: float = 0.3

    @classmethod
    def tiny(cls) -> "DigitClassifierConfig":
        """For tests: a few thousand parameters."""
        return cls(width=8, features=16)

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.SiLU())


class DigitClassifier(nn.Module):
    """Digit classifier (book §2.3). ``model(x)``: (N, 1, H, W) in [-1, 1] -> logits (N, 10)."""

    def __init__(self, config: DigitClassifierConfig | None = None):
        super().__init__()
        self.config = cfg = config or DigitClassifierConfig()
        self.body = nn.Sequential(_conv(cfg.in_channels, cfg.width), _conv(cfg.width, cfg.width),
                                  nn.AvgPool2d(2), _conv(cfg.width, cfg.features))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.features, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features the digit FID compares (book §2.3). (N, 1, H, W) -> (N, F)."""
        return self.body(x).mean(dim=(2, 3))                                     # (N, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))                         # (N, 10)


# ----------------------------------------------------------------------------- training

def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with background (-1) (book §2.3).

    (N, C, H, W) -> (N, C, H, W). Handwriting is not centred exactly; the shifts teach the classifier so.
    """
    N, _, H, W = x.shape
    p = max_shift
    padded = nn.functional.pad(x, (p, p, p, p), value=-1.0)                      # (N, C, H+2p, W+2p)
    dy, dx = torch.randint(0, 2 * p + 1, (2, N), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(N)])  # (N, C, H, W)


def train_classifier(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor, *, steps: int = 1500,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0, progress: bool = False) -> DigitClassifier:
    """Cross-entropy training with AdamW, cosine learning rate and 1-pixel shifts (book §2.3); returns the model in eval mode.

    x: (N, 1, H, W) in [-1, 1], y: (N,) labels. Batches and shifts come from a generator seeded with ``seed``.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in tqdm(range(steps), desc="classifier", disable=not progress, mininterval=0.5):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        logits = model(shift_augment(x[idx], g))                                 # (B, 10)
        loss = nn.functional.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` (N, 1, H, W) classified as ``y`` (N,) (book §2.3)."""
    model.eval()
    return float((model(x).argmax(-1) == y.to(x.device)).float().mean())
