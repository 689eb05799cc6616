"""``python -m diffcourse.train video-dit``: a spacetime-patch DiT trained on moving-shapes clips (book §8.7).

    python -m diffcourse.train video-dit --out zoo/shapes_video_dit.safetensors

The transformer route of §8.7 at course size. A :class:`~diffcourse.video.spacetime.SpacetimeDiT` cuts
each clip into tubelets (eq. 8.11), runs full attention over all of them and is trained from scratch --
no image model, no inflation -- on the same moving-shapes clips as ``shapes_video``
(:func:`~diffcourse.video.train_video.training_clips`), with the course's one training loop
(:func:`diffcourse.training.train`: EMA, tqdm, seeded) and the video loss of eq. 8.6 taken over the whole
clip, one time step per clip (eq. 8.1). The options shared with every diffusion command come from
``diffcourse.train._diffusion_options``; the DiT is called with the integer timestep k in 0..T-1
(``time_scale = 1``), as Chapter 7's DDPM DiT is (:mod:`diffcourse.flow.dit_ddpm`).

Why the x0 target (``--prediction-type sample``) by default, and not eps or v: measured on this model at
4,000 steps (8 frames of 16x16, 32 clips from the same noise, 25 DDIM steps), the eps-trained DiT draws
noise (84% of the pixels pass the object threshold of §8.6, so its consistency scores mean nothing); the
v-trained one, the target that rescued Chapter 7's DiT (§7.8, :mod:`diffcourse.flow.dit_ddpm`), draws
coloured blobs in grey speckle (background brightness 0.17, colour std 0.074, jerk 3.1 px: no better than
the image U-Net run frame by frame); the x0-trained one draws a clean shape on black (background 0.03,
colour std 0.017, jerk 1.4 px). The likely reason is a rank limit. The final layer maps a 64-wide token to the
96 values of its (2, 4, 4) tubelet with one matrix, so every prediction lies in a 64-dimensional subspace
per token. The x0 that an eps or v prediction implies (eqs. 1.11-1.12) adds a multiple of x_t itself:
x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), or x0 = sqrt(abar) x_t - sqrt(1 - abar) v. In the 32
directions per token the layer cannot reach, nothing cancels x_t's noise, and it stays in the sample:
amplified by 1 / sqrt(abar) with eps (noise), scaled by sqrt(abar) with v (speckle). An x0 prediction
has no x_t term. (With 1-frame tubelets, 48 values per token and no rank limit, the v-trained DiT's
background was clean, 0.04, but its objects broke up.) ``--prediction-type epsilon`` or ``v_prediction``
reproduces the other two.

The checkpoint holds the EMA weights (float16 by default); its metadata records the final loss, a
50-point smoothed loss curve, the training seconds and the canonical command. The seconds make the
file's bytes differ from run to run (as ``shapes_video``'s do); its weights do not.
"""
from __future__ import annotations

import argparse

import torch

__all__ = ["add_parser", "train_video_dit", "dit_config"]


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``video-dit`` subcommand's options, in the order of its recorded command (book §8.7)."""
    from ..train import _diffusion_options
    from .train_video import add_clip_options

    p = sub.add_parser("video-dit", parents=[common],
                       help="a spacetime-patch DiT trained on moving-shapes clips (book §8.7)")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    add_clip_options(p)
    p.add_argument("--patch-t", type=int, default=2, help="p_t: frames per tubelet (eq. 8.11)")
    p.add_argument("--patch-size", type=int, default=4, help="p: pixels per tubelet side (eq. 8.11)")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    _diffusion_options(p, steps=5000, batch_size=16)
    p.set_defaults(prediction_type="sample", lr=1e-3)                          # x0 target: see the module doc
    p.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"],
                   help="dtype of the stored weights (float16 halves the file; they load into a float32 model)")


def dit_config(args: argparse.Namespace):
    """The :class:`~diffcourse.video.spacetime.SpacetimeDiTConfig` of ``args``, or a ``SystemExit`` that says
    which option is wrong (book §8.7)."""
    from .spacetime import SpacetimeDiTConfig

    for key in ("num_clips", "frames", "size", "patch_t", "patch_size", "hidden_size", "depth", "num_heads",
                "steps", "batch_size"):
        if getattr(args, key) < 1:
            raise SystemExit(f"video-dit: --{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if not 0.0 < args.radius < 0.5:
        raise SystemExit(f"video-dit: --radius must be in (0, 0.5), got {args.radius}")
    if args.frames % args.patch_t or args.size % args.patch_size:
        raise SystemExit(f"video-dit: a clip of --frames {args.frames} and --size {args.size} cannot be cut into "
                         f"tubelets of --patch-t {args.patch_t} frames and --patch-size {args.patch_size} pixels "
                         "(eq. 8.11: each must divide its axis)")
    if args.hidden_size % 4 or args.hidden_size % args.num_heads:
        raise SystemExit(f"video-dit: --hidden-size {args.hidden_size} must be divisible by 4 (the position code) "
                         f"and by --num-heads {args.num_heads}")
    return SpacetimeDiTConfig(frames=args.frames, input_size=args.size, patch_t=args.patch_t,
                              patch_size=args.patch_size, hidden_size=args.hidden_size, depth=args.depth,
                              num_heads=args.num_heads, time_scale=1.0)             # t is the timestep k


def train_video_dit(args: argparse.Namespace) -> dict:
    """Train a SpacetimeDiT on moving-shapes clips with eq. 8.6 (book §8.7) and save its EMA weights."""
    from ..schedules import make_schedule
    from ..train import _digits_info, _store_half
    from ..training import TrainConfig, save_checkpoint, train
    from .spacetime import SpacetimeDiT
    from .train_video import training_clips

    config = dit_config(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                                   # model initialisation
    clips = training_clips(args.num_clips, args.frames, args.size, args.radius, args.seed)   # (N, 3, F, H, W)
    model = SpacetimeDiT(config)
    schedule = make_schedule(args.schedule, args.T)
    result = train(model, clips, schedule,
                   TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                               prediction_type=args.prediction_type, seed=args.seed, device=args.device,
                               progress=args.progress))
    info = dict(_digits_info(args, result),                                        # steps, loss, curve, command
                dataset=f"moving-shapes-{args.num_clips}x{args.frames}x{args.size}", frames=args.frames,
                size=args.size, tokens=config.num_tokens, train_seconds=round(result.history.seconds, 1))
    save_checkpoint(args.out, result.ema_model(), schedule=schedule, prediction_type=args.prediction_type, **info)
    if args.weights_dtype == "float16":
        _store_half(args.out)
    return dict(info, seconds=result.history.seconds)

