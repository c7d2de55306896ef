"""The exact noised density by quadrature (NoisedDensity) and product scores, against exact mixtures.

A Gaussian mixture p_0 has an exact p_t (THEORY section 1), so the quadrature's log p_t, score and
divergence are checked against ExactScore. The trapezoid rule on a Gaussian of width w with spacing
0.7 w errs by about 2 exp(-2 pi^2 / 0.7^2) ~ 1e-17 (relative), and the truncations by less than
the claimed tol = 1e-10 where p_t >= 1e-14 max p_0 / alpha^d (the points tested), so what is left is
round-off: 1e-12 on log p_t and on the score relative to 1 + |s|, 1e-10 relative to 1 + |div s| on
the divergence plus its own round-off, 1e-15 d / sigma_t^2 (the difference tr Cov[r] - d sigma^2).
"""

from __future__ import annotations

import math

import pytest
import torch

from scorehamiltonian import OU, VE, ExactScore, GaussianMixture, InputShapeError
from scorehamiltonian.score.interface import AnalyticScore
from scorehamiltonian.score.noised import NoisedDensity, ProductScore

MIX_1D = GaussianMixture([0.3, 0.7], [-1.0, 1.2], [0.04, 0.25])
MIX_2D = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.3]],
                         [[[0.04, 0.01], [0.01, 0.09]], [[0.25, -0.05], [-0.05, 0.1]]])
BOX = {1: ([-6.0], [7.5]), 2: ([-7.0, -7.0], [7.0, 7.0])}
MIX = {1: MIX_1D, 2: MIX_2D}


def _density(d: int, process=None, layout: str = "auto") -> NoisedDensity:
    mix = MIX[d]
    # an arbitrary constant: the quadrature's log Z must absorb it
    return NoisedDensity(lambda y: mix.log_prob(y) + 3.0, *BOX[d], process, layout=layout,
                         sampler=lambda n, g: mix.sample(n, g))


def _significant(exact: ExactScore, x: torch.Tensor, t: float) -> torch.Tensor:
    """The points where p_t >= 1e-14 max p_0 / alpha^d (where the accuracy is claimed)."""
    d = exact.dim
    top = float(exact.mixture.log_prob(exact.mixture.means).max()) - d * math.log(float(exact.process.alpha(t)))
    return exact.log_prob(x, t) >= top + math.log(1e-14)


def _assert_matches(found, exact, sigma: float, d: int) -> None:
    torch.testing.assert_close(found.log_prob, exact.log_prob, rtol=0, atol=1e-12)
    err = (found.score - exact.score).norm(dim=-1) / (1 + exact.score.norm(dim=-1))
    assert float(err.max()) < 1e-12
    bound = 1e-10 * (1 + exact.divergence.abs()) + (1e-15 * d / sigma**2 if sigma > 0 else 0.0)
    assert bool(((found.divergence - exact.divergence).abs() <= bound).all())


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("layout", ["grid", "local"])
def test_noised_mixture_matches_exact(d, layout):
    density, exact = _density(d, layout=layout), ExactScore(MIX[d], OU())
    gen = torch.Generator().manual_seed(0)
    assert abs(density.log_z - 3.0) < 1e-13 and density.log_z_error < 1e-13
    for t in ([0.0, 1e-3, 0.05, 1.0] if layout == "grid" else [1e-3, 0.05]):
        x = torch.cat([exact.sample(150, t, gen), 2.5 * torch.randn(50, d, dtype=torch.float64, generator=gen)])
        x = x[_significant(exact, x, t)]
        sigma = float(OU().sigma(t))
        _assert_matches(density.evaluate(x, t), exact.evaluate(x, t), sigma, d)
        torch.testing.assert_close(density.log_prob(x, t), exact.log_prob(x, t), rtol=0, atol=1e-12)
        torch.testing.assert_close(density(x, t), exact(x, t), rtol=1e-12, atol=1e-12)


def test_layouts_chosen_by_grid_size_and_exact_at_zero_noise():
    density = _density(2)
    assert density.choose_layout(0.0) == "exact"
    assert density.choose_layout(0.05) == "grid"
    assert density.choose_layout(1e-7) == "local"   # the grid would need more than 2^22 nodes


