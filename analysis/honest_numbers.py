"""Honest numbers from a learned Mueller-Brown score: do the total intervals cover the truth? (issue 21)

Trains an ensemble of K denoising-score-matching networks (:func:`train_ensemble`, OU, the
toolkit's default size and steps; ``--quick``: fewer samples and steps) on exact samples of
Mueller-Brown at beta = 0.1 (standardised coordinates), then reads, from the ensemble alone,

- the gap lambda_1 at t = 0.05, 0.2, 1 (:func:`spectral_gap`, rtol 1e-3) with its numerical,
  model and total error, against the gap of the exact noised score;
- energies -log p_{t0}(x) at 30 points (20 exact samples, 10 on the path A - C - B through the
  saddles; t0 the training t_min, where the eps-network starts) by the probability-flow ODE
  (:func:`energy`, atol 1e-2), against the exact noised log-density;
- the free energies of the basins A, B, C (the reference's steepest-descent basins as given
  states) at t0 (:func:`state_free_energies`), Delta F relative to A, against the same states
  of the exact noised density at t0 (and the sample-count estimate beside);
- the audit: Spearman correlation over the 30 points of the extrapolation map's figure, of the
  energies' model error and of the PF-ODE / line-integral disagreement with the true energy
  error.

Coverage: the share of readouts whose |value - truth| <= total_error (total = numerical +
model, each readout's own rule); sharpness: the median of total_error / |value - truth|.
Writes analysis/results/honest_numbers.{json,md}. Run from the repository root:
``PYTHONPATH=$PWD python analysis/honest_numbers.py [--quick]``. Timings are of a shared
2-core machine and noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from scorehamiltonian import (
    OU,
    energy,
    extrapolation_map,
    readout_disagreement,
    spectral_gap,
    state_free_energies,
)
from scorehamiltonian.score.ensemble import train_ensemble
from scorehamiltonian.score.systems import system
from scorehamiltonian.thermo.energy import start_time

TIMES = (0.05, 0.2, 1.0)


def _points(mb, samples: torch.Tensor) -> torch.Tensor:
    """20 exact samples and 10 points on the broken line A - C - B (z coordinates)."""
    minima = mb.from_physical(torch.tensor([[-0.558, 1.442], [-0.050, 0.467], [0.623, 0.028]], dtype=torch.float64))
    u = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)[1:, None]
    path = torch.cat([minima[0] + u * (minima[1] - minima[0]), minima[1] + u * (minima[2] - minima[1])])
    return torch.cat([samples[:20], path])


def _progress(phase: str, timings: dict) -> None:
    print(f"{phase}: {timings[phase]:.0f} s", file=sys.stderr, flush=True)


def _interval(value: float, total: float, truth: float) -> dict:
    error = abs(value - truth)
    return {"value": value, "total_error": total, "truth": truth, "true_error": error,
            "covered": bool(error <= total), "ratio": total / error if error > 0 else math.inf}


def run(quick: bool, members: int, seed: int) -> dict:
    mb, process = system("mueller-brown"), OU()
    gen = torch.Generator().manual_seed(seed)
    n = 10000 if quick else 50000
    x0 = mb.sample(n, gen)
    clock = time.perf_counter()
    ensemble = train_ensemble(x0, members, process, seed=seed, steps=300 if quick else None, progress=False)
    ensemble.data = x0
    timings = {"train": time.perf_counter() - clock}
    _progress("train", timings)
    exact = mb.exact_score(process)
    t0 = start_time(ensemble)
    out: dict = {"quick": quick, "members": members, "n_samples": n, "t0": t0, "gaps": [], "energies": {}, "states": {}}

    clock = time.perf_counter()
    for t in TIMES:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            learned = spectral_gap(ensemble, t, rtol=1e-3)
            truth = spectral_gap(exact, t, rtol=1e-4)
        row = _interval(float(learned.value), float(learned.total_error), float(truth.value))
        row.update(t=t, numerical=float(learned.error), model_error=float(learned.model_error),
                   truth_error=float(truth.error), converged=bool(learned.converged), flags=list(learned.flags))
        out["gaps"].append(row)
    timings["gaps"] = time.perf_counter() - clock
    _progress("gaps", timings)

    clock = time.perf_counter()
    x = _points(mb, mb.sample(20, gen))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = energy(ensemble, None, x, atol=1e-2)
    true_energy = -exact.log_prob(x, t0)
    err = (result.value - true_energy).abs()
    covered = err <= result.total_error
    ratio = (result.total_error / err).numpy()
    out["energies"] = {
        "points": x.tolist(), "value": result.value.tolist(), "truth": true_energy.tolist(),
        "numerical": result.error.tolist(), "model_error": result.model_error.tolist(),
        "coverage": float(covered.double().mean()), "median_ratio": float(np.median(ratio)),
        "converged": int(result.converged.sum()), "flags": list(result.flags), "nfe": result.nfe,
        "nfe_model": result.nfe_model, "sample_points_coverage": float(covered[:20].double().mean()),
        "path_points_coverage": float(covered[20:].double().mean()),
    }
    timings["energies"] = time.perf_counter() - clock
    _progress("energies", timings)

    clock = time.perf_counter()
    audit = extrapolation_map(ensemble, x, t0)
    disagreement = readout_disagreement(ensemble, x, result.value, t0, errors=result.error)
    truth_error = err.numpy()
    out["audit"] = {name: float(spearmanr(values, truth_error).statistic) for name, values in (
        ("extrapolation_figure", audit.figure.numpy()), ("distance", audit.distance.numpy()),
        ("disagreement", audit.disagreement.numpy()), ("energy_model_error", result.model_error.numpy()),
        ("readout_disagreement", disagreement.value.numpy()))}
    timings["audit"] = time.perf_counter() - clock
    _progress("audit", timings)

    clock = time.perf_counter()
    states = [lambda z, k=k: mb.basin_of(z) == k for k in range(3)]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        learned = state_free_energies(ensemble, states, samples=x0, t=t0, atol=0.1)
        reference = state_free_energies(exact, states, samples=x0, t=t0)
    rows = []
    for k, name in ((1, "B"), (2, "C")):
        value, total = learned.difference(0, k)
        truth, truth_total = reference.difference(0, k)
        row = _interval(value, total, truth)
        row.update(state=name, numerical=float(learned.numerical[0] + learned.numerical[k]),
                   model_error=float(learned.model_error[0] + learned.model_error[k]), truth_error=truth_total,
                   counted=float(learned.sample_free_energy[k] - learned.sample_free_energy[0]))
        rows.append(row)
    out["states"] = {"delta_f": rows, "converged": learned.converged, "flags": list(learned.flags),
                     "free_energy": learned.free_energy.tolist(), "reference_free_energy": reference.free_energy.tolist()}
    timings["states"] = time.perf_counter() - clock
    _progress("states", timings)

    intervals = out["gaps"] + [_interval(v, e, tr) for v, e, tr in zip(result.value.tolist(),
                                                                       result.total_error.tolist(),
                                                                       true_energy.tolist())] + rows
    out["summary"] = {
        "coverage": float(np.mean([r["covered"] for r in intervals])),
        "median_ratio": float(np.median([r["ratio"] for r in intervals])),
        "n_intervals": len(intervals),
        "states_within_0.1_kT": [abs(r["true_error"]) <= 0.1 for r in rows],
        "converged_but_3_intervals_off": sum(1 for r in out["gaps"] if r["converged"] and r["true_error"] > 3 * r["total_error"]),
    }
    out["timings_s"] = timings
    return out


def _markdown(out: dict) -> str:
    s = out["summary"]
    lines = [
        "# Honest numbers from a learned Mueller-Brown score (issue 21)", "",
        (f"Ensemble of {out['members']} DSM networks on {out['n_samples']} exact samples "
        f"({'quick: 300 steps' if out['quick'] else 'default training'}), OU, t0 = {out['t0']:g}. "
        "Covered: |value - truth| <= total error (numerical + model). Ratio: total error / true error."), "",
        (f"**All readouts: coverage {s['coverage']:.0%} of {s['n_intervals']}, median ratio {s['median_ratio']:.3g}** "
        "(targets: >= 80 %, <= 10)."), "",
        "## Gap", "", "| t | value | numerical | model | total | truth | covered | ratio | converged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['t']:g} | {r['value']:.4g} | {r['numerical']:.2g} | {r['model_error']:.2g} | {r['total_error']:.2g} "
              f"| {r['truth']:.4g} | {r['covered']} | {r['ratio']:.3g} | {r['converged']} |" for r in out["gaps"]]
    e = out["energies"]
    lines += ["", "## Energies at 30 points", "",
              (f"coverage {e['coverage']:.0%} (samples {e['sample_points_coverage']:.0%}, path A-C-B "
              f"{e['path_points_coverage']:.0%}), median ratio {e['median_ratio']:.3g}, converged "
              f"{e['converged']} of 30, flags {e['flags']}, NFE per point {e['nfe']} (+ {e['nfe_model']} member "
              "evaluations for the model error)."), "",
              "## Audit: Spearman with the true energy error over the 30 points", "",
              "| figure | Spearman |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in out["audit"].items()]
    lines += ["", "## State free energies (Delta F relative to A, k_B T)", "",
              "| state | value | numerical | model | total | truth | covered | ratio | sample count |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['state']} | {r['value']:.4g} | {r['numerical']:.2g} | {r['model_error']:.2g} | "
              f"{r['total_error']:.2g} | {r['truth']:.4g} | {r['covered']} | {r['ratio']:.3g} | {r['counted']:.4g} |"
              for r in out["states"]["delta_f"]]
    lines += ["", f"converged {out['states']['converged']}; flags {out['states']['flags']}", "",
              f"Timings (s, shared 2-core machine, noisy): {json.dumps({k: round(v, 1) for k, v in out['timings_s'].items()})}",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k samples, 300 training steps")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="analysis/results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = run(args.quick, args.members, args.seed)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "honest_numbers.json").write_text(json.dumps(out, indent=1))
    (folder / "honest_numbers.md").write_text(_markdown(out))
    print(_markdown(out))


if __name__ == "__main__":
    main()
