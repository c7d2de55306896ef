"""Error bounds for sampling schedules and for score errors, on the grid (THEORY section 4).

Both bounds are statements about the SqRA grid dynamics of
:mod:`scorehamiltonian.sampling.propagation` (P_t the grid masses of p_t, psi_t = sqrt(P_t),
H_t = -D^{1/2} Q_t D^{-1/2} with eigenvalues 0 = lambda_0 < lambda_1 <= ...), so the exactly
propagated error on the same grid is what they must never fall below.

Tracking bound (annealed Langevin)
    In the frame phi = q / psi_t the error eps = phi - psi_t is orthogonal to psi_t and
    ||eps||^2 = chi^2(q || P_t). Langevin time u at level t maps eps to e^{-u H_t} eps. Moving
    from level t' to the next level t with Langevin time (levels with zero time leave q
    unchanged and are skipped), q = psi' (psi' + eps') gives the error before relaxation
    q / psi - psi = j + D eps', with the jump j = P' / psi - psi (||j||^2 = chi^2(P' || P),
    about (2 int A dt)^2 for close levels) and D = diag(psi' / psi).
    At each level the lowest m eigenvectors v_1..v_m of H_t (eigenvalues lambda_1..lambda_m)
    are resolved and F is the rest of psi^perp (spectrum >= lambda_rest). Bounds |<v_i, eps>| <=
    gamma_i and ||P_F eps|| <= f are carried from level to level by the triangle inequality,
    with D's couplings computed exactly on the resolved modes:

        gamma_j <= e^{-u lambda_j} ( |<v_j, j>| + sum_i |<v_j, D v'_i>| gamma'_i + ||P_F' D v_j|| f' )
        f       <= e^{-u lambda_rest} ( ||P_F j|| + sum_i ||P_F D v'_i|| gamma'_i + max(D) f' ),

    (the middle sum also bounded by ||(||P_F D v'_i||)_i|| ||gamma'||, whichever is smaller).
    max(D) = max_i psi'_i / psi_i is the only crude factor; it multiplies the unresolved part,
    so m is the fewest modes (at least the basins, at most 64 in 1D, 24 in 2D) for which
    u lambda_rest exceeds log max(D of the next jump) + 3. The first level's error q_0 / psi - psi is projected
    exactly. Finally chi^2 <= |gamma|^2 + f^2 and TV <= sqrt(chi^2) / 2 (Cauchy-Schwarz:
    sum |q - P| = sum (|q - P| / sqrt P) sqrt P <= sqrt(chi^2)). Eigenvalues enter lowered by
    their residual norms (Weyl), so the bound holds for the computed spectra. With m = 1 this
    is the Gronwall argument of THEORY section 4: the orthogonal part decays at rate >= lambda_1
    per unit Langevin time and is fed by the jumps between levels.

Score-error bound (stationary law of Langevin with drift s + e)
    The perturbed SqRA generator has rates Q^e_ij = Q_ij e^{a_ij}, a_ij = (e_i + e_j) .
    (x_j - x_i) / 4 (half the trapezoid line integral of e along the edge: for e = 0 the
    exact SqRA). Its stationary law pi = P h satisfies, for every f,
    sum_edges c (f_j - f_i) [(h_i - h_j) cosh a + (h_i + h_j) sinh a] = 0, c = sqrt(P_i P_j) / h^2.
    With f = h, h = 1 + g, Cauchy-Schwarz and the discrete Poincare inequality
    sum c (h_j - h_i)^2 >= lambda_1 chi^2(pi || P):

        sqrt(chi^2) (sqrt(lambda_1) - sqrt(M)) <= eps_h,
        eps_h^2 = sum_edges c 4 sinh^2(a) / cosh(a)   (-> E_p |e|^2 as h -> 0),
        M = 2 max_i sum_{j ~ i} sqrt(P_j / P_i) sinh^2(a_ij) / cosh(a_ij) / h^2   (~ sup |e|^2),

    a rigorous bound chi^2 <= eps_h^2 / (sqrt(lambda_1) - sqrt(M))^2 when M < lambda_1 (infinite,
    i.e. void, otherwise: at small t an error concentrated at a barrier has sup |e|^2 >> lambda_1),
    whose leading term is the Poincare worst case eps^2 / lambda_1. eps^2 / lambda_1 itself is a
    first-order statement, not a bound: along the slow eigenfunction's gradient the exact chi^2
    exceeds it at second order (by about 3 % for kappa = 1e-3 on the asymmetric target at
    t = 0.05, the excess halving with kappa; tests/test_bounds.py). To first order in e,
    pi = P (1 + eta) with eta = x / psi, x = H^+ r and r = rho / psi, rho the divergence of
    the edge flux 2 c a; chi^2 = ||x||^2 <= (r^T H^+ r) / lambda_1 <= eps^2 / lambda_1, with
    equality only when r lies on the slowest eigenvector. The mode-resolved estimate splits
    ||x|| into the slow eigenvectors (the basin weights: first-order weight shifts
    sum_{i in b} P_i eta_i, relative shifts = the log-weight shift E_{p|b}[eta], which for a
    conservative e = grad u is E_{p|b}[u] - E_p[u], the shift of the potential across the
    barriers) and the fast rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..score.processes import ForwardProcess
from ..spectral.grid import Grid
from .diagnostics import lag, low_modes, shifted_lu
from .grid_model import GridModel, Initial, Level, Target, distances, initial_mass
from .propagation import propagate_exact
from .schedules import as_schedule

__all__ = ["ScoreErrorBound", "TrackingBound", "score_error_bound", "tracking_bound"]


#: Most eigenvectors per level whose coefficients the tracking bound follows one by one.
_MAX_MODES = {1: 64, 2: 24}
#: The resolved modes at a level reach up to u lambda_rest >= log(sup ratio of the next jump) + this.
_MARGIN = 3.0


@dataclass(frozen=True)
class TrackingBound:
    """The tracking bound of a schedule (module docstring).

    chi2, tv : the bounds on the final chi^2(q || P_t_min) and TV (TV capped at 1).
    times : the levels used (Langevin time > 0, and t_min); slow, fast : (L,) the bounds on
    ||P_S eps|| (the n_slow = basins - 1 lowest modes) and on the rest of ||eps|| after each;
    lambda1, lambda_rest : (L,) lambda_1 and the bound on the unresolved spectrum;
    n_modes : (L,) eigenvectors followed coefficient by coefficient; jump_chi2 : (L,) chi^2
    between consecutive levels (the first: of the initial law); sup_ratio : (L,) max psi' / psi.
    measured_chi2, measured_tv, measured_error : from :func:`propagate_exact` on the same grid
    when asked (``measure=True``), else None (measured_error: its ``numerical_error``, the floor
    below which the measured TV and sqrt(chi^2) are round-off); ratio : bound / measured TV (None
    without measurement or when the measured TV lies below that floor).
    """

    chi2: float
    tv: float
    times: np.ndarray
    slow: np.ndarray
    fast: np.ndarray
    lambda1: np.ndarray
    lambda_rest: np.ndarray
    n_modes: np.ndarray
    jump_chi2: np.ndarray
    sup_ratio: np.ndarray
    measured_chi2: float | None = None
    measured_tv: float | None = None
    measured_error: float | None = None
    ratio: float | None = None


@dataclass(frozen=True)
class _Modes:
    """Resolved eigenvectors V (N, m) of a level, lower bounds lam (m,) of their eigenvalues and
    lam_rest of the rest of the spectrum, and the number of slow modes among them."""

    level: Level
    V: np.ndarray
    lam: np.ndarray
    lam_rest: float
    n_slow: int


def _modes(model: GridModel, t: float, u: float, sup_next: float) -> _Modes:
    """The fewest low modes (at least basins, at most the cap) for which the unresolved rest decays by
    e^{-u lam_rest} <= e^{-margin} / sup_next; eigenvalues lowered by their residuals (Weyl)."""
    level = model.level(t)
    n_slow = int(model.basins(level).max())
    lu = shifted_lu(model, level) if model.grid.dim > 1 else None
    cap = max(_MAX_MODES[model.grid.dim], n_slow + 1) if u > 0 else n_slow + 1
    lam, V, residuals = low_modes(model, level, cap + 1, lu)
    lower = np.maximum(lam - residuals, 0.0)
    enough = np.flatnonzero(u * lower[n_slow + 1:] >= math.log(max(sup_next, 1.0)) + _MARGIN)
    m = n_slow + 1 + int(enough[0]) if enough.size else cap
    return _Modes(level, V[:, :m], lower[:m], float(lower[m]), n_slow)


def _rest_norm(vec: np.ndarray, modes: _Modes) -> float:
    """||P_F v|| for v orthogonal to psi, F the complement of the resolved modes."""
    coef = modes.V.T @ vec
    return math.sqrt(max(float(vec @ vec) - float(coef @ coef), 0.0))


def _rest_columns(W: np.ndarray, modes: _Modes) -> np.ndarray:
    """||P_F w|| for each column w of W (F: orthogonal to psi and to the resolved modes)."""
    W = W - np.outer(modes.level.psi, modes.level.psi @ W) - modes.V @ (modes.V.T @ W)
    return np.linalg.norm(W, axis=0)


def _jump(prev: _Modes, cur: _Modes, gamma: np.ndarray, rest: float) -> tuple[np.ndarray, float, float, float]:
    """Coefficient bounds and rest bound just after the jump prev -> cur (module docstring), the
    jump's chi^2 and the sup ratio."""
    ratio = prev.level.psi / cur.level.psi
    jump = prev.level.psi * ratio - cur.level.psi
    sup = float(ratio.max())
    DVp = ratio[:, None] * prev.V
    coupling = np.abs(cur.V.T @ DVp)
    into_rest = _rest_columns(DVp, cur)
    from_rest = _rest_columns(ratio[:, None] * cur.V, prev)
    gamma_in = np.abs(cur.V.T @ jump) + coupling @ gamma + from_rest * rest
    spread = min(float(into_rest @ gamma), float(np.linalg.norm(into_rest)) * float(np.linalg.norm(gamma)))
    rest_in = _rest_norm(jump, cur) + spread + sup * rest
    return gamma_in, rest_in, float(jump @ jump), sup


