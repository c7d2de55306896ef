"""Grid references of low-dimensional densities: rejection sampling, basins, the 1D gap.

Exact cases: a Gaussian N(0, v) has gap 1 / v; a 1D mixture's gap is checked against the
independent Chebyshev Dirichlet-form Galerkin of tests/reference.py; sample moments against the
mixture's within 4 standard errors; basins of a separable energy are known by symmetry.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorehamiltonian import GaussianMixture
from scorehamiltonian.score.quadrature import EnvelopeError, EnvelopeSampler, gap_1d, steepest_descent_basins

from ..reference import galerkin_levels

MIX = GaussianMixture([0.3, 0.7], [-1.5, 1.0], [0.09, 0.25])


def test_gap_of_a_gaussian_is_the_inverse_variance():
    result = gap_1d(lambda x: -0.5 * x[:, 0] ** 2 / 0.3, -6.0, 6.0)
    assert abs(result.value - 1 / 0.3) <= result.error + 1e-12
    assert result.error < 1e-7 * result.value


def test_gap_of_a_mixture_against_chebyshev_galerkin():
    """Galerkin of degree 320 is converged to about 1e-10 here (240 and 320 differ by 5e-11 relative;
    160 is off by 1.4e-5, a check that the comparison can fail)."""
    reference = galerkin_levels(lambda x: MIX.log_prob(torch.from_numpy(x)).numpy(), [-5.0], [6.0], 320, 1600, k=1)[0]
    result = gap_1d(MIX.log_prob, -5.0, 6.0)
    assert abs(result.value - reference) <= result.error + 1e-9 * reference
    assert result.error < 1e-6 * result.value


def test_gap_meshes_are_checked():
    with pytest.raises(ValueError, match="three sizes"):
        gap_1d(MIX.log_prob, -5.0, 6.0, elements=(100, 300, 900))


@pytest.mark.parametrize("d", [1, 2])
def test_envelope_sampler_draws_the_density(d):
    mix = MIX if d == 1 else GaussianMixture([0.3, 0.7], [[-1.5, 0.0], [1.0, 1.0]], [[0.09, 0.04], [0.25, 0.5]])
    box = ([-6.0] * d, [7.0] * d)
    sampler = EnvelopeSampler(mix.log_prob, *box, cell=0.1)
    n = 40000
    x = sampler(n, torch.Generator().manual_seed(0))
    assert x.shape == (n, d) and 0.3 < sampler.acceptance <= 1.0
    var = torch.diagonal(mix.covariance())
    assert bool(((x.mean(0) - mix.mean()).abs() < 4 * torch.sqrt(var / n)).all())
    # the weight of the left mode: P(x_0 < -0.3) within 4 binomial standard errors
    p = float(torch.special.ndtr(torch.tensor((-0.3 + 1.5) / 0.3))) * 0.3 + 0.7 * float(
        torch.special.ndtr(torch.tensor((-0.3 - 1.0) / 0.5)))
    assert abs(float((x[:, 0] < -0.3).double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_envelope_below_the_density_raises():
    sampler = EnvelopeSampler(MIX.log_prob, [-6.0], [7.0], cell=0.1)
    sampler.log_envelope = sampler.log_envelope - 3.0
    with pytest.raises(EnvelopeError, match="smaller cell"):
        sampler(1000, torch.Generator().manual_seed(0))


def test_steepest_descent_basins_of_a_separable_double_well():
    """E = (x^2 - 1)^2 + 0.3 x + y^2: minima near x = -1 and x = +1, split at the barrier top
    x* (the root of 4 x^3 - 4 x + 0.3 near 0), which steepest descent along x finds."""
    x = torch.linspace(-2, 2, 401, dtype=torch.float64)
    X, Y = torch.meshgrid(x, x, indexing="ij")
    labels = steepest_descent_basins((X**2 - 1) ** 2 + 0.3 * X + Y**2)
    roots = torch.unique(labels)
    assert roots.numel() == 2
    top = float(np.roots([4.0, 0.0, -4.0, 0.3])[np.argmin(np.abs(np.roots([4.0, 0.0, -4.0, 0.3])))].real)
    left = labels == labels[0, 200]
    assert bool(left[X < top - 0.01].all()) and not bool(left[X > top + 0.01].any())
    one_d = steepest_descent_basins((x**2 - 1) ** 2 + 0.3 * x)
    assert torch.unique(one_d).numel() == 2
    c = torch.linspace(-2, 2, 41, dtype=torch.float64)
    X3, Y3, Z3 = torch.meshgrid(c, c, c, indexing="ij")
    three_d = steepest_descent_basins((X3**2 - 1) ** 2 + 0.3 * X3 + Y3**2 + Z3**2)
    assert torch.unique(three_d).numel() == 2 and bool((three_d[X3 < top - 0.1] == three_d[0, 20, 20]).all())
