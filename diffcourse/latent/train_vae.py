"""Training the course's VAE on the shapes, and writing it as a diffusers folder (book §4.2-§4.4).

``python -m diffcourse.train vae --out zoo/shapes_vae`` runs :func:`train_vae_cli`: it renders a fixed
set of captioned shapes (half plain, half with varied backgrounds and textures, book §4.2), trains
``AutoencoderKL`` (:data:`~diffcourse.latent.vae.SHAPES_VAE`) on the loss of eq. 4.5 with AdamW and a
tqdm bar, keeps an EMA of the weights, measures the scaling factor on the data (eq. 4.6) and the
reconstruction PSNR on held-out images (eq. 4.7), and saves the folder with ``save_pretrained``
(weights stored as float16; ``scaling_factor`` in its ``config.json``) plus ``diffcourse.json``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..ema import EMA
from .vae import build_vae, measure_scaling_factor, psnr, psnr_by_feature_size, reconstruct, vae_loss
from .zoo_folders import METADATA_FILE, read_metadata, write_metadata   # noqa: F401 - read_metadata re-exported

__all__ = ["METADATA_FILE", "shapes_images", "train_vae", "add_vae_parser", "train_vae_cli", "save_vae",
           "load_vae", "read_metadata"]



def shapes_images(n: int, seed: int, size: int = 32, max_shapes: int = 2) -> torch.Tensor:
    """n shape images (n, 3, size, size) in [-1, 1]: even items plain, odd items varied (book §4.2)."""
    from ..data.shapes import ShapesDataset

    plain = ShapesDataset(n, seed=seed, size=size, max_shapes=max_shapes)
    varied = ShapesDataset(n, seed=seed, size=size, max_shapes=max_shapes, style="varied")
    return torch.stack([(plain if i % 2 == 0 else varied)[i]["image"] for i in range(n)])


def train_vae(vae, images: torch.Tensor, steps: int, batch_size: int = 16, lr: float = 2e-3, beta: float = 1e-6,
              ema_decay: float = 0.995, seed: int = 0, progress: bool = True, edge_weight: float = 0.0):
    """Train ``vae`` on ``images`` with eq. 4.5 (eq. 4.5' when ``edge_weight`` > 0; AdamW, cosine decay,
    EMA); returns (EMA VAE, losses) (book §4.2)."""
    import copy

    data_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    ema = EMA(vae, decay=ema_decay)
    losses = []
    vae.train()
    bar = tqdm(range(steps), desc="training the VAE", disable=not progress, mininterval=0.5)
    for step in bar:
        idx = torch.randint(len(images), (batch_size,), generator=data_gen)
        loss = vae_loss(vae, images[idx], noise_gen, beta=beta, edge_weight=edge_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.update(vae)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return ema.copy_to(copy.deepcopy(vae)).eval(), losses


def save_vae(folder: str | Path, vae, **info) -> Path:
    """``vae.save_pretrained`` with float16 weights, plus :data:`METADATA_FILE` (book §4.2). Returns the folder."""
    import copy

    folder = Path(folder)
    copy.deepcopy(vae).cpu().half().save_pretrained(str(folder), safe_serialization=True)
    return write_metadata(folder, info)


def load_vae(folder: str | Path, device: torch.device | str = "cpu"):
    """``AutoencoderKL.from_pretrained`` of a local folder, float32, eval mode, offline (book §4.2)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    return vae.to(device).eval()


def add_vae_parser(sub, parents) -> None:
    """The ``vae`` subcommand of ``python -m diffcourse.train`` (book §4.2)."""
    p = sub.add_parser("vae", parents=parents, help="the KL autoencoder on the shapes, as a diffusers folder (§4.2)")
    p.add_argument("--out", required=True, help="the folder to write with save_pretrained")
    p.add_argument("--images", type=int, default=4096, help="training images (half plain, half varied)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--beta", type=float, default=1e-6, help="weight of the KL term (eq. 4.5)")
    p.add_argument("--edge-weight", type=float, default=1.0,
                   help="weight lambda of the image-gradient term (eq. 4.5'); 0 is eq. 4.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")


def train_vae_cli(args: argparse.Namespace) -> dict:
    """Train the VAE as ``args`` say, measure s and PSNR, save the folder; returns its metadata (book §4.2-§4.4)."""
    from ..train import canonical_command
    from .vae import SHAPES_VAE

    command = canonical_command(args)
    torch.set_num_threads(args.threads)
    images = shapes_images(args.images, seed=args.seed)                      # (n, 3, 32, 32)
    held_out = shapes_images(256, seed=args.seed + 1000)                     # (256, 3, 32, 32), never trained on
    torch.manual_seed(args.seed)                                             # initialisation
    start = time.perf_counter()
    vae, losses = train_vae(build_vae(), images, args.steps, args.batch_size, args.lr, args.beta,
                            seed=args.seed, progress=args.progress, edge_weight=args.edge_weight)
    seconds = time.perf_counter() - start
    vae = vae.half().float()                                                 # measure what is shipped (fp16)
    s = measure_scaling_factor(vae, images, torch.Generator().manual_seed(args.seed + 2))
    vae.register_to_config(scaling_factor=round(s, 5))
    rec = reconstruct(vae, held_out)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in SHAPES_VAE.items()}
    info = dict(model_class="AutoencoderKL", config=config, schedule=None, T=None, prediction_type=None, dataset="shapes-32 (half plain, half varied)", steps=args.steps,
                seed=args.seed, command=command, scaling_factor=round(s, 5),
                psnr_held_out=round(float(psnr(rec, held_out).mean()), 2),
                psnr_plain=round(float(psnr(rec[0::2], held_out[0::2]).mean()), 2),
                psnr_varied=round(float(psnr(rec[1::2], held_out[1::2]).mean()), 2),
                psnr_by_feature=[[k, round(v, 2)] for k, v in psnr_by_feature_size(vae).items()],
                final_loss=round(sum(losses[-100:]) / len(losses[-100:]), 5), weights="ema, float16",
                parameters=sum(p.numel() for p in vae.parameters()), train_seconds=round(seconds, 1))
    save_vae(args.out, vae, **info)
    return dict(info, seconds=seconds)
