"""Spectral diagnostics of a schedule along t: the gap, the adiabatic speed and the lag (THEORY section 3).

Everything is computed on the grid of :class:`~scorehamiltonian.sampling.grid_model.GridModel`, whose
SqRA operator H_t (the discrete Score Hamiltonian in ground-state form) has the grid density
P_t as exact ground state psi_t = sqrt(P_t) (unit 2-norm, lambda_0 = 0 exactly). At each t:

- lambda_1, lambda_2: the lowest non-zero eigenvalues of H_t. The eigen-solver's vectors
  (tridiagonal LAPACK in 1D, ARPACK shift-invert in 2D) are orthogonalised against the exact
  psi and re-diagonalised in the cancellation-free Dirichlet form
  v^T H w = sum_edges sqrt(P_i P_j) / h^2 (f_i - f_j)(g_i - g_j), f = v / psi, g = w / psi,
  so exponentially small gaps keep their relative accuracy (THEORY section 6).
- the adiabatic speed A(t) = ||d/dt psi_t||: with a = d/dt log p_t at the nodes (exact,
  from the Fokker-Planck equation as in :func:`scorehamiltonian.spectral.speed.adiabatic_speed`) and
  a_bar = sum_i P_i a_i, d/dt psi_i = psi_i (a_i - a_bar) / 2 (the derivative of the grid-
  normalised ground state); the grid sum is the quadrature of (1/4) E_p[(d/dt log p)^2].
- the first-order lag x = H_t^+ d/dt psi_t (the adiabatic correction to the ground state)
  and its norm, split into the slow part (projection on the n_slow = B_t - 1 lowest
  non-zero eigenvectors, B_t the number of basins of p_t: the between-basin channel) and the
  fast part (the rest: relaxation within basins). In 1D x is exact to round-off by the flux
  form: with x = psi f, (H x)_i = -(1/psi_i) sum_j c_ij (f_j - f_i), c = sqrt(P_i P_j) / h^2,
  so the flux J_{i+1/2} = c_{i+1/2} (f_{i+1} - f_i) = -sum_{k <= i} psi_k b_k (no flux
  through the box faces) integrates twice. In 2D the slow part is sum_j <v_j, b> / lambda_j v_j
  and the fast part solves the deflated system by conjugate gradients.
- the masses of fixed basins (those of p at the smallest time given, by steepest ascent)
  under p_t, and their rates d/dt M_b = sum_{i in b} P_i (a_i - a_bar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg import eigh, eigh_tridiagonal

from ..common.errors import ConvergenceError, InputShapeError
from ..common.validation import as_float_tensor
from ..score.processes import ForwardProcess
from ..spectral.grid import Grid
from .grid_model import BasinRule, GridModel, Level, Target, evaluate_marginal

__all__ = [
    "LagResult",
    "SpectralDiagnostics",
    "dirichlet_gram",
    "low_modes",
    "spectral_diagnostics",
    "time_derivative",
]

_EPS = float(np.finfo(np.float64).eps)
#: Relative tolerance of the conjugate-gradient solve of the fast lag (2D).
_CG_RTOL = 1e-10


def dirichlet_gram(model: GridModel, level: Level, V: np.ndarray) -> np.ndarray:
    """V^T H V (V of shape (N, m)) from edge differences, each term >= 0 on the diagonal.

    Along an edge i -> j of axis a, sqrt(P_i P_j) (f_i - f_j) = v_i sqrt(psi_j / psi_i)
    - v_j sqrt(psi_i / psi_j) with f = v / psi, computed from log-mass differences.
    """
    half = 0.5 * level.log_mass.reshape(model.grid.n)
    cols = V.reshape(*model.grid.n, -1)
    gram = np.zeros((V.shape[1], V.shape[1]))
    for a, h in enumerate(model.h):
        step = 0.5 * np.diff(half, axis=a)[..., None]
        lo = np.take(cols, np.arange(cols.shape[a] - 1), axis=a)
        hi = np.take(cols, np.arange(1, cols.shape[a]), axis=a)
        diff = (lo * np.exp(step) - hi * np.exp(-step)).reshape(-1, V.shape[1])
        gram += diff.T @ diff / h**2
    return gram


def shifted_lu(model: GridModel, level: Level) -> tuple[float, spla.SuperLU]:
    """(c, LU of H + c I) with c = 0.01 / (largest component variance of p_t): the shift-invert
    operator of the 2D eigen-solver and the preconditioner of the deflated solves."""
    shift = 0.01 / level.max_var
    H = model.hamiltonian(level)
    return shift, spla.splu((H + shift * sp.identity(H.shape[0])).tocsc(), permc_spec="MMD_AT_PLUS_A")


def low_modes(model: GridModel, level: Level, k: int,
              lu: tuple[float, spla.SuperLU] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k lowest non-zero eigenpairs of H at a level, and their residual norms.

    Returns (lam (k,), V (N, k) orthonormal and orthogonal to psi, residuals (k,) = ||H v - lam v||).
    The solver's k + 2 lowest vectors are projected off the exact psi (leaving a k + 1
    dimensional space, by SVD) and Rayleigh-Ritz'ed in :func:`dirichlet_gram` (relative
    accuracy for tiny eigenvalues); the lowest k Ritz pairs are returned. ``lu``: the
    :func:`shifted_lu` of the level, to reuse (2D).
    """
    if model.grid.dim == 1:
        off = np.full(level.diag.size - 1, -1.0 / float(model.h[0]) ** 2)
        _, vecs = eigh_tridiagonal(level.diag, off, select="i", select_range=(0, k + 1))
    else:
        shift, factor = lu if lu is not None else shifted_lu(model, level)
        H = model.hamiltonian(level)
        inverse = spla.LinearOperator(H.shape, matvec=factor.solve, dtype=float)
        v0 = np.random.default_rng(0).random(level.psi.size)
        _, vecs = spla.eigsh(H, k=k + 2, sigma=-shift, which="LM", tol=1e-13, v0=v0, OPinv=inverse)
    projected = vecs - np.outer(level.psi, level.psi @ vecs)
    V = np.linalg.svd(projected, full_matrices=False)[0][:, : k + 1]
    lam, Y = eigh(dirichlet_gram(model, level, V))
    V = (V @ Y)[:, :k]
    H = model.hamiltonian(level)
    residuals = np.linalg.norm(H @ V - V * lam[:k], axis=0)
    return lam[:k], V, residuals


