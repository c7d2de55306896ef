"""The finite-difference stencil of -Laplacian_h + V as compiled kernels (THEORY section 2).

:func:`stencil` gives the coefficients of the order-2 and order-4 centred stencils of
-d^2/dx^2; :func:`shifted_sum` applies their off-diagonal part in torch (any device). The
numba kernels work on (m, n0, n1, n2) arrays, lines along the last axis:
:func:`stencil_lines` / :func:`stencil_lines_parallel` compute H u line by line (one fused
pass per stencil order, picked at compile time from the coefficient tuple's length), and
:func:`sweep_worker` / :func:`sweep_parallel` run every step of a polynomial smoother in one
sweep over the grid (each stage a few planes behind the one before it, in small rings of
planes and bands of lines that stay in cache). :class:`~.operator.ScoreHamiltonian` calls
them on the CPU; all values beyond the grid are zero (homogeneous Dirichlet conditions).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba.extending import overload

__all__ = [
    "shifted_sum",
    "stencil",
    "stencil_lines",
    "stencil_lines_parallel",
    "sweep_parallel",
    "sweep_worker",
]

#: Coefficients (c_0, c_1, ...) of -d^2/dx^2 at unit spacing: (-L u)_i = sum_o c_|o| u_{i+o}.
_STENCILS = {2: (2.0, -1.0), 4: (30.0 / 12.0, -16.0 / 12.0, 1.0 / 12.0)}


def stencil(order: int) -> tuple[float, ...]:
    """Coefficients (c_0, c_1, ..., c_r) of the order-``order`` stencil of -d^2/dx^2 at h = 1."""
    if order not in _STENCILS:
        raise ValueError(f"order must be 2 or 4; got {order!r}")
    return _STENCILS[order]


def shifted_sum(u: torch.Tensor, weights: list[tuple[int, int, float]]) -> torch.Tensor:
    """sum over (axis, offset, w) of w * u shifted by +-offset along axis, zero outside."""
    out = torch.zeros_like(u)
    for axis, offset, w in weights:
        m = u.shape[axis] - offset
        if m <= 0:
            continue
        out.narrow(axis, offset, m).add_(u.narrow(axis, 0, m), alpha=w)
        out.narrow(axis, 0, m).add_(u.narrow(axis, offset, m), alpha=w)
    return out


@numba.njit(inline="always")
def _plane_slots(q, planes, wrap, slots):  # pragma: no cover - compiled
    """slots[reach + o] = (q + o) % wrap, where plane q + o of a column (planes first) is
    stored (wrap = planes for a whole column, the ring size for a ring of recent planes),
    or -1 where q + o lies outside the grid, for |o| <= reach = len(slots) // 2."""
    reach = slots.shape[0] // 2
    for o in range(-reach, reach + 1):
        slots[reach + o] = (q + o) % wrap if 0 <= q + o < planes else -1


@numba.njit(inline="always")
def _neighbour(slot, line, n1, weight, here, j, row):  # pragma: no cover - compiled
    """(slot, row, weight) of the neighbour line ``line`` of line j (stored at ``row``), or
    (here, row, 0.0) where it lies outside the grid: the line itself with weight zero, which
    adds exactly nothing, so that the fused loop needs no boundary branch."""
    if slot >= 0 and 0 <= line < n1:
        return slot, row + line - j, weight
    return here, row, 0.0


@numba.njit(inline="always")
def _line_reach1(x, slots, j, row, diag, q, coef, h2inv, out):  # pragma: no cover - compiled
    """:func:`_stencil_line` at order 2: the interior nodes 1 <= k < n2 - 1 in one fused pass
    (the kernel before it, a pass per neighbour with the order's reach known only at run
    time, took 10-13 cycles a node on one thread at 128^3, this one 4-6), then the two end
    nodes with their k-neighbours checked."""
    n1, n2, s = diag.shape[1], x.shape[2], slots[1]
    w0, w1, w2 = coef[1] * h2inv[0], coef[1] * h2inv[1], coef[1] * h2inv[2]
    sa, ra, wa = _neighbour(slots[0], j, n1, w0, s, j, row)
    sb, rb, wb = _neighbour(slots[2], j, n1, w0, s, j, row)
    sc, rc, wc = _neighbour(s, j - 1, n1, w1, s, j, row)
    sd, rd, wd = _neighbour(s, j + 1, n1, w1, s, j, row)

    def across(k):  # diag x plus the neighbours off the line's axis, at node k
        return diag[q, j, k] * x[s, row, k] + (wa * x[sa, ra, k] + wb * x[sb, rb, k]) + (wc * x[sc, rc, k] + wd * x[sd, rd, k])

    for k in range(1, n2 - 1):
        out[k] = across(k) + w2 * (x[s, row, k - 1] + x[s, row, k + 1])
    for k in (0, n2 - 1):
        value = across(k)
        if k >= 1:
            value += w2 * x[s, row, k - 1]
        if k + 1 < n2:
            value += w2 * x[s, row, k + 1]
        out[k] = value


