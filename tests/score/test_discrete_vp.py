"""DiscreteVP: the continuous process of a discrete alphas_cumprod table (score.processes).

Checked against: the table itself at the grid times t_n = n / (N - 1); scipy (an independent
implementation) for L = -log abar and its first two derivatives: CubicHermiteSpline through
the knots with PchipInterpolator's slopes inside and the adjacent secants at the ends;
autograd of the closed forms for the SDE identities f = d log alpha / dt,
g^2 = d sigma^2 / dt - 2 f sigma^2 and the derivatives; the inverses.

Tolerances against scipy are scipy's own rounding: it evaluates the cubic in another basis
(powers of t - t_k, t_k = k / (N - 1) inexact), whose coefficients for L'' are differences of
terms about N times larger; measured, relative to the largest value, up to 1e-14 for L,
1e-13 for L' and 3e-10 for L'' (this module's evaluation is within 1e-12 of the exact rational
value of the same cubic there). The test allows 1e-13, 1e-11 and 1e-8; a different slope rule
would differ by 1e-3 or more in L'' and visibly in L between the knots. (L'' of a two-entry
table, a straight line, is 0: there the scale is 1.)
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicHermiteSpline, PchipInterpolator

from scorehamiltonian import TimeRangeError
from scorehamiltonian.score import DiscreteVP, process_from_config

U = 2.0**-53


def _linear_table(n=1000):
    """DDPM's linear beta schedule, as diffusers computes it (float32)."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, n, dtype=torch.float32), 0)


def _cosine_table(n=200):
    """A cosine schedule (Nichol and Dhariwal 2021), betas capped at 0.999, in float64."""
    f = np.cos((np.arange(n + 1) / n + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return torch.tensor(np.cumprod(1 - betas))


TABLES = {"linear": _linear_table(), "cosine": _cosine_table(), "three": torch.tensor([0.9, 0.5, 0.01]),
          "two": torch.tensor([0.99, 0.2], dtype=torch.float64)}


@pytest.fixture(params=list(TABLES), ids=list(TABLES))
def table(request):
    return TABLES[request.param]


def _times(n=401, seed=0):
    return torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_grid_times_are_the_table(table):
    p = DiscreteVP(table)
    n = torch.arange(len(table), dtype=torch.float64)
    t = p.timestep_to_t(n)
    abar = table.double()
    assert p.num_train_timesteps == len(table)
    torch.testing.assert_close(p.t_to_timestep(t), n, rtol=0, atol=4 * U * len(table))
    # alpha^2 = exp(-L) at the knots: the cubic's value there (a few roundings of size L_n u, as
    # t_n may land at the end of the interval to the left) and exp, sqrt, square (a few u)
    L = -abar.log()
    assert bool(((p.alpha(t) ** 2 - abar).abs() <= (4 + 4 * L) * U * abar).all())
    assert bool(((p.sigma(t) ** 2 - (1 - abar)).abs() <= 8 * U).all())
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=4 * U)


def test_curve_is_the_monotone_hermite_cubic_of_scipy(table):
    p = DiscreteVP(table)
    N = len(table)
    knots = np.arange(N) / (N - 1)
    L = -np.log(table.double().numpy())
    secants = np.diff(L) * (N - 1)
    # slopes: PCHIP's (Fritsch-Carlson harmonic means) inside, the adjacent secants at the ends
    slopes = np.concatenate([secants[:1], PchipInterpolator(knots, L)(knots[1:-1], 1), secants[-1:]])
    reference = CubicHermiteSpline(knots, L, slopes)
    t = _times()
    at_knots = torch.cat([t, torch.from_numpy(knots)])  # L'' jumps at the knots: compared between them
    for order, got, rtol in ((0, -2 * torch.log(p.alpha(at_knots)), 1e-13), (1, p.g2(at_knots), 1e-11),
                             (2, p.dg2(t), 1e-8)):
        want = torch.from_numpy(reference((t if order == 2 else at_knots).numpy(), order))
        torch.testing.assert_close(got, want, rtol=0, atol=rtol * max(float(want.abs().max()), 1.0))


def _derivative(fn, t):
    t = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(t).sum(), t)
    return grad


