"""Latent consistency distillation (LCM) of chapter 4's Stable Diffusion, run by diffusers' ``LCMScheduler`` (book §7.9).

    python -m diffcourse.train lcm-sd --pipeline zoo/shapes_sd --out zoo/shapes_lcm

The teacher is the zoo's ``shapes_sd`` U-Net with classifier-free guidance folded in (eq. 7.20): its step
Phi is one DDIM step from t_{n+k} to t_n with the guided prediction v_w = v(empty) + w (v(y) - v(empty)),
two calls of the teacher. The student is a copy of the teacher's U-Net (the text encoder stays frozen and
shared), asked for the caption only, so one call is a guided sample. Its consistency function is the one
``LCMScheduler`` applies (eq. 7.18 in the DDPM parametrisation):

    f(z, t) = c_skip(t) z + c_out(t) x0_hat(z, t),   c_skip = sd^2 / ((10 t)^2 + sd^2),
                                                     c_out = 10 t / sqrt((10 t)^2 + sd^2),  sd = 0.5

with x0_hat read off the U-Net's v-prediction (book §1.5). Eq. 7.19 makes f agree at both ends of each
teacher step, the target computed under stop-gradient by theta^-, an EMA of the student (decay 0.95, as in
LCM; ``--target-decay 0`` uses the current weights, as the course's toy and digits distillations do). The
teacher's grid is LCM's: ``original_steps`` = 50 steps of k = 20
timesteps, t_n = 20 n - 1.

:func:`lcm_pipeline` puts the student into a real ``StableDiffusionPipeline`` with ``LCMScheduler``;
:func:`sample_lcm` is the course's own few-step loop, equal to that pipeline's latents on the same seed.
"""
from __future__ import annotations

import argparse
import copy

import torch

__all__ = ["SIGMA_DATA", "TIMESTEP_SCALING", "teacher_grid", "lcm_timesteps", "boundary_scalings", "x0_eps_from",
           "consistency_x0", "guided_prediction", "ddim_step", "lcm_loss", "add_parser", "train_lcm_cli",
           "load_lcm_unet", "lcm_pipeline", "sample_lcm"]

SIGMA_DATA = 0.5            # sd in c_skip / c_out (LCMScheduler's default)
TIMESTEP_SCALING = 10.0     # LCMScheduler's ``timestep_scaling``: c_skip(t) falls to ~0 by t = 19


def teacher_grid(T: int = 1000, original_steps: int = 50) -> torch.Tensor:
    """LCM's skipping grid t_n = n k - 1, n = 1..original_steps, k = T / original_steps (book §7.9, eq. 7.20):
    (original_steps,) long, ascending (19, 39, ..., 999 for T = 1000, 50 steps)."""
    k = T // original_steps
    return torch.arange(1, original_steps + 1) * k - 1


def lcm_timesteps(num_steps: int, T: int = 1000, original_steps: int = 50) -> list[int]:
    """The timesteps ``LCMScheduler.set_timesteps(num_steps)`` picks from :func:`teacher_grid`, descending
    (book §7.9): evenly spaced indices into the reversed grid; 1 -> [999], 2 -> [999, 499], 4 -> [999, 759, 499, 259]."""
    grid = teacher_grid(T, original_steps).flip(0)                                   # (S,) descending
    index = torch.floor(torch.arange(num_steps) * (len(grid) / num_steps)).long()   # linspace(0, S, n, endpoint=False)
    return grid[index].tolist()


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip(t), c_out(t)) of eq. 7.18 as ``LCMScheduler`` computes them (book §7.9); t (N,) integer
    timesteps. c_skip(0) = 1, c_out(0) = 0: f(z, 0) = z."""
    scaled = t.double() * TIMESTEP_SCALING
    c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
    c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2) ** 0.5
    return c_skip.float(), c_out.float()


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))        # (N, 1, 1, 1)


def x0_eps_from(pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
                prediction_type: str = "v_prediction") -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a network output at (z_t, t) (book §1.5, eqs. 1.11-1.13); all (N, C, h, w).

    ``alpha_bar``: (T,) of the schedule; ``t`` (N,) integer timesteps.
    """
    ab = _col(alpha_bar[t.long().cpu()], z_t)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    if prediction_type == "v_prediction":
        return a * z_t - b * pred, b * z_t + a * pred
    if prediction_type == "epsilon":
        return (z_t - b * pred) / a, pred
    if prediction_type == "sample":
        return pred, (z_t - a * pred) / b
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


