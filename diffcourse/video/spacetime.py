"""Spacetime patches: a video as one sequence of tubelet tokens, and what that costs (book §8.7, eqs. 8.11-8.13).

Sora, CogVideoX and Wan do not factorise attention: they cut the (latent) video into *tubelets* of
p_t frames x p x p pixels, flatten each to one token and run a Transformer (a DiT, book §7.7) over all
of them at once::

    (B, C, F, H, W) -> (B, N, p_t p p C),   N = (F / p_t) (H / p) (W / p)                        (eq. 8.11)

Before patching, a causal video VAE compresses time by c_t and space by c_s, keeping the first frame
on its own (so a single image is a 1-frame video)::

    F' = 1 + (F - 1) / c_t,   H' = H / c_s,   W' = W / c_s                                        (eq. 8.12)

Full attention over N tokens compares N^2 pairs per layer; factorised attention (§8.2) compares
F'' (H''W'')^2 + H''W'' F''^2 for the token grid F'' x H'' x W'' (eq. 8.13). :data:`PUBLISHED` holds
published settings, so the arithmetic can be run on them (:func:`token_count`).
:class:`SpacetimeDiT` is the course-sized model: tubelet embedding, a frame plus 2-D sin-cos position
code, the DiT blocks of :mod:`diffcourse.flow.dit` (adaLN-Zero) over every token of the clip.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..flow.dit import DiTBlock, FinalLayer, sincos_pos_embed_2d
from ..models.embeddings import TimeMLP
from .temporal import frame_position_embedding

__all__ = ["spacetime_patchify", "spacetime_unpatchify", "latent_grid", "token_count",
           "PUBLISHED", "SpacetimeDiTConfig", "SpacetimeDiT"]

# Published settings (frames, height, width; causal VAE compression (c_t, c_s); patch (p_t, p)):
PUBLISHED = {
    "CogVideoX-5B": dict(frames=49, height=480, width=720, compression=(4, 8), patch=(1, 2)),
    "Wan2.1-14B (480p)": dict(frames=81, height=480, width=832, compression=(4, 8), patch=(1, 2)),
}


def spacetime_patchify(x: torch.Tensor, pt: int, p: int) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, N, pt*p*p*C) tubelet tokens, frame-major then row-major (book §8.7, eq. 8.11).

    Token (i, j, k) holds frames i*pt..(i+1)*pt-1, rows j*p.., columns k*p..; inside a token the
    values are ordered (pt, p, p, C).
    """
    B, C, F, H, W = x.shape
    if F % pt or H % p or W % p:
        raise ValueError(f"a ({F}, {H}, {W}) video cannot be cut into ({pt}, {p}, {p}) tubelets")
    f, h, w = F // pt, H // p, W // p
    x = x.reshape(B, C, f, pt, h, p, w, p)                                          # (B, C, f, pt, h, p, w, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)                                           # (B, f, h, w, pt, p, p, C)
    return x.reshape(B, f * h * w, pt * p * p * C)                                  # (B, N, pt p p C)


def spacetime_unpatchify(tokens: torch.Tensor, pt: int, p: int, channels: int, frames: int, height: int,
                         width: int) -> torch.Tensor:
    """(B, N, pt*p*p*C) -> (B, C, F, H, W): the inverse of :func:`spacetime_patchify` (book §8.7)."""
    B, N, D = tokens.shape
    f, h, w = frames // pt, height // p, width // p
    if N != f * h * w or D != pt * p * p * channels:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fit a ({channels}, {frames}, {height}, {width}) "
                         f"video in ({pt}, {p}, {p}) tubelets")
    x = tokens.reshape(B, f, h, w, pt, p, p, channels)                              # (B, f, h, w, pt, p, p, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)                                           # (B, C, f, pt, h, p, w, p)
    return x.reshape(B, channels, frames, height, width)                            # (B, C, F, H, W)


