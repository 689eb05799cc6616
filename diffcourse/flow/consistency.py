"""Consistency distillation of a flow model into a few-step generator (book §7.9, eqs. 7.18-7.19).

A consistency function maps any point of an ODE trajectory to the trajectory's end at t = 0. On the
flow-matching path it is parametrised so that the boundary condition f(x, 0) = x holds by
construction (eq. 7.18 with c_skip = 1, c_out = -t)::

    f_theta(x, t) = x - t F_theta(x, t)                                               (eq. 7.18)

so F_theta plays the role of a velocity, and a student initialised from the teacher starts as the
teacher's one-step Euler jump x - t v(x, t). Distillation (eq. 7.19) takes x_{t_{n+1}} on the path of
eq. 7.1, makes one Euler step of the *teacher's* ODE to t_n, and pulls the student's two answers
together::

    x_hat = x_{t_{n+1}} + (t_n - t_{n+1}) v_teacher(x_{t_{n+1}}, t_{n+1})
    L_CD  = E || f_theta(x_{t_{n+1}}, t_{n+1}) - stopgrad f_theta(x_hat, t_n) ||^2        (eq. 7.19)

The target uses the current weights under stop-gradient (as in improved consistency training, Song &
Dhariwal 2023) rather than a separate EMA copy, so the course's one training loop runs it unchanged
through its ``loss_fn`` hook. Sampling (:func:`sample_consistency`) jumps to x0 from t = 1, then
re-noises to each smaller t of its grid with fresh noise and jumps again.

    python -m diffcourse.train toy-cd --dataset eight_gaussians --out zoo/toy_eight_gaussians_cd.safetensors
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from .path import interpolate

__all__ = ["consistency_fn", "cd_loss", "sample_consistency", "add_parser", "train_toy_cd"]

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def consistency_fn(F: Velocity) -> Velocity:
    """f(x, t) = x - t F(x, t): the consistency function of eq. 7.18, with f(x, 0) = x built in (book §7.9).

    ``F(x, t)``: x (N, D...), t (N,) in [0, 1]; returns x's shape.
    """
    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x - t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) * F(x, t)             # (N, ...)
    return f


def cd_loss(F: Velocity, teacher: Velocity, x0: torch.Tensor, generator: torch.Generator | None = None,
            num_intervals: int = 16) -> torch.Tensor:
    """One Monte-Carlo estimate of the consistency-distillation loss (book §7.9, eq. 7.19).

    Draws, in this order from ``generator``: the interval n uniform in 0..num_intervals-1 on the uniform
    grid t_n = n / num_intervals, then eps ~ N(0, I). ``F`` is the student (through :func:`consistency_fn`),
    ``teacher(x, t)`` the flow model's velocity. Returns a float32 scalar.
    """
    device = generator.device if generator is not None else x0.device
    n = torch.randint(num_intervals, (len(x0),), generator=generator, device=device).to(x0.device)   # (N,)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device).to(x0.device)   # (N, ...)
    t_lo = n.to(x0.dtype) / num_intervals                                                   # (N,) t_n
    t_hi = (n + 1).to(x0.dtype) / num_intervals                                             # (N,) t_{n+1}
    x_hi = interpolate(x0, eps, t_hi)                                                       # (N, ...) eq. 7.1
    f = consistency_fn(F)
    with torch.no_grad():
        h = (t_lo - t_hi).reshape(-1, *([1] * (x0.ndim - 1)))
        x_lo = x_hi + h * teacher(x_hi, t_hi)                                               # one teacher Euler step
        target = f(x_lo, t_lo)                                                              # stop-gradient
    return torch.mean((f(x_hi, t_hi).float() - target.float()) ** 2)                        # eq. 7.19


@torch.no_grad()
def sample_consistency(F: Velocity, x_1: torch.Tensor, ts, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multistep consistency sampling (book §7.9): x0 = f(x_1, t_0); then for each later t_i > 0 of ``ts``,
    x = (1 - t_i) x0 + t_i eps (fresh noise from ``generator``) and x0 = f(x, t_i). NFE = number of t_i > 0.

    ``x_1``: (N, ...) noise; ``ts``: descending times starting at 1 (e.g. ``[1.0]``, ``[1.0, 0.5]``).
    """
    f = consistency_fn(F)
    times = [float(t) for t in ts if float(t) > 0]
    x0 = f(x_1, torch.full((len(x_1),), times[0], dtype=x_1.dtype))                         # (N, ...)
    for t in times[1:]:
        eps = torch.randn(x_1.shape, generator=generator, dtype=x_1.dtype)                  # (N, ...)
        x = (1 - t) * x0 + t * eps
        x0 = f(x, torch.full((len(x_1),), t, dtype=x_1.dtype))
    return x0


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``toy-cd`` subcommand's options, in the order of its recorded command (book §7.9)."""
    p = sub.add_parser("toy-cd", parents=[common],
                       help="distil a zoo toy flow model into a consistency model (book §7.9)")
    p.add_argument("--dataset", required=True, help="the toy the teacher was trained on")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    p.add_argument("--teacher", default="toy_eight_gaussians_fm", help="zoo name of the toy-fm teacher")
    p.add_argument("--num-intervals", type=int, default=16)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"])


def train_toy_cd(args: argparse.Namespace) -> dict:
    """Distil the zoo's toy flow model ``args.teacher`` into a consistency model (book §7.9, eq. 7.19).

    The student is a copy of the teacher (same ToyMLP, same 1000 t input), trained with :func:`cd_loss`.
    """
    import copy

    from .. import zoo
    from ..data.toys import sample_toy
    from ..train import _store_half, canonical_command
    from ..training import TrainConfig, save_checkpoint, train
    from .train_toy import TIME_SCALE

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher = zoo.load(args.teacher, device="cpu").model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    v_teacher = lambda x, t: teacher.to(x.device)(x, t * TIME_SCALE)                        # noqa: E731
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         seed=args.seed, device=args.device, progress=args.progress)

    def loss_fn(model_fn, x0, generator):                                                  # eq. 7.19
        return cd_loss(lambda x, t: model_fn(x, t * TIME_SCALE), v_teacher, x0, generator, args.num_intervals)

    result = train(student, lambda n, g: sample_toy(args.dataset, n, g), None, config, loss_fn=loss_fn)
    info = dict(dataset=args.dataset, steps=args.steps, seed=args.seed, weights="ema", time_scale=TIME_SCALE,
                teacher=args.teacher, final_loss=round(result.history.final_loss(), 6), command=canonical_command(args))
    save_checkpoint(args.out, result.ema_model(), schedule=None, prediction_type="consistency", **info)
    if args.weights_dtype == "float16":
        _store_half(args.out)
    return dict(info, seconds=result.history.seconds)