def test_zero_noise_is_the_analytic_data_density():
    density = _density(2)
    analytic = AnalyticScore(lambda y, t: MIX_2D.log_prob(y), OU(), 2, normalised=True)
    x = MIX_2D.sample(64, torch.Generator().manual_seed(1))
    found, exact = density.evaluate(x, 0.0), analytic.evaluate(x, 0.0)
    for a, b in zip((found.log_prob, found.score, found.divergence), (exact.log_prob, exact.score, exact.divergence)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_other_process_and_per_point_times():
    process = VE(sigma_min=0.01, sigma_max=5.0)
    density, exact = _density(1, process), ExactScore(MIX_1D, process)
    gen = torch.Generator().manual_seed(2)
    t = torch.tensor([0.0, 0.2, 0.5, 1.0] * 8, dtype=torch.float64)
    x = torch.cat([exact.sample(8, float(s), gen) for s in (0.0, 0.2, 0.5, 1.0)])
    x = x.reshape(4, 8, 1).transpose(0, 1).reshape(32, 1)
    found, ref = density.evaluate(x, t), exact.evaluate(x, t)
    _assert_matches(found, ref, float(process.sigma(0.0)), 1)


def test_far_tails_stay_finite_and_below_the_truth():
    """Beyond the claimed region the truncated sums can only miss mass: log p_t is finite and low."""
    density, exact = _density(2), ExactScore(MIX_2D, OU())
    x = torch.tensor([[30.0, -25.0], [-8.0, 8.0], [7.5, 0.0]], dtype=torch.float64)
    for t in (1e-3, 0.3):
        found = density.evaluate(x, t)
        assert bool(torch.isfinite(found.log_prob).all() & torch.isfinite(found.score).all())
        assert bool((found.log_prob <= exact.log_prob(x, t) + 1e-9).all())


def test_box_that_cuts_the_density_is_refused():
    with pytest.raises(ValueError, match="cuts p_0"):
        NoisedDensity(lambda y: MIX_1D.log_prob(y), [-2.0], [3.0])
    with pytest.raises(InputShapeError):
        NoisedDensity(lambda y: MIX_1D.log_prob(y), [-2.0, 0.0, 1.0], [3.0, 1.0, 2.0])


def test_exact_samples_of_the_noised_density():
    density = _density(1)
    t, n = 0.3, 40000
    x = density.sample(n, t, torch.Generator().manual_seed(3))
    marginal = ExactScore(MIX_1D, OU()).marginal(t)
    mean, var = float(marginal.mean()[0]), float(marginal.covariance()[0, 0])
    assert x.shape == (n, 1) and density.can_sample
    assert abs(float(x.mean()) - mean) < 4 * math.sqrt(var / n)


def test_product_of_factors_is_the_product_mixture():
    """ProductScore of a quadrature factor (x_0, x_2) and an exact one (x_1) equals the exact
    score of the product mixture in 3D, whose components are all pairs of components."""
    f1, f2 = MIX_1D, GaussianMixture([0.5, 0.5], [-0.5, 0.8], [0.3, 0.1])
    weights, means, covs = [], [], []
    for i in range(2):
        for j in range(2):
            for k in range(2):
                weights.append(float(f1.weights[i] * f2.weights[j] * f1.weights[k]))
                means.append([float(f1.means[i, 0]), float(f2.means[j, 0]), float(f1.means[k, 0])])
                covs.append([float(f1.covs[i, 0, 0]), float(f2.covs[j, 0, 0]), float(f1.covs[k, 0, 0])])
    exact = ExactScore(GaussianMixture(weights, means, covs), OU())
    product = ProductScore([_density(1), ExactScore(f2, OU())], [[[0], [2]], [[1]]])
    assert product.dim == 3 and product.normalised
    gen = torch.Generator().manual_seed(4)
    for t in (0.0, 0.05, 0.7):
        x = exact.sample(100, t, gen)
        _assert_matches(product.evaluate(x, t), exact.evaluate(x, t), float(OU().sigma(t)), 3)


def test_product_blocks_are_checked():
    gauss = ExactScore(GaussianMixture([1.0], [[0.0]], [1.0]), OU())
    with pytest.raises(InputShapeError, match="once each"):
        ProductScore([gauss, gauss], [[[0], [1]], [[1]]])
    with pytest.raises(InputShapeError, match="shape"):
        ProductScore([gauss], [[0, 1]])
