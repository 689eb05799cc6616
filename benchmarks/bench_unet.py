"""Size and CPU forward time: the course's digits U-Net vs diffusers' UNet2DModel of comparable size (book §3.7).

Run:  .venv/bin/python benchmarks/bench_unet.py [--repeats 25] [--batches 64,1]

The two models are the course's ``UNet(UNetConfig.digits())`` (``zoo/digits_unet``) and the ``UNet2DModel`` of
:mod:`diffcourse.models.diffusers_unet` (``zoo/digits_diffusers``), both freshly initialised (the weights do not
change the time), in eval mode, under ``torch.no_grad``, on 8x8x1 inputs with random timesteps. For each batch
size and each thread count (one thread, then torch's default), runs of the two models are interleaved and
repeated, and the table gives medians in milliseconds and the ratio course / diffusers (below 1.0: the
course's U-Net is faster). Not a test: numbers depend on the machine. Takes well under a minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from diffcourse.models import UNet, UNetConfig
from diffcourse.models.diffusers_unet import DiffusersDenoiser, build_unet, count_parameters
from machine import cpu_model                     # benchmarks/machine.py (the script's folder is on sys.path)


@torch.no_grad()
def forward_times(models: dict, batch: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median forward time (ms) of each model on the same (batch, 1, 8, 8) input, runs interleaved."""
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 1, 8, 8, generator=gen)                              # (B, 1, 8, 8)
    t = torch.randint(0, 1000, (batch,), generator=gen)                         # (B,)
    times = {name: [] for name in models}
    for r in range(warmup + repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            out = model(x, t)
            dt = time.perf_counter() - t0
            assert out.shape == x.shape and torch.isfinite(out).all(), f"{name}: bad output"
            if r >= warmup:
                times[name].append(dt * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--batches", type=str, default="64,1")
    args = p.parse_args()
    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    models = {"course": UNet(UNetConfig.digits()).eval(), "diffusers": DiffusersDenoiser(build_unet()).eval()}
    params = {name: count_parameters(m) for name, m in models.items()}

    rows = [("parameters", f"{params['course']:,}", f"{params['diffusers']:,}",
             params["course"] / params["diffusers"])]
    for batch in (int(b) for b in args.batches.split(",")):
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            ms = forward_times(models, batch, args.repeats)
            rows.append((f"forward, batch {batch}, {threads} thread{'s' if threads > 1 else ''} (ms)",
                         f"{ms['course']:.2f}", f"{ms['diffusers']:.2f}", ms["course"] / ms["diffusers"]))
    torch.set_num_threads(default_threads)

    import diffusers
    print(f"Machine: {cpu_model()}, {torch.multiprocessing.cpu_count()} cores (default {default_threads} torch "
          f"threads); torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}")
    print(f"8x8x1 inputs, torch.no_grad, eval mode, median of {args.repeats} interleaved runs\n")
    print("| | course U-Net | diffusers UNet2DModel | ratio course/diffusers |")
    print("|---|---:|---:|---:|")
    for name, a, b, ratio in rows:
        print(f"| {name} | {a} | {b} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