@numba.njit(inline="always")
def _line_reach2(x, slots, j, row, diag, q, coef, h2inv, out):  # pragma: no cover - compiled
    """:func:`_stencil_line` at order 4: the interior nodes 2 <= k < n2 - 2 in one fused pass,
    then the four end nodes with their k-neighbours checked (lines shorter than the stencil
    repeat some of them, writing the same value)."""
    n1, n2, s = diag.shape[1], x.shape[2], slots[2]
    u0, u1, u2 = coef[1] * h2inv[0], coef[1] * h2inv[1], coef[1] * h2inv[2]
    v0, v1, v2 = coef[-1] * h2inv[0], coef[-1] * h2inv[1], coef[-1] * h2inv[2]
    sa, ra, wa = _neighbour(slots[1], j, n1, u0, s, j, row)
    sb, rb, wb = _neighbour(slots[3], j, n1, u0, s, j, row)
    sc, rc, wc = _neighbour(s, j - 1, n1, u1, s, j, row)
    sd, rd, wd = _neighbour(s, j + 1, n1, u1, s, j, row)
    se, re, we = _neighbour(slots[0], j, n1, v0, s, j, row)
    sf, rf, wf = _neighbour(slots[4], j, n1, v0, s, j, row)
    sg, rg, wg = _neighbour(s, j - 2, n1, v1, s, j, row)
    sh, rh, wh = _neighbour(s, j + 2, n1, v1, s, j, row)

    def across(k):  # diag x plus the neighbours off the line's axis, at node k
        return (diag[q, j, k] * x[s, row, k]
                + ((wa * x[sa, ra, k] + wb * x[sb, rb, k]) + (wc * x[sc, rc, k] + wd * x[sd, rd, k]))
                + ((we * x[se, re, k] + wf * x[sf, rf, k]) + (wg * x[sg, rg, k] + wh * x[sh, rh, k])))

    for k in range(2, n2 - 2):
        out[k] = across(k) + (u2 * (x[s, row, k - 1] + x[s, row, k + 1]) + v2 * (x[s, row, k - 2] + x[s, row, k + 2]))
    for k in (0, 1, n2 - 2, n2 - 1):
        if not 0 <= k < n2:
            continue
        value = across(k)
        for o, w in ((1, u2), (2, v2)):
            if k - o >= 0:
                value += w * x[s, row, k - o]
            if k + o < n2:
                value += w * x[s, row, k + o]
        out[k] = value


def _stencil_line(x, slots, j, row, diag, q, coef, h2inv, out):  # pragma: no cover - compiled
    """out[:] = (H x)[q, j, :], line j of plane q of H (diag: (planes, n1, n2)) applied to
    one column x of shape (wrap, rows, n2) whose planes q + o (first axis) lie at
    x[slots[reach + o]] (slots from :func:`_plane_slots`, reach = len(coef) - 1) and whose
    line j + o lies at row + o of them: diag * x plus sum_axes sum_o coef[o]
    h2inv[axis] (x shifted by +-o), zero outside the grid. Compiled code only: ``coef`` is
    a tuple, and :func:`_stencil_line_for_order` picks the pass for its length when the
    caller compiles (so the other order's pass is neither compiled nor tested per line)."""
    raise NotImplementedError("_stencil_line runs inside numba-compiled kernels only")


@overload(_stencil_line, inline="always")
def _stencil_line_for_order(x, slots, j, row, diag, q, coef, h2inv, out):  # pragma: no cover - compiled
    """:func:`_stencil_line`'s implementation for the length of the tuple type ``coef``."""
    return (_line_reach1 if coef.count == 2 else _line_reach2).py_func


@numba.njit(cache=True)
def stencil_lines(start, stop, u, diag, coef, h2inv, out):  # pragma: no cover - compiled
    """out = H u on lines start..stop-1 (line = (c, i, j) of the (m, n0, n1, n2) arrays)."""
    _, n0, n1, _ = u.shape
    reach = len(coef) - 1
    slots = np.empty(2 * reach + 1, np.int64)
    line = start
    while line < stop:
        c, i, first = line // (n0 * n1), (line // n1) % n0, line % n1
        last = min(n1, first + stop - line)
        _plane_slots(i, n0, n0, slots)
        for j in range(first, last):
            _stencil_line(u[c], slots, j, j, diag, i, coef, h2inv, out[c, i, j])
        line += last - first


