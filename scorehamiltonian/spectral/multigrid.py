"""Geometric multigrid for H - sigma I, built from the operator itself (THEORY section 2).

The levels are the operator re-discretised on coarser grids of the same box
(:meth:`ScoreHamiltonian.coarsen`: n -> (n - 1) // 2 nodes per axis, the inverse of
:meth:`Grid.refine`), down to a level small enough for a sparse direct solve. One V-cycle
for A_0 x = b, A_l = H_l - sigma_l I:

- pre-smoothing: ``degree`` steps of the Chebyshev polynomial smoother in D_l^{-1} A_l
  (D_l the diagonal of A_l) on the interval [upper / ratio, upper], upper the Gershgorin
  bound of the spectrum of D_l^{-1} A_l and ratio = 2^d (the high frequencies of a
  factor-2 coarsening), from x = 0 (the first step needs no matvec), then the residual;
- coarse-grid correction: the residual b - A_l x restricted (transpose of linear
  interpolation, averaging), the cycle on level l + 1, the correction interpolated back;
- post-smoothing: the same polynomial (so the cycle is a symmetric operator);
- on the coarsest level: a sparse LU solve (SuperLU) of A_L.

Shifts: sigma_0 = sigma; the coarser operators' low eigenvalues differ from the fine ones by
their discretisation error, so each level keeps the same distance from its own ground
level: sigma_l = rho_l - (rho_0 - sigma), rho_l = g_l^T H_l g_l the Rayleigh quotient of the
level's ground-state approximation sqrt(p) (exact up to O(h^4) where p is resolved).
A coarser level whose A_l would have a diagonal entry <= 0 ends the hierarchy; on the
coarsest level the inertia of the symmetric-mode LU factorisation shows whether A_L is
positive definite, and its shift is lowered (by the offset, then twice that, ...) until it is.

Work is counted in fine-matvec equivalents: each level matvec (smoothing step or residual)
on m columns counts m N_l / N_0, the coarsest solve m (nnz(L) + nnz(U)) / nnz(A_0) (its
flops against those of a fine matvec). Transfers are not counted (their time is what the
benchmark's time / (work x bare matvec) ratio measures, together with the rest).

Vectors are row blocks: (m, N) contiguous, one column of the (N, m) block per row. On the
operator's numba backend the pre-smoothing steps and the residual run in one sweep over the
level, and so do the post-smoothing steps (:meth:`ScoreHamiltonian.smooth`: each plane of b
and of the coefficients is read from memory once, not once per step); in torch on other
devices, one step after another.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from ..common.errors import ResolutionError
from .transfer import prolong, restrict

__all__ = ["COARSEST_SIZE", "DEGREE", "Multigrid", "hierarchy", "rayleigh_quotient"]

#: Levels are added until one has at most this many unknowns (the sparse direct solve).
COARSEST_SIZE = 4096
#: Chebyshev smoothing steps before and after the coarse correction. On the benchmark's
#: four-mode mixture (``analysis/bench_gap.py``, k = 2, tol 5e-7; smoothing in one sweep)
#: degree 4 solves fastest: 1024^2 1.13 / 1.05 / 1.14 / 1.19 s and 128^3 4.98 / 3.70 /
#: 3.75 / 4.69 s at degrees 3 / 4 / 5 / 6; at 512^2 degrees 3-6 are within noise (0.40-0.43 s)
#: and degree 2 is slower (0.51 s): fewer LOBPCG iterations, each with its Rayleigh-Ritz
#: algebra, for a little more smoothing.
DEGREE = 4
#: Multigrid levels may resolve p_t this coarsely (points per width of its sharpest mode):
#: they only need to approximate the smooth eigenvectors, and the shifts absorb the rest.
MIN_POINTS_PER_WIDTH = 0.5


def hierarchy(H: Any, coarsest_size: int = COARSEST_SIZE,
              min_points_per_width: float = MIN_POINTS_PER_WIDTH) -> list[Any]:
    """[H, H.coarsen(), H.coarsen().coarsen(), ...] until a level has at most
    ``coarsest_size`` unknowns or the next one would not exist (fewer than 3 nodes on an
    axis, or p_t spanning fewer than ``min_points_per_width`` spacings)."""
    levels = [H]
    while levels[-1].shape[0] > coarsest_size:
        try:
            levels.append(levels[-1].coarsen(min_points_per_width=min_points_per_width))
        except (ResolutionError, ValueError):
            break
    return levels


def rayleigh_quotient(H: Any) -> float:
    """g^T H g / g^T g for the operator's ``ground_state`` g (one matvec)."""
    g = H.ground_state.reshape(-1).to(torch.float64)
    return float(g @ H.matvec(g.to(H.dtype)).to(torch.float64)) / float(g @ g)


