"""Exact reference quantities of a low-dimensional density on grids (the systems' ground truth).

For a density p proportional to exp(log_prob) on a box in d = 1 or 2 (THEORY sections 2 and 5):

- :class:`EnvelopeSampler`: exact draws by rejection under a piecewise-constant envelope on cells
  of the box. Each cell's bound is the largest log p on a lattice of (sub + 1)^d points of the
  cell plus (delta sqrt(d) / 2) 2 G, delta the lattice spacing and G the largest |grad log p| on
  those points (any point of the cell lies within delta sqrt(d) / 2 of a lattice point; the
  factor 2 covers the growth of the gradient in between). The bound is checked at every
  proposal: a proposal above it raises :class:`EnvelopeError`, so an accepted draw is exact
  (from p restricted to the box).
- :func:`steepest_descent_basins` and :class:`BasinResult`: basins of the minima of an energy E on
  a grid, each node pointing to the lowest of its 3^d - 1 neighbours when that is lower than the
  node itself; pointers are followed to the minima by pointer jumping. Basin probabilities are
  trapezoid sums of p over the basins' nodes.
- :func:`gap_1d`: lambda_1 of a 1D density (the inverse Poincare constant, i.e. the gap of H
  for score d/dx log p) by P1 finite elements with lumped mass on a uniform mesh of the box
  (natural boundary conditions): A_ij = int p phi_i' phi_j' (4-point Gauss-Legendre per
  element), M_i = int p phi_i, eigenvector of the symmetric tridiagonal M^-1/2 A M^-1/2 and
  lambda_1 read as its Rayleigh quotient after centring (relative accuracy even for tiny gaps,
  THEORY section 6); O(h^2), extrapolated by Richardson over three meshes, the error
  estimated by the change of the extrapolate.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from ..common.errors import InputShapeError, ScoreHamiltonianError

__all__ = ["BasinResult", "EnvelopeError", "EnvelopeSampler", "QuadratureGap", "gap_1d", "steepest_descent_basins"]

LogDensity = Callable[[torch.Tensor], torch.Tensor]


class EnvelopeError(ScoreHamiltonianError, RuntimeError):
    """A rejection sampler met a proposal above its envelope: its draws would not be exact."""


class EnvelopeSampler:
    """Exact draws of p proportional to exp(log_prob) on the box [lo, hi] (d = 1, 2), by rejection.

    ``log_prob``: torch function (n, d) -> (n,), differentiable; ``cell``: the envelope's cell
    width (units of x; a fraction of p's narrowest width keeps the acceptance high); ``sub``:
    lattice intervals per cell edge. Call it as ``sampler(n, generator)`` -> (n, d) float64.
    ``acceptance``: the expected fraction of proposals accepted, int p / int envelope.
    """

    def __init__(self, log_prob: LogDensity, lo: Sequence[float], hi: Sequence[float], cell: float,
                 sub: int = 4) -> None:
        self.function, self.lo, self.dim = log_prob, [float(v) for v in lo], len(lo)
        if self.dim not in (1, 2) or len(hi) != self.dim:
            raise InputShapeError(f"EnvelopeSampler works in 1 or 2 dimensions; got lo={lo}, hi={hi}")
        self.cells = [max(1, math.ceil((b - a) / cell)) for a, b in zip(lo, hi)]
        self.width = [(float(b) - a) / m for a, b, m in zip(self.lo, hi, self.cells)]
        axes = [torch.linspace(a, float(b), m * sub + 1, dtype=torch.float64) for a, b, m in zip(self.lo, hi, self.cells)]
        lattice = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.dim)
        values, grads = [], []
        for chunk in lattice.split(1 << 16):
            leaf = chunk.clone().requires_grad_(True)
            lp = log_prob(leaf)
            (g,) = torch.autograd.grad(lp.sum(), leaf)
            values.append(lp.detach())
            grads.append(g.norm(dim=-1))
        shape = tuple(a.numel() for a in axes)
        top, slope = (torch.cat(v).reshape(shape) for v in (values, grads))
        top, slope = _cell_max(top, sub), _cell_max(slope, sub)
        delta = max(self.width) / sub
        self.log_envelope = (top + delta * math.sqrt(self.dim) * slope).reshape(-1)
        self.log_max = float(self.log_envelope.max())
        mass = torch.exp(self.log_envelope - self.log_max)
        self._mass = mass / mass.sum()
        cell_volume = math.prod(self.width)
        log_total = float(torch.logsumexp(top.reshape(-1), 0)) + math.log(cell_volume)
        self.acceptance = math.exp(log_total - self.log_max - math.log(float(mass.sum()) * cell_volume))

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws, shape (n, d), float64; proposals in batches until n are accepted."""
        out, have = [], 0
        while have < n:
            batch = max(64, int(1.2 * (n - have) / max(self.acceptance, 1e-3)))
            cells = torch.multinomial(self._mass, batch, replacement=True, generator=generator)
            index = torch.stack(torch.unravel_index(cells, tuple(self.cells)), -1).to(torch.float64)
            offset = torch.rand(batch, self.dim, dtype=torch.float64, generator=generator)
            y = torch.tensor(self.lo, dtype=torch.float64) + (index + offset) * torch.tensor(self.width, dtype=torch.float64)
            with torch.no_grad():
                log_ratio = self.function(y) - self.log_envelope[cells]
            if bool((log_ratio > 0).any()):
                worst = int(torch.argmax(log_ratio))
                raise EnvelopeError(f"the envelope is below log p at {y[worst].tolist()} by {float(log_ratio[worst]):.3g}: "
                                    "use a smaller cell")
            keep = torch.rand(batch, dtype=torch.float64, generator=generator) < torch.exp(log_ratio)
            out.append(y[keep])
            have += int(keep.sum())
        return torch.cat(out)[:n]


def _cell_max(values: torch.Tensor, sub: int) -> torch.Tensor:
    """Max over each cell's (sub + 1)^d lattice block (the blocks share their faces)."""
    for axis in range(values.ndim):
        values = values.unfold(axis, sub + 1, sub).amax(-1)
    return values


def steepest_descent_basins(energy: torch.Tensor) -> torch.Tensor:
    """Basin labels of the nodes of a grid of energies in any dimension (shape of ``energy``, int64).

    Each node points to the lowest of its 3^d - 1 neighbours if that is strictly lower, else
    to itself (a minimum of the grid); the label of a node is the flat index of the minimum its
    pointers lead to (found by pointer jumping, log2 of the longest path rounds). For the basins
    of a density use the energy -log p.
    """
    if energy.ndim < 1:
        raise InputShapeError("steepest_descent_basins takes a grid of energies (at least 1D)")
    index = torch.arange(energy.numel()).reshape(energy.shape)
    best, target = energy.clone(), index.clone()
    padded = torch.full([n + 2 for n in energy.shape], math.inf, dtype=energy.dtype)
    padded_index = torch.full(padded.shape, -1, dtype=torch.long)
    inner = tuple(slice(1, -1) for _ in energy.shape)
    padded[inner], padded_index[inner] = energy, index
    for shift in itertools.product((-1, 0, 1), repeat=energy.ndim):
        if any(shift):
            window = tuple(slice(1 + s, 1 + s + n) for s, n in zip(shift, energy.shape))
            lower = padded[window] < best
            best = torch.where(lower, padded[window], best)
            target = torch.where(lower, padded_index[window], target)
    labels = target.reshape(-1)
    while True:
        jumped = labels[labels]
        if torch.equal(jumped, labels):
            return labels.reshape(energy.shape)
        labels = jumped


@dataclass(frozen=True)
class BasinResult:
    """Basin probabilities and free energies of a density, by quadrature.

    names : the basins' names; minima : (K, d) the grid minima (units of the system's data);
    probabilities : (K,) their probabilities (they need not sum to one when other basins
    hold mass; ``other`` is that mass); errors : (K,) estimated absolute errors (the change
    from a grid of twice the spacing, or the stated bound); free_energies : (K,)
    -log(P_k / P_0) in k_B T, relative to the first basin, with ``free_energy_errors``
    (propagated: e_k / P_k + e_0 / P_0); spacing : the grid spacing; rule : how basins are defined.
    """

    names: tuple[str, ...]
    minima: torch.Tensor
    probabilities: torch.Tensor
    errors: torch.Tensor
    other: float
    spacing: float
    rule: str

    @property
    def free_energies(self) -> torch.Tensor:
        """Delta F_k = -log(P_k / P_0) in k_B T (the first basin's is 0)."""
        return -torch.log(self.probabilities / self.probabilities[0])

    @property
    def free_energy_errors(self) -> torch.Tensor:
        """Propagated errors of :attr:`free_energies`: e_k / P_k + e_0 / P_0 (0 for the first)."""
        rel = self.errors / self.probabilities
        out = rel + rel[0]
        out[0] = 0.0
        return out


@dataclass(frozen=True)
class QuadratureGap:
    """lambda_1 of a 1D density by finite elements: the Richardson value, its estimated error,
    the raw values on the meshes and their element counts (units 1/x^2)."""

    value: float
    error: float
    values: tuple[float, ...]
    elements: tuple[int, ...]


def gap_1d(log_density: LogDensity, lo: float, hi: float, elements: Sequence[int] = (1000, 2000, 4000)) -> QuadratureGap:
    """lambda_1 of p proportional to exp(log_density) on [lo, hi] (module docstring).

    ``log_density``: torch function (n, 1) -> (n,); the box must hold p (natural boundaries).
    ``elements``: three increasing mesh sizes, each twice the previous.
    """
    sizes = tuple(int(m) for m in elements)
    if len(sizes) != 3 or sizes[1] != 2 * sizes[0] or sizes[2] != 2 * sizes[1] or sizes[0] < 8:
        raise ValueError(f"elements must be three sizes m, 2m, 4m with m >= 8; got {elements}")
    values = tuple(_fem_gap(log_density, float(lo), float(hi), m) for m in sizes)
    first = values[1] + (values[1] - values[0]) / 3.0
    second = values[2] + (values[2] - values[1]) / 3.0
    return QuadratureGap(second, abs(second - first), values, sizes)


def _fem_gap(log_density: LogDensity, lo: float, hi: float, m: int) -> float:
    """The lumped-mass P1 gap on m elements (module docstring)."""
    nodes, weights = np.polynomial.legendre.leggauss(4)
    h = (hi - lo) / m
    left = lo + h * np.arange(m)
    points = left[:, None] + 0.5 * h * (nodes + 1.0)
    with torch.no_grad():
        lp = log_density(torch.from_numpy(points.reshape(-1, 1))).numpy().reshape(m, 4)
    shift = lp.max()
    p = np.exp(lp - shift)
    element = 0.5 * h * (p * weights).sum(1)                       # int p over each element
    first = 0.5 * h * (p * weights * (1.0 - 0.5 * (nodes + 1.0))).sum(1)   # int p phi_left
    mass = np.zeros(m + 1)
    mass[:-1] += first
    mass[1:] += element - first
    off = -element / h**2
    diag = np.zeros(m + 1)
    diag[:-1] -= off
    diag[1:] -= off
    scale = 1.0 / np.sqrt(mass)
    _, vec = scipy.linalg.eigh_tridiagonal(diag * scale**2, off * scale[:-1] * scale[1:], select="i",
                                           select_range=(1, 1))
    f = vec[:, 0] * scale
    f = f - (mass * f).sum() / mass.sum()
    dirichlet = (element / h**2 * np.diff(f) ** 2).sum()
    return float(dirichlet / (mass * f**2).sum())
