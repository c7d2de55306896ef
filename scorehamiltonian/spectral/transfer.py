"""Grid transfers: linear interpolation between two grids on the same box (any node counts).

Both grids have homogeneous Dirichlet faces at lo and hi (:class:`Grid` convention): on an
axis with n interior nodes, node i sits at the fraction (i + 1) / (n + 1) of the box, and
the grid function is zero on the faces. Interpolation to another grid is separable: on each
axis, the value at a target node is the linear interpolate of its two neighbouring source
nodes (a face counting as a node with value 0). When the target nodes are a subset of the
source nodes (n_source + 1 = 2^j (n_target + 1), as :meth:`Grid.refine` makes), the
weights are exact integers over integers and interpolation is injection, exactly.

``prolong`` (coarse to fine) is that interpolation P; ``restrict`` is its transpose scaled
by prod_a (n_coarse_a + 1) / (n_fine_a + 1), the local average of the fine values (the
full-weighting restriction on nested grids), so that restricting a smooth function gives
about its coarse samples. Tensors are batched: shape (m, *n), m columns first. On the CPU
each transfer to or from a fine grid of ``NUMBA_MIN_SIZE`` nodes or more is one numba pass
over the target (one thread below ``PARALLEL_MIN_SIZE`` values); otherwise torch, one axis
at a time.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import torch
import torch.nn.functional as F

from ..common.threads import run_lines, use_numba

__all__ = ["axis_weights", "interpolate", "interpolate_columns", "prolong", "restrict"]


def axis_weights(n_from: int, n_to: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight) of linear interpolation from n_from to n_to nodes on one axis.

    Target node j lies between padded source nodes index[j] and index[j] + 1 (padded:
    0 is the lower face, n_from + 1 the upper one) and takes
    (1 - weight[j]) u[index[j]] + weight[j] u[index[j] + 1].
    """
    position = np.arange(1, n_to + 1, dtype=np.int64) * (n_from + 1)  # padded coordinate x (n_to + 1)
    index = position // (n_to + 1)
    return index, (position - index * (n_to + 1)) / (n_to + 1)


@functools.lru_cache(maxsize=64)
def _gather_table(n_from: int, n_to: int) -> tuple[np.ndarray, np.ndarray]:
    """For each target node j: the two source nodes (lo, hi), clamped inside, and their
    weights (zero for a face): target_j = w_lo u_lo + w_hi u_hi. Shapes (n_to, 2)."""
    index, weight = axis_weights(n_from, n_to)
    nodes = np.stack([index - 1, index], axis=1)
    weights = np.stack([1.0 - weight, weight], axis=1)
    weights[(nodes < 0) | (nodes >= n_from)] = 0.0
    return np.clip(nodes, 0, n_from - 1), weights


