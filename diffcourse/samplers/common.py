"""What every sampler shares: the starting sample, the grid, the model call and the bookkeeping (book §2.2-2.5).

Nothing here is a sampler; each sampler module is one plain loop that uses these helpers, so
that its own file shows only the update equations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..schedules import NoiseSchedule
from ..targets import PREDICTION_TYPES
from .grids import make_timesteps

__all__ = ["Trajectory", "alpha_bar_f64", "initial_sample", "resolve_timesteps", "check_prediction_type", "Recorder",
           "batched_timesteps", "call_model"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Trajectory:
    """What ``return_trajectory=True`` returns (book §2.2).

    ``sample``: the final x_0, (N, ...). ``x_t``: [x_T, x after step 1, ..., x after step n], n+1 tensors,
    all in the variance-preserving scale of eq. 1.2 (the sigma-space samplers divide by sqrt(1+sigma^2)),
    so trajectories of different samplers can be plotted together. ``x0``: the n x0-predictions.
    ``timesteps``: the (n,) grid the model was evaluated at.
    """

    sample: torch.Tensor
    x_t: list[torch.Tensor] = field(default_factory=list)
    x0: list[torch.Tensor] = field(default_factory=list)
    timesteps: torch.Tensor | None = None


def alpha_bar_f64(schedule: NoiseSchedule) -> torch.Tensor:
    """alpha_bar recomputed in float64 from the stored betas (book §1.1, eq. 1.2). Returns (T,) float64, CPU.

    The sampler coefficients need 1 - alpha_bar_t and 1 - alpha_bar_t / alpha_bar_t' near t = 0, where
    both are ~1e-4 and float32 values of alpha_bar would cancel to ~1e-3 relative error.
    """
    return torch.cumprod(1 - schedule.betas.detach().cpu().double(), dim=0)


def initial_sample(x_T: torch.Tensor | Sequence[int], generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """x_T ~ N(0, I) (book §2.2): a tensor is used as given (its device and dtype are the sampler's).

    A shape is drawn in float32 with ``torch.randn`` on the generator's device (the CPU without a
    generator) and then moved to ``device`` if given: the same rule as diffusers' ``randn_tensor``,
    so a CPU generator gives the same x_T on every machine. This is always the generator's first draw.
    """
    if isinstance(x_T, torch.Tensor):
        if not x_T.is_floating_point():
            raise TypeError(f"x_T must be a floating-point tensor, got dtype {x_T.dtype}")
        return x_T
    if isinstance(x_T, (tuple, list, torch.Size)) and len(x_T) >= 1 and all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in x_T):
        gen_device = generator.device if generator is not None else torch.device("cpu")
        x = torch.randn(tuple(x_T), generator=generator, device=gen_device, dtype=torch.float32)
        return x.to(device) if device is not None else x
    raise TypeError(f"x_T must be a tensor or a shape tuple of positive ints like (16, 2), got {x_T!r}")


def resolve_timesteps(schedule: NoiseSchedule, timesteps, num_steps: int | None, spacing: str,
                      steps_offset: int = 0, *, discrete: bool = True, skip_last: bool = False) -> torch.Tensor:
    """The grid a sampler walks (book §2.3, eq. 2.3): an explicit ``timesteps`` or ``num_steps`` + ``spacing``.

    Checks that the grid is 1-D, non-empty, strictly descending and inside 0..T-1, and integral when
    ``discrete``. Returns (n,) long (``discrete``) or float32, on the CPU.
    """
    if timesteps is not None and num_steps is not None:
        raise ValueError("pass either timesteps (an explicit grid) or num_steps (with spacing), not both")
    if timesteps is None:
        timesteps = make_timesteps(num_steps, schedule.T, spacing, steps_offset, discrete=discrete,
                                   skip_last=skip_last)                 # checked below too: rounding can repeat
    t = torch.as_tensor(timesteps).detach().cpu()
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D grid, got shape {tuple(t.shape)}")
    if t.is_floating_point() and discrete:
        if not torch.equal(t, t.round()):
            raise ValueError("this sampler works on the integer chain 0..T-1; got fractional timesteps "
                             f"{t[:4].tolist()}... (only the Euler samplers take fractional t)")
    if len(t) > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"timesteps must be strictly descending (noisy to clean), got {t[:6].tolist()}...")
    if float(t.min()) < 0 or float(t.max()) > schedule.T - 1:
        raise ValueError(f"timesteps must lie in 0..{schedule.T - 1}, got range [{float(t.min())}, {float(t.max())}]")
    return t.long() if discrete else t.float()


def check_prediction_type(prediction_type: str) -> None:
    """Raise a clear error for a prediction type other than diffusers' three (book §1.5)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def batched_timesteps(t: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """The grid repeated for a batch: row i is the (N,) timestep tensor handed to the model at step i.

    t: (n_steps,); returns (n_steps, N) on ``device``, built once so the loop does no tensor churn.
    """
    return t.to(device).reshape(-1, 1).repeat(1, n)                                 # (n_steps, N)


def call_model(model: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """model(x, t) with a shape check: the output must have x's shape (N, ...)."""
    out = model(x, t)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model(x_t, t) must return a tensor shaped like x_t {tuple(x.shape)}, got {got}")
    return out


class Recorder:
    """Callback, trajectory and progress bar for a sampler loop (book §2.2).

    ``steps()`` yields the step indices (through tqdm when ``progress``); ``record`` is called after
    each step with the new x_t (variance-preserving scale) and the step's x0 prediction.
    """

    def __init__(self, n_steps: int, x_T: torch.Tensor, timesteps: torch.Tensor, callback=None,
                 return_trajectory: bool = False, progress: bool = False, desc: str = "sampling"):
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable as callback(i, t, x_t, x0_pred), got {callback!r}")
        self.n_steps, self.timesteps, self.callback = n_steps, timesteps, callback
        self.progress, self.desc = progress, desc
        self.trajectory = Trajectory(sample=x_T, x_t=[x_T], timesteps=timesteps) if return_trajectory else None

    @property
    def active(self) -> bool:
        """True when something (a callback or the trajectory) wants each step's x_t."""
        return self.callback is not None or self.trajectory is not None

    def steps(self):
        it = range(self.n_steps)
        return tqdm(it, desc=self.desc, leave=False) if self.progress else it

    def record(self, i: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(i, self.timesteps[i], x_t, x0)
        if self.trajectory is not None:
            self.trajectory.x_t.append(x_t)
            self.trajectory.x0.append(x0)

    def finish(self, sample: torch.Tensor):
        if self.trajectory is None:
            return sample
        self.trajectory.sample = sample
        return self.trajectory
