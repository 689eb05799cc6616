"""Controlling a trained diffusion model: ControlNet, LoRA, img2img and inpainting (book §6).

The chapter's numbering, which every docstring in this package follows:

======  =================================================  ==========  ==============================================
 §       section                                            equations   module
======  =================================================  ==========  ==============================================
 6.1     Why control: what a prompt cannot say              --          --
 6.2     ControlNet: trainable copy, zero convolutions      6.1         :mod:`.controlnet`
 6.3     LoRA from scratch: low-rank update, merge, scale   6.2-6.4     :mod:`.lora`
 6.4     LoRA with peft and diffusers; a style LoRA         (6.2)       :mod:`.peft_lora`, :mod:`.train_lora`,
                                                                        :mod:`.style`
 6.5     Condition maps (Sobel, Canny, boxes), the          6.5, 6.6    :mod:`.edges`, :mod:`.train_controlnet`,
         conditioning scale, trained ControlNets measured               :mod:`.measure`
 6.6     img2img and inpainting: strength and masks         6.7-6.9     :mod:`.strength`
 6.7     DreamBooth: a subject instead of a style           6.10        (text only)
 --      the chapter's app (app/control_app.ipynb)          --          :mod:`.app`
======  =================================================  ==========  ==============================================

Equations::

    (6.1)  y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2),  Z a 1x1 conv with weight = bias = 0
    (6.2)  h = W x + (alpha / r) B A x,  A (r, d_in), B (d_out, r) = 0 at init
    (6.3)  merge: W <- W + (alpha / r) s B A;  unmerge: W <- W - (alpha / r) s B A
    (6.4)  h = W x + sum_i s_i (alpha_i / r_i) B_i A_i x   (several LoRAs, each at its scale)
    (6.5)  h_i <- h_i + lambda r_i,  r_i = Z_i(copy_i(..., c))   (lambda: the conditioning scale)
    (6.6)  |G| = sqrt(sum_c (I_c * K_x)^2 + (I_c * K_x^T)^2),  K_x = [[-1,0,1],[-2,0,2],[-1,0,1]]
    (6.7)  img2img runs k = min(floor(n strength), n) of the n steps, from t_s
    (6.8)  z_{t_s} = sqrt(abar_{t_s}) z_0 + sqrt(1 - abar_{t_s}) eps
    (6.9)  inpainting pastes the noised input outside the mask after every step
    (6.10) DreamBooth: the subject's loss + lambda_pr times the prior-preservation loss
"""
