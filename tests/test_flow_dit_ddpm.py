"""Book §7.8 on the digits: the DiT trained with the DDPM loss (``dit-digits-ddpm``; zoo digits_dit_ddpm, and the
U-Net-sized digits_dit_small_eps / digits_dit_small_v) against the flow-matching DiT and Chapter 5's U-Net.

Files under test: diffcourse/flow/dit_ddpm.py, DiTConfig.digits_small, their zoo entries.
"""
from __future__ import annotations

import pytest
import torch

from diffcourse import zoo
from diffcourse.flow.dit import DiT, DiTConfig
from diffcourse.flow.dit_ddpm import FAMILY_SAMPLERS, equal_nfe_digits
from diffcourse.samplers import sample_ddim
from diffcourse.train import main
from diffcourse.training import load_checkpoint
from digits_judge import LABELS, judge, noise  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_ddpm_dit_is_the_flow_dit_with_another_loss(tmp_path):
    fm, ddpm = zoo.entry("digits_dit_fm"), zoo.entry("digits_dit_ddpm")
    assert {k: v for k, v in ddpm["config"].items() if k != "time_scale"} == \
        {k: v for k, v in fm["config"].items() if k != "time_scale"}
    assert ddpm["config"]["time_scale"] == 1.0 and ddpm["prediction_type"] == "v_prediction"
    assert ddpm["steps"] == fm["steps"] and ddpm["schedule"] == "linear"
    for key in ("--lr", "--batch-size", "--ema-decay", "--p-uncond", "--seed"):
        value = lambda e: e["command"].split(key + " ")[1].split()[0]                 # noqa: E731
        assert value(ddpm) == value(fm), f"{key} differs: {value(ddpm)} vs {value(fm)}"
    out = tmp_path / "ddpm.safetensors"                                                 # same initial weights
    assert main(["dit-digits-ddpm", "--out", str(out), "--steps", "1", "--lr", "0", "--ema-decay", "0",
                 "--weights-dtype", "float32", "--no-progress"]) == 0
    model, meta = load_checkpoint(out, "cpu")
    assert meta["prediction_type"] == "v_prediction" and "--prediction-type v_prediction" in meta["command"]
    torch.manual_seed(0)
    fresh = DiT(DiTConfig(**dict(DiTConfig.digits().to_dict(), time_scale=1.0)))
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_the_small_dits_have_the_u_nets_size_and_budget():
    unet = zoo.entry("digits_cond_unet")
    for name, target in (("digits_dit_small_eps", "epsilon"), ("digits_dit_small_v", "v_prediction")):
        e = zoo.entry(name)
        assert e["prediction_type"] == target and e["steps"] == unet["steps"] and e["schedule"] == unet["schedule"]
        assert abs(e["parameters"] - unet["parameters"]) / unet["parameters"] < 0.05, (name, e["parameters"])
    assert sum(p.numel() for p in DiT(DiTConfig.digits_small()).parameters()) == zoo.entry("digits_dit_small_v")["parameters"]


def test_with_the_eps_target_the_dit_learns_its_class_poorly_and_with_v_well(judge, noise):
    agree = {}
    for name in ("digits_dit_small_eps", "digits_dit_small_v"):
        zm = zoo.load(name, device="cpu")
        x = sample_ddim(lambda x, t: zm.model(x, t, class_labels=LABELS), noise, zm.schedule, num_steps=16,
                        spacing="trailing", prediction_type=zm.meta["prediction_type"])
        agree[name] = judge(x)[0]
    assert agree["digits_dit_small_eps"] < 0.75 and agree["digits_dit_small_v"] > 0.9, agree


def test_fm_and_ddpm_dits_at_equal_calls(judge, noise):
    fm = zoo.load("digits_dit_fm", device="cpu").model.eval()
    dd = zoo.load("digits_dit_ddpm", device="cpu")
    table = equal_nfe_digits(judge, fm, dd.model.eval(), dd.schedule, LABELS, noise, nfes=(2, 4),
                             prediction_type=dd.meta["prediction_type"])
    assert set(table) == set(FAMILY_SAMPLERS)
    assert table["fm_heun"][2][2] == 1 and table["fm_heun"][4][2] == 3 and table["ddpm_ddim"][4][2] == 4
    for name in table:
        agree, fid, _ = table[name][4]
        assert agree > 0.9 and fid < 2.5, f"{name} at 4 calls: {agree:.1%}, FID {fid:.2f}"
