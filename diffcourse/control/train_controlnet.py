"""Training a ControlNet on the shapes with edge or mask conditions the course computes (book §6.3, eqs. 6.3-6.4).

The U-Net, the text encoder and the VAE stay frozen; only the ControlNet (its trainable copy, the condition
embedding E and the zero convolutions) learns, on chapter 4's loss with the residuals added::

    L = E || eps - eps_theta(z_t, t, c; + lambda r_i(z_t, t, c, y)) ||^2                          (eqs. 4.10, 6.4)

:func:`control_dataset` draws shapes images, their captions and a condition map (Canny edges, the
segmentation map or the position boxes of :mod:`diffcourse.control.edges`); :func:`train_controlnet`
runs the loop and reports the loss on fixed draws before and after, with the right conditions and with
the conditions shuffled across images: once trained, the ControlNet should do better with the right ones.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..data.shapes import caption_for, render_objects, sample_objects
from ..latent.text_encoder import prompt_ids
from ..latent.vae import encode
from .controlnet import controlnet_loss
from .edges import as_condition, canny, position_mask, segmentation_map

__all__ = ["CONDITIONS", "control_dataset", "fixed_control_loss", "train_controlnet"]

#: The condition maps :func:`control_dataset` can draw (book §6.2).
CONDITIONS = ("canny", "segmentation", "position")


def control_dataset(n: int, condition: str = "canny", seed: int = 0, size: int = 32,
                    max_shapes: int = 1) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` plain shapes images (n, 3, size, size) in [-1, 1], their captions and conditions
    (n, 3, size, size) in [0, 1] of kind ``condition`` (one of :data:`CONDITIONS`) (book §6.2-§6.3)."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    g = torch.Generator().manual_seed(seed)
    objects = [sample_objects(g, size, max_shapes) for _ in range(n)]
    images = torch.stack([render_objects(o, size) for o in objects])          # (n, 3, size, size)
    if condition == "canny":
        maps = canny(images)                                                   # (n, 1, size, size)
    elif condition == "segmentation":
        maps = torch.stack([segmentation_map(o, size) for o in objects])     # (n, size, size) class ids
    else:
        maps = torch.stack([position_mask(o, size) for o in objects])        # (n, size, size)
    return images, [caption_for(o) for o in objects], as_condition(maps)


def fixed_control_loss(pipe, controlnet, latents, input_ids, conditions, draws: int = 4, seed: int = 1234) -> float:
    """eqs. 4.10 + 6.4 averaged over ``draws`` fixed (t, eps) per image: comparable across training (book §6.3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sum(float(controlnet_loss(pipe, controlnet, latents, input_ids, conditions, g))
                   for _ in range(draws)) / draws


def train_controlnet(pipe, controlnet, images: torch.Tensor, captions: list[str], conditions: torch.Tensor,
                     steps: int = 60, lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
                     progress: bool = False) -> dict:
    """Train ``controlnet`` (frozen ``pipe``) on (images, captions, conditions) (book §6.3, eqs. 6.3-6.4).

    Returns ``dict(losses=[per step], eval_before=, eval_after=, eval_shuffled=, seconds=)``; ``eval_shuffled``
    is the final loss with every image given another image's condition.
    """
    for part in (pipe.unet, pipe.text_encoder, pipe.vae):
        part.requires_grad_(False)
    device = pipe.unet.device
    with torch.no_grad():
        latents = encode(pipe.vae, images.to(device), pipe.vae.config.scaling_factor)   # (N, 4, h, w)
    ids = prompt_ids(pipe.tokenizer, captions).to(device)                      # (N, L)
    conditions = conditions.to(device)
    before = fixed_control_loss(pipe, controlnet, latents, ids, conditions)
    params = [p for p in controlnet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    controlnet.train()
    for _ in tqdm(range(steps), desc="ControlNet", disable=not progress):
        idx = torch.randint(0, latents.shape[0], (batch_size,), generator=g).to(device)   # (B,)
        loss = controlnet_loss(pipe, controlnet, latents[idx], ids[idx], conditions[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    controlnet.eval()
    shuffled = conditions.roll(1, dims=0)                                      # another image's condition
    return dict(losses=losses, eval_before=before,
                eval_after=fixed_control_loss(pipe, controlnet, latents, ids, conditions),
                eval_shuffled=fixed_control_loss(pipe, controlnet, latents, ids, shuffled),
                seconds=time.perf_counter() - start)
