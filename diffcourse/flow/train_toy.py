"""``python -m diffcourse.train toy-fm``: a ToyMLP velocity model on a 2-D toy, flow matching (book §7.4).

    python -m diffcourse.train toy-fm --dataset eight_gaussians --out zoo/toy_eight_gaussians_fm.safetensors

The same network, data, optimiser, steps and batch size as chapter 2's DDPM toy
(``python -m diffcourse.train toy``), with the flow-matching loss of eq. 7.3 in place of the simple
loss, so that the two can be compared at equal NFE with their training held equal (§7.4). The model
sees ``TIME_SCALE * t`` (1000 t, diffusers' timestep), the range its sinusoidal time features were
designed for; :func:`velocity_fn` wraps a loaded model as ``v(x, t)`` with t in [0, 1].
"""
from __future__ import annotations

import argparse

import torch

from .path import T_SAMPLERS, fm_loss

__all__ = ["TIME_SCALE", "add_parser", "velocity_fn", "train_toy_fm"]

TIME_SCALE = 1000.0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``toy-fm`` subcommand's options, in the order of its recorded command (book §7.4)."""
    p = sub.add_parser("toy-fm", parents=[common], help="a ToyMLP velocity model on a 2-D toy, flow matching (§7.4)")
    p.add_argument("--dataset", required=True, help="two_moons, swiss_roll, eight_gaussians or checkerboard")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--preset", default="small", choices=["tiny", "small"])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--t-sampling", default="uniform", choices=list(T_SAMPLERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"])


def velocity_fn(model: torch.nn.Module):
    """``v(x, t)`` with t (N,) in [0, 1] for a toy-fm model, which is called with 1000 t (book §7.4)."""
    return lambda x, t: model(x, t * TIME_SCALE)


def train_toy_fm(args: argparse.Namespace) -> dict:
    """Train a ToyMLP on ``args.dataset`` with the FM loss (eq. 7.3) and save its EMA weights (book §7.4)."""
    from ..data.toys import sample_toy
    from ..models import ToyMLP
    from ..train import TOY_PRESETS, _store_half, canonical_command
    from ..training import TrainConfig, save_checkpoint, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                               # model initialisation
    model = ToyMLP(TOY_PRESETS[args.preset]())
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         seed=args.seed, device=args.device, progress=args.progress)

    def loss_fn(model_fn, x0, generator):                                     # eq. 7.3 with the model fed 1000 t
        return fm_loss(lambda x, t: model_fn(x, t * TIME_SCALE), x0, generator, t_sampling=args.t_sampling)

    result = train(model, lambda n, g: sample_toy(args.dataset, n, g), None, config, loss_fn=loss_fn)
    info = dict(dataset=args.dataset, steps=args.steps, seed=args.seed, weights="ema", time_scale=TIME_SCALE,
                final_loss=round(result.history.final_loss(), 5), command=canonical_command(args))
    save_checkpoint(args.out, result.ema_model(), schedule=None, prediction_type="flow_prediction", **info)
    if args.weights_dtype == "float16":
        _store_half(args.out)
    return dict(info, seconds=result.history.seconds)
