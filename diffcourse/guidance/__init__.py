"""Classifier-free guidance (Ho & Salimans 2022), measured (book §5, eqs. 5.1-5.7).

One network learns both p(x) and p(x | c) because its condition is dropped during training (eq. 5.1,
:mod:`.dropout`); at sampling time the two predictions are combined (eq. 5.3, :mod:`.cfg`)::

    eps_w(x_t, t, c) = eps(x_t, t, null) + w (eps(x_t, t, c) - eps(x_t, t, null))          (eq. 5.3)

The course's ``w`` is diffusers' ``guidance_scale``: w = 1 is the conditional model (no guidance), w = 0
the unconditional one. Ho & Salimans write eps~ = (1 + w') eps_c - w' eps_u, so their w' = w - 1
(eq. 5.4; :func:`.cfg.paper_w`). Modules, one concept each:

- :mod:`.dropout`   condition dropout for a training batch (eq. 5.1)
- :mod:`.cfg`       the guided estimate, the w conventions, both branches in ONE batched call,
                    negative prompts as the replacement of the unconditional branch (eqs. 5.3-5.5)
- :mod:`.rescale`   guidance rescale with phi (Lin et al. 2023; diffusers' ``rescale_noise_cfg``, eq. 5.6)
- :mod:`.schedule`  w over t: a guidance interval, or a ramp (eq. 5.7)
- :mod:`.digits`    a CFG sampler for the course's class-conditional digits (DDIM, §2.3, with a guided wrapper)
- :mod:`.text`      the same loop with the chapter 4 pipeline's parts, equal to ``StableDiffusionPipeline``
- :mod:`.measure`   adherence, diversity and saturation / clipping share against w
- :mod:`diffcourse.guidance.shapes` the same curves on chapter 4's shapes model, per caption attribute
"""
from .cfg import both_branches, guided_eps, guidance_scale_from_paper, paper_w
from .digits import guided_class_model, sample_cfg_digits
from .dropout import drop_condition, drop_prompts
from .measure import adherence, clipping_share, diversity, pixel_stats
from .rescale import rescale_guidance
from .schedule import guidance_weights
from .shapes import curve_prompts, guidance_curve, off_palette_share
from .text import guided_text_model, sample_text_cfg

__all__ = ["drop_condition", "drop_prompts", "guided_eps", "paper_w", "guidance_scale_from_paper", "both_branches",
           "rescale_guidance", "guidance_weights", "guided_class_model", "sample_cfg_digits", "guided_text_model",
           "sample_text_cfg", "adherence", "diversity", "clipping_share", "pixel_stats", "curve_prompts", "off_palette_share",
           "guidance_curve"]
