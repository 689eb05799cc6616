"""ControlNet: a trainable copy of the U-Net's encoder joined to the frozen U-Net through zero convolutions
(book §6.2, eqs. 6.1, 6.5).

The frozen U-Net's skip features h_i (its ``conv_in`` output, every down-block output, the middle block)
receive residuals from a copy of its encoder that also sees the condition map y (edges, a mask)::

    e      = E(y)                        E: small convs, downsampling the image-size y by the VAE's factor f
    h'_0   = conv_in(z_t) + e             the copy's input: the latent plus the embedded condition
    r_i    = Z_i(copy_i(h'_{i-1}, t, c))  Z_i: 1x1 convolution with weight = 0 and bias = 0        (eq. 6.1)
    h_i    <- h_i + lambda r_i            the frozen U-Net adds the residuals (lambda: conditioning scale) (eq. 6.5)

Every Z_i is zero at initialisation, so r_i = 0 and the controlled U-Net is exactly the pretrained one: training
starts from the model's own behaviour and cannot damage it in its first steps. The gradient of the loss with
respect to a zero convolution's *weight* is not zero (it is the copy's feature times the upstream gradient),
so the Z_i move away from zero at the first step and the copy learns through them.

:class:`ScratchControlNet` builds this from a ``UNet2DConditionModel`` in a few lines; its submodules carry
the names of diffusers' ``ControlNetModel`` so that the two load each other's weights.
:func:`diffusers_controlnet` calls ``ControlNetModel.from_unet`` with a conditioning embedding that
downsamples by the VAE's factor (``conditioning_embedding_out_channels`` of length log2(f) + 1: the course's
f = 4 needs three entries, SD's f = 8 four), and :func:`controlnet_pipeline` assembles
``StableDiffusionControlNetPipeline`` from the course's parts. :func:`sample_controlled` is the course's
sampling loop with a ControlNet, step for step what the pipeline does.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["zero_conv", "embedding_channels_for", "ConditionEmbedding", "ScratchControlNet", "controlled_eps",
           "diffusers_controlnet", "controlnet_pipeline", "sample_controlled", "conditioning_sweep", "denoising_target",
           "controlnet_loss", "ZOO_NAME", "save_controlnet", "load_controlnet", "load_controlnet_folder",
           "load_controlnet_pipeline"]

#: The zoo entry of the ControlNet trained on chapter 4's shapes_sd with Canny edges (book §6.5).
ZOO_NAME = "shapes_controlnet"


def zero_conv(channels_in: int, channels_out: int | None = None) -> nn.Conv2d:
    """A 1x1 convolution with weight 0 and bias 0: Z_i of eq. 6.1 (book §6.2). Output 0 for any input."""
    conv = nn.Conv2d(channels_in, channels_out or channels_in, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def embedding_channels_for(factor: int, first: int = 16) -> tuple[int, ...]:
    """Channels of the conditioning embedding E that downsamples by ``factor`` (a power of 2) (book §6.2).

    One stride-2 convolution per halving: log2(factor) + 1 entries, doubling from ``first``
    (f = 4 -> (16, 32, 64); f = 8 -> (16, 32, 64, 128)).
    """
    halvings = int(round(math.log2(factor)))
    if 2 ** halvings != factor or factor < 1:
        raise ValueError(f"the VAE's factor must be a power of 2, got {factor}")
    return tuple(first * 2 ** i for i in range(halvings + 1))


class ConditionEmbedding(nn.Module):
    """E of eq. 6.1: y (N, C_y, H, W) in [0, 1] -> e (N, C_0, H / f, W / f) (book §6.2).

    ``conv_in`` then, per halving, a 3x3 convolution and a stride-2 3x3 convolution (SiLU after each), then a
    zero-initialised 3x3 ``conv_out`` -- the layout of diffusers' ``ControlNetConditioningEmbedding``.
    """

    def __init__(self, out_channels: int, conditioning_channels: int = 3, channels: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        e = F.silu(self.conv_in(y))                                            # (N, C_0', H, W)
        for block in self.blocks:
            e = F.silu(block(e))                                               # halved after every second conv
        return self.conv_out(e)                                                # (N, C_0, H / f, W / f)


class ScratchControlNet(nn.Module):
    """The trainable copy of ``unet``'s encoder with zero convolutions (book §6.2, eqs. 6.1, 6.5).

    ``unet``: a diffusers ``UNet2DConditionModel`` (not changed). ``factor``: the VAE's downsampling factor, so
    the condition is image-sized. ``forward(z_t, t, c, y)`` returns ``(down_residuals, mid_residual)``, the
    two arguments ``unet(..., down_block_additional_residuals=..., mid_block_additional_residual=...)`` takes.
    """

    def __init__(self, unet, factor: int = 4, conditioning_channels: int = 3, embedding_first: int = 16):
        super().__init__()
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.conv_in = copy.deepcopy(unet.conv_in)                             # the trainable copy ...
        self.down_blocks = copy.deepcopy(unet.down_blocks)
        self.mid_block = copy.deepcopy(unet.mid_block)                         # ... starts from the U-Net's weights
        for p in self.parameters():
            p.requires_grad_(True)
        self.controlnet_cond_embedding = ConditionEmbedding(
            unet.config.block_out_channels[0], conditioning_channels, embedding_channels_for(factor, embedding_first))
        widths = self._skip_widths(unet)
        self.controlnet_down_blocks = nn.ModuleList(zero_conv(w) for w in widths[:-1])
        self.controlnet_mid_block = zero_conv(widths[-1])
        self.factor = factor

    @torch.no_grad()
    def _skip_widths(self, unet) -> list[int]:
        """Channels of every skip feature (conv_in, each down-block output) and of the middle block."""
        cfg = unet.config
        z = torch.zeros(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=unet.device)
        c = torch.zeros(1, 1, cfg.cross_attention_dim, device=unet.device)
        down, mid = self._features(z, torch.zeros(1, dtype=torch.long, device=unet.device), c, None)
        return [h.shape[1] for h in down] + [mid.shape[1]]

    def _features(self, z_t, t, c, e):
        """The copy's skip features and middle output for latent z_t (N, 4, h, w) plus embedding e."""
        t = t.expand(z_t.shape[0]) if t.ndim == 1 else t.reshape(1).expand(z_t.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(z_t.dtype))            # (N, d_t)
        h = self.conv_in(z_t)                                                  # (N, C_0, h, w)
        if e is not None:
            h = h + e                                                          # h'_0 = conv_in(z_t) + E(y)
        features = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=c)
            else:
                h, res = block(hidden_states=h, temb=emb)
            features.extend(res)                                               # (N, C_i, h_i, w_i) each
        if getattr(self.mid_block, "has_cross_attention", False):
            h = self.mid_block(h, emb, encoder_hidden_states=c)
        else:
            h = self.mid_block(h, emb)
        return features, h

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, y: torch.Tensor,
                conditioning_scale: float = 1.0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """z_t (N, 4, h, w), t (N,) or (), c (N, L, d), y (N, C_y, h f, w f) in [0, 1] ->
        (lambda Z_i(features_i) for each skip, lambda Z_mid(middle)) (eqs. 6.1, 6.5)."""
        if tuple(y.shape[-2:]) != tuple(d * self.factor for d in z_t.shape[-2:]):
            raise ValueError(f"the condition must be image-sized: latent {tuple(z_t.shape[-2:])} x factor "
                             f"{self.factor}, got {tuple(y.shape[-2:])}")
        t = torch.as_tensor(t, device=z_t.device)
        e = self.controlnet_cond_embedding(y.to(z_t.dtype))                    # (N, C_0, h, w)
        features, mid = self._features(z_t, t, c, e)
        down = tuple(conditioning_scale * z(h) for z, h in zip(self.controlnet_down_blocks, features))
        return down, conditioning_scale * self.controlnet_mid_block(mid)


