"""Solver schedules in high dimension (issue 22, target 2): every process baseline against the designed schedule.

Targets with exact scores and exact samples, no grid (d > 2):
- mixture-16, mixture-64: four Gaussian components in d = 16 and 64 (weights 0.4, 0.3, 0.2, 0.1;
  means 1.5 s_k, s_k fixed random sign vectors; diagonal variances uniform in [0.05, 1]; seed d),
  :class:`ExactScore`;
- many-well-32: :class:`~scorehamiltonian.score.systems.ManyWell` (16 double wells), its exact
  product score (noised 1D densities by quadrature).
And one learned model with no density: digits (scikit-learn's 8 x 8 digits, 64-d), a
:func:`train_dsm` network with the toolkit's defaults on the 1347 training rows, judged against
the 450 held-out rows (t_min = 0.01, the network's own first time).
OU, t_max = 5, t_min = 1e-3 (exact targets); runs from the prior N(0, (alpha_T^2 + sigma_T^2) I) to t_min.
Solvers heun and dpmpp-2m at NFE 10 and 20. Schedules: every process baseline and
:func:`design_steps` with a model-only objective (``--metric``; a learned model in high d allows
no other), against a 200-step run of the same solver from 512 prior draws: "energy" (the
default: the 1-Wasserstein distance between the laws of log p(x_N) and log p(x_ref), both by the
model's own score), "trajectory" (the mean squared distance E |x_N - x_ref|^2) or "combined"
(their sum, each in units of its median over the baselines).

Judges, on ``--n`` runs from the same prior draws for every schedule (common random numbers)
against as many exact samples of p_{t_min}: the basin-weight error (mixtures: the component of
largest responsibility under p_{t_min}; many-well: the number of shallow wells, Binomial(16, P_-)),
the sliced Wasserstein distance SW_1 and the cross-entropy gap E_q[-log p] - E_p[-log p] (E_p
from ENTROPY_SAMPLES exact samples, so that its error does not hide which side of the floor a
schedule lies: a negative gap is over-concentration, and schedules are ranked by its size), each
with its Monte Carlo standard error; digits: SW_1 against the held-out rows and the held-out judges
of :func:`fit_classifier_judge` (class TV of a scikit-learn MLP's predictions, the Frechet distance
of its hidden features; the training rows' own values are the floor). For each metric the best baseline is the one with the
smallest value; "gain" = 1 - designed / best, and "z" = (best - designed) / sqrt(se_best^2 +
se_designed^2) (conservative: the common draws correlate the two, which would shrink the
difference's error), except for the cross-entropy, whose difference is paired run by run (the
same prior draw through both schedules; the E_p term cancels) and taken of the sizes (for gaps
of opposite signs |a| - |b| = a + b, whose error is bounded by the sum of the two), and the
digits' Frechet distance (bootstrap resamples common to both,
:meth:`ClassifierJudge.frechet_difference`). Target: gain >= 0.2 with z >= 2 at NFE 10 and 20.

Run: ``python analysis/solver_schedules_highd.py`` (about 30 min on 2 cores; ``--targets``,
``--max-time``, ``--n``, ``--metric``; ``--update`` keeps the other targets' results). Writes
analysis/results/solver_schedules_highd.{json,md} (with another metric than "energy":
solver_schedules_highd_METRIC.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from typing import Any

import torch

from scorehamiltonian import OU, ExactScore, GaussianMixture, train_dsm
from scorehamiltonian.common.statistics import mean_and_stderr
from scorehamiltonian.sampling import PROCESS_BASELINES, baseline_schedule, design_steps
from scorehamiltonian.sampling.sample_judges import (
    basin_weight_error,
    cross_entropy_gap,
    expected_energy,
    fit_classifier_judge,
    sliced_wasserstein,
)
from scorehamiltonian.sampling.solvers import prior_samples, sample
from scorehamiltonian.score.systems import ManyWell, system

T_MAX, T_MIN = 5.0, 1e-3
TARGETS = ("mixture-16", "mixture-64", "many-well-32", "digits")
SOLVERS = ("heun", "dpmpp-2m")
NFES = (10, 20)
METRICS = ("basin", "sw1", "cross_entropy", "class_tv", "frechet")
#: Exact samples for E_p[-log p], the cross-entropy's floor (standard error 0.015 - 0.02 nats here).
ENTROPY_SAMPLES = 100_000


def mixture(dim: int) -> GaussianMixture:
    """Four components in d = dim (module docstring), fixed seed."""
    generator = torch.Generator().manual_seed(dim)
    signs = torch.randint(0, 2, (4, dim), generator=generator).to(torch.float64) * 2 - 1
    variances = 0.05 + 0.95 * torch.rand(4, dim, generator=generator, dtype=torch.float64)
    return GaussianMixture([0.4, 0.3, 0.2, 0.1], 1.5 * signs, variances)


def component_of(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """The index of the component of largest responsibility at each point (diagonal covariances)."""
    var = torch.diagonal(mix.covs, dim1=-2, dim2=-1)
    log_joint = mix.log_weights - 0.5 * (((x[:, None, :] - mix.means) ** 2) / var + torch.log(var)).sum(-1)
    return log_joint.argmax(-1)


class Target:
    """A score with samples of its law at t_min and its judges: exact targets with exact samples,
    log-density and basins; digits with its held-out rows and classifier judges."""

    def __init__(self, name: str) -> None:
        process = OU()
        self.name, self.t_min, self.log_p = name, T_MIN, None
        if name == "digits":
            data = system("digits")
            self.score = train_dsm(data.train, process, seed=0, progress=False)
            self.t_min = self.score.t_trained
            self.classifier = fit_classifier_judge(data.train, data.train_labels, data.held_out, data.held_out_labels)
            self.held_out = data.held_out
        elif name.startswith("mixture"):
            self.score = ExactScore(mixture(int(name.split("-")[1])), process)
            marginal = self.score.marginal(T_MIN)
            self.basin = lambda x: component_of(marginal, x)
            self.weights = marginal.weights
            self.log_p = lambda x: self.score.log_prob(x, T_MIN)
        else:
            system_ = ManyWell(16)
            self.score = system_.exact_score(process)
            plus, minus, _ = system_.factor_probabilities()
            self.basin = system_.basin_of  # the number of shallow wells: exact law Binomial(16, P_-)
            k = torch.arange(system_.wells + 1, dtype=torch.float64)
            log_binomial = (torch.lgamma(torch.tensor(system_.wells + 1.0)) - torch.lgamma(k + 1)
                            - torch.lgamma(system_.wells - k + 1))
            weights = torch.exp(log_binomial + (system_.wells - k) * math.log(plus) + k * math.log(minus))
            self.weights = weights / weights.sum()  # P_+ + P_- is 1 to the quadrature's error
            self.log_p = lambda x: self.score.log_prob(x, T_MIN)
        if self.log_p is not None:  # E_p[-log p] once, from many exact samples (module docstring)
            self.floor = expected_energy(self.score.sample(ENTROPY_SAMPLES, T_MIN, torch.Generator().manual_seed(2)),
                                         self.log_p)
        self.dim = self.score.dim

    def reference(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n exact samples of p_{t_min}, or the held-out rows."""
        return self.held_out if self.name == "digits" else self.score.sample(n, T_MIN, generator)

    def judgements(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Each metric this target has, as a SampleDistance."""
        out = {"sw1": sliced_wasserstein(x, y)}
        if self.name == "digits":
            return {**out, "class_tv": self.classifier.class_tv(x), "frechet": self.classifier.frechet(x)}
        return {**out, "basin": basin_weight_error(x, self.basin, self.weights),
                "cross_entropy": cross_entropy_gap(x, self.floor, self.log_p)}


def judge(target: Target, schedule: Any, solver: str, x0: torch.Tensor, y: torch.Tensor
          ) -> tuple[dict[str, Any], torch.Tensor]:
    """The judgements of one schedule, and for paired differences the runs' ends: -log p at each
    (exact targets) or the ends themselves (digits)."""
    with torch.no_grad():
        run = sample(solver, target.score, x0, schedule, generator=torch.Generator().manual_seed(1))
    out = {"nfe": run.nfe, "times": [float(t) for t in schedule.times]}
    if not bool(torch.isfinite(run.x).all()):
        nan = torch.full((x0.shape[0],), math.nan, dtype=torch.float64)
        return {**out, **{m: math.nan for m in METRICS}, **{f"{m}_error": math.nan for m in METRICS}}, nan
    for name, distance in target.judgements(run.x, y).items():
        out[name], out[f"{name}_error"] = distance.value, distance.error
    return out, (-target.log_p(run.x) if target.log_p is not None else run.x)


def run_target(name: str, n: int, max_time: float, metric: str) -> dict[str, Any]:
    target = Target(name)
    generator = torch.Generator().manual_seed(0)
    x0 = prior_samples(target.score.process, T_MAX, n, target.dim, generator)
    y = target.reference(n, generator)
    if name == "digits":  # the training rows, samples of the data law itself
        floor = {m: d.value for m, d in target.judgements(system("digits").train, y).items()}
    else:
        floor = {"sw1": sliced_wasserstein(target.reference(n, generator), y).value}
    rows: dict[str, Any] = {"exact_floor": floor}
    for solver in SOLVERS:
        for nfe in NFES:
            ends = {}
            for baseline in PROCESS_BASELINES:
                schedule = baseline_schedule(baseline, target.score, nfe, solver, T_MAX, target.t_min)
                rows[f"{solver}|{nfe}|{baseline}"], ends[baseline] = judge(target, schedule, solver, x0, y)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                design = design_steps(target.score, nfe=nfe, solver=solver, t_max=T_MAX, t_min=target.t_min,
                                      metric=metric, max_time=max_time)
            row, designed_ends = judge(target, design.schedule, solver, x0, y)
            row.update(design_seconds=design.seconds, converged=design.converged, improved=design.improved,
                       start=design.start, evaluations=design.evaluations)
            if target.log_p is not None:
                row["paired_cross_entropy"] = {b: mean_and_stderr(designed_ends - v) for b, v in ends.items()}
            elif bool(torch.isfinite(designed_ends).all()):
                differences = {b: target.classifier.frechet_difference(designed_ends, v) for b, v in ends.items()
                               if bool(torch.isfinite(v).all())}
                row["paired_frechet"] = {b: (d.value, d.error) for b, d in differences.items()}
            rows[f"{solver}|{nfe}|designed"] = row
            print(f"{name} {solver} nfe={nfe}: designed from {design.start} in {design.seconds:.0f} s; "
                  + ", ".join(f"{m} {row[m]:.3g}" for m in METRICS if m in row), flush=True)
    return rows


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    lines = []
    for name, rows in results.items():
        for solver in SOLVERS:
            for nfe in NFES:
                designed = rows[f"{solver}|{nfe}|designed"]
                for metric in (m for m in METRICS if m in designed):
                    scored = {b: rows[f"{solver}|{nfe}|{b}"] for b in PROCESS_BASELINES
                              if math.isfinite(rows[f"{solver}|{nfe}|{b}"][metric])}
                    size = abs if metric == "cross_entropy" else (lambda v: v)  # below 0: over-concentrated
                    best = min(scored, key=lambda b: size(scored[b][metric]))
                    value, error = scored[best][metric], scored[best][f"{metric}_error"]
                    spread = math.hypot(error, designed[f"{metric}_error"])
                    if metric in ("cross_entropy", "frechet"):  # paired: the same prior draws for both
                        spread = designed.get(f"paired_{metric}", {}).get(best, (math.nan, math.nan))[1]
                    if metric == "cross_entropy" and value * designed[metric] < 0:  # |a| - |b| = a + b
                        spread = error + designed[f"{metric}_error"]
                    lines.append({"target": name, "solver": solver, "nfe": nfe, "metric": metric, "best": best,
                                  "best_value": value, "best_error": error, "designed": designed[metric],
                                  "designed_error": designed[f"{metric}_error"],
                                  "gain": 1 - size(designed[metric]) / size(value) if value != 0 else math.nan,
                                  "z": (size(value) - size(designed[metric])) / spread if spread > 0 else math.nan,
                                  "seconds": designed["design_seconds"],
                                  "floor": metric == "cross_entropy" and abs(value) <= 2 * error})
    return lines


def markdown(results: dict[str, Any], n: int, max_time: float, metric: str) -> str:
    lines = [f"# Solver schedules in high dimension: process baselines against design_steps ({metric} objective)",
             "", (f"OU, t_max = {T_MAX}, t_min = {T_MIN}; {n} runs from common prior draws against {n} exact samples; "
                  f"designs with max_time = {max_time:g} s. basin: basin-weight error; sw1: sliced W1 (exact-vs-exact "
                  "floor per target below); cross_entropy: E_q[-log p] - E_p[-log p] (nats; ranked by its size, since "
                  f"a negative value is over-concentration; E_p from {ENTROPY_SAMPLES} exact samples). gain = 1 - "
                  "designed / best; z = (best - designed) / combined standard error (cross_entropy, frechet: of the paired difference). "
                  "Target: gain >= 0.2 with z >= 2. (floor): the best baseline's gap is within two standard errors of "
                  "0, where the judge cannot rank schedules by their distance from the floor."), "",
             "| target | solver | NFE | metric | best baseline | its value | designed | gain | z | design s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary(results):
        lines.append(f"| {s['target']} | {s['solver']} | {s['nfe']} | {s['metric']}{' (floor)' * s['floor']} | {s['best']} | "
                     f"{s['best_value']:.3g} +- {s['best_error']:.2g} | {s['designed']:.3g} +- "
                     f"{s['designed_error']:.2g} | {s['gain']:.2f} | {s['z']:.1f} | {s['seconds']:.0f} |")
    lines += ["", "Floors (two exact samples; digits: the training rows against the held-out ones): " + "; ".join(
        f"{name} " + ", ".join(f"{m} {v:.3g}" for m, v in rows["exact_floor"].items()) for name, rows in results.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="analysis/results")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--n", type=int, default=4000, help="runs and exact samples per judgement")
    parser.add_argument("--max-time", type=float, default=120.0, help="seconds per design")
    parser.add_argument("--metric", default="energy", choices=("energy", "combined", "trajectory"),
                        help="design_steps' objective")
    parser.add_argument("--update", action="store_true", help="keep the json's results of the targets not run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    results, started = {}, time.perf_counter()
    stem = "solver_schedules_highd" + ("" if args.metric == "energy" else f"_{args.metric}")
    if args.update:
        with open(os.path.join(args.out, f"{stem}.json")) as handle:
            results = {k: v for k, v in json.load(handle)["results"].items() if k not in args.targets}
    for name in args.targets:
        results[name] = run_target(name, args.n, args.max_time, args.metric)
        with open(os.path.join(args.out, f"{stem}.json"), "w") as handle:
            json.dump({"n": args.n, "max_time": args.max_time, "metric": args.metric, "results": results}, handle,
                      indent=1)
        with open(os.path.join(args.out, f"{stem}.md"), "w") as handle:
            handle.write(markdown(results, args.n, args.max_time, args.metric))
    print(markdown(results, args.n, args.max_time, args.metric))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
