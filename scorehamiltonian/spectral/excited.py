"""lambda_1 of the ground-state form to relative accuracy, with psi_0 deflated exactly (THEORY section 6).

In the ground-state form H psi_0 = 0 exactly (:mod:`.operator`), so lambda_1 is the lowest
eigenvalue of H on the complement of psi_0. For a unit x orthogonal to psi_0 the Rayleigh
quotient rho = x^T H x, read from the Dirichlet form (relative accuracy, no cancellation
against lambda_0), is an upper bound on lambda_1, and

    rho - lambda_1 <= ||H x - rho x||^2 / delta

with delta the distance from rho to the next eigenvalue (Kato-Temple; for a cluster of
Ritz values the Rayleigh-Ritz cluster bound of :func:`~.solution.error_bounds`, the next
eigenvalue taken as the next Ritz value less its residual). The eigen-solver stops on a
test relative to theta_1 - theta_0 that includes the matvec's round-off 2 eps ||diag(H) x||
(:mod:`.solution`); for a gap of 1e-11 that floor stops it at residuals of 1e-6, where the
quadratic bound above is 1e-12, a tenth of the gap, although the bound only needs
||r|| ~ sqrt(rtol lambda_1 delta) ~ 3e-9 (rtol 1e-6), far above the round-off of r itself
(eps ||diag(H)|| ~ 1e-12 on a 4096-node 1D grid). :func:`first_excited` goes on from the
solver's vectors with block LOBPCG in the complement of psi_0 until that bound meets the
target. The residual of every bound is that of an explicit matvec, widened by its round-off
(:func:`~.solution.roundoff`) and by |theta_1 - rho|; rho's own round-off
(:meth:`~.operator.ScoreHamiltonian.dirichlet_form` with ``with_error``) is added to the error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .blocks import WORK_DTYPE, Counted, orthonormal
from .eigensolvers import shift_below
from .preconditioners import Preconditioner, choose_preconditioner
from .solution import error_bounds, roundoff

__all__ = ["ExcitedLevel", "first_excited"]

#: In 1D (H banded) or below this many unknowns the refinement's preconditioner is a sparse LU
#: factorisation of H - sigma I (exact), else the geometric multigrid cycle (the LU of a 127^2
#: order-4 grid took 1.3 s, the whole solve 0.3 s).
DIRECT_SIZE = 4096
#: Refinement stops when the bound has not halved in this many steps (the round-off floor).
STALL_STEPS = 3


@dataclass(frozen=True)
class ExcitedLevel:
    """lambda_1 of a ground-state-form operator: ``value`` = rho (an upper bound on it),
    ``error`` a bound on rho - lambda_1 (so lambda_1 lies in [value - error, value]);
    ``ritz_values`` the block's Rayleigh-Ritz values by matvec (lambda_1, lambda_2, ...),
    ``n_matvec`` the matvec columns spent here, ``steps`` the LOBPCG steps taken, ``vectors``
    the block (N, b), orthonormal and orthogonal to psi_0, whose first column gave ``value``
    (a start for a further call)."""

    value: float
    error: float
    ritz_values: tuple[float, ...]
    n_matvec: int
    steps: int
    vectors: torch.Tensor


def _direct(H, shift: float) -> Preconditioner:
    lu = spla.splu((H.to_scipy() - shift * sp.identity(H.shape[0], format="csr")).tocsc())
    return lambda R: torch.from_numpy(lu.solve(np.ascontiguousarray(R.cpu().numpy()))).to(R)


def _preconditioner(op: Counted, H, diag: torch.Tensor) -> Preconditioner:
    shift = shift_below(op, H, H.ground_state)
    if H.shape[0] <= DIRECT_SIZE or H.grid.dim == 1:
        return _direct(H, shift)
    return choose_preconditioner(H, diag, shift, "multigrid")[0]


class _State:
    """The block Y (N, b) orthonormal and orthogonal to psi_0, H Y by explicit matvec, its
    Rayleigh-Ritz values and residuals, rho of its first column and the bound on rho - lambda_1."""

    def __init__(self, op: Counted, H, diag: torch.Tensor, Y: torch.Tensor) -> None:
        HY = op(Y)
        theta, C = torch.linalg.eigh(0.5 * (Y.T @ HY + HY.T @ Y))
        self.Y, self.HY, self.theta = Y @ C, HY @ C, theta
        self.R = self.HY - self.Y * theta
        rnorm = self.R.norm(dim=0).numpy()
        th = theta.numpy().copy()
        noise = roundoff(th, self.Y, diag, op.eps)
        rho, rho_error = H.dirichlet_form(self.Y[:, 0].to(H.dtype), with_error=True)
        self.rho = float(rho)
        widened = rnorm + noise
        widened[0] += abs(th[0] - self.rho)
        th[0] = self.rho
        self.error = float(error_bounds(th, widened)[0]) + float(rho_error)


def first_excited(H, X: torch.Tensor, rtol: float, fallback: float = math.inf, maxiter: int = 40) -> ExcitedLevel:
    """lambda_1 of the ground-state-form operator H (a :class:`~.operator.ScoreHamiltonian`
    with ``form="ground_state"``) from start columns X (N, b), b >= 2 approximations of its
    eigenvectors 1 .. b (e.g. a solver's), to error <= rtol rho when it can (module
    docstring): block LOBPCG in the complement of ``H.ground_state`` (preconditioned by a
    sparse LU of H - sigma I on small or 1D grids, by the multigrid cycle otherwise) until
    the bound meets rtol rho, the bound stalls at round-off, or ``maxiter`` steps.
    ``fallback``: another valid bound on rho - lambda_1 for the start's first column
    (e.g. from the solver's cluster bounds), used while it is the smaller.
    """
    op = Counted(H)
    psi0 = H.ground_state.to(WORK_DTYPE).reshape(-1, 1)
    psi0 = psi0 / psi0.norm()
    diag = H.diagonal().to(WORK_DTYPE)
    state = _State(op, H, diag, orthonormal(X.to(WORK_DTYPE), psi0))
    b = state.Y.shape[1]
    best, error = state, min(state.error, fallback)
    precond, P, HP, steps, stalled = None, None, None, 0, 0
    while error > rtol * best.rho and steps < maxiter and stalled < STALL_STEPS:
        precond = precond or _preconditioner(op, H, diag)
        kept = [state.Y] + ([P] if P is not None else [])
        W = orthonormal(precond(state.R), orthonormal(torch.cat([psi0] + kept, 1)))
        if W.shape[1] == 0:
            break
        S = torch.cat(kept + [W], 1)
        HS = torch.cat([state.HY] + ([HP] if HP is not None else []) + [op(W)], 1)
        gram = S.T @ S
        w, U = torch.linalg.eigh(0.5 * (gram + gram.T))
        keep = w > 1e-12 * w.max()
        T = U[:, keep] / w[keep].sqrt()
        reduced = T.T @ (S.T @ HS) @ T
        _, V = torch.linalg.eigh(0.5 * (reduced + reduced.T))
        C = T @ V[:, :b]
        P, HP = S[:, b:] @ C[b:], HS[:, b:] @ C[b:]
        state = _State(op, H, diag, orthonormal(S @ C, psi0))
        steps += 1
        stalled = 0 if state.error < error / 2 else stalled + 1
        if state.error < error:
            best, error = state, state.error
    return ExcitedLevel(best.rho, error, tuple(best.theta.tolist()), op.count, steps, best.Y)
