"""Sampling schedules: the levels t_0 > t_1 > ... > t_N and the Langevin time spent at each.

A :class:`Schedule` is what every sampler of the toolkit consumes (THEORY section 3):

- ``times`` (N + 1 entries, strictly decreasing from t_max to t_min): the step grid of the
  reverse SDE / probability-flow ODE, and the levels of annealed Langevin;
- ``langevin_time`` (N entries, >= 0): for annealed Langevin, the Langevin time u_k spent at
  level t_k = times[k], k = 1..N (the start t_0 = t_max is the prior, where no time is spent).
  Its sum is the schedule's total Langevin time, the ``budget`` U.

Exports (:mod:`.exports`): k-diffusion sigmas (a trailing zero only for a final step to sigma = 0),
a diffusers scheduler configured to run the schedule, a torchdiffeq time grid. :func:`standard_schedule`
builds the named baselines (uniform, log-uniform, cosine, EDM, log-SNR, thermodynamic length,
and the naive adiabatic rules).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..common.errors import CheckpointError, ScheduleError, TimeRangeError
from ..common.files import read_json, write_json
from ..common.validation import real_array
from ..score.interface import as_score
from ..score.processes import ForwardProcess
from ..spectral.gap import spectral_gap
from ..spectral.speed import adiabatic_speed

__all__ = ["SCHEDULE_FORMAT", "STANDARD_SCHEDULES", "PathProfile", "Schedule", "as_schedule", "path_profile",
           "standard_schedule"]

#: Format tag of the JSON files written by :meth:`Schedule.save`.
SCHEDULE_FORMAT = "scorehamiltonian.schedule/1"


def _float_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a read-only 1-D float64 numpy copy; ScheduleError if it cannot be one."""
    array = np.array(real_array(value, name, ScheduleError), dtype=np.float64)
    if array.ndim != 1:
        raise ScheduleError(f"{name} must be 1-D; got shape {array.shape}")
    array.setflags(write=False)
    return array


def _first_bad(mask: np.ndarray) -> int | None:
    """Index of the first True in ``mask`` (None if there is none)."""
    bad = np.flatnonzero(mask)
    return int(bad[0]) if bad.size else None


def _check_finite(array: np.ndarray, name: str) -> None:
    index = _first_bad(~np.isfinite(array))
    if index is not None:
        raise ScheduleError(f"{name}[{index}] = {float(array[index])!r} is not finite")


def _check_times(times: np.ndarray) -> None:
    if times.size < 2:
        raise ScheduleError(f"times needs at least 2 entries (t_max and t_min); got {times.size}")
    _check_finite(times, "times")
    index = _first_bad(np.diff(times) >= 0)
    if index is not None:
        raise ScheduleError(
            f"times must be strictly decreasing: times[{index + 1}] = {float(times[index + 1])!r} does not lie "
            f"below times[{index}] = {float(times[index])!r}"
        )


def _check_langevin(langevin_time: np.ndarray, n_levels: int) -> None:
    if langevin_time.size != n_levels:
        raise ScheduleError(
            f"langevin_time needs one entry per level after the first ({n_levels} for "
            f"{n_levels + 1} times); got {langevin_time.size}"
        )
    _check_finite(langevin_time, "langevin_time")
    index = _first_bad(langevin_time < 0)
    if index is not None:
        raise ScheduleError(f"langevin_time[{index}] = {float(langevin_time[index])!r} is negative")


