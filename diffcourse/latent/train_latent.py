"""Training the text encoder and the latent U-Net jointly, and saving the Stable Diffusion folder (book §4.7).

``python -m diffcourse.train latent-sd --vae zoo/shapes_vae --out zoo/shapes_sd`` runs :func:`train_latent_cli`:

1. render one-shape captioned images (plain style) and encode them once with the frozen VAE
   (mean and log-variance of q(z|x), eq. 4.2);
2. each batch draws z = s (mu + sigma eps) (eqs. 4.3, 4.6), and its captions' token ids, each caption
   replaced by the empty prompt with probability ``--p-uncond`` (caption dropout, for classifier-free
   guidance in chapter 5);
3. the course's loop (:func:`diffcourse.training.train`: accelerate, EMA, tqdm) minimises the latent
   diffusion loss of eq. 4.10 over the text encoder and the U-Net together, with the U-Net predicting
   v = sqrt(abar_t) eps - sqrt(1 - abar_t) z' (``--prediction-type v_prediction``, book §1.5) by default:
   at high noise an eps error barely costs anything while a v error is an error in the layout itself,
   and the layout (where the shape goes) is decided there;
4. the EMA weights go into a real ``StableDiffusionPipeline`` with the VAE and the tokenizer, saved with
   ``save_pretrained`` (float16 weights) by :func:`diffcourse.latent.pipeline.save_pipeline`, and the
   prompt adherence of the saved pipeline is measured (§4.9) and recorded in ``diffcourse.json``.
"""
from __future__ import annotations

import argparse
import time

import torch

__all__ = ["latent_dataset", "caption_batches", "add_latent_sd_parser", "train_latent_cli"]


@torch.no_grad()
def latent_dataset(vae, n: int, seed: int, max_shapes: int = 1, batch_size: int = 256):
    """Render n captioned shapes (plain) and encode them: (mean, logvar) (n, 4, 8, 8) each and the captions
    (book §4.7, eq. 4.2). The VAE is frozen: its posterior is computed once, sampled per batch."""
    from ..data.shapes import make_shapes
    from .vae import moments

    images, captions, _ = make_shapes(n, seed=seed, max_shapes=max_shapes)           # (n, 3, 32, 32)
    stats = [moments(vae, images[i:i + batch_size]) for i in range(0, n, batch_size)]
    return torch.cat([m for m, _ in stats]), torch.cat([lv for _, lv in stats]), captions


def caption_batches(mean, logvar, input_ids, empty_ids, scaling_factor: float, p_uncond: float):
    """A data source for :func:`diffcourse.training.train`: dicts ``x0`` = s z (B, 4, h, w) with z drawn from
    q(z|x) (eqs. 4.3, 4.6) and ``input_ids`` (B, L), each replaced by the empty prompt's ids with
    probability ``p_uncond`` (caption dropout, book §4.7)."""
    def draw(batch_size: int, generator: torch.Generator) -> dict:
        idx = torch.randint(len(mean), (batch_size,), generator=generator)
        eps = torch.randn(mean[idx].shape, generator=generator)
        z = mean[idx] + torch.exp(0.5 * logvar[idx]) * eps                     # (B, 4, h, w), eq. 4.3
        ids = input_ids[idx].clone()                                          # (B, L)
        drop = torch.rand(batch_size, generator=generator) < p_uncond
        ids[drop] = empty_ids
        return {"x0": z * scaling_factor, "input_ids": ids}
    return draw


def add_latent_sd_parser(sub, parents) -> None:
    """The ``latent-sd`` subcommand of ``python -m diffcourse.train`` (book §4.7)."""
    p = sub.add_parser("latent-sd", parents=parents,
                       help="text encoder + latent U-Net on the shapes, saved as a StableDiffusionPipeline (§4.7)")
    p.add_argument("--vae", required=True, help="the VAE folder written by `diffcourse.train vae`")
    p.add_argument("--out", required=True, help="the pipeline folder to write with save_pretrained")
    p.add_argument("--images", type=int, default=8192, help="one-shape training images")
    p.add_argument("--steps", type=int, default=3600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--p-uncond", type=float, default=0.1, help="caption dropout (classifier-free guidance, §5)")
    p.add_argument("--schedule", default="scaled_linear")
    p.add_argument("--prediction-type", default="v_prediction", choices=("epsilon", "v_prediction", "sample"),
                   help="what the U-Net predicts (§1.5): v puts weight on the layout at high noise (§4.7)")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=96, help="samples for the adherence figure (§4.9)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")


