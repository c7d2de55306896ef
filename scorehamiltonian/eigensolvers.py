"""The lowest eigenvalues of a real symmetric operator, with error bounds (THEORY sections 2, 6).

``spectrum(H, k)`` returns the k lowest eigenvalues of H (the Score Hamiltonian on a grid, or
any operator with the :class:`SymmetricOperator` interface), ascending, each with a residual
norm ||H v - lambda v|| and an error bound, and flags any that did not reach ``tol``.

Conventions
-----------
- Every method ends with the same honest check: the vectors it found are orthonormalised,
  H is applied to them once more (explicit matvecs, no recurrence), and the Rayleigh-Ritz
  values theta_i and residuals r_i = H v_i - theta_i v_i of that basis are what is reported.
  The solvers compute ``k + guard`` pairs (``_GUARD`` more than asked for), so that the
  k-th one has a computed neighbour above it.
- ``eigenvalue_errors``: for symmetric H there is an eigenvalue within ||r_i|| of theta_i
  (always true; for a result flagged unconverged that is all the bound promises). When a group C of consecutive Ritz values is separated by delta_C from the
  other computed ones (each widened by its own ||r||), the Rayleigh-Ritz bound
  |theta_i - lambda_i| <= ||R_C||_F^2 / delta_C holds for i in C (Mathias; Li and Li): it
  covers near-degenerate clusters, whose members are each within ||R_C||^2 / delta_C even
  when their spacing is 1e-11. The reported error is the smaller of the two, plus a round-off
  term 2 eps ||diag(H) v_i|| (eps of the operator's dtype) + (2 + log2 N) eps_64 max_j |theta_j|. "Rigorous-ish": it assumes no
  eigenvalue lies below theta_0 or between computed ones unseen, i.e. that the solver found
  the lowest ones (a random start and guard vectors make a miss unlikely, not impossible).
- ``tol`` is a relative accuracy on the eigenvalues measured from the ground level: eigenvalue
  i is converged when its error bound is at most tol * max(theta_i - theta_0,
  theta_1 - theta_0) (theta_1 is the first guard value when k = 1). So lambda_0 ~ 0 is
  resolved against the gap, lambda_i - lambda_0 has relative error <= 2 tol, and in
  particular the gap (the quantity THEORY section 6 says is meaningful in the potential
  form). A gap below round-off (exact degeneracy, or 1e-11 against levels of order 1 with
  tol = 1e-8) cannot be resolved and is flagged, though both levels are still returned.
- Deflation (``deflate=True`` and ``H.ground_state`` not None): the ground state is the first
  starting vector. LOBPCG stops updating it as soon as its own residual meets ``tol`` (it is
  then locked at no further cost) and otherwise improves it like any other column; Lanczos
  starts its block from it. It is never assumed exact: lambda_0 and its residual come from
  the final check.
- Vectors are kept in float64 on the operator's device; ``H.matvec`` receives and returns
  the operator's dtype. ``n_matvec`` counts columns: an (N, m) matvec counts m; shift-invert
  solves of the eigsh method count as one each.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import scipy.fft
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .errors import ConvergenceError, InputDtypeError, InputShapeError

try:
    import pyamg

    _HAVE_PYAMG = True
except ImportError:  # pragma: no cover - pyamg is optional
    _HAVE_PYAMG = False

__all__ = [
    "ConvergenceWarning",
    "SpectrumResult",
    "SymmetricOperator",
    "amg_preconditioner",
    "fourier_preconditioner",
    "spectrum",
]

Method = Literal["auto", "lobpcg", "lanczos", "eigsh", "eigsh-sa"]
Preconditioner = Callable[[torch.Tensor], torch.Tensor]

#: Extra eigenpairs computed above the k asked for (neighbours for the error bounds).
_GUARD = 2
_WORK_DTYPE = torch.float64


class ConvergenceWarning(UserWarning):
    """An eigensolver returned eigenvalues that did not reach the requested tolerance."""


@runtime_checkable
class SymmetricOperator(Protocol):
    """A real symmetric N x N operator: what :func:`spectrum` needs of H.

    ``matvec(v)`` takes v of shape (N,) or (N, m) and returns H v of the same shape, in
    ``dtype`` on ``device``. ``to_scipy()`` gives the same matrix as scipy CSR (for eigsh
    and AMG), ``diagonal()`` its diagonal (N,), ``spectral_bounds()`` an interval holding
    the spectrum (Gershgorin). ``ground_state`` is a unit vector close to the lowest
    eigenvector, or None. An optional ``grid`` (with ``n``, ``h``, ``dim``: points and
    spacings per axis, C order) enables the Fourier preconditioner.
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    ground_state: torch.Tensor | None

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...

    def to_scipy(self) -> sp.csr_matrix: ...

    def diagonal(self) -> torch.Tensor: ...

    def spectral_bounds(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class SpectrumResult:
    """The k lowest eigenvalues of H with their residuals and error bounds.

    eigenvalues : (k,) float64, ascending (Rayleigh-Ritz values of the returned vectors).
    eigenvectors : (N, k) orthonormal, in the operator's dtype and device, or None.
    residual_norms : (k,) ||H v_i - lambda_i v_i|| (2-norm, v_i of unit norm).
    eigenvalue_errors : (k,) bound on |lambda_i - exact_i| (module docstring).
    converged : (k,) bool, eigenvalue_errors <= tol * scale (module docstring).
    n_matvec : matvec columns used, the final check included.
    wall_time : seconds. method : the solver and its options. tol : as requested.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    residual_norms: torch.Tensor
    eigenvalue_errors: torch.Tensor
    converged: torch.Tensor
    n_matvec: int
    wall_time: float
    method: str
    tol: float

    @property
    def gap(self) -> float:
        """lambda_1 - lambda_0 (needs k >= 2)."""
        self._need_two()
        return float(self.eigenvalues[1] - self.eigenvalues[0])

    @property
    def gap_error(self) -> float:
        """Bound on the error of :attr:`gap`: the sum of the two eigenvalue errors."""
        self._need_two()
        return float(self.eigenvalue_errors[0] + self.eigenvalue_errors[1])

    def _need_two(self) -> None:
        if self.eigenvalues.numel() < 2:
            raise InputShapeError("the gap needs k >= 2 eigenvalues; call spectrum(H, k=2) or more")


class _Counted:
    """H with a matvec counter, taking and returning float64 columns (N, m)."""

    def __init__(self, H: SymmetricOperator) -> None:
        self.H, self.count = H, 0
        self.n = int(H.shape[0])
        self.device = torch.device(H.device)
        self.eps = torch.finfo(H.dtype).eps

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        self.count += X.shape[1]
        out = self.H.matvec(X.to(dtype=self.H.dtype, device=self.device))
        return out.to(_WORK_DTYPE).reshape(X.shape)


# ---------------------------------------------------------------------------------------
# Error bounds and the final check, shared by every method
# ---------------------------------------------------------------------------------------


def _error_bounds(theta: np.ndarray, rnorm: np.ndarray) -> np.ndarray:
    """min(||r_i||, min over clusters C of consecutive Ritz values holding i of
    ||R_C||_F^2 / delta_C); clusters may not contain the last (highest) value."""
    m = len(theta)
    best = rnorm.copy()
    for a in range(m - 1):
        below = theta[a] - theta[a - 1] - rnorm[a - 1] if a > 0 else math.inf
        for b in range(a, m - 1):
            delta = min(below, theta[b + 1] - rnorm[b + 1] - theta[b])
            if delta > 0:
                bound = float((rnorm[a : b + 1] ** 2).sum()) / delta
                best[a : b + 1] = np.minimum(best[a : b + 1], bound)
    return best


def _scales(theta: np.ndarray) -> np.ndarray:
    """max(theta_i - theta_0, theta_1 - theta_0): what ``tol`` is relative to."""
    return np.maximum(theta - theta[0], theta[1] - theta[0])


def _converged(theta: np.ndarray, errors: np.ndarray, tol: float) -> np.ndarray:
    return errors <= tol * _scales(theta)


def _orthonormal(X: torch.Tensor, against: torch.Tensor | None = None, drop: float = 1e-10) -> torch.Tensor:
    """An orthonormal basis of X (projected off the orthonormal ``against`` twice), columns
    whose relative norm falls below ``drop`` removed."""
    for _ in range(2):
        if against is not None:
            X = X - against @ (against.T @ X)
        norms = X.norm(dim=0)
        X = X[:, norms > drop * norms.max().clamp_min(1e-300)]
        if X.shape[1] == 0:
            return X
        gram = X.T @ X
        w, U = torch.linalg.eigh(gram)
        keep = w > drop**2 * w.max()
        X = X @ (U[:, keep] / w[keep].sqrt())
    return X


def _symmetric(G: torch.Tensor) -> torch.Tensor:
    return 0.5 * (G + G.T)


def _rayleigh_ritz(X: torch.Tensor, HX: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values (ascending) and the rotated X, HX of an orthonormal X."""
    theta, Y = torch.linalg.eigh(_symmetric(X.T @ HX))
    return theta, X @ Y, HX @ Y


def _roundoff(theta: np.ndarray, X: torch.Tensor, diag: torch.Tensor, eps: float) -> np.ndarray:
    """Round-off in a Ritz value: 2 eps ||diag(H) x_i|| from the matvec in the operator's
    dtype, plus (2 + log2 N) eps_64 max |theta| from the inner products (blocked sums) and
    the small eigenproblem."""
    matvec = (2 * eps * (diag.abs()[:, None] * X).norm(dim=0)).cpu().numpy()
    return matvec + _projection_roundoff(theta, X.shape[0])


def _projection_roundoff(theta: np.ndarray, n: int) -> float:
    return (2 + math.log2(n)) * torch.finfo(_WORK_DTYPE).eps * float(np.abs(theta).max())


def _residuals(X: torch.Tensor, HX: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return (HX - X * theta).norm(dim=0)


@dataclass
class _Check:
    """The final check of a basis: Ritz values, vectors, residuals, bounds (all m columns)."""

    theta: np.ndarray
    X: torch.Tensor
    rnorm: np.ndarray
    errors: np.ndarray


def _final_check(op: _Counted, X: torch.Tensor, diag: torch.Tensor) -> _Check:
    """Orthonormalise X, apply H explicitly, and bound the Ritz values' errors."""
    X = _orthonormal(X)
    theta, X, HX = _rayleigh_ritz(X, op(X))
    rnorm = _residuals(X, HX, theta).cpu().numpy()
    th = theta.cpu().numpy()
    return _Check(th, X, rnorm, _error_bounds(th, rnorm) + _roundoff(th, X, diag, op.eps))


def _result(check: _Check, k: int, op: _Counted, start: float, method: str, tol: float,
            return_eigenvectors: bool, raise_on_failure: bool) -> SpectrumResult:
    """The first k pairs of ``check`` as a :class:`SpectrumResult`; warn or raise when any
    did not converge."""
    if len(check.theta) < k:
        raise ConvergenceError(f"{method}: found only {len(check.theta)} independent vectors of the {k} asked for")
    converged = _converged(check.theta, check.errors, tol)[:k]
    if not converged.all():
        message = (
            f"spectrum ({method}): {int((~converged).sum())} of {k} eigenvalues did not reach tol={tol:g}: "
            f"eigenvalues {check.theta[:k].tolist()}, residual norms {check.rnorm[:k].tolist()}, "
            f"error bounds {check.errors[:k].tolist()} after {op.count} matvecs; raise maxiter or tol"
        )
        if raise_on_failure:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    vectors = check.X[:, :k].to(op.H.dtype) if return_eigenvectors else None
    theta, rnorm, errors = (torch.as_tensor(a[:k], dtype=_WORK_DTYPE) for a in (check.theta, check.rnorm, check.errors))
    return SpectrumResult(
        theta, vectors, rnorm, errors,
        torch.as_tensor(converged), op.count, time.perf_counter() - start, method, tol,
    )


# ---------------------------------------------------------------------------------------
# Preconditioners: approximations of (H - shift)^{-1}, shift below the spectrum
# ---------------------------------------------------------------------------------------


def _dst1(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Unnormalised DST-I along ``axis``: y_k = sum_j x_j sin(pi (j+1)(k+1) / (n+1))."""
    if x.device.type == "cpu":
        return torch.from_numpy(scipy.fft.dst(x.numpy(), type=1, axis=axis, workers=-1)) * 0.5
    x = x.movedim(axis, -1)
    n = x.shape[-1]
    y = torch.zeros(*x.shape[:-1], 2 * n + 2, dtype=x.dtype, device=x.device)
    y[..., 1 : n + 1] = x
    y[..., n + 2 :] = -x.flip(-1)
    return (-0.5 * torch.fft.rfft(y, dim=-1).imag[..., 1 : n + 1]).movedim(-1, axis)


def fourier_preconditioner(H: SymmetricOperator, shift: float) -> Preconditioner:
    """R -> (-Laplacian_h + shift)^{-1} R, by DST-I on every axis of ``H.grid``.

    -Laplacian_h is the 3-point Dirichlet stencil, whose eigenvalues are
    sum_a (4 / h_a^2) sin^2(pi j_a / (2 (n_a + 1))); ``shift`` > 0 stands in for the
    potential (a typical value of V - lambda_0 where the low eigenvectors live). It ignores
    the variation of V, so its quality is set by the range of V, not by h: the choice for
    fine grids. Columns (N, m), any device (scipy.fft on the CPU, torch.fft elsewhere).
    """
    grid = H.grid
    dims = tuple(int(n) for n in grid.n)
    eig = torch.full(dims, float(shift), dtype=_WORK_DTYPE, device=torch.device(H.device))
    for a, (n, h) in enumerate(zip(dims, grid.h)):
        j = torch.arange(1, n + 1, dtype=_WORK_DTYPE, device=eig.device)
        shape = [1] * len(dims)
        shape[a] = n
        eig = eig + (4.0 / h**2 * torch.sin(math.pi * j / (2 * (n + 1))) ** 2).reshape(shape)
    scale = math.prod(2.0 / (n + 1) for n in dims)
    inv = (scale / eig).unsqueeze(0)

    def apply(R: torch.Tensor) -> torch.Tensor:
        u = R.T.reshape(R.shape[1], *dims)
        for a in range(1, len(dims) + 1):
            u = _dst1(u, a)
        u = u * inv
        for a in range(1, len(dims) + 1):
            u = _dst1(u, a)
        return u.reshape(R.shape[1], -1).T

    return apply


def amg_preconditioner(H: SymmetricOperator, shift: float) -> Preconditioner:
    """R -> one smoothed-aggregation V-cycle (pyamg) for H - shift I, column by column.

    ``shift`` must lie below the spectrum (H - shift I positive definite), e.g. the
    Gershgorin bound of ``spectral_bounds``. Runs on the CPU (columns are moved there).
    """
    A = (H.to_scipy() - shift * sp.identity(H.shape[0], format="csr")).tocsr()
    cycle = pyamg.smoothed_aggregation_solver(A).aspreconditioner()

    def apply(R: torch.Tensor) -> torch.Tensor:
        cols = R.cpu().numpy()
        out = np.column_stack([cycle @ cols[:, j] for j in range(cols.shape[1])])
        return torch.from_numpy(out).to(R.device)

    return apply


# ---------------------------------------------------------------------------------------
# Solvers: each returns a basis (N, m) whose span approximates the m lowest eigenvectors
# ---------------------------------------------------------------------------------------


def _bounds(theta: torch.Tensor, X: torch.Tensor, R: torch.Tensor, diag: torch.Tensor,
            eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and error bounds (with the round-off term) as numpy arrays."""
    th = theta.cpu().numpy()
    return th, _error_bounds(th, R.norm(dim=0).cpu().numpy()) + _roundoff(th, X, diag, eps)


def _lobpcg(op: _Counted, X0: torch.Tensor, precond: Preconditioner, k: int, tol: float,
            maxiter: int, diag: torch.Tensor) -> torch.Tensor:
    """Block LOBPCG (Knyazev 2001) with soft locking, in the orthonormal-basis form of
    Hetmaniuk and Lehoucq (2006): the search basis [X, P, W] is kept orthonormal, with
    P = the part of the previous X orthogonal to the new X, built in coefficient space so
    that no tiny vector is ever rescaled. Only unconverged columns get a preconditioned
    residual W (and matvecs); it stops when the first k columns meet ``tol``.
    """
    m = X0.shape[1]
    X = _orthonormal(X0)
    theta, X, HX = _rayleigh_ritz(X, op(X))
    P = HP = X[:, :0]
    for _ in range(maxiter):
        R = HX - X * theta
        th, errors = _bounds(theta, X, R, diag, op.eps)
        active = torch.as_tensor(~_converged(th, errors, tol), device=X.device)
        if not bool(active[:k].any()):
            break
        W = _orthonormal(precond(R[:, active]), torch.cat([X, P], 1))
        S, HS = torch.cat([X, P, W], 1), torch.cat([HX, HP, op(W)], 1)
        theta_all, Y = torch.linalg.eigh(_symmetric(S.T @ HS))
        Ym = Y[:, :m]
        old = torch.eye(S.shape[1], m, dtype=Y.dtype, device=Y.device)
        Z = _orthonormal(old, against=Ym)
        theta, X, HX, P, HP = theta_all[:m], S @ Ym, HS @ Ym, S @ Z, HS @ Z
    return X


def _lanczos(op: _Counted, X0: torch.Tensor, k: int, tol: float, maxiter: int,
             generator: torch.Generator | None) -> torch.Tensor:
    """Block Lanczos with full reorthogonalisation and thick restart (the symmetric
    Krylov-Schur method of Stewart 2001), block size m = X0.shape[1].

    T = Q^T H Q is filled column by column from the reorthogonalisation coefficients, so
    that after a restart to the lowest Ritz vectors Y (T = diag(theta) plus the coupling to
    the last block) the recurrence goes on unchanged. The residual norm of Ritz pair i is
    ||T[last block, :] s_i||. Stops when the first k Ritz values meet ``tol`` or after
    ``maxiter`` matvecs.
    """
    m = X0.shape[1]
    ncv = min(op.n, max(4 * m, 40))
    keep = max(m + 1, ncv // 2)
    Q = _orthonormal(X0)
    T = torch.zeros(Q.shape[1], 0, dtype=_WORK_DTYPE, device=Q.device)
    p = 0
    while True:
        Q, T = _lanczos_step(op, Q, T, p, generator)
        p = T.shape[1]
        theta, S = torch.linalg.eigh(_symmetric(T[:p, :p]))
        rnorm = (T[p:, :p] @ S).norm(dim=0).cpu().numpy()
        th = theta.cpu().numpy()[:m]
        errors = _error_bounds(th, rnorm[:m]) + _projection_roundoff(th, op.n)
        done = _converged(th, errors, tol)[:k].all()
        if done or op.count >= maxiter or Q.shape[1] == p:
            return Q[:, :p] @ S[:, :m]
        if Q.shape[1] + (Q.shape[1] - p) > ncv:
            Q, T, p = _thick_restart(Q, T, theta, S, keep)


def _lanczos_step(op: _Counted, Q: torch.Tensor, T: torch.Tensor, p: int,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply H to the unprocessed block Q[:, p:], orthogonalise it (twice) against Q and
    append the new block. T (n x p) holds H Q[:, :p] = Q T; it grows to (n + b) x n."""
    W = op(Q[:, p:])
    C = Q.T @ W
    W = W - Q @ C
    C2 = Q.T @ W
    W, C = W - Q @ C2, C + C2
    new = _orthonormal(W, Q)
    missing = min(W.shape[1] - new.shape[1], op.n - Q.shape[1] - new.shape[1])
    if missing > 0:
        fill = _random(op, missing, generator)
        new = torch.cat([new, _orthonormal(fill, torch.cat([Q, new], 1))], 1)
    n, b = Q.shape[1], new.shape[1]
    T2 = torch.zeros(n + b, n, dtype=_WORK_DTYPE, device=Q.device)
    T2[:n, :p] = T
    T2[:n, p:] = C
    T2[n:, p:] = new.T @ W
    return torch.cat([Q, new], 1), T2


def _thick_restart(Q: torch.Tensor, T: torch.Tensor, theta: torch.Tensor, S: torch.Tensor,
                   keep: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Keep the ``keep`` lowest Ritz vectors and the unprocessed block: T becomes
    diag(theta) coupled to that block by T[block, :] S."""
    p = T.shape[1]
    Y = S[:, :keep]
    coupling = T[p:, :p] @ Y
    Q = torch.cat([Q[:, :p] @ Y, Q[:, p:]], 1)
    b = coupling.shape[0]
    T = torch.zeros(keep + b, keep, dtype=_WORK_DTYPE, device=Q.device)
    T[:keep] = torch.diag(theta[:keep])
    T[keep:] = coupling
    return Q, T, keep


def _eigsh(op: _Counted, H: SymmetricOperator, m: int, tol: float, maxiter: int | None,
           v0: torch.Tensor | None, shift_invert: bool) -> tuple[torch.Tensor, str]:
    """scipy's ARPACK on ``H.to_scipy()``: shift-invert (sigma = the Gershgorin lower bound
    of ``spectral_bounds``, minus a hair so that H - sigma I is nonsingular; SuperLU
    factorisation, each solve counted as a matvec) or which="SA" (sparse matvecs counted).
    A run that does not converge returns the pairs ARPACK has (the final check flags them)."""
    A = H.to_scipy().astype(np.float64)

    def counted(apply: Callable[[np.ndarray], np.ndarray]) -> spla.LinearOperator:
        def matvec(x: np.ndarray) -> np.ndarray:
            op.count += 1
            return apply(x)

        return spla.LinearOperator(A.shape, matvec=matvec, dtype=np.float64)

    if shift_invert:
        lo, hi = H.spectral_bounds()
        sigma = lo - 1e-8 * (hi - lo)
        lu = spla.splu((A - sigma * sp.identity(A.shape[0], format="csc")).tocsc())
        name = f"eigsh (shift-invert, sigma={sigma:.6g}, SuperLU)"
        operator, mode = A, {"sigma": sigma, "which": "LM", "OPinv": counted(lu.solve)}
    else:
        name = "eigsh (which='SA')"
        operator, mode = counted(A.__matmul__), {"which": "SA"}
    start = None if v0 is None else v0.reshape(op.n, -1)[:, 0].to(_WORK_DTYPE).cpu().numpy()
    try:
        _, vectors = spla.eigsh(operator, k=m, tol=tol * 1e-2, maxiter=maxiter, v0=start, **mode)
    except spla.ArpackNoConvergence as exc:
        vectors = exc.eigenvectors
    return torch.from_numpy(np.asarray(vectors, dtype=np.float64)).to(op.device), name


def _random(op: _Counted, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """m standard normal columns (drawn on the CPU with ``generator``, then moved)."""
    return torch.randn(op.n, m, dtype=_WORK_DTYPE, generator=generator).to(op.device)


def _start_block(op: _Counted, m: int, v0: torch.Tensor | None, ground_state: torch.Tensor | None,
                 grid: object | None, generator: torch.Generator | None) -> torch.Tensor:
    """m independent starting columns: [ground_state, v0, fill]. Without a ground state the
    fill is random; with one g, it is (x_a - <x_a>) g for each grid axis a (the first
    excited states of the harmonic approximation around each mode) and then random
    columns weighted by |g| + 1% of its maximum (localised where p lives, yet nonzero
    everywhere, so no eigenvector is excluded from the start)."""
    given = [v.reshape(op.n, -1).to(_WORK_DTYPE).to(op.device) for v in (ground_state, v0) if v is not None]
    X = _orthonormal(torch.cat(given, 1)[:, :m]) if given else _random(op, 0, generator)
    if ground_state is not None:
        g = X[:, :1]
        X = torch.cat([X, _orthonormal(_coordinate_modes(g, grid), X)], 1)[:, :m]
    weight = 1.0 if ground_state is None else X[:, :1].abs() + 0.01 * X[:, :1].abs().max()
    while X.shape[1] < m:
        X = torch.cat([X, _orthonormal(_random(op, m - X.shape[1], generator) * weight, X)], 1)
    return X


def _coordinate_modes(g: torch.Tensor, grid: object | None) -> torch.Tensor:
    """(x_a - <x_a>_g) g for each axis a of ``grid`` (C order), or no column without one."""
    if grid is None or math.prod(grid.n) != g.shape[0]:
        return g[:, :0]
    dims = tuple(int(n) for n in grid.n)
    columns = []
    for a, (n, h) in enumerate(zip(dims, grid.h)):
        shape = [1] * len(dims)
        shape[a] = n
        x = (h * torch.arange(n, dtype=_WORK_DTYPE, device=g.device)).reshape(shape).expand(dims).reshape(-1, 1)
        columns.append((x - (g**2 * x).sum()) * g)
    return torch.cat(columns, 1)


def _shift_below(op: _Counted, H: SymmetricOperator, ground_state: torch.Tensor | None) -> float:
    """A shift sigma below lambda_0 for the preconditioner.

    With a ground state g: rho - max(||r||, 0.01 (rho - lower), margin), rho = g^T H g and
    r = H g - rho g (one matvec); otherwise lower - margin, lower the Gershgorin bound. The
    margin, 1% of the mean eigenvalue spacing (upper - lower) / N, keeps sigma off an
    eigenvalue when the bound is tight (a preconditioner that amplifies one direction by
    1e8 stalls LOBPCG). Never below lower - margin; a shift that misses (lands above
    lambda_0) only slows the iteration: the final check stays honest."""
    lo, hi = H.spectral_bounds()
    margin = 0.01 * (hi - lo) / op.n
    if ground_state is None:
        return lo - margin
    g = ground_state.reshape(op.n, 1).to(_WORK_DTYPE).to(op.device)
    g = g / g.norm()
    Hg = op(g)
    rho = float(g.T @ Hg)
    residual = float((Hg - rho * g).norm())
    return max(lo - margin, rho - max(residual, 0.01 * (rho - lo), margin))


def _preconditioner(H: SymmetricOperator, diag: torch.Tensor, shift: float, choice: str) -> tuple[Preconditioner, str]:
    """The LOBPCG preconditioner for ``choice`` and its name. "auto": AMG on the CPU when
    pyamg is installed, else Fourier when H has a grid whose size matches, else Jacobi."""
    grid = getattr(H, "grid", None)
    has_grid = grid is not None and math.prod(grid.n) == H.shape[0]
    if choice == "auto":
        choice = "amg" if _HAVE_PYAMG and torch.device(H.device).type == "cpu" else ("fourier" if has_grid else "jacobi")
    if choice == "fourier":
        if not has_grid:
            raise ValueError("the Fourier preconditioner needs H.grid (with n and h) matching H.shape")
        laplacian_diag = sum(2.0 / h**2 for h in grid.h)
        typical = float((diag - laplacian_diag - shift).clamp_min(0).median())
        return fourier_preconditioner(H, max(0.25 * typical, 1.0)), "fourier"
    if choice == "amg":
        return amg_preconditioner(H, shift), "amg"
    if choice == "jacobi":
        inv = 1.0 / (diag - shift).clamp_min(1e-300)
        return (lambda R: R * inv[:, None]), "jacobi"
    raise ValueError(f"preconditioner must be 'auto', 'fourier', 'amg' or 'jacobi'; got {choice!r}")


_DEFAULT_MAXITER = {"lobpcg": 500, "lanczos": 20000}


def _check_arguments(H: SymmetricOperator, k: int, tol: float, method: str) -> None:
    n = int(H.shape[0])
    if method not in ("auto", "lobpcg", "lanczos", "eigsh", "eigsh-sa"):
        raise ValueError(f"method must be 'auto', 'lobpcg', 'lanczos', 'eigsh' or 'eigsh-sa'; got {method!r}")
    if not 1 <= k <= n - _GUARD - 1:
        raise ValueError(f"k must lie in [1, N - {_GUARD + 1}] = [1, {n - _GUARD - 1}]; got {k}")
    if H.dtype not in (torch.float32, torch.float64):
        raise InputDtypeError(f"the operator has dtype {H.dtype}; spectrum needs float32 or float64")
    floor = 100 * torch.finfo(H.dtype).eps
    if not floor <= tol < 1:
        raise InputDtypeError(
            f"tol={tol:g} is out of reach for a {H.dtype} operator (round-off alone is about "
            f"{floor / 100:.1e} relative): use tol in [{floor:.1e}, 1) or a float64 operator"
        )


def spectrum(
    H: SymmetricOperator,
    k: int = 3,
    method: Method = "auto",
    tol: float = 1e-8,
    maxiter: int | None = None,
    return_eigenvectors: bool = False,
    deflate: bool = True,
    raise_on_failure: bool = False,
    v0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    preconditioner: Literal["auto", "fourier", "amg", "jacobi"] = "auto",
) -> SpectrumResult:
    """The k lowest eigenvalues of the real symmetric operator H, with error bounds.

    Methods (all end with the explicit check of the module docstring):

    - "auto" / "lobpcg": block LOBPCG with a preconditioner approximating
      (H - sigma I)^{-1}, sigma just below lambda_0 (from the ground state's Rayleigh
      quotient and residual when deflating, else the Gershgorin bound; see
      ``_shift_below``). ``preconditioner``: "amg" (a pyamg smoothed-aggregation V-cycle
      on ``H.to_scipy()``), "fourier" ((-Laplacian_h + c)^{-1} by DST on ``H.grid``, c a
      quarter of the median of V - sigma: O(N log N), any device, iteration counts
      independent of h but growing with the range of V), "jacobi", or "auto" (AMG on the
      CPU, Fourier on other devices when H has a grid). ``maxiter`` counts iterations
      (default 500).
    - "lanczos": block Lanczos (block size k + 2) with full reorthogonalisation and thick
      restart, matvecs only (slow on fine grids: its rate depends on the spectral width
      ~ 1/h^2). ``maxiter`` counts matvecs (default 20000).
    - "eigsh": scipy ARPACK in shift-invert mode around the Gershgorin lower bound
      (a SuperLU factorisation of H - sigma I); "eigsh-sa": ARPACK with which="SA".
      ``maxiter`` is ARPACK's; ``deflate`` and ``generator`` are not used.

    ``tol``: relative accuracy from the ground level (module docstring); at least 100 eps of
    the operator's dtype, else :class:`InputDtypeError`. ``v0``: starting vector(s) (N,) or
    (N, j). ``generator``: for the random starting columns. ``deflate``: start from
    ``H.ground_state`` g (never assumed exact), with (x_a - <x_a>) g per grid axis and
    random columns weighted by g as the other starting columns, and place the
    preconditioner's shift from g's Rayleigh quotient. Eigenvalues that miss ``tol`` are flagged
    ``converged=False`` with a :class:`ConvergenceWarning`, or raise
    :class:`ConvergenceError` when ``raise_on_failure``.
    """
    start = time.perf_counter()
    _check_arguments(H, k, tol, method)
    op = _Counted(H)
    m = k + _GUARD
    diag = H.diagonal().to(_WORK_DTYPE).to(op.device)
    if method in ("eigsh", "eigsh-sa"):
        X, name = _eigsh(op, H, m, tol, maxiter, v0, shift_invert=method == "eigsh")
        X = torch.cat([X, _orthonormal(_random(op, m - X.shape[1], generator), X)], 1) if X.shape[1] < m else X
    else:
        ground_state = getattr(H, "ground_state", None) if deflate else None
        X0 = _start_block(op, m, v0, ground_state, getattr(H, "grid", None), generator)
        budget = maxiter if maxiter is not None else _DEFAULT_MAXITER["lanczos" if method == "lanczos" else "lobpcg"]
        start_note = ", ground-state start" if ground_state is not None else ""
        if method == "lanczos":
            X, name = _lanczos(op, X0, k, tol, budget, generator), f"lanczos (block {m}{start_note})"
        else:
            shift = _shift_below(op, H, ground_state)
            precond, pname = _preconditioner(H, diag, shift, preconditioner)
            X, name = _lobpcg(op, X0, precond, k, tol, budget, diag), f"lobpcg ({pname}{start_note})"
    check = _final_check(op, X, diag)
    return _result(check, k, op, start, name, tol, return_eigenvectors, raise_on_failure)
