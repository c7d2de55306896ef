"""Block LOBPCG with soft locking (Knyazev 2001; Hetmaniuk and Lehoucq 2006), the default solver.

:func:`lobpcg` iterates on the row blocks of :class:`~.blocks.Blocks` with a preconditioner
of :mod:`.preconditioners`; :func:`converged_or_stuck` is its convergence test (error bound plus the
round-off term, and the test of being stuck at the round-off floor), shared with the
batched solver of :mod:`.batch`. THEORY sections 2 and 6.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .blocks import Blocks, Counted
from .multigrid import Multigrid
from .preconditioners import Preconditioner
from .solution import error_bounds, projection_roundoff, roundoff, tol_scales, within_tol

__all__ = ["converged_or_stuck", "lobpcg"]

def converged_or_stuck(theta: torch.Tensor, X: torch.Tensor, rnorm: torch.Tensor, diag: torch.Tensor, diag_max: float,
            eps: float, tol: float, scratch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Whether each Ritz pair meets ``tol`` (error bound plus the round-off term), and whether
    it is stuck: its residual bound is already below the round-off term and the round-off
    term alone exceeds tol (no iteration can pass it). The round-off term (one pass over X in
    ``scratch``) is computed only when some bound is below tol or below its ceiling
    2 eps max|diag(H)| (``diag_max``) + the projection term (unit columns), i.e. when it can
    decide either."""
    th = theta.cpu().numpy()
    errors = error_bounds(th, rnorm.cpu().numpy())
    ceiling = 2 * eps * diag_max + projection_roundoff(th, X.shape[0])
    if not (errors <= np.maximum(tol * tol_scales(th), ceiling)).any():
        return np.zeros(len(th), dtype=bool), np.zeros(len(th), dtype=bool)
    noise = roundoff(th, X, diag, eps, scratch)
    passed = within_tol(th, errors + noise, tol)
    return passed, (errors <= noise) & ~within_tol(th, noise, tol)


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


def lobpcg(op: Counted, X0: torch.Tensor, precond: Preconditioner, k: int, tol: float,
            maxiter: int, diag: torch.Tensor, descent_first: bool = False) -> Blocks:
    """Block LOBPCG (Knyazev 2001) with soft locking, in the orthonormal-basis form of
    Hetmaniuk and Lehoucq (2006): the search basis [X, P, W] is kept orthonormal, with
    P = the part of the previous X orthogonal to the new X, built in coefficient space so
    that no tiny vector is ever rescaled. Only unconverged columns get a preconditioned
    residual W (and matvecs); it stops when the first k columns meet ``tol``, when no
    preconditioned residual adds a new direction, or when those that miss ``tol`` are stuck
    at the round-off floor (``converged_or_stuck``: further iterations cannot lower their error).
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
    blocks = Blocks(op, X0.shape[1])
    blocks.append(X0.T)
    theta, p = blocks.rayleigh_ritz(-1)
    descent, previous = descent_first, math.inf
    diag_max = float(diag.abs().max())
    for step in range(maxiter):
        X, R, rnorm = blocks.S[: blocks.m], blocks.R[: blocks.m], blocks.rnorm
        passed, stuck = converged_or_stuck(theta, X.T, rnorm, diag, diag_max, op.eps, tol, blocks.scratch[: blocks.m].T)
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
