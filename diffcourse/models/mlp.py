"""A small denoiser for 2-D toy data (book §2.1, training a denoiser).

``ToyMLP`` predicts the network output of eq. 1.10 (eps, or x0 / v, §1.5) from a noisy point
x_t and its timestep t. It is a residual MLP; the timestep enters every block through a
sinusoidal embedding (``embeddings.py``), and x_t enters through Fourier features::

    h = W_in FourierFeatures(x_t) + TimeMLP(t)     # (N, H)
    h = h + W_2 SiLU(W_1 LayerNorm(h) + e_b(t))    # depth times; e_b a per-block view of TimeMLP(t)
    out = W_out SiLU(LayerNorm(h))                 # (N, 2); W_out starts at zero

The Fourier features [x, sin(f_k x), cos(f_k x)], f_k = (pi/2) 2^k, let a small MLP draw sharp
edges (the checkerboard's squares) that it would otherwise blur into blobs: a plain MLP learns
low frequencies first (Tancik et al. 2020). On the checkerboard (H = 64, 6000 steps), 6 frequencies
raised the share of DDIM samples on black squares from 84% to 96% for the same training time.

Starting the output layer at zero (``initialize_weights``) makes a fresh model predict 0
everywhere, the best constant guess for eps ~ N(0, I), so training starts at loss ~ 1 (per
coordinate) instead of at a random offset.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .embeddings import TimeMLP

__all__ = ["ToyMLPConfig", "ToyMLP"]


@dataclass
class ToyMLPConfig:
    """Size of a :class:`ToyMLP` (book §2.1). ``tiny()`` trains 400 steps in a few seconds on a CPU."""

    data_dim: int = 2        # D, the dimension of a data point
    hidden: int = 48         # H, the width of the residual stream
    depth: int = 3           # number of residual blocks
    time_dim: int = 32       # number of sinusoidal features of t
    fourier_features: int = 6  # K frequencies of x_t's Fourier features; 0 feeds x_t in raw

    @classmethod
    def tiny(cls) -> "ToyMLPConfig":
        """For tests and graded notebooks: about 9k parameters."""
        return cls(hidden=32, depth=2, time_dim=16, fourier_features=4)

    @classmethod
    def small(cls) -> "ToyMLPConfig":
        """The zoo's 2-D toy models: about 27k parameters (105 KiB), under a minute of CPU training."""
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- blocks

class FourierFeatures(nn.Module):
    """x -> [x, sin(f_k x), cos(f_k x)], f_k = (pi/2) 2^k for k < K. (N, D) -> (N, D (1 + 2K))."""

    def __init__(self, num_freqs: int):
        super().__init__()
        freqs = (math.pi / 2) * 2.0 ** torch.arange(num_freqs, dtype=torch.float32)   # (K,)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = x[..., None] * self.freqs.to(x.dtype)                            # (N, D, K)
        return torch.cat([x, angles.sin().flatten(1), angles.cos().flatten(1)], dim=-1)  # (N, D(1+2K))


class ResidualBlock(nn.Module):
    """h + W_2 SiLU(W_1 LayerNorm(h) + e(t)): one block of the residual stream. (N, H) -> (N, H)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        u = nn.functional.silu(self.fc1(self.norm(h)) + emb)                 # (N, H)
        return h + self.fc2(u)                                                # (N, H)


# ----------------------------------------------------------------------------- model

class ToyMLP(nn.Module):
    """Residual MLP denoiser for 2-D points (book §2.1). ``model(x_t, t)``: (N, D), (N,) -> (N, D).

    ``t`` may be integer indices 0..T-1 (the training loop, DDPM/DDIM samplers) or floats
    (fractional timesteps of continuous-time samplers); both go through the same embedding.
    """

    def __init__(self, config: ToyMLPConfig | None = None):
        super().__init__()
        self.config = config = config or ToyMLPConfig()
        H = config.hidden
        self.features = FourierFeatures(config.fourier_features)
        self.inp = nn.Linear(config.data_dim * (1 + 2 * config.fourier_features), H)
        self.time = TimeMLP(config.time_dim, H)
        self.time_to_blocks = nn.Linear(H, H * config.depth)                 # e_b(t) for every block
        self.blocks = nn.ModuleList(ResidualBlock(H) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(H)
        self.out = nn.Linear(H, config.data_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """PyTorch's default init everywhere, except a zero output layer: a fresh model predicts 0."""
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])                                        # (N,)
        temb = self.time(t)                                                   # (N, H)
        h = self.inp(self.features(x_t)) + temb                               # (N, H)
        e = self.time_to_blocks(nn.functional.silu(temb))                     # (N, H * depth)
        for block, e_b in zip(self.blocks, e.chunk(len(self.blocks), dim=-1)):
            h = block(h, e_b)                                                 # (N, H)
        return self.out(nn.functional.silu(self.out_norm(h)))                 # (N, D)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
