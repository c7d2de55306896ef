"""Exact propagation of sampler densities on a grid: the judge of schedules and bounds.

No Monte Carlo: the density of every sampler is carried on a regular grid (1D or 2D) of
a box holding the target's noised marginals p_t, and compared at the end with p_{t_min}
(THEORY sections 3 and 4). The target is a Gaussian mixture, so p_t, its score and the
score's Jacobian are exact at every point.

Annealed Langevin: the square-root approximation (SqRA)
    The Langevin generator at level t is discretised by jump rates between grid neighbours
    i ~ j (spacing h_a along axis a), Q_ij = sqrt(P_j / P_i) / h_a^2, no flux out of the box
    (P the grid masses of p_t). Detailed balance P_i Q_ij = sqrt(P_i P_j) / h_a^2 = P_j Q_ji
    holds exactly, so P is stationary to round-off on every grid. In the frame
    phi = q / psi, psi = sqrt(P) (unit 2-norm), the master equation dq/du = Q^T q becomes
    dphi/du = -H phi with the symmetric H = -D^{1/2} Q D^{-1/2}, D = diag(P):
    H_ij = -1 / h_a^2 (neighbours), H_ii = sum_{j ~ i} sqrt(P_j / P_i) / h_a^2, H psi = 0.
    This is the discrete Score Hamiltonian in ground-state form (``ScoreHamiltonian(...,
    order=2, form="ground_state")`` builds the same matrix). chi^2(q || P) = ||phi - psi||^2.
    e^{-u H} phi is evaluated by the Talbot contour (Weideman's optimised contour,
    N = 24 nodes: e^{-x} to 3e-14 uniformly on x >= 0, one complex tridiagonal solve per
    conjugate pair of nodes) in 1D, by its Chebyshev expansion (about sqrt(37 u ||H||)
    sparse products) in 2D; both are exact to about 1e-13 relative to ||phi||.

Reverse SDE (Euler-Maruyama) and probability-flow ODE (Euler)
    A step t -> t - dt maps x to m(x) = (1 - dt f(t)) x + c dt g(t)^2 s_t(x) (c = 1 for the
    SDE, 1/2 for the ODE) and, for the SDE, adds N(0, g(t)^2 dt I). The ODE's final density is
    computed by backward characteristics: every final node is pulled back through all steps
    by Newton's method, and q_N(y) = q_0(x_0) / prod_k det Dm_k(x_{k-1}) with q_0 analytic:
    exact up to the Newton tolerance. The SDE's density is stepped on the grid: when the
    kernel is resolved (noise std >= 1.2 h ||Dm||) by the quadrature
    q'(y_j) = sum_i vol q(x_i) N(y_j; m(x_i), g^2 dt I) (trapezoid rule, spectrally accurate:
    error ~ exp(-2 pi^2 1.2^2)); otherwise by pushing q forward through the (then invertible)
    map, q~(y) = q(m^{-1}(y)) / det Dm(m^{-1}(y)) (cubic spline of log q, error O(h^4)), and
    convolving with the Gaussian in Fourier space (exact multiplier).

Initial laws: "exact" starts from p_{t_max}; "prior" from the process's reference Gaussian
N(0, (alpha_T^2 + sigma_T^2) I) at T = t_max, the law at T of the process started from
N(0, I): the stationary law N(0, I) of the variance-preserving processes and
N(0, (1 + sigma_T^2) I) for VE / EDM.

Metrics of the final masses Q against P = p_{t_min} (both normalised on the grid):
TV = 1/2 sum |Q - P|; KL = sum Q log(Q / P); chi^2 = sum (Q - P)^2 / P;
Hellinger = sqrt(1/2 sum (sqrt Q - sqrt P)^2) (in [0, 1]). TV <= sqrt(chi^2) / 2 by
Cauchy-Schwarz. Basins of p_{t_min}: "ascent" (each node follows its steepest ascending
neighbour, diagonal neighbours included, to a local maximum of p_{t_min} on the grid) or
"component" (the component k of largest w_k N_k(x) at t_min).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
from scipy.linalg import lapack
from scipy.ndimage import correlate1d, map_coordinates
from scipy.special import ive, logsumexp

from ..common.errors import InputShapeError, ResolutionError, ScheduleError
from ..score.interface import ExactScore
from ..score.mixture import GaussianMixture
from ..score.processes import ForwardProcess
from ..spectral.grid import Grid, box_from_mixture
from ..spectral.operator import BoundaryMassWarning, ResolutionWarning
from .schedules import Schedule, as_schedule

__all__ = ["GridModel", "Level", "PropagationResult", "default_grid", "distances", "propagate_exact"]

Sampler = Literal["langevin", "sde", "ode"]
Initial = Literal["prior", "exact"]
BasinRule = Literal["ascent", "component"]

_LOG_2PI = math.log(2.0 * math.pi)
#: Talbot contour: N nodes (error about 3.89^-N), z(theta) = N (-0.6122 + 0.5017 theta cot(0.6407 theta)
#: + 0.2645 i theta) (Weideman 2006; Trefethen, Weideman & Schmelzer 2006).
_TALBOT_N = 24
#: Quadrature of the Euler-Maruyama kernel needs noise std >= this many h ||Dm|| (trapezoid error
#: about 2 exp(-2 pi^2 r^2) < 1e-12).
_QUADRATURE_RESOLUTION = 1.2
#: Newton iterations and tolerance (relative to 1 + |y|) for inverting a step's map.
_NEWTON_ITERATIONS, _NEWTON_TOL = 60, 1e-12
#: Accuracy of one e^{-uH} phi relative to ||phi|| (tests/test_propagation.py: u ||H|| <= 1e5).
_SOLVER_TOL = 1e-12
#: Floor of log q in the spline interpolation (q below e^-700 counts as 0).
_LOG_FLOOR = -700.0
#: Points per width below which a result is flagged unresolved, and refused.
_WARN_POINTS_PER_WIDTH, _MIN_POINTS_PER_WIDTH = 4.0, 1.0
#: Mass lost out of the box above which a result is flagged unresolved.
_MASS_TOL = 1e-7
#: Default grid: points per width of the sharpest mode and the cap on nodes per axis.
_DEFAULT_PPW = {1: 8.0, 2: 4.0}
_MAX_NODES = {1: 8191, 2: 96}
_LEVEL_CACHE_SIZE = 256
_GRID_CACHE: dict = {}


def _talbot() -> tuple[np.ndarray, np.ndarray]:
    theta = -math.pi + (np.arange(_TALBOT_N) + 0.5) * 2.0 * math.pi / _TALBOT_N
    theta = theta[theta > 0]
    a = 0.6407
    z = _TALBOT_N * (-0.6122 + 0.5017 * theta / np.tan(a * theta) + 0.2645j * theta)
    dz = _TALBOT_N * (0.5017 / np.tan(a * theta) - 0.5017 * a * theta / np.sin(a * theta) ** 2 + 0.2645j)
    return z, -2.0j * np.exp(z) * dz / _TALBOT_N


_TALBOT_Z, _TALBOT_W = _talbot()


# --------------------------------------------------------------------------- mixtures in numpy


@dataclass(frozen=True)
class _Marginal:
    """sum_k w_k N(m_k, U_k diag(c_k) U_k^T) in numpy: log_w (K,), means (K, d), rot (K, d, d), var (K, d)."""

    log_w: np.ndarray
    means: np.ndarray
    rot: np.ndarray
    var: np.ndarray

    @property
    def min_std(self) -> float:
        return float(np.sqrt(self.var.min()))


def _marginal(mixture: GaussianMixture, alpha: float, sigma: float) -> _Marginal:
    """p_t = sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I) from the mixture's eigendecompositions."""
    return _Marginal(
        mixture.log_weights.detach().cpu().numpy(),
        alpha * mixture.means.detach().cpu().numpy(),
        mixture.eigenvectors.detach().cpu().numpy(),
        alpha**2 * mixture.eigenvalues.detach().cpu().numpy() + sigma**2,
    )


