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

Accuracy on request (issue 23, ``--accuracy``): the time to a requested relative accuracy
(``--rtols``, default 1e-5 and 1e-7) of the gap of the four-mode mixture at t = 0.05 (the
problem above, noised by OU), for ``spectral_gap(score, t, rtol)`` against the careful scipy
user of :func:`scipy_user_gap`, each as the first call in a fresh process (``--runs``
processes each, the median reported; numba's compiled kernels already on disk from one
unrecorded run of ours first, as a user's second script finds them). Imports and the
construction of the score are outside the timed call, in both. Every answer is checked
against the exact gap (the smaller of the two 1D factors' gaps, by the quadrature of
``tests/spectral/quadrature.py``): its true error, its bar and whether the bar covers it.
Writes accuracy.json and accuracy.md into --out, with the machine's load average
(os.getloadavg) before and after every run: the machine may be shared.
Usage: python analysis/bench_gap.py --accuracy [--rtols 1e-5 1e-7] [--runs 3]
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


ACCURACY_T = 0.05
ACCURACY_SOLVERS = ("ours", "scipy-user")


def scipy_user_gap(score, t: float, rtol: float, box: tuple[list[float], list[float]]) -> dict:
    """The careful scipy user: the potential form V = |s|^2 / 4 + div s / 2 (score and exact
    divergence from ``score.evaluate``) with the 3-point Laplacian (Dirichlet) on n^2 grids of
    the box, n + 1 = 64, 128, ..., assembled with scipy.sparse (kron), the two lowest
    eigenvalues by eigsh in shift-invert mode (SuperLU) around sigma = rho - 2 r - 1e-3, rho and
    r the Rayleigh quotient and residual of sqrt(p) on the grid (just below lambda_0, which
    is negative by O(h^2) in this form); the gaps lambda_1 - lambda_0 extrapolated by
    Richardson in h^2, R_n = g_n + (g_n - g_{n-1}) / 3, until |R_n - R_{n-1}| <= rtol R_n
    (the textbook error estimate). Returns the value, the estimate and the grids."""
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla
    import torch

    lo, hi = box
    gaps, extrapolates, grids = [], [], []
    intervals = 64
    while True:
        axes = [np.linspace(a, b, intervals + 1)[1:-1] for a, b in zip(lo, hi)]
        h = [(b - a) / intervals for a, b in zip(lo, hi)]
        mesh = np.meshgrid(*axes, indexing="ij")
        points = torch.from_numpy(np.stack([m.reshape(-1) for m in mesh], -1))
        ev = score.evaluate(points, t)
        s, div = ev.score.numpy(), ev.divergence.numpy()
        potential = 0.25 * (s**2).sum(-1) + 0.5 * div
        n = intervals - 1
        second = [sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]) / hh**2 for hh in h]
        eye = sp.identity(n)
        A = (sp.kron(second[0], eye) + sp.kron(eye, second[1]) + sp.diags(potential)).tocsc()
        log_p = ev.log_prob.numpy()
        g = np.exp(0.5 * (log_p - log_p.max()))
        g /= np.linalg.norm(g)
        Ag = A @ g
        rho = float(g @ Ag)
        sigma = rho - 2 * float(np.linalg.norm(Ag - rho * g)) - 1e-3
        w = np.sort(spla.eigsh(A, k=2, sigma=sigma, which="LM", return_eigenvectors=False))
        gaps.append(float(w[1] - w[0]))
        grids.append(n)
        if len(gaps) >= 2:
            extrapolates.append(gaps[-1] + (gaps[-1] - gaps[-2]) / 3.0)
        if len(extrapolates) >= 2:
            estimate = abs(extrapolates[-1] - extrapolates[-2])
            if estimate <= rtol * abs(extrapolates[-1]):
                return {"value": extrapolates[-1], "error": estimate, "grids": grids, "converged": True}
        intervals *= 2


