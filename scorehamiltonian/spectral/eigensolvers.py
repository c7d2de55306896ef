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
  So no solver accepts its start block: LOBPCG takes at least one step and Lanczos tests
  from its second block on, since a start's guard values are not yet near the eigenvalues
  they stand in for.
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
  solves of the eigsh method count as one each. ``work`` adds the multigrid preconditioner's
  level matvecs and coarse solves and the coarse-grid solves of nested iteration, in
  fine-matvec equivalents (each weighted by its unknowns over N).
"""

from __future__ import annotations

import inspect
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

from ..common.errors import ConvergenceError, InputDtypeError, InputShapeError
from .memory import check_memory, estimate_memory
from .multigrid import COARSEST_SIZE, Multigrid
from .ritz_update import update_rows
from .transfer import interpolate_columns

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
    "fourier_shift",
    "laplacian_eigenvalues",
    "spectrum",
]

Method = Literal["auto", "lobpcg", "lanczos", "eigsh", "eigsh-sa"]
Preconditioner = Callable[[torch.Tensor], torch.Tensor]

#: Extra eigenpairs computed above the k asked for (neighbours for the error bounds).
_GUARD = 2
_WORK_DTYPE = torch.float64
#: Columns dropped from an orthonormalisation when they keep less than this of their norm.
_DROP = 1e-10
#: LOBPCG drops a preconditioned residual that keeps less than this of its norm once
#: projected off the current basis (no new direction; sqrt of float64 eps).
_NEW_DIRECTION = 1.5e-8
#: ``_inner`` sums its products over column chunks of this length (one batched GEMM).
_INNER_CHUNK = 4096
#: The in-place Rayleigh-Ritz update (``_Blocks._combine``) runs as one numba pass on the CPU
#: (:mod:`._ritz_update`; at 512^2 with 4 rows 6.5 ms against 9.3 ms for the torch path, medians
#: of interleaved calls); other devices take the torch path in ``_UPDATE_CHUNKS`` column chunks
#: (a few large GEMMs rather than many small launches, for a buffer of m / 4 rows).
_NUMBA_UPDATE, _UPDATE_CHUNKS = True, 8
#: Nested iteration solves the multigrid levels that resolve p_t this well (points per
#: width of its sharpest mode), each to relative accuracy NESTED_TOL (or the asked tol if
#: looser) within NESTED_MAXITER LOBPCG iterations.
NESTED_POINTS_PER_WIDTH = 2.0
NESTED_TOL = 1e-3
NESTED_MAXITER = 50


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
    n_matvec : matvec columns of H used, the final check included.
    wall_time : seconds. method : the solver and its options. tol : as requested.
    work : the whole solve in H-matvec equivalents: ``n_matvec`` plus the multigrid
        preconditioner's level matvecs and coarse solves and the coarse grids of nested
        iteration, each weighted by its unknowns (its flops for the sparse coarsest solve)
        over H's; equal to ``n_matvec`` for the other methods.
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
    work: float

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
    """H with a matvec counter, taking and returning float64 columns (N, m); ``extra``
    collects work done outside H.matvec, in H-matvec equivalents."""

    def __init__(self, H: SymmetricOperator) -> None:
        self.H, self.count, self.extra = H, 0, 0.0
        self.n = int(H.shape[0])
        self._matvec_into = H.dtype == _WORK_DTYPE and "out" in inspect.signature(H.matvec).parameters
        self.device = torch.device(H.device)
        self.eps = torch.finfo(H.dtype).eps

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        self.count += X.shape[1]
        out = self.H.matvec(X.to(dtype=self.H.dtype, device=self.device))
        return out.to(_WORK_DTYPE).reshape(X.shape)

    def rows(self, U: torch.Tensor, out: torch.Tensor) -> None:
        """out = (H U^T)^T for row blocks (m, N), written in place when H's matvec takes
        ``out`` (as :class:`ScoreHamiltonian`'s does) and works in float64."""
        if self._matvec_into:
            self.count += U.shape[0]
            self.H.matvec(U.T, out=out.T)
        else:
            out.copy_(self(U.T).T)


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


def _inner(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A B^T for row blocks A (p, N) and B (q, N): sum_j A[:, j] B[:, j]^T, summed as one
    batched GEMM over chunks of ``_INNER_CHUNK`` columns plus the remainder. A plain GEMM
    with so small an output and so long an inner dimension runs at a fraction of the
    machine's speed (2-4x slower on the CPU at N ~ 1e6); the chunked sum is also a blocked
    sum, within the (2 + log2 N) eps of ``_projection_roundoff``. Rows with a stride other
    than 1 between columns take the plain GEMM."""
    n = A.shape[1]
    chunks = n // _INNER_CHUNK
    if chunks < 2 or A.stride(1) != 1 or B.stride(1) != 1:
        return A @ B.T
    cut = chunks * _INNER_CHUNK
    left = A[:, :cut].view(A.shape[0], chunks, _INNER_CHUNK).transpose(0, 1)
    right = B[:, :cut].view(B.shape[0], chunks, _INNER_CHUNK).permute(1, 2, 0)
    out = torch.bmm(left, right).sum(0)
    return out.addmm_(A[:, cut:], B[:, cut:].T) if cut < n else out


def _symmetric(G: torch.Tensor) -> torch.Tensor:
    """(G + G^T) / 2 of a matrix or a batch of matrices (..., q, q)."""
    return 0.5 * (G + G.mT)


def _roundoff(theta: np.ndarray, X: torch.Tensor, diag: torch.Tensor, eps: float,
              scratch: torch.Tensor | None = None) -> np.ndarray:
    """Round-off in a Ritz value: 2 eps ||diag(H) x_i|| from the matvec in the operator's
    dtype, plus (2 + log2 N) eps_64 max |theta| from the inner products (blocked sums) and
    the small eigenproblem. ``scratch``: an (N, m) tensor to compute in (else allocated)."""
    scaled = torch.mul(diag[:, None], X, out=scratch)
    matvec = (2 * eps * scaled.norm(dim=0)).cpu().numpy()
    return matvec + _projection_roundoff(theta, X.shape[0])


def _projection_roundoff(theta: np.ndarray, n: int) -> float:
    return (2 + math.log2(n)) * torch.finfo(_WORK_DTYPE).eps * float(np.abs(theta).max())


@dataclass
class _Check:
    """The final check of a basis: Ritz values, vectors, residuals, bounds (all m columns)."""

    theta: np.ndarray
    X: torch.Tensor
    rnorm: np.ndarray
    errors: np.ndarray
    noise: np.ndarray


def _final_check(op: _Counted, X: torch.Tensor, diag: torch.Tensor, blocks: _Blocks | None = None) -> _Check:
    """Orthonormalise X, apply H explicitly, and bound the Ritz values' errors. ``blocks``:
    the solver's own (LOBPCG's, X = ``blocks.X``), reused so that the check allocates nothing."""
    blocks = blocks if blocks is not None else _Blocks(op, X.shape[1], depth=2)
    blocks.q = 0
    blocks.append(X.T)
    theta, _ = blocks.rayleigh_ritz(-1)
    X, rnorm = blocks.S[: blocks.m], blocks.rnorm.cpu().numpy()
    th = theta.cpu().numpy()
    noise = _roundoff(th, X.T, diag, op.eps, blocks.scratch[: blocks.m].T)
    return _Check(th, X.T, rnorm, _error_bounds(th, rnorm) + noise, noise)


def _advice(check: _Check, k: int, tol: float) -> str:
    """What to change when the first k pairs of ``check`` miss ``tol``: tol itself when the
    round-off term alone exceeds it (the floor of this operator in its dtype), else maxiter."""
    scale = _scales(check.theta)[:k]
    floor = float((check.noise[:k] / scale).max())
    if floor > tol:
        return (f"tol is below this operator's round-off floor: the matvec's round-off alone "
                f"(2 eps ||diag(H) v||) is {floor:.1e} relative to the gap, so ask for tol >= {2 * floor:.0e} "
                f"(or use a coarser grid or a larger gap)")
    return "raise maxiter or tol"


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
            f"error bounds {check.errors[:k].tolist()} after {op.count} matvecs; {_advice(check, k, tol)}"
        )
        if raise_on_failure:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    vectors = check.X[:, :k].to(op.H.dtype, copy=True) if return_eigenvectors else None
    theta, rnorm, errors = (torch.as_tensor(a[:k], dtype=_WORK_DTYPE) for a in (check.theta, check.rnorm, check.errors))
    return SpectrumResult(
        theta, vectors, rnorm, errors,
        torch.as_tensor(converged), op.count, time.perf_counter() - start, method, tol, op.count + op.extra,
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


def laplacian_eigenvalues(grid: object, device: torch.device | None = None) -> torch.Tensor:
    """The eigenvalues of the 3-point Dirichlet -Laplacian_h on ``grid`` (``n``, ``h`` per
    axis), shape ``grid.n``: sum_a (4 / h_a^2) sin^2(pi j_a / (2 (n_a + 1))), j_a = 1..n_a,
    in 1 / x^2; the DST-I of every axis diagonalises it (float64)."""
    dims = tuple(int(n) for n in grid.n)
    eig = torch.zeros(dims, dtype=_WORK_DTYPE, device=device)
    for a, (n, h) in enumerate(zip(dims, grid.h)):
        j = torch.arange(1, n + 1, dtype=_WORK_DTYPE, device=device)
        shape = [1] * len(dims)
        shape[a] = n
        eig = eig + (4.0 / h**2 * torch.sin(math.pi * j / (2 * (n + 1))) ** 2).reshape(shape)
    return eig


def fourier_shift(diag: torch.Tensor, grid: object, shift: float | torch.Tensor) -> torch.Tensor:
    """The constant c of the Fourier preconditioner, standing in for the potential:
    max(1, median(V - shift)_+ / 4), V = diag - 2 sum_a 1 / h_a^2 (the potential where the
    3-point stencil's diagonal is removed). ``diag`` (N,) or (B, N) with ``shift`` a float or
    (B, 1); returns () or (B,)."""
    laplacian_diag = sum(2.0 / h**2 for h in grid.h)
    typical = (diag - laplacian_diag - shift).clamp_min(0).median(dim=-1).values
    return torch.clamp(0.25 * typical, min=1.0)


def fourier_preconditioner(H: SymmetricOperator, shift: float) -> Preconditioner:
    """R -> (-Laplacian_h + shift)^{-1} R, by DST-I on every axis of ``H.grid``.

    -Laplacian_h is the 3-point Dirichlet stencil, whose eigenvalues are
    sum_a (4 / h_a^2) sin^2(pi j_a / (2 (n_a + 1))); ``shift`` > 0 stands in for the
    potential (a typical value of V - lambda_0 where the low eigenvectors live). It ignores
    the variation of V, so its quality is set by the range of V, not by h: the choice for
    fine grids. Columns (N, m), any device (scipy.fft on the CPU, torch.fft elsewhere).
    """
    dims = tuple(int(n) for n in H.grid.n)
    scale = math.prod(2.0 / (n + 1) for n in dims)
    inv = (scale / (laplacian_eigenvalues(H.grid, torch.device(H.device)) + float(shift))).unsqueeze(0)

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
    Gershgorin bound of ``spectral_bounds``. Runs on the CPU (columns are moved there). The
    prolongation smoother's weight comes from local (Gershgorin) bounds, not pyamg's default
    spectral radius estimate, whose power iteration starts from numpy's global random
    state: with it every call built a different preconditioner, and the same seed gave
    eigenvalues differing at 1e-14 (same matvec counts and times either way, 1D and 2D).
    """
    A = (H.to_scipy() - shift * sp.identity(H.shape[0], format="csr")).tocsr()
    smoother = ("jacobi", {"omega": 4.0 / 3.0, "weighting": "local"})
    cycle = pyamg.smoothed_aggregation_solver(A, smooth=smoother).aspreconditioner()

    def apply(R: torch.Tensor) -> torch.Tensor:
        cols = R.cpu().numpy()
        out = np.column_stack([cycle @ cols[:, j] for j in range(cols.shape[1])])
        return torch.from_numpy(out).to(R.device)

    return apply


# ---------------------------------------------------------------------------------------
# Solvers: each returns a basis (N, m) whose span approximates the m lowest eigenvectors
# ---------------------------------------------------------------------------------------


def _passed(theta: torch.Tensor, X: torch.Tensor, rnorm: torch.Tensor, diag: torch.Tensor, diag_max: float,
            eps: float, tol: float, scratch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Whether each Ritz pair meets ``tol`` (error bound plus the round-off term), and whether
    it is stuck: its residual bound is already below the round-off term and the round-off
    term alone exceeds tol (no iteration can pass it). The round-off term (one pass over X in
    ``scratch``) is computed only when some bound is below tol or below its ceiling
    2 eps max|diag(H)| (``diag_max``) + the projection term (unit columns), i.e. when it can
    decide either."""
    th = theta.cpu().numpy()
    errors = _error_bounds(th, rnorm.cpu().numpy())
    ceiling = 2 * eps * diag_max + _projection_roundoff(th, X.shape[0])
    if not (errors <= np.maximum(tol * _scales(th), ceiling)).any():
        return np.zeros(len(th), dtype=bool), np.zeros(len(th), dtype=bool)
    noise = _roundoff(th, X, diag, eps, scratch)
    passed = _converged(th, errors + noise, tol)
    return passed, (errors <= noise) & ~_converged(th, noise, tol)


class _Blocks:
    """Row blocks S = [X; P; W] (each row one vector) and HS = H S, ``depth`` m rows each
    (3 for LOBPCG, 2 for a Rayleigh-Ritz on X alone), allocated once: a Rayleigh-Ritz update
    writes the new [X; P] and [HX; HP] over S and HS in place, one column tile or chunk at a
    time (``_NUMBA_UPDATE``), so no (N, m) block is ever concatenated, copied or double-buffered,
    and in the same pass the residuals R = HX - X diag(theta) of the new Ritz vectors and
    their norms (``rnorm``), from the chunk just written. Between updates the rows past the
    basis are free: R lives in HS's (it is consumed by the preconditioner before H W is
    written there) and the round-off scratch in S's (before the preconditioner writes W
    there).

    [X; P] is orthonormal; W is only projected off it (once, in place). Its normalisation
    and the choice of independent directions happen in coefficient space, from the exact
    Gram matrix of S (``rayleigh_ritz``), so no pass over the vectors is spent on them."""

    def __init__(self, op: _Counted, m: int, depth: int = 3) -> None:
        def block(rows: int) -> torch.Tensor:
            return torch.zeros(rows, op.n, dtype=_WORK_DTYPE, device=op.device)

        self.S, self.HS = block(depth * m), block(depth * m)
        self._numba = _NUMBA_UPDATE and torch.device(op.device).type == "cpu"
        self._chunk = -(-op.n // _UPDATE_CHUNKS)
        self._update = None if self._numba else torch.zeros(2 * m * self._chunk, dtype=_WORK_DTYPE, device=op.device)
        self.op, self.m, self.q, self.a = op, m, 0, 0
        self._before = torch.zeros(0, dtype=_WORK_DTYPE, device=op.device)
        self._gram: torch.Tensor | None = None
        self.rnorm = torch.zeros(0, dtype=_WORK_DTYPE, device=op.device)

    @property
    def R(self) -> torch.Tensor:
        """m free rows of HS (past the basis) for the residual."""
        return self.HS[self.q : self.q + self.m]

    @property
    def scratch(self) -> torch.Tensor:
        """m free rows of S (past the basis) for the round-off term."""
        return self.S[self.q : self.q + self.m]

    @property
    def X(self) -> torch.Tensor:
        """The current Ritz vectors, columns (N, m) (a view of S's first m rows)."""
        return self.S[: self.m].T

    def free(self, a: int) -> torch.Tensor:
        """The next a rows of S, to be filled and then passed to ``append``."""
        return self.S[self.q : self.q + a]

    def append(self, W: torch.Tensor) -> None:
        """Append the rows W (a, N) (or the rows of ``free`` already holding them) projected
        once off the orthonormal S[:q], and H times them."""
        q, a = self.q, W.shape[0]
        new = self.S[q : q + a]
        if W.data_ptr() != new.data_ptr():
            new.copy_(W)
        products = _inner(self.S[: q + a], new)
        self._before = products[q:].diagonal()
        self._gram = None if q else products  # appended to nothing: products is S's Gram matrix
        if q:
            new.addmm_(products[:q].T, self.S[:q], alpha=-1.0)
        self.op.rows(new, self.HS[q : q + a])
        self.q, self.a = q + a, a

    def descend(self, W: torch.Tensor, rows: torch.Tensor) -> None:
        """X[rows] <- X[rows] - W, then X (all of it, as new rows) and H X replace S."""
        X = self.S[: self.m]
        X.index_add_(0, rows, W, alpha=-1.0)
        self.q = 0
        self.append(X)

    def _reduced(self, M: torch.Tensor) -> torch.Tensor:
        """E (q x r): coefficients of an orthonormal basis of the appended rows' span, [X; P]
        kept as they are. Appended rows that kept less than ``_NEW_DIRECTION`` of their norm
        after the projection are left out (no new direction); the rest are orthonormalised
        by the eigendecomposition of their Gram matrix, directions below ``_DROP`` dropped."""
        q, a = self.q, self.a
        old = q - a
        gram = M[old:, old:]
        fresh = (gram.diagonal() > _NEW_DIRECTION**2 * self._before).nonzero().flatten()
        E = torch.zeros(q, old, dtype=M.dtype, device=M.device)
        E[:old] = torch.eye(old, dtype=M.dtype, device=M.device)
        if fresh.numel() == 0:
            return E
        w, U = torch.linalg.eigh(gram[fresh][:, fresh])
        keep = w > _DROP**2 * w.max()
        T = torch.zeros(q, int(keep.sum()), dtype=M.dtype, device=M.device)
        T[old + fresh] = U[:, keep] / w[keep].sqrt()
        return torch.cat([E, T], 1)

    def rayleigh_ritz(self, p_old: int) -> tuple[torch.Tensor, int]:
        """Rayleigh-Ritz on span(S): the m lowest Ritz pairs become X (rows 0..m-1) and, when
        ``p_old`` >= 0, the part of the previous X orthogonal to the new X becomes P (built in
        coefficient space, Hetmaniuk and Lehoucq 2006). Returns the Ritz values and P's rows
        (-1 when no new direction came in: the caller stops)."""
        S, HS = self.S[: self.q], self.HS[: self.q]
        M = _symmetric(_inner(S, S) if self._gram is None else self._gram)
        E = self._reduced(M)
        if E.shape[1] == self.q - self.a and p_old >= 0:
            return torch.empty(0), -1
        Linv, lift = _whitening(_symmetric(E.T @ M @ E))
        self.m = min(self.m, Linv.shape[0])
        theta, V = torch.linalg.eigh(_symmetric(Linv @ E.T @ _inner(HS, S) @ E @ Linv.T))
        coefficients = V[:, : self.m]
        if p_old >= 0:
            old = lift[:, : self.m]
            coefficients = torch.cat([coefficients, _orthonormal(old, against=coefficients)], 1)
        C = E @ Linv.T @ coefficients
        r = C.shape[1]
        self._combine(C.T.contiguous(), theta[: self.m])
        self.q, self.a = r, 0
        return theta[: self.m], r - self.m

    def _combine(self, CT: torch.Tensor, theta: torch.Tensor) -> None:
        """S[:r] <- CT S[:q] and HS[:r] <- CT HS[:q] in place (CT of shape (r, q)), then
        R = HS[:m] - S[:m] diag(theta) into HS[r:r + m] and its row norms into ``rnorm``:
        on the CPU by :func:`~._ritz_update.update_rows`, elsewhere by column chunks through
        a small buffer. Each tile or chunk of the q rows is read before any of it is
        overwritten, and R is formed while it is in cache."""
        r, q, m, n = CT.shape[0], CT.shape[1], self.m, self.S.shape[1]
        if self._numba:
            self.rnorm = update_rows(CT, self.S, self.HS, theta.contiguous()).sqrt()
            return
        squares = torch.zeros(m, dtype=_WORK_DTYPE, device=self.S.device)
        for a in range(0, n, self._chunk):
            b = min(a + self._chunk, n)
            chunk = self._update[: r * (b - a)].view(r, b - a)
            for rows in (self.S, self.HS):
                torch.matmul(CT, rows[:q, a:b], out=chunk)
                rows[:r, a:b].copy_(chunk)
            R = torch.addcmul(self.HS[:m, a:b], self.S[:m, a:b], theta[:, None], value=-1.0,
                              out=self.HS[r : r + m, a:b])
            norms = torch.linalg.vector_norm(R, dim=1)
            squares.addcmul_(norms, norms)
        self.rnorm = squares.sqrt()


def _whitening(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, Z) with W G W^T = I and G = Z^T Z (so Z W^T = I): W = L^{-1}, Z = L^T from the
    Cholesky factor G = L L^T, or, when round-off has made G numerically semi-definite
    (a basis that lost orthogonality after iterating at the round-off floor), from its
    eigendecomposition G = U diag(w) U^T with directions w < _DROP^2 max(w) dropped:
    W = diag(w^-1/2) U^T, Z = diag(w^1/2) U^T."""
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
        return torch.linalg.solve_triangular(L, eye, upper=False), L.T
    w, U = torch.linalg.eigh(G)
    keep = w > _DROP**2 * w.max()
    w, U = w[keep], U[:, keep]
    return (U / w.sqrt()).T, (U * w.sqrt()).T


def _front(R: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The rows of R that ``keep`` marks, moved in place to the front (in order; R's other
    rows are overwritten): R[keep] without allocating an (a, N) copy."""
    rows = keep.nonzero().flatten().tolist()
    for j, i in enumerate(rows):
        if i != j:
            R[j].copy_(R[i])
    return R[: len(rows)]


def _precondition(precond: Preconditioner, R: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The preconditioner applied to the rows R (a, N), written into the rows ``out``."""
    if isinstance(precond, Multigrid):
        precond(R.T, out=out.T)
    else:
        out.copy_(precond(R.T).T)
    return out


def _lobpcg(op: _Counted, X0: torch.Tensor, precond: Preconditioner, k: int, tol: float,
            maxiter: int, diag: torch.Tensor, descent_first: bool = False) -> _Blocks:
    """Block LOBPCG (Knyazev 2001) with soft locking, in the orthonormal-basis form of
    Hetmaniuk and Lehoucq (2006): the search basis [X, P, W] is kept orthonormal, with
    P = the part of the previous X orthogonal to the new X, built in coefficient space so
    that no tiny vector is ever rescaled. Only unconverged columns get a preconditioned
    residual W (and matvecs); it stops when the first k columns meet ``tol``, when no
    preconditioned residual adds a new direction, or when those that miss ``tol`` are stuck
    at the round-off floor (``_passed``: further iterations cannot lower their error).
    The start block cannot stop it: every call takes at least one step (with the columns
    that have not passed, so that the guard columns improve), unless every column passed.
    The bounds' cluster term takes the guard Ritz values as the next eigenvalues, and a
    start's guard columns (random ones) sit far above them, so a start column close to an
    eigenvector passed with too small a bound (1D bimodal at t = 1, 127 nodes: lambda_1
    off by 5.9e-3 against a bound of 5e-4, flagged converged, in 6 of 180 runs at tol 1e-3
    to 1e-8 before this rule). Columns that passed get no preconditioned residual, also in
    that first step: one built from a residual at round-off level is mostly round-off, and
    its H-products put spurious Ritz values far below lambda_0 (seen at -88 for a unit
    Gaussian). Returns its blocks, the Ritz vectors in ``blocks.X``.

    ``descent_first`` (for an accurate preconditioner, the multigrid cycle): start with
    block preconditioned inverse iteration, X <- X - W and Rayleigh-Ritz on X alone
    (Knyazev and Neymeyr 2003; a third of LOBPCG's operations on vectors per step), as
    long as each step at least halves the largest residual norm among the first k
    unconverged columns, and go on as LOBPCG from the first step that does not.
    """
    blocks = _Blocks(op, X0.shape[1])
    blocks.append(X0.T)
    theta, p = blocks.rayleigh_ritz(-1)
    descent, previous = descent_first, math.inf
    diag_max = float(diag.abs().max())
    for step in range(maxiter):
        X, R, rnorm = blocks.S[: blocks.m], blocks.R[: blocks.m], blocks.rnorm
        passed, stuck = _passed(theta, X.T, rnorm, diag, diag_max, op.eps, tol, blocks.scratch[: blocks.m].T)
        active = torch.as_tensor(~passed, device=X.device)
        done = not bool(active[:k].any()) or (passed | stuck)[:k].all()
        if (done and step) or not bool(active.any()):
            break
        worst = float(rnorm[:k][active[:k]].max() if bool(active[:k].any()) else rnorm[active].max())
        descent, previous = descent and worst <= 0.5 * previous, worst
        W = _precondition(precond, _front(R, active), blocks.free(int(active.sum())))
        if descent:
            blocks.descend(W, active.nonzero().flatten())
            theta, p = blocks.rayleigh_ritz(-1)
            continue
        blocks.append(W)
        theta_new, p = blocks.rayleigh_ritz(p)
        if p < 0:
            break
        theta = theta_new
    return blocks


def _lanczos(op: _Counted, X0: torch.Tensor, k: int, tol: float, maxiter: int,
             generator: torch.Generator | None) -> torch.Tensor:
    """Block Lanczos with full reorthogonalisation and thick restart (the symmetric
    Krylov-Schur method of Stewart 2001), block size m = X0.shape[1].

    T = Q^T H Q is filled column by column from the reorthogonalisation coefficients, so
    that after a restart to the lowest Ritz vectors Y (T = diag(theta) plus the coupling to
    the last block) the recurrence goes on unchanged. The residual norm of Ritz pair i is
    ||T[last block, :] s_i||. Stops when the first k Ritz values meet ``tol`` or after
    ``maxiter`` matvecs. The test starts with the second block: on the first, the Ritz
    values are the start block's own, whose guard values are no neighbours to trust
    (``_lobpcg``).
    """
    m = X0.shape[1]
    ncv = min(op.n, max(4 * m, 40))
    keep = max(m + 1, ncv // 2)
    Q = _orthonormal(X0)
    T = torch.zeros(Q.shape[1], 0, dtype=_WORK_DTYPE, device=Q.device)
    p = 0
    while True:
        Q, T = _lanczos_step(op, Q, T, p, generator)
        first, p = p == 0, T.shape[1]
        theta, S = torch.linalg.eigh(_symmetric(T[:p, :p]))
        rnorm = (T[p:, :p] @ S).norm(dim=0).cpu().numpy()
        th = theta.cpu().numpy()[:m]
        errors = _error_bounds(th, rnorm[:m]) + _projection_roundoff(th, op.n)
        done = not first and _converged(th, errors, tol)[:k].all()
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
           v0: torch.Tensor | None, shift_invert: bool, generator: torch.Generator | None) -> tuple[torch.Tensor, str]:
    """scipy's ARPACK on ``H.to_scipy()``: shift-invert (sigma = the Gershgorin lower bound
    of ``spectral_bounds``, minus a hair so that H - sigma I is nonsingular; SuperLU
    factorisation, each solve counted as a matvec) or which="SA" (sparse matvecs counted),
    started from v0's first column, else from a random column drawn with ``generator``
    (ARPACK's own random start continues one sequence across calls, so the same seed would
    not repeat a solve). A run that does not converge returns the pairs ARPACK has (the
    final check flags them)."""
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
    start = (_random(op, 1, generator) if v0 is None else v0.reshape(op.n, -1))[:, 0].to(_WORK_DTYPE).cpu().numpy()
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
    """m independent starting columns (column-major where assembled here): [v0, ground_state,
    fill]. The ground state g is left out when v0 already holds it (less than half of its
    norm outside span(v0)). Without a ground state the fill is random; with one, it is
    (x_a - <x_a>) g for each grid axis a (the first excited states of the harmonic
    approximation around each mode) and then random columns weighted by |g| + 1% of its
    maximum (localised where p lives, yet nonzero everywhere, so no eigenvector is excluded
    from the start)."""
    X = _random(op, 0, generator) if v0 is None else v0.reshape(op.n, -1).to(_WORK_DTYPE).to(op.device)
    g = None
    if ground_state is not None:
        g = ground_state.reshape(op.n, 1).to(_WORK_DTYPE).to(op.device)
        g = g / g.norm()
        if _outside_span(g, X) > 0.5:
            X = _beside(X, g)
    X = X[:, :m]
    if X.shape[1] == m and _independent(X):
        return X
    X = _orthonormal(X) if X.shape[1] else X
    if g is not None and X.shape[1] < m:
        X = _beside(X, _orthonormal(_coordinate_modes(g, grid), X))[:, :m]
    weight = 1.0 if g is None else g.abs() + 0.01 * g.abs().max()
    while X.shape[1] < m:
        X = _beside(X, _orthonormal(_random(op, m - X.shape[1], generator) * weight, X))
    return X


def _beside(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """[X, Y] (N, p + q) column-major, so that its rows are contiguous for ``_inner`` and
    LOBPCG's row blocks."""
    return torch.cat([X.T, Y.T]).T


def _outside_span(g: torch.Tensor, X: torch.Tensor) -> float:
    """||g - P g|| for a unit column g, P the orthogonal projector onto span(X) (from the
    Gram matrix of X, its tiny directions dropped)."""
    if X.shape[1] == 0:
        return 1.0
    w, U = torch.linalg.eigh(_inner(X.T, X.T))
    keep = w > _DROP**2 * w.max()
    coefficients = (U[:, keep].T @ _inner(X.T, g.T)) / w[keep, None].sqrt()
    return math.sqrt(max(0.0, 1.0 - float((coefficients**2).sum())))


def _independent(X: torch.Tensor) -> bool:
    """Whether the columns of X are clearly independent (condition number of their Gram
    matrix below 1 / ``_DROP``): LOBPCG orthonormalises such a block in coefficient space."""
    w = torch.linalg.eigvalsh(_inner(X.T, X.T))
    return bool(w[0] > _DROP * w[-1])


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


def _energy_scale(H: SymmetricOperator, rho: float, lower: float) -> float:
    """The energy scale of the low spectrum: 1 / width^2 for an operator that knows the width
    of its sharpest mode (``points_per_width`` x the largest spacing: the first excitation
    of a Gaussian mode of that width), else rho - lower (lower the Gershgorin bound)."""
    ppw, grid = getattr(H, "points_per_width", None), getattr(H, "grid", None)
    if ppw is not None and grid is not None and math.isfinite(ppw) and ppw > 0:
        return 1.0 / (ppw * max(grid.h)) ** 2
    return rho - lower


def _shift_below(op: _Counted, H: SymmetricOperator, ground_state: torch.Tensor | None) -> float:
    """A shift sigma below lambda_0 for the preconditioner.

    With a ground state g: rho - max(||r||, 0.01 E, margin), rho = g^T H g, r = H g - rho g
    (one matvec) and E the energy scale of ``_energy_scale``; otherwise lower - margin,
    lower the Gershgorin bound. The margin, 1% of the mean eigenvalue spacing
    (upper - lower) / N, keeps sigma off an eigenvalue when the bound is tight (a
    preconditioner that amplifies one direction by 1e8 stalls LOBPCG). Never below
    lower - margin; a shift that misses (lands above lambda_0) only slows the iteration:
    the final check stays honest."""
    lo, hi = H.spectral_bounds()
    margin = 0.01 * (hi - lo) / op.n
    if ground_state is None:
        return lo - margin
    g = ground_state.reshape(op.n, 1).to(_WORK_DTYPE).to(op.device)
    g = g / g.norm()
    Hg = op(g)
    rho = float(g.T @ Hg)
    residual = float((Hg - rho * g).norm())
    return max(lo - margin, rho - max(residual, 0.01 * _energy_scale(H, rho, lo), margin))


def _has_levels(H: SymmetricOperator) -> bool:
    return all(hasattr(H, name) for name in ("coarsen", "residual", "smooth", "grid", "coef"))


def _matching_grid(H: SymmetricOperator) -> object | None:
    """``H.grid`` when H has one whose node count is H's size, else None."""
    grid = getattr(H, "grid", None)
    return grid if grid is not None and math.prod(grid.n) == H.shape[0] else None


def _preconditioner(H: SymmetricOperator, diag: torch.Tensor, shift: float, choice: str) -> tuple[Preconditioner, str]:
    """The LOBPCG preconditioner for ``choice`` and its name. "auto": multigrid when H can
    coarsen itself (a :class:`ScoreHamiltonian` of more than ``COARSEST_SIZE`` unknowns),
    else AMG on the CPU when pyamg is installed, else Fourier when H has a grid whose size
    matches, else Jacobi."""
    grid = _matching_grid(H)
    if choice == "auto":
        if _has_levels(H) and H.shape[0] > COARSEST_SIZE:
            choice = "multigrid"
        else:
            choice = "amg" if _HAVE_PYAMG and torch.device(H.device).type == "cpu" else ("fourier" if grid is not None else "jacobi")
    if choice == "multigrid":
        if not _has_levels(H):
            raise ValueError("the multigrid preconditioner needs an operator that coarsens itself (ScoreHamiltonian)")
        mg = Multigrid(H, shift)
        return mg, f"multigrid, {len(mg.levels)} levels"
    if choice == "fourier":
        if grid is None:
            raise ValueError("the Fourier preconditioner needs H.grid (with n and h) matching H.shape")
        return fourier_preconditioner(H, float(fourier_shift(diag, grid, shift))), "fourier"
    if choice == "amg":
        return amg_preconditioner(H, shift), "amg"
    if choice == "jacobi":
        inv = 1.0 / (diag - shift).clamp_min(1e-300)
        return (lambda R: R * inv[:, None]), "jacobi"
    raise ValueError(f"preconditioner must be 'auto', 'multigrid', 'fourier', 'amg' or 'jacobi'; got {choice!r}")


def _nested_start(mg: Multigrid, m: int, k: int, tol: float, deflate: bool,
                  generator: torch.Generator | None) -> tuple[torch.Tensor | None, float, int]:
    """Nested iteration over the multigrid levels that resolve p_t (at least
    ``NESTED_POINTS_PER_WIDTH`` points per width): LOBPCG on the coarsest of them from the
    usual start, each level's m Ritz vectors interpolated as the next finer level's start
    (the lowest one replaced by that level's own ground state when deflating),
    each level solved to ``max(tol, NESTED_TOL)`` (its discretisation differs from the
    next one's by more) within ``NESTED_MAXITER`` iterations. Returns the Ritz vectors
    interpolated to the finest level (or None with no such coarse level), the work in
    finest-level matvec equivalents, and the number of levels solved."""
    operators = mg.operators
    usable = [i for i, H in enumerate(operators) if i > 0 and H.points_per_width >= NESTED_POINTS_PER_WIDTH]
    if not usable:
        return None, 0.0, 0
    chain, work, X = [mg], 0.0, None
    for _ in range(usable[-1]):
        chain.append(chain[-1].coarser())
    for i in range(usable[-1], 0, -1):
        H, level_mg = operators[i], chain[i]
        op = _Counted(H)
        if X is not None:
            X = interpolate_columns(X[:, 1:] if deflate else X, operators[i + 1].grid.n, H.grid.n)
        g = H.ground_state if deflate else None
        X0 = _start_block(op, m, X, g, H.grid, generator)
        diag = H.diagonal().to(_WORK_DTYPE).to(op.device)
        X = _lobpcg(op, X0, level_mg, k, max(tol, NESTED_TOL), NESTED_MAXITER, diag, descent_first=True).X
        work += (op.count + level_mg.work) * mg.levels[i].weight
    start = interpolate_columns(X[:, 1:] if deflate else X, operators[1].grid.n, operators[0].grid.n)
    return start, work, usable[-1]


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
    preconditioner: Literal["auto", "multigrid", "fourier", "amg", "jacobi"] = "auto",
    nested: bool = True,
) -> SpectrumResult:
    """The k lowest eigenvalues of the real symmetric operator H, with error bounds.

    Methods (all end with the explicit check of the module docstring):

    - "auto" / "lobpcg": block LOBPCG with a preconditioner approximating
      (H - sigma I)^{-1}, sigma below lambda_0 (from the ground state's Rayleigh quotient,
      its residual and the operator's energy scale when deflating, else the Gershgorin
      bound; see ``_shift_below``). ``preconditioner``: "multigrid" (a geometric V-cycle on
      the operator re-discretised on coarser grids, :class:`~.multigrid.Multigrid`: for
      operators that coarsen themselves, :class:`ScoreHamiltonian`), "amg" (a pyamg
      smoothed-aggregation V-cycle on ``H.to_scipy()``), "fourier" ((-Laplacian_h + c)^{-1}
      by DST on ``H.grid``, c a quarter of the median of V - sigma: O(N log N), any device,
      iteration counts independent of h but growing with the range of V), "jacobi", or
      "auto" (multigrid for an operator that coarsens itself and has more than
      ``COARSEST_SIZE`` unknowns, else AMG on the CPU, Fourier on other devices when H has a
      grid). With the multigrid preconditioner and no ``v0``, ``nested`` iteration first
      solves the coarser levels that resolve p_t (coarse to fine, each level's Ritz vectors
      interpolated as the next one's start), so the fine level starts close to converged.
      ``maxiter`` counts fine-level iterations (default 500).
    - "lanczos": block Lanczos (block size k + 2) with full reorthogonalisation and thick
      restart, matvecs only (slow on fine grids: its rate depends on the spectral width
      ~ 1/h^2). ``maxiter`` counts matvecs (default 20000).
    - "eigsh": scipy ARPACK in shift-invert mode around the Gershgorin lower bound
      (a SuperLU factorisation of H - sigma I); "eigsh-sa": ARPACK with which="SA".
      ``maxiter`` is ARPACK's; ``deflate`` is not used, and ARPACK starts from v0's first
      column, else from one random column drawn with ``generator``.

    ``tol``: relative accuracy from the ground level (module docstring); at least 100 eps of
    the operator's dtype, else :class:`InputDtypeError`. ``v0``: starting vector(s) (N,) or
    (N, j), the first columns of the start (a warm start, e.g. a coarser grid's eigenvectors
    through :func:`~.transfer.interpolate_columns`; it replaces nested iteration).
    ``generator``: for the random starting columns. ``deflate``: start from
    ``H.ground_state`` g too (never assumed exact; left out when v0 already spans it), with
    (x_a - <x_a>) g per grid axis and random columns weighted by g as the other starting
    columns, and place the preconditioner's shift from g's Rayleigh quotient.
    ``nested``: allow nested iteration (above). Before allocating, "auto" and "lobpcg"
    compare the memory they need (:func:`~.memory.estimate_memory`) with what the device has
    free and raise :class:`InsufficientMemoryError` with both figures when it will not fit.
    Eigenvalues that miss ``tol`` are flagged
    ``converged=False`` with a :class:`ConvergenceWarning`, or raise
    :class:`ConvergenceError` when ``raise_on_failure``.
    """
    start = time.perf_counter()
    _check_arguments(H, k, tol, method)
    if method in ("auto", "lobpcg"):
        grid = _matching_grid(H)
        nodes = tuple(grid.n) if grid is not None else (int(H.shape[0]),)
        check_memory(estimate_memory(nodes, k, dtype=H.dtype).solver, f"spectrum(k={k}) on {H.shape[0]} unknowns",
                     H.device)
    op = _Counted(H)
    m = k + _GUARD
    diag = H.diagonal().to(_WORK_DTYPE).to(op.device)
    blocks = None
    if method in ("eigsh", "eigsh-sa"):
        X, name = _eigsh(op, H, m, tol, maxiter, v0, shift_invert=method == "eigsh", generator=generator)
        X = _beside(X, _orthonormal(_random(op, m - X.shape[1], generator), X)) if X.shape[1] < m else X
    else:
        ground_state = getattr(H, "ground_state", None) if deflate else None
        budget = maxiter if maxiter is not None else _DEFAULT_MAXITER["lanczos" if method == "lanczos" else "lobpcg"]
        start_note = ", ground-state start" if ground_state is not None else ""
        if method == "lanczos":
            X0 = _start_block(op, m, v0, ground_state, getattr(H, "grid", None), generator)
            X, name = _lanczos(op, X0, k, tol, budget, generator), f"lanczos (block {m}{start_note})"
        else:
            shift = _shift_below(op, H, ground_state)
            precond, pname = _preconditioner(H, diag, shift, preconditioner)
            coarse_start, levels = None, 0
            if nested and isinstance(precond, Multigrid) and v0 is None:
                coarse_start, op.extra, levels = _nested_start(precond, m, k, tol, deflate, generator)
            X0 = _start_block(op, m, v0 if coarse_start is None else coarse_start, ground_state,
                              getattr(H, "grid", None), generator)
            blocks = _lobpcg(op, X0, precond, k, tol, budget, diag, descent_first=isinstance(precond, Multigrid))
            X = blocks.X
            op.extra += getattr(precond, "work", 0.0)
            nested_note = f", nested iteration from {levels} coarser grids" if levels else ""
            name = f"lobpcg ({pname}{start_note}{nested_note})"
    check = _final_check(op, X, diag, blocks)
    return _result(check, k, op, start, name, tol, return_eigenvectors, raise_on_failure)
