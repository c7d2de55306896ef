"""LOBPCG's in-place Rayleigh-Ritz update on the CPU: one numba pass over the row blocks.

For row blocks S and HS = H S (float64, (rows, N) C-contiguous), coefficients CT (r, q) and
Ritz values theta (m,), :func:`update_rows` writes

    S[:r] <- CT S[:q],   HS[:r] <- CT HS[:q],   HS[r:r + m] <- HS[:m] - diag(theta) S[:m],

the last block being the residuals R of the new Ritz vectors, and returns the squared row
norms of R. Each tile of columns is read into two small buffers (r rows each) before any of
it is written, so the update is in place and every value of S and HS crosses the memory bus
once per update (the torch path in :mod:`.eigensolvers` does the same through a GEMM per
block and column chunk, plus separate passes for R and its norms).

Columns are cut into chunks of ``CHUNK`` whose squared norms are summed separately and then
added in chunk order, so the result has the same bits on any number of threads. Within a
chunk the squares are summed one by one in column order (each tile's sum, then tiles in
order): the kernel is compiled without fast-math, as fast here (the pass is bound by memory)
and the same on every call. With reassociation allowed, LLVM's vectorised sum or its scalar
fallback was taken depending on where the buffers lay, so the norms' last bits, and with
them the same seed's solves, changed from call to call.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ..common.threads import run_lines

__all__ = ["CHUNK", "update_rows"]

#: Columns per chunk (one partial sum of the squared residual norms each).
CHUNK = 1 << 13
#: Columns per tile: the two (r, TILE) buffers stay in the first-level cache for r <= 8.
TILE = 256


@numba.njit(cache=True)
def _update_lines(start, stop, CT, S, HS, theta, squares):  # pragma: no cover - compiled
    """Column chunks start..stop-1 of the update (module docstring); squares[c, i] gets
    the squared norm of R's row i over chunk c."""
    r, q = CT.shape
    m, n = theta.shape[0], S.shape[1]
    bs = np.empty((r, TILE))
    bh = np.empty((r, TILE))
    for c in range(start, stop):
        for i in range(m):
            squares[c, i] = 0.0
        for j0 in range(c * CHUNK, min((c + 1) * CHUNK, n), TILE):
            w = min(TILE, n - j0)
            bs[:, :w] = 0.0
            bh[:, :w] = 0.0
            for ell in range(q):
                s_row, h_row = S[ell, j0 : j0 + w], HS[ell, j0 : j0 + w]
                for i in range(r):
                    coefficient = CT[i, ell]
                    for k in range(w):
                        bs[i, k] += coefficient * s_row[k]
                        bh[i, k] += coefficient * h_row[k]
            for i in range(r):
                S[i, j0 : j0 + w] = bs[i, :w]
                HS[i, j0 : j0 + w] = bh[i, :w]
            for i in range(m):
                total = 0.0
                for k in range(w):
                    value = bh[i, k] - theta[i] * bs[i, k]
                    HS[r + i, j0 + k] = value
                    total += value * value
                squares[c, i] += total


@numba.njit(parallel=True, cache=True)
def _update_parallel(groups, CT, S, HS, theta, squares):  # pragma: no cover - compiled
    chunks = squares.shape[0]
    for g in numba.prange(groups):
        _update_lines(g * chunks // groups, (g + 1) * chunks // groups, CT, S, HS, theta, squares)


def update_rows(CT: torch.Tensor, S: torch.Tensor, HS: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The in-place update of the module docstring on CPU float64 row blocks S and HS (at
    least r + m rows of HS); returns the squared row norms of R, shape (m,)."""
    n = S.shape[1]
    chunks = -(-n // CHUNK)
    squares = np.empty((chunks, theta.shape[0]))
    run_lines(_update_lines, _update_parallel, CT.shape[0] * n, chunks, CT.numpy(), S.numpy(), HS.numpy(),
              theta.numpy(), squares)
    return torch.from_numpy(squares.sum(0))