def consistency_x0(model_fn, z_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
                   prediction_type: str = "v_prediction") -> torch.Tensor:
    """f(z_t, t) = c_skip(t) z_t + c_out(t) x0_hat (book §7.9, eq. 7.18 as LCMScheduler writes it): (N, C, h, w).

    ``model_fn(z_t, t)``: the U-Net's prediction (N, C, h, w) for integer timesteps t (N,).
    """
    x0, _ = x0_eps_from(model_fn(z_t, t), z_t, t, alpha_bar, prediction_type)
    c_skip, c_out = boundary_scalings(t)
    return _col(c_skip, z_t) * z_t + _col(c_out, z_t) * x0


def guided_prediction(teacher, input_ids: torch.Tensor, empty_ids: torch.Tensor, w: float):
    """``pred(z_t, t)`` = p(empty) + w (p(y) - p(empty)) (book §5.2, eq. 5.3; §7.9, eq. 7.20), both branches in
    one batched call of ``teacher(z, t, input_ids)`` (a :class:`~diffcourse.latent.unet.LatentTextDenoiser`)."""
    def pred(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ids = torch.cat([input_ids, empty_ids.expand_as(input_ids)])                   # (2N, L)
        both = teacher(torch.cat([z_t, z_t]), torch.cat([t, t]), ids.to(z_t.device))  # (2N, C, h, w)
        cond, uncond = both.chunk(2)
        return uncond + w * (cond - uncond)
    return pred


def ddim_step(pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, alpha_bar: torch.Tensor,
              prediction_type: str = "v_prediction") -> torch.Tensor:
    """Phi of eq. 7.20: one deterministic DDIM step (book §2.3, eq. 2.2 with eta = 0) from t to s < t, given the
    network's (guided) prediction ``pred`` at (z_t, t): z_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps_hat."""
    x0, eps = x0_eps_from(pred, z_t, t, alpha_bar, prediction_type)
    ab_s = _col(alpha_bar[s.long().cpu()], z_t)
    return ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps


def lcm_loss(student_fn, teacher_fn, z0: torch.Tensor, alpha_bar: torch.Tensor, generator: torch.Generator | None = None,
             original_steps: int = 50, prediction_type: str = "v_prediction", target_fn=None) -> torch.Tensor:
    """One Monte-Carlo estimate of the consistency-distillation loss on the LCM grid (book §7.9, eqs. 7.19-7.20).

    Draws, in this order from ``generator``: the grid index n (N,), then eps ~ N(0, I). z_t is the forward
    process at t = t_n (eq. 1.2); the teacher's guided DDIM step goes to s = t - k (0 below the grid); the
    student's f at (z_t, t) is pulled to f_{theta^-} at (z_s, s) under stop-gradient, where ``target_fn`` is
    theta^- (an EMA of the student, as LCM has it; None: the student's current weights). Returns a float32
    scalar. ``student_fn``, ``teacher_fn``, ``target_fn``: (z, t) -> prediction; z0 (N, C, h, w) scaled latents.
    """
    T = len(alpha_bar)
    grid = teacher_grid(T, original_steps)
    k = T // original_steps
    device = generator.device if generator is not None else torch.device("cpu")
    n = torch.randint(len(grid), (len(z0),), generator=generator, device=device).cpu()       # (N,)
    eps = torch.randn(z0.shape, generator=generator, device=device).to(z0.device, z0.dtype)   # (N, C, h, w)
    t = grid[n].to(z0.device)                                                                 # (N,) t_{n+k}
    s = (t - k).clamp(min=0)                                                                  # (N,) t_n
    ab_t = _col(alpha_bar[t.cpu()], z0)
    z_t = ab_t.sqrt() * z0 + (1 - ab_t).sqrt() * eps                                          # eq. 1.2
    with torch.no_grad():
        z_s = ddim_step(teacher_fn(z_t, t), z_t, t, s, alpha_bar, prediction_type)            # Phi, eq. 7.20
        target = consistency_x0(target_fn or student_fn, z_s, s, alpha_bar, prediction_type)  # stop-gradient
    f = consistency_x0(student_fn, z_t, t, alpha_bar, prediction_type)
    return torch.mean((f.float() - target.float()) ** 2)                                      # eq. 7.19


# ----------------------------------------------------------------------------- the command

def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``lcm-sd`` subcommand's options, in the order of its recorded command (book §7.9)."""
    p = sub.add_parser("lcm-sd", parents=[common],
                       help="distil chapter 4's Stable Diffusion (with CFG) into an LCM U-Net (book §7.9)")
    p.add_argument("--pipeline", default="zoo/shapes_sd", help="the teacher's StableDiffusionPipeline folder")
    p.add_argument("--out", required=True, help="the folder to write the student U-Net to (save_pretrained)")
    p.add_argument("--guidance", type=float, default=2.0, help="w of eq. 5.3 folded into the teacher (eq. 7.20)")
    p.add_argument("--original-steps", type=int, default=50, help="the teacher's grid: k = T / original-steps")
    p.add_argument("--images", type=int, default=4096, help="one-shape training images (captions for the student)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema-decay", type=float, default=0.99, help="EMA of the weights that are saved")
    p.add_argument("--target-decay", type=float, default=0.95,
                   help="theta^- of eq. 7.19: an EMA of the student with this decay (0: its current weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=96, help="samples for the adherence figures")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")


def train_lcm_cli(args: argparse.Namespace) -> dict:
    """Distil ``args.pipeline`` into an LCM U-Net, save it with its metadata, measure it (book §7.9)."""
    from ..latent.adherence import measure_adherence
    from ..latent.pipeline import load_pipeline
    from ..latent.text_encoder import prompt_ids
    from ..latent.train_latent import caption_batches, latent_dataset
    from ..latent.unet import LatentTextDenoiser
    from ..train import canonical_command
    from ..training import TrainConfig, train

    torch.set_num_threads(args.threads)
    base = load_pipeline(args.pipeline)
    prediction_type = base.scheduler.config.prediction_type
    alpha_bar = base.scheduler.alphas_cumprod.float()                              # (T,)
    s = float(base.vae.config.scaling_factor)
    mean, logvar, captions = latent_dataset(base.vae, args.images, seed=args.seed + 1)   # not the teacher's images
    ids = prompt_ids(base.tokenizer, captions)                                     # (n, L)
    empty = prompt_ids(base.tokenizer, [""])[0]                                    # (L,)
    for part in (base.text_encoder, base.unet, base.vae):
        part.requires_grad_(False)
    teacher = LatentTextDenoiser(base.text_encoder, base.unet).eval()
    torch.manual_seed(args.seed)
    student = LatentTextDenoiser(base.text_encoder, copy.deepcopy(base.unet))
    student.unet.requires_grad_(True)
    target = LatentTextDenoiser(base.text_encoder, copy.deepcopy(base.unet)).eval()   # theta^- of eq. 7.19
    current = {}

    def model_kwargs(batch):                                                       # the batch's captions, all nets
        current["ids"] = batch["input_ids"]
        return {"input_ids": batch["input_ids"]}

    def loss_fn(model_fn, z0, generator):                                          # eqs. 7.19-7.20
        with torch.no_grad():                                                      # theta^- <- EMA of the last step's theta
            for p_target, p in zip(target.unet.parameters(), student.unet.parameters()):
                p_target.lerp_(p.detach(), 1 - args.target_decay)
        teacher_fn = guided_prediction(teacher, current["ids"], empty, args.guidance)
        target_fn = lambda z, t: target(z, t, current["ids"])                     # noqa: E731
        return lcm_loss(model_fn, teacher_fn, z0, alpha_bar, generator, args.original_steps, prediction_type,
                        target_fn=target_fn if args.target_decay > 0 else None)

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         seed=args.seed, device="cpu", progress=args.progress)
    data = caption_batches(mean, logvar, ids, empty, s, p_uncond=0.0)             # the student always gets the caption
    result = train(student, data, None, config, model_kwargs=model_kwargs, loss_fn=loss_fn)
    unet = result.ema_model().unet.eval()
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in unet.config.items()
              if k in ("sample_size", "block_out_channels", "cross_attention_dim", "layers_per_block")}
    info = dict(model_class="UNet2DConditionModel", kind="lcm", teacher=args.pipeline, guidance=args.guidance,
                config=config, schedule=base.scheduler.config.beta_schedule, T=len(alpha_bar),
                original_steps=args.original_steps, prediction_type=prediction_type, steps=args.steps,
                seed=args.seed, weights="ema, float16", dataset="shapes-32 one shape (plain)",
                final_loss=round(result.history.final_loss(), 6), train_seconds=round(result.history.seconds, 1),
                command=canonical_command(args))
    _save_unet(args.out, unet, info)
    pipe = lcm_pipeline(base, load_lcm_unet(args.out))
    info["adherence_by_steps"] = {n: measure_adherence(pipe, args.eval_samples, seed=args.seed + 10,
                                                       num_inference_steps=n, guidance_scale=1.0)
                                  for n in (1, 2, 4)}
    _save_unet(args.out, unet, info)                                               # same weights, with the scores
    return dict(info, seconds=result.history.seconds)


