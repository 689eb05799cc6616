"""Consistency distillation of the digits DiT into a 1-4 step generator, and its few-step table (book §7.9).

    python -m diffcourse.train cd-digits --out zoo/digits_dit_cd.safetensors

The teacher is the zoo's flow-matching DiT ``digits_dit_fm`` *with classifier-free guidance folded in*
(the LCM recipe, eq. 7.20, written for a velocity: the teacher's Euler step of eq. 7.19 uses the guided
velocity v_w of eq. 7.17). The student is a copy of the teacher's network, called with a real class
only, trained with :func:`diffcourse.flow.consistency.cd_loss` (eq. 7.19) in the course's one training
loop; its consistency function is f(x, t) = x - t F(x, t, y) (eq. 7.18), so one call gives a guided
sample. :func:`few_step_table` sets it against every sampler of the course at the same number of
network calls: Euler and Heun on the teacher (eqs. 7.6-7.7), DDIM and DPM-Solver++(2M) on the
class-conditional digits U-Net of Chapter 5 (``digits_cond_unet``), judged by the digit classifier
(class agreement, digit FID of :mod:`diffcourse.metrics`).
"""
from __future__ import annotations

import argparse

import torch

from .consistency import cd_loss, sample_consistency
from .samplers import guided_velocity, heun_nfe, sample_euler_fm, sample_heun_fm, time_grid

__all__ = ["add_parser", "train_cd_digits", "consistency_times", "student_sampler", "few_step_samples",
           "few_step_table", "METHODS"]

NULL_LABEL = 10                     # the digits DiT's "no class" label (its config.num_classes)


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``cd-digits`` subcommand's options, in the order of its recorded command (book §7.9)."""
    p = sub.add_parser("cd-digits", parents=[common],
                       help="distil the zoo's digits DiT (with CFG) into a consistency model (book §7.9)")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--teacher", default="digits_dit_fm", help="zoo name of the dit-digits teacher")
    p.add_argument("--guidance", type=float, default=2.0, help="w of eq. 7.17 folded into the teacher")
    p.add_argument("--num-intervals", type=int, default=16, help="N: the teacher's Euler step is 1/N")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"])


def train_cd_digits(args: argparse.Namespace) -> dict:
    """Distil ``args.teacher`` with guidance ``args.guidance`` into a consistency DiT (book §7.9, eqs. 7.18-7.20).

    Batches are (x0, y) from the train split with real labels only (no label dropout: the student is
    always asked for a class). The teacher sees the batch's labels through the same ``model_kwargs``
    hook that gives them to the student.
    """
    import copy

    from .. import zoo
    from ..data.digits import load_digits
    from ..train import _store_half, canonical_command, labelled_batches
    from ..training import TrainConfig, save_checkpoint, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher = zoo.load(args.teacher, device="cpu").model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    x0, y = load_digits("train", teacher.config.input_size)                    # (1442, 1, 8, 8), (1442,)
    current = {}

    def model_kwargs(batch):                                                   # the batch's labels, for both nets
        current["y"] = batch[1]
        return {"class_labels": batch[1]}

    def loss_fn(model_fn, x0, generator):                                      # eq. 7.19 with the v_w of eq. 7.20
        v_teacher = guided_velocity(teacher.to(x0.device), current["y"], args.guidance, NULL_LABEL)
        return cd_loss(model_fn, v_teacher, x0, generator, args.num_intervals)

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         seed=args.seed, device=args.device, progress=args.progress)
    result = train(student, labelled_batches(x0, y, 10, 0.0), None, config, model_kwargs=model_kwargs,
                   loss_fn=loss_fn)
    info = dict(dataset=f"digits-train-{teacher.config.input_size}", steps=args.steps, seed=args.seed, weights="ema",
                teacher=args.teacher, guidance=args.guidance, num_intervals=args.num_intervals,
                final_loss=round(result.history.final_loss(), 6), command=canonical_command(args))
    save_checkpoint(args.out, result.ema_model(), schedule=None, prediction_type="consistency", **info)
    if args.weights_dtype == "float16":
        _store_half(args.out)
    return dict(info, seconds=result.history.seconds)


