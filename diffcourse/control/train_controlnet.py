"""Training a ControlNet on the shapes with edge or mask conditions the course computes (book §6.5, eqs. 6.1, 6.5).

The U-Net, the text encoder and the VAE stay frozen; only the ControlNet (its trainable copy, the condition
embedding E and the zero convolutions) learns, on chapter 4's loss with the residuals added::

    L = E || eps - eps_theta(z_t, t, c; + lambda r_i(z_t, t, c, y)) ||^2                          (eqs. 4.10, 6.4)

:func:`control_dataset` draws shapes images, their captions and a condition map (Canny edges, the
segmentation map or the position boxes of :mod:`diffcourse.control.edges`); :func:`train_controlnet`
runs the loop and reports the loss on fixed draws before and after, with the right conditions and with
the conditions shuffled across images: once trained, the ControlNet should do better with the right ones.

Why a ControlNet can learn to ignore its condition, and the cure (book §6.5). The shapes' captions already say
the colour, the shape, the size and the position, so the frozen U-Net predicts the noise almost as well
without the edges as with them: the loss barely rewards reading y, and a short run leaves the zero
convolutions adding a text-driven correction that is the same for any y (the loss with shuffled conditions
equals the loss with the right ones). Dropping the caption of a share ``p_drop_caption`` of the training
images (the empty prompt, as classifier-free guidance does) leaves the edges as the only source of *where*
and *what shape* for those images, and the ControlNet starts following them within a few hundred steps.

``python -m diffcourse.train controlnet --out zoo/shapes_controlnet`` (:func:`add_parser`, :func:`train_cli`)
trains the zoo's ``shapes_controlnet`` and writes it as a float16 diffusers folder.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.shapes import caption_for, render_objects, sample_objects
from ..latent.text_encoder import prompt_ids
from ..latent.vae import encode
from .controlnet import controlnet_loss
from .edges import as_condition, canny, position_mask, segmentation_map

__all__ = ["CONDITIONS", "control_dataset", "fixed_control_loss", "drop_captions", "train_controlnet", "add_parser",
           "train_cli"]

#: The condition maps :func:`control_dataset` can draw (book §6.5).
CONDITIONS = ("canny", "segmentation", "position")


def control_dataset(n: int, condition: str = "canny", seed: int = 0, size: int = 32,
                    max_shapes: int = 1) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` plain shapes images (n, 3, size, size) in [-1, 1], their captions and conditions
    (n, 3, size, size) in [0, 1] of kind ``condition`` (one of :data:`CONDITIONS`) (book §6.5)."""
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
    """eqs. 4.10 + 6.5 averaged over ``draws`` fixed (t, eps) per image: comparable across training (book §6.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return sum(float(controlnet_loss(pipe, controlnet, latents, input_ids, conditions, g))
                   for _ in range(draws)) / draws


def drop_captions(ids: torch.Tensor, empty: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each row of ``ids`` (B, L) by the empty prompt's ids ``empty`` (L,) with probability ``p``
    (book §6.5): those images' edges are the only thing that says where the shape is. Returns (B, L)."""
    drop = torch.rand(ids.shape[0], generator=generator) < p                  # (B,) bool
    return torch.where(drop[:, None].to(ids.device), empty.to(ids.device)[None], ids)


