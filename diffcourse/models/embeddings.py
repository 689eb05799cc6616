"""Telling a network which timestep it is at (book §2.1, training a denoiser; reused by the U-Net in §3).

A denoiser eps_theta(x_t, t) must behave very differently at t = 10 (remove a little noise) and
t = 900 (guess almost everything). The integer t is turned into a vector of sines and cosines
of geometrically spaced frequencies -- the Transformer's positional encoding -- so that nearby
timesteps get similar vectors and a small MLP can read off both coarse and fine position.

This is the same convention as diffusers' ``Timesteps(num_channels, flip_sin_to_cos=True,
downscale_freq_shift=0)`` (the default of ``UNet2DModel``): cosines first, then sines.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sinusoidal_embedding", "TimeMLP"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (book §2.1; Vaswani et al. 2017, §3.5).

    For i = 0..dim/2-1 the frequency is f_i = max_period^(-i / (dim/2)), and
    ``emb[n] = [cos(t_n f_0), ..., cos(t_n f_{h-1}), sin(t_n f_0), ..., sin(t_n f_{h-1})]``.
    An odd ``dim`` gets one zero column at the end.

    ``t``: (N,) integer or float timesteps (fractional ones are fine); returns (N, dim) float32
    on ``t``'s device.
    """
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of N timesteps, got shape {tuple(t.shape)}")
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)              # (h,)
    freqs = torch.exp(-math.log(max_period) * i / half)                       # (h,)
    angles = t.to(torch.float32)[:, None] * freqs[None, :]                    # (N, h)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)           # (N, 2h)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))                                  # (N, dim)
    return emb


class TimeMLP(nn.Module):
    """Sinusoidal embedding followed by Linear -> SiLU -> Linear (book §2.1; §3 U-Net).

    ``forward(t)``: t (N,) -> (N, out_dim). The same block as diffusers' ``TimestepEmbedding``
    applied to ``Timesteps``.
    """

    def __init__(self, freq_dim: int, out_dim: int, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.net = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.freq_dim, self.max_period)          # (N, freq_dim)
        emb = emb.to(self.net[0].weight.dtype)
        return self.net(emb)                                                  # (N, out_dim)
