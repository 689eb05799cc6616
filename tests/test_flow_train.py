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


# ----------------------------------------------------------------------------- consistency distillation (§7.9)

def test_consistency_function_has_the_boundary_condition_and_the_loss_its_fixed_point():
    from diffcourse.flow.consistency import cd_loss, consistency_fn
    from diffcourse.gmm import GaussianMixture

    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    f = consistency_fn(lambda x, t: torch.full_like(x, 3.0))
    assert torch.equal(f(x, torch.zeros(7)), x), "f(x, 0) = x must hold for any F (eq. 7.18)"
    assert torch.allclose(f(x, torch.full((7,), 0.5)), x - 1.5), "f(x, t) = x - t F(x, t)"
    point = GaussianMixture([1.0], torch.tensor([[1.0, -1.0]]), 1e-6 * torch.eye(2)[None])
    v_point = GaussianMixtureVelocity(point)
    x0 = point.sample(512, torch.Generator().manual_seed(1)).float()
    # towards one point the exact ODE is a straight line, so its one-step jump x - t v* is consistent already
    assert cd_loss(v_point, v_point, x0, torch.Generator().manual_seed(2)).item() < 1e-6
    gmm = eight_gaussians_mixture()
    v8 = GaussianMixtureVelocity(gmm)
    x8 = gmm.sample(512, torch.Generator().manual_seed(1)).float()
    assert cd_loss(v8, v8, x8, torch.Generator().manual_seed(2)).item() > 1e-3, \
        "with several modes the teacher's one-step jump is not consistent: the loss must see it"


def test_cd_loss_sends_gradients_through_the_online_branch_only():
    from diffcourse.flow.consistency import cd_loss

    w = torch.tensor(0.5, requires_grad=True)
    teacher = lambda x, t: -x                                                  # noqa: E731
    student = lambda x, t: w * x                                               # noqa: E731
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    loss = cd_loss(student, teacher, x0, torch.Generator().manual_seed(1))
    loss.backward()
    assert w.grad is not None and w.grad.abs() > 0
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = cd_loss(student, teacher, x0, g1).item()
    assert a == cd_loss(student, teacher, x0, g2).item(), "the same generator state gives the same loss"


def test_consistency_sampling_costs_one_call_per_time():
    from diffcourse.flow.consistency import sample_consistency

    calls = []

    def F(x, t):
        calls.append(float(t[0]))
        return x
    x1 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    out = sample_consistency(F, x1, [1.0, 0.5, 0.25, 0.0], torch.Generator().manual_seed(1))
    assert calls == [1.0, 0.5, 0.25] and out.shape == x1.shape
    calls.clear()
    assert torch.allclose(sample_consistency(F, x1, [1.0]), torch.zeros_like(x1)) and calls == [1.0], \
        "one step from t = 1 is f(x, 1) = x - F(x, 1)"
