"""Sample judges (scorehamiltonian.sampling.sample_judges) against closed forms, within their standard errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scorehamiltonian import GaussianMixture
from scorehamiltonian.common.errors import InputShapeError
from scorehamiltonian.sampling.sample_judges import (
    _frechet,
    basin_weight_error,
    cross_entropy_gap,
    expected_energy,
    fit_classifier_judge,
    mmd,
    sliced_wasserstein,
)
from scorehamiltonian.score.systems import system

D = 4
SHIFT = torch.tensor([2.0, -1.0, 0.5, 1.5], dtype=torch.float64)


def gaussian(n, seed, mean=0.0, std=1.0):
    generator = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, D, generator=generator, dtype=torch.float64)


def test_sliced_wasserstein_of_a_translation_and_its_sample_floor():
    # theta.(X + Delta) is theta.X shifted by theta.Delta: W1 per slice = |theta.Delta| and
    # SW1 = |Delta| E|theta_1| = |Delta| Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)).
    exact = float(SHIFT.norm()) * math.gamma(D / 2) / (math.sqrt(math.pi) * math.gamma((D + 1) / 2))
    n = 8000
    shifted = sliced_wasserstein(gaussian(n, 1, SHIFT), gaussian(n, 2), n_projections=512)
    floor = sliced_wasserstein(gaussian(n, 3), gaussian(n, 4))
    # The empirical W1 is biased upwards by at most the floor two samples of one law give.
    assert abs(shifted.value - exact) < 4 * shifted.error + floor.value
    assert shifted.error < 0.02 * exact
    # The floor is sampling noise: it falls as (n / B)^(-1/2) (ratio 1/2 for 4x the samples).
    smaller = sliced_wasserstein(gaussian(n // 4, 5), gaussian(n // 4, 6))
    assert floor.value / smaller.value == pytest.approx(0.5, abs=4 * (floor.error / floor.value
                                                                     + smaller.error / smaller.value) * 0.5)


def _mmd2_exact(delta2, h, s2=1.0):
    # X - Y ~ N(Delta, 2 s^2 I): E exp(-|X - Y|^2 / (2 h^2)) = (h^2 / (h^2 + 2 s^2))^(d/2) exp(-|Delta|^2 / (2 (h^2 + 2 s^2))).
    c = (h * h / (h * h + 2 * s2)) ** (D / 2)
    return 2 * c * (1 - math.exp(-delta2 / (2 * (h * h + 2 * s2))))


def test_mmd_matches_its_closed_form_and_is_zero_for_one_law():
    h = 2.0
    shifted = mmd(gaussian(8000, 1, SHIFT), gaussian(8000, 2), bandwidth=h)
    assert shifted.value == pytest.approx(_mmd2_exact(float(SHIFT @ SHIFT), h), abs=4 * shifted.error)
    assert shifted.error < 0.05 * shifted.value
    same = mmd(gaussian(8000, 3), gaussian(8000, 4), bandwidth=h)
    assert abs(same.value) < 4 * same.error
    assert mmd(gaussian(2000, 3), gaussian(2000, 4)).name.startswith("MMD^2 (h = ")


def test_cross_entropy_gap_of_a_shifted_gaussian():
    # p = N(0, I): -log p = |x|^2 / 2 + const; E_q - E_p = (|m|^2 + d) / 2 - d / 2 = |m|^2 / 2.
    def log_p(x):
        return -0.5 * (x**2).sum(-1)

    gap = cross_entropy_gap(gaussian(20000, 1, SHIFT), gaussian(20000, 2), log_p)
    assert gap.value == pytest.approx(float(SHIFT @ SHIFT) / 2, abs=4 * gap.error)
    same = cross_entropy_gap(gaussian(20000, 3), gaussian(20000, 4), log_p)
    assert abs(same.value) < 4 * same.error
    # The floor E_p[-log p] computed once is the same estimate as from the samples: |x|^2 / 2 is
    # chi^2_d / 2, mean d / 2 and standard error sqrt(d / 2 / m).
    floor = expected_energy(gaussian(20000, 2), log_p)
    assert floor.value == pytest.approx(D / 2, abs=4 * floor.error)
    assert floor.error == pytest.approx(math.sqrt(D / 2 / 20000), rel=0.05)
    reused = cross_entropy_gap(gaussian(20000, 1, SHIFT), floor, log_p)
    assert (reused.value, reused.error, reused.n, reused.m) == pytest.approx((gap.value, gap.error, gap.n, gap.m),
                                                                           rel=1e-12)


def test_basin_weight_error_of_a_known_mixture():
    means = torch.tensor([[-4.0] + [0.0] * (D - 1), [4.0] + [0.0] * (D - 1)], dtype=torch.float64)

    def basin(x):
        return (x[:, 0] > 0).long()  # the components are 4 std from the boundary: overlap 3e-5

    weights = [0.3, 0.7]
    same = basin_weight_error(GaussianMixture(weights, means, [1.0, 1.0]).sample(20000, torch.Generator().manual_seed(1)),
                              basin, weights)
    assert same.value < 4 * same.error + 3.2e-5
    off = basin_weight_error(GaussianMixture([0.5, 0.5], means, [1.0, 1.0]).sample(20000, torch.Generator().manual_seed(2)),
                             basin, weights)
    assert off.value == pytest.approx(0.2, abs=4 * off.error + 3.2e-5)
    assert off.parts[0] == pytest.approx(0.2, abs=4 * off.error + 3.2e-5) and sum(off.parts) == pytest.approx(0.0)


def test_frechet_distance_of_gaussians_is_the_closed_form():
    """N(0, I) against N(m, 4 I) in d = 4: |m|^2 + tr(I + 4 I - 2 (4 I)^(1/2)) = |m|^2 + 4; from
    20000 samples each within a few of the estimate's sampling error (about 0.1 here)."""
    a, b = gaussian(20000, 1).numpy(), gaussian(20000, 2, mean=SHIFT, std=2.0).numpy()
    assert _frechet(a, b) == pytest.approx(float(SHIFT @ SHIFT) + D, abs=0.3)
    assert abs(_frechet(a, a)) < 1e-9