def controlled_eps(unet, controlnet, z_t, t, c, y, conditioning_scale: float = 1.0) -> torch.Tensor:
    """eps_theta(z_t, t, c) of the frozen U-Net with the ControlNet's residuals added (eq. 6.5) (book §6.2).
    (The U-Net's output: eps, or v for a v-prediction U-Net; the scheduler knows which.)

    ``controlnet``: a :class:`ScratchControlNet` or a diffusers ``ControlNetModel`` (or None: the plain U-Net).
    Returns (N, 4, h, w).
    """
    if controlnet is None:
        return unet(z_t, t, encoder_hidden_states=c).sample
    if isinstance(controlnet, ScratchControlNet):
        down, mid = controlnet(z_t, t, c, y, conditioning_scale)
    else:
        down, mid = controlnet(z_t, t, encoder_hidden_states=c, controlnet_cond=y,
                               conditioning_scale=conditioning_scale, return_dict=False)
    return unet(z_t, t, encoder_hidden_states=c, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample


def diffusers_controlnet(unet, factor: int = 4, conditioning_channels: int = 3, embedding_first: int = 16):
    """``ControlNetModel.from_unet`` of the course's U-Net with E downsampling by ``factor`` (book §6.2).

    The copy takes the U-Net's weights (``load_weights_from_unet``); its zero convolutions and E's ``conv_out``
    are zero, so it adds nothing until trained.
    """
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding_channels_for(
        factor, embedding_first), conditioning_channels=conditioning_channels)


