"""Solver schedules (issue 22): every baseline against the designed schedule, exact TV and KL, with design times.

Targets: the built-in mixtures (scorehamiltonian.score.examples: asymmetric, trimodal,
four_mode_2d) on the OU process, t_max = 5, t_min = 1e-3, runs from the prior
N(0, (alpha_T^2 + sigma_T^2) I) ending at t_min (``final="t_min"``). Solvers: heun,
dpmpp-2m, euler (the libraries' variables, :mod:`scorehamiltonian.sampling.solvers`); NFE in
{5, 10, 20} (Heun: NFE / 2 steps). Schedules: every baseline of
scorehamiltonian.sampling.baselines with the most steps whose run costs at most the NFE
(the process rules; with ``--model-rules`` also AYS-KLUB with 1000 draws, OSS with a 40-step
teacher and 200 draws, the spectral rules from the exact gap and adiabatic speed at 33
log-spaced times, in 1D only, for time), and
the row "designed": :func:`design_steps` (exact TV objective, Powell from the best process
baseline, ``--max-time`` seconds per design, default 30). Judge: judge_solver (exact law on the
grid, mass kept): TV, KL(q || p_t_min), the error bound; ``*`` marks a judgement that is not
resolved (a map that folds space, a coarse grid, lost mass; reasons in the json).

Summary table: per target, solver and NFE the best baseline (by the judge's TV), the designed
TV, their ratio (the issue's target: <= 1/2 on Heun and DPM-Solver++(2M) at NFE 10 and 20,
never > 1 on easy cases), the design's time and whether Powell converged before max_time.
Timings are wall times on whatever machine runs this (2 shared cores when first run: noisy).

Run: ``python analysis/solver_schedules.py`` (all three targets, process rules; about 20 min on 2
busy cores; ``--model-rules`` adds about 4 min per solver and NFE per 1D target) or
``--quick`` (asymmetric and trimodal, NFE 10 and 20, the process rules, 15 s designs: a few
minutes). Writes analysis/results/solver_schedules.{json,md,png} (``--out`` for another folder;
``--tag`` to name the files, e.g. solver_schedules_quick; ``--combine TAG ...`` joins separate
runs' json files into the ``--tag`` outputs). ``--multistart`` instead designs Heun at NFE 10
and 20 on the 1D targets from several starting baselines each (solver_schedules_multistart.*).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from scorehamiltonian import OU, ExactScore, example
from scorehamiltonian.common.errors import ScoreHamiltonianError
from scorehamiltonian.sampling import (
    BASELINES,
    PROCESS_BASELINES,
    Schedule,
    baseline_schedule,
    design_steps,
    judge_solver,
    path_profile,
    steps_for_nfe,
)

T_MAX, T_MIN = 5.0, 1e-3
EXAMPLES = ("asymmetric", "trimodal", "four_mode_2d")
SOLVERS = ("heun", "dpmpp-2m", "euler")
NFES = (5, 10, 20)
SPECTRAL = ("thermodynamic", "adiabatic-A/gap", "adiabatic-A/sqrt-gap")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="analysis/results", help="output folder")
    parser.add_argument("--tag", default="solver_schedules", help="file name stem")
    parser.add_argument("--quick", action="store_true", help="1D targets, NFE 10 and 20, process rules, 15 s designs")
    parser.add_argument("--examples", nargs="*", default=None, help="targets (default: all three)")
    parser.add_argument("--model-rules", action="store_true", help="also AYS-KLUB, OSS and the spectral rules "
                        "(1D only; about 4 min per solver and NFE on 2 busy cores)")
    parser.add_argument("--combine", nargs="*", default=None, help="no runs: join the json files of these tags "
                        "(separate runs, e.g. 1D and 2D in parallel) into the --tag outputs")
    parser.add_argument("--max-time", type=float, default=None, help="seconds per design (default 30, quick 15)")
    parser.add_argument("--multistart", nargs="*", default=None, metavar="BASELINE",
                        help="no table: Heun at NFE 10 and 20 on the 1D targets, designed from each of these starts "
                        "(default edm log-snr time-quadratic ays-sdxl) until converged (max-time default 300 s): does "
                        "every start reach the same optimum, and how far is it below the best baseline?")
    return parser.parse_args()


def multistart(examples: tuple[str, ...], starts: tuple[str, ...], max_time: float, out: str) -> None:
    """Heun designs from several starting baselines each (``--multistart``); writes
    solver_schedules_multistart.{json,md}: each start's TV, the design's TV (exact objective,
    then the judge), whether Powell converged, and the ratio of the best design to the best
    process baseline."""
    rows = []
    for name in examples:
        score = ExactScore(example(name), OU())
        for nfe in (10, 20):
            baselines = {b: judge(score, baseline_schedule(b, score, nfe, "heun", T_MAX, T_MIN), "heun")["tv"]
                         for b in PROCESS_BASELINES}
            best = min(baselines, key=baselines.get)
            for start in starts:
                design = design_steps(score, nfe=nfe, solver="heun", t_max=T_MAX, t_min=T_MIN, max_time=max_time,
                                      baselines=(start,))
                rows.append({"target": name, "nfe": nfe, "start": start, "start_tv": baselines[start],
                             "designed_tv": design.value, "converged": design.converged,
                             "evaluations": design.evaluations, "seconds": design.seconds,
                             "best_baseline": best, "best_baseline_tv": baselines[best]})
                print(f"{name} heun nfe={nfe} from {start}: {design.value:.4g} (converged {design.converged})",
                      flush=True)
    with open(os.path.join(out, "solver_schedules_multistart.json"), "w") as handle:
        json.dump(rows, handle, indent=1)
    lines = ["# Heun: designs from several starts (is the 1/2 target reachable?)", "",
             (f"OU, t_max = {T_MAX}, t_min = {T_MIN}; design_steps (exact TV, Powell on the level logits) from each "
              f"start alone, max_time {max_time:g} s; TV by judge_solver."), "",
             "| target | NFE | start | its TV | designed TV | converged | evaluations | s | designed / best baseline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['nfe']} | {r['start']} | {r['start_tv']:.4g} | {r['designed_tv']:.4g} | "
                     f"{r['converged']} | {r['evaluations']} | {r['seconds']:.0f} | "
                     f"{r['designed_tv'] / r['best_baseline_tv']:.3f} ({r['best_baseline']}) |")
    with open(os.path.join(out, "solver_schedules_multistart.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


class Schedules:
    """Baseline schedules of one target, cached by what they depend on: the step count N, and for
    StepOptim the solver's order, for OSS the solver."""

    def __init__(self, score: ExactScore) -> None:
        self.score, self.cache, self.profile = score, {}, None

    def get(self, name: str, nfe: int, solver: str) -> Schedule:
        n = steps_for_nfe(solver, nfe)
        key = (name, n, solver if name in ("stepoptim", "oss") else None)
        if key not in self.cache:
            if name in SPECTRAL and self.profile is None:
                self.profile = path_profile(self.score, np.geomspace(T_MIN, T_MAX, 33))
            options = {"n_samples": 1000} if name == "ays-klub" else {}
            self.cache[key] = baseline_schedule(name, self.score, nfe, solver, T_MAX, T_MIN, profile=self.profile,
                                                **options)
        return self.cache[key]