@dataclass
class _Level:
    """One level: operator, shift, 1 / diagonal of H - shift, Chebyshev coefficients, weight
    (unknowns over the finest level's), work rows (x, r) and, below the finest level, the
    rows of the restricted residual it solves for, each for up to m columns."""

    H: Any
    shift: float
    dinv: torch.Tensor
    steps: list[tuple[float, float]]
    weight: float
    rows: torch.Tensor | None = None
    rhs: torch.Tensor | None = None

    def workspace(self, m: int) -> tuple[torch.Tensor, ...]:
        """Two (m, N) row blocks reused by every cycle: the pre-smoothed iterate (then the
        coarse correction added to it) and the residual (then the post-smoothed result),
        both written whole before they are read (so not zero-filled)."""
        if self.rows is None or self.rows.shape[1] < m:
            self.rows = torch.empty(2, m, self.H.shape[0], dtype=self.H.dtype, device=self.H.device)
        return tuple(block[:m] for block in self.rows)

    def right_hand_side(self, m: int) -> torch.Tensor:
        """An (m, N) row block reused by every cycle: the restricted residual of the finer
        level (written whole by the restriction before it is read)."""
        if self.rhs is None or self.rhs.shape[0] < m:
            self.rhs = torch.empty(m, self.H.shape[0], dtype=self.H.dtype, device=self.H.device)
        return self.rhs[:m]


def _chebyshev_steps(upper: float, ratio: float, degree: int) -> list[tuple[float, float]]:
    """(alpha_k, beta_k) of the Chebyshev iteration d <- alpha d + beta D^{-1} r, x += d for
    D^{-1} A with spectrum in [upper / ratio, upper] (Saad, Iterative Methods, alg. 12.1)."""
    lower = upper / ratio
    theta, delta = 0.5 * (upper + lower), 0.5 * (upper - lower)
    sigma = theta / delta
    rho = 1.0 / sigma
    steps = [(0.0, 1.0 / theta)]
    for _ in range(degree - 1):
        rho_new = 1.0 / (2.0 * sigma - rho)
        steps.append((rho_new * rho, 2.0 * rho_new / delta))
        rho = rho_new
    return steps


def _gershgorin_ratio(H: Any, D: torch.Tensor) -> float:
    """An upper bound of the spectrum of D^{-1} (H - shift): max_i 1 + sum_j |H_ij| / D_i."""
    off = sum(2.0 * abs(c) / h**2 for c in H.coef[1:] for h in H.grid.h)
    return 1.0 + off / float(D.min())


