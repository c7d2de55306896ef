"""The ``scorehamiltonian`` command line: the only module that prints.

Subcommands:
  report    the main job: gap profile, schedules and bounds, energies, audit -> figures, JSON, Markdown
  audit     quantum potential and score audit of a built-in example or a trained model
  gap       spectral gap of the Score Hamiltonian with its error estimate, along t
  schedule  standard and designed schedules judged by exact propagation, with their bounds
  energy    -log p_0(x) by the probability-flow ODE, with its error (and the exact value)
  train     train an MLP score (or an ensemble) by denoising score matching on a data file or an example
  examples  list the built-in example targets and systems
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from ..common.errors import ScoreHamiltonianError
from ..sampling.bounds import tracking_bound
from ..sampling.designer import design_schedule
from ..sampling.propagation import propagate_exact
from ..sampling.schedules import standard_schedule
from ..score.audit import score_audit, score_error
from ..score.checkpoints import load_score, save_score
from ..score.ensemble import train_ensemble
from ..score.examples import EXAMPLES, example
from ..score.interface import ExactScore, Score
from ..score.potential import quantum_potential
from ..score.processes import PROCESS_NAMES, ForwardProcess
from ..score.systems import SYSTEMS, DensitySystem, system
from ..score.training import train_dsm
from ..spectral.gap import spectral_gap
from ..thermo.energy import energy
from .config import BUILTIN, builtin_config, load_config
from .data import DATA_FORMATS, load_data
from .report import build_report, check_output_folder, write_report

#: Default audit times, as fractions of the process's t_max.
DEFAULT_TIME_FRACTIONS = (0.005, 0.03, 0.1, 0.3)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorehamiltonian",
        description="Spectral analysis of diffusion models through the Score Hamiltonian.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="quantum potential and score audit along t")
    source = audit.add_mutually_exclusive_group()
    source.add_argument("--example", choices=sorted(EXAMPLES), help="built-in exact target (default bimodal)")
    source.add_argument("--model", help="checkpoint written by 'scorehamiltonian train'")
    audit.add_argument("--reference", choices=sorted(EXAMPLES),
                       help="exact target to sample p_t from and to measure a model's score error against")
    audit.add_argument("--process", choices=sorted(PROCESS_NAMES), default="ou",
                       help="forward process of an example (a model brings its own); default ou")
    audit.add_argument("--t", type=float, nargs="+", help="diffusion times (default: 0.5%%, 3%%, 10%%, 30%% of t_max)")
    audit.add_argument("--samples", type=int, default=2000, help="points per time (default 2000)")
    audit.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="train an MLP score by denoising score matching")
    train_source = train.add_mutually_exclusive_group()
    train_source.add_argument("--example", choices=sorted(EXAMPLES), help="built-in target to sample (default bimodal)")
    train_source.add_argument("--system", choices=sorted(SYSTEMS),
                              help="built-in system: exact draws of a density, or a data set's training rows")
    train_source.add_argument("--data", help="samples of the data, N x d: " + ", ".join(DATA_FORMATS)
                              + " (name an array of an .npz or .pt file as FILE:NAME)")
    train.add_argument("--process", choices=sorted(PROCESS_NAMES), default="ou")
    train.add_argument("--samples", type=int, default=10_000, help="training samples of an example (default 10000)")
    train.add_argument("--ensemble", type=int, default=1, metavar="K",
                       help="train K models (seeds and bootstrap resamples) into one ensemble checkpoint")
    train.add_argument("--steps", type=int, help="optimisation steps (default from d and N)")
    train.add_argument("--t-min", type=float, default=1e-2, help="smallest training time (default 0.01)")
    train.add_argument("--validation", type=float, default=0.1, help="held-out fraction (default 0.1)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--out", required=True, help="checkpoint file to write")

    gap = sub.add_parser("gap", help="spectral gap of the Score Hamiltonian with its error, along t")
    gap_source = gap.add_mutually_exclusive_group()
    gap_source.add_argument("--example", choices=sorted(EXAMPLES), help="built-in exact target (default bimodal)")
    gap_source.add_argument("--model", help="checkpoint written by 'scorehamiltonian train'")
    gap.add_argument("--process", choices=sorted(PROCESS_NAMES), default="ou",
                     help="forward process of an example (a model brings its own); default ou")
    gap.add_argument("--t", type=float, nargs="+", help="diffusion times (default: 0.5%%, 3%%, 10%%, 30%% of t_max)")
    gap.add_argument("--rtol", type=float, default=1e-6, help="relative accuracy of the gap (default 1e-6)")

    report = sub.add_parser("report", help="the main job: a full report with figures (see README)")
    report_source = report.add_mutually_exclusive_group(required=True)
    report_source.add_argument("config", nargs="?", help="TOML configuration file")
    report_source.add_argument("--example", choices=sorted(BUILTIN), help="a built-in configuration")
    report.add_argument("--out", help="output folder (default report-<name>)")
    report.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    report.add_argument("--small", action="store_true", help="reduced sizes (built-in configurations only)")
    report.add_argument("--quiet", action="store_true", help="no progress bars")

    schedule = sub.add_parser("schedule", help="schedules judged by exact propagation, with tracking bounds")
    schedule.add_argument("--example", choices=sorted(EXAMPLES), default="asymmetric")
    schedule.add_argument("--process", choices=sorted(PROCESS_NAMES), default="ou")
    schedule.add_argument("--levels", type=int, default=10, help="number of levels N (default 10)")
    schedule.add_argument("--budget", type=float, default=10.0, help="total Langevin time U (default 10)")
    schedule.add_argument("--t-max", type=float, default=5.0)
    schedule.add_argument("--t-min", type=float, default=1e-3)
    schedule.add_argument("--names", nargs="+", default=["log-uniform", "cosine", "edm", "thermodynamic"],
                          help="standard schedules to compare")
    schedule.add_argument("--no-design", action="store_true", help="skip the schedule designer")

    energy_cmd = sub.add_parser("energy", help="-log p_0(x) by the probability-flow ODE")
    energy_source = energy_cmd.add_mutually_exclusive_group()
    energy_source.add_argument("--example", choices=sorted(EXAMPLES), help="built-in exact target (default bimodal)")
    energy_source.add_argument("--model", help="checkpoint written by 'scorehamiltonian train'")
    energy_cmd.add_argument("--process", choices=sorted(PROCESS_NAMES), default="ou")
    energy_cmd.add_argument("--x", type=float, nargs="+", required=True,
                            help="points, flattened row by row (d values per point)")
    energy_cmd.add_argument("--atol", type=float, default=1e-3,
                            help="accuracy asked for, in nats: each point's grid is refined until its bar meets it "
                                 "(default 1e-3)")
    energy_cmd.add_argument("--steps", type=int, help="a fixed grid of this many steps instead of the refinement")
    energy_cmd.add_argument("--method", choices=["euler", "heun", "rk4", "dopri5"], default="rk4")

    sub.add_parser("examples", help="list the built-in example targets")
    return parser


def _source(args: argparse.Namespace) -> tuple[Score, str]:
    """The score named by --model or --example (default bimodal), and a label for it."""
    if args.model:
        return load_score(args.model), f"model {args.model}"
    name = args.example or "bimodal"
    return ExactScore(example(name), PROCESS_NAMES[args.process]()), f"example {name!r}"


def _times(args: argparse.Namespace, process: ForwardProcess) -> list[float]:
    """--t, or the default fractions of t_max; checked against the process's range."""
    times = args.t or [f * process.t_max for f in DEFAULT_TIME_FRACTIONS]
    process.time(torch.tensor(times, dtype=torch.float64))
    return times


