"""How tight and how honest spectral_gap's bars are: bar / true error over 55 cases with independent truths.

Cases: the 1D examples (bimodal, asymmetric, trimodal) under OU at t = 0, 0.05, 0.3, 1 to rtol
1e-5, 1e-7, 1e-9; 1/2 N(-m, 1) + 1/2 N(m, 1) for m = 3 - 7.3 (lambda_1 down to 1e-12) to 1e-6 and
1e-8; the 2D four-mode benchmark at t = 0.05, 0.3, 1 to 1e-5 and 1e-7 (a product of 1D
factors); a 2D Gaussian (gap 1 / largest variance) to 1e-5 - 1e-9; with ``--3d`` also the 3D
four-mode mixture at t = 0.15, 0.3, 1 to 1e-5. Truths: the inverse-iteration quadrature of
tests/spectral/quadrature.py (1e-13 relative) or closed forms. Reported per case: converged,
bar / true error, whether the bar covers the truth, the last three grids and the wall time.
Usage: python analysis/gap_bars.py [--3d] [--out analysis/results]; writes gap_bars.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorehamiltonian import OU, ExactScore, GaussianMixture, example
from scorehamiltonian.score.examples import four_mode_benchmark
from scorehamiltonian.spectral.gap import spectral_gap
from scorehamiltonian.spectral.grid import box_from_mixture
from tests.spectral.quadrature import lambda1_1d
from tests.spectral.test_gap import _four_mode_truth, _quadrature_1d


def _two_modes(separation: float) -> float:
    mixture = GaussianMixture([0.5, 0.5], [-separation, separation], [1.0, 1.0])
    lo, hi = box_from_mixture(mixture, 1e-15)
    return lambda1_1d(lambda x: mixture.log_prob(torch.from_numpy(x)[:, None]).numpy(), lo[0], hi[0])[0]


def cases(three_d: bool) -> list[tuple]:
    """(name, score, t, rtol, truth) with the truth a thunk."""
    out = []
    for name in ("bimodal", "asymmetric", "trimodal"):
        score = ExactScore(example(name), OU())
        for t in (0.0, 0.05, 0.3, 1.0):
            out += [(f"{name} t={t}", score, t, rtol, lambda s=score, t=t: _quadrature_1d(s.marginal(t)))
                    for rtol in (1e-5, 1e-7, 1e-9)]
    for m in (3.0, 5.0, 6.0, 7.0, 7.3):
        score = ExactScore(GaussianMixture([0.5, 0.5], [-m, m], [1.0, 1.0]))
        out += [(f"two modes m={m}", score, 0.0, rtol, lambda m=m: _two_modes(m)) for rtol in (1e-6, 1e-8)]
    four = ExactScore(four_mode_benchmark(), OU())
    for t in (0.05, 0.3, 1.0):
        out += [(f"four-mode 2D t={t}", four, t, rtol, lambda t=t: _four_mode_truth(t)) for rtol in (1e-5, 1e-7)]
    gaussian = GaussianMixture([1.0], [[0.3, -0.2]], [[[0.5, 0.2], [0.2, 1.2]]])
    nu_max = float(torch.linalg.eigvalsh(gaussian.covs[0]).max())
    out += [("gaussian 2D", ExactScore(gaussian), 0.0, rtol, lambda: 1 / nu_max) for rtol in (1e-5, 1e-7, 1e-9)]
    if three_d:
        four3 = ExactScore(four_mode_benchmark(3), OU())
        out += [(f"four-mode 3D t={t}", four3, t, 1e-5, lambda t=t: _four_mode_truth(t, 3)) for t in (0.15, 0.3, 1.0)]
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| case | rtol | converged | bar / true error | covered | true error / value | last grids | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['rtol']:.0e} | {r['converged']} | {r['ratio']:.2f} | {r['covered']} | "
              f"{r['relative_true_error']:.1e} | {r['grids'][-3:]} | {r['seconds']:.2f} |" for r in rows]
    done = [r for r in rows if r["converged"]]
    ratios = sorted(r["ratio"] for r in done)
    lines += ["", (f"{len(done)} of {len(rows)} converged; {sum(r['covered'] for r in done)} covered; "
              f"bar / true error {ratios[0]:.2f} - {ratios[-1]:.2f}, median {ratios[len(ratios) // 2]:.2f}.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--3d", dest="three_d", action="store_true", help="add the 3D four-mode cases (minutes)")
    parser.add_argument("--out", default=str(ROOT / "analysis" / "results"))
    args = parser.parse_args()
    rows = []
    for name, score, t, rtol, truth in cases(args.three_d):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = spectral_gap(score, t, rtol=rtol)
        seconds = time.perf_counter() - start
        exact = truth()
        error = abs(result.value - exact)
        rows.append({"case": name, "rtol": rtol, "converged": bool(result.converged), "value": result.value, "bar": result.error,
                         "true_error": error, "relative_true_error": error / exact, "covered": bool(error <= result.error),
                         "ratio": result.error / error if error > 0 else float("inf"),
                         "grids": [lv.n[0] for lv in result.levels], "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gap_bars.json").write_text(json.dumps(rows, indent=1))
    (Path(args.out) / "gap_bars.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
