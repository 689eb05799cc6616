"""Chapter 4's graded notebook (solutions/ch04_latent/latent.ipynb): the parts of Stable Diffusion.

Each exercise's plausible mistakes are rejected by its graded tests with a message that points at the
mistake, and correct alternatives are accepted; the released copy leaks nothing and is in sync; the
real autograder gives the solution full marks and the released notebook zero (slow).
The cells run in-process through ``tests/nbharness.py``; the notebook loads the zoo's ``shapes_sd``
pipeline folder, and no test depends on its exact weights.
"""
from __future__ import annotations

import pytest

from nbharness import (assert_full_marks_and_zero, assert_release_in_sync,
                       assert_released_has_stubs_and_no_secrets, solution_sources, exercise_runner,
                       exercise_tests)

ASSIGNMENT, NOTEBOOK = "ch04_latent", "latent"
SKIP = ("demo", "explorer")
N_EXERCISES, MAX_SCORE = 6, 33


run_tests = exercise_runner(ASSIGNMENT, NOTEBOOK, SKIP, N_EXERCISES)

REPARAM_HEAD = "def reparameterise(mean, logvar, generator):\n"
KL_HEAD = "def kl_divergence(mean, logvar):\n"
ENCODE_LATENTS = """

def encode_latents(vae, images, scale, generator):
    with torch.no_grad():
        return scale * reparameterise(*moments(vae, images), generator)
"""
MEASURE_SCALE = """def measure_scale(vae, images, generator, batch_size=64):
    zs, means = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            mean, logvar = moments(vae, images[i:i + batch_size])
            means.append(mean)
            zs.append(reparameterise(mean, logvar, generator))
    z, mu = torch.cat(zs), torch.cat(means)
    return {result}
"""
ENCODE_TEXT_HEAD = "def encode_text(tokenizer, text_encoder, prompts):\n"
ENCODE_TEXT_BODY = """    tokens = tokenizer(list(prompts), padding={padding}, max_length={max_length}, truncation={truncation},
                       return_tensors="pt")
    with torch.no_grad():
        c = text_encoder({encoder_args})[{output}]
    return tokens.input_ids, {mask}, c
"""
SAMPLE_HEAD = ("def sample_latents(unet, scheduler, cond, uncond, z_T, num_steps, guidance_scale=4.0, generator=None, "
               "progress=False):\n")
SAMPLE_BODY = """    {set_timesteps}
    z = z_T{init}
    with torch.no_grad():
        for t in scheduler.timesteps:
            z_in = {z_in}
            e_u, e_c = unet(z_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            eps = {guidance}
            z = scheduler.step(eps, t, z{generator}).prev_sample
    return z
"""
DECODE_HEAD = "def decode_latents(vae, z_scaled, scale):\n"


def encode_text_variant(padding="'max_length'", max_length="tokenizer.model_max_length", truncation="True",
                        encoder_args="tokens.input_ids", output="0", mask="tokens.attention_mask"):
    return ENCODE_TEXT_HEAD + ENCODE_TEXT_BODY.format(padding=padding, max_length=max_length, truncation=truncation,
                                                      encoder_args=encoder_args, output=output, mask=mask)


def sample_variant(set_timesteps="scheduler.set_timesteps(num_steps)", init=" * scheduler.init_noise_sigma",
                   z_in="scheduler.scale_model_input(torch.cat([z, z]), t)",
                   guidance="e_u + guidance_scale * (e_c - e_u)", generator=", generator=generator"):
    return SAMPLE_HEAD + SAMPLE_BODY.format(set_timesteps=set_timesteps, init=init, z_in=z_in, guidance=guidance,
                                            generator=generator)


def decode_variant(body):
    return DECODE_HEAD + "    with torch.no_grad():\n        x = vae.decode(z_scaled / scale).sample\n    " + body + "\n"