def train_latent_cli(args: argparse.Namespace) -> dict:
    """Train, assemble, save and measure the course's Stable Diffusion (book §4.7-§4.9); returns its metadata."""
    from ..schedules import make_schedule
    from ..train import canonical_command
    from ..training import TrainConfig, train
    from .adherence import measure_adherence
    from .pipeline import DEFAULTS, assemble_pipeline, load_pipeline, save_pipeline
    from .text_encoder import SHAPES_TEXT_ENCODER, build_text_encoder, prompt_ids
    from .tokenizer import build_tokenizer
    from .train_vae import load_vae, read_metadata
    from .unet import SHAPES_UNET, LatentTextDenoiser, build_unet

    torch.set_num_threads(args.threads)
    vae = load_vae(args.vae)
    s = float(vae.config.scaling_factor)
    tokenizer = build_tokenizer()
    mean, logvar, captions = latent_dataset(vae, args.images, seed=args.seed)
    ids = prompt_ids(tokenizer, captions)                                    # (n, L)
    empty = prompt_ids(tokenizer, [""])[0]                                    # (L,)
    torch.manual_seed(args.seed)                                             # initialisation
    model = LatentTextDenoiser(build_text_encoder(tokenizer), build_unet())
    schedule = make_schedule(args.schedule, args.T)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         warmup_steps=100, seed=args.seed, device="cpu", progress=args.progress,
                         prediction_type=args.prediction_type)
    data = caption_batches(mean, logvar, ids, empty, s, args.p_uncond)
    result = train(model, data, schedule, config, model_kwargs=lambda b: {"input_ids": b["input_ids"]})
    ema = result.ema_model()
    pipe = assemble_pipeline(vae, ema.text_encoder, tokenizer, ema.unet, schedule, args.prediction_type)
    smooth = result.history.smoothed(100)
    every = max(1, len(smooth) // 50)
    info = dict(model_class="StableDiffusionPipeline", dataset="shapes-32 one shape (plain)", steps=args.steps,
                seed=args.seed, command=canonical_command(args), schedule=schedule.name, T=schedule.T,
                prediction_type=args.prediction_type, weights="ema, float16", vae=read_metadata(args.vae)["command"],
                config=dict(unet={k: list(v) if isinstance(v, tuple) else v for k, v in SHAPES_UNET.items()},
                            text_encoder=dict(SHAPES_TEXT_ENCODER), scaling_factor=s),
                parameters_unet=sum(p.numel() for p in ema.unet.parameters()),
                parameters_text_encoder=sum(p.numel() for p in ema.text_encoder.parameters()),
                parameters_vae=sum(p.numel() for p in vae.parameters()),
                final_loss=round(result.history.final_loss(), 5), train_seconds=round(result.history.seconds, 1),
                loss_curve=[[i + 1, round(smooth[i], 5)] for i in range(every - 1, len(smooth), every)],
                defaults=dict(DEFAULTS))
    save_pipeline(args.out, pipe, **info)
    start = time.perf_counter()
    loaded = load_pipeline(args.out)
    scores = measure_adherence(loaded, args.eval_samples, seed=args.seed + 10)
    info["adherence"] = dict(scores, samples=args.eval_samples, seconds=round(time.perf_counter() - start, 1))
    info["adherence_by_guidance"] = [                                       # colour+position+shape, half the samples
        [w, measure_adherence(loaded, args.eval_samples // 2, seed=args.seed + 10, guidance_scale=w)
         ["colour+position+shape"]] for w in (1.0, 2.0, 7.5)]
    save_pipeline(args.out, pipe, **info)                                    # same weights, metadata with the score
    return dict(info, seconds=result.history.seconds)
