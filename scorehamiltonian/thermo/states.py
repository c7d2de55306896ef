"""Free energies of states: F_A = -log P(A) of basins or given regions, in k_B T (THEORY section 5).

For a density p (the data's, or a model's through its score), the free energy of a state A is
F_A = -log int_A p(x) dx with p normalised, and Delta F_AB = F_B - F_A = -log(P(B) / P(A)).

:func:`state_free_energies` computes them by quadrature on a grid (d <= 3): log p at the nodes
from an exact log-density, an energy callable, or a score (the least-squares potential of the
score on the grid's edges, :func:`~scorehamiltonian.spectral.operator.log_density_on_grid`),
normalised over the box. States are given (boxes or indicator functions) or found: the
steepest-ascent basins of log p on the grid, with every basin shallower than ``persistence``
(k_B T between its lowest energy and its lowest saddle to a neighbour) merged into that
neighbour, so that the noise minima of a learned energy do not count as states.

Readouts. ``"grid"`` (above) is exact to its quadrature error for an exact log-density or an
exact field, but the least-squares potential of a *learned* score weighs every edge of the box
alike, and a network is wrong in the empty regions between states (on Mueller-Brown the
learned basins came out 34 and 22 k_B T off). ``"sampler"`` reads the model's own law instead:
``draws`` prior draws are carried to t by the Heun probability-flow solver on ``steps``
levels uniform in log-SNR (:func:`~scorehamiltonian.sampling.solvers.sample`; ``final="zero"``
at t = 0; uniform steps in log-SNR keep the step-halving change asymptotic, where the EDM rule
from the process's t_max left a 0.04 k_B T bias at 32 levels that the change missed), each
sample is assigned to a state, and F_A = -log(n_A / n): what the model's sampler produces, in
any dimension (states given as regions beyond d = 3). Its numerical error is the
binomial standard error sqrt((1 - P) / (n P)) plus the change of F_A from the same draws on
steps // 2 levels (Heun's error is O(h^2), so the change over-estimates it about three-fold).
An ensemble's value is its members' mean, each member run on the same draws. ``"auto"``: the
sampler for a learned source (a model, or an ensemble with a learned member) or d > 3, the
grid otherwise.

Errors, each beside the value: ``numerical`` the change of F_A from the grid with every other
node dropped (the trapezoid rule's error on smooth integrands is O(h^2), so this over-estimates
it about three-fold), plus the mass the grid may put on the wrong side of the state's
boundaries (half the larger node mass of each pair of neighbours in different states: an O(h)
term that the refinement difference can miss by alignment) and the box's missing mass, each
relative to P(A); ``model_error`` (the rule of :mod:`.model_error`) for a
:class:`~scorehamiltonian.score.ensemble.ScoreEnsemble`, the members' standard deviation of F_A
(each member's own log-density on the grid, the same states: K more least-squares potentials
on the fine grid, K member evaluations per node), 0 for an exact or analytic source and an
energy callable, NaN for a single learned model (flagged ``model_unknown``, never converged);
``total_error`` their sum (a bound plus one standard deviation of the members). With ``atol``
(k_B T) a state whose total error exceeds it is flagged. With
``samples`` of the density (data), the sample-count estimate F_A = -log(n_A / n) and its
delta-method standard error sqrt((1 - P) / (n P)) are reported beside it; for an ensemble they
also bound the model error without the truth: model_error = max(spread, |F_A - F_A,samples| +
2 se), se the count's standard error, since |F_A - F_A*| <= |F_A - F_A,samples| +
|F_A,samples - F_A*| and the last term is below 2 se with 95 % probability: a model that misses
its data's state weights is wrong by about that much (flagged ``model_data`` above ``atol``;
held-out samples test more than the training rows).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..common.errors import InputShapeError
from ..sampling.schedules import standard_schedule
from ..sampling.solvers import prior_samples, sample
from ..score.interface import DensityScore, Score
from ..score.quadrature import steepest_descent_basins
from ..spectral.grid import Grid, box_from_samples
from ..spectral.operator import log_density_on_grid
from ..spectral.solution import ConvergenceWarning
from .model_error import MODEL_SPREAD, member_spread, source_kind, warn_model_unknown

__all__ = ["MODEL_DATA", "StateFreeEnergies", "state_free_energies"]

#: Interior nodes per axis of the default grid, by dimension.
DEFAULT_NODES = {1: 4097, 2: 401, 3: 81}
#: Default persistence (k_B T): shallower basins are merged into their neighbour.
DEFAULT_PERSISTENCE = 1.0
#: The sampler readout's default prior draws and Heun levels (NFE 2 x steps per run).
DEFAULT_DRAWS, DEFAULT_STEPS = 1 << 16, 100
#: Fewer of the model's samples in a state than this and its binomial error is not trusted.
MIN_COUNT = 20
#: The sampler readout's step rule (:func:`~scorehamiltonian.sampling.schedules.standard_schedule`).
SAMPLER_RULE = "log-snr"
#: The flag of an ensemble whose F_A misses the samples' count by more than atol.
MODEL_DATA = "model_data"

Readout = Literal["auto", "grid", "sampler"]

Region = Callable[[torch.Tensor], torch.Tensor] | tuple[Sequence[float], Sequence[float]]


@dataclass(frozen=True)
class StateFreeEnergies:
    """Free energies of states (module docstring), in k_B T, each with its errors.

    names : the states; free_energy, probability : F_A and P(A) (the readout's);
    numerical, model_error, total_error : the errors of F_A (module docstring; model_error 0
    for an exact source, NaN for a single learned model);
    sample_free_energy, sample_stderr : -log(n_A / n) and its standard error (None without
    samples); readout : "grid" or "sampler"; minima : (K, d) the lowest-energy node of each
    state; grid : the grid; labels : (N,) each node's state (-1 outside every given state) (these
    three None where no grid was built: given states and the sampler readout); box_mass : the
    grid's mass on the box's outermost nodes (a box that cuts the density raises it above 1e-6:
    then the values are flagged; 0 for the sampler readout, which misses no mass); flags : what
    is not to be trusted, in words (a model-error flag starts with its name, "model_unknown",
    "model_spread" or "model_data"); converged : no flag.
    """

    names: tuple[str, ...]
    free_energy: np.ndarray
    probability: np.ndarray
    numerical: np.ndarray
    model_error: np.ndarray
    total_error: np.ndarray
    sample_free_energy: np.ndarray | None
    sample_stderr: np.ndarray | None
    readout: str
    minima: np.ndarray | None
    grid: Grid | None
    labels: np.ndarray | None
    box_mass: float
    flags: tuple[str, ...]

    @property
    def converged(self) -> bool:
        return not self.flags

    def difference(self, a: int, b: int) -> tuple[float, float]:
        """Delta F = F_b - F_a and its total error (the sum of both states' errors)."""
        return float(self.free_energy[b] - self.free_energy[a]), float(self.total_error[a] + self.total_error[b])


#: The default accuracy asked of every state free energy (k_B T): a model or numerical error above
#: it is flagged (without it, an ensemble 9 kT apart on Mueller-Brown read as converged).
DEFAULT_ATOL = 0.1


def state_free_energies(
    source: Score | Callable[[torch.Tensor], torch.Tensor],
    states: Sequence[Region] | None = None,
    *,
    box: tuple[Sequence[float], Sequence[float]] | None = None,
    samples: Any = None,
    t: float | None = None,
    n: int | Sequence[int] | None = None,
    persistence: float = DEFAULT_PERSISTENCE,
    atol: float | None = DEFAULT_ATOL,
    readout: Readout = "auto",
    draws: int = DEFAULT_DRAWS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    progress: bool = True,
) -> StateFreeEnergies:
    """Free energies of states of the density of ``source``, by quadrature on a grid (d <= 3) or
    by the model's own sampler (any d).

    source : a :class:`Score` (its law at time ``t``, default its training t_min or the
        process's t_min; a :class:`ScoreEnsemble` adds the members' spread as the model error),
        or an energy E(x) (n, d) -> (n,) in k_B T (log p = -E up to a constant; grid only).
    states : regions, each a box (lo, hi) or an indicator x (n, d) -> bool (n,); None: the
        persistence-merged steepest-ascent basins of log p on the grid (module docstring; the
        least-squares potential of a learned score places them), ordered by probability.
    box : the grid's box (default: from ``samples``; required without them where a grid is
        built). samples : (m, d) samples of the density, for the box, the sample-count estimate
        and, for an ensemble, the model error's data term. n : nodes per axis (default 4097,
        401, 81 in 1D, 2D, 3D; an even count is raised by one, so that every other node is the
        coarse grid's). atol : the accuracy asked of every F_A (k_B T, default
        :data:`DEFAULT_ATOL` = 0.1; None: none); a numerical or model error above it is flagged
        and warned (ConvergenceWarning). readout : "grid", "sampler" or "auto" (module
        docstring). draws, steps, seed : the sampler's prior draws, Heun levels and generator
        seed (module docstring); progress : a tqdm bar over the sampler's runs (two per member:
        in d = 32 a default run of a 3-member ensemble takes minutes).
    """
    x = None if samples is None else torch.as_tensor(samples, dtype=torch.float64)
    mode = _readout(readout, source)
    grid = labels = log_p = None
    if mode == "grid" or states is None:
        grid, log_p = _grid_density(source, box, x, t, n)
        labels = _state_labels(grid, log_p, states, persistence)
    count = int(labels.max()) + 1 if labels is not None else len(states)
    names = tuple(f"state {k}" for k in range(count)) if states is not None else tuple(f"basin {k}" for k in range(count))
    assign = _assigner(states, grid, labels)
    kind, flags = source_kind(source), []
    if mode == "grid":
        free, prob, numerical, spread, box_mass = _grid_readout(source, grid, log_p, labels, len(names), t, kind)
    else:
        free, prob, numerical, spread, low = _sampler_readout(source, assign, len(names), t, draws, steps, seed, kind,
                                                              progress)
        box_mass = 0.0
        if low:
            flags.append(f"{', '.join(names[k] for k in low)}: fewer than {MIN_COUNT} of the model's samples; raise draws")
    if kind == "single":
        flags.append(warn_model_unknown("state_free_energies"))
    model = spread
    sample_free = sample_err = None
    if x is not None:
        sample_free, sample_err = _counts(assign(x), len(names))
        if kind == "ensemble":
            miss = np.abs(free - sample_free) + 2 * sample_err
            miss = np.where(np.isnan(miss), np.inf, miss)
            model = np.maximum(spread, miss)
            flags += _flagged(MODEL_DATA, "miss of the samples' count", names, miss, atol)
    flags += _flagged(MODEL_SPREAD, "ensemble spread", names, spread, atol)
    flags += _flagged("numerical", "numerical error", names, numerical, atol)
    total = numerical + model
    if box_mass > 1e-6:
        flags.append(f"the box cuts the density: mass {box_mass:.2g} on its outermost nodes; widen it")
    if np.any(prob <= 0):
        flags.append("a state holds no probability")
    order = np.argsort(free, kind="stable") if states is None else np.arange(len(names))
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))

    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[order]

    return StateFreeEnergies(
        names=tuple(names[i] if states is not None else f"basin {k}" for k, i in enumerate(order)),
        free_energy=free[order], probability=prob[order], numerical=numerical[order],
        model_error=model[order], total_error=total[order], sample_free_energy=take(sample_free),
        sample_stderr=take(sample_err), readout=mode,
        minima=None if grid is None else _minima(grid, log_p, labels, len(names))[order], grid=grid,
        labels=None if labels is None else np.where(labels >= 0, remap[np.maximum(labels, 0)], -1),
        box_mass=box_mass, flags=tuple(flags),
    )


