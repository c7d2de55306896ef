"""The user-facing spectral gap: lambda_1 - lambda_0 of the Score Hamiltonian with an honest error.

:func:`spectral_gap` chooses a box holding all but ``mass_tol`` of p_t, discretises H_t on a
sequence of grids whose spacings shrink by about sqrt 2 (n + 1 = 2 round((n_0 + 1) 2^(k/2) / 2)
nodes per axis, :func:`_grids`; every other grid nested), solves each for its lowest
eigenvalues (from the previous grid's vectors, interpolated), and extrapolates the gaps
g(h) = g + c_1 h^p + c_2 h^{p+2} + O(h^{p+4}) (p the stencil's order; centred stencils give
even powers) by Richardson over the last two grids, r_n = h_{n-1} / h_n:

    R_n = g_n + (g_n - g_{n-1}) / (r_n^p - 1) = g + O(h_n^{p+2}).

Error of R_n: SAFETY |R_n - G_3|, G_3 the value of the three-term fit G + a h^p + b h^{p+2}
through the last three grids (exact under that model; for ratios r it is
|R_n - R_{n-1}| / (r^{p+2} - 1)), plus the solver errors carried through,
e_n (1 + 1/(r_n^p - 1)) + e_{n-1} / (r_n^p - 1). It is used only when the last three grids
are asymptotic: their differences g_{n-2} - g_{n-1} and g_{n-1} - g_n have one sign and the
observed order (:func:`_observed_order`) lies within 1 of p (THEORY section 6: a refinement
study can claim a tiny error until the grid resolves the barrier's flanks), or the differences
are within the solver's errors. With ratios sqrt 2 that window bounds |b h^2 / a| at the
coarsest of the three grids by 1.2 (0.39 below), tighter than ratios 2 did (1.9, 0.54);
SAFETY = 3 covers a next term of comparable size. Measured on 55 cases with independent
truths (``analysis/gap_bars.py``: 1D mixtures at t = 0 - 1 to rtol 1e-5 - 1e-9, two-mode
separations up to lambda_1 = 1e-12, the 2D four-mode mixture and a 2D Gaussian): every bar
covered the truth and was 1.8 to 7.3 times the true error, except a 2D Gaussian to 1e-9
(14.8 times a true error of 1e-11 relative, round-off's share). Ratios sqrt 2 need a grid
only sqrt 2 finer than the first three asymptotic ones where ratios 2 needed one twice as
fine: the four-mode mixture at t = 0.05 stops at 255^2 for rtol 1e-5 and 361^2 for 1e-7
(both 511^2 with ratios 2).
Grids count from ``MIN_POINTS_PER_WIDTH`` = 1.5 points per width of the sharpest mode (was
4): coarser ones that are not yet asymptotic fail the order test (the four-mode mixture's
grids up to 89^2: order 2.4), and Mueller-Brown's 127^2 grid (1.7 points by that measure,
taken where p > 1e-6 of its peak) is asymptotic already.

Model error (THEORY section 2; the gap of a learned score is the gap of the model's own
Score Hamiltonian, and the model is uncertain where the data are few). For a
:class:`~scorehamiltonian.score.ensemble.ScoreEnsemble` the gap is that of the members' mean
score, and its model error is the spread of the members' gaps, each by Rayleigh-Ritz in the
span of the finest grid's k lowest eigenvectors with the member's potential V(s_k) in place of
the mean's (one potential evaluation per member, no further eigen-solve). The span holds the
first-order change <psi_1, dV psi_1> - <psi_0, dV psi_0> and the mixing of the lowest states,
which dominates a double well's second order (its gap sqrt(Delta^2 + eps^2) is a 2x2 problem).
The members share the bias of their common data and training, which their spread cannot see
(Mueller-Brown at t = 0.05: three members read 0.0164 +- 0.0036 for the gap 0.0018; they are all
smooth across the empty saddle). Where the ensemble carries its training data (``data``), the
data's own gap anchors the model error: :func:`~.ritz.ritz_gap` in the Dirichlet form (no score
evaluated) on the data noised once to t (at most ``ANCHOR_ROWS`` rows; seed ``ANCHOR_SEED``), an estimate d of
the true gap within its error e = stderr + basis_error + fit_bias, so |value - gap| <=
|value - d| + e + stderr (two standard errors, as for the states' sample count), and the model
error is the larger of that and the spread. A single learned model cannot
know its error: it is NaN and the result is flagged; an analytic score has none. ``converged``
then means that the whole interval, numerical plus model, is within rtol, and ``flags`` says
which part is not.

Forms: "ground_state" (lambda_0 = 0 exactly, used when the score has an exact ``log_prob``,
and lambda_1 read from the Dirichlet form of its eigenvector deflated of the exact ground
state, with a Kato-Temple bound, :mod:`.excited`, so that gaps down to 1e-12 keep relative
accuracy) or "potential" (any score; gap = lambda_1 - lambda_0).

Boxes (``box=None``, :func:`~.grid.box_for_score`): exact mixtures from their components (:func:`~.grid.box_from_mixture`);
scores with an exact log-density from it (:func:`~.grid.box_from_density`, started from
samples when there are any, else from [-r, r]^d, r = 3 max(1, sigma_t)); learned scores
from Langevin chains on the model (:func:`~.grid.box_from_score`), started from samples
(``samples=``, or the score's own draws) when there are any; other scores from their
samples (:func:`~.grid.box_from_samples`), else Langevin chains. A grid whose eigen-solve fails (a singular
factorisation, a preconditioner that cannot be built) is retried with the Fourier
preconditioner and otherwise skipped, its reason kept in ``GapResult.notes`` and in the
warning or error of a result that did not converge.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from ..common.errors import ConvergenceError, InputShapeError, ResolutionError
from ..score.ensemble import ScoreEnsemble
from ..score.interface import DensityScore, Score, as_score
from ..score.potential import quantum_potential
from .eigensolvers import spectrum
from .excited import first_excited
from .grid import Grid, box_for_score, mixture_mass_outside
from .memory import available_memory, estimate_memory
from .operator import BoundaryMassWarning, ResolutionWarning, ScoreHamiltonian
from .ritz import RitzResult, ritz_gap
from .solution import ConvergenceWarning
from .transfer import interpolate_columns

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
MIN_POINTS_PER_WIDTH = 1.5
#: The factor on the asymptotic error estimate of the extrapolate (module docstring).
SAFETY = 3.0

#: The most rows of an ensemble's data that the data anchor of the model error reads (module docstring).
ANCHOR_ROWS = 1 << 16
#: The seed of the anchor's noise and Ritz basis: a constant unlikely to be the data's own (data drawn
#: with torch seed 0 and noised with seed 0 correlate the noise with the data: a gap 0.59 for 0.37).
ANCHOR_SEED = 0x9E3779B9

#: What a failed eigen-solve can raise: SuperLU's RuntimeError ("Factor is exactly singular"),
#: the multigrid's ValueError (a shift above a diagonal entry), LAPACK's errors.
_SOLVER_FAILURES = (RuntimeError, ValueError, ArithmeticError, np.linalg.LinAlgError)


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
    converged : total_error <= rtol |value| with an asymptotic refinement sequence.
    grid : the finest grid; box : (lo, hi); form, order : the discretisation used;
    observed_order : the order seen on the last three grids (None with fewer);
    boundary_mass : the mass of p_t on the finest grid's outermost nodes; mass_outside : an
    upper bound on the mass of p_t outside the box (exact mixtures only, else NaN);
    levels : every grid's :class:`GapLevel`; method : the eigen-solver; notes : what went
    wrong on grids that were skipped or retried (module docstring), in order.
    model_error : the model's share (module docstring): 0 for an analytic score, for an
    ensemble the larger of the members' first-order spread and the miss of the data's own gap,
    NaN for a single learned model; total_error : error + model_error. data_gap,
    data_gap_error : the data's gap by Rayleigh-Ritz and its error (e + stderr, module
    docstring; NaN without an ensemble's data or where too few rows fit a basis). converged : the whole interval, model included, within rtol |value|;
    flags : which part is not ("numerical: ...", "model: ...").
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
    notes: tuple[str, ...] = ()
    model_error: float = 0.0
    flags: tuple[str, ...] = ()
    data_gap: float = math.nan
    data_gap_error: float = math.nan

    @property
    def total_error(self) -> float:
        return self.error + self.model_error


def _level(H: ScoreHamiltonian, k: int, tol: float, method: str,
           preconditioner: str, v0: torch.Tensor | None = None) -> tuple[GapLevel, torch.Tensor | None]:
    """The grid's gap, and the vectors it came from: in the ground-state form the excited ones
    (for :func:`_polish`), in the potential form the k lowest (for :func:`_model_error`)."""
    generator = torch.Generator(device=H.device).manual_seed(0)
    if H.form != "ground_state":
        res = spectrum(H, k=k, tol=tol, method=method, generator=generator, preconditioner=preconditioner,
                       return_eigenvectors=True, v0=v0)
        error = res.gap_error if bool(res.converged[:2].all()) else math.inf
        level = GapLevel(max(H.grid.h), H.grid.n, res.gap, error, res.eigenvalues, res.n_matvec, res.wall_time)
        return level, res.eigenvectors.to(torch.float64).cpu()
    start = time.perf_counter()
    with warnings.catch_warnings():
        # The raw eigenvalues' round-off floor (eps ||H||) can exceed tol * lambda_1 for tiny
        # gaps; lambda_1 is read from the Dirichlet form below, with its own error bound.
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = spectrum(H, k=max(k, 3), tol=tol, method=method, return_eigenvectors=True, v0=v0,
                       maxiter=GROUND_STATE_MAXITER, generator=generator, preconditioner=preconditioner)
    theta0, err0 = float(res.eigenvalues[0]), float(res.eigenvalue_errors[0])
    if theta0 + err0 < -tol * float(res.eigenvalues[1] - res.eigenvalues[0]):
        raise ConvergenceError(f"the ground-state form has an eigenvalue {theta0:.3g} +- {err0:.1g} below 0 = lambda_0 "
                               "on this grid (log p falls too steeply between nodes for its stencil)")
    X = res.eigenvectors[:, 1:].to(torch.float64).cpu()
    # The solver's cluster bound on lambda_1 is a fallback where Kato-Temple has no
    # separation (lambda_1 ~ lambda_2, a symmetric target): rho - lambda_1 <= rho - theta_1 + err_1.
    rho, rho_error = (float(v) for v in H.dirichlet_form(X[:, 0].to(H.dtype), with_error=True))
    fallback = max(rho - float(res.eigenvalues[1]), 0.0) + float(res.eigenvalue_errors[1]) + rho_error
    if fallback <= tol * rho:  # the solver's own bound suffices: no refinement
        return GapLevel(max(H.grid.h), H.grid.n, rho, fallback, res.eigenvalues, res.n_matvec,
                        time.perf_counter() - start), X
    level = first_excited(H, X, tol, fallback=fallback)
    eigenvalues = torch.cat([res.eigenvalues[:1], torch.tensor(level.ritz_values, dtype=torch.float64)])
    return GapLevel(max(H.grid.h), H.grid.n, level.value, level.error, eigenvalues[: max(k, 3)],
                    res.n_matvec + level.n_matvec, time.perf_counter() - start), level.vectors


def _solve(H: ScoreHamiltonian, k: int, tol: float, method: str, notes: list[str],
           v0: torch.Tensor | None = None) -> tuple[GapLevel | None, torch.Tensor | None]:
    """The grid's level (and vectors, :func:`_level`); on a solver failure
    (``_SOLVER_FAILURES``) once more with the Fourier preconditioner (no factorisation, no
    coarse levels), then None; each failure noted."""
    tries = ["auto", "fourier"] if method in ("auto", "lobpcg") else ["auto"]
    for preconditioner in tries:
        try:
            return _level(H, k, tol, method, preconditioner, v0)
        except _SOLVER_FAILURES as err:
            notes.append(f"{'x'.join(map(str, H.grid.n))} grid, {method} solver with the {preconditioner} "
                         f"preconditioner failed: {type(err).__name__}: {err}")
    return None, None


def _polish(H: ScoreHamiltonian, X: torch.Tensor, level: GapLevel, target: float) -> GapLevel:
    """``level`` with its lambda_1 refined (:func:`~.excited.first_excited`) to an error bound
    of at most ``target`` where it can: used when the solver's bound, not the discretisation,
    sets the bar of a converged result (it is allowed rtol / 100, and the Kato-Temple bound
    ||r||^2 / delta over-states the error of a residual of high frequencies by up to
    lambda_max / lambda_2)."""
    start = time.perf_counter()
    refined = first_excited(H, X, target / level.gap)
    if refined.error >= level.solver_error:
        return level
    return replace(level, gap=refined.value, solver_error=refined.error, n_matvec=level.n_matvec + refined.n_matvec,
                   wall_time=level.wall_time + time.perf_counter() - start)


def _observed_order(h: list[float], d1: float, d2: float) -> float | None:
    """The order q at which g = G + a h^q fits three grids h_1 > h_2 > h_3 with differences
    d1 = g_1 - g_2, d2 = g_2 - g_3: the root of (h_1^q - h_2^q) / (h_2^q - h_3^q) = d1 / d2
    (increasing in q; log2(d1 / d2) for ratios 2), or None where there is none in (0, 64]."""
    if d1 * d2 <= 0:
        return None

    def mismatch(q: float) -> float:
        return math.log((h[0] ** q - h[1] ** q) / (h[1] ** q - h[2] ** q)) - math.log(d1 / d2)

    if mismatch(1e-3) > 0 or mismatch(64.0) < 0:
        return None
    return float(scipy.optimize.brentq(mismatch, 1e-3, 64.0, xtol=1e-6))


def _extrapolate(levels: list[GapLevel], order: int) -> tuple[float, float, float | None, float]:
    """(value, error, observed order, the solver's share of the error) from the levels so far
    (module docstring): R_n from the last two grids, its error SAFETY |R_n - G_3| (G_3 the fit of
    G + a h^p + b h^{p+2} through the last three) plus the solver's errors carried through."""
    h = [lv.h for lv in levels]
    g = [lv.gap for lv in levels]
    e = [lv.solver_error for lv in levels]
    if len(g) == 1:
        return g[0], math.inf, None, math.inf
    q = [(h[i - 1] / h[i]) ** order - 1.0 for i in range(1, len(g))]
    richardson = [g[i] + (g[i] - g[i - 1]) / q[i - 1] for i in range(1, len(g))]
    if len(g) == 2:
        return richardson[-1], math.inf, None, math.inf
    d1, d2 = g[-3] - g[-2], g[-2] - g[-1]
    noise = e[-1] + e[-2] + e[-3]
    observed = _observed_order(h[-3:], d1, d2)
    asymptotic = abs(d1) <= noise or (observed is not None and abs(observed - order) <= 1.0)
    x = [hh / h[-3] for hh in h[-3:]]
    fit = np.linalg.solve([[1.0, xx**order, xx ** (order + 2)] for xx in x], g[-3:])[0]
    solver = e[-1] * (1 + 1 / q[-1]) + e[-2] / q[-1]
    error = SAFETY * abs(richardson[-1] - fit) + solver
    return richardson[-1], error if asymptotic else math.inf, observed, solver


def _grids(lo: list[float], hi: list[float], first: int):
    """The refinement sequence on the box: n_k + 1 = 2 round((first + 1) 2^(k/2) / 2) nodes
    plus one per axis (odd n, spacing ratios about sqrt 2; every other grid nested)."""
    k = 0
    while True:
        yield Grid(lo, hi, 2 * round((first + 1) * 2 ** (k / 2) / 2) - 1)
        k += 1


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
    samples: torch.Tensor | None = None,
) -> GapResult:
    """lambda_1 - lambda_0 of the Score Hamiltonian of ``score`` at time t, to relative ``rtol``.

    Needs only a score and a time: the dimension (1-3) comes from the score's ``dim`` or from
    ``box`` = (lo, hi); the box is chosen to hold all but ``mass_tol`` of p_t (module
    docstring: exactly for an :class:`ExactScore`, from the log-density for any other
    :class:`DensityScore`, else from Langevin chains started from ``samples``, points (n, d)
    of p_t such as data noised to t, when given); the grids are refined
    from a coarse one until the extrapolated error (module docstring) is below rtol |value|
    or the grid would exceed ``max_unknowns`` or the memory free on the host
    (:func:`~.memory.estimate_memory`; then ``converged`` is False with a warning, or
    :class:`ConvergenceError` when ``raise_on_failure``). A ``box`` given for an exact
    mixture that leaves more than ``mass_tol`` of p_t outside gets a
    :class:`BoundaryMassWarning` with the figure (the operator warns about the mass on the
    box's outermost nodes for any score). ``form="auto"`` takes the
    ground-state form for scores with an exact log-density and the potential form otherwise.
    A grid whose eigen-solve fails is retried and otherwise skipped (``notes``).
    """
    score = as_score(score)
    if score.dim is not None and score.dim > 3:
        raise InputShapeError(
            f"spectral_gap discretises H on grids in d <= 3; this score has d = {score.dim}: "
            "use ritz_gap (sample-based Rayleigh-Ritz) in high dimension"
        )
    chosen = box is None
    if chosen:
        box = box_for_score(score, t, mass_tol, samples=samples)
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
    levels: list[GapLevel] = []
    notes: list[str] = []
    value, error, observed, H, vectors = math.nan, math.inf, None, None, None
    stop = f"within {limit} unknowns"
    for grid in _grids(lo, hi, FIRST_NODES.get(dim, 15)):
        if grid.size > limit:
            break
        need, free = estimate_memory(grid.n, max(k, 3)), available_memory()
        if need.total > free:
            stop = f"before the {grid.n} grid ({need} > {free / 2**30:.3g} GiB free)"
            break
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BoundaryMassWarning)
            warnings.simplefilter("ignore", ResolutionWarning)
            try:
                H = ScoreHamiltonian(score, t, grid, order=order, form=form, mass_tol=mass_tol * 1e3)
            except ResolutionError:
                H = None
        boundary = [w for w in caught if issubclass(w.category, BoundaryMassWarning)]
        for w in caught:
            if w not in boundary:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if H is not None and H.points_per_width >= MIN_POINTS_PER_WIDTH:
            v0 = interpolate_columns(vectors, levels[-1].n, H.grid.n).to(H.dtype) if levels and vectors is not None else None
            level, vectors = _solve(H, k, max(rtol * 1e-2, SOLVER_TOL_FLOOR), method, notes, v0)
            if level is None:  # the extrapolation needs consecutive grids: start again from the next
                levels.clear()
                value, error, observed = math.nan, math.inf, None
            else:
                levels.append(level)
                value, error, observed, solver = _extrapolate(levels, order)
                if error <= rtol * abs(value):
                    if H.form == "ground_state" and solver > error - solver:
                        levels[-1] = _polish(H, vectors, level, (error - solver) / 4)
                        value, error, observed, solver = _extrapolate(levels, order)
                    break
    for w in boundary:  # the finest grid's: a coarse grid's outermost nodes sit deeper in a steep tail
        warnings.warn(w.message, w.category, stacklevel=2)
    flags = []
    if not (bool(levels) and error <= rtol * abs(value)):
        flags.append(f"numerical: did not reach rtol = {rtol:g} {stop}: estimate {value:.6g} +- {error:.3g} after "
                     f"{len(levels)} usable grids" + "".join(f"; {note}" for note in notes))
    model_error = _model_error(score, t, H, vectors, flags) if levels and H is not None else math.nan
    source = "the ensemble's spread gives"
    anchor = _data_gap(score, t, notes) if levels and math.isfinite(model_error) and score.learned else None
    data_gap = data_gap_error = math.nan
    if anchor is not None:
        data_gap, data_gap_error = anchor.value, anchor.error + anchor.stderr
        miss = abs(value - data_gap) + data_gap_error
        if miss > model_error:
            model_error = miss
            source = (f"the data's own gap (Rayleigh-Ritz on the training data noised to t) is {data_gap:.3g} +- "
                      f"{data_gap_error:.2g} against the model's {value:.3g}: it gives")
    if levels and not model_error <= rtol * abs(value) and score.learned and math.isfinite(model_error):
        flags.append(f"model: {source} a model error of {model_error:.3g}, above rtol |gap| = {rtol * abs(value):.3g}")
    converged = not flags
    if not converged:
        message = "spectral_gap is not converged: " + "; ".join(flags)
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
        levels=tuple(levels), method=method, mass_outside=outside, notes=tuple(notes),
        model_error=model_error, flags=tuple(flags), data_gap=data_gap, data_gap_error=data_gap_error,
    )


