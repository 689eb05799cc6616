"""Looking inside a U-Net: feature maps and shapes per stage, parameter counts, receptive field (book §3.6).

Nothing here changes a model; it only records what flows through one. The stage names are the
attribute names of :class:`diffcourse.models.unet.UNet`: ``conv_in``, ``down_blocks.0.0`` (level 0,
block 0), ``downsamplers.0``, ``mid1``, ``mid_attn``, ``mid_cross``, ``mid2``, ``up_blocks.0.0`` (the
*lowest* level comes first on the way up), ``upsamplers.0``, ``conv_out``.

The receptive field of a pixel is the window of input pixels that can change it. For a stack of
convolutions it follows the recursion of eq. 3.8, walked layer by layer from the input::

    r <- r + (k - 1) j,   then  j <- j s          (k: kernel size, s: stride; r = j = 1 at the input)

where j is the distance, in input pixels, between neighbouring pixels of the current feature map.
Nearest-neighbour upsampling halves j and leaves r alone. :func:`receptive_field` evaluates it for a
:class:`~diffcourse.models.unet.UNetConfig`; :func:`measured_receptive_field` measures it with a
gradient, and the tests check that the two agree. Self-attention makes it the whole image -- and so,
weakly, does GroupNorm: its mean and variance are taken over all pixels, so strictly every output
pixel depends a little on every input pixel. The window of eq. 3.8 is where the *convolutions*
reach, which is why the measurement swaps the normalisations out.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from .unet import UNet, UNetConfig

__all__ = ["trace", "parameter_counts", "receptive_field", "measured_receptive_field", "influence"]


def _stages(model: UNet) -> list[tuple[str, nn.Module]]:
    """The named parts whose outputs :func:`trace` records, in the order data meets them."""
    parts = [("conv_in", model.conv_in)]
    for i, (blocks, down) in enumerate(zip(model.down_blocks, model.downsamplers)):
        parts += [(f"down_blocks.{i}.{j}", b) for j, b in enumerate(blocks)]
        if not isinstance(down, nn.Identity):
            parts.append((f"downsamplers.{i}", down))
    parts.append(("mid1", model.mid1))
    if not isinstance(model.mid_attn, nn.Identity):
        parts.append(("mid_attn", model.mid_attn))
    if model.mid_cross is not None:
        parts.append(("mid_cross", model.mid_cross))
    parts.append(("mid2", model.mid2))
    for i, (blocks, up) in enumerate(zip(model.up_blocks, model.upsamplers)):
        parts += [(f"up_blocks.{i}.{j}", b) for j, b in enumerate(blocks)]
        if not isinstance(up, nn.Identity):
            parts.append((f"upsamplers.{i}", up))
    parts.append(("conv_out", model.conv_out))
    return parts


@torch.no_grad()
def trace(model: UNet, x_t: torch.Tensor, t, **kwargs) -> "OrderedDict[str, torch.Tensor]":
    """Run ``model(x_t, t, **kwargs)`` once and return every stage's output, in order (book §3.6).

    ``{"conv_in": (N, c0, H, W), "down_blocks.0.0": ..., ..., "conv_out": (N, C, H, W)}``, detached;
    ``{k: tuple(v.shape) ...}`` is the shape table of the chapter's figure.
    """
    outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
    handles = [module.register_forward_hook(lambda m, inp, out, name=name: outputs.__setitem__(name, out.detach()))
               for name, module in _stages(model)]
    try:
        model(x_t, t, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return outputs


def parameter_counts(model: UNet) -> "OrderedDict[str, int]":
    """Number of parameters per stage of the U-Net (book §3.6); the values sum to all of the model's.

    Stages: ``time embedding``, ``class embedding`` (if any), ``conv_in``, ``down level i``,
    ``middle``, ``up level i`` (numbered by resolution, 0 = full size), ``output``.
    """
    levels = len(model.config.channels)
    counts: OrderedDict[str, int] = OrderedDict()
    n = lambda *mods: sum(p.numel() for m in mods if m is not None for p in m.parameters())   # noqa: E731
    counts["time embedding"] = n(model.time)
    if model.class_emb is not None:
        start = model.start_token.numel() if model.start_token is not None else 0     # "cross": the start token
        counts["class embedding"] = n(model.class_emb) + start
    counts["conv_in"] = n(model.conv_in)
    for i in range(levels):
        counts[f"down level {i}"] = n(model.down_blocks[i], model.downsamplers[i])
    counts["middle"] = n(model.mid1, model.mid_attn, model.mid_cross, model.mid2)
    for k in range(levels):                        # up_blocks[0] is the lowest level
        i = levels - 1 - k
        counts[f"up level {i}"] = n(model.up_blocks[k], model.upsamplers[k])
    counts["output"] = n(model.norm_out, model.conv_out)
    return counts


def receptive_field(config: UNetConfig) -> dict[str, int]:
    """Receptive field, in input pixels, by the recursion of eq. 3.8 (book §3.6), ignoring attention.

    Returns ``{"bottleneck": r, "output": r}``: the side of the input window that one pixel of the
    lowest-resolution features, and one output pixel, can see through the convolutions alone
    (through the deepest path; the skips see less). It is an upper bound: where a pixel sits on the
    stride-2 grids can trim a few pixels once there are four or more levels (measured: 213 of 217).
    With ``config.attention`` the true answer is the whole image.
    """
    r, j = 1, 1

    def conv(k: int = 3, s: int = 1) -> None:
        nonlocal r, j
        r += (k - 1) * j
        j *= s

    levels = len(config.channels)
    conv()                                                              # conv_in
    for i in range(levels):
        for _ in range(config.blocks_per_level):
            conv(), conv()                                              # ResBlock: two 3x3 convolutions
        if i < levels - 1:
            conv(3, 2)                                                  # Downsample
    conv(), conv()                                                      # mid1
    bottleneck = r
    conv(), conv()                                                      # mid2
    for i in reversed(range(levels)):
        for _ in range(config.blocks_per_level):
            conv(), conv()
        if i > 0:
            j //= 2                                                     # nearest x2: neighbours now j/2 apart
            conv()                                                      # Upsample's 3x3 convolution
    conv()                                                              # conv_out
    return {"bottleneck": bottleneck, "output": r}


def influence(model: nn.Module, x: torch.Tensor, t, pixel: tuple[int, int], **kwargs) -> torch.Tensor:
    """``|d out[0, :, i, j] / d x[0]|`` summed over channels: which input pixels move one output pixel (book §3.6).

    ``x``: (1, C, H, W). Returns (H, W), non-negative; zero exactly outside the receptive field.
    """
    x = x.detach().clone().requires_grad_(True)
    out = model(x, t, **kwargs)                                         # (1, C, H, W)
    i, j = pixel
    out[0, :, i, j].sum().backward()
    return x.grad[0].abs().sum(0)                                       # (H, W)


def measured_receptive_field(model: nn.Module, size: int, t: int = 500, in_channels: int = 1,
                             seed: int = 0, **kwargs) -> int:
    """Side of the input window that changes the centre output pixel, measured by :func:`influence` (book §3.6).

    Measured on a copy of ``model`` whose GroupNorms are replaced by the identity (their image-wide
    statistics would make every pixel count a little; see the module's docstring). Draws one random
    (1, C, size, size) input; ``size`` must be large enough that the window does not reach the
    border (else the answer is clipped at ``size``).
    """
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.GroupNorm):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], nn.Identity())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, in_channels, size, size, generator=g)
    grad = influence(model, x, torch.tensor([t]), (size // 2, size // 2), **kwargs)
    rows = torch.nonzero(grad.sum(1)).flatten()
    cols = torch.nonzero(grad.sum(0)).flatten()
    if len(rows) == 0:
        raise ValueError("the centre output pixel does not depend on the input at all: is the model's conv_out "
                         "still zero-initialised? Randomise its weights before measuring")
    return int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1