def _evaluate(marg: _Marginal, x: np.ndarray, jacobian: bool = False) -> tuple[np.ndarray, ...]:
    """log p (n,), per-component log w_k N_k (n, K), score (n, d) and, if asked, its Jacobian (n, d, d).

    With z_k = U_k^T (x - m_k), w = z / c: log N_k = -(|z|^2_c + sum log c + d log 2 pi) / 2,
    s_k = -U_k w, s = sum_k r_k s_k (r the responsibilities) and
    ds/dx = sum_k r_k (-U_k diag(1 / c_k) U_k^T + s_k s_k^T) - s s^T.
    """
    n, d = x.shape
    k = marg.log_w.size
    rot = marg.rot.transpose(1, 0, 2).reshape(d, k * d)
    z = (x @ rot).reshape(n, k, d) - np.einsum("kd,kde->ke", marg.means, marg.rot)
    w = z / marg.var
    comp = marg.log_w - 0.5 * ((z * w).sum(-1) + np.log(marg.var).sum(-1) + d * _LOG_2PI)
    log_p = logsumexp(comp, axis=1)
    resp = np.exp(comp - log_p[:, None])
    s_k = -(w[:, :, None, :] * marg.rot).sum(-1)
    score = (resp[:, :, None] * s_k).sum(1)
    if not jacobian:
        return log_p, comp, score
    inv_cov = np.einsum("kde,ke,kfe->kdf", marg.rot, 1.0 / marg.var, marg.rot)
    jac = (resp[:, :, None, None] * (s_k[:, :, :, None] * s_k[:, :, None, :] - inv_cov)).sum(1)
    return log_p, comp, score, jac - score[:, :, None] * score[:, None, :]


def _mixture_key(mixture: GaussianMixture) -> tuple[bytes, ...]:
    return tuple(a.detach().cpu().numpy().tobytes() for a in (mixture.weights, mixture.means, mixture.covs))


def _prior_marginal(process: ForwardProcess, t_max: float, dim: int) -> _Marginal:
    variance = float(process.alpha(t_max)) ** 2 + float(process.sigma(t_max)) ** 2
    return _Marginal(np.zeros(1), np.zeros((1, dim)), np.eye(dim)[None], np.full((1, dim), variance))


# --------------------------------------------------------------------------- grid and levels


def _grid_points(grid: Grid) -> np.ndarray:
    return grid.points().numpy()


