"""Honest numbers from a learned score: do the total intervals cover the truth? (issue 21)

Trains an ensemble of K denoising-score-matching networks (:func:`train_ensemble`, OU, the
toolkit's default size and steps; ``--quick``: fewer samples and steps) on exact samples of a
system no one here wrote (``--system``): Mueller-Brown at beta = 0.1 (standardised
coordinates) or many-well-32 (16 double wells, FAB), then reads, from the ensemble alone,

- the gap lambda_1 at t = 0.05, 0.2, 1 with its numerical, model and total error, against the
  exact gap: Mueller-Brown by :func:`spectral_gap` (rtol 1e-3) against the exact noised score's
  grid gap; many-well-32 by :func:`ritz_gap` (model form, on the training data noised to t)
  against :meth:`ManyWell.gap` (quadrature of the 1D factor);
- energies -log p_{t0}(x) at 30 points (20 exact samples and 10 through the barriers:
  Mueller-Brown on the path A - C - B through the saddles, many-well from the deepest
  configuration with the first well moved to its shallow minimum; t0 the training t_min,
  where the eps-network starts) by the probability-flow ODE (:func:`energy`, atol 1e-2),
  against the exact noised log-density;
- the free energies of states at t0 (:func:`state_free_energies`), Delta F relative to the
  first, against the exact noised density at t0 (and the sample-count estimate beside):
  Mueller-Brown's basins A, B, C (the reference's steepest-descent basins as given states,
  the exact side by quadrature); many-well's number of shallow wells 0, 1, 2, >= 3 (the
  model's sampler, 2^14 draws; the exact side binomial in the noised factor's mass left of the
  barrier top, by quadrature);
- the audit: Spearman correlation over the 30 points of the extrapolation map's figure, of the
  energies' model error and of the PF-ODE / line-integral disagreement with the true energy
  error.

Coverage: the share of readouts whose |value - truth| <= total_error (total = numerical +
model, each readout's own rule); sharpness: the median of total_error / |value - truth|.
Writes analysis/results/honest_numbers.{json,md} (many-well: honest_numbers_many_well.{json,md}).
Run from the repository root:
``PYTHONPATH=$PWD python analysis/honest_numbers.py [--system many-well-32] [--quick]``. Timings are of a shared
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
    ritz_gap,
    spectral_gap,
    state_free_energies,
)
from scorehamiltonian.score.ensemble import train_ensemble
from scorehamiltonian.score.systems import ManyWell, system
from scorehamiltonian.thermo.energy import start_time

TIMES = (0.05, 0.2, 1.0)
#: The noise of the many-well Ritz samples is seeded apart from the data (the same seed drew the same
#: normals for the Gaussian coordinates and the noise, correlating them).
NOISE_SEED_OFFSET = 1000
#: The many-well states: 0 .. MW_STATES - 2 shallow wells, and at least MW_STATES - 1.
MW_STATES = 4
#: The sampler readout's draws for many-well (its states are not rare; 2^16 took most of the run).
MW_DRAWS = 1 << 14


def _points(found, samples: torch.Tensor) -> torch.Tensor:
    """20 exact samples and 10 points through the barriers: Mueller-Brown on the broken line
    A - C - B (z coordinates); many-well from the deepest configuration (every well at its deep
    minimum, the Gaussian coordinates 0) with the first well's coordinate moved to its shallow
    minimum."""
    if isinstance(found, ManyWell):
        deep, shallow = (float(v) for v in found.basins().minima[:, 0])
        start = torch.zeros(found.dim, dtype=torch.float64)
        start[0::2] = deep
        path = start.repeat(10, 1)
        path[:, 0] = deep + torch.linspace(0.0, 1.0, 10, dtype=torch.float64) * (shallow - deep)
        return torch.cat([samples[:20], path])
    u = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)[1:, None]
    minima = found.from_physical(torch.tensor([[-0.558, 1.442], [-0.050, 0.467], [0.623, 0.028]],
                                              dtype=torch.float64))
    path = torch.cat([minima[0] + u * (minima[1] - minima[0]), minima[1] + u * (minima[2] - minima[1])])
    return torch.cat([samples[:20], path])


def _gap(found, ensemble, exact, x0: torch.Tensor, t: float, seed: int) -> tuple[dict, float, float]:
    """The learned gap's row (value, errors, flags) and the truth with its error."""
    if isinstance(found, ManyWell):
        process = ensemble.process
        noised = process.alpha(t) * x0 + process.sigma(t) * torch.randn(  # a stream apart from the data's
            x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET))
        learned = ritz_gap(ensemble, t, samples=noised, generator=torch.Generator().manual_seed(seed))
        truth = found.gap(t, process)
        return ({"value": learned.value, "numerical": learned.error, "model_error": learned.model_error,
                 "total_error": learned.total_error, "converged": learned.reliable, "flags": list(learned.flags)},
                float(truth.value), float(truth.error))
    learned = spectral_gap(ensemble, t, rtol=1e-3)
    truth = spectral_gap(exact, t, rtol=1e-4)
    return ({"value": float(learned.value), "numerical": float(learned.error),
             "model_error": float(learned.model_error), "total_error": float(learned.total_error),
             "converged": bool(learned.converged), "flags": list(learned.flags)},
            float(truth.value), float(truth.error))


