"""The schedule designer: levels and Langevin times that minimise the exactly propagated error.

Annealed Langevin (THEORY section 3) visits levels t_1 > ... > t_N = t_min and spends
Langevin time u_k at t_k, U = sum u_k. On a grid (d = 1, 2) its density is propagated
exactly by :func:`~scorehamiltonian.sampling.propagation.propagate_exact` (the SqRA generator):
q_k = D_k e^{-u_k H_k} D_k^{-1} q_{k-1}, D_k = diag(sqrt(P_k)), P_k the grid masses of
p_{t_k}, q_0 the prior. :func:`design_schedule` minimises the final TV(q_N, P_N) over

    log t_k = log t_max - (log t_max - log t_min) sum_{j <= k} softmax(a)_j,   k = 1..N,
    u = U softmax(b),

(2N unconstrained parameters; t_N = t_min, ordering and sum u = U hold by construction)
with L-BFGS on log TV. Gradient (adjoint, exact up to the finite difference in t):
g_N = sign(q_N - P_N) / 2, g_{k-1} = D_k^{-1} e^{-u_k H_k} D_k g_k (H_k symmetric), so
dTV/du_k = -(D_k g_k)^T H_k e^{-u_k H_k} D_k^{-1} q_{k-1}, and dTV/dlog t_k is the central
difference g_k^T (q_k(t_k e^d) - q_k(t_k e^-d)) / 2d with d = 1e-4.

Robustness: the same objective averaged (``robust="mean"``: log of the mean TV) or
maximised (``robust="worst"``: the smooth maximum (1/beta) log sum_i TV_i^beta, beta = 20,
within log(R) / beta of log max_i TV_i) over the nominal target and R perturbed ones
(:func:`perturbed_mixtures`: weights and means scaled by factors 1 + 0.2 xi, xi in [-1, 1]
from a seeded Latin hypercube, weights renormalised).

Caveat (measured, analysis/schedule_benchmark.py): on unbalanced metastable targets the final
TV is dominated by the basin-weight error, a signed smooth function of the schedule, so the
nominal design can drive it through zero: the design-grid TV then falls to ~1e-8, far below
the grid's own discretisation error (judge on a refined grid), and the schedule is tuned to
that one target (worse than a standard schedule under +-20% perturbations). Use
``robust="mean"`` for a schedule meant for an uncertain target.

How much a design can gain (measured, ``analysis/schedule_benchmark.py --floor-only``, judge
grid): at N = 10 and 20 the design is within 3% of the lowest TV found for annealed Langevin
at the same U by wider searches. Those searches were 50 levels from rule and random starts;
at N = 10, U = 10 also random starts, basin hopping, levels in any order, and a smooth
objective, the sum of the squared basin-weight errors. Where that floor is within 5x of the
best standard schedule, no schedule gains 5x. Two such cases:

- two modes 0.2 / 0.8 at U = 1: the design cancels the weight error (to 1e-4), and what is
  left, TV 5.5e-2, is the relaxation of the wide mode (std 0.6) inside its own basin. That
  relaxation is fastest at t_min (rate 1 / 0.36 per unit of Langevin time) and slower at any
  t > t_min. The floor is 5.5e-2 against 6.4e-2 for the best standard schedule; a 5x gain
  needs U of about 2.
- three modes 0.2 / 0.5 / 0.3: the error is in the basin weights. The middle basin keeps too
  much of the centred prior, because the weights freeze at t ~ 0.05-0.1. The two independent
  signed weight errors are not both driven through zero: minimising the squared weight errors
  alone still leaves the middle basin 1.4e-2 over at U = 10, and TV is at least the weight
  TV. The floor is 1.57e-2 at U = 10 and 2.3e-5 at U = 100, within 1.5-1.7x of the spectral
  rules (adiabatic-A/sqrt-gap, langevin-1/gap), and the gain stays near 1.1-1.6x for U = 10
  to 100.

Without a grid (d > 2, or a learned score with samples): :func:`~.reduced.reduced_prediction`, the
dynamics projected on the lowest Ritz modes of H_t with the overlaps between consecutive
levels, and ``design_schedule(..., model="reduced")``, which keeps the levels of the best
baseline (by predicted TV), optimises the Langevin split against that prediction and judges
the result on a reduced model from fresh draws.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.optimize
import torch

from ..common.errors import ScheduleError
from ..score.interface import DensityScore
from ..score.mixture import GaussianMixture
from ..score.processes import ForwardProcess
from ..spectral.grid import Grid
from .grid_model import GridModel, Target, default_grid, grid_target
from .propagation import propagate_exact
from .reduced import ReducedModel
from .schedules import Schedule, standard_schedule

__all__ = [
    "DEFAULT_BASELINES",
    "DesignResult",
    "design_grid",
    "design_schedule",
    "perturbed_mixtures",
    "relaxed_floor",
]

#: Step of the central difference in log t of the gradient.
_LOG_T_STEP = 1e-4
#: L-BFGS-B stops when an iteration lowers J = log TV by less than this relative amount.
_FTOL = 1e-6
#: Finite-difference step in theta of the step samplers' gradient.
_FD_STEP = 1e-6
#: Least decrease of J = log TV (round-off of the encode / decode is ~1e-15) that counts as better.
_MIN_GAIN = 1e-9
#: Sharpness of the smooth maximum of robust="worst".
_WORST_BETA = 20.0
#: Baselines tried by default (the spectral rules need a profile; pass them with ``baselines``).
DEFAULT_BASELINES = ("uniform", "log-uniform", "cosine", "edm", "log-snr")
Robust = Literal["mean", "worst"]


def perturbed_mixtures(mixture: GaussianMixture, n: int, scale: float = 0.2, seed: int = 0) -> list[GaussianMixture]:
    """``n`` mixtures with weights w_k (1 + scale xi_k) (renormalised) and means mu_k (1 + scale zeta_k).

    The factors xi_k, zeta_k (one per weight, one per mean coordinate) lie in [-1, 1] and
    are drawn as a Latin hypercube (each factor's n values fall one in each of n equal
    strata of [-1, 1], in an independent random order, uniform within the stratum), so even
    a few perturbations reach near both ends of every factor; ``seed`` seeds a
    ``torch.Generator``. Covariances are unchanged.
    """
    if not (0 <= scale < 1):
        raise ValueError(f"scale must lie in [0, 1); got {scale!r}")
    n = int(n)
    gen = torch.Generator().manual_seed(int(seed))
    shape = (n, mixture.weights.numel() + mixture.means.numel())
    order = torch.argsort(torch.rand(shape, dtype=torch.float64, generator=gen), dim=0)
    factors = 2 * (order + torch.rand(shape, dtype=torch.float64, generator=gen)) / n - 1
    out = []
    for xi in factors:
        w = mixture.weights * (1 + scale * xi[: mixture.weights.numel()])
        means = mixture.means * (1 + scale * xi[mixture.weights.numel():].reshape(mixture.means.shape))
        out.append(GaussianMixture(w / w.sum(), means, mixture.covs))
    return out


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max())
    return e / e.sum()


def _softmax_pullback(pi: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """d/da of J(softmax(a)) from dJ/dpi: pi (grad - pi . grad)."""
    return pi * (grad - pi @ grad)


@dataclass(frozen=True)
class _Parameters:
    """theta = (a, b) <-> (times, u) (module docstring)."""

    t_max: float
    t_min: float
    budget: float
    n_levels: int

    @property
    def span(self) -> float:
        return math.log(self.t_max) - math.log(self.t_min)

    def decode(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(times, u); theta of N entries (times only: step samplers) gives u = 0."""
        a, b = theta[: self.n_levels], theta[self.n_levels:]
        c = np.cumsum(_softmax(a))
        log_t = math.log(self.t_max) - self.span * np.concatenate([[0.0], c])
        times = np.exp(log_t)
        times[0], times[-1] = self.t_max, self.t_min
        return times, self.budget * _softmax(b) if b.size else np.zeros(self.n_levels)

    def encode(self, schedule: Schedule, times_only: bool = False) -> np.ndarray:
        """theta of a schedule (N entries with ``times_only``); zero Langevin times are floored at 1e-9 of U / N."""
        a = np.log(-np.diff(np.log(schedule.times)))
        if times_only:
            return a - a.mean()
        b = np.log(np.maximum(schedule.langevin_time, 1e-9 * self.budget / self.n_levels))
        return np.concatenate([a - a.mean(), b - b.mean()])

    def pullback(self, theta: np.ndarray, d_log_t: np.ndarray, d_u: np.ndarray) -> np.ndarray:
        """dJ/dtheta from dJ/dlog t_k (k = 1..N; the last entry is ignored: t_N = t_min) and dJ/du."""
        a, b = theta[: self.n_levels], theta[self.n_levels:]
        d_c = -self.span * d_log_t
        d_c[-1] = 0.0
        d_pi = np.cumsum(d_c[::-1])[::-1]
        return np.concatenate([_softmax_pullback(_softmax(a), d_pi),
                               _softmax_pullback(_softmax(b), self.budget * d_u)])


