"""The grid model of exact propagation: a target's noised marginals p_t on a grid (THEORY sections 3, 4).

No Monte Carlo: :class:`GridModel` carries p_t on a regular grid (1D or 2D) of a box holding
the target's noised marginals (:func:`default_grid`), with the exact p_t, score and score
Jacobian at every point (:func:`evaluate_marginal`): in closed form for a Gaussian mixture,
from the score itself for any other score with an exact log-density (a
:class:`~scorehamiltonian.score.interface.DensityScore`: an analytic log p_t, the quadrature
of :class:`~scorehamiltonian.score.noised.NoisedDensity`; Jacobian by autograd). Each
:class:`Level` holds the grid masses P of p_t and the square-root approximation (SqRA) of
the Langevin generator at t, whose symmetric form is the discrete Score Hamiltonian in
ground-state form; :meth:`GridModel.relax` applies e^{-u H} (Talbot contour in 1D,
Chebyshev expansion in 2D: both exact to about 1e-13). :func:`initial_mass` gives the
sampler's initial law on the grid and :func:`distances` the TV, KL, chi^2 and Hellinger
distances between two mass vectors. The formulas are stated in :mod:`.propagation`, which
steps the samplers on this model.
"""

from __future__ import annotations

import functools
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from scipy.linalg import lapack
from scipy.ndimage import distance_transform_edt
from scipy.special import ive, logsumexp

from ..common.errors import InputShapeError
from ..score.derivatives import jacobian as score_jacobian
from ..score.interface import DensityScore, ExactScore
from ..score.mixture import GaussianMixture
from ..score.processes import ForwardProcess
from ..score.quadrature import steepest_descent_basins
from ..spectral.grid import Grid, box_for_score, box_from_mixture

__all__ = [
    "DensityMarginal",
    "GridModel",
    "Level",
    "Marginal",
    "default_grid",
    "distances",
    "evaluate_marginal",
    "grid_target",
    "initial_mass",
    "noised_marginal",
]

Initial = Literal["prior", "exact"]
BasinRule = Literal["ascent", "component"]
_LOG_2PI = math.log(2.0 * math.pi)
#: Talbot contour: N nodes (error about 3.89^-N), z(theta) = N (-0.6122 + 0.5017 theta cot(0.6407 theta)
#: + 0.2645 i theta) (Weideman 2006; Trefethen, Weideman & Schmelzer 2006).
_TALBOT_N = 24
#: Default grid: points per width of the sharpest mode and the cap on nodes per axis.
_DEFAULT_PPW = {1: 8.0, 2: 4.0}
_MAX_NODES = {1: 8191, 2: 96}
_LEVEL_CACHE_SIZE = 256
#: Grid log-masses are floored here (psi = sqrt(P) stays a normal float; the mass added, below
#: N e^-600, is far below round-off).
_LOG_MASS_FLOOR = -600.0
#: Above this many Chebyshev terms a 2D relaxation takes the Talbot contour with sparse LU solves.
_CHEBYSHEV_MAX_TERMS = 3000
_GRID_CACHE: dict = {}
#: Nodes whose mass is below e^-_CURVATURE_DEPTH of the largest do not set a density's sharpest width.
_CURVATURE_DEPTH = 18.0
Target = GaussianMixture | DensityScore


def _talbot() -> tuple[np.ndarray, np.ndarray]:
    theta = -math.pi + (np.arange(_TALBOT_N) + 0.5) * 2.0 * math.pi / _TALBOT_N
    theta = theta[theta > 0]
    a = 0.6407
    z = _TALBOT_N * (-0.6122 + 0.5017 * theta / np.tan(a * theta) + 0.2645j * theta)
    dz = _TALBOT_N * (0.5017 / np.tan(a * theta) - 0.5017 * a * theta / np.sin(a * theta) ** 2 + 0.2645j)
    return z, -2.0j * np.exp(z) * dz / _TALBOT_N


_TALBOT_Z, _TALBOT_W = _talbot()


@dataclass(frozen=True)
class Marginal:
    """sum_k w_k N(m_k, U_k diag(c_k) U_k^T) in numpy: log_w (K,), means (K, d), rot (K, d, d), var (K, d)."""

    log_w: np.ndarray
    means: np.ndarray
    rot: np.ndarray
    var: np.ndarray

    @property
    def min_std(self) -> float:
        return float(np.sqrt(self.var.min()))


