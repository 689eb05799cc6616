"""Training a style LoRA on a handful of styled images, on a CPU (book §6.4, eq. 6.2 trained with eq. 4.10).

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
from ..guidance.dropout import drop_condition
from ..latent.text_encoder import encode_prompt, prompt_ids
from ..latent.vae import encode
from .controlnet import denoising_target
from .lora import ATTENTION_PROJECTIONS

__all__ = ["STYLE_PRESETS", "styled_images", "fixed_eval_loss", "train_lora", "STYLE_LORAS", "LORA_MODEL_CLASS",
           "add_parser", "train_style_lora_cli", "canonical_lora_metadata", "is_lora_folder", "load_lora_folder"]

#: Fixed styles for :func:`styled_images` (book §6.4): two background palettes that the chapter 4 VAE keeps
#: ("dusk": purple at the top to blue at the bottom; "teal": one teal colour), and a 3-pixel stripe texture on
#: black that it does not keep (measured on the page with :func:`~diffcourse.control.style.stripe_contrast`).
STYLE_PRESETS = {
    "dusk": dict(background="gradient", bg_colour=[0.30, 0.0, 0.25], bg_colour2=[0.0, 0.05, 0.30],
                 texture="flat", angle=0.0),
    "teal": dict(background="solid", bg_colour=[0.0, 0.25, 0.25], bg_colour2=[0.0, 0.25, 0.25],
                 texture="flat", angle=0.0),
    "stripes": dict(background="black", bg_colour=[0.0, 0.0, 0.0], bg_colour2=[0.0, 0.0, 0.0],
                    texture="stripes", angle=0.0),
}


def styled_images(n: int, style: str = "dusk", seed: int = 0, size: int = 32,
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
               batch_size: int = 8, seed: int = 0, progress: bool = False, p_uncond: float = 0.0) -> dict:
    """Train the parameters of ``pipe.unet`` that require gradients (the LoRA's A and B) on eq. 4.10 (book §6.4).

    Add the LoRA first (:func:`~diffcourse.control.lora.add_lora` or
    :func:`~diffcourse.control.peft_lora.add_peft_lora`). images (N, 3, H, W) in [-1, 1], N captions.
    ``p_uncond``: each caption of a batch is replaced by the empty prompt with this probability (caption
    dropout, §4.7, with chapter 5's :func:`~diffcourse.guidance.dropout.drop_condition`, eq. 5.1), so the unconditional branch of classifier-free guidance (§5) learns the style too;
    otherwise guidance extrapolates the difference between a styled conditional and an unstyled
    unconditional prediction, which distorts the colours.
    Returns ``dict(losses=[per step], eval_before=, eval_after=, trainable=, seconds=)``.
    """
    import time

    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter of pipe.unet requires gradients: add a LoRA first")
    with torch.no_grad():
        latents = encode(pipe.vae, images.to(pipe.vae.device), pipe.vae.config.scaling_factor)  # (N, 4, h, w) means
        context = encode_prompt(pipe.text_encoder, prompt_ids(pipe.tokenizer, captions))   # (N, L, d)
        rows = torch.cat([context, encode_prompt(pipe.text_encoder, prompt_ids(pipe.tokenizer, [""]))])   # (N+1, L, d)
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
        cond = (drop_condition(idx, p_uncond, null_label=len(captions), generator=g)   # caption dropout, eq. 5.1:
                if p_uncond > 0 else idx)                                      # row N is the empty prompt
        pred = pipe.unet(_noised(pipe, latents[idx], t, eps), t, encoder_hidden_states=rows[cond]).sample
        loss = F.mse_loss(pred, denoising_target(pipe.scheduler, latents[idx], eps, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    pipe.unet.eval()
    return dict(losses=losses, eval_before=before, eval_after=fixed_eval_loss(pipe, latents, context),
                trainable=sum(p.numel() for p in params), seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------- the zoo's style LoRAs

#: The zoo's style LoRAs (book §6.4): ``python -m diffcourse.train style-lora --style <style> ...`` writes each.
STYLE_LORAS = {"dusk": "shapes_lora_dusk", "teal": "shapes_lora_teal"}
#: What a style LoRA's folder holds beside its weights: the command and the training record.
LORA_MODEL_CLASS = "StyleLoRA"


def add_parser(sub, common) -> None:
    """The ``style-lora`` subcommand of ``python -m diffcourse.train`` (book §6.4), options in recorded order."""
    p = sub.add_parser("style-lora", parents=[common],
                       help="a LoRA on the U-Net's attention projections of zoo/shapes_sd, trained on styled shapes (§6.4)")
    p.add_argument("--base", required=True, help="the Stable Diffusion folder the LoRA adapts (zoo/shapes_sd)")
    p.add_argument("--out", required=True, help="the folder to write (pytorch_lora_weights.safetensors, float16)")
    p.add_argument("--style", required=True, choices=sorted(STYLE_PRESETS))
    p.add_argument("--images", type=int, default=16, help="styled training images (10-20 in the exercise)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--targets", default=",".join(ATTENTION_PROJECTIONS), help="comma-separated projections")
    p.add_argument("--p-drop-caption", type=float, default=0.5,
                   help="caption dropout, so that guidance does not extrapolate the style (§6.4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")


def train_style_lora_cli(args) -> dict:
    """Train a style LoRA with peft on ``args.base`` and write its folder (book §6.4); returns its metadata.

    The folder holds ``pytorch_lora_weights.safetensors`` (written by ``save_lora_weights`` with the
    adapter's r and alpha as metadata, then stored float16) and ``diffcourse.json`` (the command and the
    training record), so ``pipe.load_lora_weights(folder)`` reads it and :func:`diffcourse.zoo.register`
    records it.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..latent.pipeline import load_pipeline
    from ..latent.zoo_folders import write_metadata
    from ..train import canonical_command
    from .peft_lora import LORA_FILE, add_peft_lora, save_unet_lora

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.base)
    targets = tuple(args.targets.split(","))
    add_peft_lora(pipe.unet, r=args.rank, alpha=args.alpha, targets=targets, seed=args.seed)
    images, captions = styled_images(args.images, args.style, seed=args.seed)
    result = train_lora(pipe, images, captions, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                        seed=args.seed, p_uncond=args.p_drop_caption, progress=args.progress)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        written = save_unet_lora(pipe, tmp)
        with safe_open(str(written), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k).to(torch.float16).contiguous() for k in sorted(f.keys())}
    save_file(tensors, str(out / LORA_FILE), metadata=canonical_lora_metadata(header))   # float16: half the bytes
    info = dict(model_class=LORA_MODEL_CLASS, base=args.base, style=args.style, dataset=(
                    f"{args.images} shapes-32 one-shape images in the {args.style!r} style (style-free captions)"),
                steps=args.steps, seed=args.seed, command=canonical_command(args), schedule=None, T=None,
                prediction_type=pipe.scheduler.config.prediction_type, weights="float16",
                config=dict(r=args.rank, alpha=args.alpha, targets=list(targets)),
                trainable_parameters=result["trainable"], eval_loss_before=round(result["eval_before"], 5),
                eval_loss_after=round(result["eval_after"], 5))
    write_metadata(out, info)
    return dict(info, seconds=result["seconds"])


