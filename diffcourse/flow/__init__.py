"""Chapter 7: flow matching and the Diffusion Transformer (book §7).

One concept per module; every public function names the section and equation it implements.
The chapter's numbering (the book page follows it):

=====  ==========================================================  ===========  ====================
§      topic                                                       equations    module
=====  ==========================================================  ===========  ====================
7.1    the straight path, the velocity target, the FM loss;        7.1-7.4      :mod:`.path`
       why the conditional target gives the marginal velocity
7.2    sampling the ODE: Euler and Heun on an explicit grid;       7.5-7.8      :mod:`.samplers`
       convergence order (error ~ NFE^-p)
7.3    the exact velocity of a Gaussian mixture (no training)      7.9-7.10     :mod:`.exact`
7.4    straight paths: straightness measured; flow matching vs     7.11         :mod:`.straightness`,
       DDPM at equal NFE (exact fields; trained toys)                           :mod:`.compare`,
                                                                                :mod:`.train_toy`
7.5    where to train: logit-normal t, SD3's timestep shift        7.12-7.13    :mod:`.path`
7.6    diffusers' FlowMatchEulerDiscreteScheduler driven by the    7.14         :mod:`.diffusers_flow`
       course's model
7.7    DiT: patchify, adaLN-Zero, class conditioning and CFG       7.15-7.17    :mod:`.dit`
7.8    a DiT trained on the digits with flow matching; diffusers'  (7.3)        :mod:`.train_dit`,
       DiTTransformer2DModel side by side; U-Net vs DiT at equal                :mod:`.diffusers_dit`,
       size; the same DiT trained with the DDPM loss (FM vs DDPM)               :mod:`.dit_ddpm`
7.9    few-step generation: consistency models and LCM; the        7.18-7.21    :mod:`.consistency`,
       digits DiT distilled with guidance folded in; chapter 4's                :mod:`.distill_digits`,
       latent model distilled and run by LCMScheduler                           :mod:`.lcm`
7.10   MMDiT and RoPE (SD3, Flux), briefly                         --           (text only)
=====  ==========================================================  ===========  ====================

Time runs from data (t = 0) to noise (t = 1), diffusers' convention (its ``sigma`` is this t; its
``timestep`` is 1000 t). A velocity model is called ``model(x_t, t)`` with t an (N,) float tensor in [0, 1].
"""
from .exact import GaussianMixtureVelocity
from .path import fm_loss, interpolate, logit_normal_pdf, sample_t, shift_time, velocity_target
from .samplers import guided_velocity, heun_nfe, sample_euler_fm, sample_heun_fm, time_grid

__all__ = ["GaussianMixtureVelocity", "fm_loss", "interpolate", "logit_normal_pdf", "sample_t", "shift_time",
           "velocity_target", "guided_velocity", "heun_nfe", "sample_euler_fm", "sample_heun_fm", "time_grid"]