def judge(score: ExactScore, schedule: Schedule, solver: str) -> dict[str, Any]:
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = judge_solver(score, None, schedule, solver)
    return {"tv": result.tv, "kl": result.kl, "error": result.error, "mass_lost": result.mass_lost,
            "nfe": result.nfe, "n_steps": schedule.n_levels, "resolved": result.resolved, "notes": list(result.notes),
            "times": schedule.times.tolist(), "judge_seconds": time.perf_counter() - started}


def run_example(name: str, nfes: tuple[int, ...], baselines: tuple[str, ...], max_time: float) -> dict[str, Any]:
    score = ExactScore(example(name), OU())
    schedules = Schedules(score)
    rows: dict[str, Any] = {}
    for solver in SOLVERS:
        for nfe in nfes:
            for baseline in baselines:
                try:
                    rows[f"{solver}|{nfe}|{baseline}"] = judge(score, schedules.get(baseline, nfe, solver), solver)
                except (ScoreHamiltonianError, FloatingPointError, np.linalg.LinAlgError) as exc:  # kept in the table
                    rows[f"{solver}|{nfe}|{baseline}"] = {"failed": f"{type(exc).__name__}: {exc}"}
            design = design_steps(score, nfe=nfe, solver=solver, t_max=T_MAX, t_min=T_MIN, max_time=max_time)
            try:
                row = judge(score, design.schedule, solver)
            except ScoreHamiltonianError as exc:  # the judge refuses the law (too wide): design_steps measured it
                row = {"tv": design.value, "kl": math.nan, "error": design.error, "resolved": False,
                       "notes": [f"{type(exc).__name__}: {exc}", *design.notes], "times": design.schedule.times.tolist()}
            row.update(design_seconds=design.seconds, converged=design.converged, improved=design.improved,
                       start=design.start, start_tv=design.start_value, evaluations=design.evaluations)
            rows[f"{solver}|{nfe}|designed"] = row
            print(f"{name} {solver} nfe={nfe}: designed {row['tv']:.3g} from {design.start} {design.start_value:.3g}"
                  f" in {design.seconds:.1f} s", flush=True)
    return rows


def cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if "failed" in row:
        return "failed"
    return f"{row['tv']:.3g} ({row['kl']:.2g}){'' if row['resolved'] else '*'}"


def best_baseline(rows: dict[str, Any], solver: str, nfe: int, baselines: tuple[str, ...]) -> tuple[str, float]:
    scored = {b: rows[k]["tv"] for b in baselines
              if "tv" in rows.get(k := f"{solver}|{nfe}|{b}", {}) and math.isfinite(rows[k]["tv"])}
    if not scored:
        return "-", math.nan
    best = min(scored, key=scored.get)
    return best, scored[best]