def _data_gap(score: Score, t: float, notes: list[str]) -> RitzResult | None:
    """The data's own gap at t (module docstring): ``ritz_gap`` in the Dirichlet form on an
    ensemble's training data (a seeded subset of ``ANCHOR_ROWS`` rows beyond) noised once to t;
    None for a score without data, or with too few rows for a basis (noted)."""
    if not isinstance(score, ScoreEnsemble) or score.data is None:
        return None
    data = score.data
    generator = torch.Generator().manual_seed(ANCHOR_SEED)
    data = data.to(dtype=torch.float64, device="cpu")  # the data form evaluates no score: CPU
    if data.shape[0] > ANCHOR_ROWS:
        data = data[torch.randperm(data.shape[0], generator=generator)[:ANCHOR_ROWS]]
    noised = score.process.perturb(data, t, torch.randn(data.shape, dtype=data.dtype, generator=generator))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return ritz_gap(score, t, samples=noised, form="data", generator=generator)
    except InputShapeError as err:
        notes.append(f"no data anchor for the model error: {err}")
        return None


def _model_error(score: Score, t: float, H: ScoreHamiltonian, vectors: torch.Tensor | None,
                 flags: list[str]) -> float:
    """The model error of the gap (module docstring): 0 for an analytic score; for a
    :class:`~scorehamiltonian.score.ensemble.ScoreEnsemble` the standard deviation over its
    members of their gaps in the span of the finest grid's k lowest vectors V (Rayleigh-Ritz:
    V^T (H + dV_k) V against V^T V, dV_k the member's quantum potential minus the ensemble's);
    NaN, with a flag, for a single learned model (it cannot know)."""
    if not score.learned:
        return 0.0
    if not isinstance(score, ScoreEnsemble) or vectors is None:
        flags.append("model: a single learned model cannot know its own error; train an ensemble "
                     "(train_ensemble, or scorehamiltonian train --ensemble K) for a model error")
        return math.nan
    points = H.grid.points(dtype=torch.float64)
    V = vectors.to(torch.float64)
    gram = (V.T @ V).numpy()
    projected = V.T @ H.matvec(V).to(torch.float64).cpu()
    base = H.potential.to(torch.float64).cpu()
    gaps = []
    for member in score.members:
        potential = torch.cat([quantum_potential(member, chunk, t).value for chunk in points.split(1 << 16)])
        shift = potential.to(torch.float64).cpu() - base
        ritz = scipy.linalg.eigh((projected + V.T @ (shift[:, None] * V)).numpy(), gram, eigvals_only=True)
        gaps.append(ritz[1] - ritz[0])
    return float(np.std(gaps, ddof=1))
