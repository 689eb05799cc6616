"""LoRA with peft and diffusers on the course's U-Net, and the check that it is eq. 6.2 (book §6.4).

The same layer as :mod:`diffcourse.control.lora`, as the libraries ship it::

    unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))

wraps each attention projection in a ``peft.tuners.lora.Linear`` computing
``base(x) + lora_B(lora_A(x)) * (lora_alpha / r)`` -- eq. 6.2 with ``lora_A.weight`` = A (r, d_in) and
``lora_B.weight`` = B (d_out, r), B zero at init. :func:`copy_scratch_to_peft` copies the course's A and B
into peft's layers, so that :func:`max_disagreement` can compare the two U-Nets numerically.

The pipeline round trip (book §6.4): :func:`save_unet_lora` writes only the adapter with
``StableDiffusionPipeline.save_lora_weights`` into a local folder (``pytorch_lora_weights.safetensors``);
``pipe.load_lora_weights(folder, adapter_name=...)`` reads it back, ``pipe.set_adapters(names, weights)``
sets the scale s of each LoRA (two LoRAs combine as a weighted sum of their updates, eq. 6.4), and
``pipe.fuse_lora(lora_scale=s)`` merges them into the weights (eq. 6.3; ``unfuse_lora`` takes them out, eq. 6.3).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .lora import ATTENTION_PROJECTIONS, LoRALinear

__all__ = ["LORA_FILE", "lora_config", "add_peft_lora", "peft_lora_layers", "copy_scratch_to_peft",
           "max_disagreement", "save_unet_lora", "lora_file_size", "full_model_size"]

#: The file ``save_lora_weights`` writes in its folder (diffusers' name).
LORA_FILE = "pytorch_lora_weights.safetensors"


def lora_config(r: int = 4, alpha: float | None = None, targets: tuple[str, ...] = ATTENTION_PROJECTIONS):
    """``peft.LoraConfig`` for eq. 6.2 on the attention projections, B zero at init (book §6.4)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=float(r if alpha is None else alpha), target_modules=list(targets),
                      init_lora_weights=True, lora_dropout=0.0, bias="none")


def add_peft_lora(unet, r: int = 4, alpha: float | None = None, adapter_name: str = "default",
                  targets: tuple[str, ...] = ATTENTION_PROJECTIONS, seed: int = 0):
    """Freeze the U-Net and ``unet.add_adapter(lora_config(...), adapter_name)`` (book §6.4).

    ``seed`` seeds peft's random A matrices. Returns the U-Net (changed in place).
    """
    unet.requires_grad_(False)
    torch.manual_seed(seed)
    unet.add_adapter(lora_config(r, alpha, targets), adapter_name=adapter_name)
    return unet


def peft_lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: peft LoRA layer}`` for every module of ``model`` that peft wrapped (book §6.4)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def copy_scratch_to_peft(scratch: nn.Module, peft_model: nn.Module, adapter_name: str = "default") -> int:
    """Copy A and B of every :class:`~diffcourse.control.lora.LoRALinear` of ``scratch`` into the peft layer of
    the same name in ``peft_model`` (same architecture), and the base weights too (book §6.4).

    Raises if a layer's rank or alpha / r differs. Returns the number of layers copied.
    """
    theirs = peft_lora_layers(peft_model)
    count = 0
    for name, ours in scratch.named_modules():
        if not isinstance(ours, LoRALinear):
            continue
        layer = theirs[name]
        if layer.r[adapter_name] != ours.r or abs(layer.scaling[adapter_name] - ours.scaling) > 1e-12:
            raise ValueError(f"{name}: peft has r={layer.r[adapter_name]}, alpha/r={layer.scaling[adapter_name]}; "
                             f"the course's layer has r={ours.r}, alpha/r={ours.scaling}")
        layer.lora_A[adapter_name].weight.copy_(ours.lora_A)                    # (r, d_in)
        layer.lora_B[adapter_name].weight.copy_(ours.lora_B)                    # (d_out, r)
        layer.base_layer.weight.copy_(ours.base.weight)
        if ours.base.bias is not None:
            layer.base_layer.bias.copy_(ours.base.bias)
        count += 1
    if count == 0:
        raise ValueError("the first model has no LoRALinear layers to copy")
    return count


@torch.no_grad()
def max_disagreement(unet_a, unet_b, generator: torch.Generator | None = None, batch: int = 4) -> float:
    """Largest ``|eps_a - eps_b|`` of two U-Nets on the same random (z_t, t, c) (book §6.4)."""
    cfg = unet_a.config
    g = generator or torch.Generator().manual_seed(0)
    z = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)   # (N, 4, h, w)
    t = torch.randint(0, 1000, (batch,), generator=g)                                          # (N,)
    c = torch.randn(batch, 7, cfg.cross_attention_dim, generator=g)                            # (N, L, d)
    a = unet_a(z, t, encoder_hidden_states=c).sample
    b = unet_b(z, t, encoder_hidden_states=c).sample
    return float((a - b).abs().max())


def save_unet_lora(pipe, folder: str | Path, adapter_name: str = "default") -> Path:
    """Write the U-Net's LoRA (only A and B) with ``save_lora_weights`` into ``folder`` (book §6.4).

    The adapter's config (r, ``lora_alpha``) is saved as the file's metadata: without it the loader only
    sees the shapes of A and B and takes alpha = r, silently changing alpha / r (a trap of §6.4).
    Returns the path of the safetensors file; ``pipe.load_lora_weights(folder)`` reads it back.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(pipe.unet, adapter_name=adapter_name)
    folder = Path(folder)
    metadata = pipe.unet.peft_config[adapter_name].to_dict()     # r and lora_alpha: without them the
    type(pipe).save_lora_weights(str(folder), unet_lora_layers=convert_state_dict_to_diffusers(state),  # loader
                                 unet_lora_adapter_metadata=metadata, safe_serialization=True)  # assumes alpha = r
    return folder / LORA_FILE


def lora_file_size(folder: str | Path) -> int:
    """Bytes of the LoRA file written by :func:`save_unet_lora` (book §6.4)."""
    return (Path(folder) / LORA_FILE).stat().st_size


def full_model_size(unet, folder: str | Path) -> int:
    """Bytes of the U-Net's full ``save_pretrained`` (float32 safetensors): what full fine-tuning ships (book §6.4)."""
    folder = Path(folder)
    unet.save_pretrained(str(folder), safe_serialization=True)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))
