"""Latent diffusion: a Stable Diffusion trained by the course, run through diffusers' real pipelines (book §4).

The chapter's numbering, which every docstring in this package follows:

======  =====================================================  ===========  =============================
 §      section                                                equations    module
======  =====================================================  ===========  =============================
 4.1    The cost of pixels: latent size arithmetic             4.1          :mod:`.arithmetic`
 4.2    The KL autoencoder: q(z|x), reparameterisation, KL     4.2-4.5      :mod:`.vae`, :mod:`.train_vae`
 4.3    Scaling the latent to unit variance                    4.6          :mod:`.vae`
 4.4    The VAE ceiling: PSNR by feature size                  4.7          :mod:`.vae`
 4.5    From words to vectors: BPE tokenizer, CLIP encoder     4.8          :mod:`.tokenizer`, :mod:`.text_encoder`
 4.6    Cross-attention at every level of the latent U-Net     4.9          :mod:`.unet`
 4.7    Training text encoder and U-Net jointly; dropout       4.10         :mod:`.train_latent`
 4.8    The real StableDiffusionPipeline; img2img, inpainting  4.11, 4.12   :mod:`.pipeline`, :mod:`.sample_latent`
 4.9    Measuring prompt adherence: the attribute checker      --           :mod:`.attributes`, :mod:`.adherence`
 4.10   Common traps; 4.11 self-check                          --           --
======  =====================================================  ===========  =============================

Equations::

    (4.1)  n_pixel = C H W,  n_latent = c (H/f)(W/f),  n_pixel / n_latent = (C/c) f^2
    (4.2)  q(z|x) = N(mu(x), diag sigma(x)^2)
    (4.3)  z = mu + sigma * eps,  eps ~ N(0, I)
    (4.4)  KL(q(z|x) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)
    (4.5)  L_VAE = ||x - D(z)||^2 + beta KL
    (4.6)  z' = s z,  s = 1 / std(z) on the data;  image = D(z'_0 / s)
    (4.7)  PSNR = 10 log10(1 / MSE)   (images in [0, 1])
    (4.8)  c = TextEncoder(tokenize(prompt)) in R^{L x d}
    (4.9)  h <- h + softmax((h W_q)(c W_k)^T / sqrt(d_head)) (c W_v)
    (4.10) L = E || eps - eps_theta(sqrt(abar_t) z' + sqrt(1 - abar_t) eps, t, c) ||^2, c = empty w.p. p_uncond
    (4.11) eps_guided = eps_theta(z_t, t, empty) + w (eps_theta(z_t, t, c) - eps_theta(z_t, t, empty))
    (4.12) img2img: start at t_s = strength T from sqrt(abar_{t_s}) E(x) s + sqrt(1 - abar_{t_s}) eps

Trained parts ship in the zoo: ``shapes_vae`` (the VAE folder) and ``shapes_sd`` (the whole pipeline
folder); :func:`~diffcourse.latent.pipeline.load_pipeline` loads the latter offline.
"""
