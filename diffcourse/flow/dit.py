"""DiT: a Transformer on patches, conditioned by adaLN-Zero (Peebles & Xie 2023; book §7.7, eqs. 7.15-7.17).

The image is cut into p x p patches, each patch becomes a token, and a stack of Transformer blocks
predicts, per token, the velocity of its p x p pixels (flow matching, eq. 7.3)::

    patchify      (N, C, H, W) -> (N, T, p*p*C),  T = (H/p)(W/p)                             (eq. 7.15)
    embed         Linear(p*p*C -> D) + fixed 2-D sin-cos position embedding
    condition     c = TimeMLP(1000 t) + E[y]          (E has a "no class" row for CFG, eq. 7.17)
    block  x <- x + g1 * Attn(LN(x) (1 + s1) + b1);  x <- x + g2 * MLP(LN(x) (1 + s2) + b2),
           (b1, s1, g1, b2, s2, g2) = Linear(SiLU(c))                                         (eq. 7.16)
    final  Linear(LN(x) (1 + s) + b) -> (N, T, p*p*C) -> unpatchify -> (N, C, H, W)

adaLN-Zero: the Linear that produces (b, s, g) in every block, and the final layer's modulation and
projection, start at zero (:meth:`DiT.initialize_weights`). With g = 0 each block is the identity on
the residual stream, and the zero output layer makes a fresh DiT predict v = 0 everywhere. diffusers'
``DiTTransformer2DModel`` keeps PyTorch's default init for these layers (:mod:`.diffusers_dit`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models.attention import attention, merge_heads, split_heads
from ..models.embeddings import TimeMLP

__all__ = ["DiTConfig", "DiT", "DiTBlock", "FinalLayer", "patchify", "unpatchify", "sincos_pos_embed_2d", "modulate"]


# ----------------------------------------------------------------------------- config

@dataclass
class DiTConfig:
    """Size of a :class:`DiT` (book §7.7). ``tiny()`` for tests, ``digits()`` for the zoo's 8x8 digits model."""

    input_size: int = 8                 # H = W of the images
    patch_size: int = 2                 # p: tokens are p x p patches, T = (H / p)^2
    in_channels: int = 1
    hidden_size: int = 64               # D, the token width
    depth: int = 4                      # number of DiT blocks
    num_heads: int = 4                  # must divide D
    mlp_ratio: float = 4.0              # MLP hidden width = mlp_ratio * D
    num_classes: int = 10               # > 0: class-conditional, E has num_classes + 1 rows (the last: no class)
    time_freq_dim: int = 64             # sinusoidal features of 1000 t
    time_scale: float = 1000.0          # the model sees t * time_scale (diffusers' timestep = 1000 sigma)

    def __post_init__(self):
        if self.input_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide input_size={self.input_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        if (self.hidden_size // 2) % 2:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by 4 (2-D sin-cos embedding)")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def num_tokens(self) -> int:
        """T = (H / p)^2, the sequence length."""
        return (self.input_size // self.patch_size) ** 2

    @classmethod
    def tiny(cls) -> "DiTConfig":
        """For tests and graded notebooks: ~25k parameters, a millisecond per call on a CPU."""
        return cls(hidden_size=32, depth=2, num_heads=2, mlp_ratio=2.0, time_freq_dim=32)

    @classmethod
    def digits(cls) -> "DiTConfig":
        """The zoo's 8x8 digits model: 16 tokens of 2x2 pixels, D = 48, 4 heads, 4 blocks (~0.18 M
        parameters, 0.36 MB in float16)."""
        return cls(hidden_size=48)

    @classmethod
    def digits_small(cls) -> "DiTConfig":
        """The digits DiT at the size of Chapter 5's class-conditional U-Net (book §7.8: U-Net vs DiT at
        equal parameters): D = 40, otherwise :meth:`digits` (125,924 parameters against the U-Net's 130,193)."""
        return cls(hidden_size=40)

    def to_dict(self) -> dict:
        """The config as a plain dict (stored in checkpoints)."""
        return asdict(self)


# ----------------------------------------------------------------------------- tokens

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, T, p*p*C): one token per p x p patch, row-major over patches (book §7.7, eq. 7.15).

    A token's features are ordered (row in patch, column in patch, channel), as in DiT's reference code.
    """
    N, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"patch size {p} must divide the image size {H}x{W}")
    h, w = H // p, W // p
    x = x.reshape(N, C, h, p, w, p)                                          # (N, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)                                          # (N, h, w, p, p, C)
    return x.reshape(N, h * w, p * p * C)                                    # (N, T, p*p*C)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, height: int, width: int | None = None) -> torch.Tensor:
    """(N, T, p*p*C) -> (N, C, H, W), the inverse of :func:`patchify` (book §7.7, eq. 7.15)."""
    width = height if width is None else width
    N, T, F = tokens.shape
    h, w = height // p, width // p
    if T != h * w or F != p * p * channels:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fit a {channels}x{height}x{width} image in {p}x{p} "
                         f"patches (expected (N, {h * w}, {p * p * channels}))")
    x = tokens.reshape(N, h, w, p, p, channels)                              # (N, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)                                          # (N, C, h, p, w, p)
    return x.reshape(N, channels, height, width)                            # (N, C, H, W)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (grid*grid, dim) float32 (book §7.7; DiT, MAE).

    Half the channels encode the patch's row, half its column, each with 1-D sines and cosines of
    frequencies 10000^(-k / (dim/4)), k = 0..dim/4 - 1. Token order matches :func:`patchify`.
    """
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)   # (dim/4,)
    pos = torch.arange(grid, dtype=torch.float64)                                    # (g,)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")                             # (g, g) each

    def embed(p: torch.Tensor) -> torch.Tensor:
        a = p.reshape(-1, 1) * freqs                                                 # (g*g, dim/4)
        return torch.cat([a.sin(), a.cos()], dim=1)                                  # (g*g, dim/2)
    return torch.cat([embed(rows), embed(cols)], dim=1).float()                      # (g*g, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (1 + scale) + shift, per sample: x (N, T, D), shift and scale (N, D) (book §7.7, eq. 7.16)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]                          # (N, T, D)


# ----------------------------------------------------------------------------- blocks

class DiTBlock(nn.Module):
    """Pre-LN Transformer block whose LayerNorms are modulated by c and whose branches are gated (§7.7, eq. 7.16)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))   # zero at init: adaLN-Zero

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b1, s1, g1, b2, s2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)           # 6 x (N, D)
        h = modulate(self.norm1(x), b1, s1)                                          # (N, T, D)
        q, k, v = self.qkv(h).chunk(3, dim=-1)                                       # 3 x (N, T, D)
        a = attention(split_heads(q, self.heads), split_heads(k, self.heads),
                      split_heads(v, self.heads))                                    # (N, heads, T, D/heads)
        x = x + g1[:, None, :] * self.proj(merge_heads(a))                           # (N, T, D) gated attention
        h = modulate(self.norm2(x), b2, s2)                                          # (N, T, D)
        return x + g2[:, None, :] * self.mlp(h)                                      # (N, T, D) gated MLP


class FinalLayer(nn.Module):
    """Modulated LayerNorm, then Linear(D -> p*p*C) per token; modulation and projection start at 0 (§7.7)."""

    def __init__(self, dim: int, patch_size: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)                      # 2 x (N, D)
        return self.linear(modulate(self.norm(x), shift, scale))                     # (N, T, p*p*C)


# ----------------------------------------------------------------------------- the model

class DiT(nn.Module):
    """The Diffusion Transformer as a velocity model v_theta(x_t, t, y) (book §7.7, eqs. 7.15-7.17).

    ``forward(x_t, t, class_labels=None)``: x_t (N, C, H, W), t (N,) float in [0, 1] (or a scalar),
    ``class_labels`` (N,) long in 0..num_classes (num_classes = "no class"; None: no class for all).
    Returns (N, C, H, W), the predicted velocity eps - x0.
    """

    def __init__(self, config: DiTConfig | None = None):
        super().__init__()
        self.config = cfg = config or DiTConfig()
        D, p = cfg.hidden_size, cfg.patch_size
        self.x_embedder = nn.Linear(p * p * cfg.in_channels, D)                      # a patch -> a token
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, cfg.input_size // p), persistent=False)
        self.t_embedder = TimeMLP(cfg.time_freq_dim, D)
        self.y_embedder = nn.Embedding(cfg.num_classes + 1, D) if cfg.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(D, p, cfg.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier-uniform Linears, N(0, 0.02) embeddings, then adaLN-Zero: every modulation and the output
        projection set to zero, so each block is the identity and the model outputs 0 (book §7.7, eq. 7.16)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in self.t_embedder.net:
            if isinstance(lin, nn.Linear):
                nn.init.normal_(lin.weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)                        # the zero of adaLN-Zero
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def labels(self, class_labels, n: int, device) -> torch.Tensor | None:
        """Checked (N,) labels on ``device`` (None -> "no class" for all), or None for an unconditional DiT."""
        K = self.config.num_classes
        if not K:
            if class_labels is not None:
                raise ValueError("this DiT is unconditional (num_classes=0); it takes no class_labels")
            return None
        if class_labels is None:
            return torch.full((n,), K, dtype=torch.long, device=device)
        y = torch.as_tensor(class_labels, device=device)
        y = y.expand(n) if y.ndim == 0 else y
        if y.shape != (n,) or y.is_floating_point() or int(y.min()) < 0 or int(y.max()) > K:
            raise ValueError(f"class_labels must be N={n} integers in 0..{K} ({K} = no class), got "
                             f"{tuple(y.shape)} {y.dtype}")
        return y

    def condition(self, t: torch.Tensor, class_labels, n: int) -> torch.Tensor:
        """c = TimeMLP(time_scale * t) + E[y], (N, D) (book §7.7, eq. 7.16)."""
        device = self.x_embedder.weight.device
        t = torch.as_tensor(t, device=device, dtype=torch.float32)
        t = t.expand(n) if t.ndim == 0 else t                                        # (N,)
        c = self.t_embedder(t * self.config.time_scale)                              # (N, D)
        y = self.labels(class_labels, n, device)
        return c if y is None else c + self.y_embedder(y)                            # (N, D)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        N, C, H, W = x_t.shape                                                       # (N, C, H, W)
        x = self.x_embedder(patchify(x_t, cfg.patch_size))                           # (N, T, D)
        x = x + self.pos_embed                                                       # (N, T, D)
        c = self.condition(t, class_labels, N)                                       # (N, D)
        for block in self.blocks:
            x = block(x, c)                                                          # (N, T, D)
        x = self.final_layer(x, c)                                                   # (N, T, p*p*C)
        return unpatchify(x, cfg.patch_size, C, H, W)                                # (N, C, H, W)

    def num_parameters(self) -> int:
        """Number of trainable parameters (the position embedding is a fixed buffer, not counted)."""
        return sum(p.numel() for p in self.parameters())
