"""The exact denoiser for Gaussian-mixture data (book §2.6, eq. 2.7).

If the data are a mixture ``x0 ~ sum_k w_k N(mu_k, Sigma_k)`` and
``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps`` (eq. 1.2), then x_t is again a mixture,

    p_t(x_t) = sum_k w_k N(x_t; sqrt(alpha_bar) mu_k, alpha_bar Sigma_k + (1 - alpha_bar) I),

and the best possible eps-prediction (the minimiser of the simple loss, eq. 1.10) has a closed form
through Tweedie's formula (eq. 1.13):

    eps*(x_t) = E[eps | x_t] = -sqrt(1 - alpha_bar) * grad log p_t(x_t)                    (eq. 2.7)
              = sqrt(1 - alpha_bar) * sum_k r_k(x_t) S_k^{-1} (x_t - m_k),

with m_k = sqrt(alpha_bar) mu_k, S_k = alpha_bar Sigma_k + (1 - alpha_bar) I and the responsibilities
r_k(x_t) = softmax_k(log w_k + log N(x_t; m_k, S_k)). A sampler driven by eps* has no learning error
left, so whatever it gets wrong is the sampler's own discretisation error: that is what §2.6 uses it for.

Numerics: everything is computed in float64 (float32 on devices without float64), responsibilities
with log-sum-exp, and every S_k^{-1} through its Cholesky factor.
"""
from __future__ import annotations

import math

import torch

from .schedules import NoiseSchedule