def tracking_bound(
    target: Target,
    process: ForwardProcess | None,
    schedule: Any,
    *,
    initial: Initial = "prior",
    grid: Grid | None = None,
    model: GridModel | None = None,
    measure: bool = False,
) -> TrackingBound:
    """A rigorous bound on the final chi^2 and TV of annealed Langevin along ``schedule``.

    The mode-resolved discrete Gronwall recursion of the module docstring on the SqRA grid
    dynamics (the grid of :func:`~scorehamiltonian.sampling.propagation.propagate_exact` with the same
    arguments, unless ``grid`` / ``model`` is given). ``measure=True`` also propagates
    exactly and reports the measured chi^2, TV and the ratio bound / measured.
    """
    if model is None:
        sched = as_schedule(schedule)
        model = GridModel(target, process, grid, t_range=(sched.t_min, sched.t_max))
    schedule = as_schedule(schedule, model.process)
    steps = [(float(t), float(u)) for t, u in zip(schedule.times[1:], schedule.langevin_time) if u > 0]
    if not steps or steps[-1][0] != schedule.t_min:
        steps.append((schedule.t_min, 0.0))
    q0 = initial_mass(model, initial, schedule.t_max)[1]
    rows, prev = [], None
    for k, (t, u) in enumerate(steps):
        sup_next = (float((model.level(t).psi / model.level(steps[k + 1][0]).psi).max())
                    if k + 1 < len(steps) else 1.0)
        cur = _modes(model, t, u, sup_next)
        if prev is None:
            eps = q0 / q0.sum() / cur.level.psi - cur.level.psi
            gamma, rest, jump, sup = np.abs(cur.V.T @ eps), _rest_norm(eps, cur), float(eps @ eps), math.nan
        else:
            gamma, rest, jump, sup = _jump(prev, cur, gamma, rest)
        gamma, rest = np.exp(-u * cur.lam) * gamma, math.exp(-u * cur.lam_rest) * rest
        slow = float(np.linalg.norm(gamma[: cur.n_slow]))
        rows.append((t, slow, math.hypot(float(np.linalg.norm(gamma[cur.n_slow:])), rest), cur.lam[0], cur.lam_rest,
                     cur.V.shape[1], jump, sup))
        prev = cur
    cols = [np.array(c) for c in zip(*rows)]
    chi2 = float(gamma @ gamma) + rest * rest  # inf, not OverflowError, where a sup ratio is astronomical
    tv = min(1.0, 0.5 * math.sqrt(chi2))
    measured = propagate_exact(model.target, model.process, schedule, initial=initial, model=model) if measure else None
    return TrackingBound(
        chi2=chi2, tv=tv, times=cols[0], slow=cols[1], fast=cols[2], lambda1=cols[3], lambda_rest=cols[4],
        n_modes=cols[5].astype(int), jump_chi2=cols[6], sup_ratio=cols[7],
        measured_chi2=measured.chi2 if measured else None, measured_tv=measured.tv if measured else None,
        measured_error=measured.numerical_error if measured else None,
        ratio=tv / measured.tv if measured and measured.tv > measured.numerical_error else None,
    )


