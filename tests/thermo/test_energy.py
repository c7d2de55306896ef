"""Probability-flow energies and line integrals against exact Gaussian-mixture log-densities."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from scorehamiltonian import OU, VE, ExactScore, GaussianMixture, as_score, example
from scorehamiltonian.common.errors import ScheduleError, TimeRangeError
from scorehamiltonian.sampling.schedules import standard_schedule
from scorehamiltonian.score.ensemble import ScoreEnsemble
from scorehamiltonian.thermo.energy import energy, start_time
from scorehamiltonian.thermo.integrators import ORDERS
from scorehamiltonian.thermo.line_energy import line_energy

#: Processes of the tests: OU (t_min = 0, sigma_0 = 0) and VE with a large sigma_max, so that
#: the reference law N(0, sigma_T^2) is within 1e-3 of p_T.
OU_PROCESS = OU()
VE_PROCESS = VE(sigma_min=0.01, sigma_max=1e4)
#: A grid each process's energies are asymptotic on (measured: EDM for OU, log-sigma for VE).
GRIDS = {"OU": ("edm", 256), "VE": ("uniform", 128)}


def _schedule(process, kind=None, n=None):
    name, steps = GRIDS[type(process).__name__]
    return standard_schedule(kind or name, n or steps, process.t_max, process.t_min, process)


def points_with_tails(mixture, n, seed=0):
    """Samples of the mixture and two tail points (3 standard deviations out along the first axis)."""
    x = mixture.sample(n, torch.Generator().manual_seed(seed))
    spread = float(mixture.covariance().diagonal().max().sqrt())
    tail = mixture.mean()[None].repeat(2, 1)
    tail[:, 0] += torch.tensor([-3.0, 3.0], dtype=torch.float64) * spread
    return torch.cat([x, tail])


@pytest.mark.parametrize("process", [OU_PROCESS, VE_PROCESS], ids=["OU", "VE"])
@pytest.mark.parametrize("name", ["asymmetric", "four_mode_2d"])
def test_energy_of_exact_score_matches_exact_log_density(name, process):
    """Every energy lies within its reported error of -log p_{t_min}(x), and the integrator part
    of the error over-estimates the true integrator error (against a tight dopri5 solve with the
    same reference law) by a median factor between 1 and 2^(p+1) (the step-doubling factor
    2^p - 1 with a margin; single points can differ by more, where the true error changes
    sign or the coarser grids are pre-asymptotic).
    Most points are flagged asymptotic on these grids (measured: all but a few near basin
    boundaries, where the forward flow is stiff)."""
    mixture = example(name)
    score = ExactScore(mixture, process)
    x = points_with_tails(mixture, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = energy(score, process, x, _schedule(process))
    exact = -score.log_prob(x, process.t_min)
    assert float(result.converged.double().mean()) >= 0.75
    assert bool(((result.value - exact).abs() <= result.error).all())
    tight = energy(score, process, x, method="dopri5", solver_rtol=1e-10, solver_atol=1e-12)
    factor = float((result.integrator_error / (result.value - tight.value).abs()).median())
    assert 1.0 <= factor <= 2.0 ** (ORDERS["rk4"] + 1)
    assert bool(((tight.value - exact).abs() <= tight.error).all())
    assert result.nfe == 1 + 4 * (256 if process is OU_PROCESS else 128) * 7 // 4
    assert result.closure is None


@pytest.fixture(scope="module")
def gaussian_case():
    """A 1D Gaussian under VE(0.2, 100) and its energies by a tight dopri5 solve (the same
    reference law, so that differences are integrator errors only)."""
    process = VE(sigma_min=0.2, sigma_max=100.0)
    score = ExactScore(GaussianMixture([1.0], [[0.5]], [0.3]), process)
    x = torch.tensor([[-1.0], [0.4], [2.0]], dtype=torch.float64)
    return score, x, energy(score, process, x, method="dopri5", solver_rtol=1e-10, solver_atol=1e-12).value


@pytest.mark.parametrize("method, n_steps", [("euler", 128), ("heun", 32), ("rk4", 16)])
def test_observed_order_matches_the_integrator(gaussian_case, method, n_steps):
    """Integrator errors on grids of N and 2N steps (uniform in log sigma) fall by 2^p
    (N where the sequence is asymptotic to within 0.25 in the order, measured)."""
    score, x, reference = gaussian_case
    errors = []
    for n in (n_steps, 2 * n_steps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = energy(score, None, x, np.linspace(1.0, 0.0, n + 1), method=method)
        errors.append(float((res.value - reference).abs().max()))
    assert abs(math.log2(errors[0] / errors[1]) - ORDERS[method]) < 0.25


def test_hutchinson_agrees_with_exact_divergence_within_its_standard_error():
    """Hutchinson's error is pure probe noise on the same trajectory: (hutch - exact) / stderr
    has mean square 1 (Student-t with 31 degrees of freedom: 1.07) over 150 points."""
    process = VE(sigma_min=0.01, sigma_max=1e3)
    mixture = example("four_mode_2d")
    model = as_score(lambda x, t: ExactScore(mixture, process)(x, t), process=process, dim=2)
    x = mixture.sample(150, torch.Generator().manual_seed(1))
    schedule = np.linspace(1.0, 0.0, 33)
    exact_div = energy(model, process, x, schedule, closure=False)
    hutch = energy(model, process, x, schedule, divergence="hutchinson", n_probes=32,
                   generator=torch.Generator().manual_seed(2), closure=False)
    assert torch.equal(exact_div.x_T, hutch.x_T)
    z = (hutch.value - exact_div.value) / hutch.divergence_error
    assert 0.6 < float((z**2).mean()) < 1.6
    assert float(z.abs().max()) < 5.0
    assert hutch.n_vjp == 32 * hutch.nfe


def test_dopri5_within_its_error_and_batch_shape():
    """dopri5 on a (2, 3, 1) batch: values of shape (2, 3) within their error of the exact ones."""
    score = ExactScore(example("bimodal"), OU_PROCESS)
    x = torch.linspace(-3.0, 3.0, 6, dtype=torch.float64).reshape(2, 3, 1)
    result = energy(score, None, x, method="dopri5", solver_rtol=1e-9, solver_atol=1e-11)
    assert result.value.shape == (2, 3) and result.x_T.shape == x.shape
    assert bool(((result.value + score.log_prob(x, 0.0)).abs() <= result.error).all())


def test_coarse_schedule_warns_and_flags_points():
    score = ExactScore(example("asymmetric"), OU_PROCESS)
    with pytest.warns(Warning, match="not asymptotic"):
        result = energy(score, OU_PROCESS, points_with_tails(example("asymmetric"), 10), _schedule(OU_PROCESS, "uniform", 16))
    assert not bool(result.converged.all())


def test_step_doubling_pairs_and_its_least_step_ratio():
    from scorehamiltonian.thermo.integrators import _coarse, _least_pair_ratio

    # The ratio at which a pair's bar 3 |E_h - E_2h| / (2^p - 1) still covers its local error
    # (equal c): Euler 6r = 1 + r^2, Heun 3r + 3r^2 = 1 + r^3, RK4 the root of (1+r)^5 = 6 + 6 r^5.
    assert _least_pair_ratio(1) == pytest.approx(3.0 - math.sqrt(8.0), rel=1e-9)
    r = _least_pair_ratio(2)
    assert 3 * r + 3 * r**2 == pytest.approx(1 + r**3, rel=1e-9)
    r = _least_pair_ratio(4)
    assert (1 + r) ** 5 == pytest.approx(6 + 6 * r**5, rel=1e-9)
    times = torch.tensor([5.0, 4.0, 3.0, 2.5, 2.0, 1.0], dtype=torch.float64)  # 5 steps: 1, 1, .5, .5, 1
    assert _coarse(times).tolist() == [5.0, 3.0, 2.5, 1.0]  # the 0.5 step at an even position stays single
    assert _coarse(times[:-1]).tolist() == [5.0, 3.0, 2.0]


def test_an_appended_step_is_measured_by_halving_it():
    # A thermodynamic grid down to 0.05 with one step appended to reach t_min = 0 (VE): in
    # integration order the steps are 0.05 (appended), 0.40 (the grid's first), 0.07, ... The
    # 0.40 step is paired with the 0.05 one, so E_h and E_2h share most of its error.
    # Measured with step doubling alone: 7 of 8 points under-covered while flagged converged.
    # Halving that step (Richardson) must cover every point.
    from scorehamiltonian.thermo.integrators import _split_steps

    process = VE()
    score = ExactScore(example("asymmetric"), process)
    s = standard_schedule("thermodynamic", 12, process.t_max, 0.05, process, score=score)
    times = torch.cat([torch.as_tensor(s.times), torch.tensor([process.t_min], dtype=torch.float64)])
    assert _split_steps(times.flip(0), ORDERS["rk4"]) == [1]
    x = example("asymmetric").sample(8, torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = energy(score, process, x, times)
    tight = energy(score, process, x, method="dopri5", solver_rtol=1e-11, solver_atol=1e-13)
    assert bool(((result.value - tight.value).abs() <= result.integrator_error).all())
    assert result.nfe == 1 + 4 * (13 + 7 + 4 + 14)
    # The default EDM grid from t = 0 pairs steps of 1e-26 and 1e-22 (ratio 6e-5): exempt.
    assert _split_steps(_schedule(OU_PROCESS).to_torchdiffeq(), ORDERS["rk4"]) == []


def test_line_energy_of_exact_score_closes():
    """Path integrals of an exact score give log p(b) - log p(a), and the loops close to within
    the quadrature error."""
    mixture = example("four_mode_2d")
    score = ExactScore(mixture, OU_PROCESS)
    gen = torch.Generator().manual_seed(3)
    a, b = mixture.sample(8, gen), mixture.sample(8, gen)
    result = line_energy(score, a, b, t=0.1, paths=5, n_nodes=48)
    exact = score.log_prob(b, 0.1) - score.log_prob(a, 0.1)
    assert bool(((result.value - exact).abs() <= result.error).all())
    assert bool((result.closure <= 2 * result.quadrature_error + 1e-12).all())
    assert float(result.closure.max()) < 1e-4
    assert result.nfe == 5 * (48 + 24)


def test_cycle_closure_of_a_rotational_field():
    """s = -x + c (-x_2, x_1) has curl 2c: two paths bulging by |b - a| / 2 to either side enclose
    the area 2 (2 / pi) |b - a|^2 / 2, so the closure is 2c (2 / pi) |b - a|^2; energy() reports it."""
    c = 0.3

    def field(x, t):
        return -x + c * torch.stack([-x[..., 1], x[..., 0]], -1)

    score = as_score(field, dim=2)
    a = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.5], [-0.5, 2.0]], dtype=torch.float64)
    result = line_energy(score, a, b, paths=3, n_nodes=16)
    expected = 2 * c * (2 / math.pi) * ((b - a) ** 2).sum(-1)
    torch.testing.assert_close(result.closure, expected, rtol=1e-10, atol=1e-12)
    audit = energy(score, None, b, np.linspace(10.0, 0.0, 65), method="euler")
    assert audit.closure is not None and bool((audit.closure > 0.1).all())


@pytest.mark.parametrize(
    "schedule, match",
    [
        ([10.0, 5.0, 7.0, 0.0], "strictly decreasing"),
        (np.linspace(10.0, 0.1, 33), "t_min"),
        (np.linspace(9.0, 0.0, 33), "t_max"),
        ([10.0, 0.0], "at least 2 steps"),
    ],
)
def test_bad_schedules_raise(schedule, match):
    score = ExactScore(example("bimodal"), OU_PROCESS)
    with pytest.raises(ScheduleError, match=match):
        energy(score, OU_PROCESS, torch.zeros(2, 1, dtype=torch.float64), schedule)


def test_other_bad_input_raises():
    score = ExactScore(example("bimodal"), OU_PROCESS)
    x = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.raises(TimeRangeError):
        energy(score, OU_PROCESS, x, [12.0, 5.0, 0.0])
    with pytest.raises(ValueError, match="method"):
        energy(score, OU_PROCESS, x, method="midpoint")
    with pytest.raises(ValueError, match="divergence"):
        energy(score, OU_PROCESS, x, divergence="hutch++")
    with pytest.raises(ValueError, match="differs"):
        energy(score, VE_PROCESS, x)
    with pytest.raises(ValueError, match="paths"):
        line_energy(score, x, x + 1, paths=1)


def test_epsilon_network_starts_at_its_training_time():
    """An epsilon-network under OU is undefined at t = 0 (sigma_0 = 0): energy refuses to start
    there and, from t_start, returns -log p_{t_start} within integrator and reference errors,
    and -log p_0 within the full error, whose start part (twice the first-order change of
    log p_t over [0, t_start]) covers the true change and is within 4 times it at the median."""
    mixture = example("asymmetric")
    exact = ExactScore(mixture, OU_PROCESS)
    network = as_score(lambda x, t: -OU_PROCESS.sigma(t)[..., None] * exact(x, t), kind="eps",
                       process=OU_PROCESS, dim=1)
    x = points_with_tails(mixture, 10)
    with pytest.raises(ValueError, match="pass t_start"):
        energy(network, None, x)
    t_start = 1e-2
    schedule = standard_schedule("edm", 256, OU_PROCESS.t_max, t_start, OU_PROCESS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = energy(network, None, x, schedule, t_start=t_start, closure=False)
    at_start = -exact.log_prob(x, t_start)
    assert bool(((result.value - at_start).abs() <= result.integrator_error + result.reference_error).all())
    change = (result.value + exact.log_prob(x, 0.0)).abs()
    assert bool((change <= result.error).all())
    assert 1.0 <= float((result.start_error / change).median()) <= 4.0
    with pytest.raises(ScheduleError, match="t_min"):
        energy(network, None, x, _schedule(OU_PROCESS), t_start=t_start)
    with pytest.raises(ValueError, match="t_start must lie"):
        energy(network, None, x, t_start=OU_PROCESS.t_max)


def test_start_time_of_networks_and_ensembles():
    """start_time: the process's t_min for a score; for an epsilon network (and an ensemble with
    one) under OU, where sigma_0 = 0, its training time, and a ValueError without one."""
    exact = ExactScore(example("asymmetric"), OU_PROCESS)

    def eps_network(trained: float | None):
        network = as_score(lambda x, t: -OU_PROCESS.sigma(t)[..., None] * exact(x, t), kind="eps",
                           process=OU_PROCESS, dim=1)
        network.t_trained = trained
        return network

    assert start_time(exact) == OU_PROCESS.t_min
    assert start_time(ScoreEnsemble([exact, exact])) == OU_PROCESS.t_min
    assert start_time(eps_network(0.02)) == 0.02
    assert start_time(ScoreEnsemble([eps_network(0.02), eps_network(0.01)])) == 0.02
    with pytest.raises(ValueError, match="pass t_start"):
        start_time(ScoreEnsemble([eps_network(None), exact]))


def test_energy_of_a_non_mixture_density_against_quadrature():
    """The double well p_0 proportional to exp(-(x^4 - 6 x^2 - x / 2)), its exact noised score by
    quadrature (NoisedDensity): the PF-ODE energy equals -log p_0 normalised by the trapezoid's
    log Z, within the reported error, at points across both wells and the barrier."""
    from scorehamiltonian.score.noised import NoisedDensity
    from scorehamiltonian.score.systems import double_well_factor

    density = NoisedDensity(double_well_factor, [-3.5], [3.5])
    x = torch.tensor([[-1.9], [-1.6], [-0.5], [0.0], [0.7], [1.5], [1.8], [2.1]], dtype=torch.float64)
    result = energy(density, None, x)
    exact = -(double_well_factor(x) - density.log_z)
    assert bool(result.converged.all())
    assert bool(((result.value - exact).abs() <= result.error).all()), (result.value - exact, result.error)
    assert float((result.value - exact).abs().max()) < 1e-2