def test_sde_identities_by_autograd(table):
    p = DiscreteVP(table)
    t = _times(seed=1).clamp(1e-3, 1 - 1e-3)
    f, sigma = p.f(t), p.sigma(t)

    def close(a, b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11 * float(b.abs().max()))

    close(f, _derivative(lambda s: torch.log(p.alpha(s)), t))
    close(p.g2(t), _derivative(lambda s: p.sigma(s) ** 2, t) - 2 * f * sigma**2)
    close(p.dalpha(t), _derivative(p.alpha, t))
    close(p.dsigma(t), _derivative(p.sigma, t))
    close(p.df(t), _derivative(p.f, t))
    close(p.dg2(t), _derivative(p.g2, t))
    assert bool((p.g2(t) > 0).all()) and bool((p.f(t) < 0).all())


def test_monotone_and_inverses(table):
    p = DiscreteVP(table)
    fine = torch.linspace(0, 1, 20001, dtype=torch.float64)
    assert bool((p.sigma(fine)[1:] > p.sigma(fine)[:-1]).all()), "sigma_t must increase strictly"
    assert bool((p.g2(fine) > 0).all()), "g^2 = L' must stay positive (the end slopes too)"
    knots = torch.arange(len(table), dtype=torch.float64) / (len(table) - 1)
    t = torch.cat([_times(seed=2), knots])
    torch.testing.assert_close(p.log_snr_to_t(p.log_snr(t)), t, rtol=0, atol=1e-12)
    # sigma -> t loses digits where sigma_t is close to 1 (as for every VP process): compare
    # where 1 - sigma_t^2 = abar(t) > 1e-3
    inner = t[p.alpha(t) ** 2 > 1e-3]
    torch.testing.assert_close(p.sigma_to_t(p.sigma(inner)), inner, rtol=0, atol=1e-9)
    lam = p.log_snr(t)
    torch.testing.assert_close(lam, torch.log(p.alpha(t) ** 2 / p.sigma(t) ** 2), rtol=1e-12, atol=1e-12)
    with pytest.raises(TimeRangeError):
        p.log_snr_to_t(float(p.log_snr(0.0)) + 0.1)
    with pytest.raises(TimeRangeError):
        p.log_snr_to_t(float(p.log_snr(1.0)) - 0.1)
    with pytest.raises(TimeRangeError):
        p.sigma_to_t(0.5 * float(p.sigma(0.0)))


def test_config_round_trip_through_json(table):
    p = DiscreteVP(table)
    q = process_from_config(json.loads(json.dumps(p.config())))
    assert q == p and hash(q) == hash(p) and isinstance(q, DiscreteVP)
    t = _times(seed=3)
    assert torch.equal(q.g2(t), p.g2(t)) and torch.equal(q.sigma(t), p.sigma(t))
    assert "N=" in repr(p) and len(repr(p)) < 120


def test_times_and_timesteps_outside_the_range():
    p = DiscreteVP(_linear_table())
    for bad in (-1e-9, 1.0 + 1e-9, math.nan):
        with pytest.raises(TimeRangeError, match="outside the valid time range"):
            p.alpha(torch.tensor([0.5, bad], dtype=torch.float64))
    with pytest.raises(TimeRangeError):
        p.timestep_to_t(1000)
    assert float(p.t_to_timestep(1.0)) == 999.0
    assert p.sigma(torch.tensor([0.25], dtype=torch.float32)).dtype == torch.float32


@pytest.mark.parametrize("bad, match", [
    ([[0.9, 0.5]], "1D table"), ([0.9], "1D table"),
    ([0.9, float("nan")], "alphas_cumprod\\[1\\] = nan"), ([0.9, 0.0], "alphas_cumprod\\[1\\] = 0.0"),
    ([1.5, 0.5], "alphas_cumprod\\[0\\] = 1.5"), ([0.9, 0.5, 0.5], "decrease strictly; alphas_cumprod\\[2\\]"),
])
def test_tables_that_define_no_process(bad, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVP(bad)
