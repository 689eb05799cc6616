"""The course's Stable Diffusion on a CPU: seconds per image through the pipeline, and pixel vs latent cost (book §4.1, §4.8).

Run:  .venv/bin/python benchmarks/bench_latent.py [--repeats 7] [--threads 1]

1. ``StableDiffusionPipeline`` loaded offline from the zoo's ``shapes_sd`` (``diffcourse.latent.pipeline``),
   at the chapter's defaults (25 DDIM steps, guidance 4, so two U-Net evaluations per step), text to image,
   batch 1 and batch 8: median seconds per call and per image; the ratio of the per-image times says what
   batching buys. Beside it, the course's own loop (``diffcourse.latent.sample_latent``: the same parts and
   seed, the course's DDIM) at batch 8, and the ratio course / pipeline.
2. One U-Net call on latents (8x8x4) against the same ``UNet2DConditionModel`` config on pixels (32x32x3,
   freshly initialised: the weights do not change the time), same prompt tensor, batch 1 and 8: median
   milliseconds and the ratio pixel / latent (eq. 4.1 predicts at most 16x fewer positions to visit).

Runs of the two sides of every ratio are interleaved, so a busy machine slows both alike. Not a test:
numbers depend on the machine. Takes about a minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from machine import cpu_model                     # benchmarks/machine.py (the script's folder is on sys.path)

PROMPTS = ["a small red circle at the top left", "a large blue square in the center",
           "a large green triangle at the bottom right", "a small yellow diamond on the left",
           "a large magenta circle at the top", "a small cyan square at the bottom",
           "a large red diamond on the right", "a small blue triangle at the top right"]


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each ``fn()`` over ``repeats`` rounds, one call of each per round, after ``warmup``."""
    times = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import diffusers
    import transformers
    from diffusers import UNet2DConditionModel

    from diffcourse.latent.pipeline import DEFAULTS, generate, load_pipeline
    from diffcourse.latent.sample_latent import sample_latent

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()                          # no "Loading weights" bar
    diffusers.utils.logging.set_verbosity_error()
    pipe = load_pipeline()                                                    # zoo/shapes_sd, float32, offline
    unet = pipe.unet.eval()
    config = dict(unet.config)
    image = config["sample_size"] * pipe.vae_scale_factor                     # 32
    pixel_unet = UNet2DConditionModel.from_config(dict(config, in_channels=3, out_channels=3,
                                                       sample_size=image)).eval()

    calls = {b: (lambda b=b: generate(pipe, PROMPTS[:b], seed=0)) for b in (1, 8)}
    calls["course"] = lambda: sample_latent(pipe, PROMPTS, seed=0, sampler="ddim", **DEFAULTS)
    per_call = interleaved(calls, args.repeats)
    rows = [(f"pipeline, batch {b}", f"{per_call[b]:.3f}", f"{per_call[b] / b:.3f}") for b in (1, 8)]
    rows.append(("course's sample_latent (DDIM), batch 8", f"{per_call['course']:.3f}", f"{per_call['course'] / 8:.3f}"))

    gen = torch.Generator().manual_seed(0)
    step = {}
    for b in (1, 8):
        c = torch.randn(b, pipe.tokenizer.model_max_length, config["cross_attention_dim"], generator=gen)  # (B, L, d)
        t = torch.full((b,), 500)
        z = torch.randn(b, config["in_channels"], config["sample_size"], config["sample_size"], generator=gen)
        x = torch.randn(b, 3, image, image, generator=gen)                                # (B, 3, 32, 32)
        step[b] = interleaved({"latent": lambda: unet(z, t, encoder_hidden_states=c),
                               "pixel": lambda: pixel_unet(x, t, encoder_hidden_states=c)}, args.repeats * 3)

    print(f"Machine: {cpu_model()}, {torch.multiprocessing.cpu_count()} cores, {args.threads} torch thread(s); "
          f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"Python {platform.python_version()}")
    print(f"zoo/shapes_sd, {DEFAULTS['num_inference_steps']} DDIM steps, guidance {DEFAULTS['guidance_scale']}, "
          f"torch.no_grad, medians of interleaved runs ({args.repeats} per pipeline batch, {3 * args.repeats} per U-Net call)\n")
    print("| text to image | seconds per call | seconds per image |")
    print("|---|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a} | {b} |")
    print(f"\nper image, batch 1 / batch 8: {per_call[1] / (per_call[8] / 8):.2f}x; "
          f"course loop / pipeline at batch 8: {per_call['course'] / per_call[8]:.2f}x\n")
    print(f"| one U-Net call (denoiser step) | pixels {image}x{image}x3 (ms) | latents "
          f"{config['sample_size']}x{config['sample_size']}x{config['in_channels']} (ms) | ratio pixel / latent |")
    print("|---|---:|---:|---:|")
    for b in (1, 8):
        print(f"| batch {b} | {1e3 * step[b]['pixel']:.1f} | {1e3 * step[b]['latent']:.1f} | "
              f"{step[b]['pixel'] / step[b]['latent']:.2f} |")


if __name__ == "__main__":
    main()
