"""Numba's parallel passes, run with torch's thread count.

Numba's OpenMP threading layer shares the OpenMP runtime with torch: each parallel launch sets
the runtime's thread count to numba's own, which torch then reads as its intra-op count. A
user's ``torch.set_num_threads(1)`` would silently become 2 (or all cores) after the first
multigrid cycle, and torch's results (reductions, products) would change in the last bits
depending on what ran before. So every parallel pass runs with exactly
``torch.get_num_threads()`` threads (capped at numba's pool) and restores torch's count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import torch

__all__ = ["NUMBA_MIN_SIZE", "PARALLEL_MIN_SIZE", "run_lines", "run_parallel", "use_numba", "workers"]

#: Grids of fewer values than this take torch's kernels on the CPU too (the operator's
#: matvec and smoothing, LOBPCG's Rayleigh-Ritz update, grid transfers: one rule for all).
#: Measured on the four-mode benchmark to rtol 1e-5 (spectral_gap, grids 45^2 - 255^2, second
#: call in a process): 0.65 - 0.69 s with numba from 2^12 values, 0.74 s from 2^14, 0.87 s
#: from 2^16. A process's first numba call costs about 0.5 s more (numba initialises its
#: compiler's registries, then loads the kernels from the disk cache).
NUMBA_MIN_SIZE = 1 << 12

#: Passes over fewer values than this run on one thread (a parallel start costs more). On 2
#: cores a call of one smoothing step (the fused stencil kernel) over 4 x 63^2 values took
#: 169-173 us on one thread and 159-163 us on two, over 4 x 127^2 385-445 against 268-298
#: us, and over 1 x 31^2 76-84 against 100-106 us.
PARALLEL_MIN_SIZE = 1 << 14


def workers(size: int) -> int:
    """Threads for a pass over ``size`` values: 1 below ``PARALLEL_MIN_SIZE``, else torch's
    count, capped at numba's pool."""
    if size < PARALLEL_MIN_SIZE:
        return 1
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def use_numba(device: torch.device | str, size: int) -> bool:
    """Whether a pass over a grid of ``size`` values a column, on ``device``, runs a numba
    kernel: on the CPU from ``NUMBA_MIN_SIZE`` values (read at call time), else torch."""
    return torch.device(device).type == "cpu" and size >= NUMBA_MIN_SIZE


def run_parallel(threads: int, kernel: Callable[..., Any], *args: Any) -> None:
    """``kernel(*args)`` (a numba parallel function) on ``threads`` threads, restoring torch's
    thread count afterwards (module docstring)."""
    before = torch.get_num_threads()
    numba.set_num_threads(threads)
    try:
        kernel(*args)
    finally:
        torch.set_num_threads(before)


def run_lines(serial: Callable[..., Any], parallel: Callable[..., Any], size: int, lines: int, *args: Any) -> None:
    """``serial(0, lines, *args)`` for a pass over fewer than ``PARALLEL_MIN_SIZE`` values (or
    one line), else ``parallel(chunks, *args)`` with a few chunks per thread, on torch's
    thread count (module docstring)."""
    threads = workers(size)
    if threads == 1 or lines < 2:
        serial(0, lines, *args)
        return
    run_parallel(threads, parallel, min(lines, 4 * threads), *args)
