"""Exact propagation, bounds and design on targets that are not Gaussian mixtures (issue 20):
any score with an exact log-density, read through its own log p_t, score and autograd Jacobian.

References: a Gaussian mixture wrapped as a NoisedDensity (its p_t by quadrature) must propagate
exactly as the mixture's closed forms do, on the same grid; the tilted double well of the
many-well benchmark (p_0 ~ exp(-(x^4 - 6 x^2 - x / 2)), p_t by the NoisedDensity quadrature)
is designed for and judged on a refined grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scorehamiltonian import OU, ExactScore, GaussianMixture, as_score
from scorehamiltonian.sampling.bounds import tracking_bound
from scorehamiltonian.sampling.designer import design_schedule
from scorehamiltonian.sampling.grid_model import GridModel, _chebyshev_exp, _talbot_sparse, default_grid
from scorehamiltonian.sampling.judges import judge_solver
from scorehamiltonian.sampling.propagation import propagate_exact
from scorehamiltonian.sampling.schedules import standard_schedule
from scorehamiltonian.score.noised import NoisedDensity

PROCESS = OU()
MIXTURE = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [[[0.3]], [[0.5]]])


@pytest.fixture(scope="module")
def wrapped() -> NoisedDensity:
    """The mixture as a density known only through log p_0 (unnormalised), noised by quadrature."""
    return NoisedDensity(lambda y: MIXTURE.log_prob(y) + 3.0, [-10.0], [9.5], PROCESS)


@pytest.fixture(scope="module")
def tilted_well() -> NoisedDensity:
    return NoisedDensity(lambda y: -(y[:, 0] ** 4 - 6 * y[:, 0] ** 2 - 0.5 * y[:, 0]), [-3.5], [3.5], PROCESS)


@pytest.mark.parametrize("sampler", ["langevin", "sde", "ode"])
def test_a_density_propagates_as_its_mixture_does(wrapped, sampler):
    """Same grid, same schedule: the final masses agree with the closed forms to the quadrature's
    accuracy (1e-10 relative in p_t) and the Newton tolerance, and so do TV and the basin weights."""
    grid = default_grid(MIXTURE, PROCESS, 0.01, 3.0)
    budget = 4.0 if sampler == "langevin" else 0.0
    schedule = standard_schedule("log-uniform", 4 if sampler == "ode" else 8, 3.0, 0.01, PROCESS, budget)
    exact = propagate_exact(ExactScore(MIXTURE, PROCESS), None, schedule, sampler=sampler, grid=grid)
    density = propagate_exact(wrapped, None, schedule, sampler=sampler, grid=grid)
    assert np.abs(density.q - exact.q).max() <= 1e-9 * exact.q.max()
    assert abs(density.tv - exact.tv) <= 1e-9
    np.testing.assert_allclose(density.basin_weights_q, exact.basin_weights_q, atol=1e-9)
    assert density.resolved and exact.resolved
    assert density.points_per_width == pytest.approx(exact.points_per_width, rel=1e-6)  # curvature of log p


def test_a_densitys_own_grid_holds_its_mass_and_resolves_it(wrapped):
    grid = default_grid(wrapped, PROCESS, 0.01, 3.0)
    mixture_grid = default_grid(MIXTURE, PROCESS, 0.01, 3.0)
    assert grid.n[0] == pytest.approx(mixture_grid.n[0], rel=0.1)  # same sharpest width, boxes within 10 %
    level = GridModel(wrapped, None, grid).level(0.01)
    assert level.outside < 1e-9 and level.points_per_width >= 7.9
    assert level.min_std == pytest.approx(float(np.sqrt(0.3 * np.exp(-0.02) + 1 - np.exp(-0.02))), rel=1e-6)


def test_the_tracking_bound_holds_on_a_density(wrapped):
    schedule = standard_schedule("log-uniform", 6, 3.0, 0.01, PROCESS, 3.0)
    bound = tracking_bound(wrapped, None, schedule, measure=True)
    assert bound.tv >= bound.measured_tv - bound.measured_error


def test_design_on_a_double_well_beats_the_baselines_on_a_finer_grid(tilted_well):
    """The designer on a non-mixture target: the designed schedule beats the best baseline on its
    design grid and, judged on a grid of half the spacing, by more than the discretisation error."""
    result = design_schedule(tilted_well, None, 4, 2.0, 2.0, 0.02, full_output=True, max_time=10.0, n_starts=1)
    assert not result.fell_back and result.error < min(result.standard.values())
    designed = propagate_exact(tilted_well, None, result.schedule, grid=result.grid, refine=True)
    baseline = propagate_exact(tilted_well, None, result.baseline, grid=result.grid, refine=True)
    margin = designed.discretisation_error + baseline.discretisation_error
    assert designed.tv_refined < baseline.tv_refined - margin
    assert designed.resolved and baseline.resolved


def test_density_targets_say_what_they_cannot_do(wrapped):
    unnormalised = as_score(log_prob=lambda x, t: -0.5 * x[:, 0] ** 2, dim=1)
    schedule = standard_schedule("log-uniform", 3, 2.0, 0.05, PROCESS, 1.0)
    with pytest.raises(ValueError, match="initial='exact' needs a normalised log-density"):
        propagate_exact(unnormalised, None, schedule, initial="exact", grid=default_grid(MIXTURE, PROCESS, 0.05, 2.0))
    with pytest.raises(ValueError, match="basins='component' needs a Gaussian-mixture target"):
        propagate_exact(wrapped, None, schedule, basins="component", grid=default_grid(MIXTURE, PROCESS, 0.05, 2.0))
    with pytest.raises(ValueError, match="robust designs perturb a Gaussian mixture"):
        design_schedule(wrapped, None, 3, 1.0, 2.0, 0.05, robust="mean")
    with pytest.raises(ValueError, match="NaN, \\+inf or nowhere finite"):
        GridModel(as_score(log_prob=lambda x, t: x[:, 0] * float("nan"), dim=1), None,
                  default_grid(MIXTURE, PROCESS, 0.05, 2.0)).level(1.0)


def test_stiff_2d_levels_relax_by_the_sparse_talbot_contour():
    """The contour that takes over from Chebyshev on stiff 2D levels gives the same e^{-uH} phi
    (both exact to ~1e-13 relative) where both can run."""
    mixture = GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.5]], [0.3, 0.6])
    model = GridModel(mixture, PROCESS, default_grid(mixture, PROCESS, 0.05, 1.0))
    level = model.level(0.05)
    phi = np.random.default_rng(0).random((level.psi.size, 2))
    H = model.hamiltonian(level)
    for u in (0.01, 0.5):
        np.testing.assert_allclose(_talbot_sparse(H, phi, u), _chebyshev_exp(H, phi, u), rtol=0,
                                   atol=1e-11 * np.linalg.norm(phi))


@pytest.mark.slow
def test_mueller_brown_propagates_despite_its_far_tails():
    """Mueller-Brown's log p falls by thousands towards the box corners at t = 1e-3 (NaN before:
    psi underflowed and the Chebyshev bound overflowed). Basin weights of p_t_min against the
    reference quadrature (0.97438 / 0.022392 / 0.0032298 at t = 0); the default 96^2 grid is
    coarse for it and says so (about 22 s: the density's boxes and 96^2 quadratures)."""
    from scorehamiltonian.score.systems import system

    score = system("mueller-brown").exact_score()
    schedule = standard_schedule("log-uniform", 6, 5.0, 1e-3, score.process, 10.0)
    with pytest.warns(UserWarning, match="coarse grid"):
        result = propagate_exact(score, None, schedule)
    assert np.isfinite(result.q).all() and 0 < result.tv < 1
    np.testing.assert_allclose(np.sort(result.basin_weights_p), [0.0032298, 0.022392, 0.97438], atol=2e-4)
    assert not result.resolved and math.isclose(result.q.sum() * result.grid.cell_volume, 1.0)


@pytest.mark.parametrize("solver", ["heun", "euler-maruyama"])
def test_solver_judgements_of_a_density_match_its_mixtures(wrapped, solver):
    """judge_solver reads a density's p_t as propagate_exact does: the law of Heun (backward
    characteristics) and of Euler-Maruyama (grid kernel steps) agree with the mixture's closed forms."""
    schedule = standard_schedule("edm", 6, 3.0, 0.02, PROCESS)
    exact = judge_solver(ExactScore(MIXTURE, PROCESS), None, schedule, solver)
    density = judge_solver(wrapped, None, schedule, solver, grid=exact.grid)
    assert abs(density.tv - exact.tv) <= 1e-8 and abs(density.kl - exact.kl) <= 1e-8
    assert np.abs(density.q - exact.q).max() <= 1e-8 * exact.q.max()
