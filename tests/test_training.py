"""Embeddings, the toy MLP, EMA, the training loop and checkpoints (book §2.1).

Files under test: diffcourse/models/{embeddings,mlp}.py, diffcourse/ema.py, diffcourse/training.py.
"""
from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from diffcourse.data.toys import sample_toy
from diffcourse.ema import EMA, ema_decay
from diffcourse.models import ToyMLP, ToyMLPConfig, build_model, config_of
from diffcourse.models.embeddings import TimeMLP, sinusoidal_embedding
from diffcourse.schedules import make_schedule
from diffcourse.training import (TrainConfig, load_checkpoint, read_metadata, save_checkpoint,
                                 schedule_of, train)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0) -> ToyMLP:
    torch.manual_seed(seed)
    return ToyMLP(ToyMLPConfig.tiny())


def moons(n: int, g: torch.Generator) -> torch.Tensor:
    return sample_toy("two_moons", n, g)


# ----------------------------------------------------------------------------- embeddings

def test_sinusoidal_embedding_shape_and_values():
    t = torch.tensor([0, 1, 10, 999])
    emb = sinusoidal_embedding(t, 32)
    assert emb.shape == (4, 32) and emb.dtype == torch.float32, f"expected (4, 32) float32, got {emb.shape} {emb.dtype}"
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(16), torch.zeros(16)]),
                               msg="t=0 should embed as cos(0)=1 (first half) and sin(0)=0 (second half)")
    # column 0 has frequency 1, column 15 the lowest frequency 10000^(-15/16)
    torch.testing.assert_close(emb[:, 0], torch.cos(t.float()), msg="column 0 should be cos(t * 1)")
    torch.testing.assert_close(emb[:, 31], torch.sin(t.float() * 10000 ** (-15 / 16)),
                               msg="last column should be sin(t * 10000^(-15/16))")
    odd = sinusoidal_embedding(t, 7)
    assert odd.shape == (4, 7) and bool((odd[:, -1] == 0).all()), "odd dim: expected a zero last column"
    torch.testing.assert_close(sinusoidal_embedding(t.float(), 32), emb, msg="long and float t must agree")


def test_sinusoidal_embedding_matches_diffusers():
    """Same convention as diffusers' Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0), UNet2DModel's default."""
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 3.5, 17.0, 500.0, 999.0])
    for dim in (8, 32, 33):
        ours = sinusoidal_embedding(t, dim)
        theirs = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5,
                                   msg=f"dim={dim}: our embedding differs from diffusers' get_timestep_embedding")


def test_time_mlp_shape():
    out = TimeMLP(16, 24)(torch.arange(5))
    assert out.shape == (5, 24), f"TimeMLP(16, 24) on 5 timesteps should give (5, 24), got {tuple(out.shape)}"


# ----------------------------------------------------------------------------- the toy model

def test_toy_mlp_shapes_and_zero_init():
    model = tiny_model()
    x_t = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    for t in (torch.randint(0, 1000, (10,), generator=torch.Generator().manual_seed(1)),
              torch.rand(10, generator=torch.Generator().manual_seed(2)) * 999, torch.tensor(5)):
        out = model(x_t, t)
        assert out.shape == (10, 2), f"ToyMLP(x_t (10, 2), t {tuple(t.shape)} {t.dtype}) gave {tuple(out.shape)}"
        assert bool((out == 0).all()), "a fresh ToyMLP should predict exactly 0 (zero-initialised output layer)"


def test_build_model_round_trip():
    model = tiny_model()
    name, config = config_of(model)
    assert name == "ToyMLP" and config == ToyMLPConfig.tiny().to_dict(), f"config_of gave {name}, {config}"
    rebuilt = build_model(name, config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(KeyError, match="MODELS"):
        build_model("NoSuchNet", {})


# ----------------------------------------------------------------------------- EMA

def test_ema_decay_warmup():
    got = [ema_decay(s, 0.999) for s in (1, 2, 9, 81, 10**6)]
    want = [0.0, 2 / 11, 0.5, 0.9, 0.999]
    assert got == pytest.approx(want), f"ema_decay with warm-up: expected {want}, got {got}"


def test_ema_math_by_hand():
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)                              # step 1: a plain copy
    assert bool((ema.shadow["weight"] == 1).all()), f"first update should copy, got {ema.shadow['weight']}"
    with torch.no_grad():
        model.weight.fill_(3.0)
    d = ema.update(model)                          # step 2: decay min(0.5, 2/11)
    assert d == pytest.approx(2 / 11)
    want = 2 / 11 * 1.0 + 9 / 11 * 3.0
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), want),
                               msg=f"shadow should be d*1 + (1-d)*3 = {want:.4f} with d = 2/11")
    target = nn.Linear(2, 1)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight.data, torch.full((1, 2), want), msg="copy_to did not write the average")
    restored = EMA(nn.Linear(2, 1))
    restored.load_state_dict(ema.state_dict())
    assert restored.step == 2 and torch.equal(restored.shadow["weight"], ema.shadow["weight"]), "state dict round trip"


