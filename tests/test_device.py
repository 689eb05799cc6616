"""Device helpers (diffcourse/device.py; book intro, "Running on a GPU")."""
from __future__ import annotations

import pathlib

import pytest
import torch

from diffcourse import device as dev

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_default_device_without_override(monkeypatch):
    monkeypatch.delenv(dev.ENV_VAR, raising=False)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    got = dev.default_device()
    assert got.type == want, f"default_device() should be {want} here (cuda available: " \
                             f"{torch.cuda.is_available()}), got {got}; see diffcourse/device.py"


def test_env_var_forces_cpu(monkeypatch):
    monkeypatch.setenv(dev.ENV_VAR, "cpu")
    assert dev.default_device() == torch.device("cpu"), \
        f"{dev.ENV_VAR}=cpu should force the CPU, got {dev.default_device()}"
    assert "forced by" in dev.describe(), f"describe() should say the device was forced: {dev.describe()!r}"


def test_env_var_rejects_nonsense(monkeypatch):
    monkeypatch.setenv(dev.ENV_VAR, "gpu-please")
    with pytest.raises(RuntimeError, match=dev.ENV_VAR):
        dev.default_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_env_var_cuda_without_cuda_fails_clearly(monkeypatch):
    monkeypatch.setenv(dev.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="torch.cuda.is_available"):
        dev.default_device()


def test_cpu_autocast_is_a_no_op():
    a = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    b = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    with dev.autocast("cpu"):
        out = a @ b
        enabled = torch.is_autocast_enabled("cpu")
    assert out.dtype == torch.float32, f"autocast('cpu') must keep float32 matmuls, got {out.dtype}"
    assert not enabled, "autocast('cpu') must not switch on CPU autocast (bf16 on CPU is slow and inexact)"
    torch.testing.assert_close(out, a @ b, rtol=0, atol=0)


def test_cpu_mixed_precision_and_description():
    assert dev.mixed_precision_for("cpu") == "no", \
        f"mixed_precision_for('cpu') should be 'no', got {dev.mixed_precision_for('cpu')!r}"
    assert dev.mixed_precision_for(torch.zeros(1)) == "no", "a CPU tensor should count as the CPU"
    line = dev.describe("cpu")
    assert "cpu" in line and "float32" in line and "\n" not in line, f"describe('cpu') gave {line!r}"


def test_no_hard_coded_cuda_calls_in_package():
    """The package derives devices from inputs; a literal CUDA move breaks every CPU student."""
    pkg = pathlib.Path(dev.__file__).parent
    pattern = "." + "cuda()"
    offenders = [str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if pattern in p.read_text(encoding="utf-8")]
    assert not offenders, f"hard-coded {pattern} in {offenders}; use .to(x.device) or diffcourse.device"


@pytest.mark.gpu
@needs_cuda
def test_gpu_autocast_and_training_step(monkeypatch):
    """On a GPU: bf16 autocast, accelerate's 'bf16', and a few training steps with finite loss."""
    from diffcourse.models import ToyMLP, ToyMLPConfig
    from diffcourse.schedules import make_schedule
    from diffcourse.training import TrainConfig, train

    monkeypatch.delenv(dev.ENV_VAR, raising=False)
    device = dev.default_device()
    assert device.type == "cuda", f"default_device() should pick CUDA when present, got {device}"
    expect = "bf16" if torch.cuda.is_bf16_supported() else "no"
    assert dev.mixed_precision_for(device) == expect
    a = torch.randn(16, 16, device=device)
    with dev.autocast(device):
        out = a @ a
    assert out.dtype == (torch.bfloat16 if expect == "bf16" else torch.float32), f"got {out.dtype}"

    torch.manual_seed(0)
    model = ToyMLP(ToyMLPConfig.tiny())
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    result = train(model, data, make_schedule("linear", 100),
                   TrainConfig(steps=20, batch_size=64, progress=False, device="cuda"))
    assert next(result.model.parameters()).device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(result.history.loss))), result.history.loss
