"""Benchmark of the probability-flow energy's accuracy on request (issue 23) against exact values.

On the mixtures "asymmetric", "bimodal", "trimodal" (1D) and "four_mode_2d" (2D), under OU (T = 10)
and VE (sigma 0.01 -> 1e4), at points drawn from the mixture, with the exact score (RK4, exact divergence); the truth is -log p_{t_min}(x)
(ExactScore.log_prob; under VE the data smoothed by N(0, sigma_min^2)):

1. The default, energy(score, None, x) (atol = 1e-3): the largest true error, the median of
   bar / true error, the coverage (share of points with |E - truth| <= bar), the share of
   trusted bars, of points that reached the request, the score evaluations per point (total,
   of the returned solve) and the warnings issued.
2. atol = 1e-5 with the exact log p_T as ``log_prior`` (so that the request is about the
   integrator, not the Gaussian reference law, whose error under OU(10) is up to 1e-4): the
   same figures, against the best fixed schedule that reaches it: for EDM (rho = 7), uniform
   in t and cosine grids, the smallest N among the refinement's allowed counts (four per
   octave) at which the largest true error is <= 1e-5, costing 4N evaluations for the value
   alone and 7N + 1 with its step-doubling estimate.
3. dopri5 at solver tolerances 1e-5: coverage, median bar / true, share flagged untrusted.
4. The fixed default grid (EDM, 128 steps): coverage, median bar / true, trusted share.

Usage: python analysis/energy_accuracy.py [--quick | --points N] [--out DIR]
Writes results.md and results.json into DIR (default analysis/out/energy_accuracy/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorehamiltonian import OU, VE, ExactScore, example
from scorehamiltonian.sampling.schedules import standard_schedule
from scorehamiltonian.thermo.energy import energy
from scorehamiltonian.thermo.refinement import allowed_steps

MIXTURES = ("asymmetric", "bimodal", "trimodal", "four_mode_2d")
PROCESSES = {"OU": OU(), "VE": VE(sigma_min=0.01, sigma_max=1e4)}
FIXED_FAMILIES = ("edm", "uniform", "cosine")
TIGHT = 1e-5
#: The step counts searched for the best fixed schedule (the refinement's own counts).
COUNTS = sorted({allowed_steps(n) for n in range(32, 2049)})


def _points(mixture, n: int) -> torch.Tensor:
    return mixture.sample(n, torch.Generator().manual_seed(0))


def _figures(res, truth: torch.Tensor, caught: list) -> dict[str, Any]:
    err = (res.value - truth).abs()
    return {"max_error": float(err.max()), "median_bar_over_true": float((res.error / err).median()),
            "coverage": float((err <= res.error).double().mean()),
            "trusted": float(res.trusted.double().mean()), "reached": float(res.reached.double().mean()),
            "nfe": float(res.nfe_per_point.double().mean()), "nfe_solve": float(res.nfe_solve_per_point.double().mean()),
            "warnings": [str(w.message)[:160] for w in caught]}


def _run(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = energy(*args, **kwargs)
    return res, caught


def _best_fixed(score, process, x, truth, log_prior) -> dict[str, Any]:
    """Per family, the smallest N of COUNTS whose largest true error is <= TIGHT (doubling N
    from 32 until it is, then bisection between the last two: the error falls with N on
    these grids), and the best family; None where 2048 steps do not reach it."""
    best: dict[str, Any] = {}
    for family in FIXED_FAMILIES:

        def ok(i: int, family: str = family) -> bool:
            grid = standard_schedule(family, COUNTS[i], process.t_max, process.t_min, process)
            res, _ = _run(score, process, x, grid, log_prior=log_prior)
            return float((res.value - truth).abs().max()) <= TIGHT

        doubling = [COUNTS.index(n) for n in (32, 64, 128, 256, 512, 1024, 2048)]
        hi = next((i for i in doubling if ok(i)), None)
        if hi is None:
            best[family] = None
            continue
        lo = max(0, doubling[doubling.index(hi) - 1] + 1) if hi != doubling[0] else 0
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
        best[family] = COUNTS[lo]
    reached = {k: v for k, v in best.items() if v is not None}
    family = min(reached, key=reached.get) if reached else None
    n = reached.get(family)
    return {"per_family_N": best, "family": family, "N": n,
            "nfe_value": None if n is None else 4 * n, "nfe_with_estimate": None if n is None else 7 * n + 1}


def case(mixture_name: str, process_name: str, n_points: int) -> dict[str, Any]:
    mixture, process = example(mixture_name), PROCESSES[process_name]
    score = ExactScore(mixture, process)
    x = _points(mixture, n_points)
    truth = -score.log_prob(x, process.t_min)
    row: dict[str, Any] = {"mixture": mixture_name, "process": process_name, "points": x.shape[0]}
    start = time.perf_counter()
    res, caught = _run(score, process, x)
    row["default"] = _figures(res, truth, caught)

    def log_prior(y: torch.Tensor) -> torch.Tensor:
        return score.log_prob(y, process.t_max)

    res, caught = _run(score, process, x, atol=TIGHT, log_prior=log_prior)
    row["tight"] = _figures(res, truth, caught)
    row["fixed"] = _best_fixed(score, process, x, truth, log_prior)
    res, caught = _run(score, process, x, method="dopri5", solver_rtol=TIGHT, solver_atol=TIGHT)
    row["dopri5"] = _figures(res, truth, caught)
    res, caught = _run(score, process, x, n_steps=128)
    row["edm128"] = _figures(res, truth, caught)
    row["seconds"] = time.perf_counter() - start
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        ("| mixture | process | default: max error | bar/true (median) | coverage | nfe (solve) | warnings "
        "| atol 1e-5: max error | bar/true | coverage | nfe (solve) | best fixed (N) | its 4N / 7N+1 "
        "| nfe / best 4N | nfe / best 7N+1 |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, t, f = r["default"], r["tight"], r["fixed"]
        ratio_value = "-" if f["nfe_value"] is None else f"{t['nfe'] / f['nfe_value']:.2f}"
        ratio_total = "-" if f["nfe_with_estimate"] is None else f"{t['nfe'] / f['nfe_with_estimate']:.2f}"
        lines.append(
            f"| {r['mixture']} | {r['process']} | {d['max_error']:.2e} | {d['median_bar_over_true']:.1f} | "
            f"{d['coverage']:.3f} | {d['nfe']:.0f} ({d['nfe_solve']:.0f}) | {len(d['warnings'])} | "
            f"{t['max_error']:.2e} | {t['median_bar_over_true']:.1f} | {t['coverage']:.3f} | "
            f"{t['nfe']:.0f} ({t['nfe_solve']:.0f}) | {f['family']} ({f['N']}) | {f['nfe_value']} / "
            f"{f['nfe_with_estimate']} | {ratio_value} | {ratio_total} |")
    lines += ["", ("| mixture | process | dopri5 1e-5: coverage | bar/true | trusted | EDM 128: coverage | bar/true "
              "| trusted | warnings |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, e = r["dopri5"], r["edm128"]
        lines.append(f"| {r['mixture']} | {r['process']} | {p['coverage']:.3f} | {p['median_bar_over_true']:.1f} | "
                     f"{p['trusted']:.2f} | {e['coverage']:.3f} | {e['median_bar_over_true']:.1f} | "
                     f"{e['trusted']:.2f} | {len(e['warnings'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 points per case instead of 100")
    parser.add_argument("--points", type=int, default=None, help="points per case (overrides --quick)")
    parser.add_argument("--out", type=Path, default=ROOT / "analysis" / "out" / "energy_accuracy")
    args = parser.parse_args()
    n_points = args.points or (24 if args.quick else 100)
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    for mixture_name in MIXTURES:
        for process_name in PROCESSES:
            rows.append(case(mixture_name, process_name, n_points))
            print(f"{mixture_name} {process_name}: {rows[-1]['seconds']:.0f} s", flush=True)
            (args.out / "results.json").write_text(json.dumps(rows, indent=1))
            table = _table(rows)
            (args.out / "results.md").write_text(f"# Energy accuracy on request (issue 23)\n\n{n_points} points "
                                                 f"per case\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
