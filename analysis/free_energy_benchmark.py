"""Benchmark of the energy and free-energy readouts (issue 5) against exact values.

1. PF-ODE energies (RK4, exact divergence) of exact mixture scores on the 1D "asymmetric" and
   2D "four_mode_2d" mixtures, under OU (T = 10) and VE (sigma 0.01 -> 1e4): for each schedule,
   the smallest number of steps N (doubling from 8) at which max |E - (-log p_{t_min})| over
   test points drawn from the mixture is <= 1e-3 nats, the score evaluations that costs (4N for
   the value, 7N + 1 with the step-doubling error estimate), the reported error there and
   whether it covers the truth; dopri5 (solver rtol 1e-8) and the refinement to the request
   (energy(..., atol=1e-3): its largest N, mean evaluations per point) for comparison. Schedules: uniform in t,
   EDM (rho = 7, in sigma / alpha), log-SNR and thermodynamic length (standard_schedule; these
   two need t_min > 0, so they run down to t = 1e-5 and take one more step to 0).
2. Delta F = -log(Z_1 / Z_0) by TI, AIS (MALA, ULA), BAR, MBAR and Zwanzig on four pairs with
   exact values: two 2D Gaussians (closed form), a 1D mixture and its tilt (quadrature),
   N(0, 1) and the double well (x^2 - 1)^2 / 0.5 (quadrature), a 2D mixture and its tilt
   (2D quadrature); plus BAR / Zwanzig with a PF-ODE energy (ScoreEnergy of an exact score).
   Reported: value, standard error, |error|, z = error / SE, evaluations.
3. AIS (MALA, 2 moves per level, 16 steps) along uniform, thermodynamic and gap-derived
   lambda-schedules at equal cost: variance of the log-weights over seeds and the ratio
   uniform / gap.
4. Figures: Delta F against samples (double well), the estimator comparison, the lambda
   schedules (energy_figures.py).

Usage: python analysis/free_energy_benchmark.py [--quick] [--out DIR] [--engine dask --workers N]
(--engine runs the four parts as parallel tasks on a dask LocalCluster, or on a running
cluster with --engine tcp://HOST:8786).
Writes results.md, results.json and PNGs into DIR (default analysis/out/free_energy_benchmark/).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import integrate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "analysis"))

from energy_figures import plot_convergence, plot_estimators, plot_lambda_schedules

from scorehamiltonian import OU, VE, ExactScore, GaussianMixture, example
from scorehamiltonian.common.executors import TaskFailure, executor_from, map_tasks
from scorehamiltonian.sampling.schedules import path_profile, standard_schedule
from scorehamiltonian.thermo.energy import energy
from scorehamiltonian.thermo.free_energy import free_energy_difference
from scorehamiltonian.thermo.lambda_schedules import lambda_schedule
from scorehamiltonian.thermo.path import ScoreEnergy

TARGET_NATS = 1e-3
TARGET_KT = 0.1
T_FLOOR = 1e-5


# --------------------------------------------------------------------------- 1. PF-ODE energies


def _schedule(name: str, n: int, process, profile) -> np.ndarray:
    """Times (decreasing) of the named schedule over the process's whole range."""
    if name in ("uniform", "edm"):
        return standard_schedule(name, n, process.t_max, process.t_min, process).times
    times = standard_schedule(name, n - 1, process.t_max, T_FLOOR, process, profile=profile).times
    return np.append(times, process.t_min)


def energy_table(quick: bool) -> list[dict[str, Any]]:
    rows = []
    n_points = 40 if quick else 200
    for mix_name in ("asymmetric", "four_mode_2d"):
        mixture = example(mix_name)
        x = mixture.sample(n_points, torch.Generator().manual_seed(0))
        for process in (OU(), VE(sigma_min=0.01, sigma_max=1e4)):
            score = ExactScore(mixture, process)
            exact = -score.log_prob(x, process.t_min)
            profile_times = np.geomspace(T_FLOOR, process.t_max, 17 if quick else 33)
            profile = path_profile(score, profile_times, gap=False, n_samples=4000 if quick else 20000)
            for name in ("uniform", "edm", "log-snr", "thermodynamic"):
                rows.append(_steps_needed(score, process, x, exact, name, profile, mix_name, quick))
            ref = energy(score, process, x, method="dopri5", solver_rtol=1e-8, solver_atol=1e-10)
            err = float((ref.value - exact).abs().max())
            rows.append({"mixture": mix_name, "process": type(process).__name__, "schedule": "dopri5 (rtol 1e-8)",
                         "N": None, "nfe_value": None, "nfe_total": ref.nfe, "max_error": err,
                         "max_reported": float(ref.error.max()),
                         "covered": bool(((ref.value - exact).abs() <= ref.error).all()),
                         "converged": float(ref.trusted.double().mean())})
            refined = energy(score, process, x, atol=TARGET_NATS)
            rows.append({"mixture": mix_name, "process": type(process).__name__, "schedule": "refined (atol 1e-3)",
                         "N": int(refined.n_steps.max()), "nfe_value": refined.nfe_solve, "nfe_total": refined.nfe,
                         "max_error": float((refined.value - exact).abs().max()),
                         "max_reported": float(refined.error.max()),
                         "covered": bool(((refined.value - exact).abs() <= refined.error).all()),
                         "converged": float(refined.trusted.double().mean())})
    return rows


