"""Command line for training the course's models and (re)building the zoo (book §2.1).

    python -m diffcourse.train toy --dataset two_moons --out zoo/toy_two_moons.safetensors
    python -m diffcourse.train toy --dataset two_moons --out zoo/toy_two_moons.safetensors --update-manifest
    python -m diffcourse.train digits --out zoo/digits_unet.safetensors            # the U-Net, train split (§2.1)
    python -m diffcourse.train digits --num-classes 10 --out zoo/digits_cond_unet.safetensors   # class-conditional (§3.5)
    python -m diffcourse.train classifier --out zoo/digit_classifier.safetensors   # the judge, held-out split (§2.3)
    python -m diffcourse.train diffusers-digits --out zoo/digits_diffusers         # diffusers' UNet2DModel (§3.7)
    python -m diffcourse.train dit-digits --out zoo/digits_dit_fm.safetensors     # a DiT, flow matching (§7.8)
    python -m diffcourse.train toy-fm --dataset eight_gaussians --out zoo/toy_eight_gaussians_fm.safetensors  # §7.4
    python -m diffcourse.train toy-cd --dataset eight_gaussians --out zoo/toy_eight_gaussians_cd.safetensors  # §7.9
    python -m diffcourse.train video --out zoo/shapes_video.safetensors            # inflated video U-Net (§8.5)
    python -m diffcourse.train video-dit --out zoo/shapes_video_dit.safetensors    # spacetime-patch DiT (§8.7)

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
import importlib
import os
import shlex
import sys
from pathlib import Path

import torch
from torch import nn

from . import zoo
from .flow import train_dit as dit_digits
from .flow import consistency as toy_cd
from .flow import train_toy as toy_fm
from .models import DigitClassifier, DigitClassifierConfig, ToyMLP, ToyMLPConfig, UNet, UNetConfig
from .schedules import make_schedule
from .training import METADATA_KEY, TrainConfig, make_readable, save_checkpoint, train

TOY_PRESETS = {"tiny": ToyMLPConfig.tiny, "small": ToyMLPConfig.small}
UNET_PRESETS = {"tiny": UNetConfig.tiny, "digits": UNetConfig.digits}
CLASSIFIER_PRESETS = {"tiny": DigitClassifierConfig.tiny, "small": DigitClassifierConfig}


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes; they do not change the checkpoint, so they stay out of its command."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--update-manifest", action="store_true",
                   help="write the checkpoint's sha256 and size into MANIFEST.json beside it")
    p.add_argument("--name", help="zoo entry name (default: the file name without extension)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return p


def _diffusion_options(p: argparse.ArgumentParser, steps: int, batch_size: int) -> None:
    """The options of every diffusion-model training command, in one order (it is the order of the
    recorded reproduce command, so changing it changes every checkpoint's metadata and hash)."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "sample", "v_prediction"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (the zoo's checkpoints) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")


def _toy_parser(sub) -> None:
    p = sub.add_parser("toy", parents=[_common_options()], help="a ToyMLP on a 2-D toy dataset (book §2.1)")
    p.add_argument("--dataset", required=True, help="two_moons, swiss_roll, eight_gaussians or checkerboard")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--preset", default="small", choices=sorted(TOY_PRESETS))
    _diffusion_options(p, steps=6000, batch_size=512)


# Options added after the first checkpoints were made: written into a command only when they differ
# from these defaults, so the commands (and hashes) of the older zoo entries stay what they were.
_ADDED_LATER = {"num_classes": 0, "p_uncond": 0.0, "skips": "on", "conditioning": "add"}


