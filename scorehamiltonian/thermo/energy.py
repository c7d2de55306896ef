"""Energies read out of a score: the probability-flow ODE and line integrals (THEORY section 5).

Energies are in units of k_B T: E(x) = -log p_0(x) (nats).

Probability-flow readout (:func:`energy`). The probability-flow ODE of the forward process
dX = f X dt + g dW is dx/dt = F(x, t) = f(t) x - (g(t)^2 / 2) s_t(x); it transports p_t, so the
continuity equation d/dt p_t = -div(p_t F) gives, along a trajectory x_t,

    d/dt log p_t(x_t) = -div F(x_t, t),   div F = d f(t) - (g(t)^2 / 2) div s_t(x_t),

and, integrating from x_0 = x at t_min to x_T at T = t_max,

    log p_0(x) = log p_T(x_T) + int_{t_min}^{T} div F(x_t, t) dt,

so l(t) + log p_t(x_t) is constant along the exact flow (what the refinement's local error
indicators measure the drift of, :func:`~.integrators.trajectory_differences`).

The state (x, l) with dl/dt = div F is integrated on the times of a schedule (Euler, Heun, RK4)
or adaptively (torchdiffeq's dopri5), and log p_T is read from the reference law
N(0, sigma_T^2 I) of the process (the law of X_T for data at the origin).

Conventions. p_0 is the law at the process's t_min: under VE, sigma_{t_min} = sigma_min > 0, so
the readout is -log p_{t_min}(x), the energy of the data smoothed by N(0, sigma_min^2 I) (the
law of X_0 + sigma_min Z), not of the data itself; the two differ by about
(sigma_min^2 / 2)(|s|^2 + div s) at x, which no refinement removes (choose a smaller
sigma_min, or read energies of p_0 from a process with sigma_{t_min} = 0). A user-supplied
``log_prior`` (log p_T) replaces the Gaussian reference law where the user has a better one;
its own error is then the user's (``reference_error`` is 0).

Accuracy on request (the default, :mod:`.refinement`). ``energy(..., atol, rtol)`` asks for
|E - (-log p_0)| <= atol + rtol |E| at every point. Each point starts on a 32-step EDM pilot
grid; the step-doubling error below decides whether its bar meets the request and, where it
does not, where the next grid needs its steps (the local errors that step doubling sees,
equidistributed) and how many it needs (the smallest count the error model allows). A point
is done when its bar is trusted and meets the request; one that needs more than
``max_steps`` steps keeps its last result, reported with ``reached`` False and a
:class:`ConvergenceWarning`, as is a point whose reference, Hutchinson or start error alone
exceeds the request (refinement cannot reduce those: its integrator is then refined to a
quarter of them, not of the request, :mod:`.refinement`). An explicit ``schedule`` or ``n_steps`` runs
that one grid instead (``reached`` still says whether it met the request).

Error of the result (``EnergyResult.error``, absolute, nats), the sum of four parts:
- ``integrator_error``: step doubling. The same ODE is integrated on every other time of the
  schedule (twice the steps of the same spacing function) and on every fourth. With
  d1 = |E_h - E_2h|, d2 = |E_2h - E_4h| and q = 2^p (p the order: 1 Euler, 2 Heun, 4 RK4),
  R = max(d1, d2 / q) / (r - 1) is the Richardson estimate of the error of E_h, r the observed
  ratio d2 / d1 kept within [(q + 1) / 2, q] (the d2 term covers points where the leading
  error term changes sign and d1 alone vanishes); the bar is
  SAFETY R, SAFETY = 3 (module :mod:`.integrators`: on the benchmark mixtures the true error
  was at most 1.3 R at 90 % of the asymptotic points). R holds once the sequence is
  asymptotic: where the observed ratio d2 / d1 (q asymptotically) is below q / 2 the bar is
  SAFETY max(d1, d2) instead, trusted where d2 / d1 >= 2 (the differences shrink at least
  as a first-order method's, so that what remains sums to at most d1) and flagged
  ``converged = False`` (with a warning) where they do not shrink. Step doubling assumes the
  schedule's times are a smooth function of the step index, so that every other time is the
  same schedule with half the steps (with an odd number of steps, the smallest step at an
  even position stays single). A grid with an abrupt change of spacing (say, one large step
  appended to reach t_min) defeats it: paired with a small neighbour, the large step's error
  barely changes between the grids. So the pairs of the first coarsening are checked: where
  the ratio r = h_small / h_large is below the one at which the bar still covers the pair's
  local error c (h_1^(p+1) + h_2^(p+1)) for a common c (0.44 for RK4, 0.27 for Heun, 0.17 for
  Euler), or where a single step exceeds both neighbours, that step is halved on a fourth
  grid E_s and (q / (q - 1)) |E_h - E_s| (Richardson for those steps) is added to R. Steps
  below 1e-3 of the longest are exempt (the first steps of an EDM grid from t = 0, 1e-26 to
  1e-5 long).
  For dopri5 the ODE is solved again with ten and a hundred times looser solver tolerances
  and the same rule applies with q = 10^(5/6) (global error proportional to tol^{p/(p+1)},
  p = 5): the observed ratio checks that proportionality instead of assuming it.
- ``reference_error``: p_T differs from N(0, sigma_T^2 I) by r = log p_T - log q; with
  grad r = s_T + x / sigma_T^2 and Laplacian r = div s_T + d / sigma_T^2 at x_T, the first order
  of r for data of mean m and covariance C (E = alpha_T^2 C / sigma_T^2 small) is
  alpha_T m . x / sigma_T^2 + x^T E x / (2 sigma_T^2) - tr E / 2 - alpha_T^2 |m|^2 / (2 sigma_T^2),
  bounded term by term by |x . grad r| + (sigma_T^2 / 2)(|Laplacian r| + |grad r|^2); twice
  that is reported (the first-order bound is tight, measured within 0.1 %, and the next order
  can exceed it). Zero with a user-supplied ``log_prior``.
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

Score evaluations (``nfe``, per point, each with its divergence): ``nfe_solve`` those of the
solve whose value is returned (stages x steps), ``nfe_estimate`` the rest (step doubling's
coarser grids, the reference and start error evaluations, and the earlier grids of the
refinement).

The cycle closure of :func:`~.line_energy.line_energy` is reported beside the energies of any score
that has no exact log-density (not a :class:`DensityScore`).

Model error (``EnergyResult.model_error``, nats; the rule of :mod:`.model_error`). 0 for an
exact or analytic score. For a :class:`~scorehamiltonian.score.ensemble.ScoreEnsemble` the
value is the energy of the members' mean score, and each member's energy E_k(x) is read on
that point's own final grid (the same schedule, the same Hutchinson probes, the same
reference law) with the grid's error-estimating companions, but no refinement of its own:
``model_error`` is std_k E_k(x) (ddof 1) plus ``model_numerical_error``, the largest over
the members of the numerical error of their own value on that grid (integrator, reference
law, Hutchinson: the parts of ``error`` but the start's, which is no error of a member's value
at t_start, the time every member is read at, but the distance from there to t_min, in the
mean's own ``error`` already; counted per member it made the Mueller-Brown model errors 0.04 -
2.3 nats of start bounds, and its ``model_unresolved`` advice of more steps futile). A
member stiffer than the mean (a network that is sharp where the mean is smooth) need not be
resolved by the mean's grid, and its energy, orders of magnitude off, would otherwise pass for
the members' disagreement. Where that part exceeds both the spread and the request, the point
is flagged ``model_unresolved`` (warned): its model error is then a bound dominated by
numerics (more steps resolve it; under refinement a finer fixed grid, since the refinement
stops at a quarter of the mean's irreducible error when that exceeds the request: on the
learned Mueller-Brown and many-well ensembles, read from t_start, that saves 26 - 31 % of
the mean's evaluations, and the energies' median total / true error is 8.1 and 5.8, their
coverage 80 % and 97 %). The bar is that of step doubling,
which an explicit integrator that is unstable on all three grids can understate (the digits
report in d = 64: a member's trajectory left to |x_T| = 2.7e4 with a bar of 5e7 nats on an
energy of 3.6e8): then the spread itself, not the flag, shows it. Cost, per point and member:
the evaluations of the fixed grid with its companions, or of dopri5 at its three tolerances
(``nfe``); under refinement the points' grids, padded with steps of length 0 to the longest,
with their step-doubling companions, 1.75 times the longest grid's evaluations for every
point; one more for the reference law's error at T (and one at t_start where the start error
is estimated); counted in ``nfe_model_per_point`` (member evaluations). A single learned
model: NaN, flagged ``model_unknown``, never converged (one warning).
``total_error`` = error + model_error (a bound plus one standard deviation of the members,
added as the gap's are); ``reached`` is total_error <= requested, and ``converged`` is
``trusted`` and ``reached``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
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
from . import integrators, refinement
from .line_energy import line_energy
from .model_error import (
    MODEL_SPREAD,
    MODEL_UNKNOWN,
    MODEL_UNRESOLVED,
    member_spread,
    source_kind,
    warn_model_unknown,
)

__all__ = ["DEFAULT_STEPS", "EnergyResult", "default_schedule", "energy", "start_time"]

EnergyMethod = Literal["rk4", "heun", "euler", "dopri5"]
DivergenceChoice = Literal["exact", "hutchinson"]
#: Steps of :func:`default_schedule` (EDM rho = 7 between the process's t_max and t_min).
DEFAULT_STEPS = 128
#: Default accuracy request of :func:`energy` (nats), met on the benchmark mixtures.
DEFAULT_ATOL = 1e-3
#: Default largest number of steps of a point's grid under refinement.
DEFAULT_MAX_STEPS = 8192
#: Relative tolerance, in units of the process's time range, for a schedule's end points.
_SPAN_RTOL = 1e-9


@dataclass(frozen=True)
class EnergyResult:
    """E(x) = -log p_0(x) (nats, k_B T units) from the probability-flow ODE, with its error.

    value : (...,) the energies, one per point (row) of x.
    error : (...,) integrator_error + reference_error + divergence_error + start_error (see
        module docstring): the numerical error.
    integrator_error, reference_error, divergence_error, start_error : (...,) the parts
        (start_error is zero when the integration starts at the process's t_min).
    model_error : (...,) the spread of an ensemble's members' energies plus
        ``model_numerical_error`` (module docstring, Model error); 0 for an exact score, NaN
        for a single learned model.
    model_numerical_error : (...,) the part of model_error that is the members' own
        numerical error on the grid (the largest member bar, start error excluded); 0 or NaN
        as model_error.
    converged : (...,) bool: ``trusted`` and ``reached`` (the whole interval, model included,
        is trusted and meets the request).
    trusted : (...,) bool: the numerical error bar can be trusted (the step-doubling
        differences are asymptotic, or shrink at least as a first-order method's; module
        docstring). A :class:`ConvergenceWarning` is issued when any point's cannot.
    observed_ratio : (...,) |E_2h - E_4h| / |E_h - E_2h| (2^p asymptotically; dopri5: between
        the tolerances tol, 10 tol, 100 tol, 10^(5/6) asymptotically).
    requested : (...,) atol + rtol |value|, the accuracy asked for.
    reached : (...,) bool: total_error = error + model_error <= requested.
    n_steps : (...,) the steps of each point's grid (0 for dopri5, which chooses its own).
    nfe_per_point, nfe_solve_per_point, n_vjp_per_point : (...,) score evaluations (each with
        its divergence), those of the solve whose value is returned, and vector-Jacobian
        products (autograd or Hutchinson divergences), per point.
    nfe_model_per_point : (...,) member score evaluations spent on the model error (0 unless
        the score is an ensemble).
    method, divergence : the integrator and the divergence estimator used.
    times : the increasing time grid of a fixed grid ([t_start, T] for dopri5), or, under
        refinement, a tuple of each point's grid (in the order of the flattened points).
    x_T : (..., d) the end points of the trajectories at T.
    closure : (...,) the cycle closure of :func:`line_energy` between each point and the batch
        mean (the origin for a single point) at t_min, for scores that are not a
        :class:`DensityScore`; None for scores with an exact log-density.
    failures : (first row, stop row, "Type: message") of each batch that failed (batched
        runs); its rows are NaN with an infinite error and not converged.
    flags : the conditions met anywhere among "untrusted" (a numerical bar cannot be trusted),
        "unreached" (a numerical error above the request), "model_unknown" (a single learned
        model), "model_spread" (an ensemble's model error above the request) and
        "model_unresolved" (the members' numerical error above their spread and the
        request), each warned,
        and "model_skipped" (``model_error=False``).
    """

    value: torch.Tensor
    error: torch.Tensor
    integrator_error: torch.Tensor
    reference_error: torch.Tensor
    divergence_error: torch.Tensor
    start_error: torch.Tensor
    model_error: torch.Tensor
    model_numerical_error: torch.Tensor
    converged: torch.Tensor
    trusted: torch.Tensor
    observed_ratio: torch.Tensor
    requested: torch.Tensor
    reached: torch.Tensor
    n_steps: torch.Tensor
    nfe_per_point: torch.Tensor
    nfe_solve_per_point: torch.Tensor
    n_vjp_per_point: torch.Tensor
    nfe_model_per_point: torch.Tensor
    method: str
    divergence: str
    times: np.ndarray | tuple[np.ndarray, ...]
    x_T: torch.Tensor
    closure: torch.Tensor | None
    failures: tuple[tuple[int, int, str], ...] = ()
    flags: tuple[str, ...] = ()

    @property
    def total_error(self) -> torch.Tensor:
        """(...,) error + model_error (nats): the whole interval's half-width."""
        return self.error + self.model_error

    @property
    def nfe(self) -> int:
        """Score evaluations per point (mean over the points), the error estimate included."""
        return _mean_count(self.nfe_per_point)

    @property
    def nfe_solve(self) -> int:
        """Score evaluations per point of the solve whose value is returned (mean over the points)."""
        return _mean_count(self.nfe_solve_per_point)

    @property
    def nfe_estimate(self) -> int:
        """Score evaluations per point spent on the error estimate and on refinement: nfe - nfe_solve."""
        return self.nfe - self.nfe_solve

    @property
    def nfe_model(self) -> int:
        """Member score evaluations per point spent on the model error (mean over the points)."""
        return _mean_count(self.nfe_model_per_point)

    @property
    def n_vjp(self) -> int:
        """Vector-Jacobian products per point (mean over the points)."""
        return _mean_count(self.n_vjp_per_point)


def _mean_count(per_point: torch.Tensor) -> int:
    return round(float(per_point.double().mean())) if per_point.numel() else 0


class _Field:
    """The augmented probability-flow field (x, l) -> (F(x, t), div F per probe), counting
    calls. t is a scalar or one time per row."""

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
        f, half_g2 = self.process.f(t).reshape(-1, 1), 0.5 * self.process.g2(t).reshape(-1, 1)
        return f * x - half_g2 * s, x.shape[-1] * f - half_g2 * div


def _value_error(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The numerical error of a readout's value at t_start: the sum of its integrator,
    reference-law and Hutchinson parts (a member's bar in the model error, module docstring)."""
    return parts["integrator_error"] + parts["reference_error"] + parts["divergence_error"]


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
    """A fixed time grid for :func:`energy` (``n_steps=``): EDM (rho = 7) from the process's
    t_max down to ``t_start`` (default the process's t_min)."""
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


def _resolve_schedule(schedule: Any, process: ForwardProcess, method: str, t_start: float,
                      n_steps: int | None) -> Schedule | None:
    """The fixed grid (checked), or None for the refinement (no schedule, no n_steps, not dopri5)."""
    if schedule is None and n_steps is None and method != "dopri5":
        return None
    if schedule is None:
        schedule = default_schedule(process, DEFAULT_STEPS if n_steps is None else int(n_steps), t_start)
    schedule = _span_check(as_schedule(schedule), process, t_start)
    if method != "dopri5" and schedule.n_levels < 2:
        raise ScheduleError(
            f"a fixed-step energy needs at least 2 steps (step doubling estimates its error); "
            f"the schedule has {schedule.n_levels}"
        )
    return schedule


def _check_request(atol: float, rtol: float, max_steps: int) -> None:
    atol, rtol = float(atol), float(rtol)
    if not (math.isfinite(atol) and math.isfinite(rtol) and atol >= 0 and rtol >= 0 and atol + rtol > 0):
        raise ValueError(f"atol and rtol must be finite, >= 0 and not both 0; got atol={atol!r}, rtol={rtol!r}")
    if int(max_steps) < refinement.PILOT_STEPS:
        raise ValueError(f"max_steps must be at least {refinement.PILOT_STEPS}; got {max_steps!r}")


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
    atol: float = DEFAULT_ATOL,
    rtol: float = 0.0,
    method: EnergyMethod = "rk4",
    divergence: DivergenceChoice = "exact",
    n_probes: int = 16,
    n_steps: int | None = None,
    log_prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    solver_rtol: float = 1e-7,
    solver_atol: float = 1e-9,
    generator: torch.Generator | None = None,
    closure: bool | None = None,
    model_error: bool = True,
    t_start: float | None = None,
    executor: Any = None,
    n_workers: int = 2,
    batch_size: int | None = None,
) -> EnergyResult:
    """E(x) = -log p_0(x) in k_B T by the probability-flow ODE, to the accuracy asked for
    (formula, error and refinement in the module docstring).

    score : a :class:`Score` or a callable score (wrapped by :func:`as_score`).
    process : the forward process (None: the score's own); it must equal the score's.
    x : (..., d) points; the result has shape (...,), in x's dtype and on x's device.
    atol, rtol : the accuracy asked for at every point, |E - (-log p_0)| <= atol + rtol |E|
        (nats; default 1e-3 absolute). Without ``schedule`` and ``n_steps``, each point's
        grid is refined until its trusted error bar meets it (at most ``max_steps`` steps):
        ``reached`` says where it did, and a :class:`ConvergenceWarning` names the points
        where it did not and why (the reference law's or Hutchinson's error alone above the
        request, or ``max_steps``). With a fixed grid they only set ``requested`` / ``reached``.
        (Before issue 23 ``rtol`` / ``atol`` were dopri5's solver tolerances: now
        ``solver_rtol`` / ``solver_atol``.)
    schedule : a fixed grid instead of the refinement: a :class:`Schedule` or an array of
        times, monotone either way, running from the process's t_max down to t_start (a grid
        that misses either end raises :class:`ScheduleError`). dopri5 uses only its end points.
    n_steps : a fixed grid of :func:`default_schedule` (EDM, rho = 7) with that many steps.
    method : "rk4" (default), "heun", "euler" (fixed-step, refined or on the fixed grid), or
        "dopri5" (adaptive, torchdiffeq) with solver tolerances ``solver_rtol``,
        ``solver_atol`` (on the state (x, l), not nats; its error bar is checked as in the
        module docstring, not refined to the request).
    divergence : "exact" (closed form for a DensityScore, else autograd: d vector-Jacobian
        products per evaluation) or "hutchinson" (``n_probes`` Rademacher probes drawn once with
        ``generator``, a seeded torch.Generator on x's device).
    log_prior : log p_T as a function of the end points (k, d) -> (k,), replacing the
        Gaussian reference law N(0, sigma_T^2 I) (and its ``reference_error``, then 0).
    closure : report the line-integral cycle closure (default: for scores that are not exact).
    model_error : read each member of an ensemble for the model error (module docstring);
        False skips them (for callers that read the members themselves): an ensemble's
        model_error is then NaN and flagged "model_skipped", without a warning.
    t_start : where the integration starts (default :func:`start_time`: the process's t_min,
        or a network's smallest training time where it is undefined at t_min); above t_min
        the value is -log p_{t_start}(x) and ``start_error`` bounds, to first order, its
        distance to -log p_0(x) (module docstring). Under VE, p_0 is the data smoothed by
        N(0, sigma_min^2 I) (module docstring, Conventions).
    executor, n_workers, batch_size : batches of ``batch_size`` rows (default 256 when an
        executor is given) as tasks on an executor (None: serially, here; "dask": a
        LocalCluster of ``n_workers`` processes; a dask Client or any concurrent.futures
        Executor; :func:`~scorehamiltonian.common.executors.executor_from`). Every row's energy
        does not depend on the batches (each point's refinement is its own); the closure's
        anchor is the mean of each batch; Hutchinson probes come from a seed drawn once from
        ``generator`` (batch b: seed + b). A failed batch gives NaN rows and an entry in
        ``failures``.
    """
    score = as_score(score)
    process = score.process if process is None else process
    if process != score.process:
        raise ValueError(f"process {process!r} differs from the score's process {score.process!r}")
    x = check_points(x, score.dim)
    batch_shape, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
    t_start = _check_start(score, process, t_start)
    integrators.check_method(method)
    _check_request(atol, rtol, max_steps)
    schedule = _resolve_schedule(schedule, process, method, t_start, n_steps)
    want_closure = not isinstance(score, DensityScore) if closure is None else closure
    task = _Task(score, process, schedule, method, divergence, int(n_probes), float(solver_rtol),
                 float(solver_atol), want_closure, t_start, float(atol), float(rtol), log_prior, int(max_steps), bool(model_error))
    if executor is None and batch_size is None:
        parts, failures = [task.run(flat, generator)], []
    else:
        parts, failures = _batched(task, flat, executor, n_workers, batch_size or _DEFAULT_BATCH, generator)
    result = _assemble(parts, failures, batch_shape, x.shape)
    return replace(result, flags=_warn(result, schedule, task))


#: Rows per task of a batched energy (``executor`` given without ``batch_size``).
_DEFAULT_BATCH = 256


@dataclass(frozen=True)
class _Task:
    """Everything :func:`energy` computes for a batch of rows but the rows (picklable when
    ``log_prior`` is). ``schedule`` None: the refinement."""

    score: Score
    process: ForwardProcess
    schedule: Schedule | None
    method: str
    divergence: str
    n_probes: int
    solver_rtol: float
    solver_atol: float
    closure: bool
    t_start: float
    atol: float
    rtol: float
    log_prior: Callable[[torch.Tensor], torch.Tensor] | None
    max_steps: int
    members: bool

    def run(self, flat: torch.Tensor, generator: torch.Generator | None) -> EnergyResult:
        """The energies of the rows ``flat`` (n, d) (module docstring), as flat tensors."""
        probes = _probes(self.divergence, self.n_probes, flat, generator)
        parts = self._fixed(flat, probes) if self.schedule is not None else self._refined(flat, probes)
        model_error, model_numerical, nfe_model = self._model_error(flat, probes, parts["times"])
        audit = _closure(self.score, flat, self.t_start) if self.closure else None
        error = _value_error(parts) + parts["start_error"]
        requested = self.atol + self.rtol * parts["value"].abs()
        reached = error + model_error <= requested
        return EnergyResult(error=error, model_error=model_error, model_numerical_error=model_numerical,
                            nfe_model_per_point=nfe_model, requested=requested,
                            reached=reached, converged=parts["trusted"] & reached, method=self.method,
                            divergence=self.divergence, closure=audit, **parts)

    def _log_prior(self, x_T: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        return _log_reference(self.process, x_T, T) if self.log_prior is None else self.log_prior(x_T)

    def _model_error(self, flat: torch.Tensor, probes: torch.Tensor | None,
                     times: np.ndarray | tuple[np.ndarray, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model error of each row, its members' numerical part and the member evaluations it
        cost (module docstring): each member's energy on the row's own grid (``times``) with the
        grid's companions; their standard deviation plus the largest member's numerical bar."""
        n, kind = flat.shape[0], source_kind(self.score)
        spent = torch.zeros(n, dtype=torch.int64, device=flat.device)
        if kind != "ensemble" or not self.members:
            fill = 0.0 if kind == "exact" else math.nan
            unknown = torch.full((n,), fill, dtype=flat.dtype, device=flat.device)
            return unknown, unknown, spent
        m = 1 if probes is None else probes.shape[0]
        T = torch.as_tensor(self.process.t_max, dtype=flat.dtype, device=flat.device)
        values = torch.empty(len(self.score.members), n, dtype=flat.dtype, device=flat.device)
        bars = torch.empty_like(values)
        per_row = isinstance(times, tuple)
        if per_row:
            grid, steps = refinement.padded([torch.as_tensor(g, dtype=flat.dtype, device=flat.device)[:, None]
                                             for g in times])
            wasted = self._padding_evaluations(grid, steps)
        else:
            grid, wasted = torch.as_tensor(times, dtype=flat.dtype, device=flat.device), 0
        for k, member in enumerate(self.score.members):
            field = _Field(member, self.process, probes)
            if per_row:
                ends = integrators.integrate_recorded(field, self.process, flat, m, grid, self.method)[0]
            else:
                ends = list(integrators.integrate(field, flat, m, grid, self.method, self.solver_rtol,
                                                  self.solver_atol))
            readout = self._readout(field, flat, ends, T)
            values[k], bars[k] = readout["value"], _value_error(readout)
            spent += field.nfe - wasted
        numerical = bars.max(0).values
        return member_spread(values) + numerical, numerical, spent

    def _readout(self, field: _Field, x: torch.Tensor, solutions: list[tuple[torch.Tensor, torch.Tensor]],
                 T: torch.Tensor) -> dict[str, torch.Tensor]:
        """The energies of the solutions (the first is the result) and every part of the error."""
        x_T, ell = solutions[0]
        values = [-(self._log_prior(xs, T) + ls.mean(-1)) for xs, ls in solutions]
        integrator_error, ratio, trusted = integrators.integrator_error(values, self.method)
        zero = torch.zeros_like(values[0])
        m = ell.shape[-1]
        start = torch.as_tensor(self.t_start, dtype=x.dtype, device=x.device)
        return {
            "value": values[0], "integrator_error": integrator_error, "observed_ratio": ratio, "trusted": trusted,
            "reference_error": _reference_error(field, x_T, T) if self.log_prior is None else zero,
            "divergence_error": ell.std(-1, correction=1) / math.sqrt(m) if m > 1 else zero,
            "start_error": _start_error(field, x, start) if self.t_start > self.process.t_min else zero,
            "x_T": x_T,
        }

    @staticmethod
    def _counts(field: _Field, steps: torch.Tensor, solve: torch.Tensor, wasted: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Per row: steps, score evaluations (the field's calls less ``wasted``, those of steps
        of length 0 that only batch the row with longer grids), ``solve`` (those of the solve
        whose value is returned) and vector-Jacobian products (the same number per call)."""
        nfe = field.nfe - wasted
        return {"nfe_per_point": nfe, "nfe_solve_per_point": solve, "n_vjp_per_point": field.n_vjp * nfe // field.nfe,
                "n_steps": steps}

    def _padding_evaluations(self, times: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Per row, the evaluations of :func:`~.integrators.integrate_recorded` on the steps of
        length 0 that precede its own grid of ``steps`` steps in ``times`` (``refinement.padded``)."""
        pad = times.shape[0] - 1 - steps
        return integrators.STAGES[self.method] * (pad + pad // 2 + pad // 4)

    def _fixed(self, flat: torch.Tensor, probes: torch.Tensor | None) -> dict[str, Any]:
        """One grid for every row: the schedule's, or dopri5's own steps."""
        times = self.schedule.to_torchdiffeq(dtype=flat.dtype, device=flat.device)
        m = 1 if probes is None else probes.shape[0]
        field = _Field(self.score, self.process, probes)
        solutions, solve = [], 0
        for solution in integrators.integrate(field, flat, m, times, self.method, self.solver_rtol, self.solver_atol):
            solve = solve or field.nfe
            solutions.append(solution)
        parts = self._readout(field, flat, solutions, times[-1])
        steps = 0 if self.method == "dopri5" else self.schedule.n_levels
        span = times[[0, -1]] if self.method == "dopri5" else times
        n = torch.full((flat.shape[0],), steps, dtype=torch.int64, device=flat.device)
        counts = self._counts(field, n, torch.full_like(n, solve), torch.zeros_like(n))
        return {**parts, **counts, "times": span.cpu().numpy()}

    def _refined(self, flat: torch.Tensor, probes: torch.Tensor | None) -> dict[str, Any]:
        """Each row on its own grid, refined to the request (:func:`~.refinement.refine`)."""
        n, m = flat.shape[0], 1 if probes is None else probes.shape[0]
        kept: dict[str, Any] = {}
        grids: list[np.ndarray] = [np.empty(0)] * n
        spent = {"nfe_per_point": torch.zeros(n, dtype=torch.int64, device=flat.device)}
        spent["n_vjp_per_point"] = torch.zeros_like(spent["nfe_per_point"])
        stages = integrators.STAGES[self.method]
        T = torch.as_tensor(self.process.t_max, dtype=flat.dtype, device=flat.device)

        def solve(rows: torch.Tensor, times: torch.Tensor, steps: torch.Tensor) -> refinement.Outcome:
            field = _Field(self.score, self.process, None if probes is None else probes[:, rows])
            solutions, increments = integrators.integrate_recorded(field, self.process, flat[rows], m, times,
                                                                   self.method)
            parts = self._readout(field, flat[rows], solutions, T)
            parts.update(self._counts(field, steps, stages * steps, self._padding_evaluations(times, steps)))
            for name in ("nfe_per_point", "n_vjp_per_point"):
                spent[name][rows] += parts.pop(name)
            for name, value in parts.items():
                kept.setdefault(name, torch.empty((n, *value.shape[1:]), dtype=value.dtype, device=value.device))
                kept[name][rows] = value
            for i, (row, n_row) in enumerate(zip(rows.tolist(), steps.tolist())):
                grids[row] = times[-n_row - 1 :, i].cpu().numpy()
            other = parts["reference_error"] + parts["divergence_error"] + parts["start_error"]
            return refinement.Outcome(parts["value"], parts["integrator_error"], parts["trusted"], other,
                                      increments)

        pilot = default_schedule(self.process, refinement.PILOT_STEPS, self.t_start)
        refinement.refine(solve, pilot.to_torchdiffeq(dtype=flat.dtype, device=flat.device), n,
                          lambda value: self.atol + self.rtol * value.abs(), integrators.ORDERS[self.method],
                          self.max_steps)
        return {**kept, **spent, "times": tuple(grids)}

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
    zero, inf, no = torch.zeros_like(nan), torch.full_like(nan, math.inf), torch.zeros_like(nan, dtype=torch.bool)
    count = torch.zeros(rows.shape[:1], dtype=torch.int64, device=rows.device)
    times = (task.schedule.to_torchdiffeq(dtype=rows.dtype).numpy() if task.schedule is not None
             else (np.empty(0),) * rows.shape[0])
    return EnergyResult(value=nan, error=inf, integrator_error=inf, reference_error=zero, divergence_error=zero,
                        start_error=zero, model_error=nan, model_numerical_error=nan, converged=no, trusted=no,
                        observed_ratio=nan, requested=nan,
                        reached=no, n_steps=count, nfe_per_point=count, nfe_solve_per_point=count,
                        n_vjp_per_point=count, nfe_model_per_point=count, method=task.method,
                        divergence=task.divergence, times=times, x_T=torch.full_like(rows, math.nan),
                        closure=nan if task.closure else None)


def _assemble(parts: list[EnergyResult], failures: list[tuple[int, int, str]], batch_shape: torch.Size,
              x_shape: torch.Size) -> EnergyResult:
    """One :class:`EnergyResult` from the batches' flat ones: the per-row tensors joined in
    input order and given the input's shape, the grid (or the per-row grids joined), the failures."""
    def joined(name: str, shape: torch.Size) -> torch.Tensor | None:
        pieces = [getattr(p, name) for p in parts]
        return None if pieces[0] is None else torch.cat(pieces).reshape(shape)

    ran = next((p for p in parts if p.nfe), parts[0])
    rows = {f.name: joined(f.name, x_shape if f.name == "x_T" else batch_shape)
            for f in fields(EnergyResult) if isinstance(getattr(ran, f.name), torch.Tensor)}
    times = sum((p.times for p in parts), ()) if isinstance(ran.times, tuple) else ran.times
    return replace(ran, **rows, times=times, failures=tuple(failures))


def _warn(result: EnergyResult, schedule: Schedule | None, task: _Task) -> tuple[str, ...]:
    """The :class:`ConvergenceWarning` of untrusted bars, under refinement of unmet requests, and
    of the model error (unknown, or above the request); the flags of the conditions met."""
    ran = ~torch.isnan(result.value)
    n_bad = int((~result.trusted & ran).sum())
    short = (result.error > result.requested) & ran
    flags = [name for name, hit in (("untrusted", n_bad > 0), ("unreached", bool(short.any()))) if hit]
    where = f"on {schedule!r}" if schedule is not None else "after refinement"
    if n_bad:
        warnings.warn(
            f"energy: the error bars of {n_bad} of {result.value.numel()} points {where} cannot be trusted: "
            "their error estimate's sequence (step doubling; dopri5: tolerances tol, 10 tol, 100 tol) is not "
            "asymptotic and its differences do not shrink (observed ratio < 2); refine the schedule (more steps)",
            ConvergenceWarning, stacklevel=3,
        )
    if schedule is None and bool(short.any()):
        irreducible = (result.reference_error + result.divergence_error + result.start_error) > result.requested
        causes = []
        if bool((short & irreducible).any()):
            rows = short & irreducible
            start = f"the score is read from t_start = {task.t_start:g}: a network trained to a smaller t"
            remedies = ((result.reference_error, "the reference law's", "pass log_prior=, or a longer t_max"),
                        (result.divergence_error, "Hutchinson's", "more n_probes, or divergence='exact'"),
                        (result.start_error, "the start's", start))
            parts = [f"{name} up to {float(part[rows].max()):.2e} ({remedy})" for part, name, remedy in remedies
                     if float(part[rows].max()) > 0]
            causes.append(f"at {int(rows.sum())} the error that refinement cannot reduce alone exceeds it: "
                          + ", ".join(parts))
        if bool((short & ~irreducible).any()):
            causes.append(f"at {int((short & ~irreducible).sum())} the grid reached max_steps = {task.max_steps}")
        warnings.warn(
            f"energy: {int(short.sum())} of {result.value.numel()} points did not reach the requested accuracy "
            f"(atol = {task.atol:g}, rtol = {task.rtol:g}; largest error {float(result.error[short].max()):.2e}): "
            + "; ".join(causes),
            ConvergenceWarning, stacklevel=3,
        )
    kind = source_kind(task.score)
    if kind == "single":
        warn_model_unknown("energy")
        flags.append(MODEL_UNKNOWN)
    spread = (result.model_error > result.requested) & ran
    if kind == "ensemble" and not task.members:
        flags.append("model_skipped")
    elif kind == "ensemble" and bool(spread.any()):
        warnings.warn(f"energy: {MODEL_SPREAD}: at {int(spread.sum())} of {result.value.numel()} points the "
                      f"ensemble's members disagree by more than the request (model error up to "
                      f"{float(result.model_error[spread].max()):.3g} nats): those energies are not converged",
                      ConvergenceWarning, stacklevel=3)
        flags.append(MODEL_SPREAD)
    numerical = result.model_numerical_error
    unresolved = (2 * numerical > result.model_error) & (numerical > result.requested) & ran
    advice = ("more steps resolve the members" if schedule is not None else
              "the refinement stops where the mean's integrator error is below the request or a quarter of "
              "the error it cannot reduce (start, reference, Hutchinson), and the members may need more: "
              "a finer fixed grid (n_steps) resolves them")
    if kind == "ensemble" and task.members and bool(unresolved.any()):
        warnings.warn(f"energy: {MODEL_UNRESOLVED}: at {int(unresolved.sum())} of {result.value.numel()} points "
                      "the members' own numerical error on the grid exceeds their spread (up to "
                      f"{float(numerical[unresolved].max()):.3g} nats, above the request): the model error "
                      f"there is a bound dominated by numerics; {advice}",
                      ConvergenceWarning, stacklevel=3)
        flags.append(MODEL_UNRESOLVED)
    return tuple(flags)


def _closure(score: Score, x: torch.Tensor, t: float) -> torch.Tensor:
    anchor = x.mean(0, keepdim=True) if x.shape[0] > 1 else torch.zeros_like(x)
    return line_energy(score, anchor.expand_as(x), x, t=t).closure