def _audit(args: argparse.Namespace) -> None:
    if args.samples < 2:
        raise ValueError(f"--samples must be at least 2; got {args.samples}")
    score, label = _source(args)
    process = score.process
    reference_name = args.reference or (None if args.model else args.example or "bimodal")
    reference = ExactScore(example(reference_name), process) if reference_name else None
    times = _times(args, process)
    generator = torch.Generator().manual_seed(args.seed)
    dim = reference.dim if reference else score.dim
    print(f"scorehamiltonian audit: {label}, {process!r}, {args.samples} points per time")
    print("  points: " + (f"samples of p_t of example {reference_name!r}" if reference else "uniform in [-5, 5]^d"))
    header = f"{'t':>9} {'sigma_t':>8} {'rms|s|':>9} {'curl':>9} {'V min':>10} {'V median':>10} {'V max':>10} {'V error':>9} {'div':>8}"
    if args.model and reference:
        header += f" {'rel. score error':>18}"
    print(header)
    for t in times:
        if reference:
            x = reference.marginal(t).sample(args.samples, generator)
        else:
            x = 10.0 * torch.rand(args.samples, dim, dtype=torch.float64, generator=generator) - 5.0
        pot = quantum_potential(score, x, t)
        report = score_audit(score, x, t)
        v = pot.value
        row = (f"{t:9.4g} {float(process.sigma(t)):8.4f} {report.rms_norm:9.4g} {report.curl_ratio:9.2e} "
               f"{float(v.min()):10.4g} {float(v.median()):10.4g} {float(v.max()):10.4g} "
               f"{float(pot.error.max()):9.2e} {pot.divergence.method:>8}")
        if args.model and reference:
            err = score_error(score, reference, x, t)
            row += f" {err.relative:9.4f} +- {err.relative_stderr:.4f}"
        print(row)
    print("V = |s|^2/4 + div(s)/2 (units 1/x^2); curl = relative antisymmetric part of the score's Jacobian.")