def summary(results: dict[str, Any], nfes: tuple[int, ...], baselines: tuple[str, ...]) -> list[dict[str, Any]]:
    lines = []
    for name, rows in results.items():
        for solver in SOLVERS:
            for nfe in nfes:
                designed = rows.get(f"{solver}|{nfe}|designed")
                if designed is None:
                    continue
                best, tv = best_baseline(rows, solver, nfe, baselines)
                if best == "-":
                    continue
                lines.append({"target": name, "solver": solver, "nfe": nfe, "best": best, "best_tv": tv,
                              "designed_tv": designed["tv"], "ratio": designed["tv"] / tv,
                              "designed_kl": designed["kl"], "best_kl": rows[f"{solver}|{nfe}|{best}"]["kl"],
                              "seconds": designed["design_seconds"], "converged": designed["converged"],
                              "resolved": designed["resolved"] and rows[f"{solver}|{nfe}|{best}"]["resolved"]})
    return lines


def markdown(results: dict[str, Any], nfes: tuple[int, ...], baselines: tuple[str, ...], max_time: float) -> str:
    lines = ["# Solver schedules: exact TV (KL) of every baseline and of design_steps", "",
             (f"OU, t_max = {T_MAX}, t_min = {T_MIN}, from the prior, runs ending at t_min; TV and KL(q || p_t_min) by "
              "judge_solver. `*`: not resolved (a map that folds space, lost mass or a coarse grid; reasons in the json)."
              f" Designs: design_steps, exact TV objective, max_time = {max_time:g} s."), "",
             "## Summary: designed against the best baseline (by TV)", "",
             ("| target | solver | NFE | best baseline | its TV | designed TV | ratio | KL best / designed | design s "
              "| converged |"), "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary(results, nfes, baselines):
        flag = "" if s["resolved"] else "*"
        lines.append(f"| {s['target']} | {s['solver']} | {s['nfe']} | {s['best']} | {s['best_tv']:.3g} | "
                     f"{s['designed_tv']:.3g}{flag} | {s['ratio']:.2f} | {s['best_kl']:.2g} / {s['designed_kl']:.2g} | "
                     f"{s['seconds']:.1f} | {s['converged']} |")
    lines.append("")
    for name, rows in results.items():
        lines += [f"## {name}", ""]
        for nfe in nfes:
            lines += [f"### NFE {nfe}", "", "| schedule | " + " | ".join(SOLVERS) + " |",
                      "| --- |" + " --- |" * len(SOLVERS)]
            for schedule in (*baselines, "designed"):
                lines.append(f"| {schedule} | " + " | ".join(cell(rows.get(f"{s}|{nfe}|{schedule}")) for s in SOLVERS)
                             + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def figure(results: dict[str, Any], nfes: tuple[int, ...], baselines: tuple[str, ...], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(results), 3.8), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, rows) in zip(axes, results.items()):
        for k, solver in enumerate(SOLVERS):
            best = [best_baseline(rows, solver, nfe, baselines)[1] for nfe in nfes]
            designed = [rows[f"{solver}|{nfe}|designed"]["tv"] for nfe in nfes]
            ax.loglog(nfes, best, f"C{k}--o", ms=4, label=f"{solver}: best baseline")
            ax.loglog(nfes, designed, f"C{k}-s", ms=4, label=f"{solver}: designed")
        ax.set_title(name)
        ax.set_xlabel("NFE")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact TV at t_min")
    axes[-1].legend(fontsize=6)
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    examples = tuple(args.examples) if args.examples else (("asymmetric", "trimodal") if args.quick else EXAMPLES)
    nfes = (10, 20) if args.quick else NFES
    max_time = args.max_time if args.max_time is not None else (15.0 if args.quick else 30.0)
    os.makedirs(args.out, exist_ok=True)
    if args.multistart is not None:
        starts = tuple(args.multistart) or ("edm", "log-snr", "time-quadratic", "ays-sdxl")
        multistart(tuple(args.examples) if args.examples else ("asymmetric", "trimodal"), starts,
                   args.max_time or 300.0, args.out)
        return
    results = {}
    if args.combine:
        for tag in args.combine:
            with open(os.path.join(args.out, f"{tag}.json")) as handle:
                run = json.load(handle)
            results.update(run["results"])
        write(args, results, tuple(run["nfes"]), run["max_time"])
        return
    for name in examples:
        model_rules = args.model_rules and name != "four_mode_2d"
        baselines = BASELINES if model_rules else PROCESS_BASELINES
        results[name] = run_example(name, nfes, baselines, max_time)
        write(args, results, nfes, max_time)


def write(args: argparse.Namespace, results: dict[str, Any], nfes: tuple[int, ...], max_time: float) -> None:
    with open(os.path.join(args.out, f"{args.tag}.json"), "w") as handle:
        json.dump({"max_time": max_time, "nfes": nfes, "results": results}, handle, indent=1)
    with open(os.path.join(args.out, f"{args.tag}.md"), "w") as handle:
        handle.write(markdown(results, nfes, BASELINES, max_time))
    figure(results, nfes, BASELINES, os.path.join(args.out, f"{args.tag}.png"))


if __name__ == "__main__":
    main()
