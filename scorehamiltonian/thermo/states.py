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
delta-method standard error sqrt((1 - P) / (n P)) are reported beside it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..common.errors import InputShapeError
from ..sampling.grid_model import ascent_labels
from ..score.interface import Score
from ..spectral.grid import Grid, box_from_samples
from ..spectral.operator import log_density_on_grid
from ..spectral.solution import ConvergenceWarning
from .model_error import MODEL_SPREAD, member_spread, source_kind, warn_model_unknown

__all__ = ["StateFreeEnergies", "state_free_energies"]

#: Interior nodes per axis of the default grid, by dimension.
DEFAULT_NODES = {1: 4097, 2: 401, 3: 81}
#: Default persistence (k_B T): shallower basins are merged into their neighbour.
DEFAULT_PERSISTENCE = 1.0

Region = Callable[[torch.Tensor], torch.Tensor] | tuple[Sequence[float], Sequence[float]]


@dataclass(frozen=True)
class StateFreeEnergies:
    """Free energies of states (module docstring), in k_B T, each with its errors.

    names : the states; free_energy, probability : F_A and P(A) (the grid's quadrature);
    numerical, model_error, total_error : the errors of F_A (module docstring; model_error 0
    for an exact source, NaN for a single learned model);
    sample_free_energy, sample_stderr : -log(n_A / n) and its standard error (None without
    samples); minima : (K, d) the lowest-energy node of each state; grid : the grid;
    labels : (N,) each node's state (-1 outside every given state); box_mass : the mass on
    the box's outermost nodes (a box that cuts the density raises it above 1e-6: then the
    values are flagged); flags : what is not to be trusted, in words (a model-error flag starts
    with its name, "model_unknown" or "model_spread"); converged : no flag.
    """

    names: tuple[str, ...]
    free_energy: np.ndarray
    probability: np.ndarray
    numerical: np.ndarray
    model_error: np.ndarray
    total_error: np.ndarray
    sample_free_energy: np.ndarray | None
    sample_stderr: np.ndarray | None
    minima: np.ndarray
    grid: Grid
    labels: np.ndarray
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
) -> StateFreeEnergies:
    """Free energies of states of the density of ``source`` by quadrature on a grid (d <= 3).

    source : a :class:`Score` (log p_t at time ``t``, default its training t_min or the
        process's t_min: exact for a :class:`DensityScore`, else the score's least-squares
        potential; a :class:`ScoreEnsemble` adds the members' spread as the model error), or
        an energy E(x) (n, d) -> (n,) in k_B T (log p = -E up to a constant).
    states : regions, each a box (lo, hi) or an indicator x (n, d) -> bool (n,); None: the
        persistence-merged steepest-ascent basins of log p (module docstring), ordered by
        probability.
    box : the quadrature box (default: from ``samples``; required without them). samples :
        (m, d) samples of the density, for the box and the sample-count estimate. n : nodes
        per axis (default 4097, 401, 81 in 1D, 2D, 3D; an even count is raised by one, so that
        every other node is the coarse grid's). atol : the accuracy asked of every F_A (k_B T,
        default :data:`DEFAULT_ATOL` = 0.1; None: none); a numerical or model error above it is
        flagged and warned (ConvergenceWarning), so an ensemble whose members disagree by more
        is never converged.
    """
    x = None if samples is None else torch.as_tensor(samples, dtype=torch.float64)
    if box is None:
        if x is None:
            raise InputShapeError("state_free_energies needs box=(lo, hi) or samples= to place its grid")
        box = box_from_samples(x, 1e-12)
    lo, hi = [float(v) for v in box[0]], [float(v) for v in box[1]]
    dim = len(lo)
    if dim not in DEFAULT_NODES:
        raise InputShapeError(f"state_free_energies integrates on grids in d <= 3; the box has d = {dim}")
    nodes = [int(m) for m in ([n] * dim if isinstance(n, int) else n)] if n is not None else [DEFAULT_NODES[dim]] * dim
    grid = Grid(lo, hi, [m + 1 - m % 2 for m in nodes])  # odd: every other node is the coarse grid's
    coarse = Grid(lo, hi, [(m - 1) // 2 for m in grid.n]) if min(grid.n) >= 5 else None
    log_p = _log_density(source, grid, t)
    labels = _state_labels(grid, log_p, states, persistence)
    names = (tuple(f"state {k}" for k in range(int(labels.max()) + 1)) if states is not None else
             tuple(f"basin {k}" for k in range(int(labels.max()) + 1)))
    free, prob = _free_energies(log_p, labels, len(names))
    numerical = np.zeros(len(names))
    if coarse is not None:
        coarse_labels = labels.reshape(grid.n)[tuple(slice(1, None, 2) for _ in grid.n)].reshape(-1)
        numerical = np.abs(free - _free_energies(_log_density(source, coarse, t), coarse_labels, len(names))[0])
    shell = torch.from_numpy(grid.boundary_shell(1).numpy())
    box_mass = float(np.exp(log_p[shell.numpy()] - _logsumexp(log_p)).sum())
    numerical = numerical + (_boundary_mass(grid, log_p, labels, len(names)) + box_mass) / np.maximum(prob, 1e-300)
    kind, flags = source_kind(source), []
    if kind == "ensemble":
        model = member_spread([_free_energies(_log_density(m, grid, t, source), labels, len(names))[0]
                               for m in source.members])
    else:
        model = np.full(len(names), 0.0 if kind == "exact" else math.nan)
    if kind == "single":
        flags.append(warn_model_unknown("state_free_energies"))
    total = numerical + model
    sample_free = sample_err = None
    if x is not None:
        sample_free, sample_err = _counts(x, grid, labels, len(names))
    if atol is not None:
        for name, part in ((MODEL_SPREAD, model), ("numerical", numerical)):
            over = [names[k] for k in np.flatnonzero(part > float(atol))]
            if over:
                flags.append(f"{name}: the {'ensemble spread' if name == MODEL_SPREAD else 'numerical error'} of "
                             f"{', '.join(over)} exceeds atol = {float(atol):g} k_B T (largest {float(part.max()):.3g})")
                warnings.warn(f"state_free_energies: {flags[-1]}", ConvergenceWarning, stacklevel=2)
    if box_mass > 1e-6:
        flags.append(f"the box cuts the density: mass {box_mass:.2g} on its outermost nodes; widen it")
    if np.any(prob <= 0):
        flags.append("a state holds no probability on the grid")
    minima = _minima(grid, log_p, labels, len(names))
    order = np.argsort(free, kind="stable") if states is None else np.arange(len(names))
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    labels = np.where(labels >= 0, remap[np.maximum(labels, 0)], -1)

    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[order]

    return StateFreeEnergies(
        names=tuple(names[i] if states is not None else f"basin {k}" for k, i in enumerate(order)),
        free_energy=free[order], probability=prob[order], numerical=numerical[order],
        model_error=model[order], total_error=total[order], sample_free_energy=take(sample_free), sample_stderr=take(sample_err),
        minima=minima[order], grid=grid, labels=labels, box_mass=box_mass, flags=tuple(flags),
    )


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
    points = grid.points(dtype=torch.float64)
    labels = np.full(grid.size, -1)
    for k, region in enumerate(states):
        if isinstance(region, tuple):
            rlo, rhi = (torch.as_tensor(v, dtype=torch.float64) for v in region)
            inside = ((points >= rlo) & (points <= rhi)).all(-1)
        else:
            inside = torch.as_tensor(region(points), dtype=torch.bool)
        claimed = inside.numpy() & (labels >= 0)
        if claimed.any():
            raise InputShapeError(f"state {k} overlaps an earlier state at {int(claimed.sum())} nodes")
        labels[inside.numpy()] = k
    return labels


def _merged_basins(grid: Grid, log_p: np.ndarray, persistence: float) -> np.ndarray:
    """Steepest-ascent basins, each shallower than ``persistence`` merged into the neighbour
    across its lowest saddle (highest-density boundary edge), shallowest first."""
    roots = ascent_labels(log_p.reshape(grid.n))
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


def _counts(x: torch.Tensor, grid: Grid, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """-log(n_A / n) and sqrt((1 - P) / (n P)) of samples assigned to their nearest node's state."""
    index = np.zeros(x.shape[0], dtype=np.int64)
    for axis, (a, h, m) in enumerate(zip(grid.lo, grid.h, grid.n)):
        node = np.clip(np.rint((x[:, axis].numpy() - a) / h) - 1, 0, m - 1).astype(np.int64)
        index = index * m + node
    counts = np.bincount(labels[index][labels[index] >= 0], minlength=k).astype(float)
    n = x.shape[0]
    share = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.log(share), np.sqrt((1 - share) / (n * share))


def _minima(grid: Grid, log_p: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    points = grid.points(dtype=torch.float64).numpy()
    out = np.full((k, grid.dim), np.nan)
    for state in range(k):
        members = np.flatnonzero(labels == state)
        if members.size:
            out[state] = points[members[np.argmax(log_p[members])]]
    return out
