"""The built-in real systems: Mueller-Brown, many-well-32, two-moons, digits.

References: /work/shared/reference/mueller_brown.md (independent quadrature: basin probabilities,
free energies, gaps of H_t in z = (x - M) / S), FAB's published normalising constant of the double
well's first coordinate (Z = 11784.50927, fab-torch, ten digits), spectral_gap's grid operator for the
1D factor's gap, and sample frequencies within binomial standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from scorehamiltonian import SamplesRequiredError, spectral_gap
from scorehamiltonian.score.interface import DensityScore
from scorehamiltonian.score.systems import SYSTEMS, ManyWell, MuellerBrown, mueller_brown_potential, system

#: mueller_brown.md: probabilities to their printed digits, Delta F in kT, lambda_1 of H_t in 1/z^2.
MB_PROBABILITIES = (0.97438, 0.022392, 0.0032298)
MB_FREE_ENERGIES = {(1, 0): 3.7731, (2, 0): 5.7094, (2, 1): 1.9363}
MB_GAPS = {0.0: 1.04850e-3, 0.05: 1.79978e-3, 0.2: 1.341676e-2, 1.0: 0.661553}
FAB_LOG_Z = math.log(11784.50927)


@pytest.fixture(scope="module")
def mb() -> MuellerBrown:
    return system("mueller-brown")


@pytest.fixture(scope="module")
def many_well() -> ManyWell:
    return system("many-well-32")


def test_registry():
    assert set(SYSTEMS) == {"mueller-brown", "many-well-32", "two-moons", "digits"}
    assert system("two-moons") is system("two-moons")
    with pytest.raises(KeyError, match="unknown system"):
        system("three-moons")


# -- Mueller-Brown ---------------------------------------------------------------------------------


def test_mueller_brown_coordinates_and_density(mb):
    """log p_0 = -beta U(M + S z); the exact score at t = 0 is -beta S grad U; log Z in z is the
    physical one minus d log S; the standardised density has mean (M_exact - M) / S, about 0."""
    z = torch.tensor([[0.0, 0.0], [-0.1, 0.3]], dtype=torch.float64)
    x = mb.to_physical(z)
    torch.testing.assert_close(mb.from_physical(x), z)
    assert abs(float(mb.potential(mb.from_physical(torch.tensor([[-0.558, 1.442]], dtype=torch.float64)))) + 146.70) < 0.01
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mueller_brown_potential(leaf).sum(), leaf)
    score = mb.exact_score()
    assert isinstance(score, DensityScore) and score.normalised and score.can_sample
    torch.testing.assert_close(score(z, 0.0), -mb.beta * mb.scale * grad, rtol=1e-12, atol=1e-12)
    assert mb.log_z_error < 1e-12


def test_mueller_brown_noised_density_is_normalised(mb):
    """int p_t dz = 1 by an independent trapezoid on a fine grid (the quadrature's log Z is in)."""
    score = mb.exact_score()
    t, h = 0.2, 0.05
    axis = torch.arange(-14.0, 11.0 + h / 2, h, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    mass = float(torch.exp(score.log_prob(grid, t)).sum()) * h * h
    assert abs(mass - 1.0) < 1e-9


def test_mueller_brown_samples_match_the_basin_probabilities():
    """Exact samples fall in the basins (steepest descent on a 0.004 grid) with the exact
    probabilities, within 4 binomial standard errors."""
    mb = MuellerBrown()
    mb.basin_spacing = 0.004
    result = mb.basins()
    n = 100000
    z = mb.sample(n, torch.Generator().manual_seed(0))
    found = torch.bincount(mb.basin_of(z), minlength=3)[:3].double() / n
    p = result.probabilities
    assert bool(((found - p).abs() < 4 * torch.sqrt(p * (1 - p) / n)).all())


@pytest.mark.slow
def test_mueller_brown_basins_match_the_reference(mb):
    result = mb.basins()
    assert result.names == ("A", "B", "C") and result.other < 1e-12
    for found, ref in zip(result.probabilities.tolist(), MB_PROBABILITIES):
        digits = 10 ** (math.floor(math.log10(ref)) - 4)       # the reference's last printed digit
        assert abs(found - ref) <= digits / 2
    # the grid rule's own uncertainty: the change from a grid of twice the spacing
    assert bool((result.errors / result.probabilities < 1e-3).all())
    F = -torch.log(result.probabilities)
    for (i, j), ref in MB_FREE_ENERGIES.items():
        assert abs(float(F[i] - F[j]) - ref) <= 0.5e-4
    torch.testing.assert_close(result.minima, torch.tensor([[-0.558, 1.442], [0.624, 0.028], [-0.050, 0.466]],
                                                           dtype=torch.float64), atol=2.5e-3, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("t", [0.05, 0.2, 1.0])
def test_mueller_brown_gap_matches_the_reference(mb, t):
    """Issue 20's target: spectral_gap on the exact noised score with default arguments (the
    automatic box from its log-density), rtol 1e-6, against the reference quadrature (4 - 11 s
    each on the idle 2-core machine, first call in a fresh process)."""
    gap = spectral_gap(mb.exact_score(), t, rtol=1e-6)
    assert gap.converged and gap.error <= 1e-6 * gap.value
    ref = MB_GAPS[t]
    assert abs(gap.value - ref) <= 2 * gap.error + 0.5 * 10 ** (math.floor(math.log10(ref)) - 5)


# -- many-well ---------------------------------------------------------------------------------------


def test_many_well_log_z_is_fab_s(many_well):
    assert abs(many_well.log_z_factor - FAB_LOG_Z) < 1e-9
    assert abs(many_well.log_z - 16 * (FAB_LOG_Z + 0.5 * math.log(2 * math.pi))) < 16e-9
    x = torch.randn(5, 32, dtype=torch.float64)
    pairs = x.reshape(5, 16, 2)
    direct = -(pairs[..., 0] ** 4 - 6 * pairs[..., 0] ** 2 - 0.5 * pairs[..., 0] + 0.5 * pairs[..., 1] ** 2).sum(-1)
    torch.testing.assert_close(many_well.log_prob(x), direct)
    score = many_well.exact_score()
    torch.testing.assert_close(score.log_prob(x, 0.0), direct - many_well.log_z)


def test_many_well_basin_weights_and_samples(many_well):
    """P_+ of one factor by quadrature; the number of shallow wells of exact samples is
    Binomial(16, P_-): its mean within 4 standard errors, and the all-deep frequency P_+^16."""
    result = many_well.basins()
    plus, minus = result.probabilities.tolist()
    assert abs(plus + minus - 1) < 1e-12 and result.errors.max() < 1e-9
    assert abs(float(result.free_energies[1]) - math.log(plus / minus)) < 1e-12
    n = 20000
    counts = many_well.basin_of(many_well.sample(n, torch.Generator().manual_seed(0))).double()
    assert abs(float(counts.mean()) - 16 * minus) < 4 * math.sqrt(16 * plus * minus / n)
    all_deep = plus**16
    assert abs(float((counts == 0).double().mean()) - all_deep) < 4 * math.sqrt(all_deep * (1 - all_deep) / n)


@pytest.mark.parametrize("t", [0.0, 0.2])
def test_many_well_gap_against_the_grid_operator(many_well, t):
    """The product's gap is its double-well factor's here (below the Gaussian's 1); the factor's by
    lumped finite elements (gap_1d) against spectral_gap's finite differences on its exact noised
    density, two independent discretisations. (Chebyshev Galerkin stalls 5e-8 high at t = 0 for
    this metastable factor: degrees 320, 480, 640 give 8.6121248e-4 +- 1e-11.)"""
    gap = many_well.gap(t)
    factor = many_well.exact_score().factors[0]
    alpha, sigma = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    box = ([-3.5 * alpha - 8 * sigma], [3.5 * alpha + 8 * sigma])
    ref = spectral_gap(factor, t, rtol=1e-10, box=box)
    assert ref.converged and gap.value < 1.0
    assert abs(gap.value - ref.value) <= gap.error + ref.error + 1e-10 * ref.value


def test_many_well_score_is_the_product_of_its_factors(many_well):
    score = many_well.exact_score()
    x = many_well.sample(4, torch.Generator().manual_seed(1))
    t = 0.1
    ev = score.evaluate(x, t)
    factor = score.factors[0].evaluate(x[:, 0::2].reshape(-1, 1), t)
    torch.testing.assert_close(ev.score[:, 0::2], factor.score.reshape(4, 16))
    torch.testing.assert_close(ev.score[:, 1::2], -x[:, 1::2])      # N(0, 1) stays N(0, 1) under OU
    torch.testing.assert_close(ev.divergence, factor.divergence.reshape(4, 16).sum(1) - 16.0)


# -- data sets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, shapes, classes", [("two-moons", ((16000, 2), (4000, 2)), 2),
                                                    ("digits", ((1347, 64), (450, 64)), 10)])
def test_data_sets(name, shapes, classes):
    data = system(name)
    assert not data.has_density and data.dim == shapes[0][1]
    assert tuple(data.train.shape) == shapes[0] and tuple(data.held_out.shape) == shapes[1]
    assert data.train.dtype == torch.float64
    torch.testing.assert_close(data.train.mean(0), torch.zeros(data.dim, dtype=torch.float64), atol=1e-12, rtol=0)
    assert abs(float((data.train**2).mean()) - 1.0) < 1e-12
    assert set(data.train_labels.tolist()) == set(range(classes)) == set(data.held_out_labels.tolist())
    x = data.sample(100, torch.Generator().manual_seed(0))
    assert x.shape == (100, data.dim) and bool((x[:, None, :] == data.train[None]).all(-1).any(-1).all())
    with pytest.raises(SamplesRequiredError, match="no exact density"):
        data.exact_score()


def test_digits_split_is_stratified():
    data = system("digits")
    train = torch.bincount(data.train_labels).double() / data.train_labels.numel()
    held = torch.bincount(data.held_out_labels).double() / data.held_out_labels.numel()
    assert float((train - held).abs().max()) < 0.01
    pixels = data.to_physical(data.train)
    assert float(pixels.min()) > -1e-9 and float(pixels.max()) < 16 + 1e-9
