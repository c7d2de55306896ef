"""Exact propagation of every solver on 1D / 2D grids: the judge of step schedules (THEORY sections 3, 4).

No Monte Carlo: the law of a solver's output (:mod:`.solvers`, the same moves :func:`sample`
runs) is computed on a regular grid of x for a target with an exact log-density (a Gaussian
mixture, or any DensityScore: :class:`~.grid_model.GridModel`), whose noised marginals, scores
and score Jacobians are exact, and compared with the target at the last
level: p_{t_N}, or the data p_0 (alpha = 1, sigma = 0) after a step to sigma = 0.

Deterministic solvers (euler, heun, dpmpp-2m, ddim, euler-t): backward characteristics. Every
final node y is pulled back to its start x_0 and q(y) = q_0(x_0) / |det dF/dx_0|, with q_0 the
initial law in closed form, so the density is exact up to Newton's tolerance (1e-12 (1 + |y|))
at every node, however far out. Single-step solvers invert their moves one by one (Newton on
each step map, Jacobian by autograd through the solver's own step); DPM-Solver++(2M), whose
step also reads the previous denoised value, is inverted as the whole map F = x_0 -> x_N by
Newton from the DDIM characteristic of the same levels.

Stochastic solvers (euler-maruyama(-t), ancestral, langevin, pc): the density is stepped on the
grid, each move x -> mean(x) + std z by :func:`~.propagation.kernel_step` (kernel quadrature
when resolved, push-forward and Gaussian smoothing otherwise). Mass a step carries beyond the
box is lost, never renormalised: it is reported as ``mass_lost`` and counted in ``error``.

The box: :func:`solver_grid` widens the default grid of the target (:func:`default_grid`) to
hold a pilot Monte Carlo run of the same solver (4000 paths, all states for the stochastic
solvers, the final one for the deterministic ones) with a margin of a quarter of its extent
beyond the extremes, at the default spacing.

Metrics, with q the solver's density at the nodes as propagated (mass sum q vol = 1 - mass_lost)
and p the target's: TV = 1/2 sum |q - p| vol; KL(q || p) = sum q (log q - log p) vol from the
log-densities (log q exact for the deterministic solvers, log of the quadrature for the
stochastic ones; log p exact), finite wherever q is; chi^2 = sum (q - p)^2 / p vol;
Hellinger = sqrt(1/2 sum (sqrt q - sqrt p)^2 vol). ``error`` bounds |TV - TV over all space|:
(mass_lost + boundary_mass) / 2, plus the Newton tolerance per step and summation round-off.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from ..common.errors import ResolutionError
from ..score.interface import ExactScore
from ..score.mixture import GaussianMixture
from ..score.processes import ForwardProcess
from ..spectral.grid import Grid
from ..spectral.operator import BoundaryMassWarning, ResolutionWarning
from .grid_model import (
    GridModel,
    Initial,
    Level,
    Target,
    default_grid,
    evaluate_marginal,
    grid_target,
    initial_mass,
)
from .propagation import StepMap, invert_map, kernel_step
from .schedules import Schedule, as_schedule
from .solvers import (
    DEFAULT_STEP_SCALE,
    Field,
    Final,
    Levels,
    Move,
    prior_samples,
    sample,
    solver_moves,
    solver_nfe,
)

__all__ = ["SolverJudgement", "judge_solver", "solver_grid"]

#: Newton tolerance of invert_map (relative to 1 + |y|), per inverted step.
_NEWTON_TOL = 1e-12
#: Below this many points per width of the target's sharpest component: a warning; below 1, refused.
_WARN_POINTS_PER_WIDTH, _MIN_POINTS_PER_WIDTH = 4.0, 1.0
#: Lost or cut-off mass above which a judgement is not "resolved".
_MASS_TOL = 1e-7
#: Pilot paths and margin (fraction of their extent) of solver_grid; node caps per axis.
_PILOT, _MARGIN = 4000, 0.25
_MAX_NODES = {1: 16383, 2: 192}
#: Samples of the whole map over the initial box (1D preimage search) and per axis of the 2D deposition.
_FINE, _FINE_2D = 4001, 600


@dataclass(frozen=True)
class SolverJudgement:
    """The exact law of a solver's output on a grid against the target (module docstring).

    grid; q, p : (N,) densities at the nodes (q as propagated, not renormalised); log_q, log_p;
    tv, kl, chi2, hellinger : distances of q from p; error : bound on |tv - TV over all space|;
    mass_lost : 1 - sum q vol; boundary_mass : the target's (and, for the stochastic solvers,
    the initial law's) mass outside the box; nfe : score evaluations of one run;
    solver, final, initial, schedule : what ran; points_per_width : the target's sharpest
    component's std over the spacing; converged : every Newton inversion converged;
    resolved : points_per_width >= 4, mass_lost and boundary_mass <= max(1e-7, tv / 100),
    converged, no notes; notes : the reasons otherwise; tv_refined, discretisation_error : with
    ``refine=True``, TV on the grid of half the spacing and |tv - tv_refined|.
    """

    grid: Grid
    q: np.ndarray
    p: np.ndarray
    log_q: np.ndarray
    log_p: np.ndarray
    tv: float
    kl: float
    chi2: float
    hellinger: float
    error: float
    mass_lost: float
    boundary_mass: float
    nfe: int
    solver: str
    final: str
    initial: str
    schedule: Schedule
    points_per_width: float
    converged: bool
    resolved: bool
    notes: tuple[str, ...]
    tv_refined: float | None = None
    discretisation_error: float | None = None


def _target(target: Any, process: ForwardProcess | None) -> tuple[Any, Target]:
    """(the score the solver runs on, the grid model's target) (:func:`~.grid_model.grid_target`)."""
    held, process = grid_target(target, process)
    return (ExactScore(held, process) if isinstance(held, GaussianMixture) else held), held


def _initial_samples(score: Any, initial: Initial, t_max: float, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if initial == "exact":
        return score.sample(n, t_max, generator)
    return prior_samples(score.process, t_max, n, score.dim, generator)


def solver_grid(target: Target, process: ForwardProcess | None, schedule: Any, solver: str,
                *, final: Final = "t_min", initial: Initial = "prior", **options: Any) -> Grid:
    """The default grid of the target over the schedule's times, widened to hold a pilot run of the
    solver (module docstring); ``options`` (steps_per_level, step_scale) go to the solver."""
    score, held = _target(target, process)
    schedule = as_schedule(schedule, score.process)
    base = default_grid(held, score.process, schedule.t_min, schedule.t_max)
    x0 = _initial_samples(score, initial, schedule.t_max, _PILOT)
    with torch.no_grad():
        run = sample(solver, score, x0, schedule, final=final, keep_trajectory=True,
                     generator=torch.Generator().manual_seed(1), **options)
    states = torch.cat(run.trajectory if solver in _STOCHASTIC else (run.x,)).numpy()
    lo, hi = states.min(axis=0), states.max(axis=0)
    lo, hi = lo - _MARGIN * (hi - lo), hi + _MARGIN * (hi - lo)
    lo, hi = np.minimum(lo, base.lo), np.maximum(hi, base.hi)
    cap = _MAX_NODES[base.dim]
    n = [min(cap, max(3, math.ceil((b - a) / h) - 1)) for a, b, h in zip(lo, hi, base.h)]
    return Grid(lo.tolist(), hi.tolist(), n)


#: Relative step of the central differences of a step map autograd cannot differentiate (~eps^(1/3)).
_FD_STEP = 6e-6
_STOCHASTIC = ("euler-maruyama", "euler-maruyama-t", "ancestral", "langevin", "pc")


def _differentiable(field: Field, dim: int) -> bool:
    """Whether autograd sees through the field's score (a NoisedDensity's quadrature it does not)."""
    with torch.enable_grad():
        x = torch.zeros(1, dim, dtype=torch.float64, requires_grad=True)
        return bool(field.score(x, float(field.levels.times[0])).requires_grad)


def _numpy_map(function: Any, field: Field) -> StepMap:
    """x (n, d) numpy -> (f(x), df/dx (n, d, d)) for a torch map f acting row by row: by autograd,
    or, where autograd cannot see through the field's score, by central differences (step
    _FD_STEP (1 + |x|), error ~1e-10 relative)."""
    smooth: list[bool] = []

    def step(x_np: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not smooth:
            smooth.append(_differentiable(field, x_np.shape[1]))
        if smooth[0]:
            with torch.enable_grad():
                x = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
                out = function(x)
                rows = [torch.autograd.grad(out[:, j].sum(), x, retain_graph=j < x.shape[1] - 1)[0]
                        for j in range(x.shape[1])]
            return out.detach().numpy(), torch.stack(rows, dim=1).numpy()
        h = _FD_STEP * (1.0 + np.abs(x_np))
        columns = []
        with torch.no_grad():
            out = function(torch.from_numpy(x_np))
            for a in range(x_np.shape[1]):
                shift = np.zeros_like(x_np)
                shift[:, a] = h[:, a]
                plus, minus = function(torch.from_numpy(x_np + shift)), function(torch.from_numpy(x_np - shift))
                columns.append((plus - minus).numpy() / (2.0 * h[:, a:a + 1]))
        return out.numpy(), np.stack(columns, axis=2)

    return step


def _whole_map(field: Field, moves: list[Move]) -> StepMap:
    """x_0 -> (x_N, dx_N / dx_0): the solver's run without noise, threading its state."""

    def whole(x0: torch.Tensor) -> torch.Tensor:
        state, x = None, x0
        for move in moves:
            x, _, state = move.apply(field, x, state)
        return x

    return _numpy_map(whole, field)


def _characteristics(field: Field, moves: list[Move], y: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """Start points x_0 of the final nodes y, log |det dx_N / dx_0| there, convergence, and how many
    inverted maps have det <= 0 at some preimage (a map that folds space)."""
    if all(move.markov for move in moves):
        x, log_det, converged, folds = y, np.zeros(y.shape[0]), True, 0
        for move in reversed(moves):
            x, det, ok = invert_map(_numpy_map(lambda z, m=move: m.apply(field, z, None)[0], field), x)
            log_det += np.log(np.abs(det))
            converged &= ok
            folds += int((det <= 0).any())
        return x, log_det, converged, folds
    start = _characteristics(field, solver_moves("ddim", field.levels), y)[0]
    x, det, converged = invert_map(_whole_map(field, moves), y, start=start)
    return x, np.log(np.abs(det)), converged, int((det <= 0).any())


def _initial_box(marginal: Any) -> tuple[np.ndarray, np.ndarray]:
    """A box holding the initial law but ~1e-19 of its mass: 9 standard deviations around every component."""
    spread = 9.0 * np.sqrt(marginal.var.max(axis=1))[:, None]
    return (marginal.means - spread).min(axis=0), (marginal.means + spread).max(axis=0)


def _preimages_1d(model: GridModel, field: Field, moves: list[Move], marginal: Any
                  ) -> tuple[np.ndarray, bool, list[str]]:
    """log q at the nodes summed over every preimage: q(y) = sum_{F(x) = y} q_0(x) / |F'(x)| (1D).

    F is sampled on _FINE points of the initial law's box; between sign changes of F' it is
    monotone, and each node in a piece's range is inverted there (interpolation, then Newton)."""
    whole = _whole_map(field, moves)
    lo, hi = _initial_box(marginal)
    xs = np.linspace(lo[0], hi[0], _FINE)[:, None]
    fx, slope = whole(xs)
    fx, slope = fx[:, 0], slope[:, 0, 0]
    edges = np.flatnonzero(np.sign(slope[1:]) != np.sign(slope[:-1])) + 1
    y = model.points[:, 0]
    nodes, starts = [], []
    for piece in np.split(np.arange(xs.shape[0]), edges):
        if piece.size < 2:
            continue
        order = piece if fx[piece[-1]] > fx[piece[0]] else piece[::-1]
        inside = np.flatnonzero((y >= fx[order[0]]) & (y <= fx[order[-1]]))
        nodes.append(inside)
        starts.append(np.interp(y[inside], fx[order], xs[order, 0]))
    nodes_all, start = np.concatenate(nodes), np.concatenate(starts)[:, None]
    x0, det, converged = invert_map(whole, y[nodes_all][:, None], start=start)
    terms = evaluate_marginal(marginal, x0)[0] - np.log(np.abs(det))
    log_q = np.full(y.size, -np.inf)
    np.logaddexp.at(log_q, nodes_all, terms)
    notes = []
    if edges.size:
        notes.append(f"the solver's map folds space ({edges.size} turning points): its density is singular at the "
                     "caustics, summed here over every preimage; TV carries the quadrature error of the singularities")
    return log_q, converged, notes


def _deposited(model: GridModel, field: Field, moves: list[Move], marginal: Any) -> np.ndarray:
    """Densities at the nodes by pushing a fine quadrature of q_0 (_FINE_2D^2 points) through the map and
    depositing each point's mass on its cell's corners with bilinear weights (mass beyond the box is lost)."""
    lo, hi = _initial_box(marginal)
    axes = [np.linspace(a, b, _FINE_2D) for a, b in zip(lo, hi)]
    x0 = np.stack([m.reshape(-1) for m in np.meshgrid(*axes, indexing="ij")], axis=1)
    weight = np.exp(evaluate_marginal(marginal, x0)[0]) * np.prod([a[1] - a[0] for a in axes])
    with torch.no_grad():
        state, x = None, torch.tensor(x0)
        for move in moves:
            x, _, state = move.apply(field, x, state)
    coords = (x.numpy() - np.array(model.grid.lo)) / model.h - 1.0
    mass = np.zeros(model.grid.n)
    base = np.floor(coords).astype(int)
    frac = coords - base
    for corner in np.ndindex(2, 2):
        index = base + np.array(corner)
        w = weight * np.prod(np.where(np.array(corner) == 1, frac, 1.0 - frac), axis=1)
        keep = np.all((index >= 0) & (index < np.array(model.grid.n)), axis=1)
        np.add.at(mass, tuple(index[keep].T), w[keep])
    return mass.reshape(-1) / model.grid.cell_volume


def _deterministic(model: GridModel, field: Field, moves: list[Move], initial: Initial, t_max: float
                   ) -> tuple[np.ndarray, bool, list[str], int]:
    marginal = initial_mass(model, initial, t_max)[0]
    if model.grid.dim == 1:
        log_q, converged, notes = _preimages_1d(model, field, moves, marginal)
        return log_q, converged, notes, 1
    x0, log_det, converged, folds = _characteristics(field, moves, model.points)
    if folds:
        with np.errstate(divide="ignore"):
            log_q = np.log(_deposited(model, field, moves, marginal))
        note = (f"{folds} map(s) fold space: the density, singular at the caustics, is approximated by "
                "depositing a fine quadrature of the initial law (error O(h^2))")
        return log_q, converged, [note], 1
    inverted = len(moves) if all(m.markov for m in moves) else 1
    return evaluate_marginal(marginal, x0)[0] - log_det, converged, [], inverted


def _stochastic(model: GridModel, field: Field, moves: list[Move], initial: Initial, t_max: float
                ) -> tuple[np.ndarray, bool, list[str], float]:
    _, q, outside = initial_mass(model, initial, t_max)
    q = q / model.grid.cell_volume
    converged, notes = True, []
    probe = torch.zeros(1, model.grid.dim, dtype=torch.float64)
    for k, move in enumerate(moves):
        std = move.apply(field, probe, None)[1]
        q, ok, note = kernel_step(model, q, _numpy_map(lambda z, m=move: m.apply(field, z, None)[0], field), std)
        converged &= ok
        if note is not None:
            notes.append(f"move {k}: {note}")
    with np.errstate(divide="ignore"):
        return np.log(np.clip(q, 0.0, None)), converged, notes, outside


def _final_level(model: GridModel, levels: Levels) -> Level:
    return model.data_level() if levels.to_zero and math.isnan(levels.times[-1]) else model.level(levels.times[-1])


def _metrics(log_q: np.ndarray, log_p: np.ndarray, volume: float) -> dict[str, float]:
    q, p = np.exp(log_q), np.exp(log_p)
    alive = q > 0
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.exp(log_q[alive] - log_p[alive])
        chi2 = float(np.sum(p[alive] * (ratio - 1.0) ** 2) + np.sum(p[~alive])) * volume
    return {
        "tv": 0.5 * float(np.abs(q - p).sum()) * volume,
        "kl": float(np.sum(q[alive] * (log_q[alive] - log_p[alive]))) * volume,
        "chi2": chi2,
        "hellinger": math.sqrt(0.5 * float(np.sum((np.sqrt(q) - np.sqrt(p)) ** 2)) * volume),
    }


def judge_solver(
    target: Target,
    process: ForwardProcess | None,
    schedule: Any,
    solver: str,
    *,
    final: Final = "t_min",
    initial: Initial = "prior",
    grid: Grid | None = None,
    refine: bool = False,
    steps_per_level: int = 1,
    step_scale: float = DEFAULT_STEP_SCALE,
) -> SolverJudgement:
    """The exact law of ``solver``'s output along ``schedule`` against the target (module docstring).

    target : a :class:`GaussianMixture` (with ``process``) or a score with an exact log-density
        (an :class:`ExactScore`, ``as_score(log_prob=...)``, a NoisedDensity), d = 1 or 2.
    schedule : a :class:`Schedule` or times; solver : one of :data:`~.solvers.SOLVERS`;
    final, steps_per_level, step_scale : as in :func:`~.solvers.sample`. initial : "prior"
    (N(0, (alpha_T^2 + sigma_T^2) I)) or "exact" (p_{t_max}). grid : default
    :func:`solver_grid`. refine : also judge on ``grid.refine()`` and report the TV difference.

    Warns :class:`ResolutionWarning` below 4 points per width of the target's sharpest
    component (raises :class:`ResolutionError` below 1) and :class:`BoundaryMassWarning` when the
    box cuts more than 1e-7 of the target or loses more than that of the solver's law.
    """
    score, held = _target(target, process)
    options = {"steps_per_level": steps_per_level, "step_scale": step_scale}
    schedule = as_schedule(schedule, score.process)
    levels = Levels.of(schedule, score.process, final)
    grid = grid if grid is not None else solver_grid(score, None, schedule, solver, final=final, initial=initial,
                                                     **options)
    model = GridModel(held, score.process, grid)
    final_level = _final_level(model, levels)
    if final_level.points_per_width < _MIN_POINTS_PER_WIDTH:
        raise ResolutionError(f"the grid (h = {model.h.max():.3g}) does not resolve the target: its sharpest component "
                              f"has std {final_level.min_std:.3g}, {final_level.points_per_width:.2f} spacings")
    field = Field(score, levels)
    moves = solver_moves(solver, levels, **options)
    if solver in _STOCHASTIC:
        log_q, converged, notes, outside = _stochastic(model, field, moves, initial, schedule.t_max)
        newton = _NEWTON_TOL * len(moves)
    else:
        log_q, converged, notes, n_inverted = _deterministic(model, field, moves, initial, schedule.t_max)
        outside, newton = 0.0, _NEWTON_TOL * n_inverted
    log_p = evaluate_marginal(final_level.marginal, model.points)[0]
    volume = model.grid.cell_volume
    metrics = _metrics(log_q, log_p, volume)
    mass_lost = -math.expm1(logsumexp(log_q) + math.log(volume))
    boundary = max(outside, final_level.outside)
    notes += _checks(model, final_level, metrics["tv"], mass_lost, boundary, converged)
    refined = None
    if refine:
        refined = judge_solver(score, None, schedule, solver, final=final, initial=initial, grid=grid.refine(),
                               **options).tv
    return SolverJudgement(
        grid=grid, q=np.exp(log_q), p=np.exp(log_p), log_q=log_q, log_p=log_p, **metrics,
        error=0.5 * (abs(mass_lost) + boundary) + newton + 8 * log_q.size * np.finfo(float).eps,
        mass_lost=mass_lost, boundary_mass=boundary,
        nfe=solver_nfe(solver, levels.n_steps, to_zero=levels.to_zero, steps_per_level=steps_per_level),
        solver=solver, final=final, initial=initial, schedule=schedule,
        points_per_width=final_level.points_per_width, converged=converged, resolved=not notes, notes=tuple(notes),
        tv_refined=refined, discretisation_error=None if refined is None else abs(refined - metrics["tv"]),
    )


def _checks(model: GridModel, level: Level, tv: float, mass_lost: float, boundary: float, converged: bool
            ) -> list[str]:
    """The reasons a judgement is not resolved, each also warned where the module docstring says."""
    notes = []
    if level.points_per_width < _WARN_POINTS_PER_WIDTH:
        notes.append(f"coarse grid: {level.points_per_width:.2f} points per width of the target's sharpest component")
        warnings.warn(notes[-1], ResolutionWarning, stacklevel=3)
    tolerance = max(_MASS_TOL, 1e-2 * tv)
    for what, mass in (("the box cuts off mass", boundary), ("the solver's law lost mass", abs(mass_lost))):
        if mass > tolerance:
            notes.append(f"{what} {mass:.3g} out of the box {list(zip(model.grid.lo, model.grid.hi))} "
                         f"(tolerance {tolerance:.3g}); enlarge it")
            warnings.warn(notes[-1], BoundaryMassWarning, stacklevel=3)
    if not converged:
        notes.append("a Newton inversion of a solver step did not converge")
    return notes
