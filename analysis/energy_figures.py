"""Figures of the energy and free-energy readouts (issue 5, deliverable 4).

Plot functions (used by ``analysis/free_energy_benchmark.py``):

- :func:`plot_landscape`: energies E(x) = -log p_0(x) read out by the probability-flow ODE from
  an exact and a learned score against the exact energy, with the learned score's errors and
  its line-integral cycle closure;
- :func:`plot_convergence`: Delta F against the number of samples, per estimator, with
  standard-error bars and the exact value;
- :func:`plot_estimators`: Delta F - exact of every estimator on every benchmark pair, with
  its standard error;
- :func:`plot_lambda_schedules`: the uniform, thermodynamic and gap-derived lambda-schedules
  with the pilot profile A(lambda) / lambda_1(lambda) they come from.

Run alone, it makes the landscape figure: a small denoising-score-matching model is trained
on the 2D "four_mode_2d" mixture under VE (sigma_min = 0.01: the learned epsilon-predictor can
be evaluated at t = 0), and both scores' PF-ODE energies are compared with the exact
-log p_0 along the line x_2 = -1.5 through two modes. The closure (three paths from the
origin to each point) is what can be seen of the learned score's error without the truth; in
1D it is zero by construction (every 1D field is a gradient).

Usage: python analysis/energy_figures.py [--quick] [--out DIR]   (default analysis/out/energy_figures/)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorehamiltonian import VE, ExactScore, example, train_dsm
from scorehamiltonian.thermo.energy import energy
from scorehamiltonian.thermo.line_energy import line_energy


def plot_landscape(x: np.ndarray, exact: np.ndarray, readouts: dict[str, Any], closure: np.ndarray) -> Figure:
    """Top: exact E(x) and each readout's value (EnergyResult-like: value, error). Bottom: each
    readout's |E - exact| with its reported error, and the learned score's cycle closure."""
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, exact, "k-", lw=2, label="exact $-\\log p_0$")
    for i, (name, res) in enumerate(readouts.items()):
        top.plot(x, res.value.numpy(), "--", color=f"C{i}", label=f"PF-ODE, {name} score")
        bottom.semilogy(x, np.abs(res.value.numpy() - exact), "-", color=f"C{i}", label=f"|error|, {name}")
        bottom.semilogy(x, res.error.numpy(), ":", color=f"C{i}", label=f"reported error, {name}")
    bottom.semilogy(x, closure, "-", color="C3", lw=1, label="cycle closure, learned")
    bottom.set_ylim(bottom=1e-8)
    top.set_ylabel("energy $E(x)$ [$k_BT$]")
    top.legend(fontsize=8)
    bottom.set_xlabel("$x_1$ (at $x_2 = -1.5$)")
    bottom.set_ylabel("nats")
    bottom.legend(fontsize=7, ncol=2)
    top.set_title("Probability-flow energies: exact vs learned score")
    return fig


def plot_convergence(rows: list[dict[str, Any]], exact: float, title: str) -> Figure:
    """Delta F +- standard error against samples, one line per method (rows: method, n, value, error)."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    methods = sorted({r["method"] for r in rows})
    for i, method in enumerate(methods):
        sel = [r for r in rows if r["method"] == method]
        n = np.array([r["n"] for r in sel]) * (1.0 + 0.04 * (i - len(methods) / 2))
        ax.errorbar(n, [r["value"] for r in sel], yerr=[r["error"] for r in sel], fmt="o-", ms=3, capsize=2,
                    label=method, color=f"C{i}")
    ax.axhline(exact, color="k", lw=1, label="exact (quadrature)")
    ax.set_xscale("log")
    ax.set_xlabel("samples per ensemble / particles")
    ax.set_ylabel("$\\Delta F$ [$k_BT$]")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_estimators(rows: list[dict[str, Any]]) -> Figure:
    """Delta F - exact +- standard error for every (pair, method) row (keys pair, method, value, error, exact)."""
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        sel = {r["pair"]: r for r in rows if r["method"] == method}
        pos = [i + (j - (len(methods) - 1) / 2) * width for i, p in enumerate(pairs) if p in sel]
        dev = [sel[p]["value"] - sel[p]["exact"] for p in pairs if p in sel]
        err = [sel[p]["error"] for p in pairs if p in sel]
        ax.errorbar(pos, dev, yerr=err, fmt="o", capsize=3, label=method, color=f"C{j}")
    ax.axhline(0.0, color="k", lw=1)
    for bound in (-0.1, 0.1):
        ax.axhline(bound, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(pairs)), pairs, fontsize=8)
    ax.set_ylabel("$\\Delta F$ - exact [$k_BT$]")
    ax.set_title("Estimators against exact values (dashed: the 0.1 $k_BT$ target)")
    ax.legend(fontsize=8, ncol=3)
    return fig


def plot_lambda_schedules(schedules: dict[str, Any]) -> Figure:
    """Left: lambda_k against k for each LambdaSchedule. Right: the pilot profile A and A / gap."""
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, (name, sched) in enumerate(schedules.items()):
        left.plot(np.arange(sched.lambdas.size), sched.lambdas, "o-", ms=3, color=f"C{i}", label=name)
    left.set_xlabel("level $k$")
    left.set_ylabel("$\\lambda_k$")
    left.legend(fontsize=8)
    gap = schedules["gap"]
    right.errorbar(gap.pilot, gap.speed, yerr=gap.speed_error, fmt="o-", ms=3, label="$A(\\lambda)$")
    right.plot(gap.pilot, gap.gap, "s-", ms=3, label="gap $\\lambda_1(\\lambda)$")
    right.plot(gap.pilot, gap.speed / gap.gap, "^-", ms=3, label="$A / \\lambda_1$")
    right.set_yscale("log")
    right.set_xlabel("$\\lambda$")
    right.legend(fontsize=8)
    return fig


def landscape(quick: bool, out: Path) -> dict[str, float]:
    """Train a DSM score on four_mode_2d (VE), compare PF-ODE energies along a line; save the figure."""
    process = VE(sigma_min=0.01, sigma_max=1e3)
    mixture = example("four_mode_2d")
    exact_score = ExactScore(mixture, process)
    data = mixture.sample(20000, torch.Generator().manual_seed(0))
    learned = train_dsm(data, process, steps=600 if quick else 3000, progress=False, seed=0)
    line = torch.linspace(-3.5, 3.5, 36 if quick else 141, dtype=torch.float64)
    x = torch.stack([line, torch.full_like(line, -1.5)], -1)
    schedule = np.linspace(1.0, 0.0, 129)
    exact = (-exact_score.log_prob(x, 0.0)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        readouts = {"exact": energy(exact_score, None, x, schedule),
                    "learned": energy(learned, None, x, schedule)}
    anchor = torch.zeros_like(x)
    closure = line_energy(learned, anchor, x, t=0.0, paths=3).closure.numpy()
    fig = plot_landscape(line.numpy(), exact, readouts, closure)
    fig.savefig(out / "energy_landscape.png", dpi=130)
    errors = {name: float(np.abs(res.value.numpy() - exact).max()) for name, res in readouts.items()}
    return {**errors, "closure_max": float(closure.max())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short training, coarse grid")
    parser.add_argument("--out", type=Path, default=ROOT / "analysis" / "out" / "energy_figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    errors = landscape(args.quick, args.out)
    print("max |E - exact| over the grid:", {k: f"{v:.3g}" for k, v in errors.items()})
    print(f"figure: {args.out / 'energy_landscape.png'}")


if __name__ == "__main__":
    main()
