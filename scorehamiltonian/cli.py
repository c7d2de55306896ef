"""The ``scorehamiltonian`` command line: the only module that prints.

Subcommands:
  audit     quantum potential and score audit of a built-in example or a trained model
  gap       spectral gap of the Score Hamiltonian with its error estimate, along t
  train     train an MLP score by denoising score matching on samples of an example
  examples  list the built-in example targets
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from .audit import score_audit, score_error
from .errors import ScoreHamiltonianError
from .examples import EXAMPLES, example
from .gap import spectral_gap
from .potential import quantum_potential
from .processes import EDM, OU, VE, ForwardProcess, VPLinear
from .scores import ExactScore, Score
from .training import load_score, save_score, train_dsm

PROCESSES: dict[str, type[ForwardProcess]] = {"ou": OU, "vp-linear": VPLinear, "ve": VE, "edm": EDM}
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
    audit.add_argument("--process", choices=sorted(PROCESSES), default="ou",
                       help="forward process of an example (a model brings its own); default ou")
    audit.add_argument("--t", type=float, nargs="+", help="diffusion times (default: 0.5%%, 3%%, 10%%, 30%% of t_max)")
    audit.add_argument("--samples", type=int, default=2000, help="points per time (default 2000)")
    audit.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="train an MLP score by denoising score matching")
    train.add_argument("--example", choices=sorted(EXAMPLES), default="bimodal")
    train.add_argument("--process", choices=sorted(PROCESSES), default="ou")
    train.add_argument("--samples", type=int, default=10_000, help="training samples (default 10000)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="checkpoint file to write")

    gap = sub.add_parser("gap", help="spectral gap of the Score Hamiltonian with its error, along t")
    gap_source = gap.add_mutually_exclusive_group()
    gap_source.add_argument("--example", choices=sorted(EXAMPLES), help="built-in exact target (default bimodal)")
    gap_source.add_argument("--model", help="checkpoint written by 'scorehamiltonian train'")
    gap.add_argument("--process", choices=sorted(PROCESSES), default="ou",
                     help="forward process of an example (a model brings its own); default ou")
    gap.add_argument("--t", type=float, nargs="+", help="diffusion times (default: 0.5%%, 3%%, 10%%, 30%% of t_max)")
    gap.add_argument("--rtol", type=float, default=1e-6, help="relative accuracy of the gap (default 1e-6)")

    sub.add_parser("examples", help="list the built-in example targets")
    return parser


def _source(args: argparse.Namespace) -> tuple[Score, str]:
    """The score named by --model or --example (default bimodal), and a label for it."""
    if args.model:
        return load_score(args.model), f"model {args.model}"
    name = args.example or "bimodal"
    return ExactScore(example(name), PROCESSES[args.process]()), f"example {name!r}"


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
    mixture = example(args.example)
    process = PROCESSES[args.process]()
    generator = torch.Generator().manual_seed(args.seed)
    samples = mixture.sample(args.samples, generator)
    score = train_dsm(samples, process, seed=args.seed)
    save_score(score, args.out)
    print(f"wrote {args.out}: MLP score of example {args.example!r} under {process!r}")
    reference = ExactScore(mixture, process)
    for frac in DEFAULT_TIME_FRACTIONS[1:]:
        t = frac * process.t_max
        x = reference.marginal(t).sample(4000, generator)
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


def _examples(_: argparse.Namespace) -> None:
    for name, build in EXAMPLES.items():
        print(f"{name:14s} {build.__doc__}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    args = _parser().parse_args(argv)
    commands = {"audit": _audit, "train": _train, "gap": _gap, "examples": _examples}
    try:
        commands[args.command](args)
    except (ScoreHamiltonianError, ValueError, OSError) as err:
        print(f"scorehamiltonian {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