def default_grid(
    target: GaussianMixture,
    process: ForwardProcess,
    t_min: float,
    t_max: float,
    points_per_width: float | None = None,
    box_tol: float = 1e-10,
    max_nodes: int | None = None,
) -> Grid:
    """The grid a propagation uses unless given one.

    Box: :func:`~scorehamiltonian.spectral.grid.box_from_mixture` (tail mass ``box_tol``) of all
    components of p_t at 41 times spread over [t_min, t_max] (t_min + (t_max - t_min) 10^-6..1, log-spaced)
    and of the prior N(0, (alpha_T^2 + sigma_T^2) I). Spacing: the smallest component
    standard deviation of p_t over those times divided by ``points_per_width`` (default 8 in
    1D, 4 in 2D), with at most ``max_nodes`` interior nodes per axis (default 8191 in 1D,
    96 in 2D); the grid depends on the target and the time range only, not on the levels in
    between, so that every schedule over the same range is judged on the same grid.
    """
    dim = target.dim
    if dim not in _DEFAULT_PPW:
        raise InputShapeError(f"exact propagation works on 1D and 2D grids; the target has d = {dim}")
    ppw = float(points_per_width if points_per_width is not None else _DEFAULT_PPW[dim])
    cap = int(max_nodes if max_nodes is not None else _MAX_NODES[dim])
    key = (_mixture_key(target), process, float(t_min), float(t_max), ppw, float(box_tol), cap)
    if key not in _GRID_CACHE:
        times = t_min + (t_max - t_min) * np.concatenate([[0.0], np.logspace(-6, 0, 40)])
        alpha = process.alpha(times)[:, None, None, None]
        sigma = process.sigma(times)[:, None, None, None]
        eye = torch.eye(dim, dtype=torch.float64)
        covs = (alpha**2 * target.covs + sigma**2 * eye).reshape(-1, dim, dim)
        means = (alpha[..., 0] * target.means).reshape(-1, dim)
        prior_var = float(process.alpha(t_max)) ** 2 + float(process.sigma(t_max)) ** 2
        covs = torch.cat([covs, prior_var * eye[None]])
        means = torch.cat([means, torch.zeros(1, dim, dtype=torch.float64)])
        everything = GaussianMixture(torch.full((means.shape[0],), 1.0 / means.shape[0], dtype=torch.float64),
                                     means, covs)
        lo, hi = box_from_mixture(everything, box_tol)
        width = math.sqrt(float(everything.eigenvalues.min()))
        n = [min(cap, max(3, math.ceil((b - a) * ppw / width) - 1)) for a, b in zip(lo, hi)]
        _GRID_CACHE[key] = Grid(lo, hi, n)
    return _GRID_CACHE[key]


@dataclass(frozen=True)
class Level:
    """p_t on the grid and its SqRA operator.

    t, alpha, sigma : the time and the process's alpha_t, sigma_t.
    log_mass : (N,) log of the grid masses P_i of p_t, normalised (logsumexp = 0).
    psi : (N,) sqrt(P): the ground state of H, unit 2-norm.
    diag : (N,) the diagonal of H, sum_{j ~ i} sqrt(P_j / P_i) / h^2 (off-diagonals -1 / h^2).
    outside : mass of p_t outside the box, 1 - sum_i p_t(x_i) vol (trapezoid rule).
    points_per_width : smallest component standard deviation of p_t over max h.
    """

    t: float
    alpha: float
    sigma: float
    log_mass: np.ndarray
    psi: np.ndarray
    diag: np.ndarray
    outside: float
    points_per_width: float
    marginal: _Marginal


