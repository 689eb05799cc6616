"""A compact U-Net denoiser for small images (book §2.1 trains it on the digits; §3 teaches it part by part).

The network eps_theta(x_t, t, y) of eq. 1.10 for images (N, C, H, W). Every part is a small named module::

    conv_in                                  (N, C, H, W)      -> (N, c0, H, W)
    down[i]: ResBlock x n  -> skip_i  -> Downsample (not after the last level)
    mid:     ResBlock -> SelfAttention -> CrossAttention -> ResBlock   at the lowest resolution
    up[i]:   concat(skip_i) -> ResBlock x n  -> Upsample (not after the top level)
    out:     GroupNorm -> SiLU -> conv_out (zero-initialised)     -> (N, C, H, W)

The conditioning vector e = TimeMLP(t) + E[y] (eq. 3.7) enters every :class:`ResBlock` as a
per-channel shift between its two convolutions (eq. 3.2); the class embedding E is there only when
``num_classes > 0`` and has one extra row, the "no class" label used for unconditional calls (and by
classifier-free guidance, book §5). Self-attention (eq. 3.5) and cross-attention to a context of
tokens (eq. 3.6, when ``context_dim > 0``) are in :mod:`diffcourse.models.attention`. With
``conditioning="cross"`` the class reaches the network the way a text prompt does in Stable Diffusion:
not added to e, but as a context of two tokens [s, E[y]] (a learned start token and the class's
embedding) that the bottleneck's cross-attention reads.
``skips=False`` builds the same network without the skip connections, for the ablation of §3.3.

The last convolution of every residual branch, the attention output projections and ``conv_out``
start at zero (:meth:`UNet.initialize_weights`), so a fresh U-Net predicts 0 everywhere, the best
constant guess of eps ~ N(0, I), and each block starts as the identity on its residual stream.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .attention import CrossAttention, SelfAttention
from .embeddings import TimeMLP

__all__ = ["UNetConfig", "UNet", "ResBlock", "SelfAttention", "CrossAttention", "Downsample", "Upsample"]


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
    num_classes: int = 0                        # > 0: class-conditional, E has num_classes + 1 rows (§3.5)
    context_dim: int = 0                        # > 0: cross-attention to (N, L, context_dim) tokens (§3.4)
    heads: int = 1                              # attention heads (must divide the lowest width)
    skips: bool = True                          # False: no skip connections (the ablation of §3.3)
    conditioning: str = "add"                   # how the class enters: "add" E[y] to e (eq. 3.7), or "cross":
                                                # tokens [s, E[y]] read by cross-attention (eq. 3.6; §3.5)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if self.num_classes < 0 or self.context_dim < 0:
            raise ValueError(f"num_classes and context_dim must be >= 0, got {self.num_classes}, {self.context_dim}")
        if self.conditioning not in ("add", "cross"):
            raise ValueError(f"conditioning must be 'add' or 'cross', got {self.conditioning!r}")
        if self.conditioning == "cross" and not (self.num_classes and self.context_dim):
            raise ValueError("conditioning='cross' needs num_classes > 0 and context_dim > 0 (the class tokens' width)")
        if self.channels[-1] % self.heads:
            raise ValueError(f"heads={self.heads} must divide the lowest width {self.channels[-1]}")
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
        """The config as a dict; options still at their defaults that older checkpoints predate are left
        out, so the configs recorded in the zoo (and their hashes) stay the same."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        for key, default in _ADDED_LATER.items():
            if d[key] == default:
                del d[key]
        return d


_ADDED_LATER = {"num_classes": 0, "context_dim": 0, "heads": 1, "skips": True, "conditioning": "add"}   # book §3: conditioning, ablation


# ----------------------------------------------------------------------------- parts

