"""Spectral diagnostics along t: closed-form Gaussian values, independent references, bad input."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from scorehamiltonian import OU, ExactScore, GaussianMixture, Grid, example
from scorehamiltonian.common.errors import InputShapeError, TimeRangeError
from scorehamiltonian.sampling.diagnostics import (
    _flux_solve,
    low_modes,
    spectral_diagnostics,
    time_derivative,
)
from scorehamiltonian.sampling.grid_model import GridModel
from scorehamiltonian.spectral.speed import adiabatic_speed, dlogp_dt

matplotlib.use("Agg")
PROC = OU(T=10.0)
ASYM = example("asymmetric")
MU0, V0 = 0.7, 0.2
TIMES = np.array([0.02, 0.3, 1.5])


def _gaussian_truth(t):
    """OU-noised N(mu0, v0): p_t = N(m, v); lambda_1 = 1/v, lambda_2 = 2/v,
    A = (1/2) sqrt(m'^2 / v + v'^2 / (2 v^2)), lag = (1/2) sqrt(m'^2 v + v'^2 / 8)
    (d/dt sqrt p = sqrt p [m' z / sqrt v + v' (z^2 - 1) / (2 v)] / 2 is a sum of the first two
    oscillator states, eigenvalues 1 / v and 2 / v, of norms 1 and sqrt 2)."""
    m, v = math.exp(-t) * MU0, math.exp(-2 * t) * V0 + 1 - math.exp(-2 * t)
    dm, dv = -m, -2 * math.exp(-2 * t) * (V0 - 1)
    return 1 / v, 2 / v, 0.5 * math.sqrt(dm**2 / v + dv**2 / (2 * v**2)), 0.5 * math.sqrt(dm**2 * v + dv**2 / 8)


def test_gaussian_closed_forms():
    """A(t) is a spectrally accurate grid quadrature (1e-10); lambda_1, lambda_2 and the lag carry
    the SqRA's O(h^2) error: halving h must divide it by ~4, and the fine grid's error must lie
    within the Richardson estimate |coarse - fine| / 3 (times 1.5 for the next order)."""
    target = GaussianMixture([1.0], [MU0], [V0])
    runs = [spectral_diagnostics(target, PROC, TIMES, grid=Grid(-7.0, 7.0, n)) for n in (159, 319)]
    truth = np.array([_gaussian_truth(t) for t in TIMES])
    for run in runs:
        assert run.adiabatic_speed == pytest.approx(truth[:, 2], rel=1e-10)
        assert (run.n_slow == 0).all() and (run.lag_slow == 0).all()
    for col, name in enumerate(["lambda1", "lambda2", None, "lag"]):
        if name is None:
            continue
        coarse, fine = (getattr(r, name) for r in runs)
        err_c, err_f = np.abs(coarse - truth[:, col]), np.abs(fine - truth[:, col])
        assert (err_c / err_f > 3.5).all() and (err_c / err_f < 4.5).all()
        assert (err_f <= 1.5 * np.abs(coarse - fine) / 3).all()


def test_time_derivative_matches_the_profiles_formula():
    model = GridModel(ASYM, PROC, t_range=(1e-3, 5.0))
    for t in (1e-3, 0.4):
        a, b = time_derivative(model, t)
        ref = dlogp_dt(ExactScore(ASYM, PROC), torch.from_numpy(model.points), t, "exact", None)[0].numpy()
        assert np.abs(a - ref).max() <= 1e-12 * np.abs(ref).max()
        assert abs(model.level(t).psi @ b) < 1e-14


@pytest.mark.parametrize("t", [0.05, 0.6])
def test_adiabatic_speed_agrees_with_the_monte_carlo_estimator(t):
    """Grid quadrature against profiles.adiabatic_speed (20000 exact samples): within 4 standard errors."""
    diag = spectral_diagnostics(ASYM, PROC, [t])
    mc = adiabatic_speed(ExactScore(ASYM, PROC), t, generator=torch.Generator().manual_seed(3))
    assert abs(diag.adiabatic_speed[0] - mc.value) <= 4 * mc.stderr


@pytest.mark.parametrize("target, grid", [(ASYM, Grid(-6.0, 6.5, 150)), (example("four_mode_2d"), Grid([-3.5, -3.5], [3.5, 3.5], [22, 23]))])
def test_lag_against_the_dense_pseudo_inverse(target, grid):
    """x = H^+ b and its slow / fast split against a dense eigendecomposition (t where lambda_1 is
    not tiny, so the dense route is accurate): relative 1e-8."""
    t = 0.15
    diag = spectral_diagnostics(target, PROC, [t], grid=grid)
    model = GridModel(target, PROC, grid)
    w, V = np.linalg.eigh(model.hamiltonian(model.level(t)).toarray())
    _, b = time_derivative(model, t)
    coef = V[:, 1:].T @ b / w[1:]
    n_slow = int(diag.n_slow[0])
    assert n_slow == target.n_components - 1
    assert diag.lag[0] == pytest.approx(np.linalg.norm(coef), rel=1e-8)
    assert diag.lag_slow[0] == pytest.approx(np.linalg.norm(coef[:n_slow]), rel=1e-8)
    assert diag.lag_fast[0] == pytest.approx(np.linalg.norm(coef[n_slow:]), rel=1e-8)
    assert diag.lambda1[0] == pytest.approx(w[1], rel=1e-10)
    assert diag.lag_error[0] < 1e-8 * diag.lag[0]


def test_tiny_gap_by_two_independent_routes():
    """At t = 1e-3 lambda_1 of the asymmetric target is ~1e-4 of lambda_2: the Dirichlet-form Ritz
    value must equal inverse iteration with the exact flux solver (lambda_1 / lambda_2 ~ 3e-5 per
    step, so 6 steps converge to round-off)."""
    model = GridModel(ASYM, PROC, t_range=(1e-3, 5.0))
    level = model.level(1e-3)
    lam = low_modes(model, level, 2)[0]
    v = np.random.default_rng(0).random(level.psi.size)
    v -= level.psi * (level.psi @ v)
    for _ in range(6):
        v, _ = _flux_solve(model, level, v / np.linalg.norm(v))
    x, _ = _flux_solve(model, level, v / np.linalg.norm(v))
    assert lam[0] == pytest.approx(1 / np.linalg.norm(x), rel=1e-9)
    assert lam[1] / lam[0] > 1e4


def test_basin_masses_and_their_rates():
    """Fixed basins: masses sum to 1; the exact rate equals the central difference of the masses
    (step d = 1e-4 t: error ~ d^2 |M'''| / 6, below 1e-7 relative here)."""
    t = np.array([0.1, 0.5])
    d = 1e-4 * t
    diag = spectral_diagnostics(ASYM, PROC, np.stack([t - d, t, t + d], 1).reshape(-1))  # sorted already
    masses = diag.basin_masses.reshape(2, 3, -1)
    rate = diag.basin_mass_rate.reshape(2, 3, -1)[:, 1]
    assert np.allclose(diag.basin_masses.sum(1), 1.0, atol=1e-13)
    assert np.allclose(rate, (masses[:, 2] - masses[:, 0]) / (2 * d[:, None]), rtol=1e-6, atol=1e-9)


def test_plot_and_bad_input():
    diag = spectral_diagnostics(ASYM, PROC, [0.01, 0.1, 1.0])
    assert isinstance(diag.plot(), Figure)
    with pytest.raises(InputShapeError):
        spectral_diagnostics(ASYM, PROC, [])
    with pytest.raises(TimeRangeError):
        spectral_diagnostics(ASYM, PROC, [0.1, 11.0])
    with pytest.raises(InputShapeError):
        spectral_diagnostics(GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [1.0]), PROC, [0.1])
