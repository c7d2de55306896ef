"""Gaussian mixtures: the exact ground truth of every test (THEORY section 1).

p(x) = sum_k w_k N(x; mu_k, S_k) in R^d. Under a forward process the noised marginal stays
a mixture, p_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 S_k + sigma_t^2 I), so log p_t, its score
s_t = grad log p_t and div s_t are exact at every (x, t).

Numerics. Each covariance is checked by Cholesky (a failure names the component) and then
diagonalised once, S_k = U_k diag(nu_k) U_k^T (symmetric eigendecomposition, backward
stable). The noised covariance shares the eigenvectors, C_k(t) = U_k diag(alpha^2 nu_k +
sigma^2) U_k^T, so every quantity is a sum over eigen-coordinates z = U_k^T (x - alpha mu_k):

    log N = -(1/2) [ sum_i z_i^2 / c_i + sum_i log c_i + d log 2 pi ],  c_i = alpha^2 nu_i + sigma^2,
    score_k = -U_k (z / c),   |score_k| = |z / c|,   div score_k = -sum_i 1 / c_i,

with no matrix inverse formed, per-point t handled without refactorising, and the mixture
combined by log-sum-exp: s = sum_k r_k s_k and div s = sum_k r_k (div s_k + |s_k|^2) - |s|^2
with responsibilities r_k = softmax_k(log w_k + log N_k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..common.errors import InputShapeError, MixtureWeightsError, NotPositiveDefiniteError
from ..common.validation import as_float_tensor, broadcast_time, check_points
from .processes import ForwardProcess

__all__ = ["GaussianMixture", "MixtureEvaluation"]

_LOG_2PI = 1.8378770664093453


@dataclass(frozen=True)
class MixtureEvaluation:
    """log p, its score and the divergence of the score at a batch of points.

    Shapes: ``log_prob`` (...,), ``score`` (..., d), ``divergence`` (...,).
    """

    log_prob: torch.Tensor
    score: torch.Tensor
    divergence: torch.Tensor


class GaussianMixture:
    """The mixture sum_k w_k N(mu_k, S_k) in d dimensions.

    Parameters
    ----------
    weights : (K,) non-negative, summing to one (relative tolerance 1e-10).
    means : (K, d), or (K,) for d = 1.
    covs : (K, d, d) symmetric positive definite; (K, d) is read as diagonal variances and
        (K,) as isotropic variances sigma_k^2 (not standard deviations).
    dtype, device : of the stored parameters (float64 by default). Evaluation follows the
        dtype and device of the points passed in.
    """

    def __init__(
        self,
        weights: Any,
        means: Any,
        covs: Any,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        w = as_float_tensor(weights, "weights", dtype=dtype, device=device)
        mu = as_float_tensor(means, "means", dtype=dtype, device=device)
        cov = as_float_tensor(covs, "covs", dtype=dtype, device=device)
        if w.ndim != 1 or w.numel() == 0:
            raise InputShapeError(f"weights must have shape (K,); got {tuple(w.shape)}")
        n_comp = w.numel()
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.ndim != 2 or mu.shape[0] != n_comp:
            raise InputShapeError(
                f"means must have shape (K, d) = ({n_comp}, d); got {tuple(mu.shape)}"
            )
        d = mu.shape[1]
        cov = _full_covariances(cov, n_comp, d)
        _check_weights(w)
        if not bool(torch.isfinite(mu).all()):
            raise InputShapeError("means contain NaN or Inf")
        self.weights, self.means, self.covs = w, mu, cov
        self.cholesky = _checked_cholesky(cov)
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(cov)
        self.log_weights = torch.log(w)
        # All components' eigenbases side by side, (d, K d): x @ rotation gives every z_k = U_k^T x.
        self._rotation = self.eigenvectors.permute(1, 0, 2).reshape(d, n_comp * d)
        self._rotated_means = torch.einsum("ki,kij->kj", mu, self.eigenvectors)

    @property
    def dim(self) -> int:
        """Dimension d of the space."""
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        """Number of components K."""
        return self.weights.numel()

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, d={self.dim})"

    def evaluate(self, x: Any, alpha: Any = 1.0, sigma: Any = 0.0) -> MixtureEvaluation:
        """log p, score and div score of the mixture of alpha-scaled, sigma-noised components.

        Evaluates sum_k w_k N(x; alpha mu_k, alpha^2 S_k + sigma^2 I) at x of shape (..., d),
        with ``alpha`` and ``sigma`` floats or tensors broadcastable to x.shape[:-1]
        (alpha = 1, sigma = 0 is the mixture itself). Computed in x's dtype and device.
        """
        x = check_points(x, self.dim)
        alpha = broadcast_time(alpha, x, "alpha")[..., None, None]
        sigma = broadcast_time(sigma, x, "sigma")[..., None, None]
        nu, rotation, rotated_means, log_w = (
            p.to(dtype=x.dtype, device=x.device)
            for p in (self.eigenvalues, self._rotation, self._rotated_means, self.log_weights)
        )
        c = alpha**2 * nu + sigma**2
        z = (x @ rotation).unflatten(-1, (self.n_components, self.dim)) - alpha * rotated_means
        w = z / c
        log_comp = -0.5 * ((z * w).sum(-1) + torch.log(c).sum(-1) + self.dim * _LOG_2PI)
        joint = log_w + log_comp
        log_prob = torch.logsumexp(joint, dim=-1)
        resp = torch.exp(joint - log_prob[..., None])
        score = -((resp[..., None] * w).flatten(-2) @ rotation.T)
        comp_div = (w**2).sum(-1) - (1.0 / c).sum(-1)
        divergence = (resp * comp_div).sum(-1) - (score**2).sum(-1)
        return MixtureEvaluation(log_prob, score, divergence)

    def log_prob(self, x: Any) -> torch.Tensor:
        """log p(x) (nats) at x of shape (..., d); returns shape (...,)."""
        return self.evaluate(x).log_prob

    def score(self, x: Any) -> torch.Tensor:
        """grad log p(x) at x of shape (..., d); returns shape (..., d)."""
        return self.evaluate(x).score

    def score_divergence(self, x: Any) -> torch.Tensor:
        """div grad log p(x) = Laplacian log p(x); returns shape (...,)."""
        return self.evaluate(x).divergence

    def marginal(self, process: ForwardProcess, t: float) -> GaussianMixture:
        """The noised marginal p_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 S_k + sigma_t^2 I)."""
        alpha = float(process.alpha(float(t)))
        sigma = float(process.sigma(float(t)))
        eye = torch.eye(self.dim, dtype=self.covs.dtype, device=self.covs.device)
        return GaussianMixture(
            self.weights, alpha * self.means, alpha**2 * self.covs + sigma**2 * eye,
            dtype=self.weights.dtype, device=self.weights.device,
        )

    def mean(self) -> torch.Tensor:
        """E[X], shape (d,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[X] = sum_k w_k (S_k + mu_k mu_k^T) - E[X] E[X]^T, shape (d, d)."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n independent draws, shape (n, d), in the mixture's dtype and device.

        Pass a seeded ``torch.Generator`` (on the mixture's device) for reproducible draws.
        """
        if int(n) < 0:
            raise ValueError(f"n must be non-negative; got {n}")
        comp = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        noise = torch.randn(
            int(n), self.dim, dtype=self.weights.dtype, device=self.weights.device,
            generator=generator,
        )
        return self.means[comp] + torch.einsum("nij,nj->ni", self.cholesky[comp], noise)

    def config(self) -> dict[str, Any]:
        """Plain-data description (lists of floats) from which the mixture is rebuilt."""
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covs": self.covs.tolist(),
        }


def _full_covariances(cov: torch.Tensor, n_comp: int, d: int) -> torch.Tensor:
    if cov.ndim == 1 and cov.shape == (n_comp,):
        return cov[:, None, None] * torch.eye(d, dtype=cov.dtype, device=cov.device)
    if cov.ndim == 2 and cov.shape == (n_comp, d):
        return torch.diag_embed(cov)
    if cov.ndim == 3 and cov.shape == (n_comp, d, d):
        return cov
    raise InputShapeError(
        f"covs must have shape (K, d, d) = ({n_comp}, {d}, {d}), (K, d) for diagonal variances "
        f"or (K,) for isotropic variances; got {tuple(cov.shape)}"
    )


def _check_weights(w: torch.Tensor) -> None:
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise MixtureWeightsError(f"weights must be finite and non-negative; got {w.tolist()}")
    total = float(w.sum())
    if abs(total - 1.0) > 1e-10:
        raise MixtureWeightsError(
            f"weights must sum to one; they sum to {total!r} (normalise them first)"
        )


def _checked_cholesky(cov: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(cov).all()):
        raise NotPositiveDefiniteError("covs contain NaN or Inf")
    scale = cov.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(cov.dtype).tiny)
    asym = (cov - cov.transpose(-2, -1)).abs().amax(dim=(-2, -1)) / scale
    tol = 100 * torch.finfo(cov.dtype).eps
    for k in torch.nonzero(asym > tol).flatten().tolist():
        raise NotPositiveDefiniteError(
            f"covariance {k} is not symmetric (max |S - S^T| / max |S| = {float(asym[k]):.3g})"
        )
    chol, info = torch.linalg.cholesky_ex(cov)
    for k in torch.nonzero(info).flatten().tolist():
        raise NotPositiveDefiniteError(
            f"covariance {k} is not positive definite (Cholesky failed at pivot {int(info[k])}); "
            f"eigenvalues {torch.linalg.eigvalsh(cov[k]).tolist()}"
        )
    diag = torch.diagonal(chol, dim1=-2, dim2=-1)
    cond_sqrt = diag.amax(-1) / diag.amin(-1)
    limit = 1.0 / (cov.shape[-1] * torch.finfo(cov.dtype).eps) ** 0.5
    for k in torch.nonzero(cond_sqrt > limit).flatten().tolist():
        raise NotPositiveDefiniteError(
            f"covariance {k} is numerically singular (condition number about "
            f"1e{2 * math.log10(float(cond_sqrt[k])):.1f} exceeds 1 / (d eps))"
        )
    return chol