class Multigrid:
    """A V-cycle approximating (H - shift I)^{-1}, applied to blocks (module docstring).

    ``Multigrid(H, shift)(R)`` for R of shape (N, m) returns the cycle applied to every
    column at once, (N, m) column-major (in R's dtype). ``work`` accumulates the
    fine-matvec equivalents spent (module docstring), setup included.

    Parameters
    ----------
    H : a :class:`ScoreHamiltonian` (or any operator with ``coarsen``, ``grid``, ``coef``,
        ``residual``, ``smooth``, ``diagonal``, ``to_scipy``, ``ground_state``).
    shift : sigma, below lambda_0 of H (A_0 = H - sigma I positive definite).
    degree : smoothing steps before and after the coarse correction (default ``DEGREE``).
    levels : the operators of the hierarchy, H first (default :func:`hierarchy`(H)).
    """

    def __init__(self, H: Any, shift: float, degree: int = DEGREE, levels: list[Any] | None = None) -> None:
        operators = levels if levels is not None else hierarchy(H)
        size = operators[0].shape[0]
        self.work = 0.0
        offset = 0.0
        if len(operators) > 1:
            offset = rayleigh_quotient(operators[0]) - shift
            self.work += 1.0
        self.levels: list[_Level] = []
        for i, op in enumerate(operators):
            level_shift = shift
            if i > 0:
                level_shift = rayleigh_quotient(op) - offset
                self.work += op.shape[0] / size
            D = op.diagonal().to(torch.float64) - level_shift
            if float(D.min()) <= 0:
                if i == 0:
                    raise ValueError(f"the shift {shift:g} must lie below every diagonal entry of H (and below lambda_0)")
                break
            steps = _chebyshev_steps(_gershgorin_ratio(op, D), 2.0**op.grid.dim, degree)
            self.levels.append(_Level(op, level_shift, (1.0 / D).to(op.dtype), steps, op.shape[0] / size))
        self._factor_coarsest(max(offset, 1e-12))

    def _factor_coarsest(self, offset: float) -> None:
        """Sparse LU of A_L in symmetric mode; while its inertia shows a negative eigenvalue
        (the level's ground energy lies further below its Rayleigh quotient than ``offset``),
        lower the level's shift by twice as much again."""
        level = self.levels[-1]
        A = level.H.to_scipy()
        identity = sp.identity(A.shape[0], format="csc")
        for _ in range(60):
            lu = spla.splu((A - level.shift * identity).tocsc(), permc_spec="MMD_AT_PLUS_A",
                           diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            if not (lu.U.diagonal() <= 0).any():
                break
            level.shift -= offset
            offset *= 2.0
        self._lu = lu
        self._solve_work = (lu.L.nnz + lu.U.nnz) / (A.nnz / level.weight)

    def coarser(self) -> Multigrid:
        """The same hierarchy without its finest level (shifts, factorisation shared): the
        V-cycle for level 1, with work counted in level-1 matvecs."""
        if len(self.levels) < 2:
            raise ValueError("the coarsest level has no coarser hierarchy")
        sub = copy.copy(self)
        scale = self.levels[1].weight
        sub.levels = [dataclasses.replace(lv, weight=lv.weight / scale) for lv in self.levels[1:]]
        sub._solve_work = self._solve_work / scale
        sub.work = 0.0
        return sub

    @property
    def operators(self) -> list[Any]:
        """The level operators, finest first."""
        return [level.H for level in self.levels]

    def __call__(self, R: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The cycle applied to the columns of R (N, m); written into ``out`` (N, m,
        column-major, the operator's dtype) when given."""
        H = self.levels[0].H
        rows = R.T.to(dtype=H.dtype, device=H.device).contiguous()
        target = torch.empty_like(rows) if out is None else out.T
        self._cycle(0, rows, target)
        return target.T.to(R.dtype) if out is None else out

    def _cycle(self, i: int, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The V-cycle from level i for the row block b, written into ``out`` when given,
        else into a row block of the level's workspace (valid until the next cycle)."""
        level = self.levels[i]
        m = b.shape[0]
        if i == len(self.levels) - 1:
            self.work += m * self._solve_work
            x = self._lu.solve(b.cpu().numpy().astype(np.float64).T)
            x = torch.from_numpy(np.ascontiguousarray(x.T)).to(dtype=b.dtype, device=b.device)
            return x if out is None else out.copy_(x)
        x, spare = level.workspace(m)
        n, coarse = level.H.grid.n, self.levels[i + 1].H.grid.n
        level.H.smooth(b, level.shift, level.dinv, level.steps, x, residual=spare)
        self.work += len(level.steps) * m * level.weight  # the first step needs no matvec; + the residual
        rhs = self.levels[i + 1].right_hand_side(m)
        restrict(spare.reshape(m, *n), coarse, out=rhs.reshape(m, *coarse))
        xc = self._cycle(i + 1, rhs)
        prolong(xc.reshape(m, *coarse), n, out=x.reshape(m, *n))
        target = spare if out is None else out
        level.H.smooth(b, level.shift, level.dinv, level.steps, target, x0=x)
        self.work += len(level.steps) * m * level.weight
        return target
