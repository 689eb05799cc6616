"""Every chapter's models train on a CUDA GPU under the course's autocast (book intro, "Running on a GPU").

For each model (its test-sized config): one forward pass under :func:`diffcourse.device.autocast`
(bfloat16 on a GPU that has it) and one backward pass, on CUDA. The loss must be finite, every
gradient finite and some of them non-zero, and the autocast output must agree with a float32
forward pass of the same weights to bfloat16's precision (8% of the output's scale: the deepest, the VAE,
is 3.5% off under CPU bfloat16 autocast).
Marked ``gpu``: they skip on a machine without CUDA (tests/conftest.py).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch

from diffcourse.device import autocast

pytestmark = pytest.mark.gpu

B = 4


def _toy(dev):
    from diffcourse.models import ToyMLP, ToyMLPConfig
    m = ToyMLP(ToyMLPConfig.tiny())
    return m, (torch.randn(B, 2, device=dev), torch.randint(0, 1000, (B,), device=dev)), {}


def _classifier(dev):
    from diffcourse.models import DigitClassifier, DigitClassifierConfig
    return DigitClassifier(DigitClassifierConfig.tiny()), (torch.randn(B, 1, 8, 8, device=dev),), {}


def _unet(dev):
    from diffcourse.models import UNet, UNetConfig
    return UNet(UNetConfig.tiny()), (torch.randn(B, 1, 8, 8, device=dev), torch.randint(0, 1000, (B,), device=dev)), {}


def _class_unet(dev):
    from diffcourse.models import UNet, UNetConfig
    cfg = UNetConfig(channels=(8, 16), time_dim=16, groups=4, num_classes=10, context_dim=16, conditioning="cross")
    return UNet(cfg), (torch.randn(B, 1, 8, 8, device=dev), torch.randint(0, 1000, (B,), device=dev)), \
        {"class_labels": torch.randint(0, 10, (B,), device=dev)}


def _vae(dev):
    from diffcourse.latent.vae import build_vae

    class Reconstruct(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = build_vae()

        def forward(self, x):
            return self.vae(x).sample                                           # (B, 3, 32, 32)
    return Reconstruct(), (torch.rand(B, 3, 32, 32, device=dev) * 2 - 1,), {}


def _latent_denoiser(dev):
    from diffcourse.latent.text_encoder import build_text_encoder
    from diffcourse.latent.tokenizer import build_tokenizer
    from diffcourse.latent.unet import LatentTextDenoiser, build_unet
    tok = build_tokenizer()
    ids = tok(["a red circle"] * B, padding="max_length", max_length=tok.model_max_length,
              return_tensors="pt").input_ids.to(dev)                            # (B, L)
    return LatentTextDenoiser(build_text_encoder(tok), build_unet()), \
        (torch.randn(B, 4, 8, 8, device=dev), torch.randint(0, 1000, (B,), device=dev), ids), {}


def _controlnet(dev):
    from diffcourse.control.controlnet import ScratchControlNet
    from diffcourse.latent.unet import build_unet

    class Control(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = build_unet()
            self.net = ScratchControlNet(self.unet)

        def forward(self, z, t, c, y):
            down, mid = self.net(z, t, c, y)
            return self.unet(z, t, encoder_hidden_states=c, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]   # (B, 4, 8, 8)
    return Control(), (torch.randn(B, 4, 8, 8, device=dev), torch.randint(0, 1000, (B,), device=dev),
                       torch.randn(B, 5, 64, device=dev), torch.rand(B, 3, 32, 32, device=dev)), {}


def _dit(dev):
    from diffcourse.flow.dit import DiT, DiTConfig
    return DiT(DiTConfig.tiny()), (torch.randn(B, 1, 8, 8, device=dev), torch.rand(B, device=dev)), \
        {"class_labels": torch.randint(0, 10, (B,), device=dev)}


def _video(dev):
    from diffcourse.video.inflate import VideoUNet, VideoUNetConfig
    return VideoUNet(VideoUNetConfig.tiny()), \
        (torch.randn(B, 1, 4, 8, 8, device=dev), torch.randint(0, 1000, (B,), device=dev)), {}


MODELS: dict[str, Callable] = {
    "ch02 toy MLP": _toy, "ch02 digit classifier": _classifier, "ch03 U-Net": _unet,
    "ch04 VAE": _vae, "ch04 latent text denoiser": _latent_denoiser, "ch05 class-conditional U-Net": _class_unet,
    "ch06 ControlNet": _controlnet, "ch07 DiT": _dit, "ch08 video U-Net": _video,
}


def forward_backward(name: str, device: str = "cuda") -> dict:
    """Build ``name`` (seeded), compare its autocast and float32 outputs, and backpropagate the autocast loss."""
    torch.manual_seed(0)
    model, args, kwargs = MODELS[name](device)
    model = model.to(device).eval()                 # no dropout: both passes see the same network
    for p in model.parameters():                     # zero-initialised output layers would hide the comparison
        if p.dim() > 1 and not p.abs().any():
            torch.nn.init.normal_(p, std=0.02)
    with torch.no_grad():
        ref = model(*args, **kwargs).float()                                   # float32 forward
    with autocast(device):
        out = model(*args, **kwargs)                                           # bfloat16 where supported
    loss = out.float().pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    return {"ref": ref, "out": out.float().detach(), "loss": loss.detach(), "grads": grads, "dtype": out.dtype}


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_and_backward_on_cuda_with_autocast(name):
    r = forward_backward(name, "cuda")
    assert torch.isfinite(r["loss"]), f"{name}: loss {r['loss']} is not finite under autocast"
    assert r["grads"] and all(torch.isfinite(g).all() for g in r["grads"]), f"{name}: non-finite gradients"
    assert any(g.abs().sum() > 0 for g in r["grads"]), f"{name}: every gradient is zero"
    scale = r["ref"].abs().max().item()
    err = (r["out"] - r["ref"]).abs().max().item()
    assert err <= 0.08 * scale + 1e-3, (
        f"{name}: autocast ({r['dtype']}) output differs from float32 by {err:.3g} (output scale {scale:.3g})")
