"""Krylov solvers: block Lanczos with thick restart, and scipy's ARPACK.

:func:`lanczos` is block Lanczos with full reorthogonalisation and thick restart (the
symmetric Krylov-Schur method of Stewart 2001), matvecs only; :func:`arpack` runs scipy's
ARPACK in shift-invert mode (a SuperLU factorisation) or with which="SA". Both return a
basis for the final check of :mod:`.solution` (THEORY section 2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .blocks import WORK_DTYPE, Counted, orthonormal, random_columns, symmetric
from .solution import SymmetricOperator, error_bounds, projection_roundoff, within_tol

__all__ = ["arpack", "lanczos"]

def lanczos(op: Counted, X0: torch.Tensor, k: int, tol: float, maxiter: int,
             generator: torch.Generator | None) -> torch.Tensor:
    """Block Lanczos with full reorthogonalisation and thick restart (the symmetric
    Krylov-Schur method of Stewart 2001), block size m = X0.shape[1].

    T = Q^T H Q is filled column by column from the reorthogonalisation coefficients, so
    that after a restart to the lowest Ritz vectors Y (T = diag(theta) plus the coupling to
    the last block) the recurrence goes on unchanged. The residual norm of Ritz pair i is
    ||T[last block, :] s_i||. Stops when the first k Ritz values meet ``tol`` or after
    ``maxiter`` matvecs. The test starts with the second block: on the first, the Ritz
    values are the start block's own, whose guard values are no neighbours to trust
    (``lobpcg``).
    """
    m = X0.shape[1]
    ncv = min(op.n, max(4 * m, 40))
    keep = max(m + 1, ncv // 2)
    Q = orthonormal(X0)
    T = torch.zeros(Q.shape[1], 0, dtype=WORK_DTYPE, device=Q.device)
    p = 0
    while True:
        Q, T = _lanczos_step(op, Q, T, p, generator)
        first, p = p == 0, T.shape[1]
        theta, S = torch.linalg.eigh(symmetric(T[:p, :p]))
        rnorm = (T[p:, :p] @ S).norm(dim=0).cpu().numpy()
        th = theta.cpu().numpy()[:m]
        errors = error_bounds(th, rnorm[:m]) + projection_roundoff(th, op.n)
        done = not first and within_tol(th, errors, tol)[:k].all()
        if done or op.count >= maxiter or Q.shape[1] == p:
            return Q[:, :p] @ S[:, :m]
        if Q.shape[1] + (Q.shape[1] - p) > ncv:
            Q, T, p = _thick_restart(Q, T, theta, S, keep)


def _lanczos_step(op: Counted, Q: torch.Tensor, T: torch.Tensor, p: int,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply H to the unprocessed block Q[:, p:], orthogonalise it (twice) against Q and
    append the new block. T (n x p) holds H Q[:, :p] = Q T; it grows to (n + b) x n."""
    W = op(Q[:, p:])
    C = Q.T @ W
    W = W - Q @ C
    C2 = Q.T @ W
    W, C = W - Q @ C2, C + C2
    new = orthonormal(W, Q)
    missing = min(W.shape[1] - new.shape[1], op.n - Q.shape[1] - new.shape[1])
    if missing > 0:
        fill = random_columns(op, missing, generator)
        new = torch.cat([new, orthonormal(fill, torch.cat([Q, new], 1))], 1)
    n, b = Q.shape[1], new.shape[1]
    T2 = torch.zeros(n + b, n, dtype=WORK_DTYPE, device=Q.device)
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
    T = torch.zeros(keep + b, keep, dtype=WORK_DTYPE, device=Q.device)
    T[:keep] = torch.diag(theta[:keep])
    T[keep:] = coupling
    return Q, T, keep


def arpack(op: Counted, H: SymmetricOperator, m: int, tol: float, maxiter: int | None,
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
    start = (random_columns(op, 1, generator) if v0 is None else v0.reshape(op.n, -1))[:, 0].to(WORK_DTYPE).cpu().numpy()
    try:
        _, vectors = spla.eigsh(operator, k=m, tol=tol * 1e-2, maxiter=maxiter, v0=start, **mode)
    except spla.ArpackNoConvergence as exc:
        vectors = exc.eigenvectors
    return torch.from_numpy(np.asarray(vectors, dtype=np.float64)).to(op.device), name