@numba.njit(parallel=True, cache=True)
def stencil_lines_parallel(chunks, u, diag, coef, h2inv, out):  # pragma: no cover - compiled
    """``stencil_lines`` over all lines, split into ``chunks`` parallel tasks."""
    m, n0, n1, _ = u.shape
    total = m * n0 * n1
    for chunk in numba.prange(chunks):
        stencil_lines(chunk * total // chunks, (chunk + 1) * total // chunks, u, diag, coef, h2inv, out)


@numba.njit(cache=True)
def _sweep_task(lo, hi, jlo, jhi, from_zero, residual, x0, b, diag, shift, dinv, coef, h2inv, alphas, betas, out,
                r, xring, dring, line):  # pragma: no cover - compiled
    """Planes lo..hi-1 of one column of :meth:`ScoreHamiltonian.smooth`, all its steps in one
    sweep over the first axis (arrays of shape (planes, n1, n2)), on the lines jlo..jhi-1 of
    each plane (a band). Step t = 0, 1, ... (coefficients alpha_t, beta_t) forms
    d = alpha_t d_prev + beta_t dinv (b - (H - shift) x_prev) (d_prev not read when
    alpha_t = 0) and x = x_prev + d, from x_prev = x0 at t = 0 (or, ``from_zero``,
    d = x = beta_0 dinv b without a matvec). It runs R = len(coef) - 1 planes behind step
    t - 1, which has by then produced the planes it reads; its x lives in a ring of 2R + 1
    planes (xring[t]) and its d in one of R + 1 (dring[t]), so each plane of b, dinv and
    diag is read from memory once for all steps. The rings hold the band's lines and their
    halos only (line j at row j - max(0, jlo - (stages - 1) R)), so that they stay in cache.
    The last step's x goes to planes lo..hi-1, lines jlo..jhi-1 of ``out``; with
    ``residual``, one more stage writes b - (H - shift) out to ``r``. To produce these, stage
    t (the residual is the last) computes the planes and lines up to (stages - 1 - t) R
    beyond them on each side (recomputed by the neighbouring task)."""
    planes, n1, n2 = b.shape
    reach = len(coef) - 1
    steps = alphas.shape[0]
    stages = steps + 1 if residual else steps
    xwrap, dwrap = 2 * reach + 1, reach + 1
    base = max(0, jlo - (stages - 1) * reach)  # line j lies at row j - base of the rings
    slots = np.empty(2 * reach + 1, np.int64)
    for front in range(max(0, lo - (stages - 1) * reach), hi + (stages - 1) * reach):
        for t in range(stages):
            q, halo = front - t * reach, (stages - 1 - t) * reach
            if q < max(0, lo - halo) or q >= min(planes, hi + halo):
                continue
            stage = min(t, steps - 1)  # the residual stage (t = steps) writes r, not rings
            x, d = xring[stage, q % xwrap], dring[stage, q % dwrap]
            rows = range(max(0, jlo - halo), min(n1, jhi + halo))
            if t == 0 and from_zero:
                for j in rows:
                    for k in range(n2):
                        d[j - base, k] = betas[0] * dinv[q, j, k] * b[q, j, k]
                        x[j - base, k] = d[j - base, k]
            else:
                source, wrap, offset = (x0, planes, 0) if t == 0 else (xring[t - 1], xwrap, base)
                alpha, beta = alphas[stage], betas[stage]
                _plane_slots(q, planes, wrap, slots)
                for j in rows:
                    _stencil_line(source, slots, j, j - offset, diag, q, coef, h2inv, line)
                    before, previous = source[q % wrap, j - offset], dring[max(t - 1, 0), q % dwrap, j - base]
                    if t == steps:
                        for k in range(n2):
                            r[q, j, k] = b[q, j, k] - line[k] + shift * before[k]
                    elif alpha == 0.0:
                        for k in range(n2):
                            d[j - base, k] = beta * dinv[q, j, k] * (b[q, j, k] - line[k] + shift * before[k])
                            x[j - base, k] = before[k] + d[j - base, k]
                    else:
                        for k in range(n2):
                            step = b[q, j, k] - line[k] + shift * before[k]
                            d[j - base, k] = alpha * previous[k] + beta * dinv[q, j, k] * step
                            x[j - base, k] = before[k] + d[j - base, k]
            if t == steps - 1 and lo <= q < hi:
                out[q, jlo:jhi] = x[jlo - base : jhi - base]


@numba.njit(cache=True)
def sweep_worker(worker, workers, pieces, bands, from_zero, residual, x0, b, diag, shift, dinv, coef, h2inv, alphas,
                  betas, out, r, xring, dring, line):  # pragma: no cover - compiled
    """The sweeps (tasks = columns x ``pieces`` plane ranges x ``bands`` line ranges)
    numbered worker, worker + workers, ...: :func:`_sweep_task` with the worker's own rings."""
    m, planes, n1 = b.shape[0], b.shape[1], b.shape[2]
    for task in range(worker, m * pieces * bands, workers):
        c, piece, band = task // (pieces * bands), (task // bands) % pieces, task % bands
        _sweep_task(piece * planes // pieces, (piece + 1) * planes // pieces, band * n1 // bands,
                    (band + 1) * n1 // bands, from_zero, residual, x0[c], b[c], diag, shift, dinv, coef, h2inv, alphas,
                    betas, out[c], r[c], xring[worker], dring[worker], line[worker])


@numba.njit(parallel=True, cache=True)
def sweep_parallel(workers, pieces, bands, from_zero, residual, x0, b, diag, shift, dinv, coef, h2inv, alphas, betas,
                    out, r, xring, dring, line):  # pragma: no cover - compiled
    """:func:`sweep_worker` for every worker, in parallel."""
    for worker in numba.prange(workers):
        sweep_worker(worker, workers, pieces, bands, from_zero, residual, x0, b, diag, shift, dinv, coef, h2inv,
                      alphas, betas, out, r, xring, dring, line)