def time_derivative(model: GridModel, t: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): a = d/dt log p_t at the nodes, b = d/dt psi_t = psi (a - sum P a) / 2.

    a = -d f - f x . s + (g^2 / 2)(div s + |s|^2), the Fokker-Planck identity derived in
    :func:`scorehamiltonian.spectral.speed.adiabatic_speed`, with the exact score and divergence.
    """
    level = model.level(t)
    _, _, score, jac = evaluate_marginal(level.marginal, model.points, jacobian=True)
    f, g2 = float(model.process.f(t)), float(model.process.g2(t))
    divergence = np.trace(jac, axis1=1, axis2=2)
    a = -model.grid.dim * f - f * (model.points * score).sum(1) + 0.5 * g2 * (divergence + (score**2).sum(1))
    return a, 0.5 * level.psi * (a - np.exp(level.log_mass) @ a)


@dataclass(frozen=True)
class LagResult:
    """x = H^+ b split into slow (span of the first n_slow eigenvectors) and fast parts, with norms
    and a round-off estimate of the norm of x."""

    x: np.ndarray
    slow: float
    fast: float
    total: float
    error: float


def _flux_solve(model: GridModel, level: Level, b: np.ndarray) -> tuple[np.ndarray, float]:
    """1D: the x orthogonal to psi with H x = b (b orthogonal to psi), exact to round-off, and an
    error estimate.

    The flux through edge i + 1/2 is -sum_{k <= i} psi_k b_k = sum_{k > i} psi_k b_k; each edge
    takes the side with the smaller sum of |psi_k b_k|, whose round-off (estimated as
    4 n eps times that sum) is then divided by the edge conductance c and integrated.
    """
    psi = level.psi
    log_c = 0.5 * (level.log_mass[:-1] + level.log_mass[1:]) - 2.0 * math.log(float(model.h[0]))
    terms = psi * b
    left, right = np.cumsum(terms)[:-1], np.cumsum(terms[::-1])[::-1][1:]
    left_abs, right_abs = np.cumsum(np.abs(terms))[:-1], np.cumsum(np.abs(terms)[::-1])[::-1][1:]
    use_left = left_abs <= right_abs
    flux = np.where(use_left, -left, right)
    f = np.concatenate([[0.0], np.cumsum(flux * np.exp(-log_c))])
    f -= np.exp(level.log_mass) @ f
    flux_error = 4.0 * psi.size * _EPS * np.minimum(left_abs, right_abs)
    f_error = np.concatenate([[0.0], np.cumsum(flux_error * np.exp(-log_c))])
    return psi * f, float(np.linalg.norm(psi * f_error))


def _deflated_solve(model: GridModel, level: Level, V: np.ndarray, b: np.ndarray,
                    lu: tuple[float, spla.SuperLU]) -> np.ndarray:
    """2D: x orthogonal to psi and V with H x = b - projections, by conjugate gradients
    preconditioned with (H + c I)^{-1} (eigenvalues lambda / (lambda + c) ~ 1 on the fast modes)."""
    basis = np.column_stack([level.psi, V])
    H = model.hamiltonian(level)

    def project(v: np.ndarray) -> np.ndarray:
        return v - basis @ (basis.T @ v)

    op = spla.LinearOperator(H.shape, matvec=lambda v: project(H @ project(v)), dtype=float)
    precond = spla.LinearOperator(H.shape, matvec=lambda v: project(lu[1].solve(project(v))), dtype=float)
    x, info = spla.cg(op, project(b), rtol=_CG_RTOL, maxiter=1000, M=precond)
    if info != 0:
        raise ConvergenceError(f"conjugate gradients for the fast lag did not converge (info {info}) at t = {level.t}")
    return project(x)


def lag(model: GridModel, level: Level, b: np.ndarray, n_slow: int,
        modes: tuple[np.ndarray, np.ndarray, np.ndarray],
        lu: tuple[float, spla.SuperLU] | None = None) -> LagResult:
    """H^+ b and its slow / fast split (module docstring); ``modes`` from :func:`low_modes`,
    ``lu`` from :func:`shifted_lu` (2D; computed if not given)."""
    lam, V, residuals = modes
    Vs = V[:, :n_slow]
    if model.grid.dim == 1:
        x, error = _flux_solve(model, level, b)
        slow = Vs.T @ x
        fast = float(np.linalg.norm(x - Vs @ slow))
    else:
        coef = Vs.T @ b
        slow = coef / lam[:n_slow]
        x_fast = _deflated_solve(model, level, Vs, b, lu if lu is not None else shifted_lu(model, level))
        x = Vs @ slow + x_fast
        fast = float(np.linalg.norm(x_fast))
        gap = max(float(lam[n_slow]) - float(lam[n_slow - 1]), float(lam[n_slow])) if n_slow else 1.0
        error = float(np.linalg.norm(residuals[:n_slow] * np.linalg.norm(b) / gap / lam[:n_slow])) + \
            _CG_RTOL * fast * 10
    slow_norm = float(np.linalg.norm(slow))
    return LagResult(x, slow_norm, fast, math.hypot(slow_norm, fast), error)


@dataclass(frozen=True)
class SpectralDiagnostics:
    """Spectral diagnostics at each time (arrays of length T; module docstring for definitions).

    times : t (sorted increasing); lambda1, lambda2 : the two lowest non-zero eigenvalues of
    the SqRA H_t (1 / x^2); eigen_residual : max ||H v - lambda v|| of the vectors used;
    adiabatic_speed : A(t) (1 / t); lag, lag_slow, lag_fast : ||H^+ d/dt psi|| and its parts
    (units x^2 / t); lag_error : round-off estimate of ``lag``; n_slow : basins of p_t minus
    one; basin_masses, basin_mass_rate : (T, B) masses of the fixed basins under p_t and their
    time derivatives; basins : (N,) the fixed basin labels; grid; points_per_width : (T,).
    """

    times: np.ndarray
    lambda1: np.ndarray
    lambda2: np.ndarray
    eigen_residual: np.ndarray
    adiabatic_speed: np.ndarray
    lag: np.ndarray
    lag_slow: np.ndarray
    lag_fast: np.ndarray
    lag_error: np.ndarray
    n_slow: np.ndarray
    basin_masses: np.ndarray
    basin_mass_rate: np.ndarray
    basins: np.ndarray
    grid: Grid
    points_per_width: np.ndarray

    def plot(self, axes: Any = None) -> Any:
        """Three log-t panels: lambda_1, lambda_2, A and A / lambda_1; the lag and its parts;
        the basin masses with |d/dt| of each (dashed). Returns the figure."""
        from matplotlib.figure import Figure

        if axes is None:
            fig = Figure(figsize=(7.0, 8.0), layout="constrained")
            axes = fig.subplots(3, 1, sharex=True)
        top, mid, bottom = axes
        top.loglog(self.times, self.lambda1, "C0-", label="$\\lambda_1$")
        top.loglog(self.times, self.lambda2, "C0--", label="$\\lambda_2$")
        top.loglog(self.times, self.adiabatic_speed, "C1-", label="$A(t)$")
        top.loglog(self.times, self.adiabatic_speed / self.lambda1, "C3:", label="$A/\\lambda_1$")
        mid.loglog(self.times, self.lag, "k-", label="lag $\\|H^+\\partial_t\\sqrt{p}\\|$")
        # Below 1e-12 of the largest lag the slow part is round-off: not drawn (a floor would
        # stretch the log axis over hundreds of decades).
        floor = 1e-12 * float(np.nanmax(self.lag))
        mid.loglog(self.times, np.where(self.lag_slow > floor, self.lag_slow, np.nan), "C2--",
                   label="slow (between basins)")
        mid.loglog(self.times, self.lag_fast, "C4:", label="fast (within basins)")
        for b in range(self.basin_masses.shape[1]):
            bottom.semilogx(self.times, self.basin_masses[:, b], f"C{b}-", label=f"basin {b}")
            bottom.semilogx(self.times, np.abs(self.basin_mass_rate[:, b]), f"C{b}--")
        bottom.set_yscale("symlog", linthresh=1e-6)
        bottom.set_xlabel("diffusion time $t$")
        bottom.set_ylabel("mass, |d/dt mass| (dashed)")
        for axis in axes:
            axis.legend(fontsize="small")
        return axes[0].figure


def spectral_diagnostics(
    target: Target,
    process: ForwardProcess | None = None,
    times: Any = None,
    *,
    grid: Grid | None = None,
    model: GridModel | None = None,
    basins: BasinRule = "ascent",
) -> SpectralDiagnostics:
    """lambda_1, lambda_2, A(t), the lag split into slow and fast parts and the basin masses over t.

    target, process, grid : as for :func:`~scorehamiltonian.sampling.propagation.propagate_exact`
    (``model`` reuses a :class:`GridModel`; without grid, :func:`default_grid` over the range of
    ``times``). times : 1-D array of times in the process's range (sorted here).
    basins : how the fixed basins of p at min(times) are drawn ("ascent" or "component").
    """
    t = np.sort(as_float_tensor(times, "times").numpy().reshape(-1))
    if t.size == 0:
        raise InputShapeError("times is empty")
    if model is None:
        model = GridModel(target, process, grid, t_range=(float(t[0]), float(t[-1])))
    model.process.time(t)
    fixed = model.basins(model.level(float(t[0])), basins)
    rows = [_diagnose(model, float(ti), fixed) for ti in t]
    columns = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    return SpectralDiagnostics(times=t, basins=fixed, grid=model.grid, **columns)


def _diagnose(model: GridModel, t: float, fixed: np.ndarray) -> dict[str, Any]:
    level = model.level(t)
    n_slow = int(model.basins(level).max())
    lu = shifted_lu(model, level) if model.grid.dim > 1 else None
    modes = low_modes(model, level, max(n_slow + 1, 2), lu)
    a, b = time_derivative(model, t)
    result = lag(model, level, b, n_slow, modes, lu)
    mass = np.exp(level.log_mass)
    return {
        "lambda1": float(modes[0][0]), "lambda2": float(modes[0][1]),
        "eigen_residual": float(modes[2].max()), "adiabatic_speed": float(np.linalg.norm(b)),
        "lag": result.total, "lag_slow": result.slow, "lag_fast": result.fast, "lag_error": result.error,
        "n_slow": n_slow, "basin_masses": np.bincount(fixed, mass),
        "basin_mass_rate": np.bincount(fixed, mass * (a - mass @ a)),
        "points_per_width": level.points_per_width,
    }
