"""Schedule: validation, round trips, exports against the process; standard schedules against closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scorehamiltonian import EDM, OU, VE, ExactScore, GaussianMixture, VPLinear
from scorehamiltonian.common.errors import CheckpointError, ScheduleError, TimeRangeError
from scorehamiltonian.sampling.schedules import (
    _NEEDS_SPEED,
    STANDARD_SCHEDULES,
    PathProfile,
    Schedule,
    as_schedule,
    path_profile,
    standard_schedule,
)

TIMES = np.array([5.0, 2.0, 0.7, 0.1, 1e-3])
LANGEVIN = np.array([0.0, 1.5, 0.25, 3.0])


def test_schedule_stores_read_only_float64_copies_and_properties():
    source = TIMES.copy()
    s = Schedule(source, LANGEVIN, name="x")
    source[0] = 99.0
    assert s.times.dtype == np.float64 and s.times[0] == 5.0
    assert s.n_levels == 4 and s.t_max == 5.0 and s.t_min == 1e-3
    assert s.budget == pytest.approx(4.75, rel=1e-15)
    with pytest.raises(ValueError):
        s.times[1] = 3.0
    assert s == Schedule(TIMES.tolist(), LANGEVIN.tolist(), name="x")
    assert s != Schedule(TIMES, LANGEVIN, name="y")
    assert hash(s) == hash(Schedule(TIMES, LANGEVIN, name="x"))


def test_schedule_accepts_torch_tensors_and_integers():
    s = Schedule(torch.tensor([3.0, 1.0]), torch.tensor([2.0]))
    assert s.times.tolist() == [3.0, 1.0]
    assert Schedule([3, 1], [0]).langevin_time.dtype == np.float64


@pytest.mark.parametrize(
    ("times", "langevin", "match"),
    [
        ([5.0, 2.0, 2.0, 1.0], [0, 0, 0], r"times\[2\] = 2.0 does not lie below times\[1\] = 2.0"),
        ([5.0, 1.0, 2.0], [0, 0], r"times\[2\] = 2.0"),
        ([5.0, float("nan"), 1.0], [0, 0], r"times\[1\] = nan is not finite"),
        ([5.0, 1.0, -float("inf")], [0, 0], r"times\[2\] = -inf"),
        ([5.0], [], "at least 2 entries"),
        ([[5.0, 1.0]], [0], "1-D"),
        ([5.0, 1.0], [0, 0], "one entry per level"),
        ([5.0, 2.0, 1.0], [1.0, -0.5], r"langevin_time\[1\] = -0.5 is negative"),
        ([5.0, 1.0], [float("inf")], r"langevin_time\[0\] = inf is not finite"),
        (["5", "1"], [0], "real numbers"),
        ([5.0, 1.0], [True], "real numbers"),
        ([5.0 + 1j, 1.0], [0], "real numbers"),
    ],
)
def test_schedule_rejects_bad_input(times, langevin, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule(times, langevin)


def test_schedule_error_is_a_value_error():
    with pytest.raises(ValueError):
        Schedule([1.0, 2.0], [0.0])


def test_check_range_raises_time_range_error_outside_the_process():
    s = Schedule([12.0, 1.0], [0.0])
    with pytest.raises(TimeRangeError, match="12.0"):
        s.check_range(OU(T=10.0))
    assert s.check_range(OU(T=12.0)) is s
    with pytest.raises(TimeRangeError):
        Schedule([0.5, 0.0, -0.1], [0.0, 0.0]).check_range(EDM())


def test_as_schedule_orders_times_and_checks_range():
    up = as_schedule(TIMES[::-1], langevin_time=LANGEVIN, name="n")
    assert np.array_equal(up.times, TIMES) and np.array_equal(up.langevin_time, LANGEVIN)
    assert as_schedule(TIMES).budget == 0.0
    s = Schedule(TIMES, LANGEVIN)
    assert as_schedule(s) is s and as_schedule(s, OU()) is s
    with pytest.raises(TimeRangeError):
        as_schedule(s, VE())
    with pytest.raises(ScheduleError, match="strictly decreasing"):
        as_schedule([0.1, 0.5, 0.3])
    with pytest.raises(ScheduleError):
        as_schedule(s, langevin_time=LANGEVIN)
    with pytest.raises(ScheduleError):
        as_schedule({"times": TIMES})


@pytest.mark.parametrize("process", [OU(), VPLinear(), VE(0.01, 20.0), EDM(40.0)], ids=lambda p: type(p).__name__)
def test_sigmas_are_sigma_over_alpha_and_a_zero_only_for_a_final_step_to_zero(process):
    t = process.t_min + np.array([0.9, 0.5, 0.2, 0.01]) * (process.t_max - process.t_min)
    s = Schedule(t, np.zeros(3))
    sig = s.sigmas(process)
    expected = [float(process.sigma(x) / process.alpha(x)) for x in t]
    assert sig.shape == (4,)
    np.testing.assert_allclose(sig, expected, rtol=1e-14)
    assert np.all(np.diff(sig) < 0)
    with_zero = s.sigmas(process, final="zero")
    assert with_zero.shape == (5,) and with_zero[-1] == 0.0
    np.testing.assert_array_equal(with_zero[:-1], sig)
    kd = s.to_k_diffusion(process)
    assert kd.sigmas.dtype == torch.float64 and np.array_equal(kd.sigmas.numpy(), sig)


def test_sigmas_equal_the_process_sigma_when_alpha_is_one():
    s = Schedule([30.0, 2.0, 0.002], [0.0, 0.0])
    np.testing.assert_array_equal(s.sigmas(EDM(40.0)), s.times)


def test_exports_refuse_times_outside_the_process():
    s = Schedule([12.0, 1.0], [0.0])
    with pytest.raises(TimeRangeError):
        s.sigmas(OU())
    with pytest.raises(TimeRangeError):
        s.to_k_diffusion(OU())


def test_to_torchdiffeq_is_increasing():
    t = Schedule(TIMES, LANGEVIN).to_torchdiffeq(dtype=torch.float32)
    assert t.dtype == torch.float32
    assert torch.equal(t, torch.tensor(TIMES[::-1].copy(), dtype=torch.float32))


def test_save_load_round_trip_is_exact(tmp_path):
    times = np.geomspace(5.0, 1e-3, 11) * (1 + 1e-16 * np.arange(11))
    s = Schedule(times, np.random.default_rng(0).exponential(size=10), name="r")
    path = tmp_path / "s.json"
    s.save(path)
    back = Schedule.load(path)
    assert back == s
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


@pytest.mark.parametrize(
    "content",
    ["not json", "[1, 2]", json.dumps({"format": "other"}),
     json.dumps({"format": "scorehamiltonian.schedule/1", "times": [1.0, 2.0], "langevin_time": [0.0]}),
     json.dumps({"format": "scorehamiltonian.schedule/1", "times": [2.0, 1.0]})],
)
def test_load_rejects_bad_files(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CheckpointError):
        Schedule.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no file"):
        Schedule.load(tmp_path / "missing.json")


def test_plot_returns_a_figure():
    fig = Schedule(TIMES, LANGEVIN, name="p").plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(fig.axes) == 2
    assert math.isclose(ax.lines[0].get_xdata()[0], 5.0)


# --------------------------------------------------------------------------- standard schedules

V0 = 0.1  # variance of the Gaussian target N(0, V0) in the closed-form cases


def gaussian_variance(t):
    """Variance of p_t for N(0, V0) under OU: v_t = V0 e^{-2t} + 1 - e^{-2t}."""
    return V0 * np.exp(-2 * t) + 1 - np.exp(-2 * t)


def gaussian_profile(times):
    """Exact lambda_1 = 1 / v_t and A(t) = |d log v / dt| / (2 sqrt 2) (THEORY sections 2-3)."""
    v = gaussian_variance(times)
    dv = 2 * (1 - V0) * np.exp(-2 * times)
    nan = np.full(times.size, np.nan)
    return PathProfile(times, 1 / v, dv / v / (2 * math.sqrt(2)), nan, nan)


#: The quantity each spectral rule spaces equally for the Gaussian: int A dt, int A / lambda dt,
#: int A / sqrt(lambda) dt are proportional to log v, v and sqrt(v).
EQUALLY_SPACED = {"thermodynamic": np.log, "adiabatic-A/gap": lambda v: v, "adiabatic-A/sqrt-gap": np.sqrt}


def test_step_rules_match_their_definitions():
    process, n = OU(), 8
    k = np.arange(n + 1) / n
    lin = {name: standard_schedule(name, n, 5.0, 1e-3, process, budget=4.0) for name in
           ("uniform", "log-uniform", "cosine", "edm", "log-snr")}
    np.testing.assert_allclose(lin["uniform"].times, 5.0 + k * (1e-3 - 5.0), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(lin["log-uniform"].times, 5.0 * (1e-3 / 5.0) ** k, rtol=1e-13)
    ratio = np.sqrt(np.expm1(2 * lin["cosine"].times))  # sigma / alpha of OU
    theta = np.arctan(ratio)
    np.testing.assert_allclose(np.diff(theta), np.full(n, (theta[-1] - theta[0]) / n), rtol=1e-10)
    ratio = np.sqrt(np.expm1(2 * lin["edm"].times)) ** (1 / 7)
    np.testing.assert_allclose(np.diff(ratio), np.full(n, (ratio[-1] - ratio[0]) / n), rtol=1e-10)
    log_snr = -np.log(np.expm1(2 * lin["log-snr"].times))
    np.testing.assert_allclose(np.diff(log_snr), np.full(n, (log_snr[-1] - log_snr[0]) / n), rtol=1e-10)
    for s in lin.values():
        assert s.times[0] == 5.0 and s.times[-1] == 1e-3
        np.testing.assert_allclose(s.langevin_time, np.full(n, 0.5), rtol=1e-15)


def test_edm_rule_on_the_edm_process_is_karras_eq5():
    s = standard_schedule("edm", 10, 80.0, 0.002, EDM(80.0))
    k = np.arange(11) / 10
    karras = (80.0 ** (1 / 7) + k * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s.times, karras, rtol=1e-12)
    np.testing.assert_allclose(s.sigmas(EDM(80.0)), karras, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(EQUALLY_SPACED))
def test_spectral_rules_converge_to_the_gaussian_closed_form(name):
    """Levels equally spaced in log v, v, sqrt v; the log-log interpolation of the profile is
    second order in the profile's spacing, so doubling the profile times must cut the error
    by about 4 and the finer error is then below the difference of the two (Richardson)."""
    errors, schedules = [], []
    for n_profile in (9, 17, 33):
        profile = gaussian_profile(np.geomspace(1e-3, 5.0, n_profile))
        s = standard_schedule(name, 6, 5.0, 1e-3, OU(), budget=0.0, profile=profile)
        q = EQUALLY_SPACED[name](gaussian_variance(s.times))
        errors.append(np.max(np.abs(q - np.linspace(q[0], q[-1], 7))) / abs(q[-1] - q[0]))
        schedules.append(s.times)
    order = math.log2(errors[1] / errors[2])
    assert 1.5 < order < 2.6, errors
    assert np.max(np.abs(schedules[2] - schedules[1]) / schedules[2]) > 0
    assert errors[2] < errors[1] - errors[2]


def test_adiabatic_rules_split_the_budget_as_one_over_the_gap():
    """u_k = U v(t_k) / sum v for the Gaussian. At profile nodes (langevin-1/gap with the
    log-uniform levels among the profile times) to round-off; between nodes log lambda is
    interpolated linearly in s = log t, with error <= h^2 / 8 max |d^2 log lambda / ds^2| =: e,
    so each weight is off by a factor within e^{+-e} and the normalised split by 2e."""
    levels = standard_schedule("log-uniform", 7, 5.0, 1e-3, OU()).times
    at_nodes = standard_schedule("langevin-1/gap", 7, 5.0, 1e-3, OU(), 10.0, profile=gaussian_profile(levels[::-1]))
    np.testing.assert_array_equal(at_nodes.times, levels)
    weights = gaussian_variance(levels[1:])
    np.testing.assert_allclose(at_nodes.langevin_time, 10.0 * weights / weights.sum(), rtol=1e-12)
    nodes = np.geomspace(1e-3, 5.0, 65)
    fine = np.log(np.geomspace(1e-3, 5.0, 20001))
    curvature = np.max(np.abs(np.gradient(np.gradient(np.log(gaussian_variance(np.exp(fine))), fine), fine)))
    bound = 2 * (np.exp(np.diff(np.log(nodes))[0] ** 2 / 8 * curvature) - 1)
    for name in ("adiabatic-A/gap", "adiabatic-A/sqrt-gap"):
        s = standard_schedule(name, 7, 5.0, 1e-3, OU(), budget=10.0, profile=gaussian_profile(nodes))
        weights = gaussian_variance(s.times[1:])
        assert s.budget == pytest.approx(10.0, rel=1e-14)
        np.testing.assert_allclose(s.langevin_time, 10.0 * weights / weights.sum(), rtol=bound)


def test_spectral_rules_from_the_score_match_the_exact_profile():
    """From a score: A by adiabatic_speed with common random numbers (for one Gaussian the
    estimate is the exact A times a constant, which cancels in equal increments: round-off
    agreement), lambda_1 by spectral_gap to relative error delta (a relative error delta in
    F shifts C(t) / C_total by at most 2 delta, hence t_k by at most 2 delta C_total / F(t_k))."""
    process = OU()
    score = ExactScore(GaussianMixture([1.0], [0.0], [V0]), process)
    times = np.geomspace(1e-3, 5.0, 9)
    exact = gaussian_profile(times)
    thermo = standard_schedule("thermodynamic", 5, 5.0, 1e-3, process, score=score, n_profile=9)
    reference = standard_schedule("thermodynamic", 5, 5.0, 1e-3, process, profile=exact)
    np.testing.assert_allclose(thermo.times, reference.times, rtol=1e-10)
    computed = path_profile(score, times, gap_rtol=1e-4)
    delta = np.max(computed.gap_error / computed.gap)
    np.testing.assert_allclose(computed.gap, exact.gap, rtol=3 * delta)
    s = standard_schedule("adiabatic-A/gap", 5, 5.0, 1e-3, process, 1.0, profile=computed)
    reference = standard_schedule("adiabatic-A/gap", 5, 5.0, 1e-3, process, 1.0, profile=exact)
    v = gaussian_variance(reference.times)
    density = 2 * (1 - V0) * np.exp(-2 * reference.times) / (2 * math.sqrt(2))
    total = (v[-1] - v[0]) / (2 * math.sqrt(2))
    shift = 2 * 3 * delta * abs(total) / density
    assert np.all(np.abs(s.times - reference.times) <= shift)
    np.testing.assert_allclose(s.langevin_time, reference.langevin_time, rtol=6 * delta)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("sigmoid", 5, 5.0, 1e-3), {}, ScheduleError, "unknown schedule"),
        (("uniform", 0, 5.0, 1e-3), {}, ScheduleError, "n_levels"),
        (("uniform", 2.5, 5.0, 1e-3), {}, ScheduleError, "n_levels"),
        (("uniform", 5, 1e-3, 5.0), {}, ScheduleError, "must exceed"),
        (("uniform", 5, 5.0, 1e-3), {"budget": -1.0}, ScheduleError, "budget"),
        (("uniform", 5, 5.0, 1e-3), {"budget": float("nan")}, ScheduleError, "budget"),
        (("log-uniform", 5, 5.0, 0.0), {}, ScheduleError, "t_min > 0"),
        (("uniform", 5, 20.0, 1e-3), {}, TimeRangeError, "20.0"),
        (("thermodynamic", 5, 5.0, 1e-3), {}, ScheduleError, "score= or profile="),
        (("thermodynamic", 5, 5.0, 1e-3), {"profile": gaussian_profile(np.geomspace(0.01, 5.0, 5))},
         TimeRangeError, "extend the profile"),
    ],
)
def test_standard_schedule_rejects_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        standard_schedule(*args, OU(), **kwargs)


def test_step_rules_allow_t_min_zero_where_defined():
    for name in ("uniform", "cosine", "edm"):
        s = standard_schedule(name, 4, 5.0, 0.0, OU())
        assert s.t_min == 0.0 and s.n_levels == 4



#: Every process of scorehamiltonian.score.processes (defaults), and the OU horizons of issue 23
#: (slow: each sweep takes about 4 s).
ALL_PROCESSES = [OU(), VPLinear(), VE(), EDM(), pytest.param(OU(12.0), marks=pytest.mark.slow),
                 pytest.param(OU(4.5), marks=pytest.mark.slow)]
#: The standard rules that need no gap / speed profile (budget 0).
PROFILE_FREE = [name for name in STANDARD_SCHEDULES if name not in _NEEDS_SPEED]


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
def test_every_step_count_gives_a_valid_grid_with_exact_end_points(process):
    """For every N in 2..1024 and every profile-free rule: N + 1 strictly decreasing times
    inside the process's range, starting at t_max and ending at t_min exactly. t_min is the
    process's own (sigma = 0 for OU, VP, EDM: the end of the EDM grid used to round to
    -8.9e-16 in sigma^(1/rho) and raise) where the rule allows it, else 1e-5."""
    t_max = process.t_max
    for name in PROFILE_FREE:
        t_min = process.t_min if name in ("uniform", "cosine", "edm") else 1e-5
        for n in range(2, 1025):
            s = standard_schedule(name, n, t_max, t_min, process)
            assert s.n_levels == n and s.times[0] == t_max and s.times[-1] == t_min, (name, n)
            assert t_min <= s.times.min() and s.times.max() <= t_max, (name, n)


@pytest.mark.parametrize(("process", "counts"), [(EDM(), [5, 9, 10, 18, 21, 35, 42, 69, 83]), (OU(12.0), [384]),
                                                 (OU(4.5), [100, 200])], ids=repr)
def test_the_edm_grids_that_crashed_end_at_t_min(process, counts):
    """The step counts issue 23 found raising TimeRangeError ('log_snr contains NaN')."""
    for n in counts:
        assert standard_schedule("edm", n, process.t_max, 0.0, process).times[-1] == 0.0