def canonical_command(args: argparse.Namespace) -> str:
    """The full command that reproduces ``args``' checkpoint: every option written out (book §2.1)."""
    skip = {"command", "update_manifest", "name", "progress"}
    parts = ["python", "-m", "diffcourse.train", args.command]
    world = _processes()
    if world > 1:   # made by ``accelerate launch`` on several processes: that is how to reproduce it
        parts = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(world), "-m", *parts[2:]]
    for key, value in vars(args).items():
        if key in skip or (key in _ADDED_LATER and value == _ADDED_LATER[key]):
            continue
        parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def _processes() -> int:
    """How many processes ``accelerate launch`` started (1 for a plain ``python -m diffcourse.train``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    """Only the main process writes checkpoints and the manifest under ``accelerate launch``."""
    return int(os.environ.get("RANK", "0")) == 0


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
    if _is_main_process():
        save_checkpoint(args.out, result.ema_model(), schedule=schedule,
                        prediction_type=args.prediction_type, **info)
    return dict(info, seconds=result.history.seconds)


def _digits_parser(sub) -> None:
    p = sub.add_parser("digits", parents=[_common_options()],
                       help="a U-Net on the train split of the 8x8 digits (book §2.1, §3)")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--preset", default="digits", choices=sorted(UNET_PRESETS))
    p.add_argument("--size", type=int, default=8, help="image size: 8 (native) or 16 (bilinear)")
    _diffusion_options(p, steps=5000, batch_size=128)
    p.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"],
                   help="dtype of the stored weights (float16 halves the file; they load into a float32 model)")
    p.add_argument("--num-classes", type=int, default=0,
                   help="10: class-conditional on the digit labels (book §3.5); 0: unconditional")
    p.add_argument("--p-uncond", type=float, default=0.0,
                   help="share of training labels replaced by 'no class' (for classifier-free guidance, §5)")
    p.add_argument("--skips", default="on", choices=["on", "off"],
                   help="off: a U-Net without skip connections (the ablation of §3.3)")
    p.add_argument("--conditioning", default="add", choices=["add", "cross"],
                   help="with --num-classes: add the class embedding to e (eq. 3.7), or give the class as tokens "
                        "to the bottleneck's cross-attention (eq. 3.6), as a text prompt would be")


def train_digits(args: argparse.Namespace) -> dict:
    """Train a U-Net on the **train** split of the digits and save its EMA weights (book §2.1).

    The checkpoint's metadata keeps a 50-point smoothed loss curve, so the book can plot it without training.
    """
    from .data.digits import load_digits

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                   # model initialisation
    x0, y = load_digits("train", args.size)                        # (1442, 1, size, size) in [-1, 1], (1442,)
    if args.num_classes not in (0, 10):
        raise SystemExit(f"--num-classes must be 0 (unconditional) or 10 (the digits), got {args.num_classes}")
    if not 0.0 <= args.p_uncond < 1.0 or (args.p_uncond and not args.num_classes):
        raise SystemExit("--p-uncond must be in [0, 1) and needs --num-classes 10")
    if args.conditioning == "cross" and not args.num_classes:
        raise SystemExit("--conditioning cross needs --num-classes 10")
    preset = UNET_PRESETS[args.preset]().to_dict()
    cross = dict(conditioning="cross", context_dim=preset["channels"][-1]) if args.conditioning == "cross" else {}
    model = UNet(UNetConfig(**dict(preset, sample_size=args.size, num_classes=args.num_classes,
                                   skips=args.skips == "on", **cross)))
    schedule = make_schedule(args.schedule, args.T)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         prediction_type=args.prediction_type, seed=args.seed, device=args.device,
                         progress=args.progress)
    if args.num_classes:
        data = labelled_batches(x0, y, args.num_classes, args.p_uncond)
        result = train(model, data, schedule, config, model_kwargs=lambda b: {"class_labels": b[1]})
    else:
        result = train(model, x0, schedule, config)
    info = _digits_info(args, result)
    save_checkpoint(args.out, result.ema_model(), schedule=schedule, prediction_type=args.prediction_type, **info)
    if args.weights_dtype == "float16":
        _store_half(args.out)
    return dict(info, seconds=result.history.seconds)


def _digits_info(args: argparse.Namespace, result) -> dict:
    """What a digits checkpoint records about its training (book §2.1): data, steps, seed, the final loss,
    the reproduce command and a 50-point smoothed loss curve, so the book can plot it without training."""
    smooth = result.history.smoothed(100)
    every = max(1, len(smooth) // 50)
    return dict(dataset=f"digits-train-{args.size}", steps=args.steps, seed=args.seed, weights="ema",
                final_loss=round(result.history.final_loss(), 5), command=canonical_command(args),
                loss_curve=[[i + 1, round(smooth[i], 5)] for i in range(every - 1, len(smooth), every)])


def labelled_batches(x0: torch.Tensor, y: torch.Tensor, num_classes: int, p_uncond: float = 0.0):
    """A data source for :func:`diffcourse.training.train`: (x0, y) batches drawn with replacement, each
    label replaced by the "no class" label ``num_classes`` with probability ``p_uncond`` (book §3.5, §5)."""
    def draw(batch_size: int, generator: torch.Generator):
        idx = torch.randint(len(x0), (batch_size,), generator=generator)
        labels = y[idx].clone()
        if p_uncond:
            drop = torch.rand(batch_size, generator=generator) < p_uncond
            labels[drop] = num_classes
        return x0[idx], labels                                    # (B, 1, s, s), (B,)
    return draw


def _store_half(path) -> None:
    """Rewrite a checkpoint's weights as float16, metadata unchanged (book §2.1: a smaller zoo).

    ``load_checkpoint`` copies them into the model's float32 parameters; on the digits U-Net the
    rounding changes its outputs by about 1e-3 of their scale, far below the sampling noise.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).to(torch.float16).contiguous() for k in f.keys()}
    save_file(tensors, str(path), metadata=meta)
    make_readable(path)


