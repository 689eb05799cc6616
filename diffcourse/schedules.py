"""Noise schedules and every quantity derived from them (book §1.2, eqs. 1.3-1.7; §1.3, eqs. 1.8-1.9).

Index convention (the same as diffusers): a schedule of length ``T`` is indexed by
``t = 0, ..., T-1``; index ``t`` holds the paper's step ``t+1``. So ``alpha_bar[0]`` is
``1 - beta_1`` (almost clean) and ``alpha_bar[T-1]`` is close to 0 (almost pure noise).

Everything is computed in float64 and stored as float32, so a 1000-step cumulative product
loses no precision before it is stored.

=====================  ==================================  ==========================================
name                   symbol                              meaning
=====================  ==================================  ==========================================
``betas``              beta_t                              variance added at step t (eq. 1.1)
``alphas``             alpha_t = 1 - beta_t                signal kept at step t
``alpha_bar``          prod_{s<=t} alpha_s                 signal kept from x_0 to x_t (eq. 1.2)
``snr``                alpha_bar / (1 - alpha_bar)         signal-to-noise ratio (eq. 1.7)
``sigma``              sqrt((1 - alpha_bar) / alpha_bar)   noise level of x_t / sqrt(alpha_bar)
``posterior_*``        mu~_t and beta~_t                   posterior q(x_{t-1} | x_t, x_0), eqs. 1.8-1.9
=====================  ==================================  ==========================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

__all__ = [
    "NoiseSchedule",
    "linear_betas",
    "cosine_betas",
    "quadratic_betas",
    "scaled_linear_betas",
    "make_schedule",
    "gather",
    "SCHEDULES",
]


# ----------------------------------------------------------------------------- beta schedules

def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule, beta_t evenly spaced (book §1.2, eq. 1.3). Returns (T,) float64."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (book §1.2, eq. 1.4).

    alpha_bar(u) = cos^2(((u + s) / (1 + s)) * pi/2) for u = t/T, and
    beta_t = 1 - alpha_bar(t/T) / alpha_bar((t-1)/T), clipped at ``max_beta`` so the last
    step does not destroy everything at once. Same as diffusers' ``squaredcos_cap_v2``.
    Returns (T,) float64.
    """
    u = torch.arange(T + 1, dtype=torch.float64) / T                      # (T+1,)
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2                   # (T+1,)
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)                       # (T,)


def quadratic_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Quadratic schedule: sqrt(beta_t) evenly spaced between DDPM's end points (book §1.2, eq. 1.5).

    It adds noise more slowly than the linear schedule early on. Returns (T,) float64.
    """
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def scaled_linear_betas(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" schedule (book §1.2, eq. 1.6).

    The quadratic form of eq. 1.5 with Stable Diffusion's end points, gentler than DDPM's
    because latents (§4) carry less redundant signal than pixels. Returns (T,) float64.
    """
    return quadratic_betas(T, beta_start, beta_end)


SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "scaled_linear": scaled_linear_betas,
}


# ----------------------------------------------------------------------------- the schedule

@dataclass(frozen=True)
class NoiseSchedule:
    """A noise schedule with every derived quantity, each a float32 tensor of shape (T,).

    Build one with :func:`make_schedule` or :meth:`from_betas`. Book §1.2 (eqs. 1.3-1.7) and
    §1.3 (posterior, eqs. 1.8-1.9).
    """

    name: str
    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    snr: torch.Tensor
    log_snr: torch.Tensor
    sigma: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor, name: str = "custom") -> "NoiseSchedule":
        """Derive every quantity from beta_1..beta_T (book §1.2 eq. 1.7, §1.3 eqs. 1.8-1.9)."""
        b = torch.as_tensor(betas, dtype=torch.float64)                        # (T,)
        if b.ndim != 1 or len(b) < 1:
            raise ValueError(f"betas must be a 1-D tensor with at least one step, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("every beta_t must lie strictly between 0 and 1")
        a = 1 - b                                                             # alpha_t
        ab = torch.cumprod(a, dim=0)                                          # alpha_bar_t, eq. 1.2
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])                        # alpha_bar_{t-1}, = 1 at t=0
        post_var = b * (1 - ab_prev) / (1 - ab)                               # beta~_t, eq. 1.9
        # beta~ is 0 at t=0: clip the log to the next value, as DDPM's code does.
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(b) > 1 \
            else torch.log(b)
        values = dict(
            betas=b,
            alphas=a,
            alpha_bar=ab,
            alpha_bar_prev=ab_prev,
            sqrt_alpha_bar=ab.sqrt(),
            sqrt_one_minus_alpha_bar=(1 - ab).sqrt(),
            snr=ab / (1 - ab),                                                # eq. 1.7
            log_snr=torch.log(ab) - torch.log1p(-ab),
            sigma=((1 - ab) / ab).sqrt(),                                     # eq. 1.7
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_logvar,
            posterior_mean_coef_x0=b * ab_prev.sqrt() / (1 - ab),             # eq. 1.8
            posterior_mean_coef_xt=(1 - ab_prev) * a.sqrt() / (1 - ab),       # eq. 1.8
        )
        return cls(name=name, **{k: v.to(torch.float32) for k, v in values.items()})

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return len(self.betas)

    def __len__(self) -> int:
        return self.T

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """A copy with every tensor on ``device`` (the schedule is small: 13 vectors of length T)."""
        return NoiseSchedule(name=self.name, **{
            f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "name"})


def make_schedule(name: str = "linear", T: int = 1000, **kwargs) -> NoiseSchedule:
    """Build a named schedule: ``linear``, ``cosine``, ``quadratic`` or ``scaled_linear`` (book §1.2).

    Extra keyword arguments go to the beta function (for example ``beta_start``, ``beta_end``, ``s``).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an integer >= 2, got {T!r}")
    return NoiseSchedule.from_betas(SCHEDULES[name](T, **kwargs), name=name)


def gather(values: torch.Tensor, t: torch.Tensor | int, ndim: int) -> torch.Tensor:
    """Pick ``values[t]`` for a batch of timesteps and shape it to broadcast over a batch of ``ndim`` dims.

    ``values``: (T,); ``t``: (N,) integer tensor or an int; returns (N, 1, ..., 1) with ``ndim`` dims
    (or (1, ..., 1) for an int), on ``values``' device. Used by every formula that indexes the
    schedule at t (book §1.1, eq. 1.2).
    """
    t = torch.as_tensor(t, device=values.device, dtype=torch.long)
    out = values[t.reshape(-1)]                                               # (N,)
    return out.reshape(-1, *([1] * (ndim - 1)))                               # (N, 1, ..., 1)
