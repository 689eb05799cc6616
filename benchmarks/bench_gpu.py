"""GPU speed of the course's models: bf16 autocast vs float32, SDPA vs naive attention, torch.compile vs eager.

Run:  .venv/bin/python benchmarks/bench_gpu.py [--repeats 50] [--skip-compile]

Needs a CUDA GPU; on a machine without one it says so and exits with code 0 (nothing to measure).
``--cpu-smoke`` runs every measurement on the CPU at toy sizes, only to check that the script works.

Three tables, each a median over ``--repeats`` timed runs after warm-up (CUDA events, synchronised):

1. **Training step, float32 vs bf16 autocast** (book intro, "Running on a GPU"): forward, the simple loss
   (eq. 1.10), backward and an AdamW step, for the zoo's digits U-Net (8x8: too small to fill a GPU, so
   launch overhead dominates), a wider U-Net on 32x32 RGB, and a DiT (book §7.7) on 32x32 RGB. bf16 is
   ``diffcourse.device.autocast``, the one the training loop gets from ``accelerate`` (``mixed_precision="bf16"``).
2. **Attention, naive vs SDPA**: ``diffcourse.models.attention.attention`` (eq. 3.4, softmax(QK^T/sqrt d) V
   written out, the (L, L) weights in memory) against ``torch.nn.functional.scaled_dot_product_attention``
   (fused, flash or memory-efficient kernels), forward + backward, in float32 and bfloat16.
3. **torch.compile vs eager**: the wider U-Net's bf16 training step, compiled (``torch.compile``, default
   mode) against eager; compile time reported separately.

Prints the machine (GPU, CUDA, torch, CPU) with the tables. Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from diffcourse.device import autocast
from diffcourse.flow.dit import DiT, DiTConfig
from diffcourse.models import UNet, UNetConfig
from diffcourse.models.attention import attention
from machine import cpu_model                     # benchmarks/machine.py (the script's folder is on sys.path)


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def models(device: torch.device, smoke: bool) -> dict[str, tuple[torch.nn.Module, tuple[int, ...], int]]:
    """name -> (model, sample shape, batch size): the zoo's digits U-Net and two GPU-sized models."""
    torch.manual_seed(0)
    if smoke:
        return {"digits U-Net 8x8": (UNet(UNetConfig.tiny()), (1, 8, 8), 8)}
    wide = UNetConfig(in_channels=3, out_channels=3, sample_size=32, channels=(64, 128, 256), time_dim=128,
                      groups=32, heads=4)
    dit = DiTConfig(input_size=32, patch_size=2, in_channels=3, hidden_size=384, depth=6, num_heads=6,
                    num_classes=0, time_freq_dim=256)
    return {"digits U-Net 8x8 (zoo)": (UNet(UNetConfig.digits()), (1, 8, 8), 256),
            "U-Net 32x32x3 (64,128,256)": (UNet(wide), (3, 32, 32), 128),
            "DiT 32x32x3 D=384 x6": (DiT(dit), (3, 32, 32), 128)}


