"""A compact U-Net denoiser for small images (book §2.1 trains it on the digits; §3 teaches it part by part).

The network eps_theta(x_t, t) of eq. 1.10 for images (N, C, H, W). Every part is a small named module::

    conv_in                                  (N, C, H, W)      -> (N, c0, H, W)
    down[i]: ResBlock x n  -> skip_i  -> Downsample (not after the last level)
    mid:     ResBlock -> SelfAttention (optional) -> ResBlock     at the lowest resolution
    up[i]:   concat(skip_i) -> ResBlock x n  -> Upsample (not after the top level)
    out:     GroupNorm -> SiLU -> conv_out (zero-initialised)     -> (N, C, H, W)

The timestep enters every :class:`ResBlock` through ``TimeMLP`` (``embeddings.py``): a per-channel
shift added between the block's two convolutions. The last convolution of every residual branch,
the attention output projection and ``conv_out`` start at zero (:meth:`UNet.initialize_weights`), so a
fresh U-Net predicts 0 everywhere, the best constant guess of eps ~ N(0, I), and each block starts
as the identity on its residual stream.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .embeddings import TimeMLP

__all__ = ["UNetConfig", "UNet", "ResBlock", "SelfAttention", "Downsample", "Upsample"]


@dataclass
class UNetConfig:
    """Size of a :class:`UNet` (book §3). ``tiny()`` for tests, ``digits()`` for the zoo's digits model."""

    in_channels: int = 1
    out_channels: int = 1
    sample_size: int = 8                        # H = W of the images
    channels: tuple[int, ...] = (16, 32)        # width of each resolution level, top to bottom
    blocks_per_level: int = 1                   # ResBlocks per level, on the way down and up
    attention: bool = True                      # self-attention in the middle (lowest resolution)
    time_dim: int = 32                          # sinusoidal features of t
    groups: int = 8                             # GroupNorm groups (must divide every width)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every width in channels={self.channels} must be divisible by groups={self.groups}")
        if self.sample_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"sample_size={self.sample_size} must be divisible by 2^(levels-1) "
                             f"= {2 ** (len(self.channels) - 1)}")

    @classmethod
    def tiny(cls) -> "UNetConfig":
        """For tests and graded notebooks: about 35k parameters, milliseconds per call on a CPU."""
        return cls(channels=(8, 16), time_dim=16, groups=4)

    @classmethod
    def digits(cls) -> "UNetConfig":
        """The zoo's 8x8 digits model (``zoo/digits_unet.safetensors``)."""
        return cls(channels=(16, 32), blocks_per_level=1, attention=True, time_dim=32, groups=8)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


# ----------------------------------------------------------------------------- parts

class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x))) + W e(t)))) with a 1x1 skip when widths differ (book §3).

    ``forward(x, temb)``: x (N, C_in, H, W), temb (N, E) -> (N, C_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))                        # (N, C_out, H, W)
        h = h + self.time_proj(nn.functional.silu(temb))[:, :, None, None]       # (N, C_out, H, W)
        h = self.conv2(nn.functional.silu(self.norm2(h)))                        # (N, C_out, H, W)
        return self.skip(x) + h                                                  # (N, C_out, H, W)


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, residual (book §3). (N, C, H, W) -> same."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(N, 3, C, H * W).unbind(1)       # 3 x (N, C, HW)
        attn = torch.softmax(q.transpose(1, 2) @ k / C ** 0.5, dim=-1)           # (N, HW, HW)
        h = (v @ attn.transpose(1, 2)).reshape(N, C, H, W)                       # (N, C, H, W)
        return x + self.proj(h)                                                  # (N, C, H, W)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution (book §3). (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then a 3x3 convolution (book §3). (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------- model

class UNet(nn.Module):
    """The U-Net denoiser (book §2.1, §3). ``model(x_t, t)``: (N, C, H, W), (N,) -> (N, C, H, W).

    ``t`` may be integer indices 0..T-1 or fractional floats (continuous-time samplers), or a scalar.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or UNetConfig()
        E = 4 * cfg.channels[0]                                                  # time-embedding width
        self.time = TimeMLP(cfg.time_dim, E)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels[0], 3, padding=1)
        self.down_blocks, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        c = cfg.channels[0]
        for i, width in enumerate(cfg.channels):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                blocks.append(ResBlock(c, width, E, cfg.groups))
                c = width
            self.down_blocks.append(blocks)
            self.downsamplers.append(Downsample(c) if i < len(cfg.channels) - 1 else nn.Identity())
        self.mid1 = ResBlock(c, c, E, cfg.groups)
        self.mid_attn = SelfAttention(c, cfg.groups) if cfg.attention else nn.Identity()
        self.mid2 = ResBlock(c, c, E, cfg.groups)
        self.up_blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for i, width in reversed(list(enumerate(cfg.channels))):
            blocks = nn.ModuleList()
            for j in range(cfg.blocks_per_level):
                blocks.append(ResBlock(c + (width if j == 0 else 0), width, E, cfg.groups))
                c = width
            self.up_blocks.append(blocks)
            self.upsamplers.append(Upsample(c) if i > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(cfg.groups, c)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Zero the last layer of every residual branch and the output: a fresh U-Net predicts 0 (book §3)."""
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.weight)
                nn.init.zeros_(m.conv2.bias)
            elif isinstance(m, SelfAttention):
                nn.init.zeros_(m.proj.weight)
                nn.init.zeros_(m.proj.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])                                           # (N,)
        temb = self.time(t).to(x_t.dtype)                                        # (N, E)
        h = self.conv_in(x_t)                                                    # (N, c0, H, W)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsamplers):
            for block in blocks:
                h = block(h, temb)                                               # (N, c_i, H_i, W_i)
            skips.append(h)
            h = down(h)                                                          # (N, c_i, H_i/2, W_i/2)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)                   # (N, c_L, H_L, W_L)
        for blocks, up in zip(self.up_blocks, self.upsamplers):
            h = torch.cat([h, skips.pop()], dim=1)                               # (N, c + c_i, H_i, W_i)
            for block in blocks:
                h = block(h, temb)                                               # (N, c_i, H_i, W_i)
            h = up(h)                                                            # (N, c_i, 2H_i, 2W_i)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))               # (N, C, H, W)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
