"""The course's implementations of chapter 6's graded exercises (``ch06_control``), for the notebook's tests.

The tests of a later exercise run the student's function with these in place of the student's earlier ones
(:func:`diffcourse.grading.reference`), so each mistake costs one exercise; every function and class has the
exact signature the notebook asks for and follows :mod:`diffcourse.control` where the package has it.

The notebook's equations (book chapter 6)::

    (6.1)  y = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)      ControlNet around a block F
    (6.2)  W' = W + (alpha / r) B A                                          the LoRA update
    (6.3)  merge W' = W + (alpha / r) B A; unmerge W = W' - (alpha / r) B A  (the same tensor subtracted)
    (6.4)  y = W x + sum_k s_k (alpha_k / r_k) B_k A_k x                     LoRA scales, several LoRAs
    (6.5)  h_i <- h_i + lambda r_i,  h_mid <- h_mid + lambda r_mid           conditioning scale on residuals

:func:`zero_conv`, :class:`ControlledBlock` (eq. 6.1), :func:`inject_residuals` (eq. 6.5), :class:`LoRALinear`
(eq. 6.2), :func:`merge`, :func:`unmerge` (eq. 6.3), :func:`lora_combination`, :func:`fused_weight` (eq. 6.4),
and :func:`unet_with_injection`, diffusers' ``UNet2DConditionModel`` forward pass written out with an
``inject`` function in the place where diffusers adds ``down_block_additional_residuals`` and
``mid_block_additional_residual`` (the tests compare a student's injection with diffusers' through it).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .control import lora as _lora
from .control.controlnet import zero_conv as _zero_conv

__all__ = ["zero_conv", "ControlledBlock", "inject_residuals", "unet_with_injection", "LoRALinear", "merge",
           "unmerge", "lora_combination", "fused_weight"]


def zero_conv(channels_in: int, channels_out: int | None = None) -> nn.Conv2d:
    """A 1x1 ``nn.Conv2d`` with weight 0 and bias 0 (``channels_out`` defaults to ``channels_in``): Z of
    eq. 6.1 (book §6.2). Its output is 0 for any input, so a ControlNet adds nothing at initialisation."""
    return _zero_conv(channels_in, channels_out)


class ControlledBlock(nn.Module):
    """Eq. 6.1 around a block F (book §6.2): ``block(x) + zero_out(copy(x + zero_in(c)))``.

    ``block`` (attribute ``block``, frozen, the same module object) maps (N, channels, H, W) to the same shape;
    ``copy`` is a trainable deep copy of it; ``zero_in`` = Z(.; Theta_z1) (cond_channels -> channels) and
    ``zero_out`` = Z(.; Theta_z2) (channels -> channels) are zero 1x1 convolutions. ``cond_channels``
    defaults to ``channels``. ``forward(x, c)``: x (N, channels, H, W), c (N, cond_channels, H, W).
    """

    def __init__(self, block: nn.Module, channels: int, cond_channels: int | None = None):
        super().__init__()
        self.block = block.requires_grad_(False)                                  # F(.; Theta), frozen
        self.copy = copy.deepcopy(block).requires_grad_(True)                     # F(.; Theta_c), trainable
        self.zero_in = zero_conv(cond_channels or channels, channels)             # Z(.; Theta_z1)
        self.zero_out = zero_conv(channels)                                       # Z(.; Theta_z2)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.zero_out(self.copy(x + self.zero_in(c)))     # (N, channels, H, W), eq. 6.1


def inject_residuals(skips, mid: torch.Tensor, down_residuals, mid_residual: torch.Tensor,
                     conditioning_scale: float = 1.0):
    """(tuple(h_i + lambda r_i), h_mid + lambda r_mid): eq. 6.5 (book §6.5), new tensors, inputs untouched.

    ``skips``: the U-Net's skip features h_i in order (conv_in first), each (N, C_i, H_i, W_i); ``mid`` the
    middle block's output; ``down_residuals``, ``mid_residual`` the ControlNet's (unscaled) residuals, same shapes.
    """
    skips, down_residuals = tuple(skips), tuple(down_residuals)
    if len(skips) != len(down_residuals):
        raise ValueError(f"{len(skips)} skip features but {len(down_residuals)} residuals")
    new = tuple(h + conditioning_scale * r for h, r in zip(skips, down_residuals))   # (N, C_i, H_i, W_i) each
    return new, mid + conditioning_scale * mid_residual


def unet_with_injection(unet, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, down_residuals, mid_residual,
                        conditioning_scale: float = 1.0, inject=inject_residuals) -> torch.Tensor:
    """diffusers' ``UNet2DConditionModel.forward`` (no class or added embeddings), written out, with
    ``inject(skips, mid, down_residuals, mid_residual, conditioning_scale)`` where diffusers adds the residuals
    (book §6.5, eq. 6.5). z_t (N, C, h, w), t (N,), c (N, L, d) -> the U-Net's output (N, C, h, w).
    With :func:`inject_residuals` it equals ``unet(z_t, t, c, down_block_additional_residuals=[lambda r_i],
    mid_block_additional_residual=lambda r_mid).sample``.
    """
    emb = unet.time_embedding(unet.time_proj(t).to(z_t.dtype))                 # (N, d_t)
    h = unet.conv_in(z_t)                                                      # (N, C_0, h, w)
    skips = (h,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=c)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips += tuple(res)                                                    # (N, C_i, H_i, W_i) each
    if getattr(unet.mid_block, "has_cross_attention", False):
        h = unet.mid_block(h, emb, encoder_hidden_states=c)
    else:
        h = unet.mid_block(h, emb)
    skips, h = inject(skips, h, down_residuals, mid_residual, conditioning_scale)
    skips = tuple(skips)
    for block in unet.up_blocks:
        res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        if getattr(block, "has_cross_attention", False):
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=c)
        else:
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res)
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)                                                    # (N, C, h, w)


class LoRALinear(_lora.LoRALinear):
    """``base(x) + (alpha / r) B(A(x))`` around a frozen ``nn.Linear`` (book §6.3, eq. 6.2).

    ``lora_A`` (r, d_in) drawn as ``torch.empty(r, d_in).uniform_(-1/sqrt(d_in), 1/sqrt(d_in), generator=generator)``
    (peft's Kaiming-uniform), ``lora_B`` (d_out, r) zero; ``alpha`` defaults to ``r``; ``scaling`` = alpha / r.
    The course's :class:`diffcourse.control.lora.LoRALinear` with the notebook's signature.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__(base, r=r, alpha=alpha, generator=generator)


def _delta(layer) -> torch.Tensor:
    """(alpha / r) B A of one LoRA layer, (d_out, d_in) (eq. 6.2)."""
    return layer.scaling * (layer.lora_B @ layer.lora_A)                      # (d_out, r) @ (r, d_in)


@torch.no_grad()
def merge(layer) -> nn.Linear:
    """A new ``nn.Linear`` with weight W + (alpha / r) B A and the base's bias (book §6.3, eq. 6.3); ``layer``
    is left unchanged."""
    base = layer.base
    out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                    device=base.weight.device, dtype=base.weight.dtype)
    out.weight.copy_(base.weight + _delta(layer))                              # (d_out, d_in)
    if base.bias is not None:
        out.bias.copy_(base.bias)
    return out