@functools.lru_cache(maxsize=64)
def _scatter_table(n_coarse: int, n_fine: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each coarse node j: the fine nodes first[j] .. first[j] + count[j] - 1 whose
    interpolation uses it, and their weights on it (n_coarse, max count; unused slots 0)."""
    nodes, weights = _gather_table(n_coarse, n_fine)
    users: list[dict[int, float]] = [{} for _ in range(n_coarse)]
    for i in range(n_fine):
        for j, w in zip(nodes[i], weights[i]):
            if w != 0.0:
                users[j][i] = users[j].get(i, 0.0) + w
    first = np.array([min(u) if u else 0 for u in users], dtype=np.int64)
    count = np.array([max(u) - min(u) + 1 if u else 0 for u in users], dtype=np.int64)
    table = np.zeros((n_coarse, max(int(count.max()), 1)))
    for j, u in enumerate(users):
        for i, w in u.items():
            table[j, i - first[j]] = w
    return first, count, table


@numba.njit(cache=True)
def _prolong_lines(start, stop, u, n0, w0, n1, w1, n2, w2, accumulate, out):  # pragma: no cover - compiled
    """Target lines start..stop-1 (line = (c, i, j) of out (m, f0, f1, f2)) of the
    separable interpolation of u (m, c0, c1, c2): the 2 x 2 source lines combined with
    their weights (contiguous), then interpolated once along the last axis, into out (or
    added to it)."""
    _, f0, f1, f2 = out.shape
    combined = np.empty(u.shape[3], dtype=out.dtype)
    for line in range(start, stop):
        c, i, j = line // (f0 * f1), (line // f1) % f0, line % f1
        combined[:] = 0.0
        for a in range(2):
            for b in range(2):
                w = w0[i, a] * w1[j, b]
                if w == 0.0:
                    continue
                row = u[c, n0[i, a], n1[j, b]]
                for k in range(combined.shape[0]):
                    combined[k] += w * row[k]
        if accumulate:
            for k in range(f2):
                out[c, i, j, k] += w2[k, 0] * combined[n2[k, 0]] + w2[k, 1] * combined[n2[k, 1]]
        else:
            for k in range(f2):
                out[c, i, j, k] = w2[k, 0] * combined[n2[k, 0]] + w2[k, 1] * combined[n2[k, 1]]


@numba.njit(cache=True)
def _restrict_lines(start, stop, r, f0, k0, t0, f1, k1, t1, f2, k2, t2, scale, out):  # pragma: no cover
    """Coarse lines start..stop-1 (line = (c, i, j) of out (m, c0, c1, c2)) of the scaled
    transpose of interpolation: the fine lines using coarse (i, j) combined with their
    weights (contiguous), then the transpose along the last axis applied once."""
    _, c0, c1, c2 = out.shape
    combined = np.empty(r.shape[3], dtype=out.dtype)
    for line in range(start, stop):
        c, i, j = line // (c0 * c1), (line // c1) % c0, line % c1
        combined[:] = 0.0
        for a in range(k0[i]):
            for b in range(k1[j]):
                w = scale * t0[i, a] * t1[j, b]
                row = r[c, f0[i] + a, f1[j] + b]
                for k in range(combined.shape[0]):
                    combined[k] += w * row[k]
        for k in range(c2):
            total = 0.0
            for s in range(k2[k]):
                total += t2[k, s] * combined[f2[k] + s]
            out[c, i, j, k] = total


@numba.njit(parallel=True, cache=True)
def _prolong_parallel(chunks, u, n0, w0, n1, w1, n2, w2, accumulate, out):  # pragma: no cover - compiled
    total = out.shape[0] * out.shape[1] * out.shape[2]
    for t in numba.prange(chunks):
        _prolong_lines(t * total // chunks, (t + 1) * total // chunks, u, n0, w0, n1, w1, n2, w2, accumulate, out)


@numba.njit(parallel=True, cache=True)
def _restrict_parallel(chunks, r, f0, k0, t0, f1, k1, t1, f2, k2, t2, scale, out):  # pragma: no cover - compiled
    total = out.shape[0] * out.shape[1] * out.shape[2]
    for t in numba.prange(chunks):
        _restrict_lines(t * total // chunks, (t + 1) * total // chunks, r, f0, k0, t0, f1, k1, t1, f2, k2, t2,
                        scale, out)


def _numba_ok(t: torch.Tensor, n: tuple[int, ...]) -> bool:
    """Whether the transfer of ``t`` (m, *n_t) to or from the grid with ``n`` nodes runs
    numba's kernel (by the finer of the two grids)."""
    return t.dtype in (torch.float32, torch.float64) and use_numba(t.device, max(math.prod(n), t[0].numel()))


def _as4(t: torch.Tensor) -> np.ndarray:
    """(m, *n) contiguous as the (m, n0, n1, n2) numpy view the kernels take (leading 1s)."""
    return t.numpy().reshape(t.shape[0], *([1] * (4 - t.ndim)), *t.shape[1:])


def _padded(n: tuple[int, ...]) -> tuple[int, ...]:
    return (1,) * (3 - len(n)) + tuple(n)


def _torch_axis_interpolate(u: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    index, weight = axis_weights(u.shape[axis], n)
    w = torch.as_tensor(weight, dtype=u.dtype, device=u.device).reshape([-1] + [1] * (u.ndim - 1 - axis))
    idx = torch.as_tensor(index, device=u.device)
    padded = F.pad(u, [0, 0] * (u.ndim - 1 - axis) + [1, 1])
    return torch.lerp(padded.index_select(axis, idx), padded.index_select(axis, idx + 1), w)


def _torch_axis_restrict(r: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    n_fine = r.shape[axis]
    index, weight = axis_weights(n, n_fine)
    w = torch.as_tensor(weight, dtype=r.dtype, device=r.device).reshape([-1] + [1] * (r.ndim - 1 - axis))
    idx = torch.as_tensor(index, device=r.device)
    shape = list(r.shape)
    shape[axis] = n + 2
    out = torch.zeros(shape, dtype=r.dtype, device=r.device)
    out.index_add_(axis, idx, r * (1 - w))
    out.index_add_(axis, idx + 1, r * w)
    return out.narrow(axis, 1, n) * ((n + 1) / (n_fine + 1))


def interpolate(u: torch.Tensor, n_to: tuple[int, ...], out: torch.Tensor | None = None) -> torch.Tensor:
    """u (m, *n_from) interpolated linearly to the grid with ``n_to`` nodes per axis,
    (m, *n_to); added to ``out`` (m, *n_to, contiguous) instead when given."""
    n_to = tuple(n_to)
    if not _numba_ok(u, n_to):
        for axis, n in enumerate(n_to, start=1):
            if u.shape[axis] != n:
                u = _torch_axis_interpolate(u, axis, n)
        return u if out is None else out.add_(u)
    target = torch.empty(u.shape[0], *n_to, dtype=u.dtype) if out is None else out
    tables = []
    for a, b in zip(_padded(tuple(u.shape[1:])), _padded(n_to)):
        nodes, weights = _gather_table(a, b)
        tables += [nodes, weights.astype(target.numpy().dtype)]
    lines = target.shape[0] * int(np.prod(_padded(n_to)[:2]))
    run_lines(_prolong_lines, _prolong_parallel, target.numel(), lines, _as4(u.contiguous()), *tables, out is not None,
         _as4(target))
    return target


def prolong(u: torch.Tensor, n_fine: tuple[int, ...], out: torch.Tensor | None = None) -> torch.Tensor:
    """P u: coarse (m, *n_coarse) to fine (m, *n_fine), linear interpolation (added to
    ``out`` when given)."""
    return interpolate(u, n_fine, out)


def restrict(r: torch.Tensor, n_coarse: tuple[int, ...], out: torch.Tensor | None = None) -> torch.Tensor:
    """c P^T r: fine (m, *n_fine) to coarse (m, *n_coarse), c = prod (n_c + 1) / (n_f + 1);
    written into ``out`` (m, *n_coarse, contiguous, r's dtype and device) when given."""
    n_coarse = tuple(n_coarse)
    if not _numba_ok(r, n_coarse):
        for axis, n in enumerate(n_coarse, start=1):
            if r.shape[axis] != n:
                r = _torch_axis_restrict(r, axis, n)
        return r if out is None else out.copy_(r)
    target = torch.empty(r.shape[0], *n_coarse, dtype=r.dtype) if out is None else out
    tables, scale = [], 1.0
    for a, b in zip(_padded(n_coarse), _padded(tuple(r.shape[1:]))):
        first, count, weights = _scatter_table(a, b)
        tables += [first, count, weights.astype(target.numpy().dtype)]
        scale *= (a + 1) / (b + 1)
    lines = target.shape[0] * int(np.prod(_padded(n_coarse)[:2]))
    run_lines(_restrict_lines, _restrict_parallel, r.numel(), lines, _as4(r.contiguous()), *tables, scale, _as4(target))
    return target


def interpolate_columns(X: torch.Tensor, n_from: tuple[int, ...], n_to: tuple[int, ...]) -> torch.Tensor:
    """Grid functions as columns, X (prod n_from, m) or (prod n_from,), interpolated linearly
    to the grid of the same box with ``n_to`` nodes per axis: (prod n_to, m) or (prod n_to,).
    E.g. eigenvectors of a coarser grid as the starting block of a finer one."""
    cols = X.reshape(X.shape[0], -1)
    rows = interpolate(cols.T.reshape(cols.shape[1], *n_from), tuple(n_to)).reshape(cols.shape[1], -1)
    return rows.T if X.ndim == 2 else rows[0]