def noised_marginal(mixture: GaussianMixture, alpha: float, sigma: float) -> Marginal:
    """p_t = sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I) from the mixture's eigendecompositions."""
    return Marginal(
        mixture.log_weights.detach().cpu().numpy(),
        alpha * mixture.means.detach().cpu().numpy(),
        mixture.eigenvectors.detach().cpu().numpy(),
        alpha**2 * mixture.eigenvalues.detach().cpu().numpy() + sigma**2,
    )


@dataclass(frozen=True)
class DensityMarginal:
    """p_t of a :class:`DensityScore` at time t, read from the score (log_prob, score, autograd Jacobian)."""

    score: DensityScore
    t: float


def evaluate_marginal(marg: Marginal | DensityMarginal, x: np.ndarray, jacobian: bool = False
                      ) -> tuple[np.ndarray, ...]:
    """log p (n,), per-component log w_k N_k (n, K), score (n, d) and, if asked, its Jacobian (n, d, d).

    A mixture: with z_k = U_k^T (x - m_k), w = z / c: log N_k = -(|z|^2_c + sum log c + d log 2 pi) / 2,
    s_k = -U_k w, s = sum_k r_k s_k (r the responsibilities) and
    ds/dx = sum_k r_k (-U_k diag(1 / c_k) U_k^T + s_k s_k^T) - s s^T.
    A :class:`DensityMarginal`: the score's own log p_t and s_t (one component, K = 1), and the
    Jacobian of s_t by autograd (:func:`~scorehamiltonian.score.derivatives.jacobian`).
    """
    if isinstance(marg, DensityMarginal):
        return _evaluate_density(marg, x, jacobian)
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


def _evaluate_density(marg: DensityMarginal, x: np.ndarray, jacobian: bool) -> tuple[np.ndarray, ...]:
    points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    if not jacobian:
        ev = marg.score.evaluate(points, marg.t)
        log_p = ev.log_prob.detach().cpu().numpy()
        return log_p, log_p[:, None], ev.score.detach().cpu().numpy()
    log_p = marg.score.log_prob(points, marg.t).detach().cpu().numpy()
    jac = score_jacobian(marg.score, points, marg.t)
    return log_p, log_p[:, None], jac.score.detach().cpu().numpy(), jac.value.detach().cpu().numpy()


def _target_key(target: Target) -> tuple[Any, ...]:
    """What identifies a target in the caches: a mixture by its arrays, any other score by itself."""
    if isinstance(target, GaussianMixture):
        return tuple(a.detach().cpu().numpy().tobytes() for a in (target.weights, target.means, target.covs))
    return ("score", target)


def _density_widths(grid: Grid, log_mass: np.ndarray) -> tuple[float, float]:
    """(sharpest width, largest variance) of a density from its grid log-masses.

    Width: 1 / sqrt(c) with c the largest curvature -d^2 log p / dx_a^2 (second differences
    along each axis, exact for a Gaussian on any grid) over interior nodes whose mass is
    within e^-18 of the largest. Variance: the largest eigenvalue of p's covariance on the grid.
    """
    values = log_mass.reshape(grid.n)
    heavy = values >= values.max() - _CURVATURE_DEPTH
    curvature = 0.0
    for a, h in enumerate(grid.h):
        if grid.n[a] < 3:
            continue
        second = -(np.diff(values, n=2, axis=a)) / h**2
        inner = [slice(None)] * values.ndim
        inner[a] = slice(1, -1)
        kept = second[heavy[tuple(inner)]]
        if kept.size:
            curvature = max(curvature, float(kept.max()))
    points = grid.points().numpy()
    mass = np.exp(log_mass)
    centred = points - mass @ points
    covariance = (centred * mass[:, None]).T @ centred
    return (1.0 / math.sqrt(curvature) if curvature > 0 else math.inf), float(np.linalg.eigvalsh(covariance).max())


def _prior_marginal(process: ForwardProcess, t_max: float, dim: int) -> Marginal:
    variance = float(process.alpha(t_max)) ** 2 + float(process.sigma(t_max)) ** 2
    return Marginal(np.zeros(1), np.zeros((1, dim)), np.eye(dim)[None], np.full((1, dim), variance))


def _grid_points(grid: Grid) -> np.ndarray:
    return grid.points().numpy()


