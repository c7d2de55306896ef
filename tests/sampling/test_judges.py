"""Exact propagation of every solver (scorehamiltonian.sampling.judges), against exact laws and Monte Carlo.

- Gaussian target: every solver maps Gaussians to Gaussians (the denoiser is affine), so its
  output law is N(mean, var) with mean and var carried through each move's affine map (read off
  the move at two points) and its noise; the judged density must be that Gaussian: to 1e-12
  relative for the deterministic solvers (backward characteristics, Newton tolerance 1e-12),
  and in TV within the reported error plus 1e-7 for the stochastic ones (the push-forward's
  cubic spline of log q, O(h^4), is not in ``error``, as in propagate_exact; measured 5e-9 - 5e-8).
- Monte Carlo: 4000 runs of the same solver; the Kolmogorov-Smirnov distance to the judged CDF
  must stay below 1.95 / sqrt(n) (level 0.001) in 1D, and a binned chi-square on a 2D target
  below its 0.001 quantile.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import chi2 as chi2_dist

from scorehamiltonian import OU, ExactScore, GaussianMixture, example
from scorehamiltonian.sampling import standard_schedule
from scorehamiltonian.sampling.grid_model import distances
from scorehamiltonian.sampling.judges import judge_solver, solver_grid
from scorehamiltonian.sampling.solvers import SOLVERS, Field, Levels, prior_samples, sample, solver_moves
from scorehamiltonian.spectral.grid import Grid
from scorehamiltonian.spectral.operator import BoundaryMassWarning

PROC = OU()
STOCHASTIC = ("euler-maruyama", "euler-maruyama-t", "ancestral", "langevin", "pc")


def _gaussian_law(score, schedule, solver, final, m):
    """Mean and variance of the solver's output for a Gaussian target from the prior."""
    levels = Levels.of(schedule, PROC, final)
    field = Field(score, levels)
    mean, var = 0.0, float(PROC.alpha(schedule.t_max)) ** 2 + float(PROC.sigma(schedule.t_max)) ** 2
    pts = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    moves = solver_moves(solver, levels, steps_per_level=m)
    if solver == "dpmpp-2m":  # not Markov: the whole run is affine in x_0
        state, x = None, pts
        for move in moves:
            x, _, state = move.apply(field, x, state)
        a, b = float(x[1] - x[0]), float(x[0])
        return a * mean + b, a * a * var
    for move in moves:
        out, std, _ = move.apply(field, pts, None)
        a, b = float(out[1] - out[0]), float(out[0])
        mean, var = a * mean + b, a * a * var + std**2
    return mean, var


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("final", ["t_min", "zero"])
def test_gaussian_target_gives_the_exact_gaussian_law(solver, final):
    score = ExactScore(GaussianMixture([1.0], [0.5], [0.3]), PROC)
    schedule = standard_schedule("edm", 6, 5.0, 1e-3, PROC)
    result = judge_solver(score, None, schedule, solver, final=final, steps_per_level=2)
    mean, var = _gaussian_law(score, schedule, solver, final, 2)
    x = result.grid.axes()[0].numpy()
    exact = np.exp(-((x - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)
    if solver in STOCHASTIC:
        tv = 0.5 * np.abs(result.q - exact).sum() * result.grid.cell_volume
        assert tv <= result.error + 1e-7, (tv, result.error)
    else:
        assert np.abs(result.q - exact).max() <= 1e-12 * exact.max()
    assert result.resolved and result.converged and np.isfinite(result.kl)


def _ks(result, xs):
    nodes, h = result.grid.axes()[0].numpy(), result.grid.h[0]
    cdf = np.interp(np.sort(xs), nodes, np.cumsum(result.q) * h - 0.5 * result.q * h)
    n = xs.size
    ecdf = np.arange(1, n + 1) / n
    return max(np.abs(cdf - ecdf).max(), np.abs(cdf - ecdf + 1 / n).max())


@pytest.mark.parametrize("solver", SOLVERS)
def test_matches_monte_carlo_runs_of_the_same_solver(solver):
    score = ExactScore(example("asymmetric"), PROC)
    schedule = standard_schedule("edm", 12, 5.0, 1e-3, PROC)
    result = judge_solver(score, None, schedule, solver, steps_per_level=2)
    generator = torch.Generator().manual_seed(11)
    x0 = prior_samples(PROC, 5.0, 4000, 1, generator)
    with torch.no_grad():
        xs = sample(solver, score, x0, schedule, generator=generator, steps_per_level=2).x.numpy()[:, 0]
    assert _ks(result, xs) < 1.95 / math.sqrt(xs.size)


@pytest.mark.parametrize("solver", ["heun", "ancestral"])
def test_matches_monte_carlo_in_2d(solver):
    score = ExactScore(example("four_mode_2d"), PROC)
    schedule = standard_schedule("edm", 8, 5.0, 1e-2, PROC)
    result = judge_solver(score, None, schedule, solver)
    n = 4000
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        xs = sample(solver, score, prior_samples(PROC, 5.0, n, 2, generator), schedule, generator=generator).x.numpy()
    # Bins: blocks of the grid's cells (each sample goes to its nearest node's cell), so that the
    # expected counts are sums of node masses and no bin edge cuts a cell.
    grid = result.grid
    blocks = [math.ceil(m / 6) for m in grid.n]
    node = np.rint((xs - np.array(grid.lo)) / np.array(grid.h) - 1).astype(int)
    inside = np.all((node >= 0) & (node < np.array(grid.n)), axis=1)
    observed = np.zeros((6, 6))
    np.add.at(observed, tuple((node[inside] // blocks).T), 1.0)
    index = np.stack(np.meshgrid(*[np.arange(m) for m in grid.n], indexing="ij"), -1).reshape(-1, 2)
    expected = np.zeros((6, 6))
    np.add.at(expected, tuple((index // blocks).T), result.q * grid.cell_volume)
    keep = n * expected > 5
    statistic = float(((observed[keep] - n * expected[keep]) ** 2 / (n * expected[keep])).sum())
    assert statistic < chi2_dist.ppf(0.999, int(keep.sum()) - 1), statistic


def test_a_small_box_loses_mass_and_counts_it_never_renormalising():
    score = ExactScore(example("bimodal"), PROC)
    schedule = standard_schedule("edm", 8, 5.0, 1e-3, PROC)
    with pytest.warns(BoundaryMassWarning):
        small = judge_solver(score, None, schedule, "euler-maruyama", grid=Grid(-2.5, 2.5, 199))
    wide = judge_solver(score, None, schedule, "euler-maruyama")
    assert small.mass_lost > 0.1 and not small.resolved
    assert math.isclose(small.q.sum() * small.grid.cell_volume, 1 - small.mass_lost, rel_tol=1e-12)
    assert abs(small.tv - wide.tv) <= small.error + wide.error
    assert wide.resolved and wide.mass_lost < 1e-6


def test_kl_is_finite_where_the_target_underflows():
    # Ancestral sampling's law has heavier tails than p_t_min: on a wide box p underflows to 0 where q
    # does not, and KL from the masses is infinite; from the log-densities it is the KL of the default box.
    score = ExactScore(example("bimodal"), PROC)
    schedule = standard_schedule("edm", 3, 5.0, 1e-3, PROC)
    base = judge_solver(score, None, schedule, "ancestral")
    result = judge_solver(score, None, schedule, "ancestral", grid=Grid(-30.0, 30.0, int(60 / base.grid.h[0])))
    assert ((result.p == 0) & (result.q > 0)).any() and math.isfinite(result.kl)
    assert math.isclose(result.kl, base.kl, rel_tol=1e-6)
    masses = result.q * result.grid.cell_volume
    with np.errstate(divide="ignore", invalid="ignore"):
        assert math.isinf(distances(masses / masses.sum(), result.p * result.grid.cell_volume)["kl"])


def test_folding_maps_are_summed_over_preimages_and_flagged():
    score = ExactScore(example("asymmetric"), PROC)
    schedule = standard_schedule("edm", 6, 5.0, 1e-3, PROC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryMassWarning)
        result = judge_solver(score, None, schedule, "heun")
    assert not result.resolved and any("folds space" in note for note in result.notes)


def test_the_grid_holds_the_solvers_law():
    score = ExactScore(example("bimodal"), PROC)
    schedule = standard_schedule("edm", 3, 5.0, 1e-3, PROC)
    grid = solver_grid(score, None, schedule, "euler-maruyama")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        run = sample("euler-maruyama", score, prior_samples(PROC, 5.0, 4000, 1, generator), schedule,
                     generator=generator, keep_trajectory=True)
    states = torch.cat(run.trajectory)
    assert grid.lo[0] < float(states.min()) and grid.hi[0] > float(states.max())
