"""Denoising networks (book §2.1 toy MLP; later chapters add the U-Net of §3).

``MODELS`` maps a class name, as stored in a checkpoint, to the model class and its config
dataclass, so a checkpoint can be rebuilt from its metadata with :func:`build_model`.
Later chapters register their models here.
"""
from __future__ import annotations

from torch import nn

from .embeddings import TimeMLP, sinusoidal_embedding
from .classifier import DigitClassifier, DigitClassifierConfig
from .mlp import ToyMLP, ToyMLPConfig
from .attention import CrossAttention, SelfAttention, attention
from .unet import UNet, UNetConfig

__all__ = ["MODELS", "attention", "SelfAttention", "CrossAttention", "build_model", "config_of", "sinusoidal_embedding", "TimeMLP", "ToyMLP", "ToyMLPConfig",
           "UNet", "UNetConfig", "DigitClassifier", "DigitClassifierConfig"]

MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "ToyMLP": (ToyMLP, ToyMLPConfig),
    "UNet": (UNet, UNetConfig),                          # §2.1 digits, §3 (and class-conditional)
    "DigitClassifier": (DigitClassifier, DigitClassifierConfig),  # §2.3 the digit FID
}


def _register_late() -> None:
    """Register models defined outside this package on first use: the DiT of book §7.7 (diffcourse.flow), the
    video U-Net and spacetime DiT of book §8.4 and §8.7 (diffcourse.video).
    Importing it at the top would be circular, since it is built from this package's layers."""
    if "DiT" not in MODELS:
        from ..flow.dit import DiT, DiTConfig

        MODELS["DiT"] = (DiT, DiTConfig)
    if "VideoUNet" not in MODELS:                                    # book §8.4
        from ..video.inflate import VideoUNet, VideoUNetConfig

        MODELS["VideoUNet"] = (VideoUNet, VideoUNetConfig)
    if "SpacetimeDiT" not in MODELS:                                 # book §8.7
        from ..video.spacetime import SpacetimeDiT, SpacetimeDiTConfig

        MODELS["SpacetimeDiT"] = (SpacetimeDiT, SpacetimeDiTConfig)


def build_model(class_name: str, config: dict) -> nn.Module:
    """A freshly initialised model from its class name and config dict (book §2.1, loading checkpoints)."""
    _register_late()
    if class_name not in MODELS:
        raise KeyError(f"unknown model class {class_name!r}; registered: {sorted(MODELS)} "
                       f"(add new models to MODELS in diffcourse/models/__init__.py)")
    model_cls, config_cls = MODELS[class_name]
    return model_cls(config_cls(**config))


def config_of(model: nn.Module) -> tuple[str, dict]:
    """The (class name, config dict) pair that :func:`build_model` turns back into ``model``'s architecture."""
    name = type(model).__name__
    _register_late()
    if name not in MODELS:
        raise KeyError(f"model class {name!r} is not registered in diffcourse.models.MODELS")
    return name, model.config.to_dict()