def save_controlnet(folder, controlnet, **info):
    """Save a diffusers ``ControlNetModel`` as a float16 diffusers folder plus ``diffcourse.json`` holding ``info``
    (the command that made it, its training record) (book §6.2). Returns the folder.

    ``ControlNetModel.from_pretrained(folder)`` loads it; :func:`load_controlnet` loads it as float32.
    """
    from pathlib import Path

    from ..latent.zoo_folders import write_metadata

    folder = Path(folder)
    half = copy.deepcopy(controlnet).half()                                   # float16 on disk: half the bytes
    half.save_pretrained(str(folder), safe_serialization=True)
    return write_metadata(folder, info)


def load_controlnet_folder(folder, device="cpu"):
    """(``ControlNetModel`` in eval mode, float32; its ``diffcourse.json`` metadata) of a folder written by
    :func:`save_controlnet`: what :func:`diffcourse.zoo.load` returns for a ControlNet entry (book §6.2)."""
    from diffusers import ControlNetModel

    from ..latent.zoo_folders import read_metadata

    from pathlib import Path

    if not (Path(folder) / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a ControlNet folder (no config.json); write one with "
                                "save_controlnet or `python -m diffcourse.train controlnet --out FOLDER`")
    net = ControlNetModel.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    return net.to(device).eval(), read_metadata(folder)


def load_controlnet(folder=None, device="cpu"):
    """The trained ControlNet as a float32 diffusers ``ControlNetModel`` (book §6.2): ``folder``, else the zoo's
    verified ``shapes_controlnet`` (Canny edges on chapter 4's shapes_sd)."""
    if folder is None:
        from .. import zoo

        folder = zoo.verify(ZOO_NAME)
    return load_controlnet_folder(folder, device)[0]


def load_controlnet_pipeline(sd_folder=None, controlnet_folder=None, device="cpu"):
    """diffusers' ``StableDiffusionControlNetPipeline`` from two local folders, offline, float32 (book §6.2).

    ``sd_folder``: a Stable Diffusion pipeline folder (default: the zoo's ``shapes_sd``, chapter 4);
    ``controlnet_folder``: a ControlNet folder (default: the zoo's ``shapes_controlnet``). The call
    ``pipe(prompts, image=conditions, controlnet_conditioning_scale=lam, output_type="pt")`` takes the
    conditions (N, 3, H, W) in [0, 1], H = W = 32.
    """
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from ..latent.pipeline import pipeline_folder

    controlnet = load_controlnet(controlnet_folder, device)
    shown = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()                                   # no "Loading ..." bars
    transformers_logging.disable_progress_bar()
    try:
        pipe = StableDiffusionControlNetPipeline.from_pretrained(
            str(pipeline_folder(sd_folder)), controlnet=controlnet, dtype=torch.float32, local_files_only=True,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    finally:
        if shown[0]:
            diffusers_logging.enable_progress_bar()
        if shown[1]:
            transformers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def controlnet_pipeline(pipe, controlnet):
    """``StableDiffusionControlNetPipeline`` from a course pipeline's parts and ``controlnet`` (book §6.2)."""
    from diffusers import StableDiffusionControlNetPipeline

    out = StableDiffusionControlNetPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                            unet=pipe.unet, controlnet=controlnet, scheduler=pipe.scheduler,
                                            safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


@torch.no_grad()
def sample_controlled(pipe, prompts: list[str], y: torch.Tensor | None = None, controlnet=None, seed: int = 0,
                      num_inference_steps: int = 25, guidance_scale: float = 4.0,
                      conditioning_scale: float = 1.0) -> torch.Tensor:
    """The course's text-to-image loop with a ControlNet (book §6.2, eq. 6.5; CFG of §5).

    Same steps as ``StableDiffusionControlNetPipeline``: z_T = generator's first draw (N, 4, h, w), at each step
    both halves [empty, prompt] go through the ControlNet (condition ``y`` (N, C_y, H, W) in [0, 1] repeated)
    and the U-Net, guidance, a scheduler step; then the VAE decodes. Returns images (N, 3, H, W) in [-1, 1].
    """
    n = len(prompts)
    device = pipe.unet.device
    cond, uncond = pipe.encode_prompt(list(prompts), device, 1, True, None)   # (N, L, d) each
    c = torch.cat([uncond, cond])                                               # (2N, L, d)
    cfg = pipe.unet.config
    z = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size,
                    generator=torch.Generator().manual_seed(seed)).to(device)   # (N, 4, h, w)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(num_inference_steps, device=device)
    z = z * scheduler.init_noise_sigma
    y2 = None if y is None else torch.cat([y, y]).to(device)                    # (2N, C_y, H, W)
    for t in scheduler.timesteps:
        z_in = scheduler.scale_model_input(torch.cat([z, z]), t)                # (2N, 4, h, w)
        eps_u, eps_c = controlled_eps(pipe.unet, controlnet, z_in, t, c, y2, conditioning_scale).chunk(2)
        eps = eps_u + guidance_scale * (eps_c - eps_u)                          # eq. 4.11
        z = scheduler.step(eps, t, z).prev_sample
    image = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample          # (N, 3, H, W)
    return image.clamp(-1, 1)