def consistency_times(num_steps: int) -> list[float]:
    """The multistep consistency grid of ``num_steps`` calls: 1, 1 - 1/n, ..., 1/n (book §7.9)."""
    return [1.0 - i / num_steps for i in range(num_steps)]


def student_sampler(student, labels: torch.Tensor):
    """``F(x, t)`` of the distilled DiT for class ``labels`` (N,), ready for :func:`sample_consistency` (§7.9)."""
    labels = torch.as_tensor(labels).long()
    return lambda x, t: student(x, t.to(x.dtype), class_labels=labels.to(x.device))     # noqa: E731


METHODS = {
    "cd": "consistency DiT (distilled, w = 2 folded in)",
    "euler": "teacher DiT, Euler (w = 1)",
    "heun": "teacher DiT, Heun (w = 1)",
    "euler_w2": "teacher DiT, Euler, w = 2 (2 calls a step)",
    "ddim": "digits U-Net (DDPM), DDIM (w = 1)",
    "dpmpp": "digits U-Net (DDPM), DPM-Solver++(2M) (w = 1)",
    "ddim_w2": "digits U-Net (DDPM), DDIM, w = 2 (2 calls a step)",
}


@torch.no_grad()
def few_step_samples(method: str, nfe: int, *, student, teacher, unet, schedule, labels: torch.Tensor,
                     noise: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor | None, int]:
    """(samples (N, 1, 8, 8), network calls used) of ``method`` (a key of :data:`METHODS`) at a budget of
    ``nfe`` calls per sample (book §7.9); (None, 0) where the budget buys no step (a guided sampler at 1).

    Every method starts from the same ``noise`` (N, 1, 8, 8). Heun uses the most steps that fit (2n - 1
    calls); the w = 2 samplers spend 2 calls a step, as eq. 7.17 does.
    """
    from ..guidance.digits import guided_class_model
    from ..samplers import sample_ddim, sample_dpmpp_2m

    if method == "cd":
        ts = consistency_times(nfe)
        return sample_consistency(student_sampler(student, labels), noise, ts, torch.Generator().manual_seed(seed)), nfe
    if method in ("euler", "heun", "euler_w2", "ddim_w2"):
        w = 2.0 if method.endswith("_w2") else 1.0
        steps = nfe // 2 if w != 1.0 else ((nfe + 1) // 2 if method == "heun" else nfe)
        if steps < 1:
            return None, 0
        if method == "ddim_w2":
            x = sample_ddim(guided_class_model(unet, labels, w), noise, schedule, num_steps=steps, spacing="trailing")
            return x, 2 * steps
        v = guided_velocity(teacher, labels, w, NULL_LABEL)
        if method == "heun":
            return sample_heun_fm(v, noise, time_grid(steps)), heun_nfe(time_grid(steps))
        return sample_euler_fm(v, noise, time_grid(steps)), steps * (2 if w != 1.0 else 1)
    if method in ("ddim", "dpmpp"):
        y = torch.as_tensor(labels).long()
        eps = lambda x, t: unet(x, t, class_labels=y.to(x.device))                    # noqa: E731  w = 1: one call
        sampler = sample_ddim if method == "ddim" else sample_dpmpp_2m
        return sampler(eps, noise, schedule, num_steps=nfe, spacing="trailing"), nfe
    raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")


def few_step_table(judge, nfes=(1, 2, 4), methods=tuple(METHODS), **models) -> dict:
    """``{method: {nfe: (class agreement, digit FID, calls used) or None}}`` (book §7.9).

    ``judge(samples) -> (agreement, fid)``; ``models``: the keyword arguments of :func:`few_step_samples`.
    """
    out = {}
    for method in methods:
        out[method] = {}
        for nfe in nfes:
            x, used = few_step_samples(method, nfe, **models)
            out[method][nfe] = None if x is None else (*judge(x), used)
    return out
