"""Baseline schedules (scorehamiltonian.sampling.baselines) against their papers' definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorehamiltonian import EDM, OU, ExactScore, GaussianMixture, example
from scorehamiltonian.common.errors import ScheduleError
from scorehamiltonian.sampling import PathProfile, standard_schedule
from scorehamiltonian.sampling.baselines import (
    AYS_SIGMAS,
    BASELINES,
    baseline_schedule,
    klub,
    oss_levels,
    stepoptim_objective,
)
from scorehamiltonian.sampling.solvers import sample

PROCESS_RULES = ("edm", "log-snr", "time-uniform", "time-quadratic", "ays-sd15", "ays-sdxl", "ays-svd", "stepoptim")


@pytest.mark.parametrize("name", PROCESS_RULES)
@pytest.mark.parametrize(("solver", "nfe", "final", "steps"), [("euler", 10, "t_min", 10), ("heun", 10, "t_min", 5),
                                                               ("heun", 10, "zero", 4), ("pc", 8, "t_min", 4)])
def test_process_rules_fit_the_nfe_and_the_ends(name, solver, nfe, final, steps):
    s = baseline_schedule(name, OU(), nfe, solver, 5.0, 1e-3, final=final)
    assert s.name == name and s.n_levels == steps and s.times[0] == 5.0 and s.times[-1] == 1e-3
    assert np.all(np.diff(s.times) < 0) and s.budget == 0


def test_edm_and_quadratic_are_their_formulas():
    edm = baseline_schedule("edm", EDM(80.0), 10, "euler", 80.0, 0.002)
    karras = (80.0 ** (1 / 7) + np.arange(11) / 10 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(edm.times, karras, rtol=1e-12)
    quad = baseline_schedule("time-quadratic", OU(), 8, "euler", 5.0, 1e-3)
    np.testing.assert_allclose(np.diff(np.sqrt(quad.times)), np.full(8, (math.sqrt(1e-3) - math.sqrt(5.0)) / 8),
                               rtol=1e-12)


def test_ays_lists_are_published_values_resampled_log_linearly():
    listed = np.array(AYS_SIGMAS["sd15"])
    process = EDM(20.0)  # on EDM sigma = t: with the list's own range the 10-step schedule is the list
    ten = baseline_schedule("ays-sd15", process, 10, "euler", listed[0], listed[-1])
    np.testing.assert_allclose(ten.times, listed, rtol=1e-12)
    twenty = baseline_schedule("ays-sd15", process, 20, "euler", listed[0], listed[-1])
    np.testing.assert_allclose(twenty.times[::2], listed, rtol=1e-12)  # every other level is a listed one
    np.testing.assert_allclose(np.log(twenty.times[1::2]), 0.5 * (np.log(listed[:-1]) + np.log(listed[1:])),
                               rtol=1e-12)
    ou = baseline_schedule("ays-sd15", OU(), 10, "euler", 5.0, 1e-3)  # carried to OU's range: same shape
    log_sigma = np.log(ou.sigmas(OU()))
    shape = (np.log(listed) - np.log(listed[-1])) / (np.log(listed[0]) - np.log(listed[-1]))
    np.testing.assert_allclose((log_sigma - log_sigma[-1]) / (log_sigma[0] - log_sigma[-1]), shape, atol=1e-12)


@pytest.mark.parametrize(("solver", "gain"), [("euler", 0.99), ("dpmpp-2m", 0.5)])
def test_stepoptim_minimises_its_objective(solver, gain):
    # From the log-SNR schedule (uniform lambda: already near the order-1 optimum, 10.6 -> 10.4; the
    # order-2 optimum is 4x lower); no perturbation of an interior level lowers J.
    s = baseline_schedule("stepoptim", OU(), 8, solver, 5.0, 1e-3)
    start = baseline_schedule("log-snr", OU(), 8, solver, 5.0, 1e-3)
    order = 2 if solver == "dpmpp-2m" else 1
    lam = -np.log(s.sigmas(OU()))
    found, initial = stepoptim_objective(lam, order), stepoptim_objective(-np.log(start.sigmas(OU())), order)
    assert found < gain * initial
    for i in range(1, lam.size - 1):
        for delta in (-1e-3, 1e-3):
            moved = lam.copy()
            moved[i] += delta * (lam[i + 1] - lam[i - 1])
            assert stepoptim_objective(moved, order) > found - 1e-9 * found


def test_stepoptim_leaves_its_start_where_the_increments_once_underflowed():
    """EDM, 5 Heun steps (NFE 10), sigma 80 -> 0.002: with logits in +-20, L-BFGS-B's first line
    search underflowed lambda's increments (J = 0 / 0) and stopped at the log-SNR start (J = 60.2).
    Now J is finite and far below the start's."""
    s = baseline_schedule("stepoptim", EDM(), 10, "heun", 80.0, 0.002)
    start = baseline_schedule("log-snr", EDM(), 10, "heun", 80.0, 0.002)
    found = stepoptim_objective(-np.log(s.sigmas(EDM())), 2)
    assert math.isfinite(found) and found < 0.05 * stepoptim_objective(-np.log(start.sigmas(EDM())), 2)