def conditioning_sweep(pipe, controlnet, prompts: list[str], y: torch.Tensor, scales=(0.0, 0.5, 1.0, 1.5, 2.0),
                       seed: int = 0, tolerance: int = 1, **kwargs) -> list[dict]:
    """Edge agreement between an edge condition and the images, per conditioning scale lambda (eq. 6.5) (book §6.5).

    y (N, 3, H, W): edge maps in {0, 1}. Each row: scale, mean precision, recall and F1 of
    :func:`diffcourse.control.edges.edge_agreement`, and the images (N, 3, H, W) in [-1, 1]. ``kwargs`` go to
    :func:`sample_controlled` (steps, guidance). The same seed at every scale: only lambda changes.
    """
    from .edges import edge_agreement

    rows = []
    for scale in scales:
        images = sample_controlled(pipe, prompts, y, controlnet, seed=seed, conditioning_scale=scale, **kwargs)
        score = edge_agreement(y, images, tolerance)
        rows.append(dict(scale=float(scale), **{k: float(v.mean()) for k, v in score.items()}, images=images))
    return rows


def denoising_target(scheduler, latents: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net was trained to output, by the scheduler's ``prediction_type`` (book §6.5, eq. 4.10):
    eps ("epsilon"), v = sqrt(abar_t) eps - sqrt(1 - abar_t) z ("v_prediction") or z ("sample").
    Shapes (N, 4, h, w); t (N,)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, eps, t)
    if kind == "sample":
        return latents
    raise ValueError(f"unknown prediction_type {kind!r}")


def controlnet_loss(pipe, controlnet, latents: torch.Tensor, input_ids: torch.Tensor, y: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The ControlNet's training loss (book §6.5): eq. 4.10 with the frozen U-Net plus residuals (eq. 6.5),
    against :func:`denoising_target` (eps or v, as the U-Net was trained).

    latents (N, 4, h, w) scaled by the VAE's factor s, input_ids (N, L), y (N, C_y, H, W) in [0, 1].
    Only the ControlNet's parameters should require gradients.
    """
    scheduler = pipe.scheduler
    n = latents.shape[0]
    device = latents.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)   # (N,)
    eps = torch.randn(latents.shape, generator=generator).to(device)                          # (N, 4, h, w)
    z_t = scheduler.add_noise(latents, eps, t)
    c = pipe.text_encoder(input_ids.to(device))[0]                                            # (N, L, d)
    target = denoising_target(scheduler, latents, eps, t)                                    # (N, 4, h, w)
    return F.mse_loss(controlled_eps(pipe.unet, controlnet, z_t, t, c, y.to(device)), target)