WRONG = {   # exercise cell -> [(what, wrong code, fragment the failing message must contain)]
    "ex1_solution": [
        ("sigma = exp(logvar), the variance", REPARAM_HEAD + "    eps = torch.randn(mean.shape, generator=generator)\n"
         "    return mean + torch.exp(logvar) * eps", "is the variance"),
        ("logvar used as sigma", REPARAM_HEAD + "    eps = torch.randn(mean.shape, generator=generator)\n"
         "    return mean + logvar * eps", "not sigma"),
        ("sigma = sqrt(logvar)", REPARAM_HEAD + "    eps = torch.randn(mean.shape, generator=generator)\n"
         "    return mean + logvar.sqrt() * eps", "exp(logvar / 2)"),
        ("one eps shared by the batch", REPARAM_HEAD + "    eps = torch.randn(mean.shape[1:], generator=generator)\n"
         "    return mean + torch.exp(0.5 * logvar) * eps", "share one eps"),
        ("noise from the global RNG", REPARAM_HEAD + "    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)",
         "generator"),
        ("the mean, no sample", REPARAM_HEAD + "    return mean.clone()", "you returned the mean"),
        ("float32 noise for float64 inputs", REPARAM_HEAD + "    eps = torch.randn(mean.shape, generator=generator)\n"
         "    return mean + torch.exp(0.5 * logvar) * eps", "dtype=mean.dtype"),
        ("a detached sample", REPARAM_HEAD + "    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)\n"
         "    return (mean + torch.exp(0.5 * logvar) * eps).detach()", "gradient"),
    ],
    "ex2_solution": [
        ("mean over the entries", KL_HEAD + "    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).mean(1)",
         "mean over the"),
        ("sign flipped", KL_HEAD + "    return -0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)",
         "sign is flipped"),
        ("logvar read as log sigma", KL_HEAD + "    return 0.5 * (mean**2 + (2 * logvar).exp() - 1 - 2 * logvar)"
         ".flatten(1).sum(1)", "(not log sigma)"),
        ("no 1/2", KL_HEAD + "    return (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)", "factor 1/2"),
        ("no -1", KL_HEAD + "    return 0.5 * (mean**2 + logvar.exp() - logvar).flatten(1).sum(1)", "forget the -1"),
        ("summed over the batch too", KL_HEAD + "    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum()",
         "one value per example"),
        ("summed over dims (1, 2, 3) only", KL_HEAD + "    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar)"
         ".sum(dim=(1, 2, 3))", "whatever their number"),
        ("log of an underflowed sigma^2", KL_HEAD + "    sigma = torch.exp(0.5 * logvar)\n"
         "    return 0.5 * (mean**2 + sigma**2 - 1 - torch.log(sigma**2)).flatten(1).sum(1)", "underflows"),
        ("a Python float per example (no gradient)", KL_HEAD + "    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar)"
         ".flatten(1).sum(1)\n    return torch.tensor(kl.tolist(), dtype=mean.dtype)", "gradient"),
    ],
    "ex3_solution": [
        ("std, not 1 / std", MEASURE_SCALE.format(result="float(z.std())") + ENCODE_LATENTS, "s is its inverse"),
        ("1 / variance", MEASURE_SCALE.format(result="float(1 / z.var())") + ENCODE_LATENTS, "1 / var"),
        ("the means, not samples", MEASURE_SCALE.format(result="float(1 / mu.std())") + ENCODE_LATENTS,
         "draw posterior samples"),
        ("1 / std averaged over batches", MEASURE_SCALE.format(
            result="sum(float(1 / b.std()) for b in zs) / len(zs)") + ENCODE_LATENTS, "averages 1 / std over batches"),
        ("one std per channel", MEASURE_SCALE.format(result="1 / z.std(dim=(0, 2, 3))") + ENCODE_LATENTS,
         "Python float"),
        ("the images' std", MEASURE_SCALE.format(result="float(1 / images.std())") + ENCODE_LATENTS,
         "std of the images"),
        ("everything in one batch", MEASURE_SCALE.replace("len(images), batch_size", "len(images), len(images)")
         .replace("images[i:i + batch_size]", "images").format(result="float(1 / z.std())") + ENCODE_LATENTS,
         "batch_size"),
        ("a new generator for each batch", MEASURE_SCALE.replace(
            "reparameterise(mean, logvar, generator)", "reparameterise(mean, logvar, torch.Generator().manual_seed(i))")
         .format(result="float(1 / z.std())") + ENCODE_LATENTS, "pass its generator"),
        ("encode_latents divides by s", MEASURE_SCALE.format(result="float(1 / z.std())")
         + ENCODE_LATENTS.replace("scale * reparameterise(*moments(vae, images), generator)",
                                  "reparameterise(*moments(vae, images), generator) / scale"), "do not divide"),
        ("encode_latents uses the notebook's SCALE", MEASURE_SCALE.format(result="float(1 / z.std())")
         + ENCODE_LATENTS.replace("return scale *", "return SCALE *"), "not the notebook's SCALE"),
        ("encode_latents returns s * mean", MEASURE_SCALE.format(result="float(1 / z.std())")
         + ENCODE_LATENTS.replace("reparameterise(*moments(vae, images), generator)", "moments(vae, images)[0]"),
         "reparameterise(mean, logvar, generator)"),
    ],
    "ex4_solution": [
        ("padded to the longest prompt", encode_text_variant(padding="True"), "padding='max_length'"),
        ("no truncation", encode_text_variant(truncation="False"), "truncated"),
        ("Stable Diffusion's 77 tokens", encode_text_variant(max_length="77"), "not Stable Diffusion's 77"),
        ("a fixed length of 20", encode_text_variant(max_length="20"), "not a fixed 20 or 77"),
        ("the attention mask given to the text encoder", encode_text_variant(
            encoder_args="tokens.input_ids, attention_mask=tokens.attention_mask"), "pass no attention_mask"),
        ("a mask of ones", encode_text_variant(mask="torch.ones_like(tokens.input_ids)"), "0 on the padding"),
        ("the pooled output", encode_text_variant(output="1"), "not the pooled"),
        ("padded with zeros by hand", ENCODE_TEXT_HEAD + """    L = tokenizer.model_max_length
    rows = [tokenizer(p).input_ids[:L] for p in prompts]
    ids = torch.tensor([r + [0] * (L - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows])
    with torch.no_grad():
        return ids, mask, text_encoder(ids)[0]
""", "then the padding token"),
    ],
    "ex5_solution": [
        ("guidance the wrong way", sample_variant(guidance="e_c + guidance_scale * (e_u - e_c)"),
         "guidance goes the wrong way"),
        ("no init_noise_sigma", sample_variant(init=""), "init_noise_sigma"),
        ("no scale_model_input", sample_variant(z_in="torch.cat([z, z])"), "scale_model_input"),
        ("two U-Net calls per step", SAMPLE_HEAD + """    scheduler.set_timesteps(num_steps)
    z = z_T * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            z_in = scheduler.scale_model_input(z, t)
            e_u = unet(z_in, t, encoder_hidden_states=uncond).sample
            e_c = unet(z_in, t, encoder_hidden_states=cond).sample
            z = scheduler.step(e_u + guidance_scale * (e_c - e_u), t, z, generator=generator).prev_sample
    return z
""", "both guidance passes in one call"),
        ("set_timesteps only once", sample_variant(
            set_timesteps="if scheduler.num_inference_steps is None:\n        scheduler.set_timesteps(num_steps)"),
         "set_timesteps(num_steps) at the start of every run"),
        ("a fixed guidance scale of 7.5", sample_variant(guidance="e_u + 7.5 * (e_c - e_u)"), "guidance_scale"),
        ("no generator for the scheduler's noise", sample_variant(generator=""), "pass the generator"),
        ("guidance on the latents' update (w * eps_cond only)", sample_variant(guidance="guidance_scale * e_c"),
         "eq. 4.11"),
    ],
    "ex6_solution": [
        ("multiplied by s", DECODE_HEAD + "    with torch.no_grad():\n        x = vae.decode(z_scaled * scale).sample\n"
         "    return ((x + 1) / 2).clamp(0, 1)\n", "you multiplied by s"),
        ("left in [-1, 1]", decode_variant("return x.clamp(-1, 1)"), "(x + 1) / 2"),
        ("not clipped", decode_variant("return (x + 1) / 2"), "clip to [0, 1]"),
        ("clipped without the shift", decode_variant("return x.clamp(0, 1)"), "(x + 1) / 2"),
        ("channels last", decode_variant("return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)"), "(N, 3, H, W)"),
        ("the notebook's SCALE", DECODE_HEAD + "    with torch.no_grad():\n        x = vae.decode(z_scaled / SCALE).sample\n"
         "    return ((x + 1) / 2).clamp(0, 1)\n", "not the notebook's SCALE"),
    ],
}

