"""Book §7.4 and §7.8: the ``toy-fm`` and ``dit-digits`` subcommands train, save and reload flow models."""
from __future__ import annotations

import pytest
import torch

from diffcourse.flow.dit import DiT
from diffcourse.flow.exact import GaussianMixtureVelocity
from diffcourse.flow.train_toy import velocity_fn
from diffcourse.gmm import eight_gaussians_mixture
from diffcourse.models import ToyMLP
from diffcourse.train import main
from diffcourse.training import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_toy_fm_learns_the_exact_velocity(tmp_path):
    out = tmp_path / "toy_fm.safetensors"
    assert main(["toy-fm", "--dataset", "eight_gaussians", "--out", str(out), "--steps", "400"]) == 0
    model, meta = load_checkpoint(out, "cpu")
    assert isinstance(model, ToyMLP) and meta["schedule"] is None and meta["prediction_type"] == "flow_prediction"
    assert meta["command"].startswith("python -m diffcourse.train toy-fm --dataset eight_gaussians")
    gmm = eight_gaussians_mixture()
    g = torch.Generator().manual_seed(0)
    x0, eps = gmm.sample(2000, g).float(), torch.randn(2000, 2, generator=g)
    t = torch.full((2000,), 0.5)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    exact = GaussianMixtureVelocity(gmm)(x_t, t)
    with torch.no_grad():
        learned = velocity_fn(model)(x_t, t)
    err, scale = (learned - exact).pow(2).mean().item(), exact.pow(2).mean().item()
    assert err < 0.2 * scale, f"after 400 steps the learned v should be near the exact v* at t = 0.5: mse {err:.3f} vs |v*|^2 {scale:.3f}"


def test_dit_digits_subcommand_writes_a_reloadable_flow_checkpoint(tmp_path):
    out = tmp_path / "dit.safetensors"
    assert main(["dit-digits", "--out", str(out), "--preset", "tiny", "--steps", "20", "--batch-size", "16"]) == 0
    model, meta = load_checkpoint(out, "cpu")
    assert isinstance(model, DiT) and meta["schedule"] is None and meta["T"] is None
    assert meta["prediction_type"] == "flow_prediction" and meta["config"]["hidden_size"] == 32
    with torch.no_grad():
        v = model(torch.zeros(3, 1, 8, 8), torch.full((3,), 0.5), torch.tensor([0, 5, 10]))
    assert v.shape == (3, 1, 8, 8) and v.abs().max() > 0, "20 steps should have moved the zero-initialised output"