def latent_grid(frames: int, height: int, width: int, compression: tuple[int, int] = (4, 8),
                causal: bool = True) -> tuple[int, int, int]:
    """(F', H', W') after a video VAE compressing time by c_t and space by c_s (book §8.7, eq. 8.12).

    A causal VAE keeps the first frame alone: F' = 1 + (F - 1) / c_t (49 frames -> 13); otherwise F / c_t.
    """
    ct, cs = compression
    if (frames - causal) % ct or height % cs or width % cs:
        raise ValueError(f"({frames}, {height}, {width}) is not compressible by c_t={ct}, c_s={cs} (causal={causal})")
    return (1 + (frames - 1) // ct if causal else frames // ct), height // cs, width // cs


def token_count(frames: int, height: int, width: int, compression: tuple[int, int] = (1, 1),
                patch: tuple[int, int] = (1, 1), causal: bool = False) -> dict:
    """The token grid and counts of a video (book §8.7, eqs. 8.11-8.13).

    Returns ``latent`` (F', H', W'), ``grid`` (F'', H'', W'') of tubelets, ``tokens`` N = F'' H'' W'',
    ``full_pairs`` N^2 and ``factorised_pairs`` F''(H''W'')^2 + H''W'' F''^2 per attention layer.
    With compression (1, 1) and causal=False it is the patch arithmetic of eq. 8.11 alone.
    """
    lat = latent_grid(frames, height, width, compression, causal) if compression != (1, 1) else (frames, height, width)
    pt, p = patch
    if lat[0] % pt and lat[0] > 1:
        # pad the latent frames to a multiple of p_t
        lat = (lat[0] + pt - lat[0] % pt, lat[1], lat[2])
    if lat[1] % p or lat[2] % p:
        raise ValueError(f"a {lat[1]}x{lat[2]} latent cannot be cut into {p}x{p} patches")
    grid = (max(1, lat[0] // pt), lat[1] // p, lat[2] // p)
    n_space = grid[1] * grid[2]
    n = grid[0] * n_space
    return dict(latent=lat, grid=grid, tokens=n, full_pairs=n * n,
                factorised_pairs=grid[0] * n_space ** 2 + n_space * grid[0] ** 2)


@dataclass
class SpacetimeDiTConfig:
    """Size of a :class:`SpacetimeDiT` (book §8.7)."""

    frames: int = 8
    input_size: int = 16
    in_channels: int = 3
    patch_t: int = 2                    # p_t: frames per tubelet
    patch_size: int = 4                 # p: pixels per tubelet side
    hidden_size: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    time_freq_dim: int = 64
    time_scale: float = 1.0             # the model sees t * time_scale (1000 for flow times in [0, 1])

    def __post_init__(self):
        if self.frames % self.patch_t or self.input_size % self.patch_size:
            raise ValueError(f"({self.frames}, {self.input_size}) must be divisible by ({self.patch_t}, {self.patch_size})")
        if self.hidden_size % 4 or self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by 4 and by num_heads={self.num_heads}")

    @property
    def num_tokens(self) -> int:
        return (self.frames // self.patch_t) * (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class SpacetimeDiT(nn.Module):
    """A DiT over the tubelet tokens of a whole clip, full spacetime attention (book §8.7, eq. 8.11).

    ``model(x_t, t)``: x_t (B, C, F, H, W), t (B,) or a scalar -> (B, C, F, H, W). Position code of
    token (i, j, k): P_frame[i] + P_2d[j, k]. adaLN-Zero: a fresh model outputs 0.
    """

    def __init__(self, config: SpacetimeDiTConfig | None = None):
        super().__init__()
        self.config = cfg = config or SpacetimeDiTConfig()
        D, pt, p = cfg.hidden_size, cfg.patch_t, cfg.patch_size
        self.x_embedder = nn.Linear(pt * p * p * cfg.in_channels, D)                  # a tubelet -> a token
        grid_t, grid_s = cfg.frames // pt, cfg.input_size // p
        pos = frame_position_embedding(grid_t, D)[:, None, :] + sincos_pos_embed_2d(D, grid_s)[None]  # (f, hw, D)
        self.register_buffer("pos_embed", pos.reshape(1, grid_t * grid_s ** 2, D), persistent=False)
        self.t_embedder = TimeMLP(cfg.time_freq_dim, D)
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(D, p, pt * cfg.in_channels)                    # D -> p*p*(pt*C) = pt p p C
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)                        # adaLN-Zero (eq. 7.16)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        B, C, F, H, W = x_t.shape
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        t = t.expand(B) if t.ndim == 0 else t                                           # (B,)
        c = self.t_embedder(t * cfg.time_scale).to(x_t.dtype)                           # (B, D)
        h = self.x_embedder(spacetime_patchify(x_t, cfg.patch_t, cfg.patch_size))       # (B, N, D)
        h = h + self.pos_embed.to(h)                                                    # (B, N, D)
        for block in self.blocks:
            h = block(h, c)                                                             # (B, N, D) full attention
        out = self.final_layer(h, c)                                                    # (B, N, pt p p C)
        return spacetime_unpatchify(out, cfg.patch_t, cfg.patch_size, C, F, H, W)       # (B, C, F, H, W)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