def _train(args: argparse.Namespace) -> None:
    process = PROCESS_NAMES[args.process]()
    generator = torch.Generator().manual_seed(args.seed)
    reference = None
    if args.data:
        samples, label = load_data(args.data), f"data {args.data}"
    elif args.system:
        found, label = system(args.system), f"system {args.system!r}"
        if isinstance(found, DensitySystem):
            reference, samples = found.exact_score(process), found.sample(args.samples, generator)
        else:
            samples = found.train
    else:
        name = args.example or "bimodal"
        reference = ExactScore(example(name), process)
        samples, label = reference.mixture.sample(args.samples, generator), f"example {name!r}"
    if args.ensemble < 1:
        raise ValueError(f"--ensemble must be at least 1; got {args.ensemble}")
    options = {"steps": args.steps, "t_min": args.t_min, "validation": args.validation, "progress": not args.quiet}
    print(f"scorehamiltonian train: {label}, {samples.shape[0]} samples in d = {samples.shape[1]}, {process!r}"
          + (f", ensemble of {args.ensemble}" if args.ensemble > 1 else ""), flush=True)
    if args.ensemble > 1:
        score = train_ensemble(samples, args.ensemble, process, seed=args.seed, **options)
        members = score.members
    else:
        score = train_dsm(samples, process, seed=args.seed, **options)
        members = [score]
    save_score(score, args.out)
    for k, member in enumerate(members):
        record = member.model.training_config
        held = "-" if record["held_out_loss"] is None else f"{record['held_out_loss']:.4f}"
        print(f"  model {k}: {record['steps']} steps, training loss {record['final_loss']:.4f}, "
              f"held-out loss {held} (best at step {record['best_step']})")
    print(f"wrote {args.out}")
    if reference is not None:
        for frac in DEFAULT_TIME_FRACTIONS[1:]:
            t = frac * process.t_max
            x = reference.sample(4000, t, generator)
            err = score_error(score, reference, x, t)
            print(f"  t = {t:8.4g}: relative score error {err.relative:.4f} +- {err.relative_stderr:.4f}")


def _gap(args: argparse.Namespace) -> None:
    if not 0 < args.rtol < 1:
        raise ValueError(f"--rtol must lie in (0, 1); got {args.rtol}")
    score, label = _source(args)
    process = score.process
    times = _times(args, process)
    print(f"scorehamiltonian gap: {label}, {process!r}, rtol {args.rtol:g}")
    print(f"{'t':>9} {'gap':>14} {'error':>10} {'converged':>9} {'form':>12} {'grid':>14} {'order seen':>10}")
    for t in times:
        res = spectral_gap(score, t, rtol=args.rtol)
        seen = f"{res.observed_order:.2f}" if res.observed_order is not None else "-"
        print(f"{t:9.4g} {res.value:14.8g} {res.error:10.2e} {res.converged!s:>9} {res.form:>12} "
              f"{'x'.join(map(str, res.grid.n)):>14} {seen:>10}")
    print("gap = lambda_1 - lambda_0 of H_t (units 1/x^2), Richardson-extrapolated; error = its estimate.")


