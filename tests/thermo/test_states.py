"""Free energies of states against exact basin masses of Gaussian mixtures (normal CDFs)."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import ndtr

from scorehamiltonian import OU, ConvergenceWarning, ExactScore, GaussianMixture, ScoreEnsemble, as_score
from scorehamiltonian.common.errors import InputShapeError
from scorehamiltonian.thermo.states import state_free_energies

TRIMODAL = GaussianMixture([0.2, 0.5, 0.3], [-3.0, 0.0, 2.5], [0.16, 0.36, 0.09])


def _basin_masses(mixture: GaussianMixture, alpha: float = 1.0, sigma: float = 0.0) -> np.ndarray:
    """Exact masses between the density's minima of a 1D mixture noised to (alpha, sigma): each
    minimum by brentq on the score, bracketed where it turns from negative to positive on a
    fine grid, the masses by normal CDFs."""
    w, mu = mixture.weights.numpy(), alpha * mixture.means[:, 0].numpy()
    sd = np.sqrt(alpha**2 * mixture.covs[:, 0, 0].numpy() + sigma**2)

    def score(x: float) -> float:
        dens = w * np.exp(-0.5 * ((x - mu) / sd) ** 2) / sd
        return float((dens * -(x - mu) / sd**2).sum())

    x = np.linspace(mu.min(), mu.max(), 20001)
    signs = np.sign([score(v) for v in x])
    rises = np.flatnonzero((signs[:-1] < 0) & (signs[1:] > 0))
    cuts = [-np.inf] + [brentq(score, x[i], x[i + 1]) for i in rises] + [np.inf]
    return np.array([float((w * (ndtr((b - mu) / sd) - ndtr((a - mu) / sd))).sum()) for a, b in itertools.pairwise(cuts)])


def test_basins_of_an_exact_and_of_a_learned_score_match_the_exact_masses():
    """Automatic basins of the 1D three-mode mixture: F_A = -log P(A) within its reported
    numerical error of the exact -log of the CDF masses, for the exact log-density (t = 0) and
    for a score known only as a field (least-squares potential, t = 1e-3), whose error is larger
    and still covers; the sample-count estimate within 4 of its standard errors."""
    exact = ExactScore(TRIMODAL, OU())
    x = TRIMODAL.sample(20000, torch.Generator().manual_seed(0))
    result = state_free_energies(exact, samples=x, t=0.0)
    want = -np.log(np.sort(_basin_masses(TRIMODAL))[::-1])
    assert result.converged and len(result.names) == 3
    assert np.all(np.abs(result.free_energy - want) <= result.numerical + 1e-12)
    assert np.all(np.abs(result.sample_free_energy - want) <= 4 * result.sample_stderr)
    assert result.numerical.max() < 2e-3  # O(h p_saddle / P(A)): h = 0.003, p_saddle < 0.1, P(A) >= 0.2
    t = 1e-3
    field = as_score(lambda y, s: exact(y, s), process=OU(), dim=1)
    learned = state_free_energies(field, samples=x, t=t)
    alpha, sigma = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    want_t = -np.log(np.sort(_basin_masses(TRIMODAL, alpha, sigma))[::-1])
    assert np.all(np.abs(learned.free_energy - want_t) <= learned.numerical)


def test_given_boxes_in_2d_and_an_energy_callable():
    """Two boxes around the modes of a 2D mixture with diagonal covariances: P(box) is a sum of
    products of normal CDFs. Given as an energy callable E = -log p + 7 (any constant)."""
    mixture = GaussianMixture([0.4, 0.6], [[-2.0, 0.0], [2.0, 1.0]], [[0.5, 0.3], [0.4, 0.6]])
    boxes = [([-4.0, -2.0], [-0.5, 2.0]), ([0.5, -1.0], [4.0, 3.0])]

    def mass(lo, hi):
        w, mu = mixture.weights.numpy(), mixture.means.numpy()
        sd = np.sqrt(np.diagonal(mixture.covs.numpy(), axis1=1, axis2=2))
        per_axis = ndtr((np.array(hi) - mu) / sd) - ndtr((np.array(lo) - mu) / sd)
        return float((w * per_axis.prod(1)).sum())

    result = state_free_energies(lambda y: -mixture.log_prob(y) + 7.0, boxes, box=([-7.0, -6.0], [7.0, 7.0]))
    want = -np.log([mass(*b) for b in boxes])
    assert np.all(np.abs(result.free_energy - want) <= result.numerical + 1e-9)
    delta, error = result.difference(0, 1)
    assert abs(delta - (want[1] - want[0])) <= error
    with pytest.raises(InputShapeError, match="overlaps"):
        state_free_energies(lambda y: -mixture.log_prob(y), [boxes[0], boxes[0]], box=([-7.0, -6.0], [7.0, 7.0]))


def test_shallow_basins_merge_and_an_ensemble_reports_its_spread():
    """A narrow bump (weight 0.005, std 0.03) on the flank of a mode makes a spurious maximum 0.69
    k_B T deep: merged at persistence 1, kept at 0.1. An ensemble of two mixtures with weights 0.2 / 0.8 and
    0.25 / 0.75 gives each basin's model error as the members' standard deviation of F_A."""
    bumpy = GaussianMixture([0.495, 0.005, 0.5], [-2.0, -0.9, 2.0], [0.25, 0.0009, 0.25])
    box = ([-6.0], [6.0])
    merged = state_free_energies(ExactScore(bumpy, OU()), box=box, t=0.0)
    kept = state_free_energies(ExactScore(bumpy, OU()), box=box, t=0.0, persistence=0.1)
    assert len(merged.names) == 2 and len(kept.names) == 3
    members = [ExactScore(GaussianMixture([w, 1 - w], [-2.0, 2.0], [0.25, 0.25]), OU()) for w in (0.2, 0.25)]
    fields = [as_score(lambda y, s, m=m: m(y, s), process=OU(), dim=1) for m in members]
    result = state_free_energies(ScoreEnsemble(fields), box=box, t=1e-3)
    spread = np.std([[-math.log(1 - w), -math.log(w)] for w in (0.2, 0.25)], axis=0, ddof=1)
    np.testing.assert_allclose(result.model_error, spread, rtol=2e-3)
    assert np.all(result.total_error >= result.model_error)


def test_an_ensemble_whose_members_disagree_is_not_converged_by_default():
    """Members with state probabilities 1/2 : 1/2 and 1/5 : 4/5 disagree by about 0.6 k_B T in each
    F_A: above the default atol (0.1 k_B T) that is flagged and never converged; without atol the
    numerics alone decide."""
    members = [ExactScore(GaussianMixture(w, [-2.0, 2.0], [0.25, 0.25]), OU()) for w in ([0.5, 0.5], [0.2, 0.8])]
    ensemble = ScoreEnsemble(members)
    states = [((-6.0,), (-1e-9,)), ((1e-9,), (6.0,))]
    with pytest.warns(ConvergenceWarning, match="ensemble spread"):
        flagged = state_free_energies(ensemble, states, box=((-6.0,), (6.0,)), t=0.0)
    assert not flagged.converged and any(f.startswith("model_spread") for f in flagged.flags)
    exact = np.array([[math.log(2), math.log(2)], [math.log(5), math.log(5 / 4)]])
    assert np.allclose(flagged.model_error, exact.std(0, ddof=1), rtol=1e-3)
    assert state_free_energies(ensemble, states, box=((-6.0,), (6.0,)), t=0.0, atol=None).converged


class _Network(torch.nn.Module):
    """A torch module returning an exact mixture score: a "learned" model whose law is known."""

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.exact = ExactScore(mixture, OU())
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scale * self.exact(x, t)


def _cut_masses(mixture: GaussianMixture, cuts: list[float], t: float) -> np.ndarray:
    """Masses of the 1D mixture noised to t under OU between consecutive cuts (normal CDFs)."""
    alpha, sigma = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    w, mu = mixture.weights.numpy(), alpha * mixture.means[:, 0].numpy()
    sd = np.sqrt(alpha**2 * mixture.covs[:, 0, 0].numpy() + sigma**2)
    edges = [-np.inf, *cuts, np.inf]
    return np.array([float((w * (ndtr((b - mu) / sd) - ndtr((a - mu) / sd))).sum()) for a, b in itertools.pairwise(edges)])


def test_the_sampler_readout_of_a_learned_model_matches_its_law():
    """A network returning the trimodal mixture's exact score is a learned model whose law at t is
    known: its sampler readout (auto for a learned source) over three intervals is within 4
    reported numerical errors (binomial standard error plus the Heun step-halving change) of the
    normal-CDF masses, and the errors are small enough for the test to bite; a single model
    stays model_unknown."""
    t, cuts = 0.01, [-1.5, 1.25]
    states = [lambda y: y[:, 0] < cuts[0], lambda y: (y[:, 0] >= cuts[0]) & (y[:, 0] < cuts[1]), lambda y: y[:, 0] >= cuts[1]]
    model = as_score(_Network(TRIMODAL), process=OU(), dim=1)
    with pytest.warns(ConvergenceWarning, match="model_unknown"):
        result = state_free_energies(model, states, t=t, draws=1 << 15, steps=64)
    want = -np.log(_cut_masses(TRIMODAL, cuts, t))
    assert result.readout == "sampler" and result.grid is None and np.all(np.isnan(result.model_error))
    assert np.all(np.abs(result.free_energy - want) <= 4 * result.numerical)
    assert result.numerical.max() < 0.04  # standard errors 0.006-0.011 at 2^15 draws, step change about 0.01
    assert not result.converged


def test_sampler_readout_in_8d_with_regions_and_the_grid_refused():
    """An exact two-mode mixture in d = 8 whose modes differ in x_1 only (diagonal covariances):
    P(x_1 < 0) is a sum of normal CDFs. d > 3 takes the sampler (no grid) with the model error 0;
    basins found automatically need a grid and are refused by name."""
    means = np.zeros((2, 8))
    means[:, 0] = [-1.0, 1.5]
    mixture = GaussianMixture([0.3, 0.7], means.tolist(), np.full((2, 8), 0.5).tolist())
    exact, t = ExactScore(mixture, OU()), 0.05
    states = [lambda y: y[:, 0] < 0, lambda y: y[:, 0] >= 0]
    result = state_free_energies(exact, states, t=t, draws=1 << 14, steps=24)
    alpha, sigma = math.exp(-t), math.sqrt(-math.expm1(-2 * t))
    sd = math.sqrt(alpha**2 * 0.5 + sigma**2)
    below = 0.3 * ndtr(alpha / sd) + 0.7 * ndtr(-1.5 * alpha / sd)
    want = -np.log([below, 1 - below])
    assert result.readout == "sampler" and np.all(result.model_error == 0)
    assert np.all(np.abs(result.free_energy - want) <= 4 * result.numerical)
    with pytest.raises(InputShapeError, match="give the states as regions"):
        state_free_energies(exact, samples=mixture.sample(100, torch.Generator().manual_seed(0)))


def test_an_ensemble_that_misses_its_data_says_so():
    """Two learned members with weights 0.2 / 0.8 and 0.25 / 0.75 agree within 0.2 k_B T, but the
    data come from weights 1/2 : 1/2: with samples the model error is at least the miss of the
    samples' count (so the interval covers the data's law), flagged model_data; without samples
    only the spread counts."""
    members = [as_score(_Network(GaussianMixture([w, 1 - w], [-2.0, 2.0], [0.25, 0.25])), process=OU(), dim=1)
               for w in (0.2, 0.25)]
    ensemble = ScoreEnsemble(members)
    truth = GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.25, 0.25])
    data = truth.sample(4000, torch.Generator().manual_seed(3))
    states = [((-8.0,), (0.0,)), ((1e-12,), (8.0,))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        alone = state_free_energies(ensemble, states, t=0.01, draws=1 << 14, steps=16, atol=None)
    with pytest.warns(ConvergenceWarning, match="model_data"):
        checked = state_free_energies(ensemble, states, t=0.01, samples=data, draws=1 << 14, steps=16)
    want = -np.log(_cut_masses(truth, [0.0], 0.01))
    assert np.all(np.abs(alone.free_energy - want) > alone.total_error)  # the spread alone misses
    assert np.all(np.abs(checked.free_energy - want) <= checked.total_error)
    assert np.all(checked.model_error >= np.abs(checked.free_energy - checked.sample_free_energy))
    assert any(f.startswith("model_data") for f in checked.flags) and not checked.converged


def test_a_state_the_sampler_barely_reaches_is_flagged():
    """A state of mass about 3e-4 at t = 0.01 gets about 5 of 2^14 draws: below MIN_COUNT it is flagged."""
    model = ExactScore(TRIMODAL, OU())
    result = state_free_energies(model, [lambda y: y[:, 0] > 3.5, lambda y: y[:, 0] <= 3.5], t=0.01,
                                 readout="sampler", draws=1 << 14, steps=16, atol=None)
    assert any("fewer than" in f and "state 0" in f for f in result.flags) and not result.converged