__all__ = [
    "GaussianMixture",
    "GaussianMixtureEpsModel",
    "alpha_bar_at",
    "eight_gaussians_mixture",
    "anisotropic_mixture",
    "mode_statistics",
]


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (CPU, CUDA), float32 elsewhere (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


class GaussianMixture:
    """A mixture of K full-covariance Gaussians in D dimensions (book §2.6).

    ``weights``: (K,) positive, summing to 1; ``means``: (K, D); ``covs``: (K, D, D) symmetric
    positive definite. Parameters are stored in float64 on the CPU and moved to the input's device
    when used.
    """

    def __init__(self, weights, means, covs):
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        mu = torch.as_tensor(means, dtype=torch.float64).detach().cpu()
        S = torch.as_tensor(covs, dtype=torch.float64).detach().cpu()
        if w.ndim != 1 or len(w) < 1:
            raise ValueError(f"weights must have shape (K,), got {tuple(w.shape)}")
        K = len(w)
        if mu.ndim != 2 or mu.shape[0] != K:
            raise ValueError(f"means must have shape (K={K}, D), got {tuple(mu.shape)}")
        D = mu.shape[1]
        if S.shape != (K, D, D):
            raise ValueError(f"covs must have shape (K={K}, D={D}, D={D}), got {tuple(S.shape)}")
        if not bool(torch.isfinite(w).all() and torch.isfinite(mu).all() and torch.isfinite(S).all()):
            raise ValueError("weights, means and covs must all be finite")
        if bool((w <= 0).any()):
            raise ValueError(f"every weight must be positive, got {w.tolist()}")
        if abs(float(w.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must sum to 1, they sum to {float(w.sum()):.6g}")
        if not torch.allclose(S, S.transpose(-1, -2), atol=1e-10, rtol=1e-8):
            raise ValueError("every covariance matrix must be symmetric")
        _, info = torch.linalg.cholesky_ex(S)                                  # (K,)
        if bool((info != 0).any()):
            bad = torch.nonzero(info).flatten().tolist()
            raise ValueError(f"covariance matrices {bad} are not positive definite")
        self.weights, self.means, self.covs = w / w.sum(), mu, S

    @property
    def K(self) -> int:
        """Number of components K (book §2.6)."""
        return len(self.weights)

    @property
    def D(self) -> int:
        """Dimension D of the data (book §2.6)."""
        return self.means.shape[1]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, D={self.D}, weights={[round(x, 4) for x in self.weights.tolist()]})"

    # ------------------------------------------------------------------------- the data distribution

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """Draw ``n`` points x0 ~ p_data, (n, D) float32 on the generator's device (book §2.6).

        With ``return_labels`` also returns the (n,) component index of each point.
        """
        device = generator.device if generator is not None else torch.device("cpu")
        dt = _work_dtype(device)
        w, mu = self.weights.to(device, dt), self.means.to(device, dt)
        L = torch.linalg.cholesky(self.covs.to(device, dt))                    # (K, D, D)
        k = torch.multinomial(w, n, replacement=True, generator=generator)     # (n,)
        z = torch.randn(n, self.D, 1, generator=generator, device=device, dtype=dt)  # (n, D, 1)
        x = mu[k] + (L[k] @ z).squeeze(-1)                                     # (n, D)
        x = x.to(torch.float32)
        return (x, k) if return_labels else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x of shape (N, D); returns (N,) in x's dtype (book §2.6)."""
        x = self._check_x(x)
        dt = _work_dtype(x.device)
        logp, _, _ = self._log_joint(x.to(dt), self.means.to(x.device, dt),
                                  torch.linalg.cholesky(self.covs.to(x.device, dt)))
        return torch.logsumexp(logp, dim=-1).to(x.dtype)                       # (N,)

    def marginal(self, alpha_bar: float) -> "GaussianMixture":
        """The distribution of x_t at noise level alpha_bar, again a mixture (book §2.6, before eq. 2.7).

        Means sqrt(alpha_bar) mu_k, covariances alpha_bar Sigma_k + (1 - alpha_bar) I, same weights.
        """
        ab = float(alpha_bar)
        if not 0.0 <= ab <= 1.0:
            raise ValueError(f"alpha_bar must lie in [0, 1], got {ab}")
        eye = torch.eye(self.D, dtype=torch.float64)
        return GaussianMixture(self.weights, math.sqrt(ab) * self.means, ab * self.covs + (1 - ab) * eye)

    # ------------------------------------------------------------------------- the exact denoiser

    def eps(self, x_t: torch.Tensor, alpha_bar) -> torch.Tensor:
        """The exact E[eps | x_t] = -sqrt(1 - alpha_bar) grad log p_t(x_t) (book §2.6, eq. 2.7).

        ``x_t``: (N, D); ``alpha_bar``: a float or an (N,) tensor (one level per point).
        Returns (N, D) in x_t's dtype and device.
        """
        eps, _ = self._posterior(x_t, alpha_bar)
        return eps

    def x0_mean(self, x_t: torch.Tensor, alpha_bar) -> torch.Tensor:
        """Tweedie's E[x0 | x_t] = (x_t - sqrt(1 - alpha_bar) eps*) / sqrt(alpha_bar) (book §1.5 eq. 1.11, §2.6).

        Computed as sum_k r_k [mu_k + sqrt(ab) Sigma_k S_k^{-1} (x_t - m_k)], which is the same
        quantity but stays finite as alpha_bar -> 0. ``x_t``: (N, D); returns (N, D).
        """
        _, x0 = self._posterior(x_t, alpha_bar)
        return x0

    def score(self, x_t: torch.Tensor, alpha_bar) -> torch.Tensor:
        """grad log p_t(x_t) = -eps* / sqrt(1 - alpha_bar) (book §1.5, eq. 1.13). (N, D) -> (N, D)."""
        x_t = self._check_x(x_t)
        ab = self._alpha_bar_vector(alpha_bar, x_t).to(torch.float64)
        eps = self.eps(x_t, alpha_bar).to(torch.float64)
        return (-eps / (1 - ab).sqrt()[:, None]).to(x_t.dtype)

    def as_model(self, schedule: NoiseSchedule) -> "GaussianMixtureEpsModel":
        """A ``model(x_t, t)`` returning eps*, for the course's samplers and diffusers' schedulers (§2.6)."""
        return GaussianMixtureEpsModel(self, schedule)

    # ------------------------------------------------------------------------- internals

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"expected points of shape (N, D={self.D}), got {tuple(x.shape)}")
        return x if x.is_floating_point() else x.to(torch.float32)

    def _alpha_bar_vector(self, alpha_bar, x: torch.Tensor) -> torch.Tensor:
        ab = torch.as_tensor(alpha_bar, device=x.device, dtype=_work_dtype(x.device)).reshape(-1)
        if ab.numel() == 1:
            ab = ab.expand(x.shape[0])
        if ab.numel() != x.shape[0]:
            raise ValueError(f"alpha_bar must be a scalar or have one value per point ({x.shape[0]}), "
                             f"got {ab.numel()} values")
        if bool(((ab < 0) | (ab > 1)).any()):
            raise ValueError(f"alpha_bar must lie in [0, 1], got values in [{float(ab.min())}, {float(ab.max())}]")
        return ab                                                              # (N,)

    def _log_joint(self, x, m, L):
        """log w_k + log N(x; m_k, L_k L_k^T) and the whitened residuals. x (N, D), m (K, D), L (K, D, D).

        Returns (N, K) log-joints, (N, K, D) whitened residuals z = L_k^{-1} (x - m_k) and (K, D, D) L^{-1}.
        """
        eye = torch.eye(self.D, device=x.device, dtype=x.dtype)
        L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)  # (K, D, D), one solve per k
        diff = x[:, None, :] - m[None]                                         # (N, K, D)
        z = torch.einsum("kij,nkj->nki", L_inv, diff)                          # (N, K, D)
        maha = z.pow(2).sum(-1)                                                # (N, K)
        logdet = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)         # (K,)
        log_w = self.weights.to(x.device, x.dtype).log()                       # (K,)
        logp = log_w - 0.5 * (self.D * math.log(2 * math.pi) + logdet + maha)  # (N, K)
        return logp, z, L_inv

    def _posterior(self, x_t: torch.Tensor, alpha_bar):
        """(eps*, E[x0|x_t]) for x_t (N, D), computed once per distinct alpha_bar value."""
        x_t = self._check_x(x_t)
        dt = _work_dtype(x_t.device)
        x = x_t.to(dt)                                                         # (N, D)
        ab = self._alpha_bar_vector(alpha_bar, x_t)                            # (N,)
        mu, Sigma = self.means.to(x.device, dt), self.covs.to(x.device, dt)    # (K, D), (K, D, D)
        eye = torch.eye(self.D, device=x.device, dtype=dt)
        eps, x0 = torch.empty_like(x), torch.empty_like(x)
        levels, which = torch.unique(ab, return_inverse=True)                  # samplers: one level per call
        for i, a in enumerate(levels):
            idx = (which == i).nonzero().flatten()
            m = a.sqrt() * mu                                                  # (K, D)   m_k
            S = a * Sigma + (1 - a) * eye                                      # (K, D, D) S_k
            L = torch.linalg.cholesky(S)                                       # (K, D, D)
            logp, z, L_inv = self._log_joint(x[idx], m, L)                     # (n, K), (n, K, D)
            r = torch.softmax(logp, dim=-1)                                    # (n, K) responsibilities
            Sinv_diff = torch.einsum("kji,nkj->nki", L_inv, z)                 # (n, K, D) = S_k^{-1}(x - m_k)
            # eq. 2.7: eps* = -sqrt(1-ab) * score, score = -sum_k r_k S_k^{-1} (x - m_k)
            eps[idx] = (1 - a).sqrt() * (r[..., None] * Sinv_diff).sum(1)      # (n, D)
            # E[x0 | x_t, k] = mu_k + sqrt(ab) Sigma_k S_k^{-1} (x_t - m_k)
            x0_k = mu + a.sqrt() * torch.einsum("kij,nkj->nki", Sigma, Sinv_diff)  # (n, K, D)
            x0[idx] = (r[..., None] * x0_k).sum(1)                             # (n, D)
        return eps.to(x_t.dtype), x0.to(x_t.dtype)


