"""Schedule benchmark (issue 4): final error of annealed Langevin per schedule, judged by exact propagation.

Targets (OU process, t_max = 5, t_min = 1e-3): 1D balanced two-mode ("bimodal"), 1D unbalanced
two-mode ("asymmetric": weights 0.2 / 0.8, means -2.5 / 2, std 0.3 / 0.6), 1D three-mode
("trimodal") and the 2D four-mode mixture ("four_mode_2d"). For N levels in {10, 20, 50} and
total Langevin time U in {1, 10, 100}, every standard schedule (step rules with U / N per
level, thermodynamic length, the naive adiabatic rules), and the designed one, is propagated
exactly (:func:`propagate_exact`, annealed Langevin from the prior); reported: the final TV
against p_{t_min} and the largest basin-weight error.

Judge grids: 1D on the default grid refined once (half the spacing), with the discretisation
error estimated as |TV(refined) - TV(default grid)|; 2D on the default grid (96^2 at most),
error estimated against the coarser design grid (1.5 points per width). Designs: the grid
designer (:func:`design_schedule`, L-BFGS on the exact TV, started from the two best step
rules) with a wall-clock limit per design; the 2D design runs on the coarse design grid.

Robustness (unbalanced targets): the nominal design, a robust design (mean TV over the
nominal and 8 perturbed targets) and the best standard schedule at the nominal target are
evaluated on 16 held-out perturbed targets (weights and means scaled by 1 +- 20%, Latin
hypercube, another seed).

Reduced model (``--reduced-only``, a separate run): the prediction of
:func:`reduced_prediction` (Ritz modes from 8000 exact draws per level) against exact
propagation for four step rules at N = 10, U = 10 and 100, on the unbalanced, three-mode and
2D targets; its table joins results.md when present.

Relaxed floor (``--floor-only``, a separate run, about 30 min): for the issue's unbalanced cases
(two-mode at U = 1, three-mode at U = 10 and 100) the lowest final TV found for annealed
Langevin with the same U and many more levels (``--floor-levels``, default 50): L-BFGS on the
designer's exact objective from two step rules and ``--floor-starts`` random starts (softmax
logits ~ N(0, 1.5^2)), the best judged on the judge grid. A schedule of N <= 50 levels is a
50-level schedule with (nearly) zero Langevin time at the extra levels, so this is, up to the
search, the best any schedule with that U can do; if best standard / floor < 5 the issue's
1/5 target is out of reach of annealed Langevin at that U. Its table joins results.md.

Run: ``python analysis/schedule_benchmark.py`` (about 1-2 h on 2 busy cores; ``--engine dask
--workers N`` runs the targets and the robustness studies as parallel tasks on a dask
LocalCluster, ``--engine tcp://HOST:8786`` on a running cluster), ``--reduced-only`` and
``--floor-only``, or ``--quick`` for all three (minutes). Writes results.md, results.json,
reduced_validation.json, floor.json, tv_vs_budget.png and the designed schedules (JSON) into
``--out`` (default analysis/out/schedule_benchmark); ``--report-only`` rebuilds results.md and
the figure from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from scorehamiltonian import OU, ExactScore, example
from scorehamiltonian.common.executors import TaskFailure, executor_from, map_tasks
from scorehamiltonian.sampling.designer import design_grid, design_schedule, perturbed_mixtures, relaxed_floor
from scorehamiltonian.sampling.grid_model import GridModel, default_grid
from scorehamiltonian.sampling.propagation import propagate_exact
from scorehamiltonian.sampling.reduced import reduced_prediction
from scorehamiltonian.sampling.schedules import STANDARD_SCHEDULES, path_profile, standard_schedule

T_MAX, T_MIN = 5.0, 1e-3
TARGETS = {"balanced": "bimodal", "unbalanced": "asymmetric", "three-mode": "trimodal", "2D four-mode": "four_mode_2d"}
UNBALANCED = ("unbalanced", "three-mode")
EASY = ("balanced",)
NAIVE = ("adiabatic-A/gap", "adiabatic-A/sqrt-gap", "langevin-1/gap")
DESIGN_PPW_2D = 1.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="analysis/out/schedule_benchmark", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a small version: fewer targets, cases and profiles")
    parser.add_argument("--design-time", type=float, default=60.0, help="wall-clock limit of the optimiser per 1D design (s)")
    parser.add_argument("--design-time-2d", type=float, default=40.0,
                        help="the same for 2D designs (the issue's target: a 2D design in under a minute)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the design perturbations (held out: seed + 1)")
    parser.add_argument("--reduced-only", action="store_true",
                        help="only the reduced-model validation (reduced_validation.json in --out)")
    parser.add_argument("--floor-only", action="store_true",
                        help="only the relaxed floor of the unbalanced cases (floor.json in --out)")
    parser.add_argument("--floor-levels", type=int, default=50, help="levels of the relaxed floor's schedules")
    parser.add_argument("--floor-starts", type=int, default=2, help="random starts of the relaxed floor's search")
    parser.add_argument("--engine", default=None,
                        help="run the targets and robustness studies as parallel tasks: 'dask' (a LocalCluster of "
                             "--workers processes) or a dask scheduler's address, tcp://HOST:PORT")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of --engine dask")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild results.md and the figure from the results.json in --out, computing nothing")
    return parser.parse_args()


def cases(quick: bool) -> tuple[dict[str, str], list[tuple[int, float]], list[tuple[int, float]]]:
    """Targets, (N, U) cases, and the (N, U) cases of the robustness study."""
    if quick:
        targets = {k: TARGETS[k] for k in ("balanced", "unbalanced", "2D four-mode")}
        return targets, [(10, 1.0), (10, 10.0)], [(10, 10.0)]
    grid = [(n, u) for n in (10, 20, 50) for u in (1.0, 10.0, 100.0)]
    return dict(TARGETS), grid, [(10, 10.0), (20, 10.0), (10, 100.0)]


class Judge:
    """Exact propagation of a target on the judge grid and on a coarser one (discretisation error)."""

    def __init__(self, mixture, process):
        self.mixture, self.process = mixture, process
        base = default_grid(mixture, process, T_MIN, T_MAX)
        if mixture.dim == 1:
            fine, coarse = base.refine(), base
        else:
            fine, coarse = base, design_grid([mixture], process, T_MIN, T_MAX, points_per_width=DESIGN_PPW_2D)
        self.fine = GridModel(mixture, process, fine)
        self.coarse = GridModel(mixture, process, coarse)

    def __call__(self, schedule) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fine = propagate_exact(self.mixture, self.process, schedule, model=self.fine)
            coarse = propagate_exact(self.mixture, self.process, schedule, model=self.coarse)
        return {"tv": fine.tv, "weight_error": fine.weight_error, "disc_error": abs(fine.tv - coarse.tv),
                "resolved": bool(fine.resolved)}


def profile_for(mixture, process, quick: bool):
    """lambda_1 (spectral_gap) and A(t) at log-spaced times for the spectral rules (fewer in 2D)."""
    n = (5 if quick else 13) if mixture.dim == 2 else (17 if quick else 33)
    rtol = 3e-2 if mixture.dim == 2 else 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return path_profile(ExactScore(mixture, process), np.geomspace(T_MIN, T_MAX, n), gap_rtol=rtol)


def design(mixture, process, n, u, args, **options):
    grid_options = {"points_per_width": DESIGN_PPW_2D} if mixture.dim == 2 else {}
    limit = args.design_time_2d if mixture.dim == 2 else args.design_time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return design_schedule(mixture, process, n, u, T_MAX, T_MIN, full_output=True, max_time=limit,
                               seed=args.seed, **grid_options, **options)


def run_target(label, name, process, grid_cases, args):
    mixture = example(name)
    judge = Judge(mixture, process)
    started = time.perf_counter()
    profile = profile_for(mixture, process, args.quick)
    profile_time = time.perf_counter() - started
    rows, schedules = [], {}
    for n, u in grid_cases:
        for rule in STANDARD_SCHEDULES:
            schedule = standard_schedule(rule, n, T_MAX, T_MIN, process, u, profile=profile)
            schedules[label, n, u, rule] = schedule
            rows.append({"target": label, "N": n, "U": u, "schedule": rule, **judge(schedule)})
        result = design(mixture, process, n, u, args)
        schedules[label, n, u, "designed"] = result.schedule
        rows.append({"target": label, "N": n, "U": u, "schedule": "designed", **judge(result.schedule),
                     "design_time": result.wall_time, "fell_back": result.fell_back,
                     "converged": result.converged, "n_evaluations": result.n_evaluations,
                     "design_grid": list(result.grid.n), "start": result.baseline.name})
        print(f"{label:>13} N={n:<3} U={u:<5g} designed TV {rows[-1]['tv']:.3e} "
              f"({result.wall_time:.0f} s); best standard {best_standard(rows, label, n, u)[1]:.3e}", flush=True)
    return rows, schedules, {"target": label, "profile_time": profile_time, "profile_times": len(profile.times)}


def best_standard(rows, label, n, u, names=STANDARD_SCHEDULES):
    pool = [r for r in rows if r["target"] == label and r["N"] == n and r["U"] == u and r["schedule"] in names]
    best = min(pool, key=lambda r: r["tv"])
    return best["schedule"], best["tv"]


def robustness(label, name, process, n, u, rows, schedules, args):
    """Nominal design, robust design and the nominal-best standard schedule on held-out perturbed targets."""
    mixture = example(name)
    nominal = schedules[label, n, u, "designed"]
    robust = design(mixture, process, n, u, args, robust="mean", n_perturbations=8)
    best_name, _ = best_standard(rows, label, n, u)
    standard = schedules[label, n, u, best_name]
    tvs = {"designed": [], "robust": [], "standard": []}
    for target in perturbed_mixtures(mixture, 16, seed=args.seed + 1):
        model = GridModel(target, process, default_grid(target, process, T_MIN, T_MAX))
        for key, schedule in (("designed", nominal), ("robust", robust.schedule), ("standard", standard)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tvs[key].append(propagate_exact(target, process, schedule, model=model).tv)
    tvs = {k: np.array(v) for k, v in tvs.items()}
    summary = {"target": label, "N": n, "U": u, "standard": best_name, "robust_design_time": robust.wall_time}
    for key in ("designed", "robust"):
        summary[key] = {
            "mean_tv": float(tvs[key].mean()), "max_tv": float(tvs[key].max()),
            "ratio_of_means": float(tvs["standard"].mean() / tvs[key].mean()),
            "median_ratio": float(np.median(tvs["standard"] / tvs[key])),
            "min_ratio": float(np.min(tvs["standard"] / tvs[key])),
            "ratio_of_max": float(tvs["standard"].max() / tvs[key].max()),
        }
    summary["standard_mean_tv"], summary["standard_max_tv"] = float(tvs["standard"].mean()), float(tvs["standard"].max())
    print(f"{label:>13} N={n} U={u:g} robustness: {json.dumps(summary)}", flush=True)
    return summary


#: Differences below this are round-off (TV of two converged samplers).
ROUND_OFF = 1e-12


def verdict(designed: dict, best: dict) -> str:
    """better / tie / worse: the TV difference against the two discretisation errors plus round-off."""
    slack = designed["disc_error"] + best["disc_error"] + ROUND_OFF
    if designed["tv"] < best["tv"] - slack:
        return "better"
    return "worse" if designed["tv"] > best["tv"] + slack else "tie"


def case_rows(rows, label, n, u):
    """(the best standard schedule's row, the designed row) of one case."""
    pool = [r for r in rows if r["target"] == label and r["N"] == n and r["U"] == u]
    best = min((r for r in pool if r["schedule"] != "designed"), key=lambda r: r["tv"])
    return best, next(r for r in pool if r["schedule"] == "designed")


#: (target, U, the issue's N at that U) of the relaxed floor; quick: one small case.
FLOOR_CASES = (("unbalanced", 1.0, (10, 20)), ("three-mode", 10.0, (10, 20)), ("three-mode", 100.0, (10,)))
FLOOR_CASES_QUICK = (("unbalanced", 1.0, (10,)),)


def floor_study(process, quick: bool, n_levels: int, n_random: int, seed: int, design_time: float) -> list[dict]:
    """Per floor case: best standard schedule, the designer's schedule at the issue's N, and the relaxed floor."""
    out = []
    for label, budget, issue_levels in (FLOOR_CASES_QUICK if quick else FLOOR_CASES):
        mixture = example(TARGETS[label])
        judge = Judge(mixture, process)
        profile = profile_for(mixture, process, quick)
        started = time.perf_counter()
        floor, start_tvs = relaxed_floor(mixture, process, n_levels, budget, T_MAX, T_MIN, n_random=n_random, seed=seed)
        floor_row = {**judge(floor), "start_tvs": start_tvs, "seconds": time.perf_counter() - started}
        for n in issue_levels:
            standard = {rule: judge(standard_schedule(rule, n, T_MAX, T_MIN, process, budget, profile=profile))
                        for rule in STANDARD_SCHEDULES}
            best = min(standard, key=lambda rule: standard[rule]["tv"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                designed = design_schedule(mixture, process, n, budget, T_MAX, T_MIN, max_time=design_time)
            out.append({"target": label, "N": n, "U": budget, "floor_N": n_levels, "standard": best,
                        "standard_tv": standard[best]["tv"], "designed": judge(designed), "floor": floor_row})
            print(f"floor {label} N={n} U={budget:g}: best standard {best} {standard[best]['tv']:.3e}, designed "
                  f"{out[-1]['designed']['tv']:.3e}, floor (N={n_levels}) {floor_row['tv']:.3e}", flush=True)
    return out


def floor_table(records) -> list[str]:
    lines = ["### Relaxed floor: the best TV found with many levels at the same U", "",
             ("| target | N | U | best standard TV | designed TV / weight error | floor TV / weight error (levels) | "
              "best standard / floor | 1/5 target attainable |"), "|" + " --- |" * 8]
    for r in records:
        d, f = r["designed"], r["floor"]
        ratio = r["standard_tv"] / f["tv"]
        lines.append(f"| {r['target']} | {r['N']} | {r['U']:g} | {r['standard']}: {fmt(r['standard_tv'])} | "
                     f"{fmt(d['tv'])} / {fmt(d['weight_error'])} | {fmt(f['tv'])} / {fmt(f['weight_error'])} "
                     f"({r['floor_N']}) | {ratio:.3g} | {'yes' if ratio >= 5 else 'no'} |")
    return lines + [""]


REDUCED_RULES = ("log-uniform", "cosine", "edm", "uniform")
REDUCED_OPTIONS = {1: {"n_modes": 3, "n_samples": 8000, "ritz_options": None},
                   2: {"n_modes": 5, "n_samples": 8000, "ritz_options": None}}


def reduced_validation(process, quick: bool) -> list[dict]:
    """Reduced-model prediction against exact propagation (N = 10; standard rules; U = 10, 100)."""
    names = ("asymmetric",) if quick else ("asymmetric", "trimodal", "four_mode_2d")
    rules = REDUCED_RULES[:2] if quick else REDUCED_RULES
    out = []
    for name in names:
        mixture = example(name)
        model = GridModel(mixture, process, default_grid(mixture, process, T_MIN, T_MAX))
        for u in (10.0, 100.0):
            for rule in rules:
                schedule = standard_schedule(rule, 10, T_MAX, T_MIN, process, u)
                started = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    exact = propagate_exact(mixture, process, schedule, model=model)
                    predicted = reduced_prediction(ExactScore(mixture, process), schedule, **REDUCED_OPTIONS[mixture.dim])
                out.append({"target": name, "U": u, "schedule": rule, "exact_tv": exact.tv,
                            "exact_weight_error": exact.weight_error, "predicted_tv": predicted.tv,
                            "predicted_stderr": predicted.tv_stderr, "factor": predicted.tv / exact.tv,
                            "seconds": time.perf_counter() - started, "n_flags": len(predicted.flags)})
                print(f"reduced {name} U={u:g} {rule}: exact {exact.tv:.3e} predicted {predicted.tv:.3e}", flush=True)
    return out


def reduced_table(records) -> list[str]:
    lines = ["### Reduced model (Ritz modes, N = 10) against exact propagation", "",
             "| target | U | schedule | exact TV | predicted TV +- s.e. | factor | s | Ritz flags |",
             "|" + " --- |" * 8]
    for r in records:
        lines.append(f"| {r['target']} | {r['U']:g} | {r['schedule']} | {fmt(r['exact_tv'])} | "
                     f"{fmt(r['predicted_tv'])} +- {fmt(r['predicted_stderr'])} | {r['factor']:.3g} | "
                     f"{r['seconds']:.0f} | {r['n_flags']} |")
    factors = [r["factor"] for r in records if r["exact_tv"] > 1e-2]
    if factors:
        lines.append("")
        lines.append(f"Prediction factor where the exact TV exceeds 1e-2: {min(factors):.3g} .. {max(factors):.3g} "
                     f"({len(factors)} cases); below, the prediction is bounded below by its sampling noise.")
    return lines + [""]


def fmt(x: float) -> str:
    return f"{x:.2e}"


def table_per_target(rows, label, grid_cases) -> list[str]:
    head = "| schedule | " + " | ".join(f"N={n} U={u:g}" for n, u in grid_cases) + " |"
    lines = [f"### {label}: final TV / basin-weight error", "", head, "|" + " --- |" * (len(grid_cases) + 1)]
    for rule in (*STANDARD_SCHEDULES, "designed"):
        cells = []
        for n, u in grid_cases:
            r = next(r for r in rows if r["target"] == label and r["N"] == n and r["U"] == u and r["schedule"] == rule)
            cells.append(f"{fmt(r['tv'])} / {fmt(r['weight_error'])}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return lines + [""]


def summary_table(rows, targets, grid_cases) -> list[str]:
    lines = ["### Designed against the best standard schedule (same N, U; judge grid)", "",
             ("| target | N | U | best standard | its TV +- disc. | designed TV +- disc. | ratio | verdict | "
             "design s | fell back |"), "|" + " --- |" * 10]
    for label in targets:
        for n, u in grid_cases:
            best, d = case_rows(rows, label, n, u)
            lines.append(f"| {label} | {n} | {u:g} | {best['schedule']} | {fmt(best['tv'])} +- {fmt(best['disc_error'])} | "
                         f"{fmt(d['tv'])} +- {fmt(d['disc_error'])} | {best['tv'] / d['tv']:.3g} | {verdict(d, best)} | "
                         f"{d['design_time']:.0f} | {d['fell_back']} |")
    return lines + [""]


def robustness_table(studies) -> list[str]:
    lines = ["### Robustness: 16 held-out targets with weights and means perturbed by +-20%", "",
             ("| target | N | U | standard (nominal best) mean / max TV | design | mean TV | max TV | "
             "ratio of means | median ratio | min ratio | ratio of max |"), "|" + " --- |" * 11]
    for s in studies:
        for key in ("designed", "robust"):
            r = s[key]
            lines.append(f"| {s['target']} | {s['N']} | {s['U']:g} | {s['standard']}: {fmt(s['standard_mean_tv'])} / "
                         f"{fmt(s['standard_max_tv'])} | {key} | {fmt(r['mean_tv'])} | {fmt(r['max_tv'])} | "
                         f"{r['ratio_of_means']:.3g} | {r['median_ratio']:.3g} | {r['min_ratio']:.3g} | "
                         f"{r['ratio_of_max']:.3g} |")
    return lines + [""]


def target_checks(rows, studies, targets, grid_cases) -> list[str]:
    lines = ["### Issue targets", ""]
    for label in targets:
        pairs = [case_rows(rows, label, n, u) for n, u in grid_cases]
        ratios = [best["tv"] / d["tv"] for best, d in pairs]
        verdicts = [verdict(d, best) for best, d in pairs]
        kind = "unbalanced" if label in UNBALANCED else ("easy" if label in EASY else "other")
        lines.append(f"- {label} ({kind}): best-standard / designed TV ratio min {min(ratios):.3g}, median "
                     f"{np.median(ratios):.3g} over {len(ratios)} (N, U) cases; ratio >= 5 in "
                     f"{sum(r >= 5 for r in ratios)}; better / tie / worse (beyond the discretisation errors): "
                     f"{verdicts.count('better')} / {verdicts.count('tie')} / {verdicts.count('worse')}")
    for s in studies:
        lines.append(f"- robustness {s['target']} N={s['N']} U={s['U']:g}: ratio of mean held-out TV "
                     f"(nominal-best standard / design) {s['designed']['ratio_of_means']:.3g} (nominal design), "
                     f"{s['robust']['ratio_of_means']:.3g} (robust design); ratio of the worst held-out TV "
                     f"{s['designed']['ratio_of_max']:.3g} / {s['robust']['ratio_of_max']:.3g}")
    times = [r["design_time"] for r in rows if r["schedule"] == "designed" and r["target"] == "2D four-mode"]
    if times:
        lines.append(f"- 2D design time: max {max(times):.1f} s, median {np.median(times):.1f} s over {len(times)} cases")
    lines.append("- naive adiabatic rules on the unbalanced target, TV at U = 1 / 10 / 100: "
                 + "; ".join(naive_plateau(rows, rule) for rule in (*NAIVE, "log-uniform", "thermodynamic")))
    return lines + [""]


def naive_plateau(rows, rule) -> str:
    by_n = {}
    for r in rows:
        if r["target"] == "unbalanced" and r["schedule"] == rule:
            by_n.setdefault(r["N"], []).append((r["U"], r["tv"]))
    parts = [f"N={n}: " + " / ".join(fmt(tv) for _, tv in sorted(v)) for n, v in sorted(by_n.items())]
    return f"{rule} ({', '.join(parts)})"


def figure(rows, targets, grid_cases, path):
    from matplotlib.figure import Figure

    levels = sorted({n for n, _ in grid_cases})
    fig = Figure(figsize=(4.0 * len(levels), 3.2 * len(targets)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(targets), len(levels), squeeze=False))
    for i, label in enumerate(targets):
        for j, n in enumerate(levels):
            ax = axes[i, j]
            for k, rule in enumerate((*STANDARD_SCHEDULES, "designed")):
                pts = sorted((r["U"], r["tv"]) for r in rows if r["target"] == label and r["N"] == n and r["schedule"] == rule)
                style = {"color": "k", "lw": 2.5, "marker": "o"} if rule == "designed" else {
                    "color": f"C{k}", "ls": "--" if rule in NAIVE else "-", "marker": "."}
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], label=rule, **style)
            ax.set_title(f"{label}, N = {n}")
            ax.set_xlabel("total Langevin time U")
            ax.set_ylabel("final TV")
    axes[0, -1].legend(fontsize=6, loc="lower left")
    fig.savefig(path, dpi=120)


def report(out: Path, data: dict, targets, grid_cases) -> None:
    rows, studies = data["rows"], data["robustness"]
    lines = ["# Schedule benchmark (annealed Langevin, OU, t_max = 5, t_min = 1e-3)", "",
             ("TV and weight error on the judge grid (1D: default grid refined once; 2D: default grid); "
             "'disc.' = |TV(judge grid) - TV(coarser grid)|."), ""]
    for label in targets:
        lines += table_per_target(rows, label, grid_cases)
    lines += summary_table(rows, targets, grid_cases) + robustness_table(studies)
    lines += target_checks(rows, studies, targets, grid_cases)
    if (out / "reduced_validation.json").exists():
        lines += reduced_table(json.loads((out / "reduced_validation.json").read_text()))
    if (out / "floor.json").exists():
        lines += floor_table(json.loads((out / "floor.json").read_text()))
    (out / "results.md").write_text("\n".join(lines))
    figure(rows, list(targets), grid_cases, out / "tv_vs_budget.png")
    print("\n".join(lines))


def engine(args: argparse.Namespace):
    """None (serial), "dask" or a dask Client for the scheduler address in --engine."""
    if args.engine and args.engine.startswith("tcp://"):
        from distributed import Client

        return Client(args.engine)
    return args.engine


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    process = OU()
    targets, grid_cases, robust_cases = cases(args.quick)
    if args.reduced_only:
        records = reduced_validation(process, args.quick)
        (out / "reduced_validation.json").write_text(json.dumps(records, indent=1))
        print("\n".join(reduced_table(records)))
        return
    if args.floor_only:
        records = floor_study(process, args.quick, args.floor_levels, args.floor_starts, args.seed, args.design_time)
        (out / "floor.json").write_text(json.dumps(records, indent=1))
        print("\n".join(floor_table(records)))
        return
    if args.report_only:
        report(out, json.loads((out / "results.json").read_text()), targets, grid_cases)
        return
    rows, schedules, profiles, studies = [], {}, [], []
    robust_jobs = [(label, n, u) for label in targets if label in UNBALANCED for n, u in robust_cases]
    with executor_from(engine(args), args.workers) as pool:
        for (label, name), outcome in map_tasks(lambda item: run_target(*item, process, grid_cases, args),
                                                list(targets.items()), pool):
            if isinstance(outcome, TaskFailure):
                print(f"{label}: {outcome}", flush=True)
                continue
            target_rows, target_schedules, info = outcome
            rows += target_rows
            schedules.update(target_schedules)
            profiles.append(info)
            for (_, n, u, rule), schedule in target_schedules.items():
                if rule == "designed":
                    schedule.save(out / f"designed_{name}_N{n}_U{u:g}.json")
        jobs = [job for job in robust_jobs if any(r["target"] == job[0] for r in rows)]
        study = lambda job: robustness(job[0], targets[job[0]], process, job[1], job[2], rows, schedules, args)
        for job, outcome in map_tasks(study, jobs, pool):
            if isinstance(outcome, TaskFailure):
                print(f"robustness {job}: {outcome}", flush=True)
                continue
            studies.append(outcome)
    data = {"rows": rows, "robustness": studies, "profiles": profiles, "quick": args.quick}
    (out / "results.json").write_text(json.dumps(data, indent=1))
    report(out, data, targets, grid_cases)


if __name__ == "__main__":
    main()