@dataclass(frozen=True, eq=False)
class Schedule:
    """Levels t_0 = t_max > t_1 > ... > t_N = t_min and the Langevin time at t_1..t_N.

    times : (N + 1,) float64, strictly decreasing, in the process's own time units.
    langevin_time : (N,) float64 >= 0: Langevin time u_k at level times[k], k = 1..N (units of
        the Langevin dynamics dX = s_t(X) du + sqrt(2) dW); all zero for a pure step grid.
    name : a label (the baseline's name, "designed", ...).

    Both arrays are stored as read-only float64 copies. Malformed input raises
    :class:`ScheduleError` naming the offending index and value. Equality compares the
    arrays exactly and the name.
    """

    times: np.ndarray
    langevin_time: np.ndarray
    name: str = "custom"

    def __post_init__(self) -> None:
        times = _float_array(self.times, "times")
        _check_times(times)
        langevin = _float_array(self.langevin_time, "langevin_time")
        _check_langevin(langevin, times.size - 1)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "langevin_time", langevin)
        object.__setattr__(self, "name", str(self.name))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Schedule)
            and self.name == other.name
            and np.array_equal(self.times, other.times)
            and np.array_equal(self.langevin_time, other.langevin_time)
        )

    def __hash__(self) -> int:
        return hash((self.name, self.times.tobytes(), self.langevin_time.tobytes()))

    def __repr__(self) -> str:
        return (f"Schedule(name={self.name!r}, n_levels={self.n_levels}, t_max={self.t_max:.6g}, "
                f"t_min={self.t_min:.6g}, budget={self.budget:.6g})")

    @property
    def n_levels(self) -> int:
        """N: the number of levels after the first (steps of a step grid)."""
        return self.times.size - 1

    @property
    def t_max(self) -> float:
        """The first time, times[0]."""
        return float(self.times[0])

    @property
    def t_min(self) -> float:
        """The last time, times[-1]."""
        return float(self.times[-1])

    @property
    def budget(self) -> float:
        """U: the total Langevin time, sum of ``langevin_time``."""
        return float(self.langevin_time.sum())

    def check_range(self, process: ForwardProcess) -> Schedule:
        """Return self if every time lies in the process's range; else :class:`TimeRangeError`."""
        process.time(torch.tensor(self.times))
        return self

    def sigmas(self, process: ForwardProcess, final: str = "t_min") -> np.ndarray:
        """The noise levels sigma_t / alpha_t at the times (N + 1 entries), then 0 with ``final="zero"``.

        The libraries' noise level of y = x / alpha_t (k-diffusion, diffusers' Euler / Heun /
        DPM-Solver); for alpha = 1 processes (VE, EDM) the process's own sigma_t. N + 1 levels
        are N steps ending at t_min; a trailing 0 adds the step to sigma = 0, the denoised mean
        (:mod:`~scorehamiltonian.sampling.solvers`: the solvers' conventions and NFE).
        """
        from .solvers import Levels

        return Levels.of(self, process, final).sigma.copy()

    def to_k_diffusion(self, process: ForwardProcess, final: str = "t_min", dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> Any:
        """k-diffusion's ``sigmas`` tensor and the scales in and out of its variable
        (:func:`~scorehamiltonian.sampling.exports.to_k_diffusion`)."""
        from .exports import to_k_diffusion

        return to_k_diffusion(self, process, final, dtype, device)

    def to_diffusers(self, process: ForwardProcess, scheduler: Any, final: str = "t_min") -> Any:
        """A copy of the diffusers ``scheduler`` set to run this schedule: sigmas, training indices,
        final step and solver options handled (:func:`~scorehamiltonian.sampling.exports.to_diffusers`)."""
        from .exports import to_diffusers

        return to_diffusers(self, process, scheduler, final)

    def to_torchdiffeq(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
        """The times as an increasing tensor (t_min .. t_max), the ``t`` of ``torchdiffeq.odeint``.

        Sampling integrates from t_max down to t_min: pass ``.flip(0)`` (odeint accepts a
        decreasing grid) and read the last state.
        """
        return torch.as_tensor(self.times[::-1].copy(), dtype=dtype, device=device)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the content of :meth:`save`)."""
        return {"format": SCHEDULE_FORMAT, "name": self.name, "times": self.times.tolist(),
                "langevin_time": self.langevin_time.tolist()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the schedule as JSON (floats round-trip exactly), atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        """Read a file written by :meth:`save`; :class:`CheckpointError` if it is missing,
        unreadable, of another format or holds an invalid schedule."""
        data = read_json(path)
        if data.get("format") != SCHEDULE_FORMAT:
            raise CheckpointError(f"{os.fspath(path)!r} is not a {SCHEDULE_FORMAT!r} file "
                                  f"(format {data.get('format')!r})")
        try:
            return cls(data["times"], data["langevin_time"], data.get("name", "custom"))
        except (KeyError, ScheduleError) as err:
            raise CheckpointError(f"{os.fspath(path)!r} does not hold a valid schedule: {err!r}") from err

    def plot(self, ax: Any = None) -> Any:
        """Plot the levels (markers at each t_k, log t axis) and the Langevin time per level (bars).

        Without ``ax``: a new figure (no pyplot state) with one axis; with ``ax``: on it, the
        Langevin time on ``ax.twinx()``. Returns the figure.
        """
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(7.0, 3.5), layout="constrained")
            ax = fig.subplots()
        fig = ax.figure
        ax.plot(self.times, np.arange(self.times.size), "o-", ms=3, color="C0", label=self.name)
        ax.set_xscale("log")
        ax.set_xlabel("diffusion time $t$")
        ax.set_ylabel("level $k$", color="C0")
        if self.budget > 0:
            right = ax.twinx()
            right.vlines(self.times[1:], 0.0, self.langevin_time, color="C1", lw=2)
            right.set_ylabel("Langevin time $u_k$", color="C1")
        ax.set_title(f"{self.name}: N = {self.n_levels}, U = {self.budget:.3g}")
        return fig


def as_schedule(obj: Any, process: ForwardProcess | None = None, langevin_time: Any = None,
                name: str = "custom") -> Schedule:
    """A :class:`Schedule` from a Schedule or a 1-D array of times.

    A Schedule is returned as is (``langevin_time`` must then be None). An array of times
    must be strictly monotone in either direction and is returned decreasing; ``langevin_time``
    (N entries, default zeros) belongs to the levels of the DECREASING order, times[1:].
    With ``process``, every time is checked to lie in its range (:class:`TimeRangeError`).
    Anything else raises :class:`ScheduleError`.
    """
    if isinstance(obj, Schedule):
        if langevin_time is not None:
            raise ScheduleError("langevin_time cannot be given with a Schedule; build a new Schedule")
        schedule = obj
    else:
        times = _float_array(obj, "times")
        if times.size >= 2 and times[-1] > times[0]:
            times = times[::-1]
        if langevin_time is None:
            langevin_time = np.zeros(max(times.size - 1, 0))
        schedule = Schedule(times, langevin_time, name)
    return schedule if process is None else schedule.check_range(process)


# --------------------------------------------------------------------------- standard schedules

#: Names accepted by :func:`standard_schedule`: the step rules, then the naive adiabatic rules.
STANDARD_SCHEDULES = ("uniform", "log-uniform", "cosine", "edm", "log-snr", "thermodynamic",
                      "adiabatic-A/gap", "adiabatic-A/sqrt-gap", "langevin-1/gap")
#: The rules that need the adiabatic speed A(t); those that need the gap lambda_1(t).
_NEEDS_SPEED = ("thermodynamic", "adiabatic-A/gap", "adiabatic-A/sqrt-gap")
_NEEDS_GAP = ("adiabatic-A/gap", "adiabatic-A/sqrt-gap", "langevin-1/gap")
#: Log-spaced nodes of the quadrature of int F dt (F interpolated log-log between profile times).
_QUADRATURE_NODES = 4001


@dataclass(frozen=True, eq=False)
class PathProfile:
    """The gap lambda_1(t) (1 / x^2) and the adiabatic speed A(t) (1 / t) at sorted times t.

    What the spectral rules of :func:`standard_schedule` read: ``times``, ``gap``, ``speed``
    (NaN where not computed); any object with those three arrays works there, e.g. a
    :class:`~scorehamiltonian.spectral.profiles.GapProfile`. ``gap_error`` and ``speed_stderr`` are
    the estimators' own errors (:func:`spectral_gap`'s estimate, A's standard error).
    """

    times: np.ndarray
    gap: np.ndarray
    speed: np.ndarray
    gap_error: np.ndarray
    speed_stderr: np.ndarray


def path_profile(score: Any, times: Any, *, gap: bool = True, speed: bool = True, gap_rtol: float = 1e-4,
                 n_samples: int = 20000, seed: int = 0) -> PathProfile:
    """lambda_1(t) (:func:`spectral_gap`, relative accuracy ``gap_rtol``) and A(t)
    (:func:`adiabatic_speed`) at ``times`` (ascending), each only if asked for (NaN otherwise).

    A(t) is estimated with common random numbers: the same ``seed`` at every t, so the
    draws of p_t move smoothly with t (for an exact mixture x_t = alpha_t mu_c + chol_t z
    with the same component c and z at every t) and the Monte Carlo error of A is a smooth,
    nearly constant relative factor rather than independent noise between times: it
    changes the normalisation of int A dt, not where the equal increments fall.
    ``gap_error`` / ``speed_stderr`` are the estimators' own errors.
    """
    score = as_score(score)
    t = np.sort(np.asarray(times, dtype=np.float64))
    nan = np.full(t.size, np.nan)
    lam, lam_err, a, a_err = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    for i, ti in enumerate(t):
        if gap:
            result = spectral_gap(score, float(ti), rtol=gap_rtol)
            lam[i], lam_err[i] = result.value, result.error
        if speed:
            result = adiabatic_speed(score, float(ti), n_samples=n_samples,
                                     generator=torch.Generator().manual_seed(int(seed)))
            a[i], a_err[i] = result.value, result.stderr
    return PathProfile(t, lam, a, lam_err, a_err)


def _check_standard_args(name: str, n_levels: int, t_max: float, t_min: float, process: ForwardProcess,
                         budget: float) -> None:
    if name not in STANDARD_SCHEDULES:
        raise ScheduleError(f"unknown schedule {name!r}; choose one of {list(STANDARD_SCHEDULES)}")
    if int(n_levels) != n_levels or n_levels < 1:
        raise ScheduleError(f"n_levels must be an integer >= 1; got {n_levels!r}")
    if not (math.isfinite(budget) and budget >= 0):
        raise ScheduleError(f"budget must be a finite number >= 0; got {budget!r}")
    process.time(torch.tensor([t_max, t_min], dtype=torch.float64))
    if not t_max > t_min:
        raise ScheduleError(f"t_max ({t_max!r}) must exceed t_min ({t_min!r})")
    if t_min <= 0 and name not in ("uniform", "cosine", "edm"):
        raise ScheduleError(f"schedule {name!r} is spaced in log t or log-SNR and needs t_min > 0; got {t_min!r}")


def _uniform_in(u_max: float, u_min: float, n_levels: int) -> np.ndarray:
    """n_levels + 1 values from u_max to u_min in equal steps, the end points set exactly
    (u_max + (u_min - u_max) can round past u_min: to -8.9e-16 for u_min = 0, whose
    noise level sigma^(1/rho) then has no logarithm)."""
    values = u_max + (u_min - u_max) * np.arange(n_levels + 1) / n_levels
    values[0], values[-1] = u_max, u_min
    return values


def _noise_ratio(process: ForwardProcess, t: float) -> float:
    """sigma_t / alpha_t, the k-diffusion / EDM noise level at t."""
    return float(process.sigma(t) / process.alpha(t))


def _from_noise_ratio(process: ForwardProcess, ratio: np.ndarray) -> np.ndarray:
    """The times whose sigma_t / alpha_t equals ``ratio`` (log_snr = -2 log ratio)."""
    with np.errstate(divide="ignore"):
        lam = -2.0 * np.log(ratio)
    return process.log_snr_to_t(torch.tensor(lam)).numpy()


def _step_rule_times(name: str, n_levels: int, t_max: float, t_min: float, process: ForwardProcess,
                     rho: float) -> np.ndarray:
    """Times of the rules that need only the process (module docstring of standard_schedule)."""
    if name == "uniform":
        return _uniform_in(t_max, t_min, n_levels)
    if name in ("log-uniform", "langevin-1/gap"):
        return np.exp(_uniform_in(math.log(t_max), math.log(t_min), n_levels))
    if name == "cosine":
        theta = _uniform_in(math.atan(_noise_ratio(process, t_max)), math.atan(_noise_ratio(process, t_min)), n_levels)
        return _from_noise_ratio(process, np.tan(theta))
    if name == "edm":
        root = _uniform_in(_noise_ratio(process, t_max) ** (1 / rho), _noise_ratio(process, t_min) ** (1 / rho),
                           n_levels)
        return _from_noise_ratio(process, root**rho)
    lam = process.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64)).numpy()
    return process.log_snr_to_t(torch.tensor(_uniform_in(lam[0], lam[1], n_levels))).numpy()


def _interpolate_log(profile: Any, field: str, t: np.ndarray) -> np.ndarray:
    """exp of the linear interpolation of log(field) in log t (profile times must cover t)."""
    times = np.asarray(profile.times, dtype=np.float64)
    values = np.asarray(getattr(profile, field), dtype=np.float64)
    good = np.isfinite(values) & (values > 0) & np.isfinite(times) & (times > 0)
    if good.sum() < 2:
        raise ScheduleError(f"the profile needs at least 2 positive finite values of {field}; got {int(good.sum())}")
    times, values = times[good], values[good]
    order = np.argsort(times)
    times, values = times[order], values[order]
    lo, hi = float(t.min()), float(t.max())
    if times[0] > lo * (1 + 1e-12) or times[-1] < hi * (1 - 1e-12):
        raise TimeRangeError(f"the profile's {field} covers t in [{times[0]:.6g}, {times[-1]:.6g}]; the schedule "
                             f"needs [{lo:.6g}, {hi:.6g}]: extend the profile's times")
    return np.exp(np.interp(np.log(t), np.log(times), np.log(values)))


def _equal_increment_times(density: np.ndarray, t: np.ndarray, n_levels: int) -> np.ndarray:
    """Times where C(t) = int_t^{t_max} F dt reaches k / N of C(t_min), k = 0..N (t ascending in, descending out).

    The trapezoid rule in log t (F dt = F t dlog t) on the nodes ``t``; C is inverted by
    monotone linear interpolation, and the end points are exact.
    """
    integrand = density * t
    steps = 0.5 * (integrand[1:] + integrand[:-1]) * np.diff(np.log(t))
    from_top = np.concatenate([[0.0], np.cumsum(steps[::-1])])
    targets = from_top[-1] * np.arange(n_levels + 1) / n_levels
    times = np.interp(targets, from_top, t[::-1])
    times[0], times[-1] = t[-1], t[0]
    return times


def _spectral_density(name: str, profile: Any, t: np.ndarray) -> np.ndarray:
    speed = _interpolate_log(profile, "speed", t)
    if name == "thermodynamic":
        return speed
    gap = _interpolate_log(profile, "gap", t)
    return speed / gap if name == "adiabatic-A/gap" else speed / np.sqrt(gap)


def _langevin_split(name: str, times: np.ndarray, budget: float, profile: Any) -> np.ndarray:
    """Uniform U / N per level, or U split in proportion to 1 / lambda_1(t_k) for the adiabatic rules."""
    if name not in _NEEDS_GAP or budget == 0:
        return np.full(times.size - 1, budget / (times.size - 1))
    weights = 1.0 / _interpolate_log(profile, "gap", times[1:])
    return budget * weights / weights.sum()


def standard_schedule(name: str, n_levels: int, t_max: float, t_min: float, process: ForwardProcess,
                      budget: float = 0.0, *, score: Any = None, profile: Any = None,
                      rho: float = 7.0, n_profile: int = 33, gap_rtol: float = 1e-4, n_samples: int = 20000,
                      seed: int = 0) -> Schedule:
    """A named baseline schedule: N + 1 times from t_max down to t_min and U = ``budget`` split over levels.

    Step rules (the process only):

    - "uniform": equal steps in t;  "log-uniform": equal steps in log t;
    - "cosine": equal steps in theta = arctan(sigma_t / alpha_t), the time variable of the
      cosine schedule (Nichol & Dhariwal 2021, alpha-bar = cos^2 theta, offset s = 0);
    - "edm": Karras et al. (2022) eq. 5, equal steps in sigma^(1/rho) with sigma the EDM noise
      level sigma_t / alpha_t and rho = 7;
    - "log-snr": equal steps in log_snr(t) = log(alpha_t^2 / sigma_t^2).

    Spectral rules (need the adiabatic speed A(t) and / or the gap lambda_1(t): from
    ``profile`` (a :class:`PathProfile`, e.g. a GapProfile, whose times cover [t_min, t_max])
    or computed from ``score`` by :func:`path_profile` at ``n_profile`` log-spaced times;
    between profile times log A and log lambda_1 are interpolated linearly in log t and
    int F dt is integrated by the trapezoid rule in log t on 4001 nodes):

    - "thermodynamic": equal increments of int A dt (of the Fisher-Rao length 2 int A dt);
    - "adiabatic-A/gap", "adiabatic-A/sqrt-gap": equal increments of int A / lambda_1 dt,
      int A / sqrt(lambda_1) dt (the naive adiabatic rules of THEORY section 3);
    - "langevin-1/gap": log-uniform levels.

    Langevin time (the split of U, units of Langevin time): uniform U / N at each level for
    the step rules and "thermodynamic"; proportional to 1 / lambda_1(t_k) for the three
    naive adiabatic rules (the relaxation time of level k).

    Raises :class:`ScheduleError` for an unknown name, n_levels < 1, t_max <= t_min, a
    negative budget or t_min <= 0 for the rules in log t / log-SNR / spectral, and
    :class:`TimeRangeError` for times outside the process's range or a profile that does
    not cover them.
    """
    t_max, t_min, budget = float(t_max), float(t_min), float(budget)
    _check_standard_args(name, n_levels, t_max, t_min, process, budget)
    n_levels = int(n_levels)
    need_speed = name in _NEEDS_SPEED
    need_gap = name in _NEEDS_GAP and (budget > 0 or need_speed)
    if profile is None and (need_speed or need_gap):
        if score is None:
            raise ScheduleError(f"schedule {name!r} needs the gap / adiabatic speed: pass score= or profile=")
        profile = path_profile(score, np.geomspace(t_min, t_max, int(n_profile)), speed=need_speed, gap=need_gap,
                               gap_rtol=gap_rtol, n_samples=n_samples, seed=seed)
    if name in _NEEDS_SPEED:
        nodes = np.geomspace(t_min, t_max, _QUADRATURE_NODES)
        times = _equal_increment_times(_spectral_density(name, profile, nodes), nodes, n_levels)
    else:
        times = _step_rule_times(name, n_levels, t_max, t_min, process, float(rho))
        times[0], times[-1] = t_max, t_min
    return Schedule(times, _langevin_split(name, times, budget, profile), name)