def _save_unet(folder, unet, info: dict) -> None:
    from pathlib import Path

    from ..latent.zoo_folders import write_metadata

    folder = Path(folder)
    copy.deepcopy(unet).half().save_pretrained(str(folder), safe_serialization=True)   # float16 on disk
    write_metadata(folder, info)


def load_lcm_unet(folder=None, device="cpu"):
    """The distilled U-Net (float32, eval) from ``folder`` (default: the zoo's verified ``shapes_lcm``) (book §7.9)."""
    from diffusers import UNet2DConditionModel

    if folder is None:
        from .. import zoo

        folder = zoo.verify("shapes_lcm")
    return UNet2DConditionModel.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).to(device).eval()


def lcm_pipeline(base, unet, original_steps: int = 50):
    """diffusers' ``StableDiffusionPipeline`` on ``base``'s VAE, text encoder and tokenizer with the LCM ``unet`` and
    ``LCMScheduler`` (book §7.9). Call it with ``guidance_scale=1.0``: guidance is folded in, one call a step."""
    from diffusers import LCMScheduler, StableDiffusionPipeline

    scheduler = LCMScheduler.from_config(base.scheduler.config, original_inference_steps=original_steps,
                                         timestep_scaling=TIMESTEP_SCALING)
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_lcm(model_fn, z_T: torch.Tensor, alpha_bar: torch.Tensor, num_steps: int, generator: torch.Generator | None = None,
               original_steps: int = 50, prediction_type: str = "v_prediction") -> torch.Tensor:
    """The course's multistep LCM sampler (book §7.9): x0 = f(z, t_i) on :func:`lcm_timesteps`, then re-noise to the
    next t with fresh noise from ``generator`` (eq. 1.2); returns the last f. ``z_T`` (N, C, h, w) noise;
    ``model_fn(z, t)`` the student's prediction. Equal to ``LCMScheduler`` in :func:`lcm_pipeline` on the same seed.
    """
    ts = lcm_timesteps(num_steps, len(alpha_bar), original_steps)
    z = z_T
    for i, t in enumerate(ts):
        tt = torch.full((len(z),), t, dtype=torch.long)
        x0 = consistency_x0(model_fn, z, tt, alpha_bar, prediction_type)              # (N, C, h, w)
        if i == len(ts) - 1:
            return x0
        ab = alpha_bar[ts[i + 1]]
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype)
        z = ab.sqrt() * x0 + (1 - ab).sqrt() * noise                                  # eq. 1.2 at the next t
    return z
