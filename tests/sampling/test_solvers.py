"""The solvers (scorehamiltonian.sampling.solvers): NFE conventions, orders of accuracy, identities.

Independent references: the probability-flow ODE of a Gaussian target N(m, v) in the libraries'
variables (EDM: alpha = 1) has the exact solution y(sigma) - m = (y(sigma_0) - m)
sqrt((v + sigma^2) / (v + sigma_0^2)); Euler's error must fall as 1/N, Heun's and DPM-Solver++(2M)'s
as 1/N^2. The NFE of every run is counted from the score's own calls and must equal the
documented formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorehamiltonian import EDM, OU, ExactScore, GaussianMixture, example
from scorehamiltonian.common.errors import ScheduleError
from scorehamiltonian.sampling import Schedule, standard_schedule
from scorehamiltonian.sampling.solvers import (
    FINALS,
    SOLVERS,
    Field,
    Levels,
    prior_samples,
    sample,
    solver_moves,
    solver_nfe,
    steps_for_nfe,
)

SCORE = ExactScore(example("bimodal"), OU())
SCHEDULE = standard_schedule("edm", 4, 5.0, 1e-3, OU())


class Counting:
    """A score that counts its evaluations."""

    def __init__(self, score):
        self.score, self.process, self.calls = score, score.process, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score(x, t)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("final", FINALS)
@pytest.mark.parametrize("m", [1, 3])
def test_nfe_is_the_calls_made_and_the_formula(solver, final, m):
    counting = Counting(SCORE)
    x = prior_samples(OU(), 5.0, 6, 1, torch.Generator().manual_seed(0))
    run = sample(solver, counting, x, SCHEDULE, final=final, steps_per_level=m, generator=torch.Generator())
    levels = Levels.of(SCHEDULE, OU(), final)
    assert run.nfe == counting.calls == solver_nfe(solver, levels.n_steps, to_zero=levels.to_zero, steps_per_level=m)
    s, z = levels.n_steps, int(final == "zero")
    expected = {"heun": 2 * s - z, "langevin": m * (s - z) + z, "pc": s + m * (s - z)}.get(solver, s)
    assert run.nfe == expected and run.x.shape == x.shape


def test_library_counts_euler_n_heun_2n_minus_1_with_a_final_zero():
    # k-diffusion's get_sigmas_karras(n, ...): n levels then 0 -> Euler n calls, Heun 2n - 1.
    for n in (3, 10):
        assert solver_nfe("euler", n, to_zero=True) == n and solver_nfe("heun", n, to_zero=True) == 2 * n - 1
        assert solver_nfe("heun", n) == 2 * n and solver_nfe("dpmpp-2m", n, to_zero=True) == n


def test_steps_for_nfe_is_the_largest_affordable_schedule():
    assert steps_for_nfe("euler", 10) == 10 and steps_for_nfe("euler", 10, final="zero") == 9
    assert steps_for_nfe("heun", 10) == 5 and steps_for_nfe("heun", 5) == 2
    assert steps_for_nfe("heun", 10, final="zero") == 4  # 5 steps, the last an Euler step to 0: 9 calls
    assert steps_for_nfe("pc", 10, steps_per_level=1) == 5 and steps_for_nfe("langevin", 10, steps_per_level=2) == 5
    with pytest.raises(ScheduleError, match="do not pay for one step"):
        steps_for_nfe("heun", 1)


def _gaussian_flow_error(solver: str, n: int) -> float:
    """|y_N - exact| for the Gaussian target on EDM from sigma 10 to 0.1 along the EDM schedule."""
    m, v = 0.7, 0.3
    score = ExactScore(GaussianMixture([1.0], [m], [v]), EDM(20.0))
    schedule = standard_schedule("edm", n, 10.0, 0.1, EDM(20.0))
    y0 = torch.tensor([[-25.0], [3.0], [12.0]], dtype=torch.float64)
    exact = m + (y0 - m) * math.sqrt((v + 0.1**2) / (v + 10.0**2))
    return float((sample(solver, score, y0, schedule).x - exact).abs().max())


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp-2m", 2)])
def test_order_of_accuracy_on_the_gaussian_flow(solver, order):
    errors = [_gaussian_flow_error(solver, n) for n in (16, 32, 64)]
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(rates - order) < 0.25), (errors, rates)


def test_ddim_is_euler_in_the_libraries_variables():
    x = prior_samples(OU(), 5.0, 50, 1, torch.Generator().manual_seed(2))
    euler, ddim = sample("euler", SCORE, x, SCHEDULE).x, sample("ddim", SCORE, x, SCHEDULE).x
    torch.testing.assert_close(ddim, euler, rtol=0, atol=1e-13)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp-2m", "ancestral", "euler-maruyama"])
def test_the_step_to_zero_is_the_denoised_mean(solver):
    x = prior_samples(OU(), 5.0, 20, 1, torch.Generator().manual_seed(3))
    run = sample(solver, SCORE, x, SCHEDULE, final="zero", keep_trajectory=True, generator=torch.Generator())
    levels = Levels.of(SCHEDULE, OU(), "zero")
    before = run.trajectory[-2]
    torch.testing.assert_close(run.x, Field(SCORE, levels).denoised(before, levels.n_steps - 1), rtol=0, atol=1e-14)


def test_langevin_steps_use_the_schedules_langevin_time_else_the_noise_scale():
    levels = Levels.of(Schedule([2.0, 1.0, 0.5], [0.3, 0.6]), OU())
    probe = torch.zeros(1, 1, dtype=torch.float64)
    stds = [move.apply(Field(SCORE, levels), probe, None)[1] for move in solver_moves("langevin", levels, steps_per_level=3)]
    np.testing.assert_allclose(stds, np.sqrt(2 * np.repeat([0.1, 0.2], 3)), rtol=1e-15)
    plain = Levels.of(Schedule([2.0, 1.0, 0.5], [0.0, 0.0]), OU())
    stds = [move.apply(Field(SCORE, plain), probe, None)[1] for move in solver_moves("langevin", plain, step_scale=0.5)]
    sigma2 = 1 - np.exp(-2 * np.array([1.0, 0.5]))
    np.testing.assert_allclose(stds, np.sqrt(2 * 0.5 * sigma2), rtol=1e-14)


def test_levels_in_both_variables():
    levels = Levels.of(SCHEDULE, OU(), "zero")
    t = SCHEDULE.times
    np.testing.assert_allclose(levels.sigma[:-1], np.sqrt(np.expm1(2 * t)), rtol=1e-14)
    assert levels.sigma[-1] == 0 and levels.alpha[-1] == 1 and levels.n_steps == SCHEDULE.n_levels + 1


def test_bad_input():
    x = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown solver"):
        sample("rk4", SCORE, x, SCHEDULE)
    with pytest.raises(ValueError, match="final must be"):
        sample("euler", SCORE, x, SCHEDULE, final="none")
    with pytest.raises(ScheduleError, match="no solver steps on from the data"):
        Levels.of(Schedule([1.0, 0.0], [0.0]), OU(), "zero")
    with pytest.raises(ValueError, match="steps_per_level"):
        sample("pc", SCORE, x, SCHEDULE, steps_per_level=0)