def test_stepoptim_objective_is_the_error_bound_of_euler():
    # Order 1 with two steps: J = (e^l1 - e^l0) e(sigma_0) + (e^l2 - e^l1) e(sigma_1), e = sigma^2 / sqrt(1 + sigma^2).
    lam = np.array([-1.0, 0.5, 2.0])
    sigma = np.exp(-lam)
    err = sigma**2 / np.sqrt(1 + sigma**2)
    want = (np.exp(0.5) - np.exp(-1.0)) * err[0] + (np.exp(2.0) - np.exp(0.5)) * err[1]
    assert math.isclose(stepoptim_objective(lam, 1), want, rel_tol=1e-14)


def test_ays_klub_lowers_the_klub_of_its_start():
    score = ExactScore(example("bimodal"), OU())
    s = baseline_schedule("ays-klub", score, 3, "euler", 5.0, 1e-2, n_samples=200, max_sweeps=2)
    edm = standard_schedule("edm", 3, 5.0, 1e-2, OU())
    found, start = (klub(score, x.sigmas(OU()), n_samples=200) for x in (s, edm))
    assert found < start and s.n_levels == 3


def test_klub_of_a_gaussian_is_its_closed_form():
    # Gaussian data N(0, v), EDM: D(y, s) = v y / (v + s^2), so D(y_s, s) - D(y_u, u) for
    # y_u = y_s + sqrt(u^2 - s^2) z' has variance v^2 [ (v + s^2)/(v + s^2)^2 + ... ]: integrate numerically.
    v = 0.5
    score = ExactScore(GaussianMixture([1.0], [0.0], [v]), EDM(20.0))
    upper, lower = 2.0, 0.5

    def integrand(s):
        a, b = v / (v + s**2), v / (v + upper**2)
        var_ys = v + s**2
        return ((a - b) ** 2 * var_ys + b**2 * (upper**2 - s**2)) / s**3

    grid = np.linspace(lower, upper, 200001)
    want = float(np.trapezoid(integrand(grid), grid))
    got = klub(score, [upper, lower], n_samples=200000, seed=3)
    assert abs(got - want) < 0.02 * want


def test_oss_picks_teacher_levels_that_end_nearest_the_teacher():
    score = ExactScore(example("bimodal"), OU())
    levels = oss_levels(score, 3, "euler", 5.0, 1e-3, teacher_steps=12, n_samples=100)
    tau = standard_schedule("edm", 12, 5.0, 1e-3, OU()).times
    assert np.all(np.isin(levels, tau)) and levels[0] == 5.0 and levels[-1] == 1e-3 and levels.size == 4
    x0 = math.sqrt(float(OU().alpha(5.0)) ** 2 + float(OU().sigma(5.0)) ** 2) * torch.randn(
        100, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher = sample("euler", score, x0, tau).x
        def distance(times):
            return float(((sample("euler", score, x0, times).x - teacher) ** 2).sum(-1).mean())
        assert distance(levels) <= distance(tau[[0, 4, 8, 12]])


def test_oss_with_dpm_solver_and_for_a_stochastic_solver():
    score = ExactScore(example("bimodal"), OU())
    s = baseline_schedule("oss", score, 3, "dpmpp-2m", 5.0, 1e-3, teacher_steps=8, n_samples=50)
    assert s.n_levels == 3
    sde = baseline_schedule("oss", score, 3, "ancestral", 5.0, 1e-3, teacher_steps=8, n_samples=50)
    euler = baseline_schedule("oss", score, 3, "euler", 5.0, 1e-3, teacher_steps=8, n_samples=50)
    np.testing.assert_array_equal(sde.times, euler.times)


def test_spectral_rules_read_the_profile():
    t = np.geomspace(1e-3, 5.0, 9)
    profile = PathProfile(t, 1.0 / (t + 0.2), 1.0 / (t + 0.05), np.zeros(9), np.zeros(9))
    for name in ("thermodynamic", "adiabatic-A/gap", "adiabatic-A/sqrt-gap"):
        s = baseline_schedule(name, OU(), 6, "euler", 5.0, 1e-3, profile=profile)
        np.testing.assert_array_equal(s.times, standard_schedule(name, 6, 5.0, 1e-3, OU(), profile=profile).times)
        assert s.budget == 0


def test_bad_names_and_missing_models():
    assert len(BASELINES) == 13
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_schedule("karras", OU(), 10, "euler", 5.0, 1e-3)
    with pytest.raises(ScheduleError, match="computed on the model"):
        baseline_schedule("oss", OU(), 10, "euler", 5.0, 1e-3)