def _report(args: argparse.Namespace) -> int:
    if args.config:
        if args.small:
            raise ValueError("--small applies to the built-in configurations (--example) only")
        config, name = load_config(args.config), os.path.splitext(os.path.basename(args.config))[0]
    else:
        config, name = builtin_config(args.example, small=args.small), args.example
    out = args.out or f"report-{name}"
    check_output_folder(out, args.overwrite)
    print(f"scorehamiltonian report: {config['title'] or name} -> {out}/", flush=True)
    report = build_report(config, progress=not args.quiet, log=lambda line: print("  " + line, flush=True))
    files = write_report(report, out, overwrite=args.overwrite)
    if report.numbers["schedules"] is not None:
        print(f"{'schedule':>22} {'final TV':>10} {'TV bound':>10} {'weight err':>10}")
        for s in report.numbers["schedules"]:
            print(f"{s['name']:>22} {_num(s['tv']):>10} {_num(s['tv_bound']):>10} {_num(s['weight_error']):>10}")
    print(f"wrote {len(files)} files into {os.path.abspath(out)}/: " + ", ".join(os.path.basename(f) for f in files))
    for section, reason in report.numbers["failures"].items():
        print(f"scorehamiltonian report: section {section} failed: {reason}", file=sys.stderr)
    return 1 if report.numbers["failures"] else 0


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _schedule(args: argparse.Namespace) -> None:
    reference = ExactScore(example(args.example), PROCESS_NAMES[args.process]())
    process = reference.process
    schedules = [standard_schedule(n, args.levels, args.t_max, args.t_min, process, args.budget, score=reference)
                 for n in args.names]
    if not args.no_design:
        schedules.append(design_schedule(reference, None, args.levels, args.budget, args.t_max, args.t_min))
    print(f"scorehamiltonian schedule: example {args.example!r}, {process!r}, N = {args.levels}, U = {args.budget:g}")
    print(f"{'schedule':>22} {'final TV':>10} {'TV bound':>10} {'weight err':>10}   levels t_k")
    for sch in schedules:
        result = propagate_exact(reference.mixture, process, sch)
        bound = tracking_bound(reference.mixture, process, sch)
        levels = " ".join(f"{t:.3g}" for t in sch.times[1:])
        print(f"{sch.name:>22} {result.tv:10.3g} {bound.tv:10.3g} {result.weight_error:10.3g}   {levels}")
    print("final TV of annealed Langevin by exact propagation on a grid; bound: the tracking bound (TV).")


def _energy(args: argparse.Namespace) -> None:
    score, label = _source(args)
    dim = score.dim or 1
    if len(args.x) % dim:
        raise ValueError(f"--x needs a multiple of d = {dim} values; got {len(args.x)}")
    x = torch.tensor(args.x, dtype=torch.float64).reshape(-1, dim)
    grid = {"n_steps": args.steps} if args.steps is not None else {"atol": args.atol}
    res = energy(score, score.process, x, method=args.method, **grid)
    exact = -score.mixture.log_prob(x) if isinstance(score, ExactScore) else None
    how = f"{args.steps} steps" if args.steps is not None else f"refined to atol = {args.atol:g}"
    print(f"scorehamiltonian energy: {label}, {args.method}, {how}, {res.nfe} score evaluations per point")
    print(f"{'x':>24} {'-log p_0(x)':>14} {'error':>10} {'steps':>6} {'reached':>7}"
          + (f" {'exact':>14}" if exact is not None else ""))
    for i in range(x.shape[0]):
        row = (f"{[round(v, 4) for v in x[i].tolist()]!s:>24} {float(res.value[i]):14.8g} {float(res.error[i]):10.2e} "
               f"{int(res.n_steps[i]):6d} {bool(res.reached[i])!s:>7}")
        print(row + (f" {float(exact[i]):14.8g}" if exact is not None else ""))
    print("energies in k_B T; error: the numerical error bar (integrator, reference law, Hutchinson, start; "
          "the model error is reported apart); reached: whether it meets the request.")


def _examples(_: argparse.Namespace) -> None:
    for name, build in EXAMPLES.items():
        print(f"{name:14s} {build.__doc__}")
    print("systems (train --system NAME; report --example NAME trains an ensemble on it):")
    for name in SYSTEMS:
        print(f"{name:14s} {system(name).description}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input; 1 for a report written
    without some of its sections, which failed: their reasons on stderr and in the report)."""
    args = _parser().parse_args(argv)
    commands = {"audit": _audit, "train": _train, "gap": _gap, "examples": _examples, "report": _report,
                "schedule": _schedule, "energy": _energy}
    try:
        status = commands[args.command](args)
    except (ScoreHamiltonianError, ValueError, OSError) as err:
        print(f"scorehamiltonian {args.command}: error: {err}", file=sys.stderr)
        return 2
    return status or 0
