"""diffusers' AnimateDiff parts at course size: ``MotionAdapter`` + ``UNetMotionModel`` (book §8.8).

AnimateDiff adds *motion modules* (temporal Transformers, ``AnimateDiffTransformer3D``) to a
trained Stable Diffusion ``UNet2DConditionModel``; ``UNetMotionModel.from_unet2d(unet, adapter)`` makes
the inflated network, the library's counterpart of :class:`diffcourse.video.inflate.VideoUNet`.

Two differences from the course's model, both checked in the tests:

- ``UNetMotionModel`` takes clips ``(B, C, F, H, W)`` and returns ``(B, C, F, H, W)``, but its text
  context is per *frame*, ``(B*F, L, D)``: it repeats the time embedding over the frames, not the
  context (``AnimateDiffPipeline`` repeats the prompt embeddings itself; :func:`motion_unet_call` does too);
- a freshly constructed ``MotionAdapter`` is **not** zero-initialised: its motion modules' output
  projections ``proj_out`` are random, so the inflated network is not the image model until they are
  zeroed (:func:`zero_motion_modules`); then it equals ``UNet2DConditionModel`` frame by frame (eq. 8.5).

On the course's own weights (chapter 4's ``zoo/shapes_sd``) one more step is needed: that U-Net was
trained with ``only_cross_attention=True`` (its first attention reads the text too), an option
``UNetMotionModel.from_unet2d`` does not carry over, so :func:`motion_unet_from_unet2d` rebuilds those
attentions before copying the weights. :func:`animatediff_pipeline` then puts the chapter 4 pipeline's
VAE, text encoder, tokenizer and scheduler around it as diffusers' ``AnimateDiffPipeline``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["COURSE_UNET2D_CONDITION", "COURSE_MOTION_ADAPTER", "build_image_unet", "build_motion_adapter",
           "build_motion_unet", "motion_modules", "zero_motion_modules", "motion_unet_call",
           "image_unet_per_frame", "motion_adapter_for", "motion_unet_from_unet2d", "animatediff_pipeline"]

# a Stable Diffusion-shaped U-Net at course size: 4 latent channels, 16x16 latents, 32-wide text tokens
COURSE_UNET2D_CONDITION = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
COURSE_MOTION_ADAPTER = dict(
    block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
    motion_norm_num_groups=8, motion_max_seq_length=16, use_motion_mid_block=False,
)


def build_image_unet(**overrides):
    """A fresh ``diffusers.UNet2DConditionModel`` of :data:`COURSE_UNET2D_CONDITION` (book §8.8). Seed torch first."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**dict(COURSE_UNET2D_CONDITION, **overrides))


def build_motion_adapter(**overrides):
    """A fresh ``diffusers.MotionAdapter`` of :data:`COURSE_MOTION_ADAPTER` (book §8.8); its ``proj_out`` are random."""
    from diffusers import MotionAdapter

    return MotionAdapter(**dict(COURSE_MOTION_ADAPTER, **overrides))


def build_motion_unet(image_unet, adapter):
    """``UNetMotionModel.from_unet2d``: the image U-Net's weights plus the adapter's motion modules (book §8.8)."""
    from diffusers import UNetMotionModel

    return UNetMotionModel.from_unet2d(image_unet, adapter)


def motion_modules(model: nn.Module) -> list[nn.Module]:
    """Every temporal Transformer (``AnimateDiffTransformer3D``) in a ``UNetMotionModel`` or ``MotionAdapter`` (§8.8)."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return [m for m in model.modules() if isinstance(m, AnimateDiffTransformer3D)]


@torch.no_grad()
def zero_motion_modules(model: nn.Module) -> int:
    """Zero every motion module's output projection, so each is the identity (book §8.8, eq. 8.5); returns how many."""
    mods = motion_modules(model)
    for m in mods:
        nn.init.zeros_(m.proj_out.weight)
        nn.init.zeros_(m.proj_out.bias)
    return len(mods)


