"""Latent size arithmetic done right, and what it buys per denoiser call (book §4.1).

An image of H x W pixels with C channels holds C H W values; a VAE with downsampling factor f and
c latent channels turns it into c (H/f)(W/f) values::

    n_pixel = C H W,   n_latent = c (H/f) (W/f),   n_pixel / n_latent = (C / c) f^2         (eq. 4.1)

Stable Diffusion: 512 x 512 x 3 = 786,432 values; 64 x 64 x 4 = 16,384 values: 48 times fewer values
and f^2 = 64 times fewer spatial positions. (Counting the latent as 64 x 64 = 4,096 forgets its 4
channels and gives a wrong 192.) The course's VAE: 32 x 32 x 3 = 3,072 -> 8 x 8 x 4 = 256, 12 times fewer
values, 16 times fewer positions. :func:`call_times` measures what that buys: the time of one U-Net
call on the pixels against one on the latents, same architecture.
"""
from __future__ import annotations

import statistics
import time

import torch

__all__ = ["latent_size", "time_call", "call_times"]


def latent_size(height: int, width: int, channels: int = 3, factor: int = 8, latent_channels: int = 4) -> dict:
    """Values and positions of an image and of its latent, and the two ratios (book §4.1, eq. 4.1).

    ``latent_size(512, 512)`` -> pixel_values 786,432, latent_values 16,384, value_ratio 48.0,
    position_ratio 64.0. Raises ``ValueError`` if H or W is not divisible by ``factor``.
    """
    if height % factor or width % factor:
        raise ValueError(f"{height}x{width} is not divisible by the VAE's downsampling factor {factor}")
    h, w = height // factor, width // factor
    pixel_values, latent_values = channels * height * width, latent_channels * h * w
    return dict(latent_shape=(latent_channels, h, w), pixel_values=pixel_values, latent_values=latent_values,
                value_ratio=pixel_values / latent_values, position_ratio=(height * width) / (h * w))


@torch.no_grad()
def time_call(fn, repeats: int = 15, warmup: int = 3) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` (book §4.1)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def call_times(unet, batch_size: int = 8, image_size: int = 32, factor: int = 4, repeats: int = 15,
               seed: int = 0) -> dict:
    """Seconds per U-Net call on latents vs on pixels, same architecture and prompt (book §4.1, eq. 4.1).

    ``unet``: the course's latent ``UNet2DConditionModel``. The pixel-space model is the same config
    with 3 channels at ``image_size`` (freshly initialised: the time does not depend on the weights).
    Returns ``dict(latent_s, pixel_s, ratio=pixel_s / latent_s)``.
    """
    from diffusers import UNet2DConditionModel

    g = torch.Generator().manual_seed(seed)
    config = dict(unet.config)
    pixel_unet = UNet2DConditionModel.from_config(dict(config, in_channels=3, out_channels=3,
                                                       sample_size=image_size)).eval()
    c = torch.randn(batch_size, 20, config["cross_attention_dim"], generator=g)      # (B, L, d)
    t = torch.full((batch_size,), 500)
    z = torch.randn(batch_size, config["in_channels"], image_size // factor, image_size // factor, generator=g)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=g)
    unet = unet.eval()
    latent_s = time_call(lambda: unet(z, t, encoder_hidden_states=c), repeats)
    pixel_s = time_call(lambda: pixel_unet(x, t, encoder_hidden_states=c), repeats)
    return dict(latent_s=latent_s, pixel_s=pixel_s, ratio=pixel_s / latent_s)
