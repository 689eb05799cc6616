"""The latent denoiser: diffusers' ``UNet2DConditionModel`` with cross-attention at every level (book §4.6).

At each resolution the U-Net's feature map h (N, C, h, w) is flattened to h*w tokens that attend to
the prompt's token vectors c (N, L, d) (eq. 4.8)::

    Q = h W_q,  K = c W_k,  V = c W_v,   h <- h + softmax(Q K^T / sqrt(d_head)) V            (eq. 4.9)

so every latent position can ask "which words concern me?". :data:`SHAPES_UNET` is the course's
size for 8x8x4 latents: two levels (8x8 with 32 channels, 4x4 with 64), a ``CrossAttnDownBlock2D``
/ ``CrossAttnUpBlock2D`` at both and the cross-attention middle block. Its transformer blocks are
``only_cross_attention``: the latent positions attend to the prompt, not to each other (a third
cheaper on a CPU; the convolutions already mix neighbouring positions).

:class:`LatentTextDenoiser` puts the text encoder and the U-Net into one module,
``eps_hat = model(z_t, t, input_ids)`` (eq. 4.10), so the course's training loop
(:func:`diffcourse.training.train`) trains both jointly, and the course's samplers can call it.
"""
from __future__ import annotations

import torch
from torch import nn

from .text_encoder import encode_prompt

__all__ = ["SHAPES_UNET", "build_unet", "LatentTextDenoiser"]

#: ``UNet2DConditionModel`` arguments of the course's latent U-Net (book §4.6).
SHAPES_UNET = dict(
    sample_size=8,                                  # 8x8 latents (32x32 images, f = 4)
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),                    # 8x8 and 4x4 levels
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),   # cross-attention at every level
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=64,                         # = the text encoder's width d
    attention_head_dim=4,                           # diffusers' (historical) name for the number of heads
    norm_num_groups=8,
    only_cross_attention=True,                      # attention blocks: cross-attention (eq. 4.9), no self-attention
)


def build_unet(**overrides):
    """A freshly initialised ``diffusers.UNet2DConditionModel`` with :data:`SHAPES_UNET` updated by
    ``overrides`` (book §4.6, eq. 4.9). Seed torch before calling it for a repeatable initialisation."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**dict(SHAPES_UNET, **overrides))


class LatentTextDenoiser(nn.Module):
    """eps_theta(z_t, t, c(prompt)): the text encoder and the U-Net as one denoiser (book §4.7, eq. 4.10).

    ``forward(z_t, t, input_ids)``: z_t (N, 4, h, w), t (N,) integer timesteps, input_ids (N, L) ->
    eps_hat (N, 4, h, w). ``self.text_encoder`` and ``self.unet`` are the pipeline's own parts.
    """

    def __init__(self, text_encoder, unet):
        super().__init__()
        self.text_encoder = text_encoder
        self.unet = unet

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """eps_hat = UNet(z_t, t, TextEncoder(input_ids)) (book §4.7, eq. 4.10)."""
        c = encode_prompt(self.text_encoder, input_ids)                       # (N, L, d)
        return self.unet(z_t, t, encoder_hidden_states=c, return_dict=False)[0]   # (N, 4, h, w)