class GridModel:
    """A Gaussian-mixture target's noised marginals p_t on a grid, with the SqRA dynamics.

    ``GridModel(target, process, grid=None, t_range=None)``: target a
    :class:`~scorehamiltonian.score.mixture.GaussianMixture` or an
    :class:`~scorehamiltonian.score.interface.ExactScore` (whose process is used when ``process`` is
    None); without ``grid``, :func:`default_grid` over ``t_range`` (default the process's
    range). Levels (p_t on the grid and its operator) are cached per (target, grid, alpha_t,
    sigma_t) across models, so repeated propagations with the same levels are cheap.
    """

    _cache: ClassVar[OrderedDict] = OrderedDict()

    def __init__(
        self,
        target: GaussianMixture | ExactScore,
        process: ForwardProcess | None = None,
        grid: Grid | None = None,
        t_range: tuple[float, float] | None = None,
        **grid_options: Any,
    ) -> None:
        if isinstance(target, ExactScore):
            process = target.process if process is None else process
            if process != target.process:
                raise ValueError(f"the ExactScore's process {target.process!r} differs from process={process!r}")
            target = target.mixture
        if not isinstance(target, GaussianMixture):
            raise TypeError(f"target must be a GaussianMixture or an ExactScore; got {type(target).__name__}")
        if process is None:
            raise ValueError("pass the forward process (process=OU(), ...) with a GaussianMixture target")
        if target.dim not in _DEFAULT_PPW:
            raise InputShapeError(f"exact propagation works on 1D and 2D grids; the target has d = {target.dim}")
        t_lo, t_hi = t_range if t_range is not None else (process.t_min, process.t_max)
        process.time(np.array([t_lo, t_hi]))
        self.target, self.process = target, process
        self.grid = grid if grid is not None else default_grid(target, process, t_lo, t_hi, **grid_options)
        if self.grid.dim != target.dim:
            raise InputShapeError(f"the grid is {self.grid.dim}-dimensional but the target is {target.dim}-dimensional")
        self.points = _grid_points(self.grid)
        self.h = np.array(self.grid.h)
        self._key = (_mixture_key(target), self.grid)

    def __repr__(self) -> str:
        return f"GridModel({self.target!r}, {self.process!r}, {self.grid})"

    def marginal(self, t: float) -> _Marginal:
        """p_t as numpy arrays (see :func:`_evaluate`)."""
        return _marginal(self.target, float(self.process.alpha(t)), float(self.process.sigma(t)))

    def prior(self, t_max: float) -> _Marginal:
        """The reference Gaussian N(0, (alpha_T^2 + sigma_T^2) I) at T = t_max."""
        return _prior_marginal(self.process, t_max, self.grid.dim)

    def level(self, t: float) -> Level:
        """p_t on the grid and its SqRA operator (cached)."""
        alpha, sigma = float(self.process.alpha(t)), float(self.process.sigma(t))
        key = (*self._key, alpha, sigma)
        level = self._cache.get(key)
        if level is None:
            level = self._build_level(float(t), alpha, sigma)
            self._cache[key] = level
            if len(self._cache) > _LEVEL_CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return level

    def _build_level(self, t: float, alpha: float, sigma: float) -> Level:
        marg = _marginal(self.target, alpha, sigma)
        log_p = _evaluate(marg, self.points)[0]
        total = logsumexp(log_p)
        log_mass = log_p - total
        outside = -math.expm1(total + math.log(self.grid.cell_volume))
        return Level(t, alpha, sigma, log_mass, np.exp(0.5 * log_mass), self._sqra_diagonal(log_mass),
                     outside, marg.min_std / float(self.h.max()), marg)

    def _sqra_diagonal(self, log_mass: np.ndarray) -> np.ndarray:
        """sum over neighbours j of exp((log P_j - log P_i) / 2) / h_a^2, from log-mass differences."""
        half = 0.5 * log_mass.reshape(self.grid.n)
        total = np.zeros_like(half)
        for a, h in enumerate(self.h):
            step = np.diff(half, axis=a)
            up = [slice(None)] * half.ndim
            down = [slice(None)] * half.ndim
            up[a], down[a] = slice(0, -1), slice(1, None)
            total[tuple(up)] += np.exp(step) / h**2
            total[tuple(down)] += np.exp(-step) / h**2
        return total.reshape(-1)

    def hamiltonian(self, level: Level) -> sp.csr_matrix:
        """H = -D^{1/2} Q D^{-1/2} at a level as a sparse symmetric matrix (N, N)."""
        return sp.csr_matrix(sp.diags(level.diag) - _neighbours(self.grid))

    def relax(self, phi: np.ndarray, level: Level, u: float) -> np.ndarray:
        """e^{-u H} phi (phi of shape (N,) or (N, m)): Langevin time u at the level, phi-frame.

        The ground-state component <psi, phi> psi is kept exactly (mass conservation); the rest
        goes through the Talbot contour (1D) or the Chebyshev expansion (2D).
        """
        if u == 0:
            return phi.copy()
        weight = level.psi @ phi
        rest = phi - np.multiply.outer(level.psi, weight)
        if self.grid.dim == 1:
            rest = self._talbot_1d(rest, level, u)
        else:
            rest = _chebyshev_exp(self.hamiltonian(level), rest, u)
        return rest + np.multiply.outer(level.psi, weight)

    def _talbot_1d(self, phi: np.ndarray, level: Level, u: float) -> np.ndarray:
        off = np.full(level.diag.size - 1, -1.0 / float(self.h[0]) ** 2, dtype=complex)
        rhs = phi.astype(complex)
        out = np.zeros(phi.shape)
        for z, w in zip(_TALBOT_Z, _TALBOT_W):
            *_, x, info = lapack.zgtsv(off.copy(), level.diag + z / u, off.copy(), rhs.copy())
            if info != 0:
                raise FloatingPointError(f"tridiagonal solve failed (LAPACK info {info}) at Langevin time {u}")
            out += (w / u * x).real
        return out

    def basins(self, level: Level, rule: BasinRule = "ascent") -> np.ndarray:
        """Basin labels 0..B-1 of the nodes (N,) for p at the level ("ascent" or "component")."""
        if rule == "component":
            comp = _evaluate(level.marginal, self.points)[1]
            labels = np.argmax(comp, axis=1)
        elif rule == "ascent":
            labels = _steepest_ascent(level.log_mass.reshape(self.grid.n))
        else:
            raise ValueError(f"basins must be 'ascent' or 'component'; got {rule!r}")
        return np.unique(labels, return_inverse=True)[1].reshape(-1)


@functools.lru_cache(maxsize=16)
def _neighbours(grid: Grid) -> sp.csr_matrix:
    """The grid's neighbour matrix, 1 / h_a^2 between nodes adjacent along axis a (CSR, cached)."""
    n = grid.n
    parts = []
    for a, (m, h) in enumerate(zip(n, grid.h)):
        band = sp.diags([np.ones(m - 1), np.ones(m - 1)], [-1, 1], shape=(m, m))
        parts.append(sp.kron(sp.kron(sp.identity(math.prod(n[:a])), band), sp.identity(math.prod(n[a + 1:]))) / h**2)
    return sp.csr_matrix(sum(parts))