class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x))) + W SiLU(e)))) with a 1x1 skip when widths differ (book §3.2, eq. 3.2).

    ``forward(x, temb)``: x (N, C_in, H, W), temb (N, E) -> (N, C_out, H, W). ``temb`` is the
    conditioning vector e of eq. 3.7 (time, plus the class when there is one).
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


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution (book §3.3, eq. 3.3). (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour, then a 3x3 convolution (book §3.3, eq. 3.3). (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


# ----------------------------------------------------------------------------- model

class UNet(nn.Module):
    """The U-Net denoiser (book §2.1, §3.3). ``model(x_t, t)``: (N, C, H, W), (N,) -> (N, C, H, W).

    ``t`` may be integer indices 0..T-1 or fractional floats (continuous-time samplers), or a scalar.
    ``class_labels`` (N,) long in 0..num_classes-1 (``num_classes`` means "no class"; None: no class for
    all) needs ``num_classes > 0``; ``context`` (N, L, context_dim) needs ``context_dim > 0`` (eq. 3.6, 3.7)
    and is built from the labels instead when ``conditioning="cross"``.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or UNetConfig()
        E = 4 * cfg.channels[0]                                                  # time-embedding width
        self.time = TimeMLP(cfg.time_dim, E)
        self.class_emb, self.start_token = None, None
        if cfg.num_classes and cfg.conditioning == "add":
            self.class_emb = nn.Embedding(cfg.num_classes + 1, E)                # eq. 3.7: added to e
        elif cfg.num_classes:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.context_dim)  # eq. 3.6: a token
            self.start_token = nn.Parameter(torch.randn(1, 1, cfg.context_dim))
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
        self.mid_attn = SelfAttention(c, cfg.groups, cfg.heads) if cfg.attention else nn.Identity()
        self.mid_cross = CrossAttention(c, cfg.context_dim, cfg.groups, cfg.heads) if cfg.context_dim else None
        self.mid2 = ResBlock(c, c, E, cfg.groups)
        self.up_blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for i, width in reversed(list(enumerate(cfg.channels))):
            blocks = nn.ModuleList()
            for j in range(cfg.blocks_per_level):
                skip = width if (j == 0 and cfg.skips) else 0                   # channels concatenated from skip_i
                blocks.append(ResBlock(c + skip, width, E, cfg.groups))
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
            elif isinstance(m, (SelfAttention, CrossAttention)):
                nn.init.zeros_(m.proj.weight)
                nn.init.zeros_(m.proj.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def labels(self, class_labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Checked class labels (N,) long on the model's device; None -> the "no class" label; None for an
        unconditional U-Net, which refuses labels (book §3.5)."""
        if self.class_emb is None:
            if class_labels is not None:
                raise ValueError("this U-Net is unconditional (num_classes=0); it takes no class_labels")
            return None
        K, device = self.config.num_classes, self.class_emb.weight.device
        if class_labels is None:
            return torch.full((n,), K, dtype=torch.long, device=device)              # "no class"
        class_labels = torch.as_tensor(class_labels, device=device)
        if class_labels.ndim == 0:
            class_labels = class_labels.expand(n)
        if class_labels.shape != (n,) or class_labels.is_floating_point():
            raise ValueError(f"class_labels must be N={n} integers, got {tuple(class_labels.shape)} "
                             f"{class_labels.dtype}")
        if int(class_labels.min()) < 0 or int(class_labels.max()) > K:
            raise ValueError(f"class_labels must be in 0..{K - 1} ({K} = no class), got "
                             f"{int(class_labels.min())}..{int(class_labels.max())}")
        return class_labels

    def embed(self, t: torch.Tensor, class_labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """The conditioning vector e = TimeMLP(t) + E[y] of eq. 3.7 (book §3.5), (N, E).

        With ``conditioning="cross"`` the class is not added here (see :meth:`class_context`): e = TimeMLP(t).
        """
        return self._embed(t, self.labels(class_labels, n), n)

    def class_context(self, class_labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """The class as a context of two tokens [s, E[y]] for cross-attention (book §3.5, eq. 3.6), (N, 2, D)."""
        return self._class_context(self.labels(class_labels, n), n)

    def _embed(self, t, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """e = TimeMLP(t) + E[y] (eq. 3.7) for labels already checked by :meth:`labels` (book §3.5). (N, E)."""
        t = torch.as_tensor(t, device=self.conv_in.weight.device)
        if t.ndim == 0:
            t = t.expand(n)                                                      # (N,)
        temb = self.time(t)                                                      # (N, E)
        if labels is None or self.config.conditioning == "cross":
            return temb
        return temb + self.class_emb(labels)                                     # (N, E)

    def _class_context(self, labels: torch.Tensor, n: int) -> torch.Tensor:
        """The tokens [s, E[y]] (eq. 3.6's context c) for checked labels (book §3.5). (N, 2, D)."""
        start = self.start_token.expand(n, 1, -1)                                # (N, 1, D)
        return torch.cat([start, self.class_emb(labels)[:, None]], dim=1)        # (N, 2, D)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        n = x_t.shape[0]
        labels = self.labels(class_labels, n)                                    # checked once per call
        temb = self._embed(t, labels, n).to(x_t.dtype)                           # (N, E)
        if self.config.conditioning == "cross":
            if context is not None:
                raise ValueError("this U-Net makes its context from class_labels (conditioning='cross'); "
                                 "pass class_labels, not context")
            context = self._class_context(labels, n)                             # (N, 2, D)
        if (context is None) != (self.mid_cross is None):
            raise ValueError("pass context (N, L, context_dim) exactly when the U-Net has cross-attention "
                             f"(context_dim={self.config.context_dim})")
        h = self.conv_in(x_t)                                                    # (N, c0, H, W)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsamplers):
            for block in blocks:
                h = block(h, temb)                                               # (N, c_i, H_i, W_i)
            skips.append(h)
            h = down(h)                                                          # (N, c_i, H_i/2, W_i/2)
        h = self.mid_attn(self.mid1(h, temb))                                    # (N, c_L, H_L, W_L)
        if self.mid_cross is not None:
            h = self.mid_cross(h, context.to(h.dtype))                           # (N, c_L, H_L, W_L)
        h = self.mid2(h, temb)                                                   # (N, c_L, H_L, W_L)
        for blocks, up in zip(self.up_blocks, self.upsamplers):
            skip = skips.pop()
            if self.config.skips:
                h = torch.cat([h, skip], dim=1)                                  # (N, c + c_i, H_i, W_i)
            for block in blocks:
                h = block(h, temb)                                               # (N, c_i, H_i, W_i)
            h = up(h)                                                            # (N, c_i, 2H_i, 2W_i)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))               # (N, C, H, W)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
