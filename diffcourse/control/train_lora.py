"""Training a style LoRA on a handful of styled images, on a CPU (book §6.4, eq. 6.5 trained with eq. 4.10).

Only the A and B matrices require gradients (the U-Net, text encoder and VAE stay frozen); the loss is the
latent denoising loss of chapter 4::

    L = E || eps - eps_theta+LoRA(sqrt(abar_t) z + sqrt(1 - abar_t) eps, t, c) ||^2                  (eq. 4.10)

(with v = sqrt(abar_t) eps - sqrt(1 - abar_t) z in place of eps for a v-prediction U-Net).

on the latents z = s E(x) of 10-20 images in the new style and their captions. :func:`styled_images` draws
such a set: the course's shapes with a fixed style (:data:`STYLE_PRESETS`) that the VAE has seen
(chapter 4's ``varied`` data). :func:`fixed_eval_loss` evaluates L on fixed (t, eps) draws, so losses
before and after training are comparable (the per-step loss is too noisy to compare).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.shapes import caption_for, render_styled, sample_objects
from ..latent.text_encoder import encode_prompt, prompt_ids
from ..latent.vae import encode
from .controlnet import denoising_target

__all__ = ["STYLE_PRESETS", "styled_images", "fixed_eval_loss", "train_lora"]

#: Fixed styles for :func:`styled_images` (book §6.4): a background and one texture for every shape.
STYLE_PRESETS = {
    "striped dusk": dict(background="gradient", bg_colour=[0.30, 0.0, 0.25], bg_colour2=[0.0, 0.05, 0.30],
                         texture="stripes", angle=0.0),
    "shaded teal": dict(background="solid", bg_colour=[0.0, 0.25, 0.25], bg_colour2=[0.0, 0.25, 0.25],
                        texture="shading", angle=0.0),
}


def styled_images(n: int, style: str = "striped dusk", seed: int = 0, size: int = 32,
                  max_shapes: int = 1) -> tuple[torch.Tensor, list[str]]:
    """``n`` shapes images in one :data:`STYLE_PRESETS` style and their (style-free) captions (book §6.4).

    Returns images (n, 3, size, size) in [-1, 1] and n captions. The same (seed, i) gives the same shapes as
    the plain data.
    """
    preset = STYLE_PRESETS[style]
    images, captions = [], []
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        objects = sample_objects(g, size, max_shapes)
        look = dict(background=preset["background"], bg_colour=preset["bg_colour"],
                    bg_colour2=preset["bg_colour2"], noise_seed=0, textures=[preset["texture"]] * len(objects),
                    angles=[preset["angle"]] * len(objects))
        images.append(render_styled(objects, look, size))                      # (3, size, size)
        captions.append(caption_for(objects))
    return torch.stack(images), captions


def _noised(pipe, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return pipe.scheduler.add_noise(z, eps.to(z.device), t.to(z.device))     # sqrt(abar) z + sqrt(1-abar) eps


def fixed_eval_loss(pipe, latents: torch.Tensor, context: torch.Tensor, draws: int = 4, seed: int = 1234) -> float:
    """eq. 4.10 averaged over ``draws`` fixed (t, eps) per latent (book §6.4): a loss comparable across training.

    latents (N, 4, h, w) scaled; context (N, L, d) the captions' text vectors.
    """
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
            eps = torch.randn(latents.shape, generator=g)                      # (N, 4, h, w)
            t, eps = t.to(latents.device), eps.to(latents.device)
            pred = pipe.unet(_noised(pipe, latents, t, eps), t, encoder_hidden_states=context).sample
            total += float(F.mse_loss(pred, denoising_target(pipe.scheduler, latents, eps, t)))
    return total / draws


def train_lora(pipe, images: torch.Tensor, captions: list[str], steps: int = 40, lr: float = 1e-2,
               batch_size: int = 8, seed: int = 0, progress: bool = False) -> dict:
    """Train the parameters of ``pipe.unet`` that require gradients (the LoRA's A and B) on eq. 4.10 (book §6.4).

    Add the LoRA first (:func:`~diffcourse.control.lora.add_lora` or
    :func:`~diffcourse.control.peft_lora.add_peft_lora`). images (N, 3, H, W) in [-1, 1], N captions.
    Returns ``dict(losses=[per step], eval_before=, eval_after=, trainable=, seconds=)``.
    """
    import time

    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter of pipe.unet requires gradients: add a LoRA first")
    with torch.no_grad():
        latents = encode(pipe.vae, images.to(pipe.vae.device), pipe.vae.config.scaling_factor)  # (N, 4, h, w) means
        context = encode_prompt(pipe.text_encoder, prompt_ids(pipe.tokenizer, captions))   # (N, L, d)
    before = fixed_eval_loss(pipe, latents, context)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    pipe.unet.train()
    for _ in tqdm(range(steps), desc="LoRA", disable=not progress):
        idx = torch.randint(0, latents.shape[0], (batch_size,), generator=g).to(latents.device)   # (B,)
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (batch_size,), generator=g).to(latents.device)
        eps = torch.randn((batch_size, *latents.shape[1:]), generator=g).to(latents.device)   # (B, 4, h, w)
        pred = pipe.unet(_noised(pipe, latents[idx], t, eps), t, encoder_hidden_states=context[idx]).sample
        loss = F.mse_loss(pred, denoising_target(pipe.scheduler, latents[idx], eps, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    pipe.unet.eval()
    return dict(losses=losses, eval_before=before, eval_after=fixed_eval_loss(pipe, latents, context),
                trainable=sum(p.numel() for p in params), seconds=time.perf_counter() - start)