RIGHT = {   # correct alternatives that must earn full marks
    "ex1_solution": [REPARAM_HEAD + "    std = torch.sqrt(torch.exp(logvar))\n"
                                    "    return std * torch.empty_like(mean).normal_(generator=generator) + mean\n",
                     REPARAM_HEAD + "    return torch.addcmul(mean, logvar.mul(0.5).exp(), "
                                    "torch.randn(mean.shape, generator=generator, dtype=mean.dtype))\n"],
    # Kingma and Welling's form: -1/2 sum(1 + log sigma^2 - mu^2 - sigma^2)
    "ex2_solution": KL_HEAD + "    dims = tuple(range(1, mean.ndim))\n"
                              "    return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=dims)\n",
    # diffusers' latent_dist, a hand-made (biased) std
    "ex3_solution": """def measure_scale(vae, images, generator, batch_size=64):
    zs = []
    for start in range(0, images.shape[0], batch_size):
        with torch.no_grad():
            dist = vae.encode(images[start:start + batch_size]).latent_dist
        zs.append(reparameterise(dist.mean, dist.logvar, generator).flatten())
    z = torch.cat(zs)
    return 1.0 / ((z - z.mean()) ** 2).mean().sqrt().item()


def encode_latents(vae, images, scale, generator):
    with torch.no_grad():
        dist = vae.encode(images).latent_dist
        return reparameterise(dist.mean, dist.logvar, generator).mul(scale)
""",
    "ex4_solution": ENCODE_TEXT_HEAD + """    L = tokenizer.model_max_length
    enc = tokenizer(prompts, padding="max_length", max_length=L, truncation=True)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    lengths = torch.tensor([sum(m) for m in enc["attention_mask"]])
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    return ids, mask, text_encoder(input_ids=ids).last_hidden_state
""",
    # the conditional half first (and chunked that way), the weights written as (1 - w) and w, the tuple output
    "ex5_solution": SAMPLE_HEAD + """    scheduler.set_timesteps(num_steps)
    z = scheduler.init_noise_sigma * z_T
    steps = scheduler.timesteps
    for i in tqdm(range(len(steps)), disable=not progress):
        t = steps[i]
        with torch.no_grad():
            out = unet(scheduler.scale_model_input(torch.cat([z, z], dim=0), t), t,
                       encoder_hidden_states=torch.cat([cond, uncond], dim=0), return_dict=False)[0]
        e_c, e_u = out.chunk(2)
        eps = (1 - guidance_scale) * e_u + guidance_scale * e_c
        z = scheduler.step(eps, t, z, generator=generator, return_dict=False)[0]
    return z
""",
    "ex6_solution": [DECODE_HEAD + "    x = vae.decode(z_scaled / scale, return_dict=False)[0].detach()\n"
                                   "    return (x / 2 + 0.5).clamp(0, 1)\n",
                     DECODE_HEAD + "    with torch.no_grad():\n"
                                   "        return vae.decode(z_scaled * (1 / scale)).sample.clamp(-1, 1).add(1).div(2)\n"],
}