def accuracy_truth() -> float:
    """The exact gap of the four-mode mixture at ACCURACY_T: the smaller of its 1D factors'
    (bimodal with means +-1.5 alpha_t and the marginal variance of each axis), by the
    inverse-iteration quadrature of tests/spectral/quadrature.py (1e-13 relative)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from scorehamiltonian import OU, ExactScore, GaussianMixture, box_from_mixture
    from scorehamiltonian.score.examples import four_mode_benchmark
    from tests.spectral.quadrature import lambda1_1d

    marginal = ExactScore(four_mode_benchmark(), OU()).marginal(ACCURACY_T)
    alpha = float(OU().alpha(ACCURACY_T))
    gaps = []
    for a in range(2):
        factor = GaussianMixture([0.5, 0.5], [-1.5 * alpha, 1.5 * alpha], [float(marginal.covs[0, a, a])] * 2)
        lo, hi = box_from_mixture(factor, 1e-15)
        gaps.append(lambda1_1d(lambda x, f=factor: f.log_prob(torch.from_numpy(x)[:, None]).numpy(), lo[0], hi[0])[0])
    return min(gaps)


def accuracy_worker(args: argparse.Namespace) -> None:
    """Child process: imports (timed), the score, then one timed call; JSON to --result."""
    start = time.perf_counter()
    import numba
    import torch

    from scorehamiltonian import OU, ExactScore, box_from_mixture, spectral_gap
    from scorehamiltonian.score.examples import four_mode_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    imports = time.perf_counter() - start
    score = ExactScore(four_mode_benchmark(), OU())
    row = {"solver": args.worker, "rtol": args.tol, "import_seconds": imports, "load_before": os.getloadavg()[0]}
    start, cpu = time.perf_counter(), time.process_time()
    if args.worker == "ours":
        result = spectral_gap(score, ACCURACY_T, rtol=args.tol)
        row.update(value=result.value, error=result.error, converged=result.converged,
                   grids=[level.n[0] for level in result.levels])
    else:
        row.update(scipy_user_gap(score, ACCURACY_T, args.tol, box_from_mixture(score.marginal(ACCURACY_T), 1e-12)))
    row.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu,
               load_after=os.getloadavg()[0], threads=torch.get_num_threads())
    Path(args.result).write_text(json.dumps(row))


def accuracy_run(solver: str, rtol: float, args: argparse.Namespace) -> dict:
    """One fresh process of ``solver`` to ``rtol``: its JSON row, or a row saying why not."""
    result = Path(args.out) / f"_accuracy_{solver}_{rtol:g}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", solver, "--phase", "accuracy", "--tol", str(rtol),
           "--threads", str(args.threads), "--result", str(result)]
    try:
        subprocess.run(cmd, check=True, timeout=args.time_limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"solver": solver, "rtol": rtol, "finished": False, "note": f"killed after {args.time_limit:.0f} s"}
    except subprocess.CalledProcessError as exc:
        return {"solver": solver, "rtol": rtol, "finished": False, "note": f"failed: {exc}"}
    row = json.loads(result.read_text())
    result.unlink()
    row["finished"] = True
    return row


def accuracy_markdown(rows: list[dict], truth: float) -> str:
    out = [f"Four-mode mixture, t = {ACCURACY_T}, exact gap {truth:.12e} (quadrature of the 1D factors).",
           "Each run is the first call in a fresh process (imports and the score outside the timed call).", "",
           ("| rtol | solver | runs: time (s) | median (s) | import (s) | grids (n per axis) | value | bar / value | "
            "true error / value | covered | load (1 min) |"),
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    medians = {}
    for rtol in sorted({r["rtol"] for r in rows}, reverse=True):
        for solver in ACCURACY_SOLVERS:
            done = [r for r in rows if r["rtol"] == rtol and r["solver"] == solver and r.get("finished")]
            if not done:
                notes = "; ".join(r.get("note", "") for r in rows if r["rtol"] == rtol and r["solver"] == solver)
                out.append(f"| {rtol:g} | {solver} | - | - | - | - | - | - | - | - | {notes} |")
                continue
            times = [r["seconds"] for r in done]
            medians[rtol, solver] = statistics.median(times)
            last = done[-1]
            true_error = abs(last["value"] - truth)
            loads = [f"{r['load_before']:.1f}-{r['load_after']:.1f}" for r in done]
            out.append(f"| {rtol:g} | {solver} | {', '.join(f'{x:.2f}' for x in times)} | {medians[rtol, solver]:.2f} | "
                       f"{statistics.median(r['import_seconds'] for r in done):.2f} | {last['grids']} | "
                       f"{last['value']:.12e} | {last['error'] / last['value']:.1e} | {true_error / truth:.1e} | "
                       f"{true_error <= last['error']} | {', '.join(loads)} |")
    out += ["", "| rtol | scipy user / ours (medians) |", "|---|---|"]
    for rtol in sorted({r for r, _ in medians}, reverse=True):
        if (rtol, "ours") in medians and (rtol, "scipy-user") in medians:
            out.append(f"| {rtol:g} | {medians[rtol, 'scipy-user'] / medians[rtol, 'ours']:.1f}x |")
    return "\n".join(out) + "\n"


def accuracy_main(args: argparse.Namespace) -> None:
    """The accuracy benchmark (module docstring): a warm-up run of ours, then ``--runs``
    fresh processes per solver and rtol, interleaved, the table after each."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    truth = accuracy_truth()
    accuracy_run("ours", max(args.rtols), args)  # numba's kernels compiled and cached on disk
    rows = []
    for _ in range(args.runs):
        for rtol in args.rtols:
            for solver in ACCURACY_SOLVERS:
                rows.append(accuracy_run(solver, rtol, args))
                print(json.dumps(rows[-1]), flush=True)
                (Path(args.out) / "accuracy.json").write_text(json.dumps({"truth": truth, "runs": rows}, indent=1))
                (Path(args.out) / "accuracy.md").write_text(accuracy_markdown(rows, truth))
    print(accuracy_markdown(rows, truth))


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
    parser.add_argument("--accuracy", action="store_true", help="time to --rtols against the scipy user (issue 23)")
    parser.add_argument("--rtols", type=float, nargs="+", default=[1e-5, 1e-7], help="accuracies of --accuracy")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per solver and rtol in --accuracy")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("time", "memory", "accuracy"), default="time", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (accuracy_worker if args.phase == "accuracy" else worker)(args)
        return
    if args.accuracy:
        accuracy_main(args)
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
