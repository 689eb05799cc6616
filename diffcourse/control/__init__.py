"""Controlling a trained diffusion model: ControlNet, LoRA, img2img and inpainting (book §6).

The chapter's numbering, which every docstring in this package follows:

======  =================================================  ==========  ==============================================
 §       section                                            equations   module
======  =================================================  ==========  ==============================================
 6.1     Why control: what a prompt cannot say              --          --
 6.2     Condition maps: Sobel/Canny edges, masks           6.1, 6.2    :mod:`.edges`
 6.3     ControlNet: trainable copy, zero convolutions      6.3, 6.4    :mod:`.controlnet`, :mod:`.train_controlnet`
 6.4     LoRA from scratch: low-rank update, merge, scale   6.5-6.7     :mod:`.lora`, :mod:`.train_lora`
 6.5     LoRA with peft and diffusers; saving, loading      6.5-6.7     :mod:`.peft_lora`
 6.6     img2img and inpainting: strength and masks         6.8, 6.9    :mod:`.strength`
======  =================================================  ==========  ==============================================

Equations::

    (6.1)  |G| = sqrt(sum_c (I_c * K_x)^2 + (I_c * K_x^T)^2),  K_x = [[-1,0,1],[-2,0,2],[-1,0,1]]
    (6.2)  Canny: keep local maxima of |G| across the edge; strong >= high, weak >= low joined to strong
    (6.3)  r_i = Z_i(copy_i(conv_in(z_t) + E(y), t, c)),  Z_i a 1x1 conv with weight = bias = 0
    (6.4)  h_i <- h_i + lambda r_i   (lambda: the conditioning scale)
    (6.5)  y = W x + (alpha / r) s B A x,  A (r, d_in), B (d_out, r) = 0 at init
    (6.6)  merge:   W' = W + (alpha / r) s B A
    (6.7)  unmerge: W  = W' - (alpha / r) s B A
    (6.8)  img2img runs k = min(floor(n strength), n) of the n steps, from t_s
    (6.9)  the input's amplitude in the start latent: sqrt(abar_{t_s})
"""
