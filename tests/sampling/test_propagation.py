"""Exact propagation: the SqRA operator, the matrix exponential, closed-form Gaussian cases, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
from scipy.stats import norm

from scorehamiltonian import OU, VE, ExactScore, GaussianMixture, Grid, ScoreHamiltonian, example
from scorehamiltonian.common.errors import InputShapeError, ResolutionError, ScheduleError, TimeRangeError
from scorehamiltonian.sampling.grid_model import GridModel
from scorehamiltonian.sampling.propagation import invert_map, propagate_exact
from scorehamiltonian.sampling.schedules import Schedule
from scorehamiltonian.spectral.operator import BoundaryMassWarning

PROC = OU(T=10.0)
ASYM = example("asymmetric")
GAUSS_2D = GaussianMixture([1.0], [[0.4, -0.3]], [[[0.3, 0.1], [0.1, 0.2]]])


def test_numpy_mixture_derivatives_match_the_package():
    """log p and the score against GaussianMixture.evaluate, the Jacobian against autograd
    (full covariances, 2D, three components): round-off agreement."""
    import torch

    from scorehamiltonian.sampling.grid_model import evaluate_marginal, noised_marginal
    from scorehamiltonian.score.derivatives import jacobian

    from ..conftest import random_mixture

    mixture = random_mixture(2, k=3, seed=4)
    x = np.random.default_rng(0).normal(size=(50, 2)) * 2
    log_p, _, score, jac = evaluate_marginal(noised_marginal(mixture, 0.8, 0.3), x, jacobian=True)
    ref = mixture.evaluate(torch.from_numpy(x), 0.8, 0.3)
    assert np.allclose(log_p, ref.log_prob.numpy(), rtol=1e-12, atol=1e-12)
    assert np.allclose(score, ref.score.numpy(), rtol=1e-10, atol=1e-12)
    exact = jacobian(lambda z, _t: mixture.evaluate(z, 0.8, 0.3).score, torch.from_numpy(x), 0.5, method="autograd")
    assert np.allclose(jac, exact.value.numpy(), rtol=1e-10, atol=1e-12)


def _dense_exp(H: np.ndarray, u: float) -> np.ndarray:
    """e^{-u H} from the symmetric eigendecomposition (an independent reference)."""
    w, V = np.linalg.eigh(H)
    return (V * np.exp(-u * np.maximum(w, 0.0))) @ V.T


@pytest.mark.parametrize("target, grid", [(ASYM, Grid(-6.0, 6.5, 70)), (example("four_mode_2d"), Grid([-3.2, -3.2], [3.2, 3.2], [21, 22]))])
@pytest.mark.parametrize("t", [0.02, 0.7])
def test_sqra_is_the_ground_state_form_and_keeps_p_stationary(target, grid, t):
    """The SqRA matrix equals ScoreHamiltonian(order=2, form="ground_state") and annihilates sqrt(P)."""
    model = GridModel(target, PROC, grid)
    level = model.level(t)
    H = model.hamiltonian(level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ScoreHamiltonian(ExactScore(target, PROC), t, grid, order=2, form="ground_state").to_scipy()
    scale = abs(H).max()
    assert abs(H - ref).max() <= 1e-12 * scale
    # stationarity of P under Q^T, i.e. H psi = 0: each row sums O(1) terms of size ||H||
    assert np.abs(H @ level.psi).max() <= 20 * np.finfo(float).eps * scale
    assert abs(np.linalg.norm(level.psi) - 1) < 1e-14


@pytest.mark.parametrize("target, grid", [(ASYM, Grid(-6.0, 6.5, 60)), (example("four_mode_2d"), Grid([-3.2, -3.2], [3.2, 3.2], [21, 22]))])
@pytest.mark.parametrize("t", [0.01, 0.5])
def test_relax_matches_the_dense_exponential(target, grid, t):
    """e^{-uH} phi by Talbot (1D) / Chebyshev (2D) against the dense eigendecomposition.

    Both are accurate to ~1e-14 ||phi|| (contour / truncation error) plus round-off that grows
    like eps u ||H||; u ||H|| <= 1e5 here, so 1e-12 is the derived bound.
    """
    model = GridModel(target, PROC, grid)
    level = model.level(t)
    H = model.hamiltonian(level).toarray()
    phi = np.random.default_rng(1).random((H.shape[0], 2))
    for u in (1e-3, 0.3, 20.0):
        ref = _dense_exp(H, u) @ phi
        assert np.abs(model.relax(phi, level, u) - ref).max() <= 1e-12 * np.linalg.norm(phi)
    # without the ground-state deflation the contour itself keeps psi
    if grid.dim == 1:
        assert np.abs(model._talbot_1d(level.psi, level, 7.0) - level.psi).max() < 1e-13


def test_annealed_langevin_against_scipy_expm_chain():
    """Three levels of annealed Langevin = q(u) = expm(u Q^T) q applied level by level (q-frame)."""
    grid = Grid(-6.0, 6.5, 50)
    model = GridModel(ASYM, PROC, grid, t_range=(0.05, 4.0))
    schedule = Schedule([4.0, 1.0, 0.3, 0.05], [0.5, 0.2, 1.0])
    res = propagate_exact(ASYM, PROC, schedule, model=model, initial="exact")
    q = np.exp(model.level(4.0).log_mass)
    for t, u in zip(schedule.times[1:], schedule.langevin_time):
        level = model.level(t)
        psi = level.psi
        generator_t = -(psi[:, None] * model.hamiltonian(level).toarray()) / psi[None, :]  # Q^T = -D^1/2 H D^-1/2
        assert np.abs(generator_t.sum(0)).max() < 1e-10 * np.abs(generator_t).max()  # mass conserved
        q = scipy.linalg.expm(u * generator_t) @ q
    assert np.abs(res.q * grid.cell_volume - q).max() < 1e-11
    # the reported solver error bounds the difference in the phi-frame (expm itself: ~1e-14)
    psi = model.level(0.05).psi
    assert np.linalg.norm((res.q * grid.cell_volume - q) / psi) <= res.numerical_error + 1e-13


def _gaussian_density(x, mean, var):
    return np.exp(-((x - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def test_langevin_on_a_gaussian_converges_at_second_order():
    """OU target N(mu, v): Langevin from N(0, 1) for time u is N(mu (1 - e^{-u/v}), v + (1 - v) e^{-2u/v}).

    The SqRA is a second-order discretisation: the error must fall by about 4 per halving of h.
    """
    mu, v, u = 0.8, 0.3, 0.25
    target = GaussianMixture([1.0], [mu], [v])
    m_t, v_t = math.exp(-0.2) * mu, math.exp(-0.4) * v + 1 - math.exp(-0.4)
    errors = []
    for n in (79, 159):
        grid = Grid(-7.0, 7.0, n)
        res = propagate_exact(target, PROC, Schedule([5.0, 0.2], [u]), grid=grid)
        x = grid.axes()[0].numpy()
        exact = _gaussian_density(x, m_t * (1 - math.exp(-u / v_t)), v_t + (1 - v_t) * math.exp(-2 * u / v_t))
        errors.append(np.abs(res.q - exact).max())
    assert errors[1] < 2e-3
    assert 3.0 < errors[0] / errors[1] < 5.0


def test_chi2_decays_at_twice_the_gap():
    """At one level chi^2(u) = sum_j c_j^2 e^{-2 lambda_j u}: once the second mode has decayed by
    e^{-2 (lambda_2 - lambda_1) u_1} <= 1e-10 (u_1 chosen so), the measured slope of log chi^2
    between u_1 and u_1 + 1 / lambda_1 is 2 lambda_1 of the grid operator to 1e-6 (the
    leftover ratio c_2^2 / c_1^2 is O(1) for this asymmetric target)."""
    grid = Grid(-6.0, 6.5, 120)
    model = GridModel(ASYM, PROC, grid, t_range=(0.5, 5.0))
    lam = np.linalg.eigvalsh(model.hamiltonian(model.level(0.5)).toarray())[:3]
    u1 = math.log(1e10) / (2 * (lam[2] - lam[1]))
    u2 = u1 + 1 / lam[1]
    chi2 = [propagate_exact(ASYM, PROC, Schedule([5.0, 0.5], [u]), model=model).chi2 for u in (u1, u2)]
    slope = -math.log(chi2[1] / chi2[0]) / (u2 - u1)
    assert slope == pytest.approx(2 * lam[1], rel=1e-6)


def _euler_gaussian(times, mean0, cov0, coef, noise):
    """Exact law of Euler(-Maruyama) for an OU-noised Gaussian target from the N(0, I) prior."""
    d = len(mean0)
    M, V = np.zeros(d), np.eye(d)
    for t, dt in zip(times[:-1], -np.diff(times)):
        m_t = math.exp(-t) * mean0
        C = math.exp(-2 * t) * cov0 + (1 - math.exp(-2 * t)) * np.eye(d)
        Ci = np.linalg.inv(C)
        K = (1 + dt) * np.eye(d) - coef * 2 * dt * Ci
        M = K @ M + coef * 2 * dt * Ci @ m_t
        V = K @ V @ K.T + (2 * dt * np.eye(d) if noise else 0)
    return M, V


@pytest.mark.parametrize("sampler, coef, noise", [("sde", 1.0, True), ("ode", 0.5, False)])
def test_euler_samplers_on_a_gaussian_are_exact(sampler, coef, noise):
    """Euler / Euler-Maruyama map Gaussians to Gaussians: the grid density must match the exact one.

    ODE: backward characteristics are exact to the Newton tolerance (1e-12). SDE: quadrature
    steps are exact to exp(-2 pi^2 1.2^2) ~ 1e-12 and pushed-forward steps carry the cubic
    spline's O(h^4) error; 1e-7 of the peak bounds both on these grids (N = 40 exercises both).
    """
    times = np.geomspace(4.0, 1e-3, 41)
    for target, mean0, cov0 in [(GaussianMixture([1.0], [0.7], [0.05]), np.array([0.7]), np.array([[0.05]])),
                                (GAUSS_2D, np.array([0.4, -0.3]), np.array([[0.3, 0.1], [0.1, 0.2]]))]:
        res = propagate_exact(target, PROC, Schedule(times, np.zeros(40)), sampler=sampler)
        M, V = _euler_gaussian(times, mean0, cov0, coef, noise)
        x = res.grid.points().numpy() - M
        exact = np.exp(-0.5 * np.einsum("ni,ij,nj->n", x, np.linalg.inv(V), x)) / math.sqrt(np.linalg.det(2 * math.pi * V))
        tol = 1e-11 if sampler == "ode" else 1e-7
        assert np.abs(res.q - exact).max() <= tol * exact.max()
        assert res.converged and (res.resolved or target.dim == 2)


def test_distances_against_closed_forms():
    """q = p_T, p = p_t_min for a Gaussian target: TV, KL, chi^2, Hellinger of two Gaussians."""
    target = GaussianMixture([1.0], [0.5], [0.2])
    res = propagate_exact(target, PROC, Schedule([0.6, 0.3], [0.0]), initial="exact")
    m1, v1 = 0.5 * math.exp(-0.6), 0.2 * math.exp(-1.2) + 1 - math.exp(-1.2)
    m2, v2 = 0.5 * math.exp(-0.3), 0.2 * math.exp(-0.6) + 1 - math.exp(-0.6)
    kl = 0.5 * (v1 / v2 + (m1 - m2) ** 2 / v2 - 1 + math.log(v2 / v1))
    # chi^2(q||p) = int q^2 / p - 1 for Gaussians (finite since 2 v2 > v1; the integrand has
    # variance 1 / (2 / v1 - 1 / v2) ~ 1.2, so the box holds it to ~1e-8)
    vs = 1 / (2 / v1 - 1 / v2)
    ms = vs * (2 * m1 / v1 - m2 / v2)
    chi2 = math.sqrt(vs * v2) / v1 * math.exp(0.5 * (ms**2 / vs - 2 * m1**2 / v1 + m2**2 / v2)) - 1
    bc = math.sqrt(2 * math.sqrt(v1 * v2) / (v1 + v2)) * math.exp(-((m1 - m2) ** 2) / (4 * (v1 + v2)))
    # TV: the densities cross at the roots of log q = log p
    a, b = 1 / v2 - 1 / v1, 2 * (m1 / v1 - m2 / v2)
    c = m2**2 / v2 - m1**2 / v1 + math.log(v2 / v1)
    roots = np.sort(np.roots([a, b, c]).real)
    diff = lambda x: norm.cdf(x, m1, math.sqrt(v1)) - norm.cdf(x, m2, math.sqrt(v2))
    tv = abs(diff(roots[1]) - diff(roots[0]))
    assert res.kl == pytest.approx(kl, rel=1e-8)
    assert res.chi2 == pytest.approx(chi2, rel=1e-7)
    assert res.hellinger == pytest.approx(math.sqrt(1 - bc), rel=1e-8)
    # |q - p| has a kink at each root r: the node sum errs by at most h^2 |q'(r) - p'(r)| / 4 per root
    slope = lambda x: abs(norm.pdf(x, m1, math.sqrt(v1)) * (x - m1) / v1 - norm.pdf(x, m2, math.sqrt(v2)) * (x - m2) / v2)
    assert abs(res.tv - tv) <= sum(res.grid.h[0] ** 2 * slope(r) / 4 for r in roots) + 1e-10
    assert res.tv <= math.sqrt(res.chi2) / 2 and res.hellinger**2 <= res.tv


def test_basins_of_the_asymmetric_target():
    """Two basins split at the saddle x_b of p; their masses are exact CDF sums up to p(x_b) h."""
    res = propagate_exact(ASYM, PROC, Schedule([5.0, 1e-3], [0.0]))
    x = res.grid.axes()[0].numpy()
    boundary = x[np.flatnonzero(np.diff(res.basins))[0]] + 0.5 * res.grid.h[0]
    marg = ASYM.marginal(PROC, 1e-3)
    w, mu, sd = marg.weights.numpy(), marg.means.numpy()[:, 0], np.sqrt(marg.covs.numpy()[:, 0, 0])
    left = float(np.sum(w * norm.cdf(boundary, mu, sd)))
    p_b = float(np.sum(w * norm.pdf(boundary, mu, sd)))
    assert res.basin_weights_p == pytest.approx([left, 1 - left], abs=p_b * res.grid.h[0] + 1e-9)
    comp = propagate_exact(ASYM, PROC, Schedule([5.0, 1e-3], [0.0]), basins="component")
    assert comp.basin_weights_p == pytest.approx([0.2, 0.8], abs=1e-3)
    assert res.weight_error == pytest.approx(float(np.abs(res.basin_weights_q - res.basin_weights_p).max()))


def test_four_mode_2d_has_four_basins_and_langevin_improves_with_time():
    target = example("four_mode_2d")
    grid = Grid([-4.5, -4.5], [4.5, 4.5], 40)
    tvs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryMassWarning)
        for budget in (1.0, 10.0):
            res = propagate_exact(target, PROC, Schedule(np.geomspace(3.0, 0.05, 9), np.full(8, budget / 8)), grid=grid)
            tvs.append(res.tv)
    assert res.basin_weights_p.size == 4
    # each basin's maximum of p lies within one spacing (diagonal) of a component mean alpha mu_k
    x = grid.points().numpy()
    peaks = np.array([x[np.flatnonzero(res.basins == b)[np.argmax(res.p[res.basins == b])]] for b in range(4)])
    means = math.exp(-0.05) * target.means.numpy()
    assert np.linalg.norm(peaks[:, None] - means[None], axis=-1).min(0).max() <= math.hypot(*grid.h)
    assert tvs[1] < tvs[0] / 5


def test_exact_score_input_and_plot():
    from matplotlib.figure import Figure

    schedule = Schedule(np.geomspace(5.0, 1e-2, 6), np.full(5, 1.0))
    res = propagate_exact(ExactScore(ASYM, PROC), None, schedule)
    assert res.tv == propagate_exact(ASYM, PROC, schedule).tv
    assert isinstance(res.plot(), Figure)
    with pytest.raises(ValueError, match="differs"):
        propagate_exact(ExactScore(ASYM, PROC), OU(T=5.0), schedule)


def test_refine_reports_the_discretisation_error():
    schedule = Schedule(np.geomspace(5.0, 1e-2, 11), np.full(10, 0.5))
    res = propagate_exact(ASYM, PROC, schedule, refine=True)
    assert res.discretisation_error == pytest.approx(abs(res.tv - res.tv_refined))
    assert res.discretisation_error < 1e-2 * res.tv


def test_bad_input():
    good = Schedule([5.0, 1.0, 0.1], [1.0, 1.0])
    with pytest.raises(ScheduleError, match="strictly"):
        propagate_exact(ASYM, PROC, [5.0, 1.0, 1.0])
    with pytest.raises(ScheduleError, match="negative"):
        propagate_exact(ASYM, PROC, Schedule([5.0, 1.0, 0.1], [1.0, -1.0]))
    with pytest.raises(TimeRangeError):
        propagate_exact(ASYM, PROC, [20.0, 1.0, 0.1])
    with pytest.raises(ValueError, match="sampler"):
        propagate_exact(ASYM, PROC, good, sampler="heun")
    with pytest.raises(ValueError, match="initial"):
        propagate_exact(ASYM, PROC, good, initial="data")
    with pytest.raises(InputShapeError):
        propagate_exact(GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [1.0]), PROC, good)
    with pytest.raises(ResolutionError, match="resolve"):
        propagate_exact(ASYM, PROC, good, grid=Grid(-7.0, 7.0, 9))
    with pytest.warns(BoundaryMassWarning, match="cuts off"):
        res = propagate_exact(ASYM, PROC, good, grid=Grid(-3.0, 3.0, 200))
    assert not res.resolved and res.boundary_mass > 1e-3
    with pytest.raises(ScheduleError, match="folds"):
        propagate_exact(GaussianMixture([1.0], [0.0], [1.0]), VE(sigma_max=20.0), [1.0, 1e-3], sampler="ode")


def test_invert_map_stops_a_row_stalled_at_round_off():
    """m(x) = x^3 + x with a residual floor: a 1e-9 wobble of period 2e-13 no Newton step can
    follow. The root of x^3 + x = 2 is 1: the stalled row ends within the floor of it and is
    reported not converged, the clean row converges, and the map is called a few dozen times
    (a stalled row was halved 30 times in each of 60 Newton steps: about 1800 calls)."""
    calls = []

    def step(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(x.shape[0])
        wobble = np.where(np.arange(x.shape[0])[:, None] == 0, 1e-9 * np.sin(1e13 * math.pi * x), 0.0)
        return x**3 + x + wobble, (3 * x**2 + 1)[:, :, None]

    x, det, converged = invert_map(step, np.array([[2.0], [2.0]]))
    assert not converged and abs(x[0, 0] - 1.0) < 1e-8 and abs(x[1, 0] - 1.0) < 1e-14
    np.testing.assert_allclose(det, 4.0, rtol=1e-8)
    assert len(calls) < 60
