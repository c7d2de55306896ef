"""Step schedules designed for the solvers people run, for any score and any d (THEORY section 3).

:func:`design_steps` chooses the N + 1 levels of an ODE solver (:mod:`.solvers`: euler, heun,
dpmpp-2m, ddim, euler-t) at a budget of ``nfe`` evaluations. Parametrisation: the levels'
lambda = -log sigma (sigma = sigma_t / alpha_t) run from lambda(t_max) to lambda(t_min) with
increments softmax(logits) (:func:`~.baselines.lambda_from_logits`), so every logit vector is a
valid schedule with the fixed ends. The search starts from the best of the process baselines
(:data:`~.baselines.PROCESS_BASELINES`, judged by the same objective), then from the next best,
and keeps the best point seen.

Objectives.

- ``"exact"`` (Gaussian-mixture targets, d = 1 or 2): the distance between the solver's output
  law q and the target p at the last level by change of variables on a quadrature of the
  initial law q_0 (the prior N(0, (alpha_T^2 + sigma_T^2) I) on a regular grid of +-9 standard
  deviations): with F the solver's map x_0 -> x_N and J = |det dF/dx_0| (autograd in x),
  TV = 1/2 int |q_0(x_0) - p(F(x_0)) J(x_0)| dx_0 and
  KL(q || p) = int q_0 (log q_0 - log J - log p(F)) dx_0, exact when F is one-to-one (the
  pull-back of the judge's integrals). The design's and the start's values are then measured by
  the exact judge (:func:`~.judges.judge_solver`, which also handles maps that fold space), and
  the start is returned whenever the judge does not rank the design better: never worse than
  its start under the judge.
- ``"trajectory"`` (any score, any d; OSS-style, Pei et al. 2025): the mean squared distance
  E |x_N - x_N^ref|^2 between the solver's output and a fine reference run of the same solver
  (``teacher_steps`` log-SNR steps) from the same ``n_samples`` prior draws (fixed ``seed``),
  with its bootstrap standard error (as every model-only objective's). It measures the
  discretisation error against the model's own flow, not the model's error against the data.
- ``"energy"`` (any score, any d; the default where no exact objective applies): the same
  runs, measured in the model's own log-density rather than in x. Per draw,
  e_i = log p(x_N^ref,i) - log p(x_N,i) = -int_0^1 s(x_N^ref + u d_i) . d_i du,
  d_i = x_N,i - x_N^ref,i, with the score at the last positive level (t_min; with
  ``final="zero"`` the energy of p_{t_min} stands in for the data's), by 4-node Gauss-Legendre
  on the segment (:func:`~scorehamiltonian.thermo.line_energy.line_energy`); the reference
  outputs' own log-densities l_i (up to one constant) come once per design from line integrals
  from one anchor (:func:`reference_log_density`). The objective is the 1-Wasserstein distance
  between the laws of log p under the run and under the reference run,
  W = (1/n) sum_k |l_(k) - (l - e)_(k)| (both sorted), in nats, with a bootstrap standard
  error. It lies between |E e_i|, the run's cross-entropy excess E_q[-log p] - E_ref[-log p]
  over the reference run, and E |e_i|; it weighs each direction by the model's curvature (an
  error across a narrow mode costs more than one along a wide one), which the squared distance
  does not, and it compares laws, not draws: a run whose draws end at other points of the same
  law costs nothing. Errors in l_i only change the coupling, never those bounds. The paired
  E |e_i| charges such draws in full: on many-well-32 with DPM-Solver++(2M) at NFE 10 and 20 it
  ranked the baselines with Spearman 0.67 and 0.57 against their exact cross-entropy and started
  from log-SNR (1.10 and 0.68 nats) where Align Your Steps reached 0.37 and 0.08; W ranked them
  with 0.90 and 1.00 and picked the best baseline in all 12 benchmark cases (mixtures in d = 16
  and 64, many-well-32; Heun and DPM-Solver++(2M) at NFE 10 and 20; 512 draws). Its designs
  (120 s, ``analysis/results/solver_schedules_highd.md``) lowered the cross-entropy by at least
  20 % below the best baseline's (z >= 2) in 8 of those 12 cases and by 12 - 19 % in 3; in the
  last (many-well-32, DPM-Solver++(2M) at NFE 20) the best baseline lies within the judge's noise
  of the floor (0.076 +- 0.082 nats) and the design, which follows the model's converged flow
  (+0.046 +- 0.034 over the floor on 20000 draws), read 0.198. Like E |e_i| it barely sees a
  draw that ends in the wrong one of two basins of similar depth, which the distance does.
- ``"combined"``: the energy objective W plus the mean squared distance, each in units of its
  median over the measured baselines (so a typical baseline scores about 2). Measured on
  many-well-32 (120 s designs, ``analysis/results/solver_schedules_highd*.md``): with Heun at
  NFE 10 the energy design lowered the cross-entropy from the best baseline's 28.4 to 13.2 nats
  but raised the basin-weight error to 0.083 against 0.034 (+-0.008); the combined design
  reached 15.2 nats at 0.043. With DPM-Solver++(2M) the combined design reached 0.16 nats at
  NFE 10 (best baseline 0.37, energy design 0.09) but 0.54 at NFE 20 (0.08 and 0.20), so it is
  not the default. An energy design whose runs end farther from the reference run than its
  start's (by more than two paired standard errors) says so in its notes.

The model-only search runs on ``n_samples`` prior draws; the start and the design are then
measured on as many fresh draws (the ``seed``'s second set, with its own reference run), which
give ``value`` and ``error`` and decide ``improved``: a design fitted to the noise of its own
draws is not returned, and its value is not the search's optimistic one.

The model-only objectives converge to the model's own flow and cannot see its error against the
data: on the digits (a network of :func:`~scorehamiltonian.score.train_dsm`), the 200-step run
lies at a classifier-feature Frechet distance of 3.49 +- 0.62 from the held-out rows, while
Align Your Steps' SD 1.5 list at 10 DPM-Solver++(2M) steps lies at 2.60 +- 0.50: its
discretisation error happens to cancel part of the model's.

Optimiser: derivative-free (Powell's method, scipy) on the N logits, restarted from its best
point (a fresh direction set) while a run gains more than 0.1 % of the objective, then started
again from the next-best baselines (``starts`` in all) while the clock allows. The solvers read
their levels as floats (one implementation shared with the sample runs, the judge and the
exports), so a gradient in the times would need a second, differentiable copy of every solver;
every objective costs one batched solver run (the energy's line integral 6 score evaluations
more per draw), and N <= 20 parameters need a few hundred runs (measured on 2 busy cores:
0.02-0.07 s each in 1D on 2001 nodes, 0.2-0.6 s in 2D on 101^2, so a 30 s design in 2D stops
after ~50-100 evaluations, unconverged). ``max_time`` is checked before every evaluation (and
before each starting baseline) and bounds the whole design: the design's final measurement is
given the measured time of the start's (times 1.5) and skipped, the start returned, when the
clock has run out; a run overshoots by at most one evaluation and one final measurement (see
``judge`` in :func:`design_steps` for the judge's time).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.optimize
import torch

from ..common.errors import ResolutionError, ScheduleError, TimeRangeError
from ..common.statistics import mean_and_stderr
from ..score.interface import ExactScore
from ..score.mixture import GaussianMixture
from ..score.processes import ForwardProcess
from ..thermo.line_energy import line_energy
from .baselines import PROCESS_BASELINES, baseline_schedule, lambda_from_logits, sigma_ends, times_of_sigmas
from .grid_model import grid_target
from .judges import judge_solver
from .schedules import Schedule, as_schedule
from .solvers import ODE_SOLVERS, Final, Levels, prior_samples, sample, steps_for_nfe

__all__ = ["DESIGN_METRICS", "StepDesign", "design_steps", "energy_objective", "exact_objective",
           "reference_log_density", "trajectory_objective"]

#: What design_steps can minimise: exact TV or KL (d <= 2, mixture targets), or, from the model's
#: own fine run in any d, the law of the log-density, the trajectory distance or both combined.
DESIGN_METRICS = ("tv", "kl", "combined", "energy", "trajectory")
#: The model-only metrics (any score, any d): runs against a fine reference run of the same solver.
RUN_METRICS = ("combined", "energy", "trajectory")
#: Gauss-Legendre nodes of the energy objective's line integral.
_ENERGY_NODES = 4
#: Gauss-Legendre nodes of the reference outputs' log-densities (from one anchor; once per set of
#: draws), doubled on the lines whose quadrature estimate exceeds the tolerance (nats). On the d = 8
#: test mixture (variances 0.02 - 1) 32 nodes left errors up to 1.8 nats on the lines between its
#: components and estimates that missed some of them; from 64 nodes the largest error left was
#: 1e-3 - 7e-2 nats over four sets of 256 draws (the estimate |I_n - I_{n/2}| is a heuristic).
_ANCHOR_NODES = 64
_ANCHOR_TOL = 1e-2
_ANCHOR_MAX_NODES = 256
#: Bootstrap resamples of the model-only objectives' standard errors.
_BOOTSTRAP = 200
#: Quadrature points of the initial law per axis for the exact objective (1D, 2D).
_QUADRATURE = {1: 2001, 2: 101}
_UNJUDGED = ("measured by the change-of-variables objective, not judged: exact where the solver's map is "
             "one-to-one; error is the change on a quadrature of half the points")
#: Relative gain of a Powell run below which design_steps stops restarting it from its best point.
_RESTART_GAIN = 1e-3
#: Fraction of max_time reserved for the design's own judgement beyond the start's measured time.
_JUDGE_RESERVE = 1.5


@dataclass(frozen=True)
class StepDesign:
    """What :func:`design_steps` returns.

    schedule : the designed :class:`Schedule` (the start when the search did not improve it);
    metric : "tv", "kl", "combined", "energy" or "trajectory"; value, error : the schedule's
    metric and its uncertainty (the exact judge's error bound, or the bootstrap standard error on
    the fresh draws that the search did not see); start, start_value, start_error : the baseline
    the search started from (the best one) and its metric, measured as ``value``;
    baselines : each process baseline's objective (what chose the start); evaluations : objective
    evaluations made; seconds : wall time of the whole design; converged : every search (one per
    start) met the optimiser's tolerance before max_time and max_evaluations; improved : the
    design beats its start (else ``schedule`` is the start); notes : judge notes (unresolved
    grids, folding maps), and for the energy objective whether the design's runs moved away from
    the reference run (:func:`design_steps`' module docstring).
    """

    schedule: Schedule
    metric: str
    value: float
    error: float
    start: str
    start_value: float
    start_error: float
    baselines: dict[str, float]
    evaluations: int
    seconds: float
    converged: bool
    improved: bool
    notes: tuple[str, ...] = ()


class _OutOfTime(Exception):
    """Raised inside the optimiser's objective when the clock or the evaluation cap runs out."""


def _exact_target(score: Any, process: ForwardProcess | None) -> ExactScore | None:
    """The target as an ExactScore when it is a GaussianMixture (``process`` then required) or an
    ExactScore (``process`` None or its own), checked by :func:`~.grid_model.grid_target`; else None."""
    if not isinstance(score, (GaussianMixture, ExactScore)):
        return None
    mixture, process = grid_target(score, process)
    return score if isinstance(score, ExactScore) else ExactScore(mixture, process)


def exact_objective(score: ExactScore, schedule: Any, solver: str, *, metric: str = "tv", final: Final = "t_min",
                    points: int | None = None) -> float:
    """TV or KL(q || p) of ``solver``'s output law along ``schedule`` by change of variables on a
    quadrature of the prior (module docstring); d = 1 or 2, exact while the map is one-to-one."""
    process, dim = score.process, score.dim
    levels = Levels.of(schedule, process, final)
    n = int(points or _QUADRATURE[dim])
    std = math.sqrt(float(levels.alpha[0]) ** 2 + float(levels.sigma_t[0]) ** 2)
    axis = torch.linspace(-9 * std, 9 * std, n, dtype=torch.float64)
    x0 = torch.stack([g.reshape(-1) for g in torch.meshgrid(*[axis] * dim, indexing="ij")], dim=1)
    weight = float(axis[1] - axis[0]) ** dim
    log_q0 = -0.5 * (x0**2).sum(-1) / std**2 - 0.5 * dim * math.log(2 * math.pi * std**2)
    x0.requires_grad_(True)
    out = sample(solver, score, x0, schedule, final=final).x
    rows = [torch.autograd.grad(out[:, j].sum(), x0, retain_graph=j < dim - 1)[0] for j in range(dim)]
    with torch.no_grad():
        jac = torch.stack(rows, dim=1)
        log_j = torch.log(torch.abs(torch.linalg.det(jac)))
        data = levels.to_zero and math.isnan(levels.times[-1])
        log_p = score.mixture.log_prob(out) if data else score.log_prob(out, float(levels.times[-1]))
        if metric == "tv":
            value = 0.5 * float(torch.abs(torch.exp(log_q0) - torch.exp(log_p + log_j)).sum()) * weight
        else:
            value = float((torch.exp(log_q0) * (log_q0 - log_j - log_p)).sum()) * weight
    return value


def reference_log_density(score: Any, reference: torch.Tensor, t: float) -> torch.Tensor:
    """log p_t(x_N^ref,i) - log p_t(a) for the reference outputs, in nats: the straight line integral
    of the score from the anchor a (the reference output nearest their mean) by Gauss-Legendre
    (:func:`~scorehamiltonian.thermo.line_energy.line_energy`), from ``_ANCHOR_NODES`` nodes, doubled
    for the lines whose quadrature estimate exceeds ``_ANCHOR_TOL`` up to ``_ANCHOR_MAX_NODES``. It
    only orders the draws for the energy objective's coupling (module docstring), whose bounds hold
    whatever its error."""
    anchor = reference[((reference - reference.mean(0)) ** 2).sum(-1).argmin()]
    straight = torch.zeros(1, reference.shape[1], dtype=reference.dtype, device=reference.device)
    level = torch.empty(reference.shape[0], dtype=reference.dtype, device=reference.device)
    rows, nodes = torch.arange(reference.shape[0], device=reference.device), _ANCHOR_NODES
    while rows.numel():
        lines = line_energy(score, anchor.expand(rows.numel(), -1), reference[rows], t, paths=straight, n_nodes=nodes)
        level[rows] = lines.value
        rows, nodes = rows[lines.quadrature_error > _ANCHOR_TOL], 2 * nodes
        if nodes > _ANCHOR_MAX_NODES:
            break
    return level


def _run_terms(score: Any, schedule: Any, solver: str, x0: torch.Tensor, reference: torch.Tensor, final: Final,
               terms: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per draw, from one run along ``schedule``: "trajectory" |x_N - x_N^ref|^2 and "energy"
    e_i = log p(x_N^ref) - log p(x_N) (4-node Gauss-Legendre line integral of the score at t_min;
    infinite for a run that blew up)."""
    with torch.no_grad():
        out = sample(solver, score, x0, schedule, final=final).x
    values = {}
    if "trajectory" in terms:
        values["trajectory"] = ((out - reference) ** 2).sum(-1)
    if "energy" in terms and not bool(torch.isfinite(out).all()):  # a run that blew up: no integral
        values["energy"] = torch.full(out.shape[:1], math.inf, dtype=out.dtype, device=out.device)
    elif "energy" in terms:
        straight = torch.zeros(1, out.shape[1], dtype=out.dtype, device=out.device)
        values["energy"] = line_energy(score, out, reference, _final_time(score, schedule), paths=straight,
                                       n_nodes=_ENERGY_NODES).value
    return values


def _draws(score: Any, solver: str, fine: Schedule, final: Final, n: int, t_max: float, t_min: float,
           generator: torch.Generator, energy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """n prior draws, their run along the fine schedule, and (for the energy) its log-densities."""
    x0 = prior_samples(score.process, t_max, int(n), score.dim, generator)
    with torch.no_grad():
        reference = sample(solver, score, x0, fine, final=final).x
    return x0, reference, reference_log_density(score, reference, t_min) if energy else None


def _final_time(score: Any, schedule: Any) -> float:
    return float(as_schedule(schedule, score.process).times[-1])


def _term(name: str, values: torch.Tensor, level: torch.Tensor | None) -> float:
    """One term of a model-only objective from its per-draw values: the mean squared distance for
    "trajectory"; for "energy" the 1-Wasserstein distance between the laws of log p(x_N^ref) =
    ``level`` and log p(x_N) = level - e, (1/n) sum_k |l_(k) - (l - e)_(k)| (sorted: the optimal
    coupling in 1D)."""
    if name == "trajectory":
        return float(values.mean())
    if not bool(torch.isfinite(values).all()):
        return math.inf
    return float((level.sort().values - (level - values).sort().values).abs().mean())


def _objective(values: dict[str, torch.Tensor], scale: dict[str, float], level: torch.Tensor | None,
               generator: torch.Generator | None) -> tuple[float, float]:
    """sum_term term / scale[term] over the draws, and its standard error from ``_BOOTSTRAP``
    resamples of the draws (the same draws in every term; NaN without a ``generator``)."""
    def value(index: torch.Tensor | None) -> float:
        pick = (lambda v: v) if index is None else (lambda v: v[index])
        return sum(_term(name, pick(v), None if level is None else pick(level)) / scale[name]
                   for name, v in values.items())

    total = value(None)
    n = next(iter(values.values())).shape[0]
    if generator is None or not math.isfinite(total) or n < 2:
        return total, math.inf if n < 2 else math.nan
    resampled = [value(torch.randint(n, (n,), generator=generator)) for _ in range(_BOOTSTRAP)]
    return total, float(np.std(resampled, ddof=1))


def trajectory_objective(score: Any, schedule: Any, solver: str, x0: torch.Tensor, reference: torch.Tensor, *,
                         final: Final = "t_min", seed: int = 0) -> tuple[float, float]:
    """Mean squared distance E |x_N - x_N^ref|^2 of the run from ``x0`` along ``schedule`` to the
    reference outputs, and its bootstrap standard error (``_BOOTSTRAP`` resamples drawn with
    ``seed``; module docstring)."""
    values = _run_terms(score, schedule, solver, x0, reference, final, ("trajectory",))
    return _objective(values, {"trajectory": 1.0}, None, torch.Generator().manual_seed(int(seed)))


def energy_objective(score: Any, schedule: Any, solver: str, x0: torch.Tensor, reference: torch.Tensor, *,
                     final: Final = "t_min", level: torch.Tensor | None = None, seed: int = 0
                     ) -> tuple[float, float]:
    """W_1 between the laws of log p(x_N^ref) and log p(x_N) in nats (module docstring), and its
    bootstrap standard error (``seed``). ``level``: log p(x_N^ref,i) up to one constant (default
    :func:`reference_log_density` at the schedule's t_min)."""
    values = _run_terms(score, schedule, solver, x0, reference, final, ("energy",))
    if level is None:
        level = reference_log_density(score, reference, _final_time(score, schedule))
    return _objective(values, {"energy": 1.0}, level, torch.Generator().manual_seed(int(seed)))


def _distance_note(score: Any, design: Schedule, start: Schedule, solver: str, x0: torch.Tensor,
                   reference: torch.Tensor, final: Final) -> tuple[str, ...]:
    """A note when the energy design's runs end farther from the reference run than its start's, by
    more than two paired standard errors of E |x_N - x_N^ref|^2 (the same draws through both)."""
    designed, started = (_run_terms(score, s, solver, x0, reference, final, ("trajectory",))["trajectory"]
                         for s in (design, start))
    mean, error = mean_and_stderr(designed - started)
    if not mean > 2 * error:
        return ()
    note = (f"the design's runs end farther from the reference run than its start's (E |x_N - x_ref|^2 "
            f"{float(designed.mean()):.3g} against {float(started.mean()):.3g}, +{mean:.2g} +- {error:.2g}): it "
            "trades distance for log-density, which can move draws between basins; metric='combined' weighs both")
    return (note,)


def _check(process: ForwardProcess, nfe: int, solver: str, t_max: float, t_min: float,
           metric: str, final: Final, max_time: float) -> int:
    if solver not in ODE_SOLVERS:
        raise ValueError(f"design_steps designs the ODE solvers {list(ODE_SOLVERS)}; got {solver!r} "
                         "(annealed Langevin and the SDE samplers: design_schedule)")
    if metric not in DESIGN_METRICS:
        raise ValueError(f"metric must be one of {DESIGN_METRICS}; got {metric!r}")
    if not (process.t_min <= t_min < t_max <= process.t_max):
        raise TimeRangeError(f"need {process.t_min} <= t_min < t_max <= {process.t_max} for {process!r}; "
                             f"got t_min = {t_min!r}, t_max = {t_max!r}")
    if final == "t_min" and float(process.sigma(t_min)) <= 0:
        raise TimeRangeError(f"sigma_t(t_min = {t_min!r}) = 0: the levels need noise; use final='zero' to reach the data")
    if not max_time > 0:
        raise ValueError(f"max_time must be positive; got {max_time!r}")
    n = steps_for_nfe(solver, int(nfe), final=final)
    if n < 2:
        raise ScheduleError(f"{nfe} evaluations give {solver!r} one step: nothing to design (need 2 steps at least)")
    return n


def _judged(score: ExactScore, schedule: Schedule, solver: str, metric: str, final: Final
            ) -> tuple[float, float, tuple[str, ...]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        judgement = judge_solver(score, None, schedule, solver, final=final)
    return float(getattr(judgement, metric)), float(judgement.error), judgement.notes


def design_steps(
    score: Any,
    process: ForwardProcess | None = None,
    nfe: int = 20,
    solver: str = "heun",
    t_max: float | None = None,
    t_min: float | None = None,
    *,
    metric: Literal["tv", "kl", "combined", "energy", "trajectory"] | None = None,
    final: Final = "t_min",
    max_time: float = 30.0,
    max_evaluations: int = 4000,
    seed: int = 0,
    n_samples: int = 512,
    teacher_steps: int = 200,
    baselines: tuple[str, ...] = PROCESS_BASELINES,
    starts: int = 3,
    judge: bool = True,
) -> StepDesign:
    """The step schedule of ``solver`` at ``nfe`` evaluations that minimises ``metric`` (module docstring).

    score : an :class:`ExactScore` or a :class:`GaussianMixture` (with ``process``) for the exact
    objective, or any score (``score.process``, ``score.dim``; a learned model through
    :func:`~scorehamiltonian.score.as_score`) for the model-only objectives. metric : "tv" or "kl"
    (exact, d <= 2; default "tv" there), or "energy" (the default otherwise), "combined" or
    "trajectory". t_max, t_min : the schedule's ends (default: the process's t_max, and 1e-3 t_max
    clipped to its range).
    final : as in :func:`~.solvers.sample`. max_time : seconds for the whole design, held up to one
    objective evaluation. max_evaluations : cap on objective evaluations. seed, n_samples,
    teacher_steps : the model-only objectives' prior draws (two sets: the search's and the final
    measurement's) and their reference runs. baselines : the
    starting candidates (names of :data:`~.baselines.PROCESS_BASELINES`), tried in order while the
    clock allows. starts : the searches, one from each of the best ``starts`` baselines by the
    objective (the best first), while the clock allows. judge : with the exact objective, measure
    the start and the design by :func:`~.judges.judge_solver` (value, its error bound and notes);
    False: by the objective itself, its error the difference from a quadrature of half the points
    (cheap; exact only where the solver's map is one-to-one, noted). The judge's time is not bounded by this module: its Newton
    inversions took 0.1-0.5 s per 1D judgement here but up to 70 s for some Heun schedules, so with
    ``judge=True`` a design can overrun ``max_time`` by one such judgement; ``judge=False`` holds it
    to one objective evaluation. Where the judge refuses a schedule (:class:`ResolutionError`: the
    solver's law too wide for its grid) the objective measures it, noted.

    Raises ValueError for a solver that is not an ODE solver or an unknown metric,
    :class:`TimeRangeError` for ends outside the process's range, :class:`ScheduleError` when ``nfe``
    pays for fewer than two steps.
    """
    started = time.perf_counter()
    exact = _exact_target(score, process)
    score = exact if exact is not None else score
    process = score.process
    t_max = float(process.t_max if t_max is None else t_max)
    t_min = float(max(process.t_min, 1e-3 * t_max) if t_min is None else t_min)
    if metric is None:
        metric = "tv" if exact is not None and exact.dim <= 2 else "energy"
    n = _check(process, nfe, solver, t_max, t_min, metric, final, max_time)
    if metric not in RUN_METRICS and (exact is None or exact.dim > 2):
        raise ValueError(f"metric={metric!r} needs an exact Gaussian-mixture target in d <= 2; use metric='energy'")
    deadline = started + float(max_time)

    if metric in RUN_METRICS:
        generator = torch.Generator().manual_seed(int(seed))
        fine = baseline_schedule("log-snr", process, max(int(teacher_steps), 2 * n), "euler", t_max, t_min)
        terms = ("energy", "trajectory") if metric == "combined" else (metric,)
        # Two sets of draws with their reference runs: the search's, and fresh ones that measure the
        # start and the design (module docstring).
        search_set, check_set = (_draws(score, solver, fine, final, n_samples, t_max, t_min, generator,
                                        "energy" in terms) for _ in range(2))
        x0, reference, level = search_set
        scale = dict.fromkeys(terms, 1.0)  # "combined": each term's median over the baselines, set below

        def combine(values: dict[str, torch.Tensor], level: torch.Tensor | None, error: bool = True
                    ) -> tuple[float, float]:
            return _objective(values, scale, level, torch.Generator().manual_seed(int(seed)) if error else None)

        def measure(schedule: Schedule, draws: tuple = search_set, error: bool = True) -> tuple[float, float]:
            return combine(_run_terms(score, schedule, solver, draws[0], draws[1], final, terms), draws[2], error)
    else:
        def measure(schedule: Schedule, error: bool = True) -> tuple[float, float]:
            return exact_objective(score, schedule, solver, metric=metric, final=final), 0.0

    candidates, scores, runs = {}, {}, {}
    for name in baselines:  # in order, while the clock allows (the first always)
        if candidates and time.perf_counter() > deadline:
            break
        candidates[name] = baseline_schedule(name, process, nfe, solver, t_max, t_min, final=final)
        if metric in RUN_METRICS:  # per-draw terms, kept until the combined metric's scales are known
            runs[name] = _run_terms(score, candidates[name], solver, x0, reference, final, terms)
        else:
            scores[name] = measure(candidates[name])[0]
    if metric == "combined":
        for term in terms:
            sizes = [_term(term, v[term], level) for v in runs.values() if bool(torch.isfinite(v[term]).all())]
            middle = float(np.median(sizes)) if sizes else 0.0
            scale[term] = middle if middle > 0 else 1.0
    scores.update({name: combine(values, level, error=False)[0] for name, values in runs.items()})
    finite = {name: v for name, v in scores.items() if math.isfinite(v)}
    if not finite:
        raise ScheduleError(f"no baseline gives a finite {metric} for {solver!r} at nfe = {nfe}")
    start = min(finite, key=finite.get)
    start_schedule = candidates[start]

    def final_measure(schedule: Schedule) -> tuple[float, float, tuple[str, ...]]:
        if metric in RUN_METRICS:
            return (*measure(schedule, check_set), ())
        refused: tuple[str, ...] = ()
        if judge:
            try:
                return _judged(score, schedule, solver, metric, final)
            except ResolutionError as exc:  # a law too wide for the judge's node cap: measured by the objective
                refused = (f"judge_solver refused: {exc}",)
        value = exact_objective(score, schedule, solver, metric=metric, final=final)
        coarse = exact_objective(score, schedule, solver, metric=metric, final=final,
                                 points=_QUADRATURE[score.dim] // 2 + 1)
        return value, abs(value - coarse), (*refused, _UNJUDGED)

    judge_started = time.perf_counter()
    start_value, start_error, notes = final_measure(start_schedule)
    deadline -= _JUDGE_RESERVE * (time.perf_counter() - judge_started)

    top, bottom = sigma_ends(process, t_max, t_min)
    lam_0, lam_n = -math.log(top), -math.log(bottom)

    def schedule_of(logits: np.ndarray) -> Schedule:
        sigmas = np.exp(-lambda_from_logits(lam_0, lam_n, logits))
        return Schedule(times_of_sigmas(process, sigmas, t_max, t_min), np.zeros(n), "designed")

    best = {"value": finite[start], "logits": None}
    count = {"n": 0}

    def objective(logits: np.ndarray) -> float:
        if time.perf_counter() > deadline or count["n"] >= max_evaluations:
            raise _OutOfTime
        count["n"] += 1
        try:
            value = measure(schedule_of(logits), error=False)[0]
        except (ScheduleError, TimeRangeError, FloatingPointError):
            return math.inf
        value = value if math.isfinite(value) else math.inf
        if value < best["value"]:
            best["value"], best["logits"] = value, np.array(logits)
        return value

    def search(logits: np.ndarray) -> bool:
        """Powell from ``logits``, restarted from the best point (fresh directions) while that gains."""
        while True:
            before = best["value"]
            run = scipy.optimize.minimize(objective, logits, method="Powell",
                                          options={"xtol": 1e-3, "ftol": 1e-4, "maxfev": int(max_evaluations)})
            if best["logits"] is None or before - best["value"] <= _RESTART_GAIN * abs(before):
                return bool(run.success)
            logits = best["logits"]

    searched = []
    try:
        for name in sorted(finite, key=finite.get)[:max(int(starts), 1)]:
            logits = np.log(np.diff(-np.log(candidates[name].sigmas(process))))
            searched.append(search(logits - logits.mean()))
    except _OutOfTime:
        searched.append(False)
    converged = all(searched)

    schedule, value, error, improved = start_schedule, start_value, start_error, False
    if best["logits"] is not None and time.perf_counter() < started + float(max_time):
        d_value, d_error, design_notes = final_measure(schedule_of(best["logits"]))
        if d_value < start_value:
            schedule, value, error, improved, notes = schedule_of(best["logits"]), d_value, d_error, True, design_notes
    if improved and metric == "energy":
        notes = (*notes, *_distance_note(score, schedule, start_schedule, solver, *check_set[:2], final))
    return StepDesign(schedule=schedule, metric=metric, value=value, error=error, start=start,
                      start_value=start_value, start_error=start_error, baselines=scores, evaluations=count["n"],
                      seconds=time.perf_counter() - started, converged=converged, improved=improved, notes=notes)
