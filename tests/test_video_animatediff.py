"""diffusers' AnimateDiffPipeline on the course's own weights, chapter 4's shapes_sd (book §8.8)."""
from __future__ import annotations

import torch

from diffcourse.latent.pipeline import load_pipeline
from diffcourse.video.diffusers_motion import (animatediff_pipeline, motion_adapter_for, motion_modules,
                                               motion_unet_call, motion_unet_from_unet2d, image_unet_per_frame,
                                               zero_motion_modules)


def _frames_both_ways(image_pipe, video_pipe, frames=3, steps=4, prompt="a red square"):
    h = image_pipe.unet.config.sample_size
    px = h * image_pipe.vae_scale_factor
    lat = torch.randn(1, 4, frames, h, h, generator=torch.Generator().manual_seed(1))      # (1, C, F, h, w)
    kw = dict(num_inference_steps=steps, guidance_scale=3.0, output_type="pt", height=px, width=px)
    clip = video_pipe(prompt, num_frames=frames, latents=lat, **kw).frames[0]              # (F, 3, H, W)
    images = image_pipe([prompt] * frames, latents=lat[0].permute(1, 0, 2, 3).contiguous(), **kw).images
    return clip, images                                                                      # (F, 3, H, W) twice


def test_motion_unet_from_shapes_sd_keeps_its_cross_only_attention_and_equals_it_when_zeroed():
    image_pipe = load_pipeline()
    unet = image_pipe.unet
    assert unet.config.only_cross_attention, "shapes_sd's U-Net reads the text in its first attention too"
    torch.manual_seed(0)
    motion = motion_unet_from_unet2d(unet, motion_adapter_for(unet)).eval()
    x, ctx = torch.randn(2, 4, 5, 8, 8), torch.randn(2, 7, unet.config.cross_attention_dim)
    with torch.no_grad():
        ref = image_unet_per_frame(unet, x, torch.tensor([30, 700]), ctx)                  # (B, C, F, h, w)
        assert (motion_unet_call(motion, x, torch.tensor([30, 700]), ctx) - ref).abs().max() > 1e-2
        assert zero_motion_modules(motion) == len(motion_modules(motion)) > 0
        out = motion_unet_call(motion, x, torch.tensor([30, 700]), ctx)
    assert torch.allclose(out, ref, atol=1e-5), float((out - ref).abs().max())


def test_animatediff_pipeline_on_shapes_sd_draws_the_image_pipelines_frames_when_zeroed():
    image_pipe = load_pipeline()
    image_pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    clip, images = _frames_both_ways(image_pipe, animatediff_pipeline(image_pipe, motion_adapter_for(image_pipe.unet)))
    assert clip.shape == images.shape == (3, 3, 32, 32)
    assert (clip - images).abs().max() < 1e-4, float((clip - images).abs().max())
    torch.manual_seed(0)
    clip, images = _frames_both_ways(image_pipe, animatediff_pipeline(image_pipe, motion_adapter_for(image_pipe.unet),
                                                                      zero=False))
    assert (clip - images).abs().max() > 1e-2, "a fresh MotionAdapter is not zero-initialised"
