"""The course's one training loop, built on ``accelerate`` (book §2.1, training a denoiser).

Every model in the course (the 2-D toy MLP here, the U-Net of §3, the conditional models of §5)
trains with :func:`train`. Each step is the simple loss of eq. 1.10 (book §1.4), computed by
:func:`diffcourse.forward.diffusion_loss`::

    x0 ~ data,  t ~ U{0..T-1},  eps ~ N(0, I)
    loss = || target(eps, x0, t) - model(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
    theta <- AdamW(theta, clip(grad loss));  EMA <- EMA + (1 - decay)(theta - EMA)

``accelerate.Accelerator`` places the model on the device from :mod:`diffcourse.device` and,
on a GPU with bfloat16, runs its forward pass in mixed precision; the loop itself never names a
device. All randomness (batches, timesteps, noise) comes from CPU ``torch.Generator`` objects
seeded from ``TrainConfig.seed``, so the same seed draws the same numbers on every device.

Several processes. ``accelerate launch --multi_gpu --num_processes 2 -m diffcourse.train toy ... --device cpu``
runs the same loop on two ranks: ``accelerate`` starts them with ``torchrun``, and ``Accelerator(cpu=True)``
joins them in a gloo process group (``MULTI_CPU``). (``accelerate launch --cpu --num_processes 2`` starts
a single process unless given an MPI host file, ``--mpirun_hostfile``.) The model is wrapped for data
parallelism, each rank trains on its share of every batch, the logged loss is the mean over the
ranks, and only the main process writes the checkpoint (:mod:`diffcourse.train`), in the same format.

Checkpoints are one safetensors file: the weights, plus a JSON string under the metadata key
``"diffcourse"`` that holds the model class, its config, the schedule, the prediction type and
how the file was made (:func:`save_checkpoint`, :func:`load_checkpoint`).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .device import default_device, mixed_precision_for
from .ema import EMA
from .forward import diffusion_loss
from .models import build_model, config_of
from .schedules import NoiseSchedule, make_schedule

__all__ = ["TrainConfig", "TrainHistory", "TrainResult", "train", "batches", "make_readable",
           "save_checkpoint", "load_checkpoint", "read_metadata", "schedule_of", "METADATA_KEY"]

METADATA_KEY = "diffcourse"


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`train` (book §2.1). The defaults suit the 2-D toys."""

    steps: int = 2000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100          # linear learning-rate warm-up, then cosine decay to 0
    grad_clip: float | None = 1.0    # max global gradient norm; None switches clipping off
    ema_decay: float = 0.999
    prediction_type: str = "epsilon"  # "epsilon", "sample" or "v_prediction" (§1.5)
    seed: int = 0
    device: str | None = None        # None: diffcourse.device.default_device()
    progress: bool = True            # show a tqdm progress bar