def _classifier_parser(sub) -> None:
    p = sub.add_parser("classifier", parents=[_common_options()],
                       help="the digit classifier behind the digit FID, on the held-out split (book §2.3)")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--preset", default="small", choices=sorted(CLASSIFIER_PRESETS))
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold cross-validation that is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")


def train_classifier_cli(args: argparse.Namespace) -> dict:
    """Train the digit classifier on the **held-out** split only, and report honest accuracies (book §2.3).

    Two numbers are recorded: the k-fold cross-validated accuracy within the held-out split (each fold
    trained from scratch on the other k-1 folds), and the accuracy of the final classifier (trained on
    the whole held-out split) on the 1442 train-split digits, which it never saw.
    """
    import time

    from .data.digits import load_digits
    from .models.classifier import accuracy, train_classifier

    torch.set_num_threads(args.threads)
    make_config = CLASSIFIER_PRESETS[args.preset]
    x, y = load_digits("heldout", args.size)                       # (355, 1, s, s), (355,)
    start = time.perf_counter()
    folds = torch.arange(len(x)) % args.folds                      # deterministic, stratified enough
    correct = 0
    for k in range(args.folds):
        torch.manual_seed(args.seed + 1 + k)
        fit, val = folds != k, folds == k
        m = train_classifier(DigitClassifier(make_config()), x[fit], y[fit], steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed + 1 + k, progress=False)
        correct += accuracy(m, x[val], y[val]) * int(val.sum())
    torch.manual_seed(args.seed)
    model = train_classifier(DigitClassifier(make_config()), x, y, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, seed=args.seed, progress=args.progress)
    x_tr, y_tr = load_digits("train", args.size)
    info = dict(dataset=f"digits-heldout-{args.size}", steps=args.steps, seed=args.seed, task="classification",
                cv_folds=args.folds, cv_accuracy=round(correct / len(x), 4),
                train_split_accuracy=round(accuracy(model, x_tr, y_tr), 4), command=canonical_command(args))
    save_classifier(args.out, model, **info)
    return dict(info, seconds=time.perf_counter() - start)


def save_classifier(path, model: nn.Module, **info) -> None:
    """Save a classifier in the zoo's safetensors format (no noise schedule: it is not a denoiser) (book §2.3)."""
    import json

    from safetensors.torch import save_file

    from .models import config_of

    class_name, config = config_of(model)
    meta = dict(info, model_class=class_name, config=config, format=1,
                schedule=None, T=None, prediction_type=None)      # not a denoiser: no schedule, no target
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    make_readable(path)


def _diffusers_parser(sub) -> None:
    p = sub.add_parser("diffusers-digits", parents=[_common_options()],
                       help="diffusers' UNet2DModel on the train split of the digits, saved as a pipeline (book §3.7)")
    p.add_argument("--out", required=True, help="the pipeline folder to write with save_pretrained")
    p.add_argument("--size", type=int, default=8, help="image size: 8 (native) or 16 (bilinear)")
    _diffusion_options(p, steps=5000, batch_size=128)


