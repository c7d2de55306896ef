"""Benchmark: the spectral gap of the Score Hamiltonian on fine grids, three solvers.

Problem: p_0 = the mixture of four Gaussians at (+-1.5, +-1.5), each with covariance
diag(0.3^2, 0.6^2), equal weights, at t = 0 under OU; H = -Laplacian_h + V (order 2,
potential form) on the box holding all but 1e-12 of the mass, n^2 nodes. In 3D (ours only)
the modes sit at (+-1.5, +-1.5, 0) with covariance diag(0.3^2, 0.6^2, 0.45^2).

Solvers, each in its own processes (so that one can be abandoned after --time-limit seconds
and peak memory is its own; ours after one warm-up solve on a small grid, which loads numba's
compiled kernels), one that times it and, when that finished, one that measures its memory
(``run_phase``): ``spectrum(H, k=2)`` (our default), scipy eigsh shift-invert
(SuperLU of H - sigma I, sigma just below lambda_0: the ground state's Rayleigh quotient
minus max(residual, 1% of its distance to the Gershgorin bound)), and eigsh(which="SA").
Reported: wall time and CPU time of the solve (operator build excluded; ours: the solve with
the median time of ``--repeats``, default 3, in the same process, all times in results.json;
the others once: they take seconds to minutes, and their timings vary far less than their
distance from ours), matvec count
(solves for shift-invert), work in fine-matvec equivalents (ours: the multigrid
preconditioner's level matvecs and coarse solves and nested iteration's coarse grids
included, each weighted by its unknowns, ``SpectrumResult.work``; the others: their
matvec count), peak RSS increase during one solve in the memory process (sampled every 20
ms; glibc's mmap threshold fixed by MALLOC_MMAP_THRESHOLD_ so that freed arrays leave RSS;
the timing process keeps the allocator's defaults, which reuse freed arrays as a user's run
does, and has no sampling thread; results.json keeps the memory run's time too) next to our solver's
:func:`~scorehamiltonian.spectral.memory.estimate_memory`, the gap
lambda_1 - lambda_0 and its relative error bound (ours) or relative difference from ours,
time / (work x one bare single-column matvec), and the load average of the machine around
each run (other processes: the timings of a shared machine are only comparable within one
run). ``--threads`` sets torch's and numba's threads (0: their defaults); SuperLU and
ARPACK run on one thread.

One bare matvec, the reference of that ratio, is timed the way the solver meets it: cold,
its operands not in cache (``cold_matvec_samples``: single-column matvecs round-robin over
separately allocated vector pairs that together hold four times the last-level cache, each
call timed alone). Every matvec of the solver, and every smoothing sweep its work counts,
reads vectors that blocks of m columns have pushed out of cache since they were written. A
matvec repeated on one vector pair (``warm_matvec_samples``, the median of 11 calls on each
of 5 pairs) reads them from the last-level cache instead when its arrays fit there (at 512^2
three arrays of 2 MiB, against the 8 MiB L3 of the machine this was written on), which made
it up to twice as fast, by an amount that changed from one process to the next with where
the pages landed. Both are reported, each the median of samples taken just before and just
after the solve (so that a drift of the shared machine's speed moves both sides), and so are
both ratios.

Usage: python analysis/bench_gap.py --sizes 256 512 1024 [--dim3 128] [--out DIR]
Writes results.json and results.md into --out (default analysis/out/bench_gap/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("ours", "eigsh-shift-invert", "eigsh-SA")


def build_operator(n: int, dim: int):
    """The benchmark's ScoreHamiltonian (order 2, potential form) on an n^dim grid."""
    from scorehamiltonian import OU, ExactScore, Grid, ScoreHamiltonian, box_from_mixture
    from scorehamiltonian.score.examples import four_mode_benchmark

    mixture = four_mode_benchmark(dim)
    score = ExactScore(mixture, OU())
    lo, hi = box_from_mixture(mixture, 1e-12)
    return ScoreHamiltonian(score, 0.0, Grid(lo, hi, n), order=2)


class PeakRSS:
    """Peak resident set size above the level at entry, sampled every 20 ms (bytes)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def increase_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def warm_matvec_samples(H, pairs: int = 5, repeats: int = 11) -> list[float]:
    """Seconds of one single-column matvec into a preallocated output, repeated on one vector
    pair (its operands cache-resident when they fit): for each of ``pairs`` separately
    allocated (input, output) pairs, the median of ``repeats`` calls."""
    import torch

    medians = []
    for _ in range(pairs):
        v = torch.randn(H.shape[0], dtype=torch.float64)
        out = torch.empty_like(v)
        H.matvec(v, out=out)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            H.matvec(v, out=out)
            times.append(time.perf_counter() - start)
        medians.append(statistics.median_high(times))
    return medians


def last_level_cache_bytes() -> int:
    """The last-level cache's size (L3, else L2) from sysconf; 32 MiB when it does not say."""
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        size = os.sysconf(name) if name in os.sysconf_names else 0
        if size > 0:
            return size
    return 32 * 2**20


