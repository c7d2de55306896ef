"""GaussianMixture: exact to round-off against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from scorehamiltonian import (
    ExactScore,
    GaussianMixture,
    InputShapeError,
    MixtureWeightsError,
    NotPositiveDefiniteError,
)

from ..conftest import interior_times, random_mixture

DIMS = [1, 2, 5]


def scipy_log_prob(weights, means, covs, x) -> np.ndarray:
    """Independent reference: scipy's multivariate normal densities combined by logsumexp."""
    comps = [np.log(w) + multivariate_normal(m, c).logpdf(x) for w, m, c in zip(weights, means, covs)]
    return logsumexp(np.stack(comps), axis=0)


@pytest.mark.parametrize("d", DIMS)
def test_log_prob_matches_scipy(d):
    mix = random_mixture(d)
    x = mix.sample(300, torch.Generator().manual_seed(1)) * 1.5
    ref = scipy_log_prob(mix.weights.numpy(), mix.means.numpy(), mix.covs.numpy(), x.numpy())
    np.testing.assert_allclose(mix.log_prob(x).numpy(), ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("d", DIMS)
def test_noised_marginal_matches_scipy_with_explicit_covariance(d, process):
    mix = random_mixture(d, seed=3)
    score = ExactScore(mix, process)
    x = mix.sample(100, torch.Generator().manual_seed(2))
    for t in interior_times(process)[1:]:
        a, s = float(process.alpha(t)), float(process.sigma(t))
        covs = a**2 * mix.covs.numpy() + s**2 * np.eye(d)
        ref = scipy_log_prob(mix.weights.numpy(), a * mix.means.numpy(), covs, x.numpy())
        np.testing.assert_allclose(score.log_prob(x, float(t)).numpy(), ref, rtol=1e-10, atol=1e-10)
        # The per-point-t path and the marginal-mixture path agree.
        per_point = score.evaluate(x, torch.full((100,), float(t), dtype=torch.float64))
        marginal = score.marginal(float(t)).evaluate(x)
        for name in ("log_prob", "score", "divergence"):
            torch.testing.assert_close(getattr(per_point, name), getattr(marginal, name), rtol=1e-12, atol=1e-12)


def test_normalised_in_1d():
    mix = GaussianMixture([0.2, 0.5, 0.3], [-3.0, 0.0, 2.5], [0.16, 0.36, 0.01])
    density = lambda u: float(torch.exp(mix.log_prob(torch.tensor([[u]], dtype=torch.float64))))
    total, err = integrate.quad(density, -20.0, 20.0, points=[-3.0, 0.0, 2.5], limit=200)
    assert abs(total - 1.0) < 1e-9 + err


def _fd4(fn, x: torch.Tensor, h: float) -> torch.Tensor:
    """Fourth-order central differences of a scalar field fn: (..., d) -> (...,), per coordinate."""
    cols = []
    for i in range(x.shape[-1]):
        e = torch.zeros_like(x)
        e[..., i] = h
        cols.append((-fn(x + 2 * e) + 8 * fn(x + e) - 8 * fn(x - e) + fn(x - 2 * e)) / (12 * h))
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("d", DIMS)
def test_score_and_divergence_against_finite_differences_of_log_prob(d, process):
    # Fourth-order stencil with h = 1e-3: truncation h^4 |f^(5)| / 30 <= 3e-14 / c_min^(5/2) and
    # round-off ~ 2 eps |log p| / h ~ 1e-11 for components of variance c_min >= 0.05 (so a few
    # 1e-8 at worst); the tolerance 1e-6 (1 + |s|) sits well above both and far below any bug.
    mix = random_mixture(d, seed=5)
    score = ExactScore(mix, process)
    x = mix.sample(50, torch.Generator().manual_seed(4))
    for t in interior_times(process)[::2]:
        ev = score.evaluate(x, float(t))
        fd_score = _fd4(lambda y, t=float(t): score.log_prob(y, t), x, 1e-3)
        torch.testing.assert_close(ev.score, fd_score, rtol=1e-6, atol=1e-6)
        fd_jac = torch.stack(
            [_fd4(lambda y, t=float(t), i=i: score(y, t)[..., i], x, 1e-3) for i in range(d)], dim=-2
        )
        fd_div = torch.diagonal(fd_jac, dim1=-2, dim2=-1).sum(-1)
        torch.testing.assert_close(ev.divergence, fd_div, rtol=1e-6, atol=1e-6 * d)
        # The Hessian of log p is symmetric: the score is a gradient field.
        torch.testing.assert_close(fd_jac, fd_jac.transpose(-1, -2), rtol=1e-6, atol=1e-6)


def test_sample_moments_within_monte_carlo_error():
    mix = random_mixture(2, seed=7)
    n = 200_000
    x = mix.sample(n, torch.Generator().manual_seed(0))
    cov = mix.covariance()
    z = (x.mean(0) - mix.mean()) / torch.sqrt(torch.diagonal(cov) / n)
    assert bool((z.abs() < 5).all()), f"sample mean off by {z.tolist()} standard errors"
    same = mix.sample(10, torch.Generator().manual_seed(3))
    torch.testing.assert_close(same, mix.sample(10, torch.Generator().manual_seed(3)), rtol=0, atol=0)


def test_zero_weight_components_are_allowed():
    mix = GaussianMixture([0.0, 1.0], [[-1.0], [1.0]], [1.0, 1.0])
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    ref = torch.distributions.Normal(1.0, 1.0).log_prob(x[:, 0])
    torch.testing.assert_close(mix.log_prob(x), ref, rtol=1e-13, atol=1e-13)


def test_covariance_shorthands():
    full = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], torch.stack([torch.eye(2) * 0.5, torch.diag(torch.tensor([1.0, 2.0]))]).double())
    diag = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[0.5, 0.5], [1.0, 2.0]])
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(full.log_prob(x), diag.log_prob(x))


def test_bad_weights_are_refused():
    with pytest.raises(MixtureWeightsError, match="sum to one"):
        GaussianMixture([0.5, 0.6], [0.0, 1.0], [1.0, 1.0])
    with pytest.raises(MixtureWeightsError, match="non-negative"):
        GaussianMixture([1.5, -0.5], [0.0, 1.0], [1.0, 1.0])
    with pytest.raises(MixtureWeightsError):
        GaussianMixture([float("nan"), 1.0], [0.0, 1.0], [1.0, 1.0])


def test_bad_covariances_are_refused():
    with pytest.raises(NotPositiveDefiniteError, match="covariance 1 is not positive definite"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(NotPositiveDefiniteError, match="not symmetric"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(NotPositiveDefiniteError, match="numerically singular"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1e-17]]])
    with pytest.raises(NotPositiveDefiniteError):
        GaussianMixture([1.0], [0.0], [-1.0])


def test_bad_shapes_are_refused():
    with pytest.raises(InputShapeError, match="means"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0]], [1.0, 1.0])
    with pytest.raises(InputShapeError, match="covs"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], torch.ones(2, 3, 3))
    mix = GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    with pytest.raises(InputShapeError, match="last axis"):
        mix.log_prob(torch.zeros(4, 3, dtype=torch.float64))
