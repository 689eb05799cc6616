"""The three things a denoiser can predict, and the conversions between them (book §1.5, eqs. 1.11-1.13).

With x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps (eq. 1.2), any one of

======================  ================================  ============================================
kind (diffusers' name)  the network predicts              conversion used here
======================  ================================  ============================================
``"epsilon"``           the noise eps                     x0 = (x_t - sqrt(1-ab) eps) / sqrt(ab)  1.11
``"sample"``            the clean sample x0               eps = (x_t - sqrt(ab) x0) / sqrt(1-ab)  1.11
``"v_prediction"``      v = sqrt(ab) eps - sqrt(1-ab) x0  x0 = sqrt(ab) x_t - sqrt(1-ab) v        1.12
======================  ================================  ============================================

determines the other two given x_t. The score of q(x_t) is -eps / sqrt(1 - alpha_bar) (Tweedie, eq. 1.13).

Every function takes ``alpha_bar`` as a tensor that broadcasts against the data (for example
(N, 1, 1, 1) from :func:`gather_like`) or a Python float. Samplers call :func:`predict_eps_x0`
(k-diffusion-style: one wrapper, so every sampler works with every parameterisation).
"""
from __future__ import annotations

import math

import torch

from .schedules import NoiseSchedule, gather

__all__ = [
    "PREDICTION_TYPES",
    "gather_like",
    "v_target",
    "x0_from_eps",
    "eps_from_x0",
    "eps_from_v",
    "x0_from_v",
    "v_from_eps",
    "score_from_eps",
    "eps_from_score",
    "target",
    "predict_eps_x0",
    "to_eps",
    "to_x0",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _check_kind(kind: str) -> None:
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES} (diffusers' names), got {kind!r}")


def gather_like(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped (N, 1, ..., 1) to broadcast over ``like``, on its device and in its dtype.

    The schedule may live on the CPU while the data is on a GPU (book intro, "Running on a GPU");
    this is :func:`diffcourse.schedules.gather` plus the move (book §1.1, eq. 1.2).
    """
    t = torch.as_tensor(t).to(values.device)
    return gather(values, t, like.ndim).to(device=like.device, dtype=like.dtype)   # (N, 1, ..., 1)


# ----------------------------------------------------------------------------- conversions (§1.5)

def _roots(alpha_bar, like: torch.Tensor):
    """(sqrt(alpha_bar), sqrt(1 - alpha_bar)); Python floats stay floats (cheap in sampler loops),
    tensors are moved to ``like``'s device and dtype."""
    if isinstance(alpha_bar, (float, int)):
        return math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    alpha_bar = torch.as_tensor(alpha_bar, dtype=like.dtype, device=like.device)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (book §1.5, eq. 1.12). Shapes as x0."""
    sqrt_ab, sqrt_1m_ab = _roots(alpha_bar, x0)
    return sqrt_ab * eps - sqrt_1m_ab * x0


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (book §1.5, eq. 1.11)."""
    sqrt_ab, sqrt_1m_ab = _roots(alpha_bar, x_t)
    return (x_t - sqrt_1m_ab * eps) / sqrt_ab


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar), eq. 1.2 solved for eps (book §1.5, eq. 1.11)."""
    sqrt_ab, sqrt_1m_ab = _roots(alpha_bar, x_t)
    return (x_t - sqrt_ab * x0) / sqrt_1m_ab


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar) -> torch.Tensor:
    """eps = sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t (book §1.5, eq. 1.12)."""
    sqrt_ab, sqrt_1m_ab = _roots(alpha_bar, x_t)
    return sqrt_ab * v + sqrt_1m_ab * x_t


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar) -> torch.Tensor:
    """x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v (book §1.5, eq. 1.12)."""
    sqrt_ab, sqrt_1m_ab = _roots(alpha_bar, x_t)
    return sqrt_ab * x_t - sqrt_1m_ab * v


def v_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """v from eps and x_t: v = (eps - sqrt(1 - alpha_bar) x_t) / sqrt(alpha_bar) (book §1.5, eq. 1.12)."""
    sqrt_ab, sqrt_1m_ab = _roots(alpha_bar, x_t)
    return (eps - sqrt_1m_ab * x_t) / sqrt_ab


def score_from_eps(eps: torch.Tensor, alpha_bar) -> torch.Tensor:
    """score = grad log q(x_t) = -eps / sqrt(1 - alpha_bar) (Tweedie; book §1.5, eq. 1.13)."""
    _, sqrt_1m_ab = _roots(alpha_bar, eps)
    return -eps / sqrt_1m_ab


def eps_from_score(score: torch.Tensor, alpha_bar) -> torch.Tensor:
    """eps = -sqrt(1 - alpha_bar) * score, eq. 1.13 inverted (book §1.5)."""
    _, sqrt_1m_ab = _roots(alpha_bar, score)
    return -sqrt_1m_ab * score


# ----------------------------------------------------------------------------- training target

def target(kind: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
           schedule: NoiseSchedule) -> torch.Tensor:
    """The regression target for ``kind`` in {"epsilon", "sample", "v_prediction"} (book §1.5, eqs. 1.10-1.12).

    x0, eps: (N, ...); t: (N,) long. Returns (N, ...).
    """
    _check_kind(kind)
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return x0
    return v_target(x0, eps, gather_like(schedule.alpha_bar, t, x0))


# ----------------------------------------------------------------------------- model output -> eps, x0

def predict_eps_x0(model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar,
                   prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a model output of any ``prediction_type`` into (eps_hat, x0_hat) (book §1.5, eqs. 1.11-1.12).

    The single wrapper every sampler uses, so no sampler special-cases a parameterisation.
    ``alpha_bar`` broadcasts against x_t (N, ...); returns two tensors shaped like x_t.
    """
    _check_kind(prediction_type)
    if prediction_type == "epsilon":
        return model_output, x0_from_eps(x_t, model_output, alpha_bar)
    if prediction_type == "sample":
        return eps_from_x0(x_t, model_output, alpha_bar), model_output
    return eps_from_v(x_t, model_output, alpha_bar), x0_from_v(x_t, model_output, alpha_bar)


def to_eps(model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
           prediction_type: str = "epsilon") -> torch.Tensor:
    """eps_hat from a model output of ``prediction_type`` at integer timesteps t (N,) (book §1.5, eq. 1.11)."""
    return predict_eps_x0(model_output, x_t, gather_like(schedule.alpha_bar, t, x_t), prediction_type)[0]


def to_x0(model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
          prediction_type: str = "epsilon") -> torch.Tensor:
    """x0_hat from a model output of ``prediction_type`` at integer timesteps t (N,) (book §1.5, eqs. 1.11-1.12)."""
    return predict_eps_x0(model_output, x_t, gather_like(schedule.alpha_bar, t, x_t), prediction_type)[1]