def cold_matvec_samples(H, rounds: int = 5) -> list[float]:
    """Seconds of single-column matvecs into preallocated outputs with operands out of
    cache: (input, output) pairs that together hold four times the last-level cache (at
    least 4 pairs), each called once per round, round-robin, each call timed alone; after a
    first round that faults the pages in, ``rounds`` rounds."""
    import torch

    pair_bytes = 2 * H.shape[0] * 8
    count = max(4, -(-4 * last_level_cache_bytes() // pair_bytes))
    pairs = [(torch.randn(H.shape[0], dtype=torch.float64), torch.empty(H.shape[0], dtype=torch.float64))
             for _ in range(count)]
    for v, out in pairs:
        H.matvec(v, out=out)
    times = []
    for _ in range(rounds):
        for v, out in pairs:
            start = time.perf_counter()
            H.matvec(v, out=out)
            times.append(time.perf_counter() - start)
    return times


def bare_matvec_samples(H) -> dict[str, list[float]]:
    """Cold and warm single-column matvec times (seconds) of H (module docstring)."""
    return {"cold": cold_matvec_samples(H), "warm": warm_matvec_samples(H)}


def shift_below(H) -> float:
    """sigma just below lambda_0 from the ground state (the same rule as our solver)."""
    g = H.ground_state.double()
    Hg = H.matvec(g)
    rho = float(g @ Hg)
    lo = H.spectral_bounds()[0]
    return rho - max(float((Hg - rho * g).norm()), 0.01 * (rho - lo))


def solve(solver: str, H, tol: float, repeats: int = 1) -> dict:
    """Run one solver on H (ours ``repeats`` times, the figures of the solve with the median
    time reported); return its figures (gap, matvecs, seconds)."""
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    from scorehamiltonian.spectral.eigensolvers import spectrum

    if solver == "ours":
        runs = []
        for _ in range(repeats):
            cpu = time.process_time()
            r = spectrum(H, k=2, tol=tol)
            runs.append((r.wall_time, time.process_time() - cpu, r))
        seconds, cpu, r = sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2]
        return {"seconds": seconds, "seconds_each": [run[0] for run in runs], "cpu_seconds": cpu,
                "matvecs": r.n_matvec, "work": r.work, "gap": r.gap, "gap_error": r.gap_error,
                "converged": all(bool(run[2].converged.all()) for run in runs), "method": r.method,
                "eigenvalues": r.eigenvalues.tolist()}
    A = H.to_scipy()
    count = [0]
    start, cpu = time.perf_counter(), time.process_time()
    if solver == "eigsh-shift-invert":
        sigma = shift_below(H)
        lu = spla.splu((A - sigma * sp.identity(A.shape[0], format="csc")).tocsc())

        def solve_once(x):
            count[0] += 1
            return lu.solve(x)

        opinv = spla.LinearOperator(A.shape, matvec=solve_once, dtype=np.float64)
        w = spla.eigsh(A, k=2, sigma=sigma, which="LM", OPinv=opinv, return_eigenvectors=False)
    else:
        def product(x):
            count[0] += 1
            return A @ x

        w = spla.eigsh(spla.LinearOperator(A.shape, matvec=product, dtype=np.float64), k=2, which="SA",
                       return_eigenvectors=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    w = np.sort(w)
    return {"seconds": seconds, "cpu_seconds": cpu, "matvecs": count[0], "work": count[0], "gap": float(w[1] - w[0]),
            "converged": True, "method": solver, "eigenvalues": w.tolist()}


def warm_up(dim: int) -> None:
    """Our solver once on a small grid with multigrid levels, large enough for the parallel
    passes (257^2, 41^3: over ``PARALLEL_MIN_SIZE`` values): numba loads its compiled kernels
    then, so neither their loading time nor their memory enters the timed run."""
    from scorehamiltonian.spectral.eigensolvers import spectrum

    spectrum(build_operator(257 if dim == 2 else 41, dim), k=2, tol=1e-3)


def worker(args: argparse.Namespace) -> None:
    """Child process: build H, then either (``--phase time``) time the bare matvec before and
    after the solver's runs, or (``--phase memory``) run the solver once inside
    :class:`PeakRSS`; write JSON."""
    import numba
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    if args.worker == "ours":
        warm_up(args.dim)
    start = time.perf_counter()
    H = build_operator(args.n, args.dim)
    build = time.perf_counter() - start
    if args.phase == "memory":
        with PeakRSS() as mem:
            seconds = solve(args.worker, H, args.tol)["seconds"]
        row = {"memory_mib": mem.increase_mib, "seconds_memory_run": seconds}
        if args.worker == "ours":
            from scorehamiltonian.spectral.memory import estimate_memory

            row["memory_estimate_mib"] = estimate_memory(H.grid.n, k=2).solver / 2**20
        Path(args.result).write_text(json.dumps(row))
        return
    before = bare_matvec_samples(H)
    row = {"solver": args.worker, "n": args.n, "dim": args.dim, "N": H.shape[0], "build_seconds": build,
           "threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
           "load_before": os.getloadavg()[0]}
    row.update(solve(args.worker, H, args.tol, args.repeats))
    after = bare_matvec_samples(H)
    for kind, name in (("cold", "bare_matvec"), ("warm", "bare_matvec_warm")):
        row[f"{name}_seconds"] = statistics.median_high(before[kind] + after[kind])
        row[f"{name}_before_after_seconds"] = [statistics.median_high(before[kind]),
                                               statistics.median_high(after[kind])]
    row["load_after"] = os.getloadavg()[0]
    row["time_per_matvec_ratio"] = row["seconds"] / (row["work"] * row["bare_matvec_seconds"])
    row["time_per_warm_matvec_ratio"] = row["seconds"] / (row["work"] * row["bare_matvec_warm_seconds"])
    Path(args.result).write_text(json.dumps(row))


def run_phase(solver: str, n: int, dim: int, phase: str, args: argparse.Namespace) -> dict | str:
    """One phase of ``solver`` in a child process, abandoned after the time limit (+ build
    time): its JSON row, or why there is none. The memory phase runs with glibc's mmap
    threshold fixed (MALLOC_MMAP_THRESHOLD_, so that freed arrays leave RSS); the time phase
    with the allocator's defaults, as a user runs it (every array of 64 KiB or more a fresh
    mapping cost our solver 6-17 % of its time)."""
    result = Path(args.out) / f"_{solver}_{dim}d_{n}_{phase}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", solver, "--phase", phase, "--n", str(n), "--dim", str(dim),
           "--result", str(result), "--tol", str(args.tol), "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if phase == "memory" else None
    budget = args.time_limit + args.build_allowance * (n**dim / 2**20)
    try:
        subprocess.run(cmd, check=True, timeout=budget, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return f"did not finish within {args.time_limit:.0f} s (killed)"
    except subprocess.CalledProcessError as exc:
        return f"failed: {exc}"
    row = json.loads(result.read_text())
    result.unlink()
    return row


def run_one(solver: str, n: int, dim: int, args: argparse.Namespace) -> dict:
    """``solver``'s time phase, then (when that finished) its memory phase, merged."""
    row = run_phase(solver, n, dim, "time", args)
    if isinstance(row, str):
        return {"solver": solver, "n": n, "dim": dim, "N": n**dim, "finished": False, "note": row}
    memory = run_phase(solver, n, dim, "memory", args)
    row.update(memory if isinstance(memory, dict) else {"memory_mib": float("nan"), "memory_note": memory})
    row["finished"] = True
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| grid | solver | time (s) | CPU (s) | matvecs | work | bare matvec, cold / warm (ms) | "
            "peak RSS + (MiB) | estimate (MiB) | gap | rel. gap error | time / (work x bare matvec), cold / warm | "
            "load | note |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    ours = {(r["n"], r["dim"]): r for r in rows if r["solver"] == "ours" and r.get("finished")}
    lines = []
    for r in rows:
        grid = "x".join([str(r["n"])] * r["dim"])
        if not r.get("finished"):
            lines.append(f"| {grid} | {r['solver']} | - | - | - | - | - | - | - | - | - | - | - | {r['note']} |")
            continue
        ref = ours.get((r["n"], r["dim"]))
        if r["solver"] == "ours":
            err, note = r["gap_error"] / r["gap"], f"bound; {r['method']}; converged={r['converged']}"
        else:
            err, note = (abs(r["gap"] - ref["gap"]) / ref["gap"] if ref else float("nan")), "difference from ours"
        estimate = f"{r['memory_estimate_mib']:.0f}" if "memory_estimate_mib" in r else "-"
        lines.append(
            f"| {grid} | {r['solver']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['matvecs']} | "
            f"{r['work']:.0f} | {1e3 * r['bare_matvec_seconds']:.2f} / {1e3 * r['bare_matvec_warm_seconds']:.2f} | "
            f"{r['memory_mib']:.0f} | {estimate} | {r['gap']:.10e} | {err:.1e} | "
            f"{r['time_per_matvec_ratio']:.1f} / {r['time_per_warm_matvec_ratio']:.1f} | "
            f"{r['load_before']:.1f}-{r['load_after']:.1f} | {note} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="2D grids n x n")
    parser.add_argument("--dim3", type=int, default=128, help="3D grid n^3 for ours alone (0: skip)")
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds before a solver is abandoned")
    parser.add_argument("--build-allowance", type=float, default=90.0, help="extra seconds per 2^20 nodes for the build")
    parser.add_argument("--tol", type=float, default=5e-7, help="our tol: the gap comes with relative error <= 2 tol")
    parser.add_argument("--threads", type=int, default=0, help="torch and numba threads (0: their defaults)")
    parser.add_argument("--repeats", type=int, default=3, help="solves of ours per grid (the median reported)")
    parser.add_argument("--out", default=str(ROOT / "analysis" / "out" / "bench_gap"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = [(s, n, 2) for n in args.sizes for s in args.solvers]
    jobs += [("ours", args.dim3, 3)] if args.dim3 else []
    rows = []
    for solver, n, dim in jobs:
        rows.append(run_one(solver, n, dim, args))
        print(json.dumps(rows[-1]), flush=True)
        (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
        (Path(args.out) / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
