"""Inflating the image U-Net into a video U-Net with temporal attention layers (book §8.4, eq. 8.5).

The course's :class:`~diffcourse.models.unet.UNet` (book §3) is kept whole, its weights untouched; a
:class:`~diffcourse.video.temporal.TemporalAttention` layer is inserted after the spatial blocks of
every level on the way down, after the middle block, and after every level on the way up::

    x (B, C, F, H, W) -> frames as a batch (B*F, C, H, W) -> [spatial blocks of level i -> temporal_i] ...
                      -> (B, C, F, H, W)

    eps_video(x)_f = eps_image(x_f)   for every frame f, at initialisation                (eq. 8.5)

because every temporal layer's output projection starts at zero, so each is exactly the identity.
Training can then teach the temporal layers alone (``freeze_spatial``, AnimateDiff's recipe: the
image model's knowledge of *what* is drawn stays, the new layers learn *how it moves*) or the whole
network (Video LDM, SVD). The time step t (B,) is shared by the frames of a clip.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.unet import UNet, UNetConfig
from .reshape import batch_to_frames, frames_to_batch
from .temporal import TemporalAttention

__all__ = ["VideoUNetConfig", "VideoUNet", "inflate"]


@dataclass
class VideoUNetConfig:
    """Size of a :class:`VideoUNet` (book §8.4): the image U-Net's config and the temporal layers' heads."""

    unet: dict = field(default_factory=lambda: UNetConfig.tiny().to_dict())   # the image U-Net's UNetConfig
    temporal_heads: int = 1

    def __post_init__(self):
        if isinstance(self.unet, UNetConfig):
            self.unet = self.unet.to_dict()
        self.unet = dict(self.unet)
        cfg = UNetConfig(**self.unet)
        if cfg.context_dim and cfg.conditioning != "cross":
            raise ValueError("the video U-Net does not take a text context; inflate an unconditional or class U-Net")
        if any(c % self.temporal_heads for c in cfg.channels):
            raise ValueError(f"temporal_heads={self.temporal_heads} must divide every width in {cfg.channels}")

    @classmethod
    def tiny(cls) -> "VideoUNetConfig":
        """For tests: the tiny U-Net (8x8, widths 8 and 16) with temporal layers."""
        return cls()

    @classmethod
    def shapes(cls) -> "VideoUNetConfig":
        """The zoo's moving-shapes model (``zoo/shapes_video.safetensors``): RGB 16x16, widths 16 and 32."""
        return cls(unet=UNetConfig(in_channels=3, out_channels=3, sample_size=16, channels=(16, 32),
                                   time_dim=32, groups=8).to_dict())

    def to_dict(self) -> dict:
        return dict(unet=dict(self.unet), temporal_heads=self.temporal_heads)


class VideoUNet(nn.Module):
    """The image U-Net inflated with zero-initialised temporal attention (book §8.4, eq. 8.5).

    ``model(x_t, t)``: x_t (B, C, F, H, W), t (B,) or a scalar -> (B, C, F, H, W). ``self.unet`` is the
    image model; ``self.unet(x_f, t)`` on frames alone is the "no temporal attention" baseline of §8.6.
    ``class_labels`` (B,) are passed on to a class-conditional image U-Net, shared by all frames.
    """

    def __init__(self, config: VideoUNetConfig | None = None, unet: UNet | None = None):
        super().__init__()
        self.config = config = config or VideoUNetConfig()
        self.unet = unet if unet is not None else UNet(UNetConfig(**config.unet))
        ch = self.unet.config.channels
        heads = config.temporal_heads
        self.temporal_down = nn.ModuleList(TemporalAttention(c, heads) for c in ch)          # after down level i
        self.temporal_mid = TemporalAttention(ch[-1], heads)                                  # after the middle
        self.temporal_up = nn.ModuleList(TemporalAttention(c, heads) for c in reversed(ch))  # after up level i

    def temporal_parameters(self):
        """The parameters of the temporal layers only (what AnimateDiff trains, book §8.4)."""
        for name, p in self.named_parameters():
            if name.startswith("temporal_"):
                yield p

    def freeze_spatial(self) -> "VideoUNet":
        """Stop gradients into the image U-Net, so training teaches the temporal layers only (book §8.4)."""
        for p in self.unet.parameters():
            p.requires_grad_(False)
        return self

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if x_t.ndim != 5:
            raise ValueError(f"the video U-Net takes clips (B, C, F, H, W), got shape {tuple(x_t.shape)}")
        u = self.unet
        B, C, F, H, W = x_t.shape
        t = torch.as_tensor(t, device=x_t.device)
        t = (t.expand(B) if t.ndim == 0 else t).repeat_interleave(F)                # (B*F,) shared by a clip's frames
        labels = None if class_labels is None else torch.as_tensor(class_labels).repeat_interleave(F)
        labels = u.labels(labels, B * F)
        temb = u._embed(t, labels, B * F).to(x_t.dtype)                              # (B*F, E)
        context = u._class_context(labels, B * F).to(x_t.dtype) if u.config.conditioning == "cross" else None
        h = u.conv_in(frames_to_batch(x_t))                                          # (B*F, c0, H, W)
        skips = []
        for blocks, temporal, down in zip(u.down_blocks, self.temporal_down, u.downsamplers):
            for block in blocks:
                h = block(h, temb)                                                   # (B*F, c_i, H_i, W_i)
            h = temporal(h, F)                                                       # (B*F, c_i, H_i, W_i)
            skips.append(h)
            h = down(h)                                                              # (B*F, c_i, H_i/2, W_i/2)
        h = u.mid_attn(u.mid1(h, temb))                                              # (B*F, c_L, H_L, W_L)
        if u.mid_cross is not None:
            h = u.mid_cross(h, context)
        h = self.temporal_mid(u.mid2(h, temb), F)                                    # (B*F, c_L, H_L, W_L)
        for blocks, temporal, up in zip(u.up_blocks, self.temporal_up, u.upsamplers):
            skip = skips.pop()
            if u.config.skips:
                h = torch.cat([h, skip], dim=1)                                      # (B*F, c + c_i, H_i, W_i)
            for block in blocks:
                h = block(h, temb)                                                   # (B*F, c_i, H_i, W_i)
            h = up(temporal(h, F))                                                   # (B*F, c_i, 2H_i, 2W_i)
        out = u.conv_out(nn.functional.silu(u.norm_out(h)))                          # (B*F, C, H, W)
        return batch_to_frames(out, F)                                               # (B, C, F, H, W)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def inflate(unet: UNet, temporal_heads: int = 1) -> VideoUNet:
    """A :class:`VideoUNet` around (a deep copy of) a trained image ``unet``; equal to it frame by frame (eq. 8.5)."""
    import copy

    unet = copy.deepcopy(unet)
    return VideoUNet(VideoUNetConfig(unet=unet.config.to_dict(), temporal_heads=temporal_heads), unet=unet)
