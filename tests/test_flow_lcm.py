"""Book §7.9 on chapter 4's latent model: latent consistency distillation (diffcourse/flow/lcm.py, zoo shapes_lcm).

The course's LCM pieces are checked against diffusers' ``LCMScheduler`` (timesteps, boundary scalings, the whole
few-step loop through ``StableDiffusionPipeline``), the teacher step against the forward process it must invert,
and the shipped student against its teacher at the same number of network calls.
"""
from __future__ import annotations

import json

import pytest
import torch

from diffcourse import zoo
from diffcourse.flow.lcm import (boundary_scalings, consistency_x0, ddim_step, guided_prediction, lcm_loss,
                                 lcm_pipeline, lcm_timesteps, load_lcm_unet, sample_lcm, teacher_grid, x0_eps_from)
from diffcourse.latent.pipeline import load_pipeline
from diffcourse.latent.text_encoder import prompt_ids
from diffcourse.latent.unet import LatentTextDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return load_pipeline()


def lcm_scheduler(base):
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(base.scheduler.config, original_inference_steps=50, timestep_scaling=10.0)


def test_grid_and_timesteps_are_lcm_schedulers(base):
    assert teacher_grid()[:3].tolist() == [19, 39, 59] and teacher_grid()[-1] == 999
    sched = lcm_scheduler(base)
    for n in (1, 2, 3, 4, 8):
        sched.set_timesteps(n)
        assert lcm_timesteps(n) == sched.timesteps.tolist(), f"{n} steps"
    assert lcm_timesteps(4, T=500, original_steps=25) == [499, 379, 259, 139]


