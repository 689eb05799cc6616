"""``python -m diffcourse.train video``: an image U-Net on frames, inflated and trained on clips (book §8.5).

    python -m diffcourse.train video --out zoo/shapes_video.safetensors

AnimateDiff's recipe at course size, with the course's one training loop
(:func:`diffcourse.training.train`, simple loss eq. 1.10, EMA, tqdm), on moving-shapes clips
(:mod:`diffcourse.data.video`):

1. an image U-Net learns single frames (every frame of every clip is an image);
2. it is inflated with zero-initialised temporal attention (:func:`~diffcourse.video.inflate.inflate`,
   eq. 8.5) and the whole network learns the clips (``--train-spatial on``, as Video LDM and SVD
   fine-tune); ``--train-spatial off`` trains the temporal layers alone, AnimateDiff's recipe.

The checkpoint holds the whole :class:`~diffcourse.video.inflate.VideoUNet` (EMA weights, float16 by
default); its ``unet``, run frame by frame, is the "without temporal attention" baseline of §8.6
(with ``--train-spatial off`` it is exactly the stage-1 image model). The metadata records both
stages' losses and times.
"""
from __future__ import annotations

import argparse

import torch

__all__ = ["add_parser", "add_clip_options", "train_video", "training_clips", "sample_clips", "compare_consistency"]


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The ``video`` subcommand's options, in the order of its recorded command (book §8.5)."""
    p = sub.add_parser("video", parents=[common],
                       help="an image U-Net on moving-shapes frames, inflated with temporal attention (book §8.5)")
    p.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    add_clip_options(p)
    p.add_argument("--image-steps", type=int, default=500)
    p.add_argument("--image-batch-size", type=int, default=64, help="frames per step of stage 1")
    p.add_argument("--video-steps", type=int, default=450)
    p.add_argument("--batch-size", type=int, default=8, help="clips per step of stage 2")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--train-spatial", default="on", choices=["on", "off"],
                   help="off: stage 2 trains the temporal layers only (AnimateDiff); on: the whole network")
    p.add_argument("--schedule", default="linear")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (the zoo's checkpoint) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for repeatability)")
    p.add_argument("--weights-dtype", default="float16", choices=["float32", "float16"])


def add_clip_options(p: argparse.ArgumentParser) -> None:
    """The training clips' options, shared by the ``video`` and ``video-dit`` subcommands (book §8.5, §8.7)."""
    p.add_argument("--num-clips", type=int, default=2000, help="training clips (clip i fixed by seed and i)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--radius", type=float, default=0.2, help="shape half-extent as a fraction of the size")


def training_clips(num_clips: int, frames: int, size: int, radius: float, seed: int = 0) -> torch.Tensor:
    """Moving-shapes clips in the video U-Net's layout, (N, 3, F, size, size) in [-1, 1] (book §8.5)."""
    from ..data.video import make_moving_shapes

    clips, _, _ = make_moving_shapes(num_clips, seed=seed, num_frames=frames, size=size, radius=radius)
    return clips.permute(0, 2, 1, 3, 4).contiguous()                              # (N, 3, F, H, W)


@torch.no_grad()
def sample_clips(model, schedule, n: int, frames: int, size: int, seed: int = 0, num_steps: int = 25,
                 per_frame: bool = False, prediction_type: str = "epsilon") -> torch.Tensor:
    """n clips (n, F, 3, size, size) in [-1, 1] drawn with DDIM (book §8.6, §8.7).

    ``model``: any video denoiser ``model(x_t, t)`` on (n, 3, F, H, W) clips that predicts
    ``prediction_type`` (the video U-Net: ``"epsilon"``; the spacetime DiT of §8.7: ``"sample"``, x0).
    ``per_frame=True`` draws with ``model.unet`` (a video U-Net's image model) alone, every frame from its
    own noise: the clip "without temporal attention". Every call with the same seed starts from the same
    noise (n, 3, F, size, size), so clips of different models pair up.
    """
    from ..samplers.ddim import sample_ddim
    from .reshape import batch_to_frames, frames_to_batch

    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, 3, frames, size, size, generator=g)                      # (n, 3, F, H, W)
    if per_frame:
        if not hasattr(model, "unet"):
            raise ValueError(f"per_frame=True needs a video U-Net (its image model .unet); a {type(model).__name__} "
                             "has none")

        def fn(x, t):                                                             # frames as images
            return batch_to_frames(model.unet(frames_to_batch(x), t.repeat_interleave(frames)
                                              if torch.as_tensor(t).ndim else t), frames)
    else:
        fn = model
    x0 = sample_ddim(fn, x_T, schedule, num_steps=num_steps, generator=g, clip_x0=1.0,
                     prediction_type=prediction_type)
    return x0.clamp(-1, 1).permute(0, 2, 1, 3, 4)                                 # (n, F, 3, H, W)