(test_solution_passes_every_test, test_wrong_implementation_is_rejected_with_a_pointed_message,
 test_correct_alternative_is_accepted) = exercise_tests(run_tests, WRONG, RIGHT, 2 * N_EXERCISES, isolate=True)


def test_every_exercise_has_four_mistakes_and_an_alternative():
    for k in range(1, N_EXERCISES + 1):
        assert len(WRONG[f"ex{k}_solution"]) >= 4 and f"ex{k}_solution" in RIGHT, f"exercise {k}"


def test_notebook_has_parameters_points_explorer_and_pipeline_oracle():
    sources = solution_sources(ASSIGNMENT, NOTEBOOK, MAX_SCORE)
    for widget in ("widgets.Text", "widgets.IntSlider", "widgets.Dropdown"):
        assert widget in sources["explorer"], f"the explorer needs a {widget} (caption, steps, scheduler)"
    assert "if not GRADING" in sources["explorer"] and "if not GRADING" in sources["demo"]
    assert "progress=True" in sources["demo"] and "tqdm(" in sources["ex5_solution"], "the loop shows a tqdm bar"
    assert "pipe(prompt_embeds=" in sources["test_ex5_hidden"] and "encode_prompt" in sources["test_ex4_hidden"] \
        and "output_type=\"pt\"" in sources["test_ex6_hidden"], "the hidden tests compare with diffusers' pipeline"
    for gid, src in sources.items():
        if gid.endswith("_solution"):
            assert "course_ref" not in src and "pipe(" not in src, f"{gid} may not call the reference or the pipeline"


def test_released_notebook_has_stubs_and_no_secrets():
    assert_released_has_stubs_and_no_secrets(ASSIGNMENT, NOTEBOOK, N_EXERCISES, (
        "torch.exp(0.5 * logvar)", "_pipeline_latents", "DiagonalGaussianDistribution"))



def test_released_notebook_is_generated_from_the_solution():
    assert_release_in_sync(ASSIGNMENT, NOTEBOOK)


@pytest.mark.slow
def test_autograder_gives_the_solution_full_marks_and_the_released_notebook_zero(tmp_path):
    assert_full_marks_and_zero(ASSIGNMENT, NOTEBOOK, MAX_SCORE, tmp_path)