def test_boundary_scalings_are_lcm_schedulers_and_pin_t0(base):
    sched = lcm_scheduler(base)
    t = torch.tensor([0, 1, 19, 259, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, step in enumerate(t.tolist()):
        ref_skip, ref_out = sched.get_scalings_for_boundary_condition_discrete(step)
        assert c_skip[i].item() == pytest.approx(float(ref_skip), rel=1e-6), f"c_skip at t = {step}"
        assert c_out[i].item() == pytest.approx(float(ref_out), rel=1e-6, abs=1e-12), f"c_out at t = {step}"
    assert c_skip[0] == 1 and c_out[0] == 0, "f(z, 0) = z: the boundary condition of eq. 7.18"


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_x0_and_eps_are_read_back_from_each_parametrisation(base, prediction_type):
    ab = base.scheduler.alphas_cumprod.float()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g) * 3, torch.randn(3, 4, 8, 8, generator=g)   # large values too
    t = torch.tensor([5, 500, 990])
    a, b = ab[t].sqrt().view(-1, 1, 1, 1), (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
    z_t = a * x0 + b * eps
    pred = {"v_prediction": a * eps - b * x0, "epsilon": eps, "sample": x0}[prediction_type]
    got_x0, got_eps = x0_eps_from(pred, z_t, t, ab, prediction_type)
    torch.testing.assert_close(got_x0, x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(got_eps, eps, atol=2e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        x0_eps_from(pred, z_t, t, ab, "flow")


def test_the_teacher_step_with_the_true_prediction_lands_on_the_forward_process(base):
    ab = base.scheduler.alphas_cumprod.float()
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t, s = torch.tensor([999, 519, 39, 19]), torch.tensor([979, 499, 19, 0])
    a, b = ab[t].sqrt().view(-1, 1, 1, 1), (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
    z_t = a * x0 + b * eps
    z_s = ddim_step(a * eps - b * x0, z_t, t, s, ab)                             # the exact v
    want = ab[s].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ab[s]).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(z_s, want, atol=2e-4, rtol=1e-4)
    assert torch.equal(z_t, a * x0 + b * eps), "ddim_step must not modify its input"


def test_guided_prediction_is_eq_5_3_in_one_batched_call(base):
    teacher = LatentTextDenoiser(base.text_encoder, base.unet).eval()
    ids = prompt_ids(base.tokenizer, ["a large red circle in the center", "a small blue square in the top left"])
    empty = prompt_ids(base.tokenizer, [""])[0]
    z, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([700, 300])
    calls = []
    counting = lambda *a: calls.append(len(a[0])) or teacher(*a)                 # noqa: E731
    with torch.no_grad():
        got = guided_prediction(counting, ids, empty, 3.0)(z, t)
        cond, uncond = teacher(z, t, ids), teacher(z, t, empty.expand_as(ids))
    assert calls == [4], f"both branches in one call of batch 2N: {calls}"
    torch.testing.assert_close(got, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_lcm_loss_trains_the_student_only_and_is_seeded(base):
    import copy

    teacher = LatentTextDenoiser(base.text_encoder, base.unet).eval()
    student = copy.deepcopy(base.unet).train()
    ids = prompt_ids(base.tokenizer, ["a large red circle in the center"] * 3)
    enc = base.text_encoder(ids)[0].detach()
    student_fn = lambda z, t: student(z, t, encoder_hidden_states=enc, return_dict=False)[0]   # noqa: E731
    teacher_fn = guided_prediction(teacher, ids, prompt_ids(base.tokenizer, [""])[0], 2.0)
    z0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    ab = base.scheduler.alphas_cumprod.float()
    losses = [lcm_loss(student_fn, teacher_fn, z0, ab, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert losses[0].item() == losses[1].item() and losses[0].item() > 0
    losses[0].backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad), "every student weight learns"
    assert all(p.grad is None for p in base.unet.parameters()), "the teacher must not receive gradients"


def test_the_course_loop_equals_lcm_scheduler_in_the_pipeline(base):
    unet = base.unet                                                             # any U-Net: the loop is the point
    pipe = lcm_pipeline(base, unet)
    prompts = ["a large green triangle in the bottom right", "a small cyan diamond in the top"]
    ab = base.scheduler.alphas_cumprod.float()
    enc = base.text_encoder(prompt_ids(base.tokenizer, prompts))[0]
    model_fn = lambda z, t: unet(z, t, encoder_hidden_states=enc, return_dict=False)[0]   # noqa: E731
    for n in (1, 2, 4):
        want = pipe(prompts, num_inference_steps=n, guidance_scale=1.0, output_type="latent",
                    generator=torch.Generator().manual_seed(6)).images                # (2, 4, 8, 8)
        g = torch.Generator().manual_seed(6)
        z_T = torch.randn(2, 4, 8, 8, generator=g)
        got = sample_lcm(model_fn, z_T, ab, n, g)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{n} steps")


def test_lcm_sd_subcommand_writes_a_loadable_u_net_and_its_command(tmp_path):
    from diffcourse.train import main

    out = tmp_path / "lcm"
    assert main(["lcm-sd", "--out", str(out), "--steps", "2", "--images", "64", "--eval-samples", "4"]) == 0
    meta = json.loads((out / "diffcourse.json").read_text())
    assert meta["command"].startswith("python -m diffcourse.train lcm-sd ") and "--steps 2" in meta["command"]
    assert set(meta["adherence_by_steps"]) == {"1", "2", "4"} and meta["guidance"] == 2.0
    unet = load_lcm_unet(out)
    assert next(unet.parameters()).dtype == torch.float32


def test_shipped_lcm_beats_its_teacher_at_the_same_calls():
    from diffusers import DDIMScheduler

    from diffcourse.latent.adherence import measure_adherence

    base = load_pipeline()
    entry = zoo.entry("shapes_lcm")
    assert entry["teacher"] == "zoo/shapes_sd" and entry["bytes"] < 2.5e6
    lcm = lcm_pipeline(base, load_lcm_unet())
    key = "colour+position+shape"
    one = measure_adherence(lcm, 48, seed=123, num_inference_steps=1, guidance_scale=1.0)
    two = measure_adherence(lcm, 48, seed=123, num_inference_steps=2, guidance_scale=1.0)[key]
    many = measure_adherence(base, 48, seed=123, guidance_scale=entry["guidance"])[key]            # 25 steps, 50 calls
    base.scheduler = DDIMScheduler.from_config(base.scheduler.config, timestep_spacing="trailing")
    teacher_two_calls = measure_adherence(base, 48, seed=123, num_inference_steps=1, guidance_scale=entry["guidance"])[key]
    assert two > teacher_two_calls + 0.3, (
        f"2 LCM calls should beat one guided DDIM step (2 calls): {two:.0%} vs {teacher_two_calls:.0%}")
    assert two >= many - 0.15, f"2 LCM calls should come close to the teacher's 50: {two:.0%} vs {many:.0%}"
    assert one["colour"] > 0.85 and one["position"] > 0.85, f"one call already gives colour and position: {one}"
