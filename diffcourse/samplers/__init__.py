"""Samplers: plain, stateless functions with one shared interface (book §2.2-2.5).

The interface (documented once, here)::

    sample_X(model, x_T, schedule, *, timesteps=None, num_steps=None, spacing=..., steps_offset=0,
             generator=None, prediction_type="epsilon", callback=None, return_trajectory=False,
             progress=False, device=None, **sampler_specific)

- ``model(x_t, t)``: x_t (N, ...) and t an (N,) tensor on x_t's device -> a tensor shaped like x_t,
  the model's prediction of kind ``prediction_type`` ("epsilon", "sample" or "v_prediction",
  diffusers' names). t is long for DDPM, DDIM and DPM-Solver++; float32 (possibly fractional, e.g.
  978.6) for the Euler samplers, as diffusers' EulerDiscreteScheduler gives it. Every sampler turns
  the output into (eps_hat, x0_hat) with :func:`diffcourse.targets.predict_eps_x0`, so every sampler
  works with every parameterisation.
- ``x_T``: a starting tensor (the sampler works on its device and in its dtype) or a shape tuple,
  drawn as float32 N(0, I) from ``generator`` on the generator's device (the CPU without one) and
  then moved to ``device`` if given -- diffusers' ``randn_tensor`` rule. x_T is always N(0, I)
  scale, for the sigma-space samplers too.
- The grid (§2.3, eq. 2.3): an explicit descending ``timesteps`` (for example a diffusers
  scheduler's ``.timesteps``), or ``num_steps`` with ``spacing`` in {"leading", "trailing",
  "linspace"} and ``steps_offset``, built by :mod:`diffcourse.samplers.grids` exactly as diffusers
  does. Not both. After the last grid point every sampler lands on the clean sample (alpha_bar = 1).
- ``generator``: every random draw comes from it; each module documents the order of its draws,
  which is the order of the matching diffusers scheduler, so the same seed gives the same samples.
- ``callback(i, t, x_t, x0_pred)`` is called after step i (i = 0..n-1) with the grid timestep t the
  model was evaluated at, the new state x_t and that step's x0_hat.
- ``return_trajectory=True`` returns a :class:`Trajectory` (final ``sample``, n+1 states ``x_t``
  starting with x_T, n predictions ``x0``, the ``timesteps``); otherwise the final sample (N, ...).
- ``progress=True`` shows a tqdm bar.

Which setting is which (a smalldiffusion-style table):

======================================  ===================================  ==============  ==================
call                                    what it is                           noise per step  diffusers
======================================  ===================================  ==============  ==================
``sample_ddpm(...)``                    ancestral, posterior variance (2.1)  yes (t > 0)     DDPMScheduler
``sample_ddim(..., eta=0)``             deterministic DDIM, an ODE solver    none            DDIMScheduler
``sample_ddim(..., eta=1)``             = DDPM on the same sub-grid          yes             DDIMScheduler
``sample_ddim(..., eta=0.5)``           in between                           yes             DDIMScheduler
``sample_dpmpp_2m(...)``                2nd-order multistep ODE solver       none            DPMSolverMultistep
``sample_euler(...)``                   Euler ODE step in sigma (2.5)        none            EulerDiscrete
``sample_euler_ancestral(..., eta=1)``  Euler + fresh noise (2.6)            yes             EulerAncestral
``sample_euler_ancestral(..., eta=0)``  = ``sample_euler``                   none            --
======================================  ===================================  ==============  ==================

Also equal in exact arithmetic: DPM-Solver++(2M)'s first step is a DDIM (eta=0) step; the
DDPM and DDIM updates coincide with the posterior of eqs. 1.8-1.9 when eta = 1.
"""
from .common import Trajectory
from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .dpm_solver import sample_dpmpp_2m
from .euler import sample_euler, sample_euler_ancestral
from .grids import make_timesteps, sigma_at

__all__ = ["Trajectory", "make_timesteps", "sigma_at", "sample_ddpm", "sample_ddim", "sample_dpmpp_2m",
           "sample_euler", "sample_euler_ancestral", "SAMPLERS"]

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
}
