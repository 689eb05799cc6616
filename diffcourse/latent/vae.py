"""The KL autoencoder of latent diffusion: encoder, reparameterisation, KL term, scaling (book §4.2-§4.4).

The encoder E maps an image x (3, H, W) to the mean and log-variance of a diagonal Gaussian over a
latent z (4, H/f, W/f); the decoder D maps z back to an image::

    q(z | x) = N(mu(x), diag(sigma(x)^2))                                      (eq. 4.2)
    z = mu + sigma * eps,   eps ~ N(0, I)          (reparameterisation)      (eq. 4.3)
    KL(q(z|x) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)        (eq. 4.4)
    L_VAE = || x - D(z) ||^2 + beta * KL                                      (eq. 4.5)
    L_edge = L_VAE + lambda * (|| dx x - dx D(z) ||^2 + || dy x - dy D(z) ||^2)  (eq. 4.5')
             dx, dy: differences of neighbouring pixels, so corners and edges weigh more
    z' = s * z,   s = 1 / std(z) measured on the data                         (eq. 4.6)
    PSNR = 10 log10(1 / MSE), images in [0, 1]                                (eq. 4.7)

The network is diffusers' ``AutoencoderKL`` from a small config (:data:`SHAPES_VAE`, factor f = 4),
because the real ``StableDiffusionPipeline`` of §4.8 needs exactly that class; the course's own
code is what the equations say: :func:`reparameterise`, :func:`kl_divergence` (checked against
diffusers' ``DiagonalGaussianDistribution.kl`` in the tests), :func:`vae_loss`,
:func:`measure_scaling_factor`, and the "VAE ceiling" :func:`psnr_by_feature_size`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SHAPES_VAE", "build_vae", "moments", "reparameterise", "kl_divergence", "vae_loss",
           "image_gradients", "measure_scaling_factor", "encode", "decode", "psnr", "reconstruct", "feature_pattern",
           "psnr_by_feature_size"]

#: ``AutoencoderKL`` arguments of the course's VAE (book §4.2): 32x32x3 images -> 8x8x4 latents (f = 4).
SHAPES_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,     # 32 -> 16 -> 8 (the last block does not downsample)
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
    mid_block_add_attention=False,                   # no self-attention at 8x8: a third faster on a CPU
)


def build_vae(**overrides):
    """A freshly initialised ``diffusers.AutoencoderKL`` with :data:`SHAPES_VAE` updated by ``overrides``
    (book §4.2). Seed torch before calling it for a repeatable initialisation."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**dict(SHAPES_VAE, **overrides))


def moments(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's Gaussian q(z|x): mean and log-variance, each (N, 4, h, w) (book §4.2, eq. 4.2).

    x: (N, 3, H, W) in [-1, 1]. The log-variance is clamped to [-30, 20], as diffusers does.
    """
    h = vae.quant_conv(vae.encoder(x))                                        # (N, 8, h, w)
    mean, logvar = h.chunk(2, dim=1)                                          # (N, 4, h, w) each
    return mean, logvar.clamp(-30.0, 20.0)


def reparameterise(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I) drawn from ``generator`` (book §4.2, eq. 4.3).

    Gradients flow to ``mean`` and ``logvar`` through the sample (the point of the trick). Same shape
    as ``mean``; eps is drawn on the generator's device and moved to ``mean``'s.
    """
    gen_device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype).to(mean.device)
    return mean + torch.exp(0.5 * logvar) * eps                               # (N, 4, h, w)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per example, summed over (C, h, w): (N,) (book §4.2, eq. 4.4)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differences of neighbouring pixels of x (N, C, H, W): dx (N, C, H, W-1) and dy (N, C, H-1, W)
    (book §4.2, eq. 4.5'). They are large only at edges and corners, where a shape's outline is."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vae_loss(vae, x: torch.Tensor, generator: torch.Generator | None = None, beta: float = 1e-6,
             edge_weight: float = 0.0) -> torch.Tensor:
    """Mean squared reconstruction error plus ``beta`` times the mean KL per image (book §4.2, eq. 4.5),
    plus ``edge_weight`` (lambda) times the squared error of the image gradients (eq. 4.5').

    x: (N, 3, H, W) in [-1, 1]. Returns a scalar. ``beta`` is small, as in Stable Diffusion: the KL
    only keeps the latent from drifting to huge values; the scaling factor (eq. 4.6) does the rest.
    With ``edge_weight = 0`` this is eq. 4.5 exactly. A plain MSE lets the decoder round a small
    square's corners off (a few pixels of error), which turns squares into circles; the gradient term
    of eq. 4.5' charges those pixels again, through the edges they break.
    """
    mean, logvar = moments(vae, x)                                            # (N, 4, h, w) each
    z = reparameterise(mean, logvar, generator)                               # (N, 4, h, w)
    x_hat = vae.decode(z).sample                                              # (N, 3, H, W)
    loss = F.mse_loss(x_hat, x) + beta * kl_divergence(mean, logvar).mean()
    if edge_weight:
        (dx, dy), (dx_hat, dy_hat) = image_gradients(x), image_gradients(x_hat)   # (N, 3, H, W-1), (N, 3, H-1, W)
        loss = loss + edge_weight * (F.mse_loss(dx_hat, dx) + F.mse_loss(dy_hat, dy))
    return loss


