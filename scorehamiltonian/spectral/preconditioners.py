"""Preconditioners for the eigensolvers: approximations of (H - shift)^{-1}, shift below the spectrum.

Fourier ((-Laplacian_h + c)^{-1} by DST-I on every axis, any device), AMG (one pyamg
smoothed-aggregation V-cycle on the CPU), Jacobi, and the geometric multigrid of
:mod:`.multigrid` for operators that coarsen themselves; :func:`choose_preconditioner`
picks one for :func:`~.eigensolvers.spectrum` (THEORY section 2: the operator's
discretisation; section 6: why the shift must stay below lambda_0).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import numpy as np
import scipy.fft
import scipy.sparse as sp
import torch

from .blocks import WORK_DTYPE
from .multigrid import Multigrid
from .solution import SymmetricOperator

#: pyamg is imported by :func:`amg_preconditioner` on first use (it is slow to import).
_HAVE_PYAMG = importlib.util.find_spec("pyamg") is not None

__all__ = [
    "Preconditioner",
    "amg_preconditioner",
    "choose_preconditioner",
    "dst1",
    "fourier_preconditioner",
    "fourier_shift",
    "has_levels",
    "laplacian_eigenvalues",
    "matching_grid",
]

Preconditioner = Callable[[torch.Tensor], torch.Tensor]


def dst1(x: torch.Tensor, axis: int) -> torch.Tensor:
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
    eig = torch.zeros(dims, dtype=WORK_DTYPE, device=device)
    for a, (n, h) in enumerate(zip(dims, grid.h)):
        j = torch.arange(1, n + 1, dtype=WORK_DTYPE, device=device)
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
            u = dst1(u, a)
        u = u * inv
        for a in range(1, len(dims) + 1):
            u = dst1(u, a)
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
    import pyamg

    A = (H.to_scipy() - shift * sp.identity(H.shape[0], format="csr")).tocsr()
    smoother = ("jacobi", {"omega": 4.0 / 3.0, "weighting": "local"})
    cycle = pyamg.smoothed_aggregation_solver(A, smooth=smoother).aspreconditioner()

    def apply(R: torch.Tensor) -> torch.Tensor:
        cols = R.cpu().numpy()
        out = np.column_stack([cycle @ cols[:, j] for j in range(cols.shape[1])])
        return torch.from_numpy(out).to(R.device)

    return apply


def has_levels(H: SymmetricOperator) -> bool:
    return all(hasattr(H, name) for name in ("coarsen", "residual", "smooth", "grid", "coef"))


def matching_grid(H: SymmetricOperator) -> object | None:
    """``H.grid`` when H has one whose node count is H's size, else None."""
    grid = getattr(H, "grid", None)
    return grid if grid is not None and math.prod(grid.n) == H.shape[0] else None


def choose_preconditioner(H: SymmetricOperator, diag: torch.Tensor, shift: float, choice: str) -> tuple[Preconditioner, str]:
    """The LOBPCG preconditioner for ``choice`` and its name. "auto": multigrid when H can
    coarsen itself (a :class:`ScoreHamiltonian`; one of at most ``multigrid.COARSEST_SIZE``
    unknowns is its own coarsest level, so the "cycle" is the sparse LU of H - shift, an
    exact inverse), else AMG on the CPU when pyamg is installed, else Fourier when H has a
    grid whose size matches, else Jacobi. The sparse LU replaced AMG there: on the four-mode
    benchmark at t = 0.05 the 45^2 and 63^2 grids of ``spectral_gap`` took 0.042 and 0.050 s
    against 0.165 and 0.114 s (31 and 21 matvecs against 43 and 43), and a fresh process no
    longer imports pyamg (0.08 s)."""
    grid = matching_grid(H)
    if choice == "auto":
        if has_levels(H):
            choice = "multigrid"
        else:
            choice = "amg" if _HAVE_PYAMG and torch.device(H.device).type == "cpu" else ("fourier" if grid is not None else "jacobi")
    if choice == "multigrid":
        if not has_levels(H):
            raise ValueError("the multigrid preconditioner needs an operator that coarsens itself (ScoreHamiltonian)")
        mg = Multigrid(H, shift)
        return mg, f"multigrid, {len(mg.levels)} levels" if len(mg.levels) > 1 else "sparse LU"
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