@dataclass
class _Target:
    """One target on the design grid: its model, prior masses q_0 and final masses P_N (both read from
    propagate_exact with no Langevin time, so that they are the judge's own)."""

    model: GridModel
    q0: np.ndarray
    p: np.ndarray

    @classmethod
    def build(cls, target: Target, process: ForwardProcess, grid: Grid, t_max: float, t_min: float) -> _Target:
        model = GridModel(target, process, grid)
        start = propagate_exact(target, process, Schedule([t_max, t_min], [0.0]), model=model)
        volume = grid.cell_volume
        return cls(model, start.q * volume / (start.q * volume).sum(), start.p * volume)

    @staticmethod
    def _negligible(u: np.ndarray) -> np.ndarray:
        """u with entries below 1e-12 max(u) set to 0 (no relaxation; avoids overflow in e^{-uH})."""
        return np.where(u < 1e-12 * u.max(), 0.0, u)

    def _level_step(self, q: np.ndarray, t: float, u: float) -> np.ndarray:
        level = self.model.level(t)
        return level.psi * self.model.relax(q / level.psi, level, u)

    def _forward(self, times: np.ndarray, u: np.ndarray) -> tuple[list[Any], list[np.ndarray], list[np.ndarray],
                                                                  np.ndarray]:
        """Levels, the masses entering each level, the relaxed phi of each level, and q_N."""
        levels = [self.model.level(float(t)) for t in times[1:]]
        inputs, relaxed = [], []
        q = self.q0
        for level, uk in zip(levels, u):
            inputs.append(q)
            relaxed.append(self.model.relax(q / level.psi, level, float(uk)))
            q = level.psi * relaxed[-1]
        return levels, inputs, relaxed, q

    def tv(self, times: np.ndarray, u: np.ndarray) -> float:
        q = self._forward(times, self._negligible(u))[-1]
        return 0.5 * float(np.abs(q - self.p).sum())

    def tv_and_gradient(self, times: np.ndarray, u: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """TV and its derivatives in log t_k and u_k (module docstring)."""
        u = self._negligible(u)
        levels, inputs, relaxed, q = self._forward(times, u)
        tv = 0.5 * float(np.abs(q - self.p).sum())
        g = 0.5 * np.sign(q - self.p)
        d_log_t, d_u = np.zeros(u.size), np.zeros(u.size)
        t_lo, t_hi = self.model.process.t_min, self.model.process.t_max
        for k in reversed(range(u.size)):
            level, uk = levels[k], float(u[k])
            weighted = level.psi * g
            d_u[k] = -float(weighted @ (self.model.hamiltonian(level) @ relaxed[k]))
            if k < u.size - 1 and uk > 0:
                up = min(float(times[k + 1]) * math.exp(_LOG_T_STEP), t_hi)
                down = max(float(times[k + 1]) * math.exp(-_LOG_T_STEP), t_lo)
                change = self._level_step(inputs[k], up, uk) - self._level_step(inputs[k], down, uk)
                d_log_t[k] = float(g @ change) / (math.log(up) - math.log(down))
            g = self.model.relax(weighted, level, uk) / level.psi
        return tv, d_log_t, d_u


def _aggregate(values: np.ndarray, robust: Robust | None) -> tuple[float, np.ndarray]:
    """J = log of the mean TV (robust None / "mean") or the smooth maximum (1/beta) log sum TV_i^beta,
    with dJ/dTV_i."""
    if robust == "worst":
        logs = np.log(values)
        top = logs.max()
        share = np.exp(_WORST_BETA * (logs - top))
        total = share.sum()
        return float(top + math.log(total) / _WORST_BETA), share / total / values
    mean = float(values.mean())
    return math.log(mean), np.full(values.size, 1.0 / (values.size * mean))


@dataclass
class _Objective:
    """J(theta) over the targets (nominal first) with its gradient; counts evaluations."""

    targets: list[_Target]
    parameters: _Parameters
    robust: Robust | None
    n_evaluations: int = 0

    def schedule_value(self, times: np.ndarray, u: np.ndarray) -> tuple[float, np.ndarray]:
        """J and the TV of every target for a schedule's arrays."""
        tvs = np.array([target.tv(times, u) for target in self.targets])
        return _aggregate(np.maximum(tvs, 1e-300), self.robust)[0], tvs

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        self.n_evaluations += 1
        times, u = self.parameters.decode(theta)
        parts = [target.tv_and_gradient(times, u) for target in self.targets]
        tvs = np.maximum(np.array([p[0] for p in parts]), 1e-300)
        value, weights = _aggregate(tvs, self.robust)
        d_log_t = sum(w * p[1] for w, p in zip(weights, parts))
        d_u = sum(w * p[2] for w, p in zip(weights, parts))
        return value, self.parameters.pullback(theta, d_log_t, d_u)


@dataclass
class _StepObjective:
    """J(theta) of the reverse SDE / probability-flow ODE on the step grid ``times`` (no gradient:
    L-BFGS-B takes finite differences). A step that folds space (ScheduleError) counts as TV = 1."""

    targets: list[_Target]
    parameters: _Parameters
    robust: Robust | None
    sampler: str
    n_evaluations: int = 0

    def _tv(self, target: _Target, times: np.ndarray) -> float:
        model = target.model
        try:
            return propagate_exact(model.target, model.process, Schedule(times, np.zeros(times.size - 1)),
                                   sampler=self.sampler, model=model).tv
        except ScheduleError:
            return 1.0

    def schedule_value(self, times: np.ndarray, u: np.ndarray) -> tuple[float, np.ndarray]:
        tvs = np.array([self._tv(target, times) for target in self.targets])
        return _aggregate(np.maximum(tvs, 1e-300), self.robust)[0], tvs

    def __call__(self, theta: np.ndarray) -> float:
        self.n_evaluations += 1
        return self.schedule_value(*self.parameters.decode(theta))[0]


@dataclass(frozen=True, eq=False)
class DesignResult:
    """What :func:`design_schedule` found (``full_output=True``).

    schedule : the designed schedule (or the best baseline when ``fell_back``).
    error : its design error exp(J) on the design grid: the TV (nominal design), the mean TV
        over the targets (robust="mean") or their smooth maximum (robust="worst");
        tv : (R + 1,) its TV on each target (nominal first).
    baseline, baseline_error, baseline_tv : the best baseline schedule and the same figures.
    standard : {name: design error} of every baseline tried.
    fell_back : the optimised schedule was not better than the best baseline, so the baseline
        is returned (a warning says so).
    converged : the optimiser of the best start met its tolerance (not: stopped by maxiter or
        max_time); message : its message. starts : names of the baselines started from.
    n_evaluations : objective + gradient evaluations in all; wall_time : seconds.
    grid : the design grid; targets : the targets (nominal first) as GaussianMixtures or
    DensityScores (None
    and () for a reduced-model design, whose TVs are predictions of the reduced model).
    The TVs carry the design grid's discretisation error: judge on a refined grid.
    """

    schedule: Schedule
    error: float
    tv: np.ndarray
    baseline: Schedule
    baseline_error: float
    baseline_tv: np.ndarray
    standard: dict[str, float]
    fell_back: bool
    converged: bool
    message: str
    starts: tuple[str, ...]
    n_evaluations: int
    wall_time: float
    grid: Grid | None
    targets: tuple[Target, ...] = field(repr=False)


def _check_design_args(n_levels: int, budget: float, t_max: float, t_min: float, process: ForwardProcess,
                       sampler: str, robust: str | None) -> None:
    if int(n_levels) != n_levels or n_levels < 1:
        raise ScheduleError(f"n_levels must be an integer >= 1; got {n_levels!r}")
    if sampler not in ("langevin", "sde", "ode"):
        raise ValueError(f"sampler must be 'langevin', 'sde' or 'ode'; got {sampler!r}")
    if sampler == "langevin" and not (math.isfinite(budget) and budget > 0):
        raise ScheduleError(f"budget (total Langevin time) must be finite and > 0; got {budget!r}")
    if sampler != "langevin" and budget != 0:
        raise ScheduleError(f"the {sampler} sampler spends no Langevin time: pass budget=0; got {budget!r}")
    process.time(torch.tensor([t_max, t_min], dtype=torch.float64))
    if not t_max > t_min > 0:
        raise ScheduleError(f"need t_max > t_min > 0 (levels are spaced in log t); got {t_max!r}, {t_min!r}")
    if robust not in (None, "mean", "worst"):
        raise ValueError(f"robust must be None, 'mean' or 'worst'; got {robust!r}")


def design_grid(targets: Sequence[Target], process: ForwardProcess, t_min: float, t_max: float,
                **grid_options: Any) -> Grid:
    """One grid for all targets: the union of their :func:`default_grid` boxes at the finest spacing."""
    grids = [default_grid(m, process, t_min, t_max, **grid_options) for m in targets]
    lo = np.min([g.lo for g in grids], axis=0)
    hi = np.max([g.hi for g in grids], axis=0)
    h = np.min([g.h for g in grids], axis=0)
    n = [max(3, math.ceil((b - a) / s) - 1) for a, b, s in zip(lo, hi, h)]
    return Grid(lo.tolist(), hi.tolist(), n)


def _optimise(objective: _Objective | _StepObjective, theta: np.ndarray, maxiter: int, deadline: float,
              ftol: float = _FTOL) -> scipy.optimize.OptimizeResult:
    """L-BFGS-B from theta (bounds +-20 on the centred softmax logits), stopped at the deadline;
    finite-difference gradients (step 1e-6) for the step samplers."""

    def stop(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        if time.perf_counter() > deadline:
            raise StopIteration

    exact_gradient = isinstance(objective, _Objective)
    return scipy.optimize.minimize(objective, theta, jac=exact_gradient, method="L-BFGS-B", callback=stop,
                                   bounds=[(-20.0, 20.0)] * theta.size,
                                   options={"maxiter": int(maxiter), "ftol": ftol, "eps": _FD_STEP})


def _best_run(objective: _Objective | _StepObjective, starts: list[Schedule], maxiter: int, deadline: float
              ) -> scipy.optimize.OptimizeResult:
    """The run of lowest J among L-BFGS runs from each start."""
    times_only = isinstance(objective, _StepObjective)
    runs = [_optimise(objective, objective.parameters.encode(s, times_only), maxiter, deadline) for s in starts]
    return min(runs, key=lambda run: run.fun)


def _use_reduced(score: Any, model: str) -> bool:
    if model not in ("auto", "grid", "reduced"):
        raise ValueError(f"model must be 'auto', 'grid' or 'reduced'; got {model!r}")
    if model != "auto":
        return model == "reduced"
    exact = isinstance(score, (GaussianMixture, DensityScore)) and score.dim is not None and score.dim <= 2
    return not exact and hasattr(score, "process")


def _design_reduced(score: Any, n_levels: int, budget: float, t_max: float, t_min: float, baselines: Sequence[str],
                    maxiter: int, options: dict[str, Any], started: float) -> DesignResult:
    """Reduced-model design: the best baseline's levels with the Langevin split optimised (see design_schedule)."""
    settings = {"n_modes": 3, "n_samples": 20000, "samples": None, "seed": 0, "ritz_options": None, **options}
    candidates = {name: standard_schedule(name, n_levels, t_max, t_min, score.process, budget) for name in baselines}
    models = {name: ReducedModel.build(score, s.times, **settings) for name, s in candidates.items()}
    standard = {name: models[name].predict(s.langevin_time).tv for name, s in candidates.items()}
    best = min(standard, key=standard.get)
    reduced, baseline = models[best], candidates[best]

    def objective(b: np.ndarray) -> tuple[float, np.ndarray]:
        logits = torch.tensor(b, requires_grad=True)
        tv = 0.5 * (reduced.final @ reduced.coefficients(budget * torch.softmax(logits, 0))).abs().mean()
        loss = torch.log(tv)
        loss.backward()
        return float(loss), logits.grad.numpy()

    start = np.log(baseline.langevin_time / baseline.budget)
    run = scipy.optimize.minimize(objective, start - start.mean(), jac=True, method="L-BFGS-B",
                                  bounds=[(-20.0, 20.0)] * n_levels, options={"maxiter": int(maxiter), "ftol": _FTOL})
    designed = Schedule(baseline.times, budget * _softmax(run.x), "designed-reduced")
    check = ReducedModel.build(score, baseline.times, **{**settings, "seed": settings["seed"] + 1})
    value, base_value = (check.predict(s.langevin_time).tv for s in (designed, baseline))
    fell_back = not math.log(value) < math.log(base_value) - _MIN_GAIN
    if fell_back:
        warnings.warn(f"design_schedule: the reduced design (predicted TV {value:.4g} on fresh draws) is not better "
                      f"than the best baseline {best!r} ({base_value:.4g}); returning the baseline", stacklevel=3)
        designed, value = baseline, base_value
    return DesignResult(designed, value, np.array([value]), baseline, base_value, np.array([base_value]),
                        standard, fell_back, bool(run.success), str(run.message), (best,), int(run.nfev),
                        time.perf_counter() - started, None, ())


def relaxed_floor(
    mixture: GaussianMixture,
    process: ForwardProcess,
    n_levels: int,
    budget: float,
    t_max: float = 5.0,
    t_min: float = 1e-3,
    *,
    n_random: int = 8,
    seed: int = 0,
    maxiter: int = 300,
    ftol: float = 1e-9,
) -> tuple[Schedule, list[float]]:
    """The lowest design-grid TV found for annealed Langevin with ``n_levels`` levels and budget U.

    A wider search than :func:`design_schedule`, to measure how much any schedule can gain:
    L-BFGS (``maxiter`` iterations, ``ftol``) on the designer's objective (nominal target,
    :func:`design_grid`) from the log-uniform and cosine schedules and from ``n_random``
    random logits (standard deviation 1.5, numpy generator seeded with ``seed``). Returns the
    best schedule (named "floor") and the final TVs of every start, ascending.
    """
    _check_design_args(n_levels, budget, float(t_max), float(t_min), process, "langevin", None)
    n_levels = int(n_levels)
    grid = design_grid([mixture], process, t_min, t_max)
    parameters = _Parameters(t_max, t_min, budget, n_levels)
    objective = _Objective([_Target.build(mixture, process, grid, t_max, t_min)], parameters, None)
    rng = np.random.default_rng(seed)
    starts = [parameters.encode(standard_schedule(rule, n_levels, t_max, t_min, process, budget))
              for rule in ("log-uniform", "cosine")]
    starts += [rng.normal(scale=1.5, size=2 * n_levels) for _ in range(n_random)]
    runs = [_optimise(objective, theta, maxiter, math.inf, ftol=ftol) for theta in starts]
    best = min(runs, key=lambda run: run.fun)
    return Schedule(*parameters.decode(best.x), "floor"), sorted(float(np.exp(run.fun)) for run in runs)


def design_schedule(
    score: Any,
    process: ForwardProcess | None,
    n_levels: int,
    budget: float,
    t_max: float = 5.0,
    t_min: float = 1e-3,
    *,
    sampler: Literal["langevin", "sde", "ode"] = "langevin",
    robust: Robust | None = None,
    n_perturbations: int = 4,
    perturbation: float = 0.2,
    seed: int = 0,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    profile: Any = None,
    n_starts: int = 2,
    maxiter: int = 100,
    max_time: float = math.inf,
    grid: Grid | None = None,
    model: Literal["auto", "grid", "reduced"] = "auto",
    reduced_options: dict[str, Any] | None = None,
    full_output: bool = False,
    **grid_options: Any,
) -> Schedule | DesignResult:
    """An annealed-Langevin schedule minimising the exactly propagated final TV (module docstring).

    Returns a :class:`Schedule` with N + 1 ``times`` from t_max down to t_min and N Langevin
    times summing to ``budget`` (or a :class:`DesignResult` with ``full_output``).

    score : the target whose noised marginals are propagated on the grid, d = 1 or 2: a
        :class:`GaussianMixture` (then ``process`` is needed) or any score with an exact
        log-density (an :class:`ExactScore`, ``as_score(log_prob=...)``, a NoisedDensity;
        :class:`~.grid_model.GridModel`); with model="reduced", any score.
    sampler : "langevin" (levels and Langevin times, exact adjoint gradient), or "sde" /
        "ode" (the step grid of the reverse SDE / probability-flow ODE, N + 1 times; budget
        must be 0; the N - 1 free times are optimised with finite-difference gradients, one
        propagation per parameter, so keep N small).
    robust : None (the nominal target), "mean" or "worst" (over the nominal target and
        ``n_perturbations`` targets from :func:`perturbed_mixtures` (``perturbation``, ``seed``)).
    baselines : the :func:`standard_schedule` names evaluated first (``profile`` is passed on
        for the spectral ones); the optimiser starts from the ``n_starts`` best. If the best
        optimised schedule does not lower J by more than 1e-9, the best baseline is
        returned with a warning (``fell_back``): the result is never worse than the baselines
        on the design grid.
    maxiter, max_time : L-BFGS iterations per start and a wall-clock limit (seconds) for all
        starts together (the last iterate is kept).
    grid : the design grid (default :func:`design_grid` of the targets, ``grid_options``
        passed to :func:`default_grid`, e.g. points_per_width). The TV on the design grid
        carries its discretisation error: judge the result on a refined grid
        (``propagate_exact(..., refine=True)``).
    model : "grid" (exact propagation; the target must have an exact 1D / 2D log-density),
        "reduced" (the reduced model of :func:`~.reduced.reduced_prediction`: any score, any d) or
        "auto" (grid when possible). The reduced design predicts every baseline's final TV,
        keeps the levels of the best one and optimises the Langevin split u = U softmax(b)
        (L-BFGS, gradient by autograd through the reduced dynamics); ``reduced_options``
        (n_modes, n_samples, samples, seed, ritz_options) go to the reduced model. Its
        ``error`` and ``baseline_error`` are the predicted TVs of the design and of the best
        baseline by a second reduced model, built from fresh draws (``seed + 1``): the search
        fits its own model's sampling noise (on a learned 2D model it drove that model's
        prediction to 3e-8, where fresh draws read 2e-4 - 2e-3), so the model it searched on
        does not judge it; the design falls back to the baseline unless it is better there.
        These are predictions, with the reduced model's accuracy (see the module notes and the
        benchmark), not exact TVs; ``standard`` holds the search model's predictions.
    """
    started = time.perf_counter()
    if _use_reduced(score, model):
        process = score.process if process is None else process
        _check_design_args(n_levels, budget, float(t_max), float(t_min), process, sampler, robust)
        if robust is not None or sampler != "langevin":
            raise ValueError("robust designs and the sde / ode samplers need the grid model (an exact 1D / 2D "
                             "log-density); the reduced model designs annealed Langevin only")
        result = _design_reduced(score, int(n_levels), float(budget), float(t_max), float(t_min), baselines,
                                 maxiter, reduced_options or {}, started)
        return result if full_output else result.schedule
    target, process = grid_target(score, process)
    t_max, t_min, budget = float(t_max), float(t_min), float(budget)
    _check_design_args(n_levels, budget, t_max, t_min, process, sampler, robust)
    n_levels = int(n_levels)
    nominal = [target]
    if robust is not None:
        if not isinstance(target, GaussianMixture):
            raise ValueError("robust designs perturb a Gaussian mixture's weights and means; the target is "
                             f"{target!r}: pass robust=None")
        nominal += perturbed_mixtures(target, n_perturbations, perturbation, seed)
    grid = grid if grid is not None else design_grid(nominal, process, t_min, t_max, **grid_options)
    parameters = _Parameters(t_max, t_min, budget, n_levels)
    targets = [_Target.build(m, process, grid, t_max, t_min) for m in nominal]
    objective = (_Objective(targets, parameters, robust) if sampler == "langevin"
                 else _StepObjective(targets, parameters, robust, sampler))
    candidates = {name: standard_schedule(name, n_levels, t_max, t_min, process, budget, profile=profile)
                  for name in baselines}
    standard = {name: objective.schedule_value(s.times, s.langevin_time)[0] for name, s in candidates.items()}
    starts = tuple(sorted(standard, key=standard.get)[: int(n_starts)])
    best = _best_run(objective, [candidates[name] for name in starts], maxiter, started + max_time)
    designed = Schedule(*parameters.decode(best.x), "designed")
    value, tvs = objective.schedule_value(designed.times, designed.langevin_time)
    baseline = candidates[starts[0]]
    base_value, base_tvs = objective.schedule_value(baseline.times, baseline.langevin_time)
    fell_back = not value < base_value - _MIN_GAIN
    if fell_back:
        warnings.warn(f"design_schedule: the optimised schedule (J = {value:.4g}) is not better than the best "
                      f"baseline {baseline.name!r} (J = {base_value:.4g}); returning the baseline", stacklevel=2)
        designed, value, tvs = baseline, base_value, base_tvs
    if not full_output:
        return designed
    return DesignResult(designed, math.exp(value), tvs, baseline, math.exp(base_value), base_tvs,
                        {name: math.exp(v) for name, v in standard.items()}, fell_back,
                        bool(best.success), str(best.message), starts,
                        objective.n_evaluations, time.perf_counter() - started, grid, tuple(nominal))