@torch.no_grad()
def unmerge(merged: nn.Linear, layer) -> nn.Linear:
    """A new ``nn.Linear`` with weight W' - (alpha / r) B A (``merged``'s weight less the update of ``layer``)
    and ``merged``'s bias (book §6.3, eq. 6.3); both arguments are left unchanged."""
    out = nn.Linear(merged.in_features, merged.out_features, bias=merged.bias is not None,
                    device=merged.weight.device, dtype=merged.weight.dtype)
    out.weight.copy_(merged.weight - _delta(layer))                            # the same delta subtracted
    if merged.bias is not None:
        out.bias.copy_(merged.bias)
    return out


def lora_combination(x: torch.Tensor, base: nn.Linear, loras, scales) -> torch.Tensor:
    """W x + b + sum_k s_k (alpha_k / r_k) B_k A_k x (book §6.3, eq. 6.4): ``loras`` a list of LoRA layers
    (their own ``base`` ignored), ``scales`` one number per LoRA. x (..., d_in) -> (..., d_out)."""
    y = base(x)                                                                # (..., d_out)
    for layer, s in zip(loras, scales, strict=True):
        y = y + (s * layer.scaling) * ((x @ layer.lora_A.t()) @ layer.lora_B.t())   # (..., r) -> (..., d_out)
    return y


def fused_weight(base: nn.Linear, loras, scales) -> torch.Tensor:
    """W + sum_k s_k (alpha_k / r_k) B_k A_k, a new (d_out, d_in) tensor (book §6.3, eqs. 6.3-6.4)."""
    w = base.weight
    for layer, s in zip(loras, scales, strict=True):
        w = w + s * _delta(layer)                                              # (d_out, d_in)
    return w
