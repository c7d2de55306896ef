"""The lowest eigenvalues of a real symmetric operator, with error bounds (THEORY sections 2, 6).

``spectrum(H, k)`` returns the k lowest eigenvalues of H (the Score Hamiltonian on a grid, or
any operator with the :class:`SymmetricOperator` interface), ascending, each with a residual
norm ||H v - lambda v|| and an error bound, and flags any that did not reach ``tol``.

Conventions
-----------
- Every method ends with the same honest check: the vectors it found are orthonormalised,
  H is applied to them once more (explicit matvecs, no recurrence), and the Rayleigh-Ritz
  values theta_i and residuals r_i = H v_i - theta_i v_i of that basis are what is reported.
  The solvers compute ``k + guard`` pairs (``GUARD`` more than asked for), so that the
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

import math
import time
from typing import Literal

import torch

from ..common.errors import InputDtypeError
from .blocks import DROP, WORK_DTYPE, Counted, beside, inner, orthonormal, random_columns
from .lanczos import arpack, lanczos
from .lobpcg import lobpcg
from .memory import check_memory, estimate_memory
from .multigrid import Multigrid
from .preconditioners import choose_preconditioner, matching_grid
from .solution import GUARD, SpectrumResult, SymmetricOperator, final_check, spectrum_result
from .transfer import interpolate_columns

__all__ = [
    "DEFAULT_MAXITER",
    "NESTED_MAXITER",
    "NESTED_POINTS_PER_WIDTH",
    "NESTED_TOL",
    "Method",
    "check_arguments",
    "shift_below",
    "spectrum",
    "start_block",
]

Method = Literal["auto", "lobpcg", "lanczos", "eigsh", "eigsh-sa"]
#: Nested iteration solves the multigrid levels that resolve p_t this well (points per
#: width of its sharpest mode), each to relative accuracy NESTED_TOL (or the asked tol if
#: looser) within NESTED_MAXITER LOBPCG iterations.
NESTED_POINTS_PER_WIDTH = 2.0
NESTED_TOL = 1e-3
NESTED_MAXITER = 50


def start_block(op: Counted, m: int, v0: torch.Tensor | None, ground_state: torch.Tensor | None,
                 grid: object | None, generator: torch.Generator | None) -> torch.Tensor:
    """m independent starting columns (column-major where assembled here): [v0, ground_state,
    fill]. The ground state g is left out when v0 already holds it (less than half of its
    norm outside span(v0)). Without a ground state the fill is random; with one, it is
    (x_a - <x_a>) g for each grid axis a (the first excited states of the harmonic
    approximation around each mode) and then random columns weighted by |g| + 1% of its
    maximum (localised where p lives, yet nonzero everywhere, so no eigenvector is excluded
    from the start)."""
    X = random_columns(op, 0, generator) if v0 is None else v0.reshape(op.n, -1).to(WORK_DTYPE).to(op.device)
    g = None
    if ground_state is not None:
        g = ground_state.reshape(op.n, 1).to(WORK_DTYPE).to(op.device)
        g = g / g.norm()
        if _outside_span(g, X) > 0.5:
            X = beside(X, g)
    X = X[:, :m]
    if X.shape[1] == m and _independent(X):
        return X
    X = orthonormal(X) if X.shape[1] else X
    if g is not None and X.shape[1] < m:
        X = beside(X, orthonormal(_coordinate_modes(g, grid), X))[:, :m]
    weight = 1.0 if g is None else g.abs() + 0.01 * g.abs().max()
    while X.shape[1] < m:
        X = beside(X, orthonormal(random_columns(op, m - X.shape[1], generator) * weight, X))
    return X


def _outside_span(g: torch.Tensor, X: torch.Tensor) -> float:
    """||g - P g|| for a unit column g, P the orthogonal projector onto span(X) (from the
    Gram matrix of X, its tiny directions dropped)."""
    if X.shape[1] == 0:
        return 1.0
    w, U = torch.linalg.eigh(inner(X.T, X.T))
    keep = w > DROP**2 * w.max()
    coefficients = (U[:, keep].T @ inner(X.T, g.T)) / w[keep, None].sqrt()
    return math.sqrt(max(0.0, 1.0 - float((coefficients**2).sum())))


def _independent(X: torch.Tensor) -> bool:
    """Whether the columns of X are clearly independent (condition number of their Gram
    matrix below 1 / ``DROP``): LOBPCG orthonormalises such a block in coefficient space."""
    w = torch.linalg.eigvalsh(inner(X.T, X.T))
    return bool(w[0] > DROP * w[-1])


def _coordinate_modes(g: torch.Tensor, grid: object | None) -> torch.Tensor:
    """(x_a - <x_a>_g) g for each axis a of ``grid`` (C order), or no column without one."""
    if grid is None or math.prod(grid.n) != g.shape[0]:
        return g[:, :0]
    dims = tuple(int(n) for n in grid.n)
    columns = []
    for a, (n, h) in enumerate(zip(dims, grid.h)):
        shape = [1] * len(dims)
        shape[a] = n
        x = (h * torch.arange(n, dtype=WORK_DTYPE, device=g.device)).reshape(shape).expand(dims).reshape(-1, 1)
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


def shift_below(op: Counted, H: SymmetricOperator, ground_state: torch.Tensor | None) -> float:
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
    g = ground_state.reshape(op.n, 1).to(WORK_DTYPE).to(op.device)
    g = g / g.norm()
    Hg = op(g)
    rho = float(g.T @ Hg)
    residual = float((Hg - rho * g).norm())
    return max(lo - margin, rho - max(residual, 0.01 * _energy_scale(H, rho, lo), margin))


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
        op = Counted(H)
        if X is not None:
            X = interpolate_columns(X[:, 1:] if deflate else X, operators[i + 1].grid.n, H.grid.n)
        g = H.ground_state if deflate else None
        X0 = start_block(op, m, X, g, H.grid, generator)
        diag = H.diagonal().to(WORK_DTYPE).to(op.device)
        X = lobpcg(op, X0, level_mg, k, max(tol, NESTED_TOL), NESTED_MAXITER, diag, descent_first=True).X
        work += (op.count + level_mg.work) * mg.levels[i].weight
    start = interpolate_columns(X[:, 1:] if deflate else X, operators[1].grid.n, operators[0].grid.n)
    return start, work, usable[-1]


DEFAULT_MAXITER = {"lobpcg": 500, "lanczos": 20000}


def check_arguments(H: SymmetricOperator, k: int, tol: float, method: str) -> None:
    n = int(H.shape[0])
    if method not in ("auto", "lobpcg", "lanczos", "eigsh", "eigsh-sa"):
        raise ValueError(f"method must be 'auto', 'lobpcg', 'lanczos', 'eigsh' or 'eigsh-sa'; got {method!r}")
    if not 1 <= k <= n - GUARD - 1:
        raise ValueError(f"k must lie in [1, N - {GUARD + 1}] = [1, {n - GUARD - 1}]; got {k}")
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
      bound; see ``shift_below``). ``preconditioner``: "multigrid" (a geometric V-cycle on
      the operator re-discretised on coarser grids, :class:`~.multigrid.Multigrid`: for
      operators that coarsen themselves, :class:`ScoreHamiltonian`), "amg" (a pyamg
      smoothed-aggregation V-cycle on ``H.to_scipy()``), "fourier" ((-Laplacian_h + c)^{-1}
      by DST on ``H.grid``, c a quarter of the median of V - sigma: O(N log N), any device,
      iteration counts independent of h but growing with the range of V), "jacobi", or
      "auto" (multigrid for an operator that coarsens itself, which for at most
      ``COARSEST_SIZE`` unknowns is the sparse LU of H - sigma I; else AMG on the CPU,
      Fourier on other devices when H has a grid). With the multigrid preconditioner and no
      ``v0``, ``nested`` iteration first solves the coarser levels that resolve p_t (coarse
      to fine, each level's Ritz vectors interpolated as the next one's start), so the fine
      level starts close to converged.
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
    check_arguments(H, k, tol, method)
    if method in ("auto", "lobpcg"):
        grid = matching_grid(H)
        nodes = tuple(grid.n) if grid is not None else (int(H.shape[0]),)
        backend = "numba" if getattr(H, "backend", "torch") == "numba" else "torch"
        check_memory(estimate_memory(nodes, k, dtype=H.dtype, backend=backend).solver, f"spectrum(k={k}) on {H.shape[0]} unknowns",
                     H.device)
    op = Counted(H)
    m = k + GUARD
    diag = H.diagonal().to(WORK_DTYPE).to(op.device)
    blocks = None
    if method in ("eigsh", "eigsh-sa"):
        X, name = arpack(op, H, m, tol, maxiter, v0, shift_invert=method == "eigsh", generator=generator)
        X = beside(X, orthonormal(random_columns(op, m - X.shape[1], generator), X)) if X.shape[1] < m else X
    else:
        ground_state = getattr(H, "ground_state", None) if deflate else None
        budget = maxiter if maxiter is not None else DEFAULT_MAXITER["lanczos" if method == "lanczos" else "lobpcg"]
        start_note = ", ground-state start" if ground_state is not None else ""
        if method == "lanczos":
            X0 = start_block(op, m, v0, ground_state, getattr(H, "grid", None), generator)
            X, name = lanczos(op, X0, k, tol, budget, generator), f"lanczos (block {m}{start_note})"
        else:
            shift = shift_below(op, H, ground_state)
            precond, pname = choose_preconditioner(H, diag, shift, preconditioner)
            coarse_start, levels = None, 0
            if nested and isinstance(precond, Multigrid) and v0 is None:
                coarse_start, op.extra, levels = _nested_start(precond, m, k, tol, deflate, generator)
            X0 = start_block(op, m, v0 if coarse_start is None else coarse_start, ground_state,
                              getattr(H, "grid", None), generator)
            blocks = lobpcg(op, X0, precond, k, tol, budget, diag, descent_first=isinstance(precond, Multigrid))
            X = blocks.X
            op.extra += getattr(precond, "work", 0.0)
            nested_note = f", nested iteration from {levels} coarser grids" if levels else ""
            name = f"lobpcg ({pname}{start_note}{nested_note})"
    check = final_check(op, X, diag, blocks)
    return spectrum_result(check, k, op, start, name, tol, return_eigenvectors, raise_on_failure)