def _chebyshev_exp(H: sp.csr_matrix, phi: np.ndarray, u: float) -> np.ndarray:
    """e^{-u H} phi for symmetric H >= 0 by its Chebyshev expansion on [0, B].

    B is Gershgorin's bound max_i sum_j |H_ij| >= lambda_max. With x = B (y + 1) / 2 and
    beta = u B / 2: e^{-u x} = sum_k c_k T_k(y), c_0 = e^{-beta} I_0(beta),
    c_k = 2 (-1)^k e^{-beta} I_k(beta) (modified Bessel functions), truncated where
    e^{-beta} I_k(beta) < 1e-17 (about sqrt(74 beta) terms). sum_k |c_k| = 1, so the
    three-term recurrence carries round-off of order (terms) eps ||phi|| only.
    """
    bound = float(abs(H).sum(axis=1).max())
    beta = 0.5 * u * bound
    k = np.arange(int(math.sqrt(80.0 * beta)) + 30)
    coef = 2.0 * (-1.0) ** k * ive(k, beta)
    coef[0] *= 0.5
    coef = coef[: int(np.flatnonzero(np.abs(coef) >= 1e-17).max()) + 1]
    prev, cur = phi, (2.0 / bound) * (H @ phi) - phi
    out = coef[0] * prev + (coef[1] * cur if coef.size > 1 else 0.0)
    for c in coef[2:]:
        prev, cur = cur, 2.0 * ((2.0 / bound) * (H @ cur) - cur) - prev
        out = out + c * cur
    return out


def _steepest_ascent(log_p: np.ndarray) -> np.ndarray:
    """Each node's local maximum (flat index) reached by following its highest neighbour (3^d - 1 of them)."""
    shape = log_p.shape
    index = np.arange(log_p.size).reshape(shape)
    best, best_val = index.copy(), log_p.copy()
    padded = np.pad(log_p, 1, constant_values=-np.inf)
    padded_idx = np.pad(index, 1, constant_values=-1)
    for offset in np.ndindex(*([3] * log_p.ndim)):
        if all(o == 1 for o in offset):
            continue
        window = tuple(slice(o, o + m) for o, m in zip(offset, shape))
        better = padded[window] > best_val
        best_val = np.where(better, padded[window], best_val)
        best = np.where(better, padded_idx[window], best)
    parent = best.reshape(-1)
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


# --------------------------------------------------------------------------- metrics


def distances(q_mass: np.ndarray, p_mass: np.ndarray) -> dict[str, float]:
    """TV, KL(q || p), chi^2(q || p) and Hellinger between two mass vectors (each summing to 1).

    TV = sum |q - p| / 2, KL = sum q log(q / p) (0 log 0 = 0), chi^2 = sum (q - p)^2 / p,
    Hellinger = sqrt(sum (sqrt q - sqrt p)^2 / 2).
    """
    q = np.clip(q_mass, 0.0, None)
    pos = q > 0
    kl = float(np.sum(q[pos] * (np.log(q[pos]) - np.log(p_mass[pos]))))
    return {
        "tv": 0.5 * float(np.abs(q - p_mass).sum()),
        "kl": max(kl, 0.0),
        "chi2": float(np.sum((q - p_mass) ** 2 / p_mass)),
        "hellinger": math.sqrt(0.5 * float(np.sum((np.sqrt(q) - np.sqrt(p_mass)) ** 2))),
    }


# --------------------------------------------------------------------------- samplers


def _langevin(model: GridModel, schedule: Schedule, q: np.ndarray) -> tuple[np.ndarray, list[Level], float]:
    """Masses after annealed Langevin (levels with zero Langevin time are skipped), the levels used
    and the solver error bound sum_k _SOLVER_TOL ||phi_k|| of the final phi (phi_k entering level k)."""
    levels, error = [], 0.0
    for t, u in zip(schedule.times[1:], schedule.langevin_time):
        if u > 0:
            level = model.level(float(t))
            phi = q / level.psi
            error += _SOLVER_TOL * float(np.linalg.norm(phi))
            q = level.psi * model.relax(phi, level, float(u))
            levels.append(level)
    return q, levels, error


def _steps(schedule: Schedule, n_steps: int) -> list[tuple[float, float]]:
    """(t, dt) of every Euler step: each interval of the schedule split into n_steps equal steps."""
    out = []
    for t_hi, t_lo in zip(schedule.times[:-1], schedule.times[1:]):
        edges = np.linspace(t_hi, t_lo, n_steps + 1)
        out += [(float(a), float(a - b)) for a, b in itertools.pairwise(edges)]
    return out


