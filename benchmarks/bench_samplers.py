"""Wall time of a full sampling loop: diffcourse's samplers vs the matching diffusers scheduler loop (book §2.2-2.5).

Run:  .venv/bin/python benchmarks/bench_samplers.py [--steps 50] [--repeats 25] [--batch 8,3,32,32]

Both loops use the same trivial model (so the loop itself is what is timed), start from the same x_T, and
include building the grid (diffusers: ``set_timesteps``; diffcourse: the per-grid coefficients). diffusers'
loop is the standard ``scale_model_input`` + model + ``step``. Runs are interleaved and repeated; the table
gives medians in milliseconds and the ratio diffcourse / diffusers (below 1.0: diffcourse is faster).
Not a test: numbers depend on the machine. Takes well under a minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)

from diffcourse.samplers import sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_euler, sample_euler_ancestral
from diffcourse.schedules import make_schedule
from machine import cpu_model                     # benchmarks/machine.py (the script's folder is on sys.path)


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Trivial stand-in for a network: (N, ...), (N,) -> (N, ...)."""
    return 0.9 * x


def diffusers_loop(scheduler, x: torch.Tensor, steps: int, generator=None, **step_kwargs) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        out = model(x_in, t.expand(len(x)))
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x


CASES = {
    # name: (diffcourse call, diffusers scheduler factory, step kwargs)
    "DDPM": (lambda s, x, n, g: sample_ddpm(model, x, s, num_steps=n, generator=g),
             lambda: DDPMScheduler(clip_sample=False), {}),
    "DDIM (eta=0)": (lambda s, x, n, g: sample_ddim(model, x, s, num_steps=n, generator=g),
                     lambda: DDIMScheduler(clip_sample=False), {"eta": 0.0}),
    "DDIM (eta=1)": (lambda s, x, n, g: sample_ddim(model, x, s, num_steps=n, eta=1.0, generator=g),
                     lambda: DDIMScheduler(clip_sample=False), {"eta": 1.0}),
    "DPM-Solver++(2M)": (lambda s, x, n, g: sample_dpmpp_2m(model, x, s, num_steps=n, generator=g),
                         lambda: DPMSolverMultistepScheduler(), {}),
    "Euler": (lambda s, x, n, g: sample_euler(model, x, s, num_steps=n, generator=g),
              lambda: EulerDiscreteScheduler(), {}),
    "Euler ancestral": (lambda s, x, n, g: sample_euler_ancestral(model, x, s, num_steps=n, generator=g),
                        lambda: EulerAncestralDiscreteScheduler(), {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--batch", type=str, default="8,3,32,32")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier numbers on a shared CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.batch.split(","))
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    rows = []
    for name, (ours, make_ref, step_kw) in CASES.items():
        ref_sched = make_ref()
        times = {"diffcourse": [], "diffusers": []}
        for r in range(args.repeats + 2):                       # 2 warm-up rounds, then interleaved timings
            for who in ("diffcourse", "diffusers"):
                g = torch.Generator().manual_seed(r)
                t0 = time.perf_counter()
                out = (ours(schedule, x_T, args.steps, g) if who == "diffcourse"
                       else diffusers_loop(ref_sched, x_T, args.steps, g, **step_kw))
                dt = time.perf_counter() - t0
                if r >= 2:
                    times[who].append(dt * 1e3)
                assert torch.isfinite(out).all(), f"{name} ({who}) produced non-finite values"
        a, b = statistics.median(times["diffcourse"]), statistics.median(times["diffusers"])
        rows.append((name, a, b, a / b))

    import diffusers
    print(f"Machine: {cpu_model()}, {torch.get_num_threads()} torch thread(s) of {torch.multiprocessing.cpu_count()} "
          f"cores; torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}")
    print(f"{args.steps} steps, batch {shape}, trivial model, median of {args.repeats} runs\n")
    print("| sampler | diffcourse (ms) | diffusers (ms) | ratio diffcourse/diffusers |")
    print("|---|---:|---:|---:|")
    for name, a, b, ratio in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
