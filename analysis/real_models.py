"""Learned against exact on systems no one here wrote (issue 20): the table of real models.

Per built-in system (scorehamiltonian.score.systems): an ensemble of K MLP scores trained with
the toolkit's defaults (train_ensemble) on exact draws of a density system or on a data set's
training rows, then

1. the gap lambda_1(H_t) at t in {0.05, 0.2, 1}: learned (spectral_gap on grids in d = 2,
   ritz_gap in the model form beyond), with its numerical error, model error (the ensemble's
   spread) and converged flag, against the exact gap (Mueller-Brown: the independent reference
   values of shared/reference/mueller_brown.md; many-well: ManyWell.gap by quadrature);
2. energies -log p_0 by the PF-ODE (256 fixed steps) at 30 held-out points and at the exact
   global minimum x*:
   Spearman correlation with the exact energy, and the largest error of E(x) - E(x*) in k_B T
   (energies relative to the global minimum, so the unknown constant of a learned model drops);
3. free energies of states relative to the first (Mueller-Brown: the basins A, B, C; many-well:
   the number of shallow wells), by state_free_energies with the ensemble's own sampler and the
   training data as the samples' check, against the exact ones, with the reported total error
   and the data's count beside them;
4. wall time of each part (training included; the machine is shared: noisy).
Data sets (no density) give the learned gaps and the held-out energies' spread only.

Usage: python analysis/real_models.py [--quick] [--systems NAME ...] [--out DIR]
Writes real_models.md and real_models.json into DIR (default analysis/results/).
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

import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorehamiltonian import OU, ritz_gap, spectral_gap, system, train_ensemble
from scorehamiltonian.score.systems import DensitySystem, ManyWell, MuellerBrown
from scorehamiltonian.thermo.energy import energy
from scorehamiltonian.thermo.states import state_free_energies

TIMES = (0.05, 0.2, 1.0)
#: lambda_1 of Mueller-Brown in z (shared/reference/mueller_brown.md, independent quadrature).
MB_REFERENCE_GAP = {0.05: 1.79978e-3, 0.2: 1.341676e-2, 1.0: 0.661553}
N_POINTS = 30
#: Many-well states: the number of shallow wells 0, 1, ..., MW_STATES - 2, and MW_STATES - 1 or more.
MW_STATES = 6
#: A fixed PF-ODE grid for the learned energies: refining the steps cannot reduce a model's error.
ENERGY_STEPS = 256


def _exact_gap(found: Any, t: float) -> float | None:
    if isinstance(found, MuellerBrown):
        return MB_REFERENCE_GAP[t]
    if hasattr(found, "gap"):
        return float(found.gap(t).value)
    return None


def _learned_gap(score: Any, dim: int, t: float, data: torch.Tensor, seed: int) -> dict[str, Any]:
    if dim <= 2:
        res = spectral_gap(score, t, rtol=1e-4)
        return {"value": float(res.value), "error": float(res.error), "model_error": float(res.model_error),
                "converged": bool(res.converged), "route": "grid"}
    noised = score.process.alpha(t) * data + score.process.sigma(t) * torch.randn(
        data.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    res = ritz_gap(score, t, samples=noised, generator=torch.Generator().manual_seed(seed))
    return {"value": float(res.value), "error": float(res.error), "model_error": float(res.model_error),
            "converged": bool(res.reliable), "route": "ritz"}


def _minimum(found: Any) -> torch.Tensor | None:
    """The exact global minimum of the energy (system coordinates), where known."""
    if isinstance(found, MuellerBrown):
        a = torch.tensor([[-0.558, 1.442]], dtype=torch.float64)
        return found.from_physical(a)
    if hasattr(found, "barrier_top"):
        deep = torch.tensor(float(found.basins().minima[0, 0]), dtype=torch.float64)
        return torch.stack([deep, torch.tensor(0.0, dtype=torch.float64)]).repeat(found.wells)[None]
    return None


def _energies(score: Any, found: Any, points: torch.Tensor) -> dict[str, Any]:
    x_min = _minimum(found)
    x = points if x_min is None else torch.cat([points, x_min])
    res = energy(score, None, x, n_steps=ENERGY_STEPS)
    learned = res.value
    out: dict[str, Any] = {"median_error_bar": float(res.error.median()), "converged": bool(res.converged.all())}
    if isinstance(found, DensitySystem):
        exact = -found.log_prob(x).detach()
        out["spearman"] = float(spearmanr(learned[:-1].numpy(), exact[:-1].numpy()).statistic)
        relative = (learned[:-1] - learned[-1]) - (exact[:-1] - exact[-1])
        out["max_error_vs_minimum"] = float(relative.abs().max())
        out["rms_error_vs_minimum"] = float(relative.pow(2).mean().sqrt())
    else:
        out["held_out_energy_per_dim"] = float(learned.mean() / points.shape[1])
    return out


def _basins(score: Any, found: Any, data: torch.Tensor) -> dict[str, Any] | None:
    """Free energies of the system's states relative to the first, by the ensemble's own sampler
    (state_free_energies, readout "sampler", the training data as the samples' check), against exact."""
    if isinstance(found, MuellerBrown):
        names = list(found.basins().names)
        regions = [lambda z, k=k: found.basin_of(z) == k for k in range(len(names))]
        probabilities = found.basins().probabilities
    elif isinstance(found, ManyWell):
        plus, minus, _ = found.factor_probabilities()
        counts = range(MW_STATES)
        names = [f"{k} shallow" for k in counts[:-1]] + [f">= {MW_STATES - 1} shallow"]
        regions = [lambda x, k=k: found.basin_of(x) == k for k in counts[:-1]]
        regions.append(lambda x: found.basin_of(x) >= MW_STATES - 1)
        pmf = [math.comb(found.wells, k) * plus ** (found.wells - k) * minus**k for k in counts[:-1]]
        probabilities = torch.tensor([*pmf, 1.0 - sum(pmf)], dtype=torch.float64)
    else:
        return None
    res = state_free_energies(score, regions, samples=data, readout="sampler")
    exact = -torch.log(probabilities / probabilities[0])
    pairs = [res.difference(0, k) for k in range(len(names))]
    learned, total = [p[0] for p in pairs], [p[1] for p in pairs]
    data_free = res.sample_free_energy - res.sample_free_energy[0]
    return {"names": names, "learned": learned, "exact": exact.tolist(), "total_error": total,
            "model_error": res.model_error.tolist(), "numerical": res.numerical.tolist(),
            "data_count": data_free.tolist(), "converged": bool(res.converged), "flags": list(res.flags)}


def study(name: str, quick: bool, members: int, seed: int) -> dict[str, Any]:
    found = system(name)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(found, DensitySystem):
        train, held = found.sample(20_000 if not quick else 5_000, generator), found.sample(N_POINTS, generator)
    else:
        train, held = found.train, found.held_out[:N_POINTS]
    row: dict[str, Any] = {"system": name, "dim": found.dim, "n_train": int(train.shape[0]), "members": members}
    start = time.perf_counter()
    score = train_ensemble(train, members, OU(), seed=seed, steps=300 if quick else None, progress=False)
    row["train_seconds"] = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row["gaps"] = []
        for t in TIMES:
            start = time.perf_counter()
            learned = _learned_gap(score, found.dim, t, train[:4000], seed)
            row["gaps"].append({"t": t, **learned, "exact": _exact_gap(found, t), "seconds": time.perf_counter() - start})
        start = time.perf_counter()
        row["energies"] = {**_energies(score, found, held), "seconds": time.perf_counter() - start}
        start = time.perf_counter()
        basins = _basins(score, found, train)
        row["basins"] = None if basins is None else {**basins, "seconds": time.perf_counter() - start}
    return row


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# Learned against exact on real systems (analysis/real_models.py)", "",
             "## Gaps", "", "| system | t | learned | numerical error | model error | converged | exact | ratio | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for g in row["gaps"]:
            ratio = g["value"] / g["exact"] if g["exact"] else None
            lines.append("| " + " | ".join(_fmt(v) for v in (row["system"], g["t"], g["value"], g["error"],
                                                            g["model_error"], g["converged"], g["exact"], ratio,
                                                            g["seconds"])) + " |")
    lines += ["", "## Energies (30 held-out points; errors of E(x) - E(x*) in kT)", "",
              "| system | d | Spearman | max error | rms error | median bar | held-out E / d | train s | s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        e = row["energies"]
        lines.append("| " + " | ".join(_fmt(v) for v in (
            row["system"], row["dim"], e.get("spearman"), e.get("max_error_vs_minimum"), e.get("rms_error_vs_minimum"),
            e["median_error_bar"], e.get("held_out_energy_per_dim"), row["train_seconds"], e["seconds"])) + " |")
    lines += ["", "## State free energies (relative to the first state, kT; the model's own sampler)", "",
              "| system | state | learned | total error | exact | error | covered | data count | converged |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        b = row["basins"]
        if b is None:
            continue
        for k, name in enumerate(b["names"]):
            miss = abs(b["learned"][k] - b["exact"][k])
            lines.append("| " + " | ".join(_fmt(v) for v in (
                row["system"], name, b["learned"][k], b["total_error"][k], b["exact"][k], miss,
                miss <= b["total_error"][k], b["data_count"][k], b["converged"])) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5000 draws and 300 training steps")
    parser.add_argument("--systems", nargs="+", default=["mueller-brown", "many-well-32", "two-moons", "digits"])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "analysis" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.systems:
        rows.append(study(name, args.quick, args.members, args.seed))
        (out / "real_models.json").write_text(json.dumps(rows, indent=1, default=float))
        (out / "real_models.md").write_text(markdown(rows))
        print(f"{name}: done", flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