# ----------------------------------------------------------------------------- timestep -> alpha_bar

def alpha_bar_at(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar for integer or fractional timesteps t (book §2.5, eqs. 2.5-2.6; §2.6).

    Integer t: ``schedule.alpha_bar[t]``. Fractional t (diffusers' EulerDiscreteScheduler uses them):
    sigma = sqrt((1 - ab) / ab) (eq. 1.7) is interpolated linearly between the neighbouring integer
    steps, exactly as that scheduler does, and converted back with ab = 1 / (1 + sigma^2).
    ``t``: (N,) or scalar; returns float64 of t's shape, on t's device.
    """
    t = torch.as_tensor(t)
    ab = schedule.alpha_bar.to(t.device, torch.float64)                        # (T,)
    if not t.is_floating_point():
        return ab[t.long()]
    T = len(ab)
    tf = t.to(torch.float64)
    if bool(((tf < 0) | (tf > T - 1)).any()):
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got values in [{float(tf.min())}, {float(tf.max())}]")
    sig = ((1 - ab) / ab).sqrt()                                               # (T,) eq. 1.7
    lo = tf.floor().long().clamp(max=T - 1)
    hi = (lo + 1).clamp(max=T - 1)
    frac = tf - lo.to(torch.float64)
    sigma = (1 - frac) * sig[lo] + frac * sig[hi]                              # linear in t, as np.interp
    return 1 / (1 + sigma**2)


class GaussianMixtureEpsModel(torch.nn.Module):
    """``model(x_t, t) -> eps*`` for a mixture and a schedule (book §2.6, eq. 2.7).

    ``x_t``: (N, D); ``t``: (N,) integer or float tensor, or a scalar. Has no parameters; it is a
    Module only so that samplers may call ``.eval()`` or ``.to()`` on it.
    """

    def __init__(self, gmm: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.gmm, self.schedule = gmm, schedule

    def forward(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """eps*(x_t) at alpha_bar_at(schedule, t) (book §2.6, eq. 2.7). (N, D), (N,) -> (N, D)."""
        t = torch.as_tensor(t, device=x_t.device)
        ab = alpha_bar_at(self.schedule, t).reshape(-1)                        # (N,) or (1,)
        return self.gmm.eps(x_t, ab)                                           # (N, D)


# ----------------------------------------------------------------------------- ready mixtures

def eight_gaussians_mixture(radius: float = 1.4, std: float = 0.1) -> GaussianMixture:
    """Eight equal isotropic Gaussians on a circle (book §1.1, §2.6): the classic 2-D toy.

    With the defaults each coordinate has mean 0 and variance radius^2 / 2 + std^2 = 0.99.
    """
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)           # (8,)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)            # (8, 2)
    covs = (std**2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2)        # (8, 2, 2)
    return GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, covs)


def _rotated_cov(angle_deg: float, s_major: float, s_minor: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    R = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    return R @ torch.diag(torch.tensor([s_major**2, s_minor**2], dtype=torch.float64)) @ R.T


def anisotropic_mixture() -> GaussianMixture:
    """Three 2-D Gaussians with unequal weights (0.5, 0.3, 0.2) and rotated, elongated covariances (§2.6).

    Standard deviations 0.2 to 0.5 (close to the data scale the schedules are made for) and modes
    far apart: every boundary between nearest-mode regions lies at least 4 standard deviations
    (along its normal) from each mode, so nearest-mode assignment misplaces fewer than 1 point in
    10 000; tests use this to check samplers.
    """
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    means = torch.tensor([[-1.8, -1.0], [1.8, -1.0], [0.0, 1.8]], dtype=torch.float64)
    covs = torch.stack([_rotated_cov(30, 0.45, 0.20),
                        _rotated_cov(-45, 0.40, 0.22),
                        _rotated_cov(0, 0.50, 0.20)])
    return GaussianMixture(weights, means, covs)


def mode_statistics(x: torch.Tensor, gmm: GaussianMixture) -> dict[str, torch.Tensor]:
    """Assign each point to its nearest mode mean and measure each mode (book §2.6, checking samplers).

    ``x``: (N, D). Returns float64 tensors ``weights`` (K,), ``means`` (K, D), ``covs`` (K, D, D)
    (NaN for a mode that received fewer than two points) and ``counts`` (K,) long.
    """
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)                   # (N, D)
    labels = torch.cdist(x, gmm.means).argmin(dim=1)                           # (N,)
    counts = torch.bincount(labels, minlength=gmm.K)                           # (K,)
    means = torch.full((gmm.K, gmm.D), float("nan"), dtype=torch.float64)
    covs = torch.full((gmm.K, gmm.D, gmm.D), float("nan"), dtype=torch.float64)
    for k in range(gmm.K):
        xk = x[labels == k]                                                    # (n_k, D)
        if len(xk) >= 2:
            means[k] = xk.mean(0)
            covs[k] = torch.cov(xk.T)                                          # unbiased, (D, D)
    return dict(weights=counts / max(len(x), 1), means=means, covs=covs, counts=counts)
