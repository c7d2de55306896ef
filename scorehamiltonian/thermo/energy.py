"""Energies read out of a score: the probability-flow ODE and line integrals (THEORY section 5).

Energies are in units of k_B T: E(x) = -log p_0(x) (nats).

Probability-flow readout (:func:`energy`). The probability-flow ODE of the forward process
dX = f X dt + g dW is dx/dt = F(x, t) = f(t) x - (g(t)^2 / 2) s_t(x); it transports p_t, so the
continuity equation d/dt p_t = -div(p_t F) gives, along a trajectory x_t,

    d/dt log p_t(x_t) = -div F(x_t, t),   div F = d f(t) - (g(t)^2 / 2) div s_t(x_t),

and, integrating from x_0 = x at t_min to x_T at T = t_max,

    log p_0(x) = log p_T(x_T) + int_{t_min}^{T} div F(x_t, t) dt.

The state (x, l) with dl/dt = div F is integrated on the times of a schedule (Euler, Heun, RK4)
or adaptively (torchdiffeq's dopri5), and log p_T is read from the reference law
N(0, sigma_T^2 I) of the process (the law of X_T for data at the origin).

Error of the result (``EnergyResult.error``, absolute, nats), the sum of three parts:
- ``integrator_error``: step doubling. The same ODE is integrated on every other time of the
  schedule (twice the steps of the same spacing function) and on every fourth. With
  d1 = |E_h - E_2h| and d2 = |E_2h - E_4h|, the error is max(d1, d2 / 2^p) (the d2 term covers
  points where the leading error term changes sign and d1 alone vanishes). Asymptotically d1 is
  (2^p - 1) times the error of E_h (p the order: 1 Euler, 2 Heun, 4 RK4), so the estimate
  over-estimates by that factor (Euler's is doubled: a factor 2). Before that regime it can
  under-estimate: the point is flagged ``converged = False`` (with a warning) unless the
  observed ratio d2 / d1 (2^p asymptotically) is at least 2^(p-1). Step doubling assumes the
  schedule's times are a smooth function of the step index, so that every other time is the
  same schedule with half the steps (with an odd number of steps, the smallest step at an
  even position stays single). A grid with an abrupt change of spacing (say, one large step
  appended to reach t_min) defeats it: paired with a small neighbour, the large step's error
  barely changes between the grids. So the pairs of the first coarsening are checked: where
  the ratio r = h_small / h_large is below the one at which the estimate still covers the
  pair's local error c (h_1^(p+1) + h_2^(p+1)) for a common c, i.e.
  (1 + r)^(p+1) - 1 - r^(p+1) < 1 + r^(p+1) (r < 0.149 for RK4, 0.268 for Heun and for Euler,
  whose estimate is doubled), or where a single step exceeds both neighbours, that step is
  halved on a fourth grid E_s and (2^p / (2^p - 1)) |E_h - E_s| (Richardson for those steps)
  is added to the error. Steps below 1e-3 of the longest are exempt (the first steps of an
  EDM grid from t = 0, 1e-26 to 1e-5 long).
  For dopri5 the ODE is solved again with ten times looser tolerances; |E - E_loose|
  over-estimates the error of E by about 10^{5/6} - 1 (global error proportional to
  tol^{p/(p+1)}, p = 5), assuming the solver's tolerance proportionality (not checked).
- ``reference_error``: p_T differs from N(0, sigma_T^2 I) by r = log p_T - log q; with
  grad r = s_T + x / sigma_T^2 and Laplacian r = div s_T + d / sigma_T^2 at x_T, the first order
  of r for data of mean m and covariance C (E = alpha_T^2 C / sigma_T^2 small) is
  alpha_T m . x / sigma_T^2 + x^T E x / (2 sigma_T^2) - tr E / 2 - alpha_T^2 |m|^2 / (2 sigma_T^2),
  bounded term by term by |x . grad r| + (sigma_T^2 / 2)(|Laplacian r| + |grad r|^2); twice
  that is reported (the first-order bound is tight, measured within 0.1 %, and the next order
  can exceed it).
- ``divergence_error``: with divergence="hutchinson", div s is v^T J v for m Rademacher probes
  v drawn once per call and kept along the trajectory (the ODE stays deterministic, as dopri5
  needs); each probe gives its own integral l_j and the standard error is std_j(l_j) / sqrt(m).
  It is one standard error, not a bound.

- ``start_error`` (only when the integration starts at t_start > t_min, for networks that are
  undefined at sigma = 0, e.g. epsilon-predictions under OU): the value is then
  -log p_{t_start}(x), and |log p_0(x) - log p_{t_start}(x)| is estimated to first order by
  (t_start - t_min) |d/dt log p_t(x)| at t_start, with d/dt log p_t = -div F - F . s
  = -d f + (g^2 / 2)(div s + |s|^2) - f x . s (continuity equation along the fixed x); twice
  that is reported, as for the reference error.

The cycle closure of :func:`~.line_energy.line_energy` is reported beside the energies of any score
that has no exact log-density (not a :class:`DensityScore`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import torch

from ..common.errors import ScheduleError, ScoreHamiltonianError
from ..common.executors import TaskFailure, executor_from, map_tasks
from ..common.seeds import draw_seed
from ..common.validation import check_points
from ..sampling.schedules import Schedule, as_schedule, standard_schedule
from ..score import derivatives
from ..score.interface import DensityScore, Score, as_score
from ..score.processes import ForwardProcess
from ..spectral.solution import ConvergenceWarning
from . import integrators
from .line_energy import line_energy

__all__ = ["DEFAULT_STEPS", "EnergyResult", "default_schedule", "energy", "start_time"]

EnergyMethod = Literal["rk4", "heun", "euler", "dopri5"]
DivergenceChoice = Literal["exact", "hutchinson"]
#: Steps of the default schedule (EDM rho = 7 between the process's t_max and t_min).
DEFAULT_STEPS = 128
#: Relative tolerance, in units of the process's time range, for a schedule's end points.
_SPAN_RTOL = 1e-9


@dataclass(frozen=True)
class EnergyResult:
    """E(x) = -log p_0(x) (nats, k_B T units) from the probability-flow ODE, with its error.

    value : (...,) the energies, one per point (row) of x.
    error : (...,) integrator_error + reference_error + divergence_error + start_error (see
        module docstring).
    integrator_error, reference_error, divergence_error, start_error : (...,) the parts
        (start_error is zero when the integration starts at the process's t_min).
    converged : (...,) bool: the step-doubling sequence E_h, E_2h, E_4h is asymptotic at the
        point (observed_ratio >= 2^(p-1); always True for dopri5). A
        :class:`ConvergenceWarning` is issued when any point is not.
    observed_ratio : (...,) |E_2h - E_4h| / |E_h - E_2h|, 2^p in the asymptotic regime (NaN for dopri5).
    nfe : score evaluations per point, the error estimate included (each with its divergence).
    n_vjp : vector-Jacobian products per point (autograd or Hutchinson divergences).
    method, divergence : the integrator and the divergence estimator used.
    times : the increasing time grid of the fixed-step integrators ([t_start, T] for dopri5).
    x_T : (..., d) the end points of the trajectories at T.
    closure : (...,) the cycle closure of :func:`line_energy` between each point and the batch
        mean (the origin for a single point) at t_min, for scores that are not a
        :class:`DensityScore`; None for scores with an exact log-density.
    failures : (first row, stop row, "Type: message") of each batch that failed (batched
        runs); its rows are NaN with an infinite error and not converged.
    """

    value: torch.Tensor
    error: torch.Tensor
    integrator_error: torch.Tensor
    reference_error: torch.Tensor
    divergence_error: torch.Tensor
    start_error: torch.Tensor
    converged: torch.Tensor
    observed_ratio: torch.Tensor
    nfe: int
    n_vjp: int
    method: str
    divergence: str
    times: np.ndarray
    x_T: torch.Tensor
    closure: torch.Tensor | None
    failures: tuple[tuple[int, int, str], ...] = ()


class _Field:
    """The augmented probability-flow field (x, l) -> (F(x, t), div F per probe), counting calls."""

    def __init__(self, score: Score, process: ForwardProcess, probes: torch.Tensor | None) -> None:
        self.score, self.process, self.probes = score, process, probes
        self.exact = "exact" if isinstance(score, DensityScore) else "autograd"
        self.nfe = 0
        self.n_vjp = 0

    def score_and_divergence(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s_t(x) (n, d) and div s_t(x) per probe (n, m); m = 1 for the exact divergence."""
        self.nfe += 1
        if self.probes is None:
            res = derivatives.divergence(self.score, x, t, method=self.exact)
            self.n_vjp += res.n_vjp
            return res.score, res.value[:, None]
        x_leaf, s = derivatives.score_with_graph(self.score, x, t)
        div = torch.stack([(derivatives.vjp(s, x_leaf, v) * v).sum(-1) for v in self.probes], -1)
        self.n_vjp += len(self.probes)
        return s.detach(), div.detach()

    def __call__(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = state[0]
        t = t.to(dtype=x.dtype, device=x.device).clamp(self.process.t_min, self.process.t_max)
        s, div = self.score_and_divergence(t, x)
        f, half_g2 = self.process.f(t), 0.5 * self.process.g2(t)
        return f * x - half_g2 * s, x.shape[-1] * f - half_g2 * div


def _reference_error(field: _Field, x_T: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """The estimate of |log p_T(x_T) - log q(x_T)| of the module docstring (one more evaluation)."""
    var = field.process.sigma(T) ** 2
    s, div = field.score_and_divergence(T, x_T)
    grad_r = s + x_T / var
    lap_r = div.mean(-1) + x_T.shape[-1] / var
    first_order = (x_T * grad_r).sum(-1).abs() + 0.5 * var * (lap_r.abs() + (grad_r**2).sum(-1))
    return 2.0 * first_order


def _start_error(field: _Field, x: torch.Tensor, t_start: torch.Tensor) -> torch.Tensor:
    """Twice (t_start - t_min) |d/dt log p_t(x)| at t_start (module docstring; one more evaluation)."""
    process = field.process
    s, div = field.score_and_divergence(t_start, x)
    f, half_g2 = process.f(t_start), 0.5 * process.g2(t_start)
    rate = -x.shape[-1] * f + half_g2 * (div.mean(-1) + (s**2).sum(-1)) - f * (x * s).sum(-1)
    return 2.0 * (t_start - process.t_min) * rate.abs()


def default_schedule(process: ForwardProcess, n_steps: int = DEFAULT_STEPS, t_start: float | None = None) -> Schedule:
    """The default time grid of :func:`energy`: EDM (rho = 7) from the process's t_max down to
    ``t_start`` (default the process's t_min)."""
    return standard_schedule("edm", n_steps, process.t_max, process.t_min if t_start is None else t_start, process)


def start_time(score: Any, process: ForwardProcess | None = None) -> float:
    """Where :func:`energy` starts by default: the process's t_min, or, for an epsilon or x0
    network (undefined where sigma_t = 0; for an ensemble, any such member) when
    sigma_{t_min} = 0, the smallest training time (``score.t_trained``, else
    ``model.training_config["t_min"]`` of :func:`train_dsm`); ValueError for such a network
    without that record (pass ``t_start`` to :func:`energy`)."""
    score = as_score(score)
    process = score.process if process is None else process
    kinds = {getattr(m, "kind", "score") for m in getattr(score, "members", [score])}
    if kinds == {"score"} or float(process.sigma(torch.tensor(process.t_min))) > 0:
        return float(process.t_min)
    t_trained = score.t_trained
    if t_trained is None:
        t_trained = (getattr(getattr(score, "model", None), "training_config", None) or {}).get("t_min")
    if t_trained is None:
        raise ValueError(
            f"this {'/'.join(sorted(kinds - {'score'}))}-network divides by sigma_t, which is 0 at t_min = "
            f"{process.t_min} of {process!r}: pass t_start > 0 (e.g. the smallest training time); the energy "
            "is then -log p_{t_start}(x), with its distance to -log p_0(x) in the error"
        )
    return float(t_trained)


def _check_start(score: Score, process: ForwardProcess, t_start: float | None) -> float:
    """t_start (default :func:`start_time`), checked to lie in [t_min, t_max)."""
    t_start = start_time(score, process) if t_start is None else float(t_start)
    if not process.t_min <= t_start < process.t_max:
        raise ValueError(f"t_start must lie in [{process.t_min}, {process.t_max}) for {process!r}; got {t_start}")
    return t_start


def _span_check(schedule: Schedule, process: ForwardProcess, t_start: float) -> Schedule:
    """The schedule, range-checked, if it runs from the process's t_max down to t_start."""
    schedule.check_range(process)
    tol = _SPAN_RTOL * (process.t_max - process.t_min)
    for name, have, want in (("t_min", schedule.t_min, t_start), ("t_max", schedule.t_max, process.t_max)):
        if abs(have - want) > tol:
            raise ScheduleError(
                f"the probability-flow energy integrates over the whole time range [{t_start}, "
                f"{process.t_max}] of {process!r}; the schedule's {name} is {have!r}, not {want!r}"
            )
    return schedule


def _resolve_schedule(schedule: Any, process: ForwardProcess, method: str, t_start: float, n_steps: int) -> Schedule:
    schedule = default_schedule(process, n_steps, t_start) if schedule is None else as_schedule(schedule)
    schedule = _span_check(schedule, process, t_start)
    if method != "dopri5" and schedule.n_levels < 2:
        raise ScheduleError(
            f"a fixed-step energy needs at least 2 steps (step doubling estimates its error); "
            f"the schedule has {schedule.n_levels}"
        )
    return schedule


def _probes(divergence: str, n_probes: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    if divergence == "exact":
        return None
    if divergence != "hutchinson":
        raise ValueError(f"divergence must be 'exact' or 'hutchinson'; got {divergence!r}")
    if int(n_probes) < 2:
        raise ValueError(f"n_probes must be at least 2 for a standard error; got {n_probes}")
    return derivatives.rademacher((int(n_probes), *x.shape), x, generator)


def _log_reference(process: ForwardProcess, x_T: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """log q(x_T) for the reference law q = N(0, sigma_T^2 I)."""
    var = process.sigma(T) ** 2
    return -0.5 * ((x_T**2).sum(-1) / var + x_T.shape[-1] * torch.log(2 * math.pi * var))


def energy(
    score: Any,
    process: ForwardProcess | None,
    x: Any,
    schedule: Any = None,
    *,
    method: EnergyMethod = "rk4",
    divergence: DivergenceChoice = "exact",
    n_probes: int = 16,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    generator: torch.Generator | None = None,
    closure: bool | None = None,
    t_start: float | None = None,
    executor: Any = None,
    n_workers: int = 2,
    batch_size: int | None = None,
    n_steps: int = DEFAULT_STEPS,
) -> EnergyResult:
    """E(x) = -log p_0(x) in k_B T by the probability-flow ODE (formula in the module docstring).

    score : a :class:`Score` or a callable score (wrapped by :func:`as_score`).
    process : the forward process (None: the score's own); it must equal the score's.
    x : (..., d) points; the result has shape (...,), in x's dtype and on x's device.
    schedule : a :class:`Schedule` or an array of times, monotone either way, running from the
        process's t_max down to t_start (a grid that misses either end raises
        :class:`ScheduleError`). Default: :func:`default_schedule` (EDM, rho = 7) with
        ``n_steps`` steps (128) from t_max down to t_start.
        dopri5 uses only its end points.
    method : "rk4" (default), "heun", "euler" on the schedule's times, or "dopri5" (adaptive,
        torchdiffeq) with tolerances ``rtol``, ``atol``.
    divergence : "exact" (closed form for a DensityScore, else autograd: d vector-Jacobian
        products per evaluation) or "hutchinson" (``n_probes`` Rademacher probes drawn once with
        ``generator``, a seeded torch.Generator on x's device).
    closure : report the line-integral cycle closure (default: for scores that are not exact).
    t_start : where the integration starts (default :func:`start_time`: the process's t_min,
        or a network's smallest training time where it is undefined at t_min); above t_min
        the value is -log p_{t_start}(x) and ``start_error`` bounds, to first order, its
        distance to -log p_0(x) (module docstring).
    executor, n_workers, batch_size : batches of ``batch_size`` rows (default 256 when an
        executor is given) as tasks on an executor (None: serially, here; "dask": a
        LocalCluster of ``n_workers`` processes; a dask Client or any concurrent.futures
        Executor; :func:`~scorehamiltonian.common.executors.executor_from`). Every row's energy is
        the same as in a serial run with the same ``batch_size``; the closure's anchor is the
        mean of each batch; Hutchinson probes come from a seed drawn once from ``generator``
        (batch b: seed + b). A failed batch gives NaN rows and an entry in ``failures``.
    """
    score = as_score(score)
    process = score.process if process is None else process
    if process != score.process:
        raise ValueError(f"process {process!r} differs from the score's process {score.process!r}")
    x = check_points(x, score.dim)
    batch_shape, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
    t_start = _check_start(score, process, t_start)
    schedule = _resolve_schedule(schedule, process, method, t_start, int(n_steps))
    want_closure = not isinstance(score, DensityScore) if closure is None else closure
    task = _Task(score, process, schedule, method, divergence, int(n_probes), rtol, atol, want_closure, t_start)
    if executor is None and batch_size is None:
        parts, failures = [task.run(flat, generator)], []
    else:
        parts, failures = _batched(task, flat, executor, n_workers, batch_size or _DEFAULT_BATCH, generator)
    _warn_unconverged(torch.cat([p.converged for p in parts]), schedule)
    return _assemble(parts, failures, batch_shape, x.shape)


#: Rows per task of a batched energy (``executor`` given without ``batch_size``).
_DEFAULT_BATCH = 256


@dataclass(frozen=True)
class _Task:
    """Everything :func:`energy` computes for a batch of rows but the rows (picklable)."""

    score: Score
    process: ForwardProcess
    schedule: Schedule
    method: str
    divergence: str
    n_probes: int
    rtol: float
    atol: float
    closure: bool
    t_start: float

    def run(self, flat: torch.Tensor, generator: torch.Generator | None) -> EnergyResult:
        """The energies of the rows ``flat`` (n, d) (module docstring), as flat tensors."""
        process = self.process
        times = self.schedule.to_torchdiffeq(dtype=flat.dtype, device=flat.device)
        probes = _probes(self.divergence, self.n_probes, flat, generator)
        m = 1 if probes is None else probes.shape[0]
        field = _Field(self.score, process, probes)
        solutions = integrators.integrate(field, flat, m, times, self.method, self.rtol, self.atol)
        x_T, ell = solutions[0]
        T = times[-1]
        values = [-(_log_reference(process, xs, T) + ls.mean(-1)) for xs, ls in solutions]
        integrator_error, ratio, converged = integrators.integrator_error(values, self.method)
        reference_error = _reference_error(field, x_T, T)
        divergence_error = ell.std(-1, correction=1) / math.sqrt(m) if m > 1 else torch.zeros_like(values[0])
        start_error = (_start_error(field, flat, times[0]) if self.t_start > process.t_min
                       else torch.zeros_like(values[0]))
        audit = _closure(self.score, flat, float(times[0])) if self.closure else None
        total = integrator_error + reference_error + divergence_error + start_error
        return EnergyResult(values[0], total, integrator_error, reference_error, divergence_error, start_error,
                            converged, ratio, field.nfe, field.n_vjp, self.method, self.divergence,
                            times.cpu().numpy(), x_T, audit)

    def __call__(self, job: tuple[torch.Tensor, int | None]) -> EnergyResult:
        rows, seed = job
        return self.run(rows, None if seed is None else torch.Generator(device=rows.device).manual_seed(seed))


def _batched(task: _Task, flat: torch.Tensor, executor: Any, n_workers: int, batch_size: int,
             generator: torch.Generator | None) -> tuple[list[EnergyResult], list[tuple[int, int, str]]]:
    """The batches of ``batch_size`` rows as tasks on the executor (or serially), in order.
    Hutchinson probes: batch b draws from a generator seeded with seed + b, seed drawn once
    from ``generator``. A batch that fails gives NaN energies (infinite error, not converged)
    and a (first row, stop row, message) failure; all of them failing raises the first."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number of rows; got {batch_size!r}")
    seed = draw_seed(generator) if task.divergence == "hutchinson" else None
    starts = range(0, flat.shape[0], int(batch_size))
    jobs = [(flat[a : a + int(batch_size)], None if seed is None else seed + b) for b, a in enumerate(starts)]
    parts: list[EnergyResult] = []
    failures: list[tuple[int, int, str]] = []
    with executor_from(executor, n_workers) as pool:
        for a, (job, outcome) in zip(starts, map_tasks(task, jobs, pool)):
            if isinstance(outcome, TaskFailure):
                failures.append((a, a + job[0].shape[0], f"{outcome.error}: {outcome.message}"))
                outcome = _failed_part(job[0], task)
            parts.append(outcome)
    if failures and len(failures) == len(jobs):
        raise ScoreHamiltonianError(f"energy: every batch failed; the first, rows {failures[0][0]}.."
                                    f"{failures[0][1] - 1}: {failures[0][2]}")
    if failures:
        warnings.warn(f"energy: {len(failures)} of {len(jobs)} batches failed, their rows are NaN "
                      f"(see .failures); the first, rows {failures[0][0]}..{failures[0][1] - 1}: {failures[0][2]}",
                      RuntimeWarning, stacklevel=3)
    return parts, failures


def _failed_part(rows: torch.Tensor, task: _Task) -> EnergyResult:
    """NaN energies with an infinite (integrator) error, not converged, for a failed batch."""
    nan = torch.full(rows.shape[:1], math.nan, dtype=rows.dtype, device=rows.device)
    zero, inf = torch.zeros_like(nan), torch.full_like(nan, math.inf)
    return EnergyResult(nan, inf, inf, zero, zero, zero, torch.zeros_like(nan, dtype=torch.bool), nan, 0, 0,
                        task.method, task.divergence, task.schedule.to_torchdiffeq(dtype=rows.dtype).numpy(),
                        torch.full_like(rows, math.nan), nan if task.closure else None)


def _assemble(parts: list[EnergyResult], failures: list[tuple[int, int, str]], batch_shape: torch.Size,
              x_shape: torch.Size) -> EnergyResult:
    """One :class:`EnergyResult` from the batches' flat ones: the per-row tensors joined in
    input order and given the input's shape, the counts of a batch that ran, the failures."""
    def joined(name: str, shape: torch.Size) -> torch.Tensor | None:
        pieces = [getattr(p, name) for p in parts]
        return None if pieces[0] is None else torch.cat(pieces).reshape(shape)

    ran = next((p for p in parts if p.nfe), parts[0])
    rows = {f.name: joined(f.name, x_shape if f.name == "x_T" else batch_shape)
            for f in fields(EnergyResult) if isinstance(getattr(ran, f.name), torch.Tensor)}
    return replace(ran, **rows, failures=tuple(failures))


def _warn_unconverged(converged: torch.Tensor, schedule: Schedule) -> None:
    n_bad = int((~converged).sum())
    if n_bad:
        warnings.warn(
            f"energy: the step-doubling sequence is not asymptotic at {n_bad} of {converged.numel()} points "
            f"on {schedule!r}; their error estimates are unreliable: refine the schedule (more steps)",
            ConvergenceWarning, stacklevel=3,
        )


def _closure(score: Score, x: torch.Tensor, t: float) -> torch.Tensor:
    anchor = x.mean(0, keepdim=True) if x.shape[0] > 1 else torch.zeros_like(x)
    return line_energy(score, anchor.expand_as(x), x, t=t).closure
