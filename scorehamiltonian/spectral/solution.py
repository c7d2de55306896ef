"""What every eigensolver returns: :class:`SpectrumResult`, and the final check that makes it honest.

Every method of :func:`~.eigensolvers.spectrum` ends here: the vectors it found are
orthonormalised, H is applied to them once more, and the Rayleigh-Ritz values, residual
norms and error bounds of that basis are reported (:func:`final_check`), with the
convergence test relative to the ground level and the round-off floor of the operator's
dtype (the conventions are stated in :mod:`.eigensolvers`; THEORY sections 2 and 6).
:func:`spectrum_result` turns the first k pairs into a :class:`SpectrumResult`, warning or
raising on any that missed ``tol``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
import torch

from ..common.errors import ConvergenceError, InputShapeError
from .blocks import WORK_DTYPE, Blocks, Counted

__all__ = [
    "GUARD",
    "Check",
    "ConvergenceWarning",
    "SpectrumResult",
    "SymmetricOperator",
    "error_bounds",
    "final_check",
    "projection_roundoff",
    "roundoff",
    "spectrum_result",
    "tol_scales",
    "within_tol",
]

#: Extra eigenpairs computed above the k asked for (neighbours for the error bounds).
GUARD = 2


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


def error_bounds(theta: np.ndarray, rnorm: np.ndarray) -> np.ndarray:
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


def tol_scales(theta: np.ndarray) -> np.ndarray:
    """max(theta_i - theta_0, theta_1 - theta_0): what ``tol`` is relative to."""
    return np.maximum(theta - theta[0], theta[1] - theta[0])


def within_tol(theta: np.ndarray, errors: np.ndarray, tol: float) -> np.ndarray:
    return errors <= tol * tol_scales(theta)


def roundoff(theta: np.ndarray, X: torch.Tensor, diag: torch.Tensor, eps: float,
              scratch: torch.Tensor | None = None) -> np.ndarray:
    """Round-off in a Ritz value: 2 eps ||diag(H) x_i|| from the matvec in the operator's
    dtype, plus (2 + log2 N) eps_64 max |theta| from the inner products (blocked sums) and
    the small eigenproblem. ``scratch``: an (N, m) tensor to compute in (else allocated)."""
    scaled = torch.mul(diag[:, None], X, out=scratch)
    matvec = (2 * eps * scaled.norm(dim=0)).cpu().numpy()
    return matvec + projection_roundoff(theta, X.shape[0])


def projection_roundoff(theta: np.ndarray, n: int) -> float:
    return (2 + math.log2(n)) * torch.finfo(WORK_DTYPE).eps * float(np.abs(theta).max())


@dataclass
class Check:
    """The final check of a basis: Ritz values, vectors, residuals, bounds (all m columns)."""

    theta: np.ndarray
    X: torch.Tensor
    rnorm: np.ndarray
    errors: np.ndarray
    noise: np.ndarray


def final_check(op: Counted, X: torch.Tensor, diag: torch.Tensor, blocks: Blocks | None = None) -> Check:
    """Orthonormalise X, apply H explicitly, and bound the Ritz values' errors. ``blocks``:
    the solver's own (LOBPCG's, X = ``blocks.X``), reused so that the check allocates nothing."""
    blocks = blocks if blocks is not None else Blocks(op, X.shape[1], depth=2)
    blocks.q = 0
    blocks.append(X.T)
    theta, _ = blocks.rayleigh_ritz(-1)
    X, rnorm = blocks.S[: blocks.m], blocks.rnorm.cpu().numpy()
    th = theta.cpu().numpy()
    noise = roundoff(th, X.T, diag, op.eps, blocks.scratch[: blocks.m].T)
    return Check(th, X.T, rnorm, error_bounds(th, rnorm) + noise, noise)


def _advice(check: Check, k: int, tol: float) -> str:
    """What to change when the first k pairs of ``check`` miss ``tol``: tol itself when the
    round-off term alone exceeds it (the floor of this operator in its dtype), else maxiter."""
    scale = tol_scales(check.theta)[:k]
    floor = float((check.noise[:k] / scale).max())
    if floor > tol:
        return (f"tol is below this operator's round-off floor: the matvec's round-off alone "
                f"(2 eps ||diag(H) v||) is {floor:.1e} relative to the gap, so ask for tol >= {2 * floor:.0e} "
                f"(or use a coarser grid or a larger gap)")
    return "raise maxiter or tol"


def spectrum_result(check: Check, k: int, op: Counted, start: float, method: str, tol: float,
            return_eigenvectors: bool, raise_on_failure: bool) -> SpectrumResult:
    """The first k pairs of ``check`` as a :class:`SpectrumResult`; warn or raise when any
    did not converge."""
    if len(check.theta) < k:
        raise ConvergenceError(f"{method}: found only {len(check.theta)} independent vectors of the {k} asked for")
    converged = within_tol(check.theta, check.errors, tol)[:k]
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
    theta, rnorm, errors = (torch.as_tensor(a[:k], dtype=WORK_DTYPE) for a in (check.theta, check.rnorm, check.errors))
    return SpectrumResult(
        theta, vectors, rnorm, errors,
        torch.as_tensor(converged), op.count, time.perf_counter() - start, method, tol, op.count + op.extra,
    )