@dataclass
class TrainHistory:
    """What happened during training: one entry per optimiser step (book §2.1)."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def final_loss(self, window: int = 200) -> float:
        """Mean loss over the last ``window`` steps (one step's loss is noisy: t is random)."""
        tail = self.loss[-window:]
        return sum(tail) / len(tail) if tail else math.nan

    def smoothed(self, window: int = 50) -> list[float]:
        """Running mean of the loss over ``window`` steps, for plotting."""
        out, acc = [], 0.0
        for i, v in enumerate(self.loss):
            acc += v - (self.loss[i - window] if i >= window else 0.0)
            out.append(acc / min(i + 1, window))
        return out


@dataclass
class TrainResult:
    """The trained model (raw weights), its EMA, and the history (book §2.1)."""

    model: nn.Module
    ema: EMA
    history: TrainHistory

    def ema_model(self) -> nn.Module:
        """A copy of the model holding the EMA weights, in eval mode: the one to sample from."""
        return self.ema.copy_to(copy.deepcopy(self.model)).eval()


# ----------------------------------------------------------------------------- data

Batch = Any  # a tensor x0, a tuple/list whose first item is x0, or a dict with key "x0"


def batches(data, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """An endless stream of batches from any data source (book §2.1).

    ``data`` may be a tensor (N, ...) of training points (batches drawn with replacement), a
    ``torch.utils.data.Dataset`` (shuffled, reshuffled every epoch), a ``DataLoader`` (used as is,
    cycled), or a callable ``data(batch_size, generator) -> batch`` that samples fresh points.
    """
    if isinstance(data, torch.Tensor):
        while True:
            idx = torch.randint(len(data), (batch_size,), generator=generator, device=generator.device)
            yield data[idx.to(data.device)]                                   # (B, ...)
    elif isinstance(data, torch.utils.data.DataLoader):
        while True:
            yield from data
    elif isinstance(data, torch.utils.data.Dataset):
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                             drop_last=len(data) >= batch_size, generator=generator)
        while True:
            yield from loader
    elif callable(data):
        while True:
            yield data(batch_size, generator)
    else:
        raise TypeError(f"cannot draw batches from a {type(data).__name__}; pass a tensor, a Dataset, "
                        f"a DataLoader or a callable data(batch_size, generator)")


def _x0_of(batch: Batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        return batch["x0"]
    return batch[0]


def _to(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


# ----------------------------------------------------------------------------- the loop

def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(model: nn.Module, data, schedule: NoiseSchedule | None, config: TrainConfig | None = None,
          model_kwargs: Callable[[Batch], dict] | None = None, loss_fn: Callable | None = None) -> TrainResult:
    """Train ``model`` with the simple loss (book §2.1; §1.4, eq. 1.10); returns model, EMA and history.

    ``data``: see :func:`batches`. ``model_kwargs(batch) -> dict`` picks extra inputs for the model
    from each batch, for conditioning (§5): e.g. ``lambda b: {"class_labels": b[1]}`` calls
    ``model(x_t, t, class_labels=b[1])``. The model is trained in place (moved to the device).
    ``loss_fn(model_fn, x0, generator) -> scalar`` replaces the simple loss (``schedule`` may then be
    None): e.g. the flow-matching loss of book §7.1 (eq. 7.3), :func:`diffcourse.flow.path.fm_loss`.
    """
    config = config or TrainConfig()
    device = torch.device(config.device) if config.device else default_device()
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision_for(device))
    # Under ``accelerate launch --num_processes N`` (one process per rank, gloo on the CPU) each rank draws
    # its own batch_size / N points and noise from its own seeds; the prepared model averages the gradients,
    # so one step sees batch_size points in all. With one process (rank 0 of 1) nothing changes.
    rank, world = accelerator.process_index, accelerator.num_processes
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {world} processes")
    torch.manual_seed(config.seed)                          # global RNG: dropout and the like
    data_gen = torch.Generator().manual_seed(config.seed + 2 * rank)          # batches
    noise_gen = torch.Generator().manual_seed(config.seed + 1 + 2 * rank)     # t and eps in the loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMA(accelerator.unwrap_model(model), decay=config.ema_decay)
    schedule = schedule.to(accelerator.device) if schedule is not None else None
    history = TrainHistory()

    model.train()
    stream = batches(data, config.batch_size // world, data_gen)
    bar = tqdm(range(config.steps), desc="training", mininterval=0.5,
               disable=not (config.progress and accelerator.is_local_main_process))
    start = time.perf_counter()
    for step in bar:
        batch = _to(next(stream), accelerator.device)
        kwargs = model_kwargs(batch) if model_kwargs else {}
        x0 = _x0_of(batch)                                                   # (B, ...)
        model_fn = lambda x_t, t: model(x_t, t, **kwargs)                      # noqa: E731
        if loss_fn is None:
            loss = diffusion_loss(model_fn, x0, schedule, noise_gen, prediction_type=config.prediction_type)
        else:
            loss = loss_fn(model_fn, x0, noise_gen)                              # e.g. flow matching (§7.1)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(accelerator.unwrap_model(model))

        history.loss.append((accelerator.reduce(loss.detach(), "mean") if world > 1 else loss).item())  # all ranks
        history.lr.append(scheduler.get_last_lr()[0])
        history.grad_norm.append(float(grad_norm))
        if step % 100 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{history.final_loss(100):.4f}")
    history.seconds = time.perf_counter() - start
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval()
    return TrainResult(model=model, ema=ema, history=history)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | Path, model: nn.Module, *, schedule: NoiseSchedule | None,
                    prediction_type: str = "epsilon", **info) -> Path:
    """Write ``model``'s weights and how to rebuild it to one safetensors file (book §2.1).

    The metadata (a JSON string, keys sorted so equal inputs give equal bytes) holds the model
    class and config, the schedule name and T, the prediction type, and ``info`` (for example the
    dataset, the number of steps and the command that made the file). Returns the path.
    """
    class_name, config = config_of(model)
    meta = dict(info, model_class=class_name, config=config, prediction_type=prediction_type, format=1,
                schedule=schedule.name if schedule is not None else None,    # None: a flow model (§7)
                T=schedule.T if schedule is not None else None)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    make_readable(path)
    return path


def make_readable(path: str | Path) -> None:
    """Give a written checkpoint the usual 0644 mode (book §2.1).

    safetensors creates its files readable by their owner only (0600); the autograder's sandbox reads
    the zoo as another user, so a freshly trained checkpoint would make every submission fail.
    """
    os.chmod(path, 0o644)


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata :func:`save_checkpoint` wrote into ``path`` (book §2.1)."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path} has no {METADATA_KEY!r} metadata; was it written by "
                         f"diffcourse.training.save_checkpoint?")
    return json.loads(raw)


def load_checkpoint(path: str | Path, device: torch.device | str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model saved in ``path``, in eval mode on ``device``; returns (model, metadata) (book §2.1).

    The schedule it was trained with is ``make_schedule(meta["schedule"], meta["T"])``.
    """
    meta = read_metadata(path)
    model = build_model(meta["model_class"], meta["config"])
    state = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            state[key] = f.get_tensor(key)
    model.load_state_dict(state)
    return model.to(device or default_device()).eval(), meta


def schedule_of(meta: dict) -> NoiseSchedule:
    """The noise schedule a checkpoint was trained with, from its metadata (book §1.2)."""
    return make_schedule(meta["schedule"], int(meta["T"]))
