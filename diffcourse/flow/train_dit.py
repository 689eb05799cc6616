"""``python -m diffcourse.train dit-digits``: a class-conditional DiT trained with flow matching (book §7.8).

    python -m diffcourse.train dit-digits --out zoo/digits_dit_fm.safetensors

The course's one training loop (:func:`diffcourse.training.train`: AdamW, warm-up then cosine decay,
gradient clipping, EMA, tqdm) with the flow-matching loss of eq. 7.3 in place of the simple loss,
logit-normal training times (eq. 7.12) and a share ``--p-uncond`` of "no class" labels for
classifier-free guidance (eq. 7.17). The checkpoint stores the EMA weights (float16 by default) with
``schedule`` and ``T`` null (a flow model has no noise schedule) and ``prediction_type``
``"flow_prediction"`` (diffusers' name for a velocity eps - x0).
"""
from __future__ import annotations

import argparse
from functools import partial

import torch

from .dit import DiT, DiTConfig
from .path import T_SAMPLERS, fm_loss

__all__ = ["DIT_PRESETS", "PREDICTION_TYPE", "add_parser", "train_dit_digits"]

DIT_PRESETS = {"tiny": DiTConfig.tiny, "digits": DiTConfig.digits, "digits_small": DiTConfig.digits_small}
PREDICTION_TYPE = "flow_prediction"


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``dit-digits`` subcommand's options, in the order of its recorded command (book §7.8)."""
    p = sub.add_parser("dit-digits", parents=[common],
                       help="a class-conditional DiT on the train split of the digits, flow matching (book §7.8)")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--preset", default="digits", choices=sorted(DIT_PRESETS))
    p.add_argument("--size", type=int, default=8, help="image size: 8 (native) or 16 (bilinear)")
    p.add_argument("--patch-size", type=int, default=2, help="p: tokens are p x p patches")
    p.add_argument("--steps", type=int, default=2300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--t-sampling", default="logit_normal", choices=list(T_SAMPLERS),
                   help="training times: uniform, or SD3's logit-normal (eq. 7.12)")
    p.add_argument("--shift", type=float, default=1.0, help="SD3 shift of the training times (eq. 7.13)")
    p.add_argument("--num-classes", type=int, default=10, help="10: class-conditional; 0: unconditional")
    p.add_argument("--p-uncond", type=float, default=0.1, help="share of labels replaced by 'no class' (CFG)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (the zoo's checkpoints) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")
    p.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"])


def train_dit_digits(args: argparse.Namespace) -> dict:
    """Train a DiT on the **train** split of the digits with flow matching; save its EMA weights (book §7.8, eq. 7.3)."""
    from ..data.digits import load_digits
    from ..train import _digits_info, _store_half, labelled_batches
    from ..training import TrainConfig, save_checkpoint, train

    if args.num_classes not in (0, 10):
        raise SystemExit(f"--num-classes must be 0 (unconditional) or 10 (the digits), got {args.num_classes}")
    if not 0.0 <= args.p_uncond < 1.0 or (args.p_uncond and not args.num_classes):
        raise SystemExit("--p-uncond must be in [0, 1) and needs --num-classes 10")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                               # model initialisation
    x0, y = load_digits("train", args.size)                                    # (1442, 1, s, s) in [-1, 1], (1442,)
    preset = DIT_PRESETS[args.preset]().to_dict()
    model = DiT(DiTConfig(**dict(preset, input_size=args.size, patch_size=args.patch_size,
                                 num_classes=args.num_classes)))
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         seed=args.seed, device=args.device, progress=args.progress)
    loss_fn = partial(fm_loss, t_sampling=args.t_sampling, shift=args.shift)  # eq. 7.3
    if args.num_classes:
        data = labelled_batches(x0, y, args.num_classes, args.p_uncond)
        result = train(model, data, None, config, model_kwargs=lambda b: {"class_labels": b[1]}, loss_fn=loss_fn)
    else:
        result = train(model, x0, None, config, loss_fn=loss_fn)
    info = _digits_info(args, result)
    save_checkpoint(args.out, result.ema_model(), schedule=None, prediction_type=PREDICTION_TYPE, **info)
    if args.weights_dtype == "float16":
        _store_half(args.out)
    return dict(info, seconds=result.history.seconds)