def test_ema_matches_diffusers_ema_model():
    from diffusers.training_utils import EMAModel

    model = tiny_model()
    ours = EMA(model, decay=0.9)
    theirs = EMAModel(model.parameters(), decay=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        ours.update(model)
        theirs.step(model.parameters())
    for (name, _), s_theirs in zip(model.named_parameters(), theirs.shadow_params):
        torch.testing.assert_close(ours.shadow[name], s_theirs, atol=1e-6, rtol=1e-5,
                                   msg=f"EMA of {name} differs from diffusers' EMAModel after 30 steps")


# ----------------------------------------------------------------------------- the loop

def test_training_reduces_the_loss_quickly():
    schedule = make_schedule("linear", 1000)
    result = train(tiny_model(), moons, schedule, TrainConfig(steps=400, batch_size=256, lr=3e-3, progress=False))
    h = result.history
    assert len(h.loss) == len(h.lr) == len(h.grad_norm) == 400, "history should hold one entry per step"
    first, last = sum(h.loss[:20]) / 20, h.final_loss(100)
    assert first > 0.8, f"a zero-initialised model starts near loss 1 (E[eps^2]); first 20 steps averaged {first:.3f}"
    assert last < 0.4, f"400 steps on two moons should bring the loss from ~1 to < 0.4 (~0.25 here); got {last:.3f} " \
                        f"(first 20 steps: {first:.3f}). Look at diffcourse/training.py's loop"
    assert h.lr[0] < h.lr[99] and h.lr[-1] < 1e-5, "lr should warm up, then decay to ~0"
    assert h.seconds < 20, f"400 tiny steps took {h.seconds:.1f} s; the loop has an overhead problem"


def test_training_is_seeded():
    """Same seed, same thread count, same machine: identical losses and bitwise identical weights."""
    schedule = make_schedule("linear", 100)
    cfg = TrainConfig(steps=40, batch_size=64, progress=False, seed=3)
    a, b = (train(tiny_model(), moons, schedule, cfg) for _ in range(2))
    assert a.history.loss == b.history.loss, "two runs with the same seed gave different losses"
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), f"parameter {name} differs between two identically seeded runs"
    c = train(tiny_model(), moons, schedule, TrainConfig(steps=40, batch_size=64, progress=False, seed=4))
    assert c.history.loss != a.history.loss, "a different seed should draw different batches and noise"


class LabelledToy(nn.Module):
    """A ToyMLP that also takes class labels, to test the model_kwargs hook."""

    def __init__(self):
        super().__init__()
        self.net = ToyMLP(ToyMLPConfig.tiny())
        self.label = nn.Embedding(2, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x_t, t, class_labels):
        self.seen.append(class_labels)
        return self.net(x_t + self.label(class_labels), t)


def test_every_data_source_and_the_model_kwargs_hook():
    torch.manual_seed(0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    schedule = make_schedule("linear", 100)
    cfg = TrainConfig(steps=3, batch_size=16, progress=False)
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False)
    sources = {"tensor": x, "Dataset": torch.utils.data.TensorDataset(x),
               "DataLoader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16),
               "callable": lambda n, g: x[torch.randint(len(x), (n,), generator=g)]}
    for kind, source in sources.items():
        result = train(tiny_model(), source, schedule, cfg)
        assert len(result.history.loss) == 3, f"data source {kind} did not give 3 training steps"
    model = LabelledToy()
    train(model, loader, schedule, cfg, model_kwargs=lambda b: {"class_labels": b[1]})
    assert len(model.seen) == 3 and torch.equal(model.seen[0], y[:16]), \
        "model_kwargs should pass batch[1] of a DataLoader batch as class_labels"
    with pytest.raises(TypeError, match="DataLoader"):
        train(tiny_model(), 42, schedule, cfg)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path):
    schedule = make_schedule("cosine", 200)
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)                              # not the zero-output fresh model
    path = save_checkpoint(tmp_path / "m.safetensors", model, schedule=schedule,
                           prediction_type="v_prediction", dataset="two_moons", steps=7, command="python -m x")
    loaded, meta = load_checkpoint(path, "cpu")
    x_t, t = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    torch.testing.assert_close(loaded(x_t, t), model(x_t, t), rtol=0, atol=0,
                               msg="a reloaded checkpoint must give exactly the same outputs")
    assert not loaded.training, "load_checkpoint should return the model in eval mode"
    want = {"model_class": "ToyMLP", "config": ToyMLPConfig.tiny().to_dict(), "schedule": "cosine", "T": 200,
            "prediction_type": "v_prediction", "dataset": "two_moons", "steps": 7, "command": "python -m x"}
    assert {k: meta[k] for k in want} == want, f"metadata should hold {want}, got {meta}"
    torch.testing.assert_close(schedule_of(meta).alpha_bar, schedule.alpha_bar, msg="schedule_of(meta)")
    again = save_checkpoint(tmp_path / "again.safetensors", model, schedule=schedule, prediction_type="v_prediction",
                            dataset="two_moons", steps=7, command="python -m x")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (path, again)]
    assert digest[0] == digest[1], "saving the same model twice should give the same bytes (sorted JSON metadata)"


def test_read_metadata_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="save_checkpoint"):
        read_metadata(tmp_path / "foreign.safetensors")
