"""The memory a grid job needs, counted before anything is allocated.

:func:`estimate_memory` counts the arrays that a :class:`~.operator.ScoreHamiltonian` on a
grid of ``n`` nodes per axis and the default eigensolver (``spectrum(H, k)``: LOBPCG with the
multigrid preconditioner and nested iteration, :mod:`.eigensolvers`) hold at once. With N the
unknowns, m = k + 2 the block size, w = 8 bytes (the float64 work vectors), b the operator
dtype's itemsize and N_0 = N > N_1 > ... > N_L the multigrid levels (n -> (n - 1) // 2 per
axis while N_l > ``COARSEST_SIZE``):

- operator (held for its lifetime): log p, V and V's error in float64, sqrt(p) and the
  diagonal in the operator's dtype: N (3 w + 2 b);
- build (transient, while the score is evaluated): the nodes twice, the score and the
  per-chunk potential parts and their concatenations: N w (4 d + 5);
- solver: the LOBPCG row blocks S and HS (2 x 3m rows), the starting block, the
  nested-iteration start and one transient block (3m rows), the diagonal (1 row), all N w,
  and the buffer of the in-place Rayleigh-Ritz update, 2m rows of N / 8 on a GPU (counted
  on every device: the CPU's numba pass needs none, so the count is m / 4 rows over
  there); per multigrid level the inverse diagonal and, below the coarsest, the smoother's
  work blocks counted as three of m rows, N_l b (3m + 1) (the numba sweep holds two, the
  iterate and the residual, and small rings of planes; the torch path of other devices
  allocates two more per smoothing call, for the direction and each step's residual); the
  coarser levels' operators and the m rows of the restricted residual each solves for,
  N_l (3 w + 2 b + m b).

The LOBPCG blocks are allocated zero-filled, so the resident memory of a run is what is
counted and not an accident of which rows an iteration touched (the multigrid blocks are
written whole in every cycle). Peak = operator + max(build, solver).
Measured (peak RSS over a whole job, 2 cores, float64), with the torch count: 3-20% over on
2D 383^2 - 1023^2 and 3D 63^3 and 95^3 grids (1023^2, k = 3: 512 B per unknown measured, 614
estimated; 63^3, k = 3: 502 against 572; 95^3, k = 2: 459 against 472), most of it the third
smoothing block per level that the numba sweep does not hold, and 34% under on 255^2 (k = 1),
where fixed overheads (about 12 MiB) weigh; tests/test_memory.py checks the numba count
within 20% on 383^2, 511^2 and 63^3 (the CPU jobs run numba from 2^12 unknowns).
Other solver methods (eigsh's factorisation, Lanczos' basis) are not counted.

:func:`check_memory` compares an estimate with what the device has free (``MemAvailable`` of
/proc/meminfo on the CPU, ``torch.cuda.mem_get_info`` on a GPU) and raises
:class:`~.errors.InsufficientMemoryError` with both figures when the job will not fit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..common.errors import InsufficientMemoryError
from .blocks import UPDATE_CHUNKS, WORK_DTYPE
from .multigrid import COARSEST_SIZE
from .solution import GUARD

__all__ = ["MemoryEstimate", "available_memory", "check_memory", "estimate_memory"]

_GIB = float(2**30)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a grid job needs (module docstring): ``operator`` held for the operator's
    lifetime, ``build`` transient while it is built, ``solver`` while ``spectrum`` runs;
    ``total`` = operator + max(build, solver), the peak. ``n``: nodes per axis; ``k``."""

    n: tuple[int, ...]
    k: int
    operator: int
    build: int
    solver: int

    @property
    def total(self) -> int:
        return self.operator + max(self.build, self.solver)

    def __str__(self) -> str:
        return (f"{self.total / _GIB:.3g} GiB for a {'x'.join(map(str, self.n))} grid with k = {self.k} "
                f"(operator {self.operator / _GIB:.3g} GiB, solver {self.solver / _GIB:.3g} GiB)")


def _levels(n: tuple[int, ...]) -> list[int]:
    """Unknowns of the multigrid levels, finest first (the hierarchy's coarsening rule)."""
    sizes = [math.prod(n)]
    while sizes[-1] > COARSEST_SIZE and min(n) >= 7:
        n = tuple((a - 1) // 2 for a in n)
        sizes.append(math.prod(n))
    return sizes


def estimate_memory(n: Sequence[int] | int, k: int = 3, dim: int | None = None,
                    dtype: torch.dtype = torch.float64, backend: str = "torch") -> MemoryEstimate:
    """The memory of a :class:`ScoreHamiltonian` on a grid of ``n`` nodes per axis (an int
    with ``dim``, or one per axis) and of ``spectrum(H, k)`` with the default solver, in
    bytes (module docstring for the count). ``dtype``: the operator's; ``backend``: the
    operator's ("torch", the larger count, or "numba")."""
    if backend not in ("torch", "numba"):
        raise ValueError(f"backend must be 'torch' or 'numba'; got {backend!r}")
    n = (int(n),) * (dim or 1) if isinstance(n, int) else tuple(int(a) for a in n)
    if not n or min(n) < 1 or k < 1:
        raise ValueError(f"estimate_memory needs n >= 1 per axis and k >= 1; got n={n}, k={k}")
    b = torch.finfo(dtype).bits // 8
    w, m, d = torch.finfo(WORK_DTYPE).bits // 8, k + GUARD, len(n)
    sizes = _levels(n)
    N = sizes[0]
    operator = N * (3 * w + 2 * b)
    build = N * w * (4 * d + 5)
    numba = backend == "numba"
    smoothed = sum(sizes[:-1]) * (2 if numba else 3) * m * b
    multigrid = sum(sizes) * b + smoothed + sum(sizes[1:]) * (3 * w + 2 * b + m * b)
    update = 0 if numba else 2 * m * -(-N // UPDATE_CHUNKS) * w
    solver = N * w * (6 * m + 3 * m + 1) + update + multigrid
    return MemoryEstimate(n, k, operator, build, solver)


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes free for a new job on ``device``: ``torch.cuda.mem_get_info`` on a CUDA device,
    else the host's ``MemAvailable`` (/proc/meminfo; free physical pages where it is absent)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(needed: int, what: str, device: torch.device | str | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` when ``needed`` bytes (described by ``what``,
    e.g. ``str(estimate_memory(...))``) exceed :func:`available_memory` of ``device``."""
    free = available_memory(device)
    if needed > free:
        raise InsufficientMemoryError(
            f"{what} needs about {needed / _GIB:.3g} GiB but only {free / _GIB:.3g} GiB are available on "
            f"{torch.device(device if device is not None else 'cpu')}; use a coarser grid, fewer eigenvalues "
            "or a larger device"
        )