def _steps_needed(score, process, x, exact, name, profile, mix_name, quick) -> dict[str, Any]:
    row = {"mixture": mix_name, "process": type(process).__name__, "schedule": name}
    for n in [8 * 2**k for k in range(8 if quick else 9)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = energy(score, process, x, _schedule(name, n, process, profile))
        err = float((res.value - exact).abs().max())
        if err <= TARGET_NATS:
            covered = bool(((res.value - exact).abs() <= res.error).all())
            return {**row, "N": n, "nfe_value": 4 * n, "nfe_total": res.nfe, "max_error": err,
                    "max_reported": float(res.error.max()), "covered": covered,
                    "converged": float(res.trusted.double().mean())}
    return {**row, "N": None, "nfe_value": None, "nfe_total": None, "max_error": err,
            "max_reported": float(res.error.max()), "covered": None, "converged": None}


# --------------------------------------------------------------------------- 2. Delta F


def _gaussian_pair():
    mean, var, offset = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5, 0.7

    def u1(x):
        return ((x - mean) ** 2).sum(-1) / (2 * var) + offset

    return GaussianMixture([1.0], [[0.0, 0.0]], [1.0]), u1, offset - math.log(2 * math.pi * var)


def _quadrature_1d(u1) -> float:
    def density(x):
        return math.exp(-float(u1(torch.tensor([[x]], dtype=torch.float64))[0]))

    return -math.log(integrate.quad(density, -12.0, 12.0, epsabs=1e-13, epsrel=1e-12, limit=200)[0])


def _quadrature_2d(u1, box: float = 7.0, n: int = 1201) -> float:
    """-log int e^{-U_1} by the 2D trapezoid rule on a fine grid (spectrally accurate for smooth,
    rapidly decaying integrands), checked against half the resolution."""
    def z(m):
        axis = torch.linspace(-box, box, m, dtype=torch.float64)
        grid = torch.cartesian_prod(axis, axis)
        values = torch.exp(-u1(grid)).reshape(m, m).numpy()
        h = float(axis[1] - axis[0])
        return float(np.trapezoid(np.trapezoid(values, dx=h, axis=0), dx=h))

    fine, coarse = z(n), z((n + 1) // 2)
    assert abs(fine - coarse) < 1e-10 * fine
    return -math.log(fine)


def pairs() -> dict[str, tuple[Any, Any, float]]:
    mixture_1d = GaussianMixture([0.3, 0.7], [-1.0, 1.0], [0.3, 0.4])

    def tilt_1d(x):
        return -mixture_1d.log_prob(x) + 0.25 * (x[:, 0] - 1.0) ** 2 + 0.3

    def double_well(x):
        return (x[:, 0] ** 2 - 1.0) ** 2 / 0.5

    mixture_2d = GaussianMixture([0.25, 0.25, 0.25, 0.25], [[-1, -1], [1, -1], [1, 1], [-1, 1]], [0.4, 0.6, 0.4, 0.6])

    def tilt_2d(x):
        return -mixture_2d.log_prob(x) + 0.3 * ((x - torch.tensor([1.0, 0.5], dtype=torch.float64)) ** 2).sum(-1)

    g0, g1, g_exact = _gaussian_pair()
    return {
        "gaussians-2d": (g0, g1, g_exact),
        "mixture-tilt-1d": (mixture_1d, tilt_1d, _quadrature_1d(tilt_1d)),
        "double-well-1d": (GaussianMixture([1.0], [[0.0]], [1.0]), double_well, _quadrature_1d(double_well)),
        "mixture-tilt-2d": (mixture_2d, tilt_2d, _quadrature_2d(tilt_2d)),
    }


METHODS = {
    "ti": {"method": "ti"},
    "ais-mala": {"method": "ais", "move": "mala"},
    "ais-ula": {"method": "ais", "move": "ula"},
    "bar": {"method": "bar"},
    "mbar": {"method": "mbar"},
    "zwanzig": {"method": "zwanzig"},
}


def _row(pair: str, method: str, result, exact: float, seconds: float) -> dict[str, Any]:
    return {"pair": pair, "method": method, "value": result.value, "error": result.error, "exact": exact,
            "abs_error": abs(result.value - exact), "z": (result.value - exact) / result.error,
            "systematic": result.systematic_error, "ess": result.ess, "n_energy": result.n_energy_evaluations,
            "converged": result.converged, "seconds": seconds}


def free_energy_table(quick: bool) -> list[dict[str, Any]]:
    n = 500 if quick else 2000
    rows = []
    for pair, (u0, u1, exact) in pairs().items():
        for method, options in METHODS.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = free_energy_difference(u0, u1, n_samples=n, generator=torch.Generator().manual_seed(1),
                                                **options)
            rows.append(_row(pair, method, result, exact, time.perf_counter() - start))
    rows.extend(_learned_rows(quick))
    return rows


def _learned_rows(quick: bool) -> list[dict[str, Any]]:
    """U_0 = PF-ODE energy of an exact score (VE, normalised p_{t_min}); U_1 = a Gaussian + 0.2."""
    process = VE(sigma_min=0.05, sigma_max=1e3)
    mixture = GaussianMixture([0.4, 0.6], [-0.8, 0.9], [0.3, 0.3])
    target = GaussianMixture([1.0], [[0.3]], [0.6])

    def u1(x):
        return -target.log_prob(x) + 0.2

    n = 300 if quick else 1000
    gen = torch.Generator().manual_seed(4)
    samples_0, samples_1 = mixture.marginal(process, 0.0).sample(n, gen), target.sample(n, gen)
    rows = []
    for method in ("bar", "zwanzig"):
        state = ScoreEnergy(ExactScore(mixture, process), np.linspace(1.0, 0.0, 129))
        start = time.perf_counter()
        result = free_energy_difference(state, u1, method, n_samples=n, samples_0=samples_0, samples_1=samples_1,
                                        generator=gen)
        rows.append(_row("pf-ode-energy-1d", method, result, 0.2, time.perf_counter() - start))
    return rows


def convergence_rows(quick: bool) -> tuple[list[dict[str, Any]], float]:
    u0, u1, exact = pairs()["double-well-1d"]
    rows = []
    sizes = [100, 300, 1000] if quick else [100, 300, 1000, 3000, 10000]
    for n in sizes:
        for method, options in METHODS.items():
            if method == "ti" and n > 3000:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = free_energy_difference(u0, u1, n_samples=n, generator=torch.Generator().manual_seed(2),
                                                **options)
            rows.append({"method": method, "n": n, "value": result.value, "error": result.error})
    return rows, exact


# --------------------------------------------------------------------------- 3. AIS schedules


def ais_schedules(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n, seeds = (1000, 2) if quick else (4000, 5)
    rows, figure_schedules = [], {}
    for pair in ("double-well-1d", "mixture-tilt-1d", "mixture-tilt-2d"):
        u0, u1, exact = pairs()[pair]
        schedules = {kind: lambda_schedule(u0, u1, 16, kind, n_pilot=9, n_samples=2000,
                                           generator=torch.Generator().manual_seed(11))
                     for kind in ("uniform", "thermodynamic", "gap")}
        if pair == "double-well-1d":
            figure_schedules = schedules
        variances = {}
        for kind, schedule in schedules.items():
            var, values, errors = [], [], []
            for seed in range(seeds):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = free_energy_difference(u0, u1, "ais", lambdas=schedule, n_samples=n, n_moves=2,
                                                    generator=torch.Generator().manual_seed(100 + seed))
                var.append(float(result.log_weights.var()))
                values.append(result.value)
                errors.append(result.error)
            variances[kind] = (float(np.mean(var)), float(np.std(var, ddof=1) / math.sqrt(seeds)))
            rows.append({"pair": pair, "schedule": kind, "var_log_w": variances[kind][0],
                         "var_log_w_se": variances[kind][1], "mean_value": float(np.mean(values)),
                         "mean_error": float(np.mean(errors)), "exact": exact,
                         "lambda_1": float(schedule.lambdas[1])})
        for row in rows[-3:]:
            row["ratio_uniform_over_this"] = variances["uniform"][0] / row["var_log_w"]
    return rows, figure_schedules


# --------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_fmt(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_report(out: Path, energies, free, convergence, ais, seconds: float, quick: bool) -> None:
    text = [
        "# Energy and free-energy readouts: benchmark",
        "",
        (f"Generated by `analysis/free_energy_benchmark.py{' --quick' if quick else ''}` in {seconds:.0f} s "
        f"(torch {torch.__version__}, CPU)."),
        "",
        "## PF-ODE energies: steps to reach max |E - exact| <= 1e-3 nats (RK4, exact divergence)",
        "",
        ("nfe value = 4N score evaluations for the result; nfe total adds the step-doubling error estimate "
        "(7N + 1). '-' = not reached within 2048 steps. log-snr / thermodynamic: down to t = 1e-5, then one "
        "step to t = 0 (both need t_min > 0). VE's uniform-in-t grid is uniform in log sigma (= log-SNR)."),
        "",
        _table(energies, [("mixture", "mixture"), ("process", "process"), ("schedule", "schedule"), ("N", "N"),
                          ("nfe_value", "nfe value"), ("nfe_total", "nfe total"), ("max_error", "max |error|"),
                          ("max_reported", "max reported error"), ("covered", "error covers truth"),
                          ("converged", "fraction asymptotic")]),
        "",
        "## Delta F against exact values",
        "",
        (f"Target: |error| <= {TARGET_KT} k_BT with the standard error covering the truth (|z| <= 2 expected "
        "about 95 % of the time). systematic: bound from PF-ODE energy errors."),
        "",
        _table(free, [("pair", "pair"), ("method", "method"), ("value", "Delta F"), ("error", "std. error"),
                      ("exact", "exact"), ("abs_error", "abs error"), ("z", "z"), ("systematic", "systematic"),
                      ("ess", "ESS"), ("n_energy", "U evaluations"), ("converged", "converged"),
                      ("seconds", "seconds")]),
        "",
        "## AIS: gap-derived vs thermodynamic vs uniform lambda-schedule at equal cost",
        "",
        ("16 steps, 2 MALA moves per level, same particles; pilot cost of the derived schedules not included. "
        "Variance of log-weights averaged over seeds (+- standard error); ratio = uniform / this."),
        "",
        _table(ais, [("pair", "pair"), ("schedule", "schedule"), ("var_log_w", "Var log w"),
                     ("var_log_w_se", "+-"), ("ratio_uniform_over_this", "ratio uniform / this"),
                     ("lambda_1", "first lambda step"), ("mean_value", "mean Delta F"), ("mean_error", "mean SE"),
                     ("exact", "exact")]),
        "",
        "Figures: `convergence_double_well.png`, `estimators.png`, `lambda_schedules.png`.",
    ]
    (out / "results.md").write_text("\n".join(text) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"energies": energies, "free_energies": free, "convergence": convergence, "ais_schedules": ais},
        indent=1, default=float))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer points, samples and seeds (a few minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "analysis" / "out" / "free_energy_benchmark")
    parser.add_argument("--engine", default=None,
                        help="run the four parts as parallel tasks: 'dask' (a LocalCluster of --workers processes) "
                             "or a dask scheduler's address, tcp://HOST:PORT")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of --engine dask")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    parts = [energy_table, free_energy_table, convergence_rows, ais_schedules]
    engine = args.engine
    if engine and engine.startswith("tcp://"):
        from distributed import Client

        engine = Client(engine)
    with executor_from(engine, args.workers) as pool:
        outcomes = [outcome for _, outcome in map_tasks(lambda part: part(args.quick), parts, pool)]
    failed = [f"{part.__name__}: {outcome}" for part, outcome in zip(parts, outcomes) if isinstance(outcome, TaskFailure)]
    if failed:
        raise SystemExit("free_energy_benchmark: " + "; ".join(failed))
    energies, free, (convergence, exact), (ais, schedules) = outcomes
    plot_convergence(convergence, exact, "N(0, 1) -> double well $(x^2-1)^2/0.5$").savefig(
        args.out / "convergence_double_well.png", dpi=130)
    plot_estimators(free).savefig(args.out / "estimators.png", dpi=130)
    plot_lambda_schedules(schedules).savefig(args.out / "lambda_schedules.png", dpi=130)
    write_report(args.out, energies, free, convergence, ais, time.perf_counter() - start, args.quick)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