def _states(found, ensemble, exact, x0: torch.Tensor, t0: float) -> tuple[list[str], object, np.ndarray, np.ndarray]:
    """(names, the ensemble's StateFreeEnergies, exact Delta F relative to the first state, its error)."""
    if isinstance(found, ManyWell):
        names = [f"{k} shallow" for k in range(MW_STATES - 1)] + [f">= {MW_STATES - 1} shallow"]
        states = [lambda z, k=k: found.basin_of(z) == k for k in range(MW_STATES - 1)]
        states.append(lambda z: found.basin_of(z) >= MW_STATES - 1)
        learned = state_free_energies(ensemble, states, samples=x0, t=t0, atol=0.1, draws=MW_DRAWS)
        minus, error = _shallow_mass(found, exact, t0)
        pmf = np.array([math.comb(found.wells, k) * (1 - minus) ** (found.wells - k) * minus**k
                        for k in range(MW_STATES - 1)])
        probabilities = np.append(pmf, 1.0 - pmf.sum())
        return names, learned, -np.log(probabilities / probabilities[0]), np.full(MW_STATES, found.wells * error / minus)
    states = [lambda z, k=k: found.basin_of(z) == k for k in range(3)]
    learned = state_free_energies(ensemble, states, samples=x0, t=t0, atol=0.1)
    reference = state_free_energies(exact, states, samples=x0, t=t0)
    return (["A", "B", "C"], learned, reference.free_energy - reference.free_energy[0],
            reference.total_error + reference.total_error[0])


def _shallow_mass(found, exact, t: float) -> tuple[float, float]:
    """P(x_1 < x*) of the noised double-well factor at t, by the trapezoid rule on 20001 and on
    10001 nodes (the change is the error)."""
    factor = exact.factors[0]

    def mass(n: int) -> float:
        y = torch.linspace(-7.0, 7.0, n, dtype=torch.float64)
        p = torch.exp(factor.log_prob(y[:, None], t) - factor.log_prob(y[:, None], t).max())
        p[0] *= 0.5
        p[-1] *= 0.5
        left = y < found.barrier_top
        return float(p[left].sum() / p.sum())

    fine = mass(20001)
    return fine, abs(fine - mass(10001))


def _progress(phase: str, timings: dict) -> None:
    print(f"{phase}: {timings[phase]:.0f} s", file=sys.stderr, flush=True)


def _interval(value: float, total: float, truth: float) -> dict:
    error = abs(value - truth)
    return {"value": value, "total_error": total, "truth": truth, "true_error": error,
            "covered": bool(error <= total), "ratio": total / error if error > 0 else math.inf}


