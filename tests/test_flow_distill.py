"""Book §7.9 on the digits: the distilled consistency DiT (``cd-digits``, zoo digits_dit_cd).

Files under test: diffcourse/flow/distill_digits.py, its zoo entry.
"""
from __future__ import annotations

import shlex

import pytest
import torch

from diffcourse import zoo
from diffcourse.flow.consistency import consistency_fn, sample_consistency
from diffcourse.flow.distill_digits import consistency_times, few_step_samples, student_sampler
from diffcourse.flow.dit import DiT, DiTConfig
from diffcourse.flow.samplers import guided_velocity, sample_euler_fm, time_grid
from diffcourse.train import main
from diffcourse.training import load_checkpoint
from digits_judge import LABELS, judge, noise  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_consistency_times_cost_one_call_each_and_start_at_one():
    assert consistency_times(1) == [1.0]
    assert consistency_times(4) == [1.0, 0.75, 0.5, 0.25]


def test_a_student_copied_from_the_teacher_is_its_one_step_euler_jump(noise):
    teacher = zoo.load("digits_dit_fm", device="cpu").model.eval()
    with torch.no_grad():
        jump = sample_consistency(student_sampler(teacher, LABELS), noise, [1.0])
        euler = sample_euler_fm(guided_velocity(teacher, LABELS, 1.0, null_label=10), noise, time_grid(1))
        f = consistency_fn(student_sampler(teacher, LABELS))
        at_zero = f(noise, torch.zeros(len(noise)))
    torch.testing.assert_close(jump, euler, rtol=0, atol=1e-5)
    torch.testing.assert_close(at_zero, noise)                                        # f(x, 0) = x (eq. 7.18)


def test_cd_digits_subcommand_trains_from_the_teacher_and_records_its_command(tmp_path):
    out = tmp_path / "cd.safetensors"
    assert main(["cd-digits", "--out", str(out), "--steps", "4", "--batch-size", "16", "--no-progress"]) == 0
    model, meta = load_checkpoint(out, "cpu")
    assert isinstance(model, DiT) and meta["prediction_type"] == "consistency" and meta["teacher"] == "digits_dit_fm"
    assert meta["guidance"] == 2.0 and meta["command"].startswith("python -m diffcourse.train cd-digits --out")
    teacher = zoo.load("digits_dit_fm", device="cpu").model
    moved = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(),
                                                          teacher.state_dict().values()))
    assert 0 < moved < 0.05, f"4 small steps should move the copied weights a little, moved {moved}"


def test_shipped_consistency_dit_beats_its_teachers_one_step_euler(judge, noise):
    e = zoo.entry("digits_dit_cd")
    assert e["prediction_type"] == "consistency" and e["bytes"] < 400_000 and e["teacher"] == "digits_dit_fm"
    assert shlex.split(e["command"])[3] == "cd-digits"
    student = zoo.load("digits_dit_cd", device="cpu").model.eval()
    teacher = zoo.load("digits_dit_fm", device="cpu").model.eval()
    common = dict(student=student, teacher=teacher, unet=None, schedule=None, labels=LABELS, noise=noise)
    cd1, calls = few_step_samples("cd", 1, **common)
    eu1, _ = few_step_samples("euler", 1, **common)
    (a_cd, f_cd), (a_eu, f_eu) = judge(cd1), judge(eu1)
    assert calls == 1 and a_cd > 0.9, f"one call of the distilled DiT: class agreement {a_cd:.1%}"
    assert f_cd < 0.8 * f_eu, f"distillation should cut the 1-step FID: {f_cd:.2f} vs Euler {f_eu:.2f}"


def test_guided_samplers_need_two_calls_a_step():
    common = dict(student=None, teacher=None, unet=None, schedule=None, labels=LABELS[:2],
                  noise=torch.zeros(2, 1, 8, 8))
    assert few_step_samples("euler_w2", 1, **common) == (None, 0)
    assert few_step_samples("ddim_w2", 1, **common) == (None, 0)
    with pytest.raises(ValueError, match="unknown method"):
        few_step_samples("lcm", 1, **common)