def train_controlnet(pipe, controlnet, images: torch.Tensor, captions: list[str], conditions: torch.Tensor,
                     steps: int = 60, lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
                     progress: bool = False, p_drop_caption: float = 0.5, eval_every: int = 0,
                     eval_fn=None) -> dict:
    """Train ``controlnet`` (frozen ``pipe``) on (images, captions, conditions) (book §6.5, eqs. 6.1, 6.5).

    ``p_drop_caption``: the share of training images whose caption is replaced by the empty prompt
    (:func:`drop_captions`; 0 keeps every caption, and then the condition is hardly used: see the module's
    docstring). ``eval_fn(controlnet) -> float``, if given, is called at step 0 and every ``eval_every`` steps
    (for example the edge F1 of a few held-out conditions: the curve on which the ControlNet's "sudden
    convergence" shows); its time is not counted in ``seconds``. Returns ``dict(losses=[per step], curve=[[step,
    eval_fn]], eval_before=, eval_after=, eval_shuffled=, seconds=, cpu_seconds=)``, the losses evaluated with
    the full captions; ``eval_shuffled`` is the final loss with every image given another image's condition.
    """
    for part in (pipe.unet, pipe.text_encoder, pipe.vae):
        part.requires_grad_(False)
    device = pipe.unet.device
    with torch.no_grad():
        latents = encode(pipe.vae, images.to(device), pipe.vae.config.scaling_factor)   # (N, 4, h, w)
    ids = prompt_ids(pipe.tokenizer, captions).to(device)                      # (N, L)
    empty = prompt_ids(pipe.tokenizer, [""])[0]                                # (L,) the empty prompt
    conditions = conditions.to(device)
    before = fixed_control_loss(pipe, controlnet, latents, ids, conditions)
    params = [p for p in controlnet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    curve, spent = [], [0.0, 0.0]                                              # eval's (wall, CPU) seconds

    def evaluate(step: int) -> None:
        if eval_fn is None or not eval_every or step % eval_every:
            return
        t0, c0 = time.perf_counter(), time.process_time()
        controlnet.eval()
        curve.append([step, eval_fn(controlnet)])
        controlnet.train()
        spent[0] += time.perf_counter() - t0
        spent[1] += time.process_time() - c0

    losses, start, cpu_start = [], time.perf_counter(), time.process_time()
    controlnet.train()
    evaluate(0)
    for step in tqdm(range(1, steps + 1), desc="ControlNet", disable=not progress):
        idx = torch.randint(0, latents.shape[0], (batch_size,), generator=g).to(device)   # (B,)
        batch_ids = drop_captions(ids[idx], empty, p_drop_caption, g)         # (B, L)
        loss = controlnet_loss(pipe, controlnet, latents[idx], batch_ids, conditions[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        evaluate(step)
    seconds, cpu_seconds = time.perf_counter() - start - spent[0], time.process_time() - cpu_start - spent[1]
    controlnet.eval()
    shuffled = conditions.roll(1, dims=0)                                      # another image's condition
    return dict(losses=losses, curve=curve, eval_before=before,
                eval_after=fixed_control_loss(pipe, controlnet, latents, ids, conditions),
                eval_shuffled=fixed_control_loss(pipe, controlnet, latents, ids, shuffled),
                seconds=seconds, cpu_seconds=cpu_seconds)


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``controlnet`` subcommand of ``python -m diffcourse.train``, options in the order of its recorded
    command (book §6.5)."""
    p = sub.add_parser("controlnet", parents=[common],
                       help="a ControlNet on chapter 4's shapes_sd with Canny-edge conditions (book §6.5)")
    p.add_argument("--pipeline", default="zoo/shapes_sd", help="the frozen Stable Diffusion folder (chapter 4)")
    p.add_argument("--out", required=True, help="where to write the ControlNet's diffusers folder")
    p.add_argument("--condition", default="canny", choices=CONDITIONS)
    p.add_argument("--images", type=int, default=2048, help="training images (drawn once, by the seed)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--p-drop-caption", type=float, default=0.5, help="share of captions replaced by the empty prompt")
    p.add_argument("--embedding-first", type=int, default=8, help="channels of E's first convolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=32, help="held-out conditions for the edge agreement")
    p.add_argument("--curve-every", type=int, default=100,
                   help="record the empty-prompt edge F1 of 8 held-out conditions every this many steps (0: never)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")


def train_cli(args: argparse.Namespace) -> dict:
    """Train ``shapes_controlnet`` from ``args`` (:func:`add_parser`), measure it and save it with
    :func:`~diffcourse.control.controlnet.save_controlnet` (book §6.5). Returns its metadata plus ``seconds``."""
    from ..latent.pipeline import load_pipeline
    from ..latent.zoo_folders import read_metadata
    from ..train import canonical_command
    from .controlnet import diffusers_controlnet, save_controlnet
    from .measure import EVAL_SEED, edge_f1_table

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline, device=args.device)
    base = read_metadata(args.pipeline)
    torch.manual_seed(args.seed)                                               # E's random initialisation
    net = diffusers_controlnet(pipe.unet, factor=pipe.vae_scale_factor, embedding_first=args.embedding_first)
    net = net.to(args.device)
    images, captions, conditions = control_dataset(args.images, args.condition, seed=args.seed)
    _, _, watched = control_dataset(8, args.condition, seed=EVAL_SEED)         # (8, 3, 32, 32) held out

    def empty_prompt_f1(controlnet) -> float:                                  # the edge F1 curve (book §6.5)
        from .controlnet import sample_controlled
        from .edges import edge_agreement

        drawn = sample_controlled(pipe, [""] * 8, watched.to(args.device), controlnet, seed=0,
                                  num_inference_steps=10)                      # (8, 3, 32, 32)
        return round(float(edge_agreement(watched, drawn.cpu())["f1"].mean()), 4)

    result = train_controlnet(pipe, net, images, captions, conditions, steps=args.steps, lr=args.lr,
                              batch_size=args.batch_size, seed=args.seed, progress=args.progress,
                              p_drop_caption=args.p_drop_caption, eval_every=args.curve_every,
                              eval_fn=empty_prompt_f1 if args.condition == "canny" else None)
    net.eval()
    agreement = {}
    if args.condition == "canny":                                              # edges: measure edge agreement
        _, eval_captions, eval_conditions = control_dataset(args.eval_samples, "canny", seed=EVAL_SEED)
        from .controlnet import controlnet_pipeline

        control = controlnet_pipeline(pipe, net)
        for prompt, prompts in (("caption", eval_captions), ("empty", [""] * args.eval_samples)):
            rows = edge_f1_table(control, prompts, eval_conditions, scales=(0.0, 1.0))
            agreement[prompt] = {("no_controlnet" if r["scale"] is None else f"scale_{r['scale']:g}"): round(r["f1"], 4)
                                 for r in rows}
    elif args.condition == "position":                                         # boxes: is the shape in its box?
        from .controlnet import controlnet_pipeline
        from .measure import box_table

        _, eval_captions, eval_conditions = control_dataset(args.eval_samples, "position", seed=EVAL_SEED)
        control = controlnet_pipeline(pipe, net)
        for prompt, prompts in (("caption", eval_captions), ("empty", [""] * args.eval_samples)):
            agreement[prompt] = {("no_controlnet" if r["scale"] is None else f"scale_{r['scale']:g}"):
                                 dict(inside=round(r["inside"], 4), iou=round(r["iou"], 4))
                                 for r in box_table(control, prompts, eval_conditions)}
    cfg = net.config
    info = dict(command=canonical_command(args), model_class="ControlNetModel",
                config=dict(block_out_channels=list(cfg.block_out_channels),
                            conditioning_embedding_out_channels=list(cfg.conditioning_embedding_out_channels),
                            conditioning_channels=cfg.conditioning_channels,
                            cross_attention_dim=cfg.cross_attention_dim),
                dataset=f"shapes-32 one shape (plain), {args.condition} conditions", steps=args.steps, seed=args.seed,
                pipeline=args.pipeline, schedule=base["schedule"], T=base["T"],
                prediction_type=base["prediction_type"], weights="final, float16", p_drop_caption=args.p_drop_caption,
                final_loss=round(sum(result["losses"][-50:]) / len(result["losses"][-50:]), 5),
                eval_loss=dict(before=round(result["eval_before"], 5), after=round(result["eval_after"], 5),
                               shuffled=round(result["eval_shuffled"], 5)),
                **({"edge_f1": agreement, "edge_f1_curve": result["curve"]} if args.condition == "canny"
                   else {"box_agreement": agreement} if args.condition == "position" else {}),
                train_cpu_seconds=round(result["cpu_seconds"], 1))
    out = Path(args.out)
    if out.is_dir():
        shutil.rmtree(out)                                                     # no stale file in the folder
    save_controlnet(out, net.cpu(), **info)
    print(f"ControlNet: eval loss {info['eval_loss']}, agreement {agreement}")
    return dict(info, seconds=result["seconds"])