# --------------------------------------------------------------------------- score error


@dataclass(frozen=True)
class ScoreErrorBound:
    """Bounds and estimates of chi^2(pi || P_t) for the stationary law pi of Langevin with drift s + e.

    eps2 : eps_h^2 (the grid's E_p |e|^2); lambda1; poincare : eps2 / lambda1 (the first-order
    worst case, exceeded at second order along the slow direction); M : the sup-type constant;
    rigorous : eps2 / (sqrt(lambda1) - sqrt(M))^2
    (inf when M >= lambda1); first_order : ||H^+ r||^2, with its slow and fast parts
    (first_order_slow + first_order_fast = first_order); weight_shift, log_weight_shift : (B,)
    first-order changes of the basin weights of p_t (absolute and relative);
    measured_chi2, measured_tv, measured_weight_shift : of the exact stationary law of the
    perturbed grid generator (when ``measure=True``).
    """

    eps2: float
    lambda1: float
    poincare: float
    M: float
    rigorous: float
    first_order: float
    first_order_slow: float
    first_order_fast: float
    weight_shift: np.ndarray
    log_weight_shift: np.ndarray
    measured_chi2: float | None = None
    measured_tv: float | None = None
    measured_weight_shift: np.ndarray | None = None


def _edge_terms(model: GridModel, level: Level, e: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axis: (a, log c) on the edges i -> i + e_a, arrays of the grid's shape minus one along a."""
    n = model.grid.n
    field = e.reshape(*n, model.grid.dim)
    log_p = level.log_mass.reshape(n)
    out = []
    for ax, h in enumerate(model.h):
        lo = np.take(field[..., ax], np.arange(n[ax] - 1), axis=ax)
        hi = np.take(field[..., ax], np.arange(1, n[ax]), axis=ax)
        lp_lo = np.take(log_p, np.arange(n[ax] - 1), axis=ax)
        lp_hi = np.take(log_p, np.arange(1, n[ax]), axis=ax)
        out.append((0.25 * h * (lo + hi), 0.5 * (lp_lo + lp_hi) - 2 * math.log(h)))
    return out


def _constants(model: GridModel, level: Level, edges: list) -> tuple[float, float, np.ndarray]:
    """eps_h^2, M and the source rho (divergence of the edge flux 2 c a) at the nodes."""
    n = model.grid.n
    eps2, per_node = 0.0, np.zeros(n)
    rho = np.zeros(n)
    log_p = level.log_mass.reshape(n)
    for ax, (a, log_c) in enumerate(edges):
        w = np.sinh(a) ** 2 / np.cosh(a)
        c = np.exp(log_c)
        eps2 += float(np.sum(4 * c * w))
        lo = [slice(None)] * len(n)
        hi = [slice(None)] * len(n)
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        step = np.diff(log_p, axis=ax)
        h2 = model.h[ax] ** 2
        per_node[tuple(lo)] += np.exp(0.5 * step) * w / h2
        per_node[tuple(hi)] += np.exp(-0.5 * step) * w / h2
        flux = 2 * c * a
        rho[tuple(lo)] -= flux
        rho[tuple(hi)] += flux
    return eps2, 2.0 * float(per_node.max()), rho.reshape(-1)


def _perturbed_stationary(model: GridModel, level: Level, edges: list) -> np.ndarray:
    """The stationary masses of Q^e: exact products in 1D, a sparse solve in 2D."""
    if model.grid.dim == 1:
        a = edges[0][0]
        log_pi = level.log_mass + np.concatenate([[0.0], np.cumsum(2 * a)])
        return np.exp(log_pi - np.logaddexp.reduce(log_pi))
    n = model.grid.n
    size = math.prod(n)
    index = np.arange(size).reshape(n)
    rows, cols, vals = [], [], []
    log_p = level.log_mass.reshape(n)
    for ax, (a, _) in enumerate(edges):
        i = np.take(index, np.arange(n[ax] - 1), axis=ax).reshape(-1)
        j = np.take(index, np.arange(1, n[ax]), axis=ax).reshape(-1)
        half = 0.5 * np.diff(log_p, axis=ax).reshape(-1)
        h2 = model.h[ax] ** 2
        rate_ij = np.exp(half + a.reshape(-1)) / h2
        rate_ji = np.exp(-half - a.reshape(-1)) / h2
        rows += [j, i]
        cols += [i, j]
        vals += [rate_ij, rate_ji]
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    out_rate = np.bincount(cols, vals, minlength=size)
    A = sp.csr_matrix((vals, (rows, cols)), shape=(size, size)) - sp.diags(out_rate)
    A = A.tolil()
    anchor = int(np.argmax(level.log_mass))
    A[anchor, :] = 1.0
    rhs = np.zeros(size)
    rhs[anchor] = 1.0
    pi = spla.spsolve(A.tocsc(), rhs)
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


def score_error_bound(
    target: Target,
    process: ForwardProcess | None,
    t: float,
    error: Callable[[np.ndarray], np.ndarray],
    *,
    grid: Grid | None = None,
    model: GridModel | None = None,
    measure: bool = False,
) -> ScoreErrorBound:
    """chi^2 of Langevin's stationary law at time t when the score carries the error e (module docstring).

    error : e(x) for points x of shape (n, d) (numpy), returning (n, d): the score error at t.
    Returns the Poincare worst case eps^2 / lambda_1, the rigorous bound, the first-order
    estimate with its slow / fast split and the first-order basin weight shifts; with
    ``measure=True`` also the exact stationary law of the perturbed grid generator.
    """
    if model is None:
        model = GridModel(target, process, grid, t_range=(float(t), float(t)))
    level = model.level(float(t))
    e = np.asarray(error(model.points), dtype=np.float64).reshape(model.points.shape)
    edges = _edge_terms(model, level, e)
    eps2, M, rho = _constants(model, level, edges)
    n_slow = int(model.basins(level).max())
    lu = shifted_lu(model, level) if model.grid.dim > 1 else None
    modes = low_modes(model, level, max(n_slow + 1, 2), lu)
    lam1 = max(float(modes[0][0] - modes[2][0]), 0.0)
    first = lag(model, level, rho / level.psi, n_slow, modes, lu)
    labels = model.basins(level)
    mass = np.exp(level.log_mass)
    shift = np.bincount(labels, level.psi * first.x)
    rigorous = eps2 / (math.sqrt(lam1) - math.sqrt(M)) ** 2 if M < lam1 else math.inf
    measured = {}
    if measure:
        pi = _perturbed_stationary(model, level, edges)
        dist = distances(pi, mass)
        measured = {"measured_chi2": dist["chi2"], "measured_tv": dist["tv"],
                    "measured_weight_shift": np.bincount(labels, pi) - np.bincount(labels, mass)}
    return ScoreErrorBound(
        eps2=eps2, lambda1=lam1, poincare=eps2 / lam1 if lam1 > 0 else math.inf, M=M, rigorous=rigorous,
        first_order=first.total**2, first_order_slow=first.slow**2, first_order_fast=first.fast**2,
        weight_shift=shift, log_weight_shift=shift / np.bincount(labels, mass), **measured,
    )
