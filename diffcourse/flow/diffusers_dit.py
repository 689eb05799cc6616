"""The course's DiT beside diffusers' ``DiTTransformer2DModel`` (book §7.8).

:func:`build_diffusers_dit` makes the diffusers model of the same shape as a :class:`~.dit.DiTConfig`
(same width, depth, heads, patch size and classes); :class:`DiffusersVelocity` calls it the way the
course calls its own DiT, ``model(x_t, t, class_labels)`` with t in [0, 1] (diffusers' timestep = 1000 t).

The two differ where the book points:

- **initialisation**: diffusers keeps PyTorch's default init for each block's ``norm1.linear`` (the
  adaLN modulation: shift, scale and gate) and for ``proj_out_1``/``proj_out_2``; the course zeroes them
  (adaLN-Zero, eq. 7.16), so a fresh course DiT is the identity on its residual stream and outputs 0,
  while a fresh diffusers DiT does neither (:func:`adaln_weight_norms`, tested);
- **conditioning**: every diffusers block embeds (t, y) itself (its own ``CombinedTimestepLabelEmbeddings``,
  256 sinusoidal features), the course computes c once and shares it, so diffusers' model has more
  parameters at the same width and depth.
"""
from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel
from torch import nn

from .dit import DiT, DiTConfig

__all__ = ["build_diffusers_dit", "DiffusersVelocity", "adaln_weight_norms"]


def build_diffusers_dit(config: DiTConfig, seed: int = 0) -> DiTTransformer2DModel:
    """A randomly initialised ``DiTTransformer2DModel`` shaped like ``config`` (book §7.8). Seeded with ``seed``."""
    if not config.num_classes:
        raise ValueError("DiTTransformer2DModel is class-conditional: it needs num_classes > 0")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiTTransformer2DModel(
            num_attention_heads=config.num_heads, attention_head_dim=config.hidden_size // config.num_heads,
            in_channels=config.in_channels, out_channels=config.in_channels, num_layers=config.depth,
            sample_size=config.input_size, patch_size=config.patch_size, num_embeds_ada_norm=config.num_classes,
            norm_type="ada_norm_zero", activation_fn="gelu-approximate", norm_eps=1e-6)


class DiffusersVelocity(nn.Module):
    """``model(x_t, t, class_labels)`` -> velocity, for a diffusers DiT (book §7.8): t in [0, 1], timestep 1000 t.

    ``class_labels`` None means "no class" for all (diffusers' null label is ``num_embeds_ada_norm``).
    """

    def __init__(self, transformer: DiTTransformer2DModel):
        super().__init__()
        self.transformer = transformer

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        n = len(x_t)
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        t = t.expand(n) if t.ndim == 0 else t                                            # (N,)
        if class_labels is None:
            class_labels = torch.full((n,), self.transformer.config.num_embeds_ada_norm, device=x_t.device)
        out = self.transformer(x_t, timestep=1000 * t, class_labels=class_labels.long()).sample  # (N, C, H, W)
        return out


def adaln_weight_norms(model: nn.Module) -> dict[str, float]:
    """Largest ``|weight|`` of every adaLN modulation Linear and of the output projection (book §7.8, eq. 7.16).

    All zeros for a fresh course :class:`~.dit.DiT` (adaLN-Zero); not for diffusers' DiT. Keys name the layers.
    """
    if isinstance(model, DiffusersVelocity):
        model = model.transformer
    if isinstance(model, DiT):
        layers = {f"blocks.{i}.adaLN_modulation": b.adaLN_modulation[-1] for i, b in enumerate(model.blocks)}
        layers["final_layer.adaLN_modulation"] = model.final_layer.adaLN_modulation[-1]
        layers["final_layer.linear"] = model.final_layer.linear
    elif isinstance(model, DiTTransformer2DModel):
        layers = {f"transformer_blocks.{i}.norm1.linear": b.norm1.linear
                  for i, b in enumerate(model.transformer_blocks)}
        layers["proj_out_1"], layers["proj_out_2"] = model.proj_out_1, model.proj_out_2
    else:
        raise TypeError(f"expected a course DiT or a diffusers DiTTransformer2DModel, got {type(model).__name__}")
    return {name: float(layer.weight.detach().abs().max()) for name, layer in layers.items()}
