"""The user-facing spectral gap: lambda_1 - lambda_0 of the Score Hamiltonian with an honest error.

:func:`spectral_gap` chooses a box holding all but ``mass_tol`` of p_t, discretises H_t on a
sequence of grids with spacings h, h/2, h/4, ..., solves each for its lowest eigenvalues and
extrapolates the gaps g(h) = g + C h^p + O(h^{p+2}) (p the stencil's order) by Richardson:

    R(h/2) = g(h/2) + (g(h/2) - g(h)) / (2^p - 1).

The error of the latest extrapolate R_n is estimated by |R_n - R_{n-1}|, an over-estimate by
about 2^p once the sequence is asymptotic, plus the eigen-solver's error bounds carried
through the extrapolation. The sequence counts as asymptotic only when the observed order
log2(|g_{n-2} - g_{n-1}| / |g_{n-1} - g_n|) lies within 1 of p (THEORY section 6: a refinement
study can claim a tiny error until the grid resolves the barrier's flanks), so at least three
grids that resolve the modes (4 or more points per width) are always used.

Forms: "ground_state" (lambda_0 = 0 exactly, used when the score has an exact ``log_prob``,
and lambda_1 read from the Dirichlet form of its eigenvector so that tiny gaps keep relative
accuracy) or "potential" (any score; gap = lambda_1 - lambda_0).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..common.errors import ConvergenceError, InputShapeError, ResolutionError
from ..score.interface import DensityScore, as_score
from .eigensolvers import spectrum
from .grid import Grid, box_from_mixture, box_from_score, mixture_mass_outside
from .memory import available_memory, estimate_memory
from .operator import BoundaryMassWarning, ResolutionWarning, ScoreHamiltonian
from .solution import ConvergenceWarning

__all__ = ["GapLevel", "GapResult", "spectral_gap"]

#: Default largest grid per dimension (unknowns).
MAX_UNKNOWNS = {1: 1 << 18, 2: 1 << 21, 3: 1 << 22}
#: Interior nodes per axis of the first grid.
FIRST_NODES = {1: 63, 2: 31, 3: 15}
#: The eigen-solver's tolerance is rtol / 100, but not below this (round-off).
SOLVER_TOL_FLOOR = 1e-12
#: LOBPCG iterations per grid in the ground-state form (its error bound is Kato-Temple's).
GROUND_STATE_MAXITER = 150
#: Grids whose sharpest mode spans fewer spacings than this are refined before use.
MIN_POINTS_PER_WIDTH = 4.0


@dataclass(frozen=True)
class GapLevel:
    """One grid of the refinement: spacing h (max over axes), nodes per axis, the gap on
    that grid with its solver error bound, the eigenvalues, matvecs and wall time."""

    h: float
    n: tuple[int, ...]
    gap: float
    solver_error: float
    eigenvalues: torch.Tensor
    n_matvec: int
    wall_time: float


@dataclass(frozen=True)
class GapResult:
    """The spectral gap lambda_1 - lambda_0 of H_t (units 1/x^2) with its estimated error.

    value, error : the Richardson-extrapolated gap and its estimated absolute error.
    eigenvalues : the k lowest eigenvalues on the finest grid (ascending, unextrapolated).
    converged : error <= rtol |value| with an asymptotic refinement sequence.
    grid : the finest grid; box : (lo, hi); form, order : the discretisation used;
    observed_order : the order seen on the last three grids (None with fewer);
    boundary_mass : the mass of p_t on the finest grid's outermost nodes; mass_outside : an
    upper bound on the mass of p_t outside the box (exact mixtures only, else NaN);
    levels : every grid's :class:`GapLevel`; method : the eigen-solver.
    """

    value: float
    error: float
    eigenvalues: torch.Tensor
    converged: bool
    grid: Grid
    box: tuple[list[float], list[float]]
    form: str
    order: int
    observed_order: float | None
    boundary_mass: float
    levels: tuple[GapLevel, ...]
    method: str
    mass_outside: float = math.nan


def _level(H: ScoreHamiltonian, k: int, tol: float, method: str) -> GapLevel:
    generator = torch.Generator(device=H.device).manual_seed(0)
    if H.form != "ground_state":
        res = spectrum(H, k=k, tol=tol, method=method, generator=generator)
        error = res.gap_error if bool(res.converged[:2].all()) else math.inf
        return GapLevel(max(H.grid.h), H.grid.n, res.gap, error, res.eigenvalues, res.n_matvec, res.wall_time)
    with warnings.catch_warnings():
        # The raw eigenvalues' round-off floor (eps ||H||) can exceed tol * lambda_1 for tiny
        # gaps; the gap is read from the Dirichlet form below, with its own error bound.
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = spectrum(H, k=max(k, 3), tol=tol, method=method, return_eigenvectors=True,
                       maxiter=GROUND_STATE_MAXITER, generator=generator)
    psi0 = H.ground_state.to(torch.float64).cpu()
    v1 = res.eigenvectors[:, 1].to(torch.float64).cpu()
    v1 = v1 - psi0 * (psi0 @ v1)
    v1 = v1 / v1.norm()
    rho = float(H.dirichlet_form(v1))
    residual = float((H.matvec(v1.to(H.dtype).to(H.device)).to(torch.float64).cpu() - rho * v1).norm())
    lower_next = float(res.eigenvalues[2] - res.residual_norms[2])
    # For v1 orthogonal to the exact ground state psi0, lambda_1 <= rho. Kato-Temple:
    # rho - lambda_1 <= ||H v1 - rho v1||^2 / (lambda_2 - rho) when lambda_2 lies above rho;
    # else (lambda_1 ~ lambda_2, a symmetric target) the solver's cluster bound on lambda_1:
    # rho - lambda_1 <= rho - theta_1 + err_1. Plus the Dirichlet sum's round-off.
    kato_temple = residual**2 / (lower_next - rho) if lower_next > rho else math.inf
    cluster = rho - float(res.eigenvalues[1]) + float(res.eigenvalue_errors[1])
    error = min(kato_temple, max(cluster, 0.0)) + 64 * torch.finfo(torch.float64).eps * rho
    return GapLevel(max(H.grid.h), H.grid.n, rho, error, res.eigenvalues, res.n_matvec + 1, res.wall_time)


def _extrapolate(levels: list[GapLevel], order: int) -> tuple[float, float, float | None]:
    """(value, error, observed order) from the levels so far (module docstring)."""
    q = 2.0**order - 1.0
    g = [lv.gap for lv in levels]
    e = [lv.solver_error for lv in levels]
    if len(g) == 1:
        return g[0], math.inf, None
    richardson = [g[i] + (g[i] - g[i - 1]) / q for i in range(1, len(g))]
    solver = e[-1] * (1 + 1 / q) + e[-2] / q
    if len(g) == 2:
        return richardson[-1], math.inf, None
    d1, d2 = abs(g[-3] - g[-2]), abs(g[-2] - g[-1])
    noise = e[-1] + e[-2] + e[-3]
    observed = math.log2(d1 / d2) if d1 > 0 and d2 > 0 else None
    asymptotic = d1 <= noise or (observed is not None and abs(observed - order) <= 1.0)
    error = abs(richardson[-1] - richardson[-2]) + solver
    return richardson[-1], error if asymptotic else math.inf, observed


def spectral_gap(
    score: Any,
    t: float,
    rtol: float = 1e-6,
    box: tuple[Any, Any] | None = None,
    order: int = 4,
    form: Literal["auto", "ground_state", "potential"] = "auto",
    k: int = 3,
    method: str = "auto",
    mass_tol: float = 1e-12,
    max_unknowns: int | None = None,
    raise_on_failure: bool = False,
) -> GapResult:
    """lambda_1 - lambda_0 of the Score Hamiltonian of ``score`` at time t, to relative ``rtol``.

    Needs only a score and a time: the dimension (1-3) comes from the score's ``dim`` or from
    ``box`` = (lo, hi); the box is chosen to hold all but ``mass_tol`` of p_t (exactly for an
    :class:`ExactScore`, else from Langevin samples); the grids are refined from a coarse
    one until the extrapolated error (module docstring) is below rtol |value| or the grid
    would exceed ``max_unknowns`` or the memory free on the host
    (:func:`~.memory.estimate_memory`; then ``converged`` is False with a warning, or
    :class:`ConvergenceError` when ``raise_on_failure``). A ``box`` given for an exact
    mixture that leaves more than ``mass_tol`` of p_t outside gets a
    :class:`BoundaryMassWarning` with the figure (the operator warns about the mass on the
    box's outermost nodes for any score). ``form="auto"`` takes the
    ground-state form for scores with an exact log-density and the potential form otherwise.
    """
    score = as_score(score)
    if score.dim is not None and score.dim > 3:
        raise InputShapeError(
            f"spectral_gap discretises H on grids in d <= 3; this score has d = {score.dim}: "
            "use ritz_gap (sample-based Rayleigh-Ritz) in high dimension"
        )
    chosen = box is None
    if chosen:
        if hasattr(score, "marginal"):
            box = box_from_mixture(score.marginal(t), mass_tol)
        else:
            box = box_from_score(score, t, mass_tol, generator=torch.Generator().manual_seed(0))
    lo, hi = (list(b) if hasattr(b, "__len__") else [float(b)] for b in box)
    dim = len(lo)
    outside = mixture_mass_outside(score.marginal(t), lo, hi) if hasattr(score, "marginal") else math.nan
    if not chosen and outside > mass_tol:
        warnings.warn(
            f"the box [{lo}, {hi}] leaves up to {outside:.3g} of p_t outside (mass_tol = {mass_tol:g}): "
            "the gap computed is that of p_t cut to the box, which can differ from the true gap by more "
            "than the error reported; widen the box or pass box=None", BoundaryMassWarning, stacklevel=2)
    if form == "auto":
        form = "ground_state" if isinstance(score, DensityScore) else "potential"
    limit = max_unknowns or MAX_UNKNOWNS.get(dim, 0)
    grid = Grid(lo, hi, FIRST_NODES.get(dim, 15))
    levels: list[GapLevel] = []
    value, error, observed, H = math.nan, math.inf, None, None
    stop = f"within {limit} unknowns"
    while grid.size <= limit:
        need, free = estimate_memory(grid.n, max(k, 3)), available_memory()
        if need.total > free:
            stop = f"before the {grid.n} grid ({need} > {free / 2**30:.3g} GiB free)"
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResolutionWarning)
            try:
                H = ScoreHamiltonian(score, t, grid, order=order, form=form, mass_tol=mass_tol * 1e3)
            except ResolutionError:
                H = None
        if H is not None and H.points_per_width >= MIN_POINTS_PER_WIDTH:
            levels.append(_level(H, k, max(rtol * 1e-2, SOLVER_TOL_FLOOR), method))
            value, error, observed = _extrapolate(levels, order)
            if error <= rtol * abs(value):
                break
        grid = grid.refine()
    converged = bool(levels) and error <= rtol * abs(value)
    if not converged:
        message = (f"spectral_gap did not reach rtol = {rtol:g} {stop}: estimate "
                   f"{value:.6g} +- {error:.3g} after {len(levels)} usable grids")
        if raise_on_failure:
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    last = levels[-1] if levels else None
    return GapResult(
        value=value, error=error,
        eigenvalues=last.eigenvalues if last else torch.empty(0),
        converged=converged, grid=H.grid if H is not None else grid, box=(lo, hi), form=form,
        order=order, observed_order=observed,
        boundary_mass=H.boundary_mass if H is not None else math.nan,
        levels=tuple(levels), method=method, mass_outside=outside,
    )