def train_diffusers_digits(args: argparse.Namespace) -> dict:
    """Train a diffusers ``UNet2DModel`` with the course's loop and recipe, save it as a pipeline folder
    (book §3.7): the same data, steps, optimiser, EMA and seed as ``digits``; float32 weights."""
    from .data.digits import load_digits
    from .models.diffusers_unet import DiffusersDenoiser, build_unet, save_pipeline

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                   # model initialisation
    x0, _ = load_digits("train", args.size)                        # (1442, 1, size, size) in [-1, 1]
    model = DiffusersDenoiser(build_unet(sample_size=args.size))
    schedule = make_schedule(args.schedule, args.T)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         prediction_type=args.prediction_type, seed=args.seed, device=args.device,
                         progress=args.progress)
    result = train(model, x0, schedule, config)
    info = _digits_info(args, result)
    save_pipeline(args.out, result.ema_model().unet, schedule, prediction_type=args.prediction_type, **info)
    return dict(info, seconds=result.history.seconds)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m diffcourse.train`` parser with its toy, digits, classifier, diffusers-digits and dit-digits subcommands."""
    parser = argparse.ArgumentParser(prog="python -m diffcourse.train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _toy_parser(sub)
    _digits_parser(sub)
    _classifier_parser(sub)
    _diffusers_parser(sub)
    dit_digits.add_parser(sub, _common_options())                  # book §7.8
    toy_fm.add_parser(sub, _common_options())                      # book §7.4
    toy_cd.add_parser(sub, _common_options())                      # book §7.9
    from .latent.cli import add_latent_parsers
    add_latent_parsers(sub, [_common_options()])                   # book §4.2, §4.7: vae, latent-sd
    for command in CHAPTER_COMMANDS:                               # chapters 6-8: each module adds its own
        _chapter_module(command).add_parser(sub, _common_options())
    return parser


#: Subcommands of later chapters: command -> (module under ``diffcourse``, its training function). The module's
#: ``add_parser`` adds the subcommand (book §6.4-§6.5 controlnet, style-lora; §7.8-§7.9 dit-digits-ddpm,
#: cd-digits, lcm-sd; §8.5 video; §8.7 video-dit).
CHAPTER_COMMANDS = {"controlnet": ("control.train_controlnet", "train_cli"),
                    "style-lora": ("control.train_lora", "train_style_lora_cli"),
                    "dit-digits-ddpm": ("flow.dit_ddpm", "train_dit_digits_ddpm"),
                    "cd-digits": ("flow.distill_digits", "train_cd_digits"),
                    "lcm-sd": ("flow.lcm", "train_lcm_cli"),
                    "video": ("video.train_video", "train_video"),
                    "video-dit": ("video.train_video_dit", "train_video_dit")}


def _chapter_module(command: str):
    """The module behind a :data:`CHAPTER_COMMANDS` subcommand."""
    return importlib.import_module(f"{__package__}.{CHAPTER_COMMANDS[command][0]}")


def _trainer(command: str):
    """The training function of subcommand ``command``: ``args -> metadata dict``."""
    from .latent.cli import LATENT_COMMANDS

    if command in CHAPTER_COMMANDS:
        return getattr(_chapter_module(command), CHAPTER_COMMANDS[command][1])
    return {"toy": train_toy, "digits": train_digits, "classifier": train_classifier_cli,
            "diffusers-digits": train_diffusers_digits, "dit-digits": dit_digits.train_dit_digits,
            "toy-fm": toy_fm.train_toy_fm, "toy-cd": toy_cd.train_toy_cd, **LATENT_COMMANDS}[command]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    info = _trainer(args.command)(args)
    if not _is_main_process():   # accelerate launch: the other ranks trained alongside; rank 0 reports
        return 0
    if "cv_accuracy" in info:
        print(f"classifier: {info['cv_folds']}-fold CV accuracy {info['cv_accuracy']:.3f}, "
              f"accuracy on the unseen train split {info['train_split_accuracy']:.3f}")
    loss = f"final loss {info['final_loss']:.4f}, " if "final_loss" in info else ""
    size = (sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file()) if os.path.isdir(args.out)
            else os.path.getsize(args.out))                       # a pipeline folder (§3.7) or one file
    print(f"wrote {args.out}: {loss}{info['seconds']:.1f} s, {size / 1024:.0f} KiB")
    if args.update_manifest:
        entry = zoo.register(args.out, name=args.name, train_seconds=round(info["seconds"], 1))
        print(f"manifest {zoo.manifest_path(args.out)}: {entry['name']} sha256 {entry['sha256'][:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