def train_video(args: argparse.Namespace) -> dict:
    """Stage 1: the image U-Net on frames; stage 2: inflate and train on clips; save the EMA VideoUNet (book §8.5)."""
    from ..models.unet import UNet, UNetConfig
    from ..schedules import make_schedule
    from ..train import _store_half, canonical_command
    from ..training import TrainConfig, save_checkpoint, train
    from .inflate import VideoUNetConfig, inflate
    from .reshape import frames_to_batch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                                   # model initialisation
    clips = training_clips(args.num_clips, args.frames, args.size, args.radius, args.seed)   # (N, 3, F, H, W)
    frames = frames_to_batch(clips)                                                # (N*F, 3, H, W)
    unet_cfg = dict(VideoUNetConfig.shapes().unet, sample_size=args.size)
    schedule = make_schedule(args.schedule, args.T)
    common = dict(lr=args.lr, ema_decay=args.ema_decay, seed=args.seed, device=args.device, progress=args.progress)
    image = train(UNet(UNetConfig(**unet_cfg)), frames, schedule,
                  TrainConfig(steps=args.image_steps, batch_size=args.image_batch_size, **common))
    video = inflate(image.ema_model().train())                                    # eq. 8.5: equal to it per frame
    if args.train_spatial == "off":
        video.freeze_spatial()
    result = train(video, clips, schedule, TrainConfig(steps=args.video_steps, batch_size=args.batch_size, **common))
    model = result.ema_model()
    info = dict(dataset=f"moving-shapes-{args.num_clips}x{args.frames}x{args.size}", seed=args.seed, weights="ema",
                steps=args.image_steps + args.video_steps,                       # both stages, as the zoo records
                image_steps=args.image_steps, video_steps=args.video_steps, frames=args.frames, size=args.size,
                image_final_loss=round(image.history.final_loss(100), 5),
                final_loss=round(result.history.final_loss(100), 5),
                image_seconds=round(image.history.seconds, 1), video_seconds=round(result.history.seconds, 1),
                command=canonical_command(args))
    save_checkpoint(args.out, model, schedule=schedule, prediction_type="epsilon", **info)
    if args.weights_dtype == "float16":
        _store_half(args.out)
    return dict(info, seconds=image.history.seconds + result.history.seconds)


def compare_consistency(model, schedule, frames: int, n: int = 32, seed: int = 0, num_steps: int = 25,
                        radius: float = 0.2, others: dict | None = None) -> dict:
    """Consistency tables (:func:`~diffcourse.video.consistency.consistency_table`) of n clips drawn with the
    video model, n drawn frame by frame with its image model ``model.unet`` from the same noise, and n
    real clips (held-out seed) (book §8.6). Keys: ``"temporal"``, ``"per_frame"``, ``"real"``.

    ``others``: ``{key: (model, schedule, prediction_type)}`` of further video denoisers of the same clip
    size, such as the spacetime DiT of §8.7; each is drawn from the same noise and added under its key."""
    from ..data.video import make_moving_shapes
    from .consistency import consistency_table

    size = model.unet.config.sample_size
    real, _, _ = make_moving_shapes(n, seed=seed + 1_000, num_frames=frames, size=size, radius=radius)
    tables = dict(temporal=consistency_table(sample_clips(model, schedule, n, frames, size, seed, num_steps)),
                  per_frame=consistency_table(sample_clips(model, schedule, n, frames, size, seed, num_steps,
                                                           per_frame=True)),
                  real=consistency_table(real))
    for key, (other, other_schedule, prediction_type) in (others or {}).items():
        tables[key] = consistency_table(sample_clips(other, other_schedule, n, frames, size, seed, num_steps,
                                                     prediction_type=prediction_type))
    return tables
