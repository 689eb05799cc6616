"""Chapter 4's pipeline for the tests of later chapters (5, 6) that drive it.

``shapes_sd_or_tiny(folder)``: the zoo's trained ``shapes_sd`` (``trained=True``) or, when the zoo folder
cannot be loaded (while it is being rebuilt), a random-weight pipeline built from the course's own
configs and saved to ``folder`` (``trained=False``), so the numerical comparisons still run.
"""
from __future__ import annotations

import torch


def tiny_pipeline(folder, command: str):
    """A random-weight ``StableDiffusionPipeline`` from the course's configs, saved to and loaded from ``folder``."""
    from diffcourse.latent.pipeline import assemble_pipeline, load_pipeline, save_pipeline
    from diffcourse.latent.text_encoder import build_text_encoder
    from diffcourse.latent.tokenizer import build_tokenizer
    from diffcourse.latent.unet import build_unet
    from diffcourse.latent.vae import build_vae
    from diffcourse.schedules import make_schedule

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    pipe = assemble_pipeline(build_vae(), build_text_encoder(tokenizer), tokenizer, build_unet(),
                             make_schedule("scaled_linear"))
    save_pipeline(folder, pipe, command=command)
    return load_pipeline(folder)


def shapes_sd_or_tiny(folder, command: str):
    """(pipeline, trained): the zoo's ``shapes_sd``, or the tiny pipeline in ``folder`` if that cannot be loaded."""
    from diffcourse.latent.pipeline import load_pipeline

    try:
        return load_pipeline(), True
    except Exception as err:                                                     # the zoo folder is being rebuilt
        print(f"zoo shapes_sd unavailable ({err}); using a tiny pipeline built from the course's configs")
        return tiny_pipeline(folder, command), False
