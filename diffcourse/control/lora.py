"""LoRA from scratch: a frozen linear layer plus a trainable low-rank update (book §6.3, eqs. 6.2-6.4).

A pretrained weight W (d_out, d_in) is kept frozen; only two thin matrices are trained::

    y = W x + (alpha / r) * s * B A x,   A (r, d_in), B (d_out, r), r << min(d_in, d_out)      (eq. 6.2)

B starts at zero, so at initialisation the layer *is* the pretrained layer (identity at init); A starts
random (Kaiming-uniform, as peft does) so that the first gradient on B is not zero. ``alpha / r`` keeps
the update's size comparable across ranks; ``s`` (:attr:`LoRALinear.scale`) is the user's knob at
inference time (eq. 6.4) (0 = the base model, 1 = the trained LoRA, in between = a blend).

Merging folds the update into the weight, so inference costs nothing extra::

    W' = W + (alpha / r) * s * B A          (merge, eq. 6.3)
    W  = W' - (alpha / r) * s * B A         (unmerge, eq. 6.3: the exact same tensor is subtracted)

:func:`add_lora` wraps a model's attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` in
diffusers' ``Attention``) and freezes everything else; :func:`merge_lora`, :func:`unmerge_lora`,
:func:`set_lora_scale`, :func:`lora_state_dict` and :func:`trainable_share` act on all wrapped layers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ATTENTION_PROJECTIONS", "LoRALinear", "add_lora", "lora_layers", "merge_lora", "unmerge_lora",
           "set_lora_scale", "lora_state_dict", "trainable_share"]

#: The linear layers of diffusers' ``Attention`` that LoRA wraps by default (book §6.3).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * scale * B(A(x))`` around a frozen ``nn.Linear`` (book §6.3, eq. 6.2).

    ``lora_A`` (r, d_in) is Kaiming-uniform, ``lora_B`` (d_out, r) is zero: the output equals ``base(x)``
    until B is trained. ``generator`` seeds A. :meth:`merge` / :meth:`unmerge` (eq. 6.3) fold the
    update in and out of ``base.weight``; while merged, ``forward`` is just ``base(x)``.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float | None = None, scale: float = 1.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if r < 1:
            raise ValueError(f"the rank r must be at least 1, got {r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)                                            # W stays frozen
        self.r = r
        self.alpha = float(r if alpha is None else alpha)
        self.scaling = self.alpha / r                                           # alpha / r
        w = base.weight
        a = torch.empty(r, base.in_features, dtype=w.dtype)                     # (r, d_in)
        bound = 1 / math.sqrt(base.in_features)             # kaiming_uniform_(a=sqrt(5)), nn.Linear's default
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(w.device))                              # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device))  # (d_out, r)
        self._scale = float(scale)
        self._merged_delta: torch.Tensor | None = None

    @property
    def merged(self) -> bool:
        """Whether the update currently lives inside ``base.weight`` (eq. 6.3)."""
        return self._merged_delta is not None

    @property
    def scale(self) -> float:
        """The inference-time multiplier s of eq. 6.4; setting it while merged re-merges with the new s."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        self._scale = float(value)
        if was_merged:
            self.merge()

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * s * B A, shape (d_out, d_in): what merging adds to W (eq. 6.3)."""
        return (self.scaling * self._scale) * (self.lora_B @ self.lora_A)         # (d_out, r) @ (r, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_in) -> (..., d_out) by eqs. 6.2 and 6.4 (or ``base(x)`` alone while merged)."""
        y = self.base(x)                                                        # (..., d_out)
        if self.merged or self._scale == 0:
            return y
        low = x @ self.lora_A.t()                                               # (..., r)
        return y + (self.scaling * self._scale) * (low @ self.lora_B.t())       # (..., d_out)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + (alpha / r) s B A (eq. 6.3); forward then costs one matmul. Merging twice is an error."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; unmerge it first")
        delta = self.delta_weight().detach().clone()                            # (d_out, d_in)
        self.base.weight += delta
        self._merged_delta = delta

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - (the very delta that was merged) (eq. 6.3): the base weight comes back up to float rounding."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        self.base.weight -= self._merged_delta
        self._merged_delta = None

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scale={self._scale:g}, merged={self.merged}"


def add_lora(model: nn.Module, r: int = 4, alpha: float | None = None,
             targets: tuple[str, ...] = ATTENTION_PROJECTIONS, seed: int = 0, freeze: bool = True) -> list[str]:
    """Replace every ``nn.Linear`` whose qualified name ends with one of ``targets`` by a :class:`LoRALinear`
    (book §6.3). With ``freeze`` every other parameter of ``model`` stops requiring gradients, so only the
    A and B matrices train. ``seed`` seeds the A matrices (one generator, in module order).
    Returns the names of the wrapped layers; a model with none of ``targets`` is an error.
    """
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, r=r, alpha=alpha, generator=generator))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no nn.Linear named like {targets} in {type(model).__name__}")
    return wrapped


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """Every :class:`LoRALinear` inside ``model``, in module order (book §6.3)."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer of ``model`` (eq. 6.3); returns how many were merged."""
    layers = lora_layers(model)
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Unmerge every LoRA layer of ``model`` (eq. 6.3); returns how many were unmerged."""
    layers = lora_layers(model)
    for layer in layers:
        layer.unmerge()
    return len(layers)


def set_lora_scale(model: nn.Module, scale: float) -> None:
    """Set s of eq. 6.4 on every LoRA layer (0 = base model, 1 = full LoRA) (book §6.3)."""
    for layer in lora_layers(model):
        layer.scale = scale


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA matrices (``...lora_A``, ``...lora_B``) of ``model``: what a LoRA file holds (book §6.3)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}


def trainable_share(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts and their ratio (book §6.3: LoRA against full fine-tuning)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "share": trainable / total}