def test_classifier_judge_on_the_digits():
    """scikit-learn's MLP on the digits (issue 22's judge without a density): the held-out rows against
    themselves give 0; one class alone gives the class TV 1 - p_0 within its error; the Frechet
    distance grows with noise of std 1 and 2 added to the training rows, from the rows themselves
    (the floor), by more than twice the combined errors at each step."""
    digits = system("digits")
    judge = fit_classifier_judge(digits.train, digits.train_labels, digits.held_out, digits.held_out_labels)
    assert judge.accuracy > 0.9
    assert judge.class_tv(judge.reference).value == 0.0 and abs(judge.frechet(judge.reference).value) < 1e-8
    zeros = digits.train[digits.train_labels == 0]
    p0 = float(judge._classes(judge.reference)[0])
    single = judge.class_tv(zeros)
    assert single.value == pytest.approx(1 - p0, abs=4 * single.error + 0.02)
    generator = torch.Generator().manual_seed(0)
    values = [judge.floor()] + [judge.frechet(digits.train + s * torch.randn(digits.train.shape, generator=generator,
                                                                             dtype=torch.float64)) for s in (1.0, 2.0)]
    assert all(a.value + 2 * (a.error + b.error) < b.value for a, b in itertools.pairwise(values)), values
    noised = [digits.train + s * torch.randn(digits.train.shape, generator=generator, dtype=torch.float64)
              for s in (0.3, 0.4)]
    difference = judge.frechet_difference(*noised)
    assert difference.value == pytest.approx(judge.frechet(noised[0]).value - judge.frechet(noised[1]).value, rel=1e-12)
    assert difference.value < -3 * difference.error and difference.error < 0.5 * judge.frechet(noised[1]).error


def test_bad_samples_are_refused():
    with pytest.raises(InputShapeError):
        sliced_wasserstein(gaussian(100, 1), torch.zeros(100, 3))
    with pytest.raises(InputShapeError):
        mmd(torch.zeros(100), torch.zeros(100))
    with pytest.raises(InputShapeError):
        sliced_wasserstein(gaussian(10, 1), gaussian(10, 2), n_batches=10)
    with pytest.raises(ValueError):
        basin_weight_error(gaussian(100, 1), lambda x: (x[:, 0] > 0).long(), [0.5, 0.6])
    with pytest.raises(InputShapeError):
        basin_weight_error(gaussian(100, 1), lambda x: (x[:, 0] > 0).long() + 1, [0.5, 0.5])
    with pytest.raises(InputShapeError):
        cross_entropy_gap(gaussian(100, 1), gaussian(100, 2), lambda x: torch.full((x.shape[0],), -math.inf))
    with pytest.raises(ValueError, match="expected_energy"):
        cross_entropy_gap(gaussian(100, 1), sliced_wasserstein(gaussian(100, 1), gaussian(100, 2)), lambda x: -x[:, 0])
