"""Command line for training the course's models and (re)building the zoo (book §2.1).

    python -m diffcourse.train toy --dataset two_moons --out zoo/toy_two_moons.safetensors
    python -m diffcourse.train toy --dataset two_moons --out zoo/toy_two_moons.safetensors --update-manifest

Every option has a default, and the file records the *canonical* command -- every option
written out, ``--update-manifest`` left off -- so the manifest always shows exactly how to
reproduce a checkpoint. ``--update-manifest`` writes the file's sha256 and size into the
``MANIFEST.json`` beside it (see :mod:`diffcourse.zoo`).

Toy models train on fresh samples of ``diffcourse.data.toys.sample_toy`` at every step, on the
CPU with one thread by default: on a small MLP one thread is faster than several (no
synchronisation), and a fixed thread count makes the result repeatable.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

import torch

from . import zoo
from .models import ToyMLP, ToyMLPConfig
from .schedules import make_schedule
from .training import TrainConfig, save_checkpoint, train

TOY_PRESETS = {"tiny": ToyMLPConfig.tiny, "small": ToyMLPConfig.small}


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes; they do not change the checkpoint, so they stay out of its command."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--update-manifest", action="store_true",
                   help="write the checkpoint's sha256 and size into MANIFEST.json beside it")
    p.add_argument("--name", help="zoo entry name (default: the file name without extension)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return p


def _toy_parser(sub) -> None:
    p = sub.add_parser("toy", parents=[_common_options()], help="a ToyMLP on a 2-D toy dataset (book §2.1)")
    p.add_argument("--dataset", required=True, help="two_moons, swiss_roll, eight_gaussians or checkerboard")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--preset", default="small", choices=sorted(TOY_PRESETS))
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "sample", "v_prediction"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (the zoo's checkpoints) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")


def canonical_command(args: argparse.Namespace) -> str:
    """The full command that reproduces ``args``' checkpoint: every option written out (book §2.1)."""
    skip = {"command", "update_manifest", "name", "progress"}
    parts = ["python", "-m", "diffcourse.train", args.command]
    for key, value in vars(args).items():
        if key not in skip:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def train_toy(args: argparse.Namespace) -> dict:
    """Train a ToyMLP on ``args.dataset`` and save it; returns the checkpoint's metadata (book §2.1)."""
    from .data.toys import sample_toy

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                   # model initialisation
    model = ToyMLP(TOY_PRESETS[args.preset]())
    schedule = make_schedule(args.schedule, args.T)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         prediction_type=args.prediction_type, seed=args.seed, device=args.device,
                         progress=args.progress)
    result = train(model, lambda n, g: sample_toy(args.dataset, n, g), schedule, config)
    info = dict(dataset=args.dataset, steps=args.steps, seed=args.seed, weights="ema",
                final_loss=round(result.history.final_loss(), 5), command=canonical_command(args))
    save_checkpoint(args.out, result.ema_model(), schedule=schedule,
                    prediction_type=args.prediction_type, **info)
    return dict(info, seconds=result.history.seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffcourse.train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _toy_parser(sub)
    args = parser.parse_args(argv)

    info = train_toy(args)
    print(f"wrote {args.out}: final loss {info['final_loss']:.4f}, "
          f"{info['seconds']:.1f} s, {os.path.getsize(args.out) / 1024:.0f} KiB")
    if args.update_manifest:
        entry = zoo.register(args.out, name=args.name, train_seconds=round(info["seconds"], 1))
        print(f"manifest {zoo.manifest_path(args.out)}: {entry['name']} sha256 {entry['sha256'][:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
