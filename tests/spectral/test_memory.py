"""The memory estimate against the measured peak, and jobs refused before they allocate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from scorehamiltonian import (
    OU,
    ExactScore,
    GaussianMixture,
    Grid,
    ScoreHamiltonian,
    spectral_gap,
    spectrum,
)
from scorehamiltonian.common.errors import InsufficientMemoryError
from scorehamiltonian.score.examples import four_mode_benchmark
from scorehamiltonian.spectral import gap, memory
from scorehamiltonian.spectral.memory import estimate_memory

# One job in a fresh interpreter: the four-mode mixture of analysis/bench_gap.py at t = 0
# on an n^d grid, built and solved by spectrum(H, k) after a small warm-up job with multigrid
# levels on the numba backend that the big job takes (numba's compilation, a few tens of MB on
# a clean clone without its cache, and torch's first allocations are not the job's). The peak RSS above the level
# before the job is sampled every millisecond. MALLOC_MMAP_THRESHOLD_ fixes glibc's mmap
# threshold so that freed arrays go back to the system and RSS follows the live arrays.
JOB = textwrap.dedent("""
    import json, os, sys, threading, warnings
    import torch
    from scorehamiltonian import OU, ExactScore, Grid, ScoreHamiltonian, box_from_mixture, spectrum
    from scorehamiltonian.score.examples import four_mode_benchmark

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dim, n, k = (int(a) for a in sys.argv[1:4])

    def operator(n, backend="auto"):
        mixture = four_mode_benchmark(dim)
        lo, hi = box_from_mixture(mixture, 1e-12)
        return ScoreHamiltonian(ExactScore(mixture, OU()), 0.0, Grid(lo, hi, n), backend=backend)

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    spectrum(operator(65 if dim == 2 else 33, backend="numba"), k=k, tol=1e-6)
    base = peak = rss()
    done = threading.Event()

    def sample():
        global peak
        while not done.wait(0.001):
            peak = max(peak, rss())

    thread = threading.Thread(target=sample)
    thread.start()
    result = spectrum(operator(n), k=k, tol=1e-6)
    done.set()
    thread.join()
    print(json.dumps({"peak": max(peak, rss()) - base, "converged": bool(result.converged.all())}))
""")


def measured_peak(dim: int, n: int, k: int) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", JOB, str(dim), str(n), str(k)], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["converged"]
    return record["peak"]


@pytest.mark.parametrize("dim, n, k", [(2, 383, 3), pytest.param(2, 511, 1, marks=pytest.mark.slow),
                                       pytest.param(3, 63, 3, marks=pytest.mark.slow)])
def test_estimate_is_within_20_percent_of_the_measured_peak(dim, n, k):
    estimate = estimate_memory((n,) * dim, k, backend="numba").total
    peak = measured_peak(dim, n, k)
    assert abs(estimate - peak) <= 0.2 * peak, (estimate, peak)


def test_estimate_counts_the_block_size_and_the_operator_dtype():
    small, large = estimate_memory((255, 255), 1), estimate_memory((255, 255), 6)
    N = 255**2
    # Each extra eigenvalue adds one vector to each of the 9 float64 LOBPCG rows, 2 x N / 8
    # to the Rayleigh-Ritz update's buffer, 3 multigrid work rows per level above the
    # coarsest (their sum N_l between N and 4N/3 in 2D) and 1 restricted-residual row per
    # level below the finest (between N/5 and N/3); N / 8 rounds up, by at most 7 / 8 each.
    per_column = large.solver - small.solver
    rows = 9 * 8 + 2 * 8 / 8
    assert 5 * N * (rows + 3 * 8 + 8 / 5) < per_column < 5 * N * (rows + 3 * 8 * 4 / 3 + 8 / 3) + 5 * 2 * 8
    assert estimate_memory((255, 255), 3, dtype=torch.float32).operator == N * (3 * 8 + 2 * 4)
    with pytest.raises(ValueError, match="n >= 1"):
        estimate_memory((0, 5))
    assert estimate_memory(31, dim=3).n == (31, 31, 31)


def four_modes() -> ExactScore:
    return ExactScore(four_mode_benchmark(), OU())


def test_jobs_that_will_not_fit_are_refused_with_the_figures(monkeypatch):
    grid = Grid([-4.0, -4.0], [4.0, 4.0], 63)
    H = ScoreHamiltonian(four_modes(), 0.5, grid)
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 2**20)
    with pytest.raises(InsufficientMemoryError, match=r"spectrum\(k=3\) on 3969 unknowns needs about .* GiB but only "
                                                      r"0.000977 GiB are available on cpu"):
        spectrum(H, k=3)
    with pytest.raises(InsufficientMemoryError, match="the operator on the .* grid needs about"):
        ScoreHamiltonian(four_modes(), 0.5, Grid([-4.0, -4.0], [4.0, 4.0], 255))
    assert spectrum(H, k=3, method="eigsh").converged.all()


def test_spectral_gap_stops_refining_at_the_memory_it_has(monkeypatch):
    # Room for the 1D grids of 63 - 181 nodes, not for 255: the result keeps the grids
    # solved, is flagged, and the warning says memory stopped it.
    score = ExactScore(GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.25, 0.25]), OU())
    room = estimate_memory((200,), 3).total
    for module in (memory, gap):
        monkeypatch.setattr(module, "available_memory", lambda device=None: room)
    with pytest.warns(Warning, match=r"before the \(255,\) grid .* GiB free"):
        result = spectral_gap(score, 1.0, rtol=1e-12)
    assert not result.converged
    assert [lv.n for lv in result.levels][-1] == (181,)