StepMap = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _step_map(model: GridModel, t: float, dt: float, coef: float) -> tuple[StepMap, float]:
    """x -> (m(x), Dm(x)) for m(x) = (1 - dt f) x + coef dt g^2 s_t(x), and the noise std g sqrt(dt)."""
    marg = model.marginal(t)
    f, g2 = float(model.process.f(t)), float(model.process.g2(t))
    a, b = 1.0 - dt * f, coef * dt * g2
    eye = np.eye(model.grid.dim)

    def apply(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, _, score, jac = _evaluate(marg, x, jacobian=True)
        return a * x + b * score, a * eye + b * jac

    return apply, math.sqrt(g2 * dt)


def _invert(step: StepMap, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """x with m(x) = y by damped Newton from x = y; returns x, det Dm(x) and whether all converged."""
    x = y.copy()
    mx, jac = step(x)
    res = np.linalg.norm(mx - y, axis=1)
    tol = _NEWTON_TOL * (1.0 + np.linalg.norm(y, axis=1))
    for _ in range(_NEWTON_ITERATIONS):
        active = res > tol
        if not active.any():
            break
        dx = np.linalg.solve(jac[active], (mx - y)[active][..., None])[..., 0]
        scale = np.ones(dx.shape[0])
        for _ in range(30):
            trial = x[active] - scale[:, None] * dx
            m_trial, j_trial = step(trial)
            r_trial = np.linalg.norm(m_trial - y[active], axis=1)
            ok = r_trial < res[active]
            if ok.all():
                break
            scale = np.where(ok, scale, 0.5 * scale)
        idx = np.flatnonzero(active)
        x[idx], mx[idx], jac[idx], res[idx] = trial, m_trial, j_trial, r_trial
    return x, np.linalg.det(jac), bool((res <= tol).all())


def _ode(model: GridModel, schedule: Schedule, q0: _Marginal, n_steps: int) -> tuple[np.ndarray, bool]:
    """Final density at the nodes by backward characteristics (exact up to Newton's tolerance)."""
    x = model.points.copy()
    log_det = np.zeros(x.shape[0])
    converged = True
    for t, dt in reversed(_steps(schedule, n_steps)):
        step, _ = _step_map(model, t, dt, 0.5)
        x, det, ok = _invert(step, x)
        converged &= ok
        if (det <= 0).any():
            raise ScheduleError(
                f"the Euler step of the probability-flow ODE from t = {t:.6g} to {t - dt:.6g} folds space "
                f"(det Dm = {det.min():.3g} <= 0): the sampler's density is singular; use smaller steps "
                "(more levels or n_steps)"
            )
        log_det += np.log(det)
    return np.exp(_evaluate(q0, x)[0] - log_det), converged


def _smooth(q: np.ndarray, grid: Grid, std: float) -> np.ndarray:
    """q (on the grid's shape) convolved with N(0, std^2 I), one axis at a time.

    Along each axis log q is interpolated by a cubic spline onto a grid r times finer
    (r = ceil(1.2 h / std), so that the kernel is resolved) and the convolution integral
    is summed by the trapezoid rule there (error about 2 exp(-2 pi^2 1.2^2)); every term is
    positive, so small values keep their relative accuracy. Outside the box q counts as 0.
    """
    for a, h in enumerate(grid.h):
        r = max(1, math.ceil(_QUADRATURE_RESOLUTION * h / std))
        n = q.shape[a]
        fine = np.arange(r * (n - 1) + 1) / r
        coords = np.meshgrid(*[fine if b == a else np.arange(m) for b, m in enumerate(q.shape)],
                             indexing="ij")
        log_q = np.log(np.maximum(q, np.exp(_LOG_FLOOR)))
        values = np.exp(map_coordinates(log_q, coords, order=3, mode="nearest"))
        half = math.ceil(10.0 * std * r / h)
        offsets = np.arange(-half, half + 1) * (h / r)
        kernel = (h / r) * np.exp(-0.5 * (offsets / std) ** 2) / (math.sqrt(2 * math.pi) * std)
        q = correlate1d(values, kernel, axis=a, mode="constant", cval=0.0)
        q = np.take(q, np.arange(0, q.shape[a], r), axis=a)
    return q


def _quadrature(model: GridModel, q: np.ndarray, m: np.ndarray, std: float) -> np.ndarray:
    """sum_i vol q_i N(y_j; m_i, std^2 I) at every node y_j (separable per axis)."""
    weights = q * model.grid.cell_volume
    keep = weights > 0
    kernels = []
    for a, axis in enumerate(model.grid.axes()):
        diff = (axis.numpy()[None, :] - m[keep, a][:, None]) / std
        kernels.append(np.exp(-0.5 * diff**2) / (math.sqrt(2 * math.pi) * std))
    if model.grid.dim == 1:
        return weights[keep] @ kernels[0]
    return ((kernels[0].T * weights[keep]) @ kernels[1]).reshape(-1)


def _pushforward(model: GridModel, q: np.ndarray, step: StepMap) -> tuple[np.ndarray, bool]:
    """q~(y) = q(m^{-1}(y)) / det Dm(m^{-1}(y)) at the nodes (cubic spline of log q; beyond the
    box q takes its value at the nearest face, where the box makes it negligible)."""
    x, det, converged = _invert(step, model.points)
    coords = ((x - np.array(model.grid.lo)) / model.h - 1.0).T
    log_q = np.log(np.maximum(q, np.exp(_LOG_FLOOR))).reshape(model.grid.n)
    return np.exp(map_coordinates(log_q, coords, order=3, mode="nearest")) / det, converged


def _sde(model: GridModel, schedule: Schedule, q: np.ndarray, n_steps: int) -> tuple[np.ndarray, bool, list[str]]:
    converged, notes = True, []
    h_max = float(model.h.max())
    for t, dt in _steps(schedule, n_steps):
        step, std = _step_map(model, t, dt, 1.0)
        m, jac = step(model.points)
        alive = q * model.grid.cell_volume > 1e-16
        stretch = float(np.linalg.norm(jac[alive], ord=2, axis=(1, 2)).max()) if alive.any() else 1.0
        det = np.linalg.det(jac)
        if std >= _QUADRATURE_RESOLUTION * h_max * stretch or (det[alive] <= 0).any():
            if std < _QUADRATURE_RESOLUTION * h_max * stretch:
                notes.append(f"Euler-Maruyama step at t = {t:.4g} folds space and its kernel is unresolved "
                             f"(noise std {std:.3g} < {_QUADRATURE_RESOLUTION} h ||Dm|| = "
                             f"{_QUADRATURE_RESOLUTION * h_max * stretch:.3g})")
            q = _quadrature(model, q, m, std)
        else:
            pushed, ok = _pushforward(model, q, step)
            converged &= ok
            q = _smooth(pushed.reshape(model.grid.n), model.grid, std).reshape(-1)
    return q, converged, notes


# --------------------------------------------------------------------------- result and entry point


@dataclass(frozen=True)
class PropagationResult:
    """The final density of a sampler on the grid against p_{t_min} (module docstring for definitions).

    grid : the grid; q, p : final density and p_{t_min} at the nodes (each normalised on the
    grid: sum q * cell_volume = 1); tv, kl, chi2, hellinger : distances of q from p;
    basins : (N,) basin label of each node; basin_weights_q, basin_weights_p : (B,) masses;
    weight_error : max_b |Q(b) - P(b)|; sampler, initial, schedule, n_steps : what ran;
    points_per_width : the sharpest component's standard deviation over the spacing at
    t_min; numerical_error : bound on the solvers' error of the final q in the phi-frame,
    ||delta phi|| (so |delta sqrt(chi2)| <= it and |delta tv| <= it / 2): 1e-12 ||phi|| per
    Langevin level (Talbot / Chebyshev, checked against dense exponentials), the Newton tolerance
    per Euler step (the SDE's O(h^4) spline error is not in it: use ``refine``), plus summation
    round-off; boundary_mass : largest mass of p_t (over the initial law and the levels used)
    outside the box; mass_lost : the sampler's mass that left the box (q is renormalised
    after); converged : every Newton inversion converged; resolved : points_per_width >= 4,
    boundary_mass <= 1e-7, mass_lost <= max(1e-7, tv / 100) (it can move TV by at most
    itself), converged, no unresolved step; notes : the reasons
    when not resolved; tv_refined, discretisation_error : with ``refine=True``, TV on the
    grid with half the spacing and |tv - tv_refined| (None otherwise).
    """

    grid: Grid
    q: np.ndarray
    p: np.ndarray
    tv: float
    kl: float
    chi2: float
    hellinger: float
    basins: np.ndarray
    basin_weights_q: np.ndarray
    basin_weights_p: np.ndarray
    weight_error: float
    sampler: str
    initial: str
    schedule: Schedule
    n_steps: int
    points_per_width: float
    numerical_error: float
    boundary_mass: float
    mass_lost: float
    converged: bool
    resolved: bool
    notes: tuple[str, ...]
    tv_refined: float | None = None
    discretisation_error: float | None = None

    def plot(self, ax: Any = None) -> Any:
        """q and p_{t_min} on the grid (1D: log density against x; 2D: contours). Returns the figure."""
        from matplotlib.figure import Figure

        if ax is None:
            ax = Figure(figsize=(6.0, 3.5), layout="constrained").subplots()
        if self.grid.dim == 1:
            x = self.grid.axes()[0].numpy()
            ax.semilogy(x, self.p, "k-", label="$p_{t_{min}}$")
            ax.semilogy(x, np.maximum(self.q, 1e-300), "C1--", label=f"{self.sampler} ({self.schedule.name})")
            ax.set_ylim(max(1e-12, float(self.p.min())), 2 * float(max(self.p.max(), self.q.max())))
            ax.set_xlabel("$x$")
            ax.legend()
        else:
            xs = [a.numpy() for a in self.grid.axes()]
            ax.contour(xs[0], xs[1], self.p.reshape(self.grid.n).T, colors="k", linewidths=0.8)
            ax.contour(xs[0], xs[1], self.q.reshape(self.grid.n).T, colors="C1", linestyles="--", linewidths=0.8)
        ax.set_title(f"TV {self.tv:.3g}, weight error {self.weight_error:.3g}")
        return ax.figure


def _initial_mass(model: GridModel, initial: Initial, t_max: float) -> tuple[_Marginal, np.ndarray, float]:
    if initial == "exact":
        marg = model.marginal(t_max)
    elif initial == "prior":
        marg = model.prior(t_max)
    else:
        raise ValueError(f"initial must be 'prior' or 'exact'; got {initial!r}")
    log_p = _evaluate(marg, model.points)[0] + math.log(model.grid.cell_volume)
    return marg, np.exp(log_p), -math.expm1(logsumexp(log_p))


def propagate_exact(
    target: GaussianMixture | ExactScore,
    process: ForwardProcess | None,
    schedule: Any,
    *,
    sampler: Sampler = "langevin",
    grid: Grid | None = None,
    initial: Initial = "prior",
    n_steps: int | None = None,
    basins: BasinRule = "ascent",
    refine: bool = False,
    model: GridModel | None = None,
) -> PropagationResult:
    """Propagate a sampler's density exactly on a grid along a schedule; compare with p_{t_min}.

    target : a :class:`GaussianMixture` (with ``process``) or an :class:`ExactScore`
        (``process`` None or its own); d = 1 or 2.
    schedule : a :class:`~scorehamiltonian.sampling.schedules.Schedule` or anything
        :func:`~scorehamiltonian.sampling.schedules.as_schedule` accepts (times strictly monotone);
        its times must lie in the process's range (:class:`TimeRangeError`); malformed ones
        raise :class:`ScheduleError`.
    sampler : "langevin" (annealed Langevin: Langevin time langevin_time[k-1] at level
        times[k], k = 1..N, SqRA dynamics), "sde" (Euler-Maruyama on the times) or "ode"
        (Euler on the probability-flow ODE). ``langevin_time`` is used by "langevin" only.
    grid : the grid (default :func:`default_grid` over [t_min, t_max] of the schedule);
        ``model`` : a :class:`GridModel` to reuse (its grid is then used).
    initial : "prior" or "exact" (module docstring). n_steps : Euler steps per interval of
        the schedule for "sde" / "ode" (default 1: the schedule's times are the step grid).
    basins : "ascent" or "component" (module docstring).
    refine : also run on ``grid.refine()`` (half the spacing) and report the TV difference as
        ``discretisation_error``.

    Warns :class:`ResolutionWarning` when the grid has fewer than 4 points per width of the
    sharpest component at t_min (raises :class:`ResolutionError` below 1) and
    :class:`BoundaryMassWarning` when the box cuts more than 1e-7 of a density's mass;
    both reasons also clear ``resolved``. Returns a :class:`PropagationResult`.
    """
    if model is None:
        schedule = as_schedule(schedule)
        model = GridModel(target, process, grid, t_range=(schedule.t_min, schedule.t_max))
    schedule = as_schedule(schedule, model.process)
    if sampler not in ("langevin", "sde", "ode"):
        raise ValueError(f"sampler must be 'langevin', 'sde' or 'ode'; got {sampler!r}")
    n_steps = 1 if n_steps is None else int(n_steps)
    if n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps}")
    final = model.level(schedule.t_min)
    if final.points_per_width < _MIN_POINTS_PER_WIDTH:
        raise ResolutionError(
            f"the grid (h = {model.h.max():.3g}) does not resolve p_t_min: its sharpest component has std "
            f"{final.marginal.min_std:.3g}, {final.points_per_width:.2f} spacings; refine the grid"
        )
    q0_marginal, q, prior_outside = _initial_mass(model, initial, schedule.t_max)
    notes: list[str] = []
    converged = True
    if sampler == "langevin":
        q, levels, solver_error = _langevin(model, schedule, q / q.sum())
    elif sampler == "ode":
        density, converged = _ode(model, schedule, q0_marginal, n_steps)
        q, levels, solver_error = density * model.grid.cell_volume, [], _NEWTON_TOL * len(_steps(schedule, n_steps))
    else:
        density, converged, notes = _sde(model, schedule, q / model.grid.cell_volume, n_steps)
        q, levels, solver_error = density * model.grid.cell_volume, [], _NEWTON_TOL * len(_steps(schedule, n_steps))
    return _result(model, schedule, sampler, initial, n_steps, basins, refine, q, final, solver_error,
                   max([prior_outside, final.outside] + [lev.outside for lev in levels]), converged, notes)


def _result(model: GridModel, schedule: Schedule, sampler: str, initial: str, n_steps: int, basins: BasinRule,
            refine: bool, q: np.ndarray, final: Level, solver_error: float, boundary_mass: float, converged: bool,
            notes: list[str]) -> PropagationResult:
    mass_lost = 1.0 - float(q.sum())
    if mass_lost > 1.0 - 1e-300:
        raise FloatingPointError(f"the {sampler} sampler lost all its mass out of the box {model.grid}")
    q = q / q.sum()
    p = np.exp(final.log_mass)
    labels = model.basins(final, basins)
    wq, wp = np.bincount(labels, q), np.bincount(labels, p)
    notes = list(notes)
    if final.points_per_width < _WARN_POINTS_PER_WIDTH:
        notes.append(f"coarse grid: {final.points_per_width:.2f} points per width of the sharpest component")
        warnings.warn(f"coarse grid: the sharpest component of p_t_min spans {final.points_per_width:.2f} "
                      f"spacings (h = {model.h.max():.3g}); discretisation errors will be large",
                      ResolutionWarning, stacklevel=3)
    if boundary_mass > _MASS_TOL:
        notes.append(f"the box cuts off mass {boundary_mass:.3g} of a density")
        warnings.warn(f"the box {list(zip(model.grid.lo, model.grid.hi))} cuts off probability mass "
                      f"{boundary_mass:.3g} (tolerance {_MASS_TOL:g}) of p_t or of the initial law; enlarge it",
                      BoundaryMassWarning, stacklevel=3)
    metrics = distances(q, p)
    if mass_lost > max(_MASS_TOL, 1e-2 * metrics["tv"]):
        notes.append(f"the sampler lost mass {mass_lost:.3g} out of the box (TV {metrics['tv']:.3g})")
    if not converged:
        notes.append("a Newton inversion of an Euler step did not converge")
    tv_refined = error = None
    if refine:
        fine = propagate_exact(model.target, model.process, schedule, sampler=sampler, initial=initial,
                               n_steps=n_steps, basins=basins, grid=model.grid.refine())
        tv_refined = fine.tv
        error = abs(fine.tv - metrics["tv"])
    return PropagationResult(
        grid=model.grid, q=q / model.grid.cell_volume, p=p / model.grid.cell_volume, **metrics,
        basins=labels, basin_weights_q=wq, basin_weights_p=wp, weight_error=float(np.abs(wq - wp).max()),
        sampler=sampler, initial=initial, schedule=schedule, n_steps=n_steps,
        points_per_width=final.points_per_width, numerical_error=solver_error + 8 * q.size * np.finfo(float).eps,
        boundary_mass=boundary_mass, mass_lost=mass_lost,
        converged=converged, resolved=not notes, notes=tuple(notes), tv_refined=tv_refined,
        discretisation_error=error,
    )
