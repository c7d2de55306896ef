"""Benchmark: batched spectra of the Score Hamiltonian at B times against a loop of ``spectrum``.

Problem: p_0 = the four-mode benchmark mixture (``examples.four_mode_benchmark(2)``: equal
weights at (+-1.5, +-1.5), covariance diag(0.3^2, 0.6^2)) under OU, at B times log-spaced in
[1e-3, 1]; H_t = -Laplacian_h + V_t (order 2, potential form) on an n^2 grid over the union of
the boxes holding all but 1e-12 of p_t at every time benchmarked (the same grid for every B).

For each B (default 1, 4, 16), in one process and one after the other:
- ``batch_spectrum(HamiltonianBatch(...), k)`` (batched LOBPCG, Fourier preconditioner);
- a loop of ``spectrum(H_t, k)`` over the same times, H_t a default ``ScoreHamiltonian``
  (backend "auto") and the default solver (LOBPCG, multigrid preconditioner with nested
  iteration on the CPU);
- a loop of ``spectrum(H_t, k, preconditioner="fourier")``: the same preconditioner as the batch,
  so that the ratio shows what batching itself gains.
Reported: solve wall times (operator builds excluded, given apart), their ratios, matvec
columns summed over the B members (``work`` too for the default loop: multigrid levels in fine
matvec equivalents), the largest relative difference of the batch's gap lambda_1 - lambda_0
from the default loop's next to the largest relative sum of their error bounds, whether every
result converged, and the load average around each B (the timings of a shared machine are only
comparable within one run).

Usage: python analysis/bench_batch.py [--n 256] [--batches 1 4 16] [--k 2] [--device cuda]
Writes results.json and results.md into --out (default analysis/out/bench_batch/, ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from scorehamiltonian import (
    OU,
    ExactScore,
    Grid,
    HamiltonianBatch,
    ScoreHamiltonian,
    batch_spectrum,
    box_over_times,
    spectrum,
)
from scorehamiltonian.score.examples import four_mode_benchmark

ROOT = Path(__file__).resolve().parents[1]


def times_for(B: int) -> list[float]:
    """B times log-spaced in [1e-3, 1] (1e-3 alone for B = 1)."""
    return np.logspace(-3.0, 0.0, B).tolist()


def run_batch(score: ExactScore, grid: Grid, B: int, args: argparse.Namespace) -> dict:
    """The batched solve and both loops for B times; their figures."""
    times = times_for(B)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    batch = HamiltonianBatch(score, times, grid, device=args.device)
    build_batch = time.perf_counter() - start
    batched = batch_spectrum(batch, k=args.k, tol=args.tol, generator=torch.Generator().manual_seed(args.seed))
    del batch
    start = time.perf_counter()
    operators = [ScoreHamiltonian(score, t, grid, device=args.device) for t in times]
    build_loop = time.perf_counter() - start
    loops = {}
    for name, options in (("default", {}), ("fourier", {"preconditioner": "fourier"})):
        loops[name] = [spectrum(H, k=args.k, tol=args.tol, generator=torch.Generator().manual_seed(args.seed),
                                **options) for H in operators]
    batch_seconds = batched[0].wall_time
    loop_seconds = {name: sum(r.wall_time for r in results) for name, results in loops.items()}
    gap_difference = [abs(b.gap - d.gap) / d.gap for b, d in zip(batched, loops["default"])]
    gap_bound = [(b.gap_error + d.gap_error) / d.gap for b, d in zip(batched, loops["default"])]
    members = [
        {"t": t, "batch_gap": b.gap, "batch_gap_error": b.gap_error, "batch_matvecs": b.n_matvec,
         "batch_converged": bool(b.converged.all()), "loop_gap": d.gap, "loop_gap_error": d.gap_error,
         "loop_matvecs": d.n_matvec, "loop_work": d.work, "loop_seconds": d.wall_time, "loop_method": d.method,
         "fourier_matvecs": f.n_matvec, "fourier_seconds": f.wall_time, "fourier_gap": f.gap}
        for t, b, d, f in zip(times, batched, loops["default"], loops["fourier"])
    ]
    return {
        "B": B, "n": args.n, "N": grid.size, "k": args.k, "tol": args.tol, "device": str(args.device),
        "threads": torch.get_num_threads(), "build_batch_seconds": build_batch, "build_loop_seconds": build_loop,
        "batch_seconds": batch_seconds, "loop_default_seconds": loop_seconds["default"],
        "loop_fourier_seconds": loop_seconds["fourier"],
        "batch_matvecs": sum(r.n_matvec for r in batched),
        "loop_default_matvecs": sum(r.n_matvec for r in loops["default"]),
        "loop_default_work": sum(r.work for r in loops["default"]),
        "loop_fourier_matvecs": sum(r.n_matvec for r in loops["fourier"]),
        "max_relative_gap_difference": max(gap_difference), "max_relative_gap_bound": max(gap_bound),
        "all_converged": all(bool(r.converged.all()) for r in [*batched, *loops["default"], *loops["fourier"]]),
        "method": batched[0].method.split(" at t=")[0], "load_before": load_before,
        "load_after": os.getloadavg()[0], "members": members,
    }


def markdown(rows: list[dict]) -> str:
    head = ("| B | grid | device | batch (s) | loop default (s) | loop / batch | loop fourier (s) | loop fourier / batch "
            "| matvecs batch | matvecs loop default (work) | matvecs loop fourier | max rel. gap diff. | "
            "max rel. gap bound | all converged | builds batch / loop (s) | load |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['B']} | {r['n']}^2 | {r['device']} | {r['batch_seconds']:.2f} | {r['loop_default_seconds']:.2f} | "
        f"{r['loop_default_seconds'] / r['batch_seconds']:.2f} | {r['loop_fourier_seconds']:.2f} | "
        f"{r['loop_fourier_seconds'] / r['batch_seconds']:.2f} | {r['batch_matvecs']} | "
        f"{r['loop_default_matvecs']} ({r['loop_default_work']:.0f}) | {r['loop_fourier_matvecs']} | "
        f"{r['max_relative_gap_difference']:.1e} | {r['max_relative_gap_bound']:.1e} | {r['all_converged']} | "
        f"{r['build_batch_seconds']:.2f} / {r['build_loop_seconds']:.2f} | "
        f"{r['load_before']:.1f}-{r['load_after']:.1f} |"
        for r in rows
    ]
    note = ("Per member (gap = lambda_1 - lambda_0 of the batch and of the default loop; matvecs of the batch / "
            "the default loop / the Fourier loop):")
    per_member = ["", note, "", "| B | t | gap batch | gap loop | rel. diff. | matvecs | loop method |",
                  "|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in r["members"]:
            per_member.append(
                f"| {r['B']} | {m['t']:.4g} | {m['batch_gap']:.10e} | {m['loop_gap']:.10e} | "
                f"{abs(m['batch_gap'] - m['loop_gap']) / m['loop_gap']:.1e} | {m['batch_matvecs']} / "
                f"{m['loop_matvecs']} / {m['fourier_matvecs']} | {m['loop_method']} |"
            )
    return head + "\n".join(lines) + "\n" + "\n".join(per_member) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="nodes per axis")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], help="numbers of times B")
    parser.add_argument("--k", type=int, default=2, help="eigenvalues per operator")
    parser.add_argument("--tol", type=float, default=1e-8, help="tol of every solve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--out", default=str(ROOT / "analysis" / "out" / "bench_batch"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    score = ExactScore(four_mode_benchmark(2), OU())
    grid = Grid(*box_over_times(score.mixture, score.process, sorted({t for B in args.batches for t in times_for(B)})),
                args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for B in args.batches:
        rows.append(run_batch(score, grid, B, args))
        print(json.dumps({key: value for key, value in rows[-1].items() if key != "members"}), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
        (out / "results.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
