"""The whole user workflow on data files, in d = 2, 8 and 64 (issue 20's target).

For each case a data file is written as a user would have it, then the two commands of the
README run in this process through the CLI (:func:`scorehamiltonian.app.cli.main`):

    scorehamiltonian train --data FILE --ensemble 3 --out model.pt
    scorehamiltonian report report.toml      # [model] kind = "file"; [reference] samples = held-out rows

Cases (none has an exact target in the report; held-out rows are the reference):
- d = 2: scikit-learn's make_moons (12000 points, noise 0.08, random_state 1) as CSV;
- d = 8: four copies of the many-well benchmark's 2D double well (ManyWell(wells=4)), .npy;
- d = 64: scikit-learn's 8 x 8 digits (the built-in split), .npz with the array named "x".
Recorded: wall time of each command, the report's section times, the gap profile's range and
flags, the designed schedule's predicted TV against the best baseline's, the energies' largest
numerical and model errors, and the free-energy difference (d = 2) with its parts.

Usage: python analysis/user_workflows.py [--cases 2 8 64] [--out DIR] [--work DIR] [--update]
Writes user_workflows.md and user_workflows.json into DIR (default analysis/results/); with
--update the rows of cases not run are kept from the json already there. The data files,
checkpoints and reports go to --work (default a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorehamiltonian.app.cli import main
from scorehamiltonian.score.systems import ManyWell, system

CASES = (2, 8, 64)
CONFIG = """title = "user model file + data file, d = {dim}"
[model]
kind = "file"
path = "model.pt"
[reference]
samples = "heldout.npy"
"""


def _write_data(dim: int, folder: Path) -> str:
    """The training file of a case (its name) and heldout.npy beside it."""
    if dim == 2:
        from sklearn.datasets import make_moons

        x = make_moons(12000, noise=0.08, random_state=1)[0]
        np.savetxt(folder / "train.csv", x[:10000], delimiter=",")
        np.save(folder / "heldout.npy", x[10000:])
        return "train.csv"
    if dim == 8:
        x = ManyWell(wells=4).sample(24000, torch.Generator().manual_seed(0)).numpy()
        np.save(folder / "train.npy", x[:20000])
        np.save(folder / "heldout.npy", x[20000:])
        return "train.npy"
    digits = system("digits")
    np.savez(folder / "train.npz", x=digits.to_physical(digits.train).numpy())
    np.save(folder / "heldout.npy", digits.to_physical(digits.held_out).numpy())
    return "train.npz:x"


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"scorehamiltonian {' '.join(argv)} exited with {code}")
    return time.perf_counter() - start


def run_case(dim: int, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    data = _write_data(dim, folder)
    (folder / "report.toml").write_text(CONFIG.format(dim=dim))
    train_s = _timed(["train", "--data", str(folder / data), "--ensemble", "3", "--quiet",
                      "--out", str(folder / "model.pt")])
    report_s = _timed(["report", str(folder / "report.toml"), "--quiet", "--overwrite", "--out", str(folder / "out")])
    numbers = json.loads((folder / "out" / "report.json").read_text())
    prof, energy, free = numbers["spectrum"]["profile"], numbers["energy"], numbers["free_energy"]
    schedules = {s["name"]: s["tv"] for s in numbers["schedules"]}
    designed = schedules.pop("designed-reduced", None)
    return {
        "dim": dim, "data": data, "train_s": train_s, "report_s": report_s, "sections_s": numbers["seconds"],
        "route": prof["route"], "gap_times": prof["times"], "gap": prof["gap"], "gap_error": prof["gap_error"],
        "gap_model_error": prof["gap_model_error"], "gap_converged": prof["converged"],
        "judge": numbers["schedules"][0]["judge"], "designed_tv": designed,
        "best_baseline": min(schedules, key=schedules.get), "best_baseline_tv": min(schedules.values()),
        "energy_max_error": max(e for e in energy["error"] if e is not None),
        "energy_max_model_error": max((e for e in energy["model_error"] if e is not None), default=None),
        "energy_flags": energy["flags"], "free_energy": free,
    }


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# The user workflow on data files: `train --data` then `report` (issue 20)", "",
             "Ensembles of 3 MLP scores (toolkit defaults), reports with the default configuration and",
             "held-out rows as the only reference. 2-core machine; times in seconds.", "",
             ("| d | data | train | report | gap route | gap range | converged | schedules judged by | "
             "designed TV (predicted) | best baseline | energies: max numerical / model error |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gaps = [g for g in r["gap"] if g is not None]
        lines.append(
            f"| {r['dim']} | {r['data']} | {r['train_s']:.0f} | {r['report_s']:.0f} | {r['route']} | "
            f"{min(gaps):.3g} .. {max(gaps):.3g} | {sum(bool(c) for c in r['gap_converged'])} / "
            f"{len(r['gap_converged'])} | {r['judge']} | {r['designed_tv']:.3g} | {r['best_baseline']} "
            f"{r['best_baseline_tv']:.3g} | {r['energy_max_error']:.3g} / {r['energy_max_model_error']:.3g} |")
    for r in rows:
        f = r["free_energy"]
        if f.get("value") is not None:
            lines += ["", (f"d = {r['dim']}: Delta F ({f['method']}) = {f['value']:.4f} +- {f['error']:.4f} "
                          f"(statistical) +- {f['systematic_error']:.3g} (systematic) +- {f['model_error']:.3g} "
                          f"(model), Gaussian-reference value {f['exact']:.4f}, converged {f['converged']}.")]
    lines += ["", "Section times: " + "; ".join(
        f"d = {r['dim']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["sections_s"].items()) for r in rows)]
    return "\n".join(lines) + "\n"


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--out", default=str(ROOT / "analysis" / "results"))
    parser.add_argument("--work", default=None, help="folder for the data, checkpoints and reports")
    parser.add_argument("--update", action="store_true", help="keep the json's rows of the cases not run")
    args = parser.parse_args()
    out = Path(args.out)
    kept = json.loads((out / "user_workflows.json").read_text()) if args.update else []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        rows = [run_case(dim, work / f"d{dim}") for dim in args.cases]
    rows = sorted([r for r in kept if r["dim"] not in args.cases] + rows, key=lambda r: r["dim"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "user_workflows.json").write_text(json.dumps(rows, indent=1, default=float))
    (out / "user_workflows.md").write_text(_markdown(rows))
    print(_markdown(rows))


if __name__ == "__main__":
    main_cli()