@torch.no_grad()
def image_unet_per_frame(image_unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """The image ``UNet2DConditionModel`` on every frame of (B, C, F, H, W) clips, as (B, C, F, H, W) (book §8.8).

    Frames become a batch (B*F, C, H, W); the timestep and the (B, L, D) context are repeated per frame.
    """
    from .reshape import batch_to_frames, frames_to_batch

    B, C, F, H, W = sample.shape
    t = torch.as_tensor(timestep)
    t = (t.expand(B) if t.ndim == 0 else t).repeat_interleave(F)                      # (B*F,)
    ctx = encoder_hidden_states.repeat_interleave(F, dim=0)                            # (B*F, L, D)
    out = image_unet(frames_to_batch(sample), t, encoder_hidden_states=ctx, return_dict=False)[0]  # (B*F, C, H, W)
    return batch_to_frames(out, F)                                                     # (B, C, F, H, W)


def motion_unet_call(motion_unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """``UNetMotionModel`` on (B, C, F, H, W) clips with one (B, L, D) context per clip -> (B, C, F, H, W) (§8.8).

    The context is repeated per frame to (B*F, L, D), as ``AnimateDiffPipeline`` does.
    """
    F = sample.shape[2]
    ctx = encoder_hidden_states.repeat_interleave(F, dim=0)                            # (B*F, L, D)
    return motion_unet(sample, timestep, encoder_hidden_states=ctx, return_dict=False)[0]  # (B, C, F, H, W)


def motion_adapter_for(image_unet, heads: int = 4, max_frames: int = 16):
    """A fresh ``MotionAdapter`` whose widths match ``image_unet`` (book §8.8); its ``proj_out`` are random.

    One motion module per spatial layer (``layers_per_block``), ``heads`` attention heads, frame positions
    up to ``max_frames``, no mid-block module (AnimateDiff v1). Seed torch first.
    """
    from diffusers import MotionAdapter

    cfg = image_unet.config
    return MotionAdapter(block_out_channels=tuple(cfg.block_out_channels), motion_layers_per_block=cfg.layers_per_block,
                         motion_num_attention_heads=heads, motion_norm_num_groups=cfg.norm_num_groups,
                         motion_max_seq_length=max_frames, use_motion_mid_block=False)


def motion_unet_from_unet2d(image_unet, adapter):
    """``UNetMotionModel.from_unet2d`` that also handles ``only_cross_attention=True`` (book §8.8).

    diffusers' ``from_unet2d`` builds every spatial Transformer's first attention as *self*-attention; a
    U-Net trained with ``only_cross_attention`` (chapter 4's ``shapes_sd``) has a *cross*-attention there,
    with keys and values of the text width. This builds the motion U-Net without weights, swaps in a copy
    of each such attention (and sets its block's flag), then copies all image weights (every key must
    match) and the adapter's motion modules. Without that option it is ``from_unet2d`` itself.
    """
    import copy

    from diffusers import UNetMotionModel
    from diffusers.models.attention import BasicTransformerBlock

    if not image_unet.config.get("only_cross_attention"):
        return UNetMotionModel.from_unet2d(image_unet, adapter)
    model = UNetMotionModel.from_unet2d(image_unet, adapter, load_weights=False)
    spatial = {n: m for n, m in image_unet.named_modules() if isinstance(m, BasicTransformerBlock)}
    for name, block in model.named_modules():
        if isinstance(block, BasicTransformerBlock) and name in spatial and spatial[name].only_cross_attention:
            block.attn1 = copy.deepcopy(spatial[name].attn1)                       # cross-attention, text keys
            block.only_cross_attention = True                                     # (the mid block's stays self)
    missing, unexpected = model.load_state_dict(image_unet.state_dict(), strict=False)
    if unexpected or any("motion_modules" not in k for k in missing):
        raise RuntimeError(f"image weights do not fit the motion U-Net: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_motion_modules(adapter)
    return model.to(image_unet.device, image_unet.dtype)


def animatediff_pipeline(image_pipe, adapter, zero: bool = True):
    """diffusers' ``AnimateDiffPipeline`` on an image pipeline's parts and ``adapter`` (book §8.8).

    ``image_pipe``: a ``StableDiffusionPipeline`` (e.g. :func:`diffcourse.latent.pipeline.load_pipeline`,
    chapter 4's ``zoo/shapes_sd``). ``zero=True`` zeroes the motion modules' output projections, so every
    frame the pipeline draws equals the image pipeline's picture from that frame's latent (eq. 8.5).
    The VAE, text encoder, tokenizer and scheduler are shared with ``image_pipe``, not copied.
    """
    from diffusers import AnimateDiffPipeline

    unet = motion_unet_from_unet2d(image_pipe.unet, adapter).eval()
    if zero:
        zero_motion_modules(unet)
    pipe = AnimateDiffPipeline(vae=image_pipe.vae, text_encoder=image_pipe.text_encoder, tokenizer=image_pipe.tokenizer,
                               unet=unet, motion_adapter=adapter, scheduler=image_pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
