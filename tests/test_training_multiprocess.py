"""The training loop on two processes (``accelerate launch``, gloo on the CPU) trains like one (book §2.1).

The tiny toy MLP is trained twice with the same command and seed, 300 steps on two moons: once as
``python -m diffcourse.train toy`` (in this process) and once under
``accelerate launch --multi_gpu --num_processes 2`` (two ranks, each drawing half of every batch,
gradients averaged by DDP over gloo). The two runs see different random draws, so their weights
differ, but the loss they reach must agree within a tolerance, on the training loss (the mean of
the last 200 steps) and on a fixed held-out evaluation batch; and the checkpoint written by the
main rank must have exactly the single-process format (keys, shapes, dtypes, metadata keys) and
load with the same loader.

Files under test: diffcourse/training.py (the rank-aware loop), diffcourse/train.py (rank 0 writes).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from diffcourse.data.toys import sample_toy
from diffcourse.forward import diffusion_loss
from diffcourse.train import main as train_main
from diffcourse.training import load_checkpoint, read_metadata, schedule_of

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
ARGS = ["toy", "--dataset", "two_moons", "--preset", "tiny", "--steps", "300", "--batch-size", "256",
        "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensors(path: Path) -> dict[str, tuple[tuple, torch.dtype]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: (tuple(f.get_tensor(k).shape), f.get_tensor(k).dtype) for k in f.keys()}


def _eval_loss(path: Path) -> float:
    """The simple loss (eq. 1.10) of the checkpoint's model on one fixed batch of 4096 fresh points."""
    model, meta = load_checkpoint(path, "cpu")
    g = torch.Generator().manual_seed(1234)
    x0 = sample_toy("two_moons", 4096, g)                                          # (4096, 2)
    with torch.no_grad():
        return float(diffusion_loss(model, x0, schedule_of(meta), g, prediction_type=meta["prediction_type"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    one, two = tmp / "one.safetensors", tmp / "two.safetensors"
    train_main(ARGS + ["--out", str(one)])
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(_free_port()), "-m", "diffcourse.train", *ARGS, "--out", str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return {"one": one, "two": two, "proc": proc}


def test_two_processes_ran_and_only_the_main_one_wrote(runs):
    meta = read_metadata(runs["two"])
    assert meta["command"].startswith("accelerate launch --multi_gpu --num_processes 2 -m diffcourse.train toy"), (
        f"the checkpoint must record that two processes made it (and how to do it again): {meta['command']}")
    wrote = [line for line in runs["proc"].stdout.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1, f"only the main rank reports and writes the checkpoint; got {wrote}"
    assert read_metadata(runs["one"])["command"].startswith("python -m diffcourse.train toy"), \
        "a plain run must keep its plain reproduce command"


def test_the_loss_matches_one_process(runs):
    one, two = read_metadata(runs["one"])["final_loss"], read_metadata(runs["two"])["final_loss"]
    assert one < 0.4 and two < 0.4, f"300 steps should bring the loss from ~1 to ~0.27; got one={one}, two={two}"
    assert abs(two - one) < 0.15 * one, (
        f"two processes (half a batch each, gradients averaged) must train like one: final loss {two:.4f} "
        f"vs {one:.4f} (tolerance 15%)")
    e1, e2 = _eval_loss(runs["one"]), _eval_loss(runs["two"])
    assert abs(e2 - e1) < 0.15 * e1, f"held-out loss of the EMA models: two processes {e2:.4f} vs one {e1:.4f}"
    w1, _ = load_checkpoint(runs["one"], "cpu")
    w2, _ = load_checkpoint(runs["two"], "cpu")
    assert any(not torch.equal(a, b) for a, b in zip(w1.state_dict().values(), w2.state_dict().values())), (
        "the two-process run drew other batches, so its weights cannot equal the single run's: "
        "did it run on one process?")


def test_the_checkpoint_format_is_the_same(runs):
    assert _tensors(runs["two"]) == _tensors(runs["one"]), "same tensor names, shapes and dtypes expected"
    m1, m2 = read_metadata(runs["one"]), read_metadata(runs["two"])
    assert sorted(m1) == sorted(m2), f"metadata keys differ: {sorted(m1)} vs {sorted(m2)}"
    assert {k: v for k, v in m1.items() if k not in ("command", "final_loss")} == \
        {k: v for k, v in m2.items() if k not in ("command", "final_loss")}, "model config, schedule and the rest agree"
    model, meta = load_checkpoint(runs["two"], "cpu")
    assert type(model).__name__ == meta["model_class"] == "ToyMLP" and not model.training
