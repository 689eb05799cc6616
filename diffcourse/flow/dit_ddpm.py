"""Flow matching against DDPM with one network: the digits DiT trained both ways (book §7.8).

    python -m diffcourse.train dit-digits-ddpm --out zoo/digits_dit_ddpm.safetensors

The zoo's ``digits_dit_fm`` is a DiT trained with the flow-matching loss (eq. 7.3). This command trains
the *same* DiT -- same preset, patch size, initial weights (same seed), data, batch, steps, learning
rate, EMA and label dropout -- with the DDPM loss on the linear VP schedule instead (eq. 1.10, with the
v target of §1.5 by default). The only change to the network is ``time_scale = 1``: a DDPM model is called
with the integer timestep k in 0..T-1, which the DiT embeds as it embeds the flow model's 1000 t. Both then
run every sampler of their family at the same number of network calls (:func:`equal_nfe_digits`): Euler
and Heun on the flow model (eqs. 7.6-7.7), DDIM and DPM-Solver++(2M) on the DDPM one, so the only
difference left is the path and the solver (the question of §7.4, now with trained models).

Why v and not eps: trained with the eps target, the DiT learns its class poorly. At the U-Net's size and
step count it gives the requested digit in 61% of its samples (16 DDIM steps) against 96% with v and 98%
for Chapter 5's U-Net (book §7.8); at 1,800 steps the full-size DiT with eps sampled at chance (11.5%).
The likely reason: the eps target carries the clean image only through a factor that vanishes at high
noise, where the class is decided, while the v target, like the velocity, keeps the image in the target
at every t (book §1.5). Chapter 5's U-Net, with the class added in every residual block, copes with eps.
``--preset digits_small`` builds the DiT at the U-Net's size for the
equal-parameters comparison of §7.8.
"""
from __future__ import annotations

import argparse

import torch

from .dit import DiT, DiTConfig
from .samplers import guided_velocity, heun_nfe, sample_euler_fm, sample_heun_fm, time_grid
from .train_dit import DIT_PRESETS

__all__ = ["add_parser", "train_dit_digits_ddpm", "equal_nfe_digits", "FAMILY_SAMPLERS"]

FAMILY_SAMPLERS = {"fm_euler": "FM, Euler", "fm_heun": "FM, Heun", "ddpm_ddim": "DDPM, DDIM",
                   "ddpm_dpmpp": "DDPM, DPM-Solver++(2M)"}


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``dit-digits-ddpm`` subcommand's options, in the order of its recorded command (book §7.8).

    The defaults are those of the recorded ``digits_dit_fm`` command, so the two differ in the loss only.
    """
    p = sub.add_parser("dit-digits-ddpm", parents=[common],
                       help="the digits DiT trained with the DDPM loss instead of flow matching (book §7.8)")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--preset", default="digits", choices=sorted(DIT_PRESETS))
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--schedule", default="linear")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--prediction-type", default="v_prediction", choices=["epsilon", "sample", "v_prediction"])
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--p-uncond", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"])


def train_dit_digits_ddpm(args: argparse.Namespace) -> dict:
    """Train the digits DiT with the DDPM loss (book §7.8; §1.4, eq. 1.10, v target of §1.5); save its EMA weights."""
    from ..data.digits import load_digits
    from ..schedules import make_schedule
    from ..train import _digits_info, _store_half, labelled_batches
    from ..training import TrainConfig, save_checkpoint, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                               # the same initial weights as FM
    x0, y = load_digits("train", args.size)                                    # (1442, 1, s, s), (1442,)
    preset = DIT_PRESETS[args.preset]().to_dict()
    model = DiT(DiTConfig(**dict(preset, input_size=args.size, patch_size=args.patch_size,
                                 num_classes=args.num_classes, time_scale=1.0)))   # t is the timestep k
    schedule = make_schedule(args.schedule, args.T)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         prediction_type=args.prediction_type, seed=args.seed, device=args.device,
                         progress=args.progress)
    data = labelled_batches(x0, y, args.num_classes, args.p_uncond) if args.num_classes else x0
    kwargs = (lambda b: {"class_labels": b[1]}) if args.num_classes else None
    result = train(model, data, schedule, config, model_kwargs=kwargs)
    info = _digits_info(args, result)
    save_checkpoint(args.out, result.ema_model(), schedule=schedule, prediction_type=args.prediction_type, **info)
    if args.weights_dtype == "float16":
        _store_half(args.out)
    return dict(info, seconds=result.history.seconds)


@torch.no_grad()
def _family_sample(name: str, nfe: int, fm, ddpm, schedule, labels, noise, w: float, prediction_type: str):
    """(samples, calls per sample) of one sampler at a budget of ``nfe`` calls (w = 1: one call a step) (§7.8)."""
    from ..guidance.digits import guided_class_model
    from ..samplers import sample_ddim, sample_dpmpp_2m

    per_step = 1 if w == 1.0 else 2
    steps = nfe // per_step
    if name == "fm_heun":
        steps = (steps + 1) // 2
    if steps < 1:
        return None, 0
    if name.startswith("fm_"):
        v = guided_velocity(fm, labels, w, null_label=fm.config.num_classes)
        if name == "fm_euler":
            return sample_euler_fm(v, noise, time_grid(steps)), steps * per_step
        return sample_heun_fm(v, noise, time_grid(steps)), heun_nfe(time_grid(steps)) * per_step
    y = torch.as_tensor(labels).long()
    eps = ((lambda x, t: ddpm(x, t, class_labels=y)) if w == 1.0                       # noqa: E731
           else guided_class_model(ddpm, y, w, null_label=ddpm.config.num_classes))
    sampler = sample_ddim if name == "ddpm_ddim" else sample_dpmpp_2m
    return sampler(eps, noise, schedule, num_steps=steps, spacing="trailing",
                   prediction_type=prediction_type), steps * per_step


def equal_nfe_digits(judge, fm, ddpm, schedule, labels: torch.Tensor, noise: torch.Tensor,
                     nfes=(2, 4, 8, 16, 32), w: float = 1.0, prediction_type: str = "v_prediction",
                     samplers=tuple(FAMILY_SAMPLERS)) -> dict:
    """``{sampler: {nfe: (class agreement, digit FID, calls used) or None}}`` for the two DiTs (book §7.8).

    ``fm``: the flow DiT (``model(x, t in [0, 1], class_labels)``); ``ddpm``: the DDPM DiT on ``schedule``;
    ``judge(samples) -> (agreement, fid)``; all samplers start from the same ``noise`` (N, 1, 8, 8).
    With ``w`` != 1 every step costs two calls (eq. 7.17 / eq. 5.3).
    """
    out = {}
    for name in samplers:
        out[name] = {}
        for nfe in nfes:
            x, used = _family_sample(name, nfe, fm, ddpm, schedule, labels, noise, w, prediction_type)
            out[name][nfe] = None if x is None else (*judge(x), used)
    return out