@torch.no_grad()
def measure_scaling_factor(vae, images: torch.Tensor, generator: torch.Generator | None = None,
                           batch_size: int = 256) -> float:
    """s = 1 / std of posterior samples z over ``images`` (book §4.3, eq. 4.6), so s z has unit variance.

    Stable Diffusion's 0.18215 was measured the same way on its own data; a new VAE needs its own s.
    """
    zs = [reparameterise(*moments(vae, images[i:i + batch_size]), generator)
          for i in range(0, len(images), batch_size)]
    return float(1.0 / torch.cat(zs).float().std())


@torch.no_grad()
def encode(vae, x: torch.Tensor, scaling_factor: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled latents s z of images x (N, 3, H, W) in [-1, 1] -> (N, 4, H/f, W/f) (book §4.3, eq. 4.6).

    With a ``generator``: a posterior sample (eq. 4.3), as the pipelines do; without: the mean.
    """
    mean, logvar = moments(vae, x)
    z = reparameterise(mean, logvar, generator) if generator is not None else mean
    return z * scaling_factor


@torch.no_grad()
def decode(vae, z_scaled: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Images D(z' / s) in [-1, 1] (clamped) from scaled latents (N, 4, h, w) (book §4.8, eq. 4.6)."""
    return vae.decode(z_scaled / scaling_factor).sample.clamp(-1, 1)          # (N, 3, H, W)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image between x and y (N, C, H, W) in [-1, 1], on the [0, 1] scale (book §4.4, eq. 4.7)."""
    mse = ((x - y) / 2).pow(2).flatten(1).mean(1)                             # (N,) on the [0, 1] scale
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """D(mu(x)) clamped to [-1, 1]: the VAE's reconstruction of x (N, 3, H, W) (book §4.4)."""
    out = [vae.decode(moments(vae, x[i:i + batch_size])[0]).sample for i in range(0, len(x), batch_size)]
    return torch.cat(out).clamp(-1, 1)


def feature_pattern(feature: float, n: int, size: int = 32,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of a striped square, stripes ``feature`` pixels wide, random colour, angle and place (book §4.4).

    The square (12 px) is bright where cos(pi u / feature) > 0 and dark elsewhere, u along a random
    direction. Returns images (n, 3, size, size) in [-1, 1] and the square's window (n, 1, size, size)
    in {0, 1}, where :func:`psnr_by_feature_size` measures the error.
    """
    import math

    from ..data.shapes import COLOURS

    palette = torch.tensor(list(COLOURS.values()))                           # (6, 3) in [0, 1]
    images, windows = torch.empty(n, 3, size, size), torch.zeros(n, 1, size, size)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(n):
        colour = palette[int(torch.randint(len(palette), (), generator=generator))]
        angle = float(torch.rand((), generator=generator)) * math.pi
        cy, cx = (8 + torch.rand(2, generator=generator) * (size - 16)).tolist()
        u = yy * math.sin(angle) + xx * math.cos(angle)
        stripes = 0.5 + 0.5 * torch.sign(torch.cos(math.pi * u / feature))    # (s, s) in {0, 0.5, 1}
        box = ((yy - cy).abs() <= 6) & ((xx - cx).abs() <= 6)
        images[i] = colour[:, None, None] * (stripes * box) * 2 - 1
        windows[i, 0] = box.float()
    return images, windows


@torch.no_grad()
def psnr_by_feature_size(vae, features=(1, 2, 3, 4, 6, 8), n: int = 32, size: int = 32,
                         seed: int = 0) -> dict[int, float]:
    """The VAE ceiling: reconstruction PSNR (dB) of stripes ``feature`` pixels wide (book §4.4, eq. 4.7).

    Detail finer than the latent grid (f = 4 pixels) does not come back, however good the diffusion
    model in latent space is. The error is averaged over each striped square (:func:`feature_pattern`).
    Returns ``{feature: psnr}``.
    """
    g = torch.Generator().manual_seed(seed)
    result = {}
    for feature in features:
        x, window = feature_pattern(feature, n, size, g)                      # (n, 3, s, s), (n, 1, s, s)
        err = ((reconstruct(vae, x) - x) / 2).pow(2) * window                 # on the [0, 1] scale
        mse = err.sum() / (3 * window.sum())
        result[int(feature)] = float(10 * torch.log10(1.0 / mse))
    return result
