"""spectral_gap: honest error bars against exact and independent references."""

from __future__ import annotations

import math

import pytest
import torch

from scorehamiltonian import OU, ExactScore, GaussianMixture, InputShapeError, as_score, example
from scorehamiltonian.score.examples import four_mode_benchmark
from scorehamiltonian.spectral.gap import spectral_gap
from scorehamiltonian.spectral.grid import box_from_mixture

from ..reference import galerkin_levels


def _reference_1d(mixture: GaussianMixture, degree: int = 400) -> float:
    lo, hi = box_from_mixture(mixture, 1e-14)
    log_p = lambda x: mixture.log_prob(torch.from_numpy(x)).numpy()
    return float(galerkin_levels(log_p, lo, hi, degree, 1500, k=1)[0])


def _check(result, want: float, rtol: float) -> None:
    assert result.converged, result
    assert abs(result.value - want) <= result.error, (
        f"true error {abs(result.value - want):.3g} outside the estimate {result.error:.3g}"
    )
    assert result.error <= rtol * abs(result.value)


@pytest.mark.parametrize("order", [2, 4])
def test_gaussian_gap_is_one_over_the_largest_variance(order):
    score = ExactScore(GaussianMixture([1.0], [[0.3, -0.2]], [[[0.5, 0.2], [0.2, 1.2]]]))
    nu_max = float(torch.linalg.eigvalsh(score.mixture.covs[0]).max())
    _check(spectral_gap(score, 0.0, rtol=1e-6 if order == 4 else 1e-4, order=order), 1 / nu_max, 1e-4)


@pytest.mark.parametrize("t", [0.5, 5.0])
def test_degenerate_first_excited_level_still_gets_an_error_bar(t):
    """An isotropic 2D target has lambda_1 = lambda_2 (degenerate), where Kato-Temple has no
    separation: the ground-state form falls back on the solver's cluster bound and must still
    converge with an error that covers the truth (OU: the gap of an isotropic Gaussian of
    variance v_t is 1 / v_t; at t = 5 the four-mode example is nearly isotropic)."""
    score = ExactScore(GaussianMixture([1.0], [[0.2, -0.1]], [[[0.4, 0.0], [0.0, 0.4]]]), OU())
    v_t = float(score.marginal(t).covs[0, 0, 0])
    _check(spectral_gap(score, t, rtol=1e-5), 1 / v_t, 1e-5)
    if t == 5.0:
        four_modes = spectral_gap(ExactScore(example("four_mode_2d"), OU()), t, rtol=1e-3)
        assert four_modes.converged and four_modes.error <= 1e-3 * four_modes.value


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_one_dimensional_mixtures_against_galerkin(t):
    mix = GaussianMixture([0.3, 0.7], [-2.0, 1.5], [0.16, 0.36])
    score = ExactScore(mix, OU())
    _check(spectral_gap(score, t, rtol=1e-6), _reference_1d(score.marginal(t)), 1e-6)


def test_strongly_bimodal_gap_below_1e_3():
    # The Galerkin reference itself moves by 3e-6 relative with its box here, so the test
    # asks for rtol = 1e-5, which it can check.
    mix = GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.16, 0.16])
    want = _reference_1d(mix, degree=600)
    assert want < 1e-3
    _check(spectral_gap(ExactScore(mix), 0.0, rtol=1e-5), want, 1e-5)


@pytest.mark.parametrize("t", [0.2, 0.5])
def test_separable_2d_mixture_is_the_smaller_factor_gap(t):
    # Four modes at (+-1.5, +-1.5) with covariance diag(0.3^2, 0.6^2) (the benchmark problem):
    # a product of two 1D bimodal factors, and so is p_t under OU, whose gap is therefore the
    # smaller of the factors' gaps.
    score = ExactScore(four_mode_benchmark(), OU())
    marg = score.marginal(t)
    factors = [
        GaussianMixture([0.5, 0.5], [-1.5 * float(OU().alpha(t)), 1.5 * float(OU().alpha(t))],
                        [float(marg.covs[0, a, a])] * 2)
        for a in range(2)
    ]
    want = min(_reference_1d(f) for f in factors)
    _check(spectral_gap(score, t, rtol=1e-5), want, 1e-5)


def test_potential_form_for_a_score_without_log_density():
    mix = GaussianMixture([0.3, 0.7], [-2.0, 1.5], [0.16, 0.36])
    exact = ExactScore(mix)
    opaque = as_score(lambda x, t: exact(x, t), dim=1)
    result = spectral_gap(opaque, 0.3, rtol=1e-5, box=box_from_mixture(exact.marginal(0.3), 1e-14))
    assert result.form == "potential"
    _check(result, _reference_1d(exact.marginal(0.3)), 1e-5)
    chosen = spectral_gap(opaque, 0.3, rtol=1e-4)  # box from Langevin samples
    assert chosen.converged and abs(chosen.value - result.value) <= chosen.error + result.error


def test_not_converging_within_the_budget_is_flagged():
    mix = GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.16, 0.16])
    with pytest.warns(UserWarning, match="did not reach"):
        result = spectral_gap(ExactScore(mix), 0.0, rtol=1e-10, max_unknowns=300)
    assert not result.converged
    assert math.isinf(result.error) or result.error > 1e-10 * result.value


def test_high_dimension_points_to_ritz_gap():
    with pytest.raises(InputShapeError, match="ritz_gap"):
        spectral_gap(ExactScore(GaussianMixture([1.0], [[0.0] * 5], [1.0])), 0.0)
