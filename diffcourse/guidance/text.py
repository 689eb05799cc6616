"""The course's CFG loop on chapter 4's text-to-image parts, next to ``StableDiffusionPipeline`` (book §5.4, eqs.
5.3, 5.5, 5.6).

What the pipeline does with ``guidance_scale=w, negative_prompt=..., guidance_rescale=phi``, written with this
package::

    c = E(prompt),  c_u = E(negative prompt or "")                                     (eq. 4.8)
    eps_u, eps_c = both halves of ONE U-Net call on [z_t; z_t] with [c_u; c]
    eps = eps_u + w (eps_c - eps_u)            then, if phi > 0, eq. 5.6               (eqs. 5.3, 5.5)
    z_T ~ N(0, I) --course DDIM on the scheduler's grid--> z_0,   image = D(z_0 / s)   (eq. 4.6)

With the same seed it agrees with the pipeline to float precision (tests/test_guidance.py). One
difference is on purpose: the pipeline skips the unconditional pass when guidance_scale <= 1 (so
0 <= w < 1 silently means w = 1 there); this loop applies eq. 5.3 for every w.
"""
from __future__ import annotations

import torch

from .cfg import both_branches, guided_eps
from .rescale import rescale_guidance

__all__ = ["guided_text_model", "sample_text_cfg"]


def guided_text_model(unet, context: torch.Tensor, uncond_context: torch.Tensor, w: float, phi: float = 0.0):
    """``model(z_t, t)`` giving the guided eps of eqs. 5.3/5.5 (and 5.6 when phi > 0) for a diffusers U-Net.

    context, uncond_context (N, L, d): the prompts' and the null (or negative) prompts' embeddings.
    """
    def call(z, t, c):
        return unet(z, t, encoder_hidden_states=c).sample                          # (2N, 4, h, w)

    @torch.no_grad()
    def model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_u, eps_c = both_branches(call, z_t, t, context, uncond_context)        # (N, 4, h, w) each
        eps = guided_eps(eps_u, eps_c, w)                                          # eq. 5.3 / 5.5
        return rescale_guidance(eps, eps_c, phi) if phi > 0 else eps               # eq. 5.6
    return model


@torch.no_grad()
def sample_text_cfg(pipe, prompts: list[str], negative_prompts: list[str] | None = None, *, seed: int = 0,
                    num_inference_steps: int = 25, guidance_scale: float = 4.0, guidance_rescale: float = 0.0,
                    clamp: bool = True):
    """Images (N, 3, H, W) in [-1, 1] from a ``StableDiffusionPipeline``'s parts with the course's CFG (§5.4).

    ``pipe``: e.g. :func:`diffcourse.latent.pipeline.load_pipeline` (its DDIM scheduler config gives the grid).
    The course's DDIM lands on alpha_bar = 1 after the last step, so a ``DDIMScheduler`` with
    ``set_alpha_to_one=False`` (Stable Diffusion's own setting) is refused: swap in
    ``DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)`` to compare (book §4.8).
    ``negative_prompts``: replace the empty prompt of the unconditional branch (eq. 5.5).
    A v-prediction U-Net (the scheduler's ``prediction_type``) is guided the same way: eqs. 5.3-5.6 are linear
    in the network's output, so they combine v_u and v_c exactly as the pipeline does.
    ``clamp=False`` returns the decoder's output before clipping to [-1, 1], to measure saturation (§5.5).
    """
    if getattr(pipe.scheduler.config, "set_alpha_to_one", True) is False:
        raise ValueError("the pipeline's DDIMScheduler has set_alpha_to_one=False; the course's DDIM ends on "
                         "alpha_bar = 1 (set_alpha_to_one=True), so the two would differ at the last step")
    from ..latent.sample_latent import schedule_of
    from ..latent.text_encoder import encode_prompt, prompt_ids
    from ..samplers import sample_ddim

    prompts = list(prompts)
    negative = [""] * len(prompts) if negative_prompts is None else list(negative_prompts)
    if len(negative) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(negative)} negative prompts")
    c = encode_prompt(pipe.text_encoder, prompt_ids(pipe.tokenizer, prompts))       # (N, L, d)
    c_u = encode_prompt(pipe.text_encoder, prompt_ids(pipe.tokenizer, negative))    # (N, L, d)
    model = guided_text_model(pipe.unet, c, c_u, guidance_scale, guidance_rescale)
    config = pipe.scheduler.config
    size = pipe.unet.config.sample_size
    shape = (len(prompts), pipe.unet.config.in_channels, size, size)              # z_T: the generator's first draw
    z0 = sample_ddim(model, shape, schedule_of(pipe.scheduler), num_steps=num_inference_steps,
                     spacing=config.timestep_spacing, steps_offset=config.steps_offset,
                     prediction_type=config.prediction_type,                       # eps or v, as the U-Net was trained
                     generator=torch.Generator().manual_seed(seed))               # (N, 4, h, w)
    images = pipe.vae.decode(z0 / pipe.vae.config.scaling_factor).sample                # (N, 3, H, W), eq. 4.6
    return images.clamp(-1, 1) if clamp else images