def canonical_lora_metadata(header: dict) -> dict:
    """The LoRA file's metadata in a canonical form, so that the same command writes the same bytes (book §6.4).

    Only the adapter's config (``lora_adapter_metadata``: r, alpha, targets; without it the loader assumes
    alpha = r): safetensors writes several keys in a random order, and peft keeps ``target_modules`` as a set,
    whose order changes from one Python process to the next. Keys and target modules are sorted.
    """
    import json

    config = json.loads(header["lora_adapter_metadata"])
    config = {k: sorted(v) if k.endswith("target_modules") and isinstance(v, (list, tuple)) else v
              for k, v in config.items()}
    return {"lora_adapter_metadata": json.dumps(config, indent=2, sort_keys=True)}


def is_lora_folder(folder) -> bool:
    """Whether ``folder`` is a style LoRA written by :func:`train_style_lora_cli` (book §6.4)."""
    from pathlib import Path

    from .peft_lora import LORA_FILE

    folder = Path(folder)
    return (folder / LORA_FILE).exists() and (folder / "diffcourse.json").exists()


def load_lora_folder(folder, device="cpu") -> tuple[torch.nn.Module, dict]:
    """(the LoRA's A and B matrices as a module of parameters, metadata) of a style LoRA folder (book §6.4).

    For :func:`diffcourse.zoo.load`; to apply the LoRA use ``pipe.load_lora_weights(folder, adapter_name=...)``.
    """
    from pathlib import Path

    from safetensors.torch import load_file

    from ..latent.zoo_folders import read_metadata
    from .peft_lora import LORA_FILE

    folder = Path(folder)
    state = load_file(str(folder / LORA_FILE))
    weights = torch.nn.ParameterDict({k.replace(".", "__"): torch.nn.Parameter(v.float(), requires_grad=False)
                                      for k, v in state.items()})
    return weights.to(device).eval(), read_metadata(folder)