def train_step(model: torch.nn.Module, shape: tuple[int, ...], batch: int, device: torch.device, bf16: bool,
               step_model: torch.nn.Module | None = None) -> Callable[[], None]:
    """One optimiser step of the simple loss (eq. 1.10, epsilon target) on random data, as a closure."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(batch, *shape, device=device, generator=g)                # (B, C, H, W)
    eps = torch.randn(batch, *shape, device=device, generator=g)               # (B, C, H, W)
    t = torch.randint(0, 1000, (batch,), device=device, generator=g)           # (B,)
    x_t = 0.8 * x0 + 0.6 * eps                                                 # a fixed noise level is enough to time
    net = step_model if step_model is not None else model
    ctx = (lambda: autocast(device)) if bf16 else contextlib.nullcontext

    def step() -> None:
        with ctx():
            pred = net(x_t, t if isinstance(model, UNet) else t.float() / 1000)   # (B, C, H, W)
        loss = F.mse_loss(pred.float(), eps)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def table_precision(device, repeats, smoke) -> None:
    print("\n1. training step (forward, loss, backward, AdamW): float32 vs bf16 autocast, median ms")
    print(f"{'model':<30}{'params':>9}{'batch':>7}{'fp32':>9}{'bf16':>9}{'speed-up':>10}")
    for name, (model, shape, batch) in models(device, smoke).items():
        model = model.to(device).train()
        params = sum(p.numel() for p in model.parameters())
        fp32 = median_ms(train_step(model, shape, batch, device, False), device, repeats)
        bf16 = median_ms(train_step(model, shape, batch, device, True), device, repeats)
        print(f"{name:<30}{params / 1e6:>8.2f}M{batch:>7}{fp32:>9.2f}{bf16:>9.2f}{fp32 / bf16:>9.2f}x", flush=True)


def table_attention(device, repeats, smoke) -> None:
    print("\n2. attention forward + backward: naive (eq. 3.4 written out) vs SDPA, median ms")
    print(f"{'dtype':<10}{'B x heads x L x d':<22}{'naive':>9}{'SDPA':>9}{'speed-up':>10}{'max |diff|':>12}")
    shapes = [(2, 2, 64, 16)] if smoke else [(32, 8, 256, 64), (16, 8, 1024, 64), (4, 8, 4096, 64)]
    for dtype in (torch.float32, torch.bfloat16):
        for b, h, L, d in shapes:
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(b, h, L, d, device=device, dtype=dtype, generator=g).requires_grad_()
                       for _ in range(3))                                       # (B, heads, L, d) each

            def run(fn):
                def go():
                    out = fn(q, k, v)                                           # (B, heads, L, d)
                    out.sum().backward()
                return go
            diff = (attention(q, k, v) - F.scaled_dot_product_attention(q, k, v)).abs().max().item()
            naive = median_ms(run(attention), device, repeats)
            sdpa = median_ms(run(F.scaled_dot_product_attention), device, repeats)
            print(f"{str(dtype).split('.')[-1]:<10}{f'{b} x {h} x {L} x {d}':<22}{naive:>9.2f}{sdpa:>9.2f}"
                  f"{naive / sdpa:>9.2f}x{diff:>12.2e}", flush=True)


def table_compile(device, repeats, smoke) -> None:
    print("\n3. torch.compile vs eager: bf16 training step, median ms (compile time separate)")
    name, (model, shape, batch) = list(models(device, smoke).items())[-2 if not smoke else 0]
    model = model.to(device).train()
    eager = median_ms(train_step(model, shape, batch, device, True), device, repeats)
    compiled = torch.compile(model)
    step = train_step(model, shape, batch, device, True, step_model=compiled)
    t0 = time.perf_counter()
    step()                                                                      # compiles forward and backward
    if device.type == "cuda":
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    fast = median_ms(step, device, repeats)
    print(f"{'model':<30}{'eager':>9}{'compiled':>10}{'speed-up':>10}{'compile s':>11}")
    print(f"{name:<30}{eager:>9.2f}{fast:>10.2f}{eager / fast:>9.2f}x{compile_s:>11.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--skip-compile", action="store_true", help="leave out table 3 (torch.compile)")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU: checks the script only")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench_gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to measure. "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch.")
        return 0
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False                               # float32 means float32
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2 ** 30:.0f} GiB, CUDA {torch.version.cuda}, " \
              f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
    else:
        gpu = "none (--cpu-smoke: toy sizes on the CPU, the numbers mean nothing)"
        torch.set_num_threads(1)
    print(f"machine: GPU {gpu}; CPU {cpu_model()}; torch {torch.__version__}; Python {platform.python_version()}")
    table_precision(device, args.repeats, args.cpu_smoke)
    table_attention(device, args.repeats, args.cpu_smoke)
    if not args.skip_compile:
        table_compile(device, args.repeats, args.cpu_smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
