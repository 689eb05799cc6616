"""Choosing a device and a precision once, at the top (book intro, "Running on a GPU").

Every other module derives its device and dtype from its inputs; only notebooks, the training
loop and the command line ask this module which device to use. The rule:

=================================  ======  ==================  ==============================
situation                          device  autocast            accelerate ``mixed_precision``
=================================  ======  ==================  ==============================
``DIFFCOURSE_DEVICE`` is set       it      as for that device  as for that device
a CUDA GPU that supports bfloat16  cuda    bfloat16            ``"bf16"``
a CUDA GPU without bfloat16        cuda    none (float32)      ``"no"``
otherwise                          cpu     none (float32)      ``"no"``
=================================  ======  ==================  ==============================

bfloat16 keeps float32's exponent range, so unlike float16 it needs no loss scaling.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

__all__ = ["ENV_VAR", "default_device", "autocast", "mixed_precision_for", "describe"]

ENV_VAR = "DIFFCOURSE_DEVICE"


def _as_device(device: torch.device | str | torch.Tensor | None) -> torch.device:
    """A ``torch.device`` from a device, a string, a tensor (its device) or None (the default)."""
    if device is None:
        return default_device()
    if isinstance(device, torch.Tensor):
        return device.device
    return torch.device(device)


def _bf16_ok(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA device that computes in bfloat16."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def default_device() -> torch.device:
    """The device the course runs on: ``$DIFFCOURSE_DEVICE`` if set, else CUDA if present, else CPU.

    Book intro, "Running on a GPU". Set ``DIFFCOURSE_DEVICE=cpu`` to force the CPU on a GPU
    machine (for example to reproduce the CPU-trained zoo checkpoints exactly).
    Raises ``RuntimeError`` if the variable names a device that is not there.
    """
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced:
        try:
            device = torch.device(forced)
        except RuntimeError as err:
            raise RuntimeError(f"{ENV_VAR}={forced!r} is not a device name torch understands "
                               f"(try 'cpu' or 'cuda'): {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{ENV_VAR}={forced!r} asks for CUDA, but torch.cuda.is_available() is "
                               f"False on this machine; unset {ENV_VAR} or set it to 'cpu'")
        return device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def autocast(device: torch.device | str | torch.Tensor | None = None) -> Iterator[None]:
    """bfloat16 autocast on a CUDA device that supports it; a no-op (float32) anywhere else.

    Book intro, "Running on a GPU". Wrap a model's forward pass (sampling, evaluation) in it::

        with autocast(x.device):
            eps = model(x_t, t)
    """
    device = _as_device(device)
    if _bf16_ok(device):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def mixed_precision_for(device: torch.device | str | torch.Tensor | None = None) -> str:
    """The ``mixed_precision`` argument for ``accelerate.Accelerator``: ``"bf16"`` or ``"no"``.

    Book intro, "Running on a GPU": the same rule as :func:`autocast`, so training and sampling agree.
    """
    return "bf16" if _bf16_ok(_as_device(device)) else "no"


def describe(device: torch.device | str | torch.Tensor | None = None) -> str:
    """One line saying which device, precision and thread count are in use (book intro, "Running on a GPU")."""
    device = _as_device(device)
    precision = "bf16 autocast" if mixed_precision_for(device) == "bf16" else "float32"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        where = f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        where = f"{device.type} ({torch.get_num_threads()} threads)"
    forced = f", forced by {ENV_VAR}" if os.environ.get(ENV_VAR, "").strip() else ""
    return f"device {where}, {precision}, torch {torch.__version__}{forced}"