def default_grid(
    target: Target,
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

    Any other score with an exact log-density (``target`` a :class:`DensityScore`, d <= 2):
    the union of :func:`~scorehamiltonian.spectral.grid.box_for_score` (tail mass
    ``box_tol``) at t_min, sqrt(t_min t_max) (t_min > 0) and t_max and of the prior's box;
    spacing from the sharpest width of p_t_min (:func:`_density_widths` on a grid of
    ``max_nodes`` nodes per axis of that box), with the same points per width and cap.
    """
    dim = target.dim
    if dim not in _DEFAULT_PPW:
        raise InputShapeError(f"exact propagation works on 1D and 2D grids; the target has d = {dim}")
    ppw = float(points_per_width if points_per_width is not None else _DEFAULT_PPW[dim])
    cap = int(max_nodes if max_nodes is not None else _MAX_NODES[dim])
    key = (_target_key(target), process, float(t_min), float(t_max), ppw, float(box_tol), cap)
    if key not in _GRID_CACHE and isinstance(target, DensityScore):
        _GRID_CACHE[key] = _density_grid(target, process, float(t_min), float(t_max), ppw, float(box_tol), cap)
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


def _density_grid(score: DensityScore, process: ForwardProcess, t_min: float, t_max: float, ppw: float,
                  box_tol: float, cap: int) -> Grid:
    """:func:`default_grid` of a DensityScore (its docstring)."""
    dim = score.dim
    times = [t_min, t_max] + ([math.sqrt(t_min * t_max)] if t_min > 0 else [])
    prior = _prior_marginal(process, t_max, dim)
    prior_box = box_from_mixture(GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, dim,
                                 dtype=torch.float64), float(prior.var.max()) * torch.eye(dim, dtype=torch.float64)[None]),
                                 box_tol)
    boxes = [box_for_score(score, t, box_tol) for t in times] + [prior_box]
    lo, hi = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
    probe = Grid(lo.tolist(), hi.tolist(), cap)
    log_p = evaluate_marginal(DensityMarginal(score, t_min), _grid_points(probe))[0]
    width = _density_widths(probe, log_p - logsumexp(log_p))[0]
    n = [min(cap, max(3, math.ceil((b - a) * ppw / width) - 1)) for a, b in zip(lo, hi)]
    return Grid(lo.tolist(), hi.tolist(), n)


@dataclass(frozen=True)
class Level:
    """p_t on the grid and its SqRA operator.

    t, alpha, sigma : the time and the process's alpha_t, sigma_t.
    log_mass : (N,) log of the grid masses P_i of p_t, normalised (logsumexp = 0).
    psi : (N,) sqrt(P): the ground state of H, unit 2-norm.
    diag : (N,) the diagonal of H, sum_{j ~ i} sqrt(P_j / P_i) / h^2 (off-diagonals -1 / h^2).
    outside : mass of p_t outside the box, 1 - sum_i p_t(x_i) vol (trapezoid rule); for a
        log-density known up to a constant, the mass on the outermost nodes (a proxy).
    points_per_width : min_std over max h.
    min_std : smallest component standard deviation of p_t (of a DensityScore: its sharpest
        width, :func:`_density_widths`); max_var : largest component variance (largest
        eigenvalue of p_t's covariance).
    marginal : p_t itself (:class:`Marginal` or :class:`DensityMarginal`).
    """

    t: float
    alpha: float
    sigma: float
    log_mass: np.ndarray
    psi: np.ndarray
    diag: np.ndarray
    outside: float
    points_per_width: float
    min_std: float
    max_var: float
    marginal: Marginal | DensityMarginal


def grid_target(target: Any, process: ForwardProcess | None) -> tuple[Target, ForwardProcess]:
    """(the target as the grid model holds it, the process): an ExactScore becomes its mixture, any
    other DensityScore stays itself (``process`` None or the score's own); a GaussianMixture needs
    ``process``. TypeError for anything without an exact log-density."""
    if isinstance(target, DensityScore):
        if process is not None and process != target.process:
            raise ValueError(f"the score's process {target.process!r} differs from process={process!r}")
        return (target.mixture if isinstance(target, ExactScore) else target), target.process
    if not isinstance(target, GaussianMixture):
        raise TypeError(
            "exact propagation on a grid needs the target's density: a GaussianMixture or a score with an exact "
            f"log-density (an ExactScore, as_score(log_prob=...), a NoisedDensity); got {type(target).__name__} "
            "(for any other score: design_schedule(model='reduced'), sample-based judges)")
    if process is None:
        raise ValueError("pass the forward process (process=OU(), ...) with a GaussianMixture target")
    return target, process


class GridModel:
    """A target's noised marginals p_t on a grid, with the SqRA dynamics.

    ``GridModel(target, process, grid=None, t_range=None)``: target a
    :class:`~scorehamiltonian.score.mixture.GaussianMixture`, or a score with an exact
    log-density (:class:`~scorehamiltonian.score.interface.DensityScore`: an ExactScore is
    read as its mixture; any other, such as an analytic log p_t or a
    :class:`~scorehamiltonian.score.noised.NoisedDensity`, through its own log_prob, score and
    autograd Jacobian), whose process is used when ``process`` is None; without ``grid``,
    :func:`default_grid` over ``t_range`` (default the process's range). Levels (p_t on the
    grid and its operator) are cached per (target, grid, alpha_t, sigma_t) across models, so
    repeated propagations with the same levels are cheap.
    """

    _cache: ClassVar[OrderedDict] = OrderedDict()

    def __init__(
        self,
        target: Target,
        process: ForwardProcess | None = None,
        grid: Grid | None = None,
        t_range: tuple[float, float] | None = None,
        **grid_options: Any,
    ) -> None:
        target, process = grid_target(target, process)
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
        self._key = (_target_key(target), self.grid)

    def __repr__(self) -> str:
        return f"GridModel({self.target!r}, {self.process!r}, {self.grid})"

    @property
    def is_mixture(self) -> bool:
        """Whether the target is a Gaussian mixture (closed forms; otherwise a DensityScore)."""
        return isinstance(self.target, GaussianMixture)

    def marginal(self, t: float) -> Marginal | DensityMarginal:
        """p_t (see :func:`evaluate_marginal`)."""
        return self._marginal(float(t), float(self.process.alpha(t)), float(self.process.sigma(t)))

    def _marginal(self, t: float, alpha: float, sigma: float) -> Marginal | DensityMarginal:
        if self.is_mixture:
            return noised_marginal(self.target, alpha, sigma)
        if math.isnan(t):
            raise ValueError("the data level (sigma = 0 beyond the process's range) needs a Gaussian-mixture target")
        return DensityMarginal(self.target, t)

    def prior(self, t_max: float) -> Marginal:
        """The reference Gaussian N(0, (alpha_T^2 + sigma_T^2) I) at T = t_max."""
        return _prior_marginal(self.process, t_max, self.grid.dim)

    def level(self, t: float) -> Level:
        """p_t on the grid and its SqRA operator (cached)."""
        return self._cached_level(float(t), float(self.process.alpha(t)), float(self.process.sigma(t)))

    def data_level(self) -> Level:
        """The data itself (alpha = 1, sigma = 0; ``t`` NaN) on the grid: the target of a solver run
        whose last step lands on sigma = 0."""
        return self._cached_level(math.nan, 1.0, 0.0)

    def _cached_level(self, t: float, alpha: float, sigma: float) -> Level:
        key = (*self._key, alpha, sigma)
        level = self._cache.get(key)
        if level is None:
            level = self._build_level(t, alpha, sigma)
            self._cache[key] = level
            if len(self._cache) > _LEVEL_CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return level

    def _build_level(self, t: float, alpha: float, sigma: float) -> Level:
        marg = self._marginal(t, alpha, sigma)
        log_p = evaluate_marginal(marg, self.points)[0]
        if not np.isfinite(log_p).any() or np.isnan(log_p).any() or np.isposinf(log_p).any():
            raise ValueError(f"log p_t of {self.target!r} at t = {t:g} is NaN, +inf or nowhere finite on the grid")
        total = logsumexp(log_p)
        log_mass = np.maximum(log_p - total, _LOG_MASS_FLOOR)
        if self.is_mixture:
            outside = -math.expm1(total + math.log(self.grid.cell_volume))
            min_std, max_var = marg.min_std, float(marg.var.max())
        else:
            outside = self._face_mass(log_mass) if not self.target.normalised else \
                max(0.0, -math.expm1(total + math.log(self.grid.cell_volume)))
            min_std, max_var = _density_widths(self.grid, log_mass)
        return Level(t, alpha, sigma, log_mass, np.exp(0.5 * log_mass), self._sqra_diagonal(log_mass),
                     outside, min_std / float(self.h.max()), min_std, max_var, marg)

    def _face_mass(self, log_mass: np.ndarray) -> float:
        """The mass on the grid's outermost nodes (the boundary-mass proxy of an unnormalised log p)."""
        inner = np.zeros(self.grid.n, dtype=bool)
        inner[tuple(slice(1, -1) for _ in self.grid.n)] = True
        return float(np.exp(log_mass)[~inner.reshape(-1)].sum())

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
        goes through the Talbot contour (1D), or in 2D the Chebyshev expansion, unless that
        would take more than _CHEBYSHEV_MAX_TERMS terms (a stiff level: log p falling by
        hundreds between neighbours, as Mueller-Brown's far tails do), then the Talbot contour
        with sparse LU solves.
        """
        if u == 0:
            return phi.copy()
        weight = level.psi @ phi
        rest = phi - np.multiply.outer(level.psi, weight)
        if self.grid.dim == 1:
            rest = self._talbot_1d(rest, level, u)
        else:
            H = self.hamiltonian(level)
            stiff = _chebyshev_terms(0.5 * u * float(abs(H).sum(axis=1).max())) > _CHEBYSHEV_MAX_TERMS
            rest = _talbot_sparse(H, rest, u) if stiff else _chebyshev_exp(H, rest, u)
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
            if not self.is_mixture:
                raise ValueError("basins='component' needs a Gaussian-mixture target; use 'ascent'")
            comp = evaluate_marginal(level.marginal, self.points)[1]
            labels = np.argmax(comp, axis=1)
        elif rule == "ascent":
            labels = steepest_descent_basins(torch.from_numpy(-level.log_mass.reshape(self.grid.n))).numpy()
            floored = level.log_mass.reshape(self.grid.n) <= _LOG_MASS_FLOOR
            if floored.any() and not floored.all():  # flat floor: each node its own basin; give it its nearest
                nearest = distance_transform_edt(floored, return_distances=False, return_indices=True)
                labels = labels[tuple(nearest)]
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


def _chebyshev_terms(beta: float) -> int:
    """Terms computed by :func:`_chebyshev_exp` for beta = u B / 2 (before truncation)."""
    return int(math.sqrt(80.0 * beta)) + 30 if math.isfinite(beta) else sys.maxsize


def _talbot_sparse(H: sp.csr_matrix, phi: np.ndarray, u: float) -> np.ndarray:
    """e^{-u H} phi for symmetric H >= 0 by the Talbot contour (module constants), one sparse LU
    of H + z / u per node: exact to about 3e-14 for any spectrum, however stiff."""
    eye = sp.identity(H.shape[0], format="csc")
    H = H.tocsc().astype(complex)
    out = np.zeros(phi.shape)
    for z, w in zip(_TALBOT_Z, _TALBOT_W):
        out += (w / u * spla.splu(H + (z / u) * eye).solve(phi.astype(complex))).real
    return out


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
    k = np.arange(_chebyshev_terms(beta))
    coef = 2.0 * (-1.0) ** k * ive(k, beta)
    coef[0] *= 0.5
    coef = coef[: int(np.flatnonzero(np.abs(coef) >= 1e-17).max()) + 1]
    prev, cur = phi, (2.0 / bound) * (H @ phi) - phi
    out = coef[0] * prev + (coef[1] * cur if coef.size > 1 else 0.0)
    for c in coef[2:]:
        prev, cur = cur, 2.0 * ((2.0 / bound) * (H @ cur) - cur) - prev
        out = out + c * cur
    return out


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


def initial_mass(model: GridModel, initial: Initial, t_max: float
                 ) -> tuple[Marginal | DensityMarginal, np.ndarray, float]:
    """The initial law on the grid: (its marginal, masses at the nodes, mass outside the box).

    "exact" is p_{t_max} (its log-density must be normalised), "prior" the process's reference Gaussian.
    """
    if initial == "exact":
        if not (model.is_mixture or model.target.normalised):
            raise ValueError("initial='exact' needs a normalised log-density (the target's is known up to a "
                             "constant); use initial='prior'")
        marg = model.marginal(t_max)
    elif initial == "prior":
        marg = model.prior(t_max)
    else:
        raise ValueError(f"initial must be 'prior' or 'exact'; got {initial!r}")
    log_p = evaluate_marginal(marg, model.points)[0] + math.log(model.grid.cell_volume)
    return marg, np.exp(log_p), -math.expm1(logsumexp(log_p))