def _readout(readout: str, source: Any) -> str:
    """The readout asked for, or the one "auto" picks (module docstring)."""
    if readout not in ("auto", "grid", "sampler"):
        raise ValueError(f"readout must be 'auto', 'grid' or 'sampler'; got {readout!r}")
    is_score = isinstance(source, Score)
    if readout == "sampler" and not is_score:
        raise TypeError("the sampler readout needs a Score (an energy callable has no sampler); use readout='grid'")
    if readout != "auto":
        return readout
    if not is_score:
        return "grid"
    return "sampler" if source.dim > 3 or _learned(source) else "grid"


def _learned(source: Any) -> bool:
    """A fitted model: a learned score, or an ensemble with a learned member (an ensemble of
    exact scores reads its members' exact log-densities)."""
    members = getattr(source, "members", None)
    if members is not None:
        return any(_learned(m) for m in members)
    return bool(getattr(source, "learned", False)) and not isinstance(source, DensityScore)


def _grid_density(source: Any, box: Any, x: torch.Tensor | None, t: float | None,
                  n: int | Sequence[int] | None) -> tuple[Grid, np.ndarray]:
    """The quadrature grid (odd nodes per axis) and log p at its nodes."""
    if box is None:
        if x is None:
            raise InputShapeError("state_free_energies needs box=(lo, hi) or samples= to place its grid")
        box = box_from_samples(x, 1e-12)
    lo, hi = [float(v) for v in box[0]], [float(v) for v in box[1]]
    dim = len(lo)
    if dim not in DEFAULT_NODES:
        raise InputShapeError(f"state_free_energies builds grids in d <= 3 (the grid readout, or basins found "
                              f"automatically); the box has d = {dim}: give the states as regions for the sampler")
    nodes = [int(m) for m in ([n] * dim if isinstance(n, int) else n)] if n is not None else [DEFAULT_NODES[dim]] * dim
    grid = Grid(lo, hi, [m + 1 - m % 2 for m in nodes])  # odd: every other node is the coarse grid's
    return grid, _log_density(source, grid, t)