def run(name: str, quick: bool, members: int, seed: int) -> dict:
    found, process = system(name), OU()
    gen = torch.Generator().manual_seed(seed)
    n = 10000 if quick else 50000
    x0 = found.sample(n, gen)
    clock = time.perf_counter()
    ensemble = train_ensemble(x0, members, process, seed=seed, steps=300 if quick else None, progress=False)
    ensemble.data = x0
    timings = {"train": time.perf_counter() - clock}
    _progress("train", timings)
    exact = found.exact_score(process)
    t0 = start_time(ensemble)
    out: dict = {"system": name, "quick": quick, "members": members, "n_samples": n, "t0": t0, "gaps": [],
                 "energies": {}, "states": {}}

    clock = time.perf_counter()
    for t in TIMES:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            learned, truth, truth_error = _gap(found, ensemble, exact, x0, t, seed)
        row = _interval(learned["value"], learned["total_error"], truth)
        row.update(t=t, numerical=learned["numerical"], model_error=learned["model_error"],
                   truth_error=truth_error, converged=learned["converged"], flags=learned["flags"])
        out["gaps"].append(row)
    timings["gaps"] = time.perf_counter() - clock
    _progress("gaps", timings)

    clock = time.perf_counter()
    x = _points(found, found.sample(20, gen))
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
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        names, learned, truth_delta, truth_error = _states(found, ensemble, exact, x0, t0)
    rows = []
    for k, state in enumerate(names[1:], start=1):
        value, total = learned.difference(0, k)
        row = _interval(value, total, float(truth_delta[k]))
        row.update(state=state, numerical=float(learned.numerical[0] + learned.numerical[k]),
                   model_error=float(learned.model_error[0] + learned.model_error[k]), truth_error=float(truth_error[k]),
                   counted=float(learned.sample_free_energy[k] - learned.sample_free_energy[0]))
        rows.append(row)
    out["states"] = {"delta_f": rows, "converged": learned.converged, "flags": list(learned.flags),
                     "names": names, "free_energy": learned.free_energy.tolist(),
                     "reference_delta_f": [float(v) for v in truth_delta]}
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
        "converged_but_3_intervals_off": (
            sum(1 for r in out["gaps"] if r["converged"] and r["true_error"] > 3 * r["total_error"])
            + int((result.converged & (err > 3 * result.total_error)).sum())
            + (sum(1 for r in rows if r["true_error"] > 3 * r["total_error"]) if learned.converged else 0)),
    }
    out["timings_s"] = timings
    return out


def _markdown(out: dict) -> str:
    s = out["summary"]
    lines = [
        f"# Honest numbers from a learned {out['system']} score (issue 21)", "",
        (f"Ensemble of {out['members']} DSM networks on {out['n_samples']} exact samples "
        f"({'quick: 300 steps' if out['quick'] else 'default training'}), OU, t0 = {out['t0']:g}. "
        "Covered: |value - truth| <= total error (numerical + model). Ratio: total error / true error."), "",
        (f"**All readouts: coverage {s['coverage']:.0%} of {s['n_intervals']}, median ratio {s['median_ratio']:.3g}** "
        "(targets: >= 80 %, <= 10); reported converged while more than 3 intervals off: "
        f"{s['converged_but_3_intervals_off']} (target 0)."), "",
        "## Gap", "", "| t | value | numerical | model | total | truth | covered | ratio | converged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['t']:g} | {r['value']:.4g} | {r['numerical']:.2g} | {r['model_error']:.2g} | {r['total_error']:.2g} "
              f"| {r['truth']:.4g} | {r['covered']} | {r['ratio']:.3g} | {r['converged']} |" for r in out["gaps"]]
    e = out["energies"]
    lines += ["", "## Energies at 30 points", "",
              (f"coverage {e['coverage']:.0%} (samples {e['sample_points_coverage']:.0%}, barrier path "
              f"{e['path_points_coverage']:.0%}), median ratio {e['median_ratio']:.3g}, converged "
              f"{e['converged']} of 30, flags {e['flags']}, NFE per point {e['nfe']} (+ {e['nfe_model']} member "
              "evaluations for the model error)."), "",
              "## Audit: Spearman with the true energy error over the 30 points", "",
              "| figure | Spearman |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in out["audit"].items()]
    lines += ["", f"## State free energies (Delta F relative to {out['states']['names'][0]}, k_B T)", "",
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
    parser.add_argument("--system", default="mueller-brown", choices=["mueller-brown", "many-well-32"])
    parser.add_argument("--quick", action="store_true", help="10k samples, 300 training steps")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="analysis/results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = run(args.system, args.quick, args.members, args.seed)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "honest_numbers" if args.system == "mueller-brown" else "honest_numbers_many_well"
    (folder / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (folder / f"{stem}.md").write_text(_markdown(out))
    print(_markdown(out))


if __name__ == "__main__":
    main()