def _grid_readout(source: Any, grid: Grid, log_p: np.ndarray, labels: np.ndarray, k: int, t: float | None,
                  kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """F_A, P(A), the numerical error, the members' spread and the box's mass by quadrature."""
    free, prob = _free_energies(log_p, labels, k)
    numerical = np.zeros(k)
    if min(grid.n) >= 5:
        coarse = Grid(grid.lo, grid.hi, [(m - 1) // 2 for m in grid.n])
        coarse_labels = labels.reshape(grid.n)[tuple(slice(1, None, 2) for _ in grid.n)].reshape(-1)
        numerical = np.abs(free - _free_energies(_log_density(source, coarse, t), coarse_labels, k)[0])
    shell = torch.from_numpy(grid.boundary_shell(1).numpy())
    box_mass = float(np.exp(log_p[shell.numpy()] - _logsumexp(log_p)).sum())
    numerical = numerical + (_boundary_mass(grid, log_p, labels, k) + box_mass) / np.maximum(prob, 1e-300)
    if kind == "ensemble":
        spread = member_spread([_free_energies(_log_density(m, grid, t, source), labels, k)[0] for m in source.members])
    else:
        spread = _single_spread(kind, k)
    return free, prob, numerical, spread, box_mass


def _single_spread(kind: str, k: int) -> np.ndarray:
    """The model error of a source without members: 0 when exact, NaN for a single learned model."""
    return np.full(k, 0.0 if kind == "exact" else math.nan)


def _sampler_readout(source: Score, assign: Callable[[torch.Tensor], np.ndarray], k: int, t: float | None,
                     draws: int, steps: int, seed: int, kind: str,
                     progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """F_A, P(A), the numerical error, the members' spread and the states with fewer than
    MIN_COUNT samples, from the model's own samples (module docstring)."""
    if int(draws) < 1 or int(steps) < 2:
        raise ValueError(f"the sampler readout needs draws >= 1 and steps >= 2; got {draws!r}, {steps!r}")
    process = source.process
    time = float(t) if t is not None else float(source.t_trained or process.t_min)
    final = "zero" if process.sigma(time) == 0 else "t_min"
    end = time if final == "t_min" else float(source.t_trained or process.t_min)
    x0 = prior_samples(process, process.t_max, int(draws), source.dim, torch.Generator().manual_seed(int(seed)))
    members = source.members if kind == "ensemble" else [source]
    fine, coarse = [], []
    runs = [(member, levels, out) for member in members for levels, out in ((int(steps), fine), (int(steps) // 2, coarse))]
    for member, levels, out in tqdm(runs, disable=not progress, desc="state free energies (sampler runs)"):
        schedule = standard_schedule(SAMPLER_RULE, levels, process.t_max, end, process)
        with torch.no_grad():
            found = assign(sample("heun", member, x0, schedule, final=final).x)
        out.append(np.bincount(found[found >= 0], minlength=k))
    counts = np.asarray(fine, dtype=float)
    with np.errstate(divide="ignore"):
        free_k = -np.log(counts / int(draws))
        change = np.abs(free_k + np.log(np.asarray(coarse, dtype=float) / int(draws))).max(0)
    free = free_k.mean(0)
    prob = np.exp(-free)
    with np.errstate(divide="ignore", invalid="ignore"):
        numerical = np.sqrt((1 - prob) / (int(draws) * prob)) + change
    spread = member_spread(free_k) if kind == "ensemble" else _single_spread(kind, k)
    return free, prob, numerical, spread, [j for j in range(k) if counts[:, j].min() < MIN_COUNT]


def _flagged(name: str, what: str, names: tuple[str, ...], part: np.ndarray, atol: float | None) -> list[str]:
    """The flag (warned) naming the states whose ``part`` of the error exceeds atol, or none."""
    if atol is None:
        return []
    over = [names[j] for j in np.flatnonzero(~(part <= float(atol)) & ~np.isnan(part))]
    if not over:
        return []
    flag = (f"{name}: the {what} of {', '.join(over)} exceeds atol = {float(atol):g} k_B T "
            f"(largest {float(np.nanmax(part)):.3g})")
    warnings.warn(f"state_free_energies: {flag}", ConvergenceWarning, stacklevel=3)
    return [flag]


def _log_density(source: Any, grid: Grid, t: float | None, owner: Score | None = None) -> np.ndarray:
    """log p at the grid's nodes (up to a constant), float64 numpy (N,)."""
    if isinstance(source, Score):
        reference = owner if owner is not None else source
        time = t if t is not None else (reference.t_trained or reference.process.t_min)
        return log_density_on_grid(source, float(time), grid)[0].numpy()
    points = grid.points(dtype=torch.float64)
    energy = torch.cat([source(chunk) for chunk in points.split(1 << 16)])
    if energy.shape != (grid.size,):
        raise InputShapeError(f"the energy returned shape {tuple(energy.shape)} for {grid.size} points")
    return -energy.detach().to(torch.float64).numpy()


def _state_labels(grid: Grid, log_p: np.ndarray, states: Sequence[Region] | None, persistence: float) -> np.ndarray:
    if states is None:
        return _merged_basins(grid, log_p, float(persistence))
    return _region_labels(grid.points(dtype=torch.float64), states)


def _region_labels(points: torch.Tensor, states: Sequence[Region]) -> np.ndarray:
    """Each point's state (-1 in none); InputShapeError where two states overlap."""
    labels = np.full(points.shape[0], -1)
    for k, region in enumerate(states):
        if isinstance(region, tuple):
            rlo, rhi = (torch.as_tensor(v, dtype=torch.float64) for v in region)
            inside = ((points >= rlo) & (points <= rhi)).all(-1)
        else:
            inside = torch.as_tensor(region(points), dtype=torch.bool)
        if inside.shape != (points.shape[0],):
            raise InputShapeError(f"state {k} returned shape {tuple(inside.shape)} for {points.shape[0]} points")
        claimed = inside.numpy() & (labels >= 0)
        if claimed.any():
            raise InputShapeError(f"state {k} overlaps an earlier state at {int(claimed.sum())} points")
        labels[inside.numpy()] = k
    return labels


def _assigner(states: Sequence[Region] | None, grid: Grid | None,
              labels: np.ndarray | None) -> Callable[[torch.Tensor], np.ndarray]:
    """x (n, d) -> each point's state: the given regions evaluated at x, else the state of the
    nearest grid node."""
    if states is not None:
        return lambda x: _region_labels(x.detach().to(torch.float64).cpu(), states)

    def nearest(x: torch.Tensor) -> np.ndarray:
        index = np.zeros(x.shape[0], dtype=np.int64)
        for axis, (a, h, m) in enumerate(zip(grid.lo, grid.h, grid.n)):
            node = np.clip(np.rint((x[:, axis].detach().cpu().numpy() - a) / h) - 1, 0, m - 1).astype(np.int64)
            index = index * m + node
        return labels[index]

    return nearest


def _merged_basins(grid: Grid, log_p: np.ndarray, persistence: float) -> np.ndarray:
    """Steepest-ascent basins, each shallower than ``persistence`` merged into the neighbour
    across its lowest saddle (highest-density boundary edge), shallowest first."""
    roots = steepest_descent_basins(torch.from_numpy(-log_p.reshape(grid.n))).numpy()
    _, labels = np.unique(roots, return_inverse=True)
    labels = labels.reshape(-1)
    while True:
        k = int(labels.max()) + 1
        if k == 1:
            return labels
        peak = np.full(k, -np.inf)
        np.maximum.at(peak, labels, log_p)
        saddle = np.full((k, k), -np.inf)
        cube = labels.reshape(grid.n)
        values = log_p.reshape(grid.n)
        for axis in range(grid.dim):
            a, b = (np.take(cube, range(grid.n[axis] - 1), axis), np.take(cube, range(1, grid.n[axis]), axis))
            va, vb = (np.take(values, range(grid.n[axis] - 1), axis),
                      np.take(values, range(1, grid.n[axis]), axis))
            cross = a != b
            low = np.minimum(va, vb)[cross]
            np.maximum.at(saddle, (a[cross], b[cross]), low)
            np.maximum.at(saddle, (b[cross], a[cross]), low)
        best = saddle.max(1)
        depth = peak - best
        shallow = int(np.argmin(depth))
        if not depth[shallow] < persistence:
            return labels
        target = int(np.argmax(saddle[shallow]))
        labels = np.where(labels == shallow, target, labels)
        _, labels = np.unique(labels, return_inverse=True)


def _logsumexp(a: np.ndarray) -> float:
    top = float(a.max())
    return top + math.log(float(np.exp(a - top).sum()))


def _free_energies(log_p: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """F_A = -log P(A) and P(A) on one grid (equal cells: P is a ratio of sums)."""
    total = _logsumexp(log_p)
    prob = np.zeros(k)
    np.add.at(prob, labels[labels >= 0], np.exp(log_p[labels >= 0] - total))
    with np.errstate(divide="ignore"):
        return -np.log(prob), prob


def _boundary_mass(grid: Grid, log_p: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per state, the mass the grid may give to the wrong side of its boundaries: half the larger
    node mass of every pair of axis neighbours in different states (the true boundary lies
    between them, and each node's cell goes whole to its own state)."""
    mass = np.exp(log_p - _logsumexp(log_p)).reshape(grid.n)
    cube = labels.reshape(grid.n)
    out = np.zeros(k)
    for axis in range(grid.dim):
        a, b = (np.take(cube, range(grid.n[axis] - 1), axis), np.take(cube, range(1, grid.n[axis]), axis))
        ma, mb = (np.take(mass, range(grid.n[axis] - 1), axis), np.take(mass, range(1, grid.n[axis]), axis))
        half = 0.5 * np.maximum(ma, mb)
        for side, other in ((a, b), (b, a)):
            cross = (side != other) & (side >= 0)
            np.add.at(out, side[cross], half[cross])
    return out


def _counts(found: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """-log(n_A / n) and sqrt((1 - P) / (n P)) of samples with states ``found`` (-1: none)."""
    counts = np.bincount(found[found >= 0], minlength=k).astype(float)
    share = counts / found.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.log(share), np.sqrt((1 - share) / (found.shape[0] * share))


def _minima(grid: Grid, log_p: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    points = grid.points(dtype=torch.float64).numpy()
    out = np.full((k, grid.dim), np.nan)
    for state in range(k):
        members = np.flatnonzero(labels == state)
        if members.size:
            out[state] = points[members[np.argmax(log_p[members])]]
    return out
