"""The main job: one report on a score covering all four parts of the toolkit.

:func:`build_report` runs, for a validated configuration (:mod:`scorehamiltonian.app.config`):

1. spectrum: the gap profile lambda_1(t) - lambda_0(t) with its errors and the adiabatic
   speed A(t) (:func:`~scorehamiltonian.spectral.profiles.gap_profile`), and the lowest eigenpairs
   of H_t at chosen times with their residual norms;
2. schedules: the named baselines and the designed schedule for the exact target, each
   judged by exact propagation (final TV, basin-weight error) beside its tracking bound;
3. energies: -log p_0 by the probability-flow ODE against the exact value at samples of
   p_0, and one free-energy difference with a closed form (module notes);
4. audit: finiteness, scale, curl of the score's Jacobian, and for a learned score its
   error against the exact score and the line-integral cycle closure.

It returns a :class:`Report`: ``numbers`` (JSON-ready, every value beside its error or
flag; :data:`REPORT_SCHEMA` is its schema) and the arrays the figures need. Writing files
is :func:`write_report`'s job: PNG figures, ``report.json`` and ``summary.md``, assembled
in a temporary folder and moved into place only when complete.

Free energy: U_0 = -log p_0 of the target (normalised, Z_0 = 1; a learned score enters
through its PF-ODE energy) and U_1(x) = |x - m|^2 / (2 v), the Gaussian with the target's
mean m and mean variance v, Z_1 = (2 pi v)^(d/2); so Delta F = -log(Z_1 / Z_0) =
-(d/2) log(2 pi v) exactly (for the exact score).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from ..common.errors import OutputError
from ..common.files import write_json
from ..sampling.bounds import tracking_bound
from ..sampling.designer import design_schedule
from ..sampling.propagation import propagate_exact
from ..sampling.schedules import Schedule, standard_schedule
from ..score.audit import score_audit, score_error
from ..score.checkpoints import load_score
from ..score.examples import example
from ..score.interface import ExactScore, Score
from ..score.potential import quantum_potential
from ..score.processes import PROCESS_NAMES
from ..score.training import train_dsm
from ..spectral.eigensolvers import spectrum
from ..spectral.gap import spectral_gap
from ..spectral.grid import Grid, box_from_mixture
from ..spectral.operator import ScoreHamiltonian
from ..spectral.profiles import gap_profile
from ..thermo.energy import energy, start_time
from ..thermo.free_energy import free_energy_difference
from ..thermo.path import ScoreEnergy

__all__ = ["REPORT_SCHEMA", "Report", "build_report", "write_report"]

#: Interior nodes per axis of the eigenfunction grids (1D, 2D).
EIGEN_NODES = {1: 255, 2: 63}
#: Files a report writes.
FIGURES = ("eigenfunctions.png", "gap_profile.png", "schedules.png", "bounds.png", "energy.png")

_VALUE_ERROR = {"type": "object", "required": ["value", "error"],
                "properties": {"value": {"type": ["number", "null"]}, "error": {"type": ["number", "null"]}}}
_ARRAY = {"type": "array", "items": {"type": ["number", "null"]}}

#: JSON schema of ``report.json`` (numbers are floats or null where not finite).
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "config", "model", "spectrum", "schedules", "energy", "free_energy", "audit",
                 "seconds"],
    "properties": {
        "version": {"type": "string"},
        "config": {"type": "object"},
        "model": {"type": "object", "required": ["kind", "example", "process", "dim"]},
        "spectrum": {
            "type": "object", "required": ["profile", "eigenpairs"],
            "properties": {
                "profile": {"type": "object", "required": ["times", "gap", "gap_error", "converged", "speed",
                                                           "speed_stderr"],
                            "properties": {"times": _ARRAY, "gap": _ARRAY, "gap_error": _ARRAY, "speed": _ARRAY,
                                           "speed_stderr": _ARRAY,
                                           "converged": {"type": "array", "items": {"type": "boolean"}}}},
                "eigenpairs": {"type": "array", "items": {
                    "type": "object", "required": ["t", "eigenvalues", "residual_norms", "converged", "gap"],
                    "properties": {"gap": _VALUE_ERROR}}},
            },
        },
        "schedules": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["name", "times", "langevin_time", "tv", "weight_error", "tv_bound", "chi2_bound",
                         "judge_error"],
            "properties": {"times": _ARRAY, "langevin_time": _ARRAY}}},
        "energy": {"type": "object", "required": ["points", "value", "error", "exact", "max_abs_error", "nfe"]},
        "free_energy": {"type": "object", "required": ["method", "value", "error", "exact", "converged"]},
        "audit": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["t", "curl_ratio", "curl_ratio_error", "rms_norm", "n_nonfinite"]}},
        "seconds": {"type": "object"},
    },
}


@dataclass
class Report:
    """A finished report: ``numbers`` (JSON-ready, :data:`REPORT_SCHEMA`) and ``arrays``
    (per figure, the data it draws), plus the per-section wall times inside ``numbers``."""

    numbers: dict[str, Any]
    arrays: dict[str, Any] = field(default_factory=dict)


def _finite(value: Any) -> Any:
    """Floats (NaN / Inf -> None), recursively, for JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _finite(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------- the score


def _scores(config: dict[str, Any], progress: bool) -> tuple[Score, ExactScore, dict[str, Any]]:
    """(the score under study, the exact reference score, the model's description)."""
    model = config["model"]
    mixture = example(model["example"])
    if model["kind"] == "file":
        score = load_score(model["path"])
        reference = ExactScore(mixture, score.process)
    else:
        reference = ExactScore(mixture, PROCESS_NAMES[model["process"]]())
        score = reference
        if model["kind"] == "mlp":
            generator = torch.Generator().manual_seed(config["seed"])
            samples = mixture.sample(model["train_samples"], generator)
            score = train_dsm(samples, reference.process, steps=model["train_steps"], seed=config["seed"],
                              progress=progress)
    if score.dim is not None and score.dim != mixture.dim:
        raise ValueError(f"the model has d = {score.dim} but example {model['example']!r} has d = {mixture.dim}")
    info = {"kind": model["kind"], "example": model["example"], "process": repr(reference.process),
            "dim": mixture.dim, "score": repr(score)}
    return score, reference, info


def _sampler(reference: ExactScore) -> Callable[[float, torch.Generator], torch.Tensor]:
    n = 4000

    def draw(t: float, generator: torch.Generator) -> torch.Tensor:
        return reference.marginal(t).sample(n, generator)

    return draw


# --------------------------------------------------------------------------- 1. spectrum


def _profile(score: Score, reference: ExactScore, config: dict[str, Any], progress: bool) -> Any:
    gap = config["gap"]
    exact = score is reference
    # A network is not analysed below the smallest time it was trained at (start_time).
    t_min = max(gap["t_min"], start_time(score))
    return gap_profile(score, t_range=(t_min, gap["t_max"]), n_initial=gap["n_initial"],
                       max_solves=max(gap["max_solves"], gap["n_initial"]), rtol=gap["rtol"], k=gap["k"],
                       n_samples=gap["n_samples"], samples=None if exact else _sampler(reference),
                       seed=config["seed"], progress=progress)


def _eigenpairs(score: Score, reference: ExactScore, t: float, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The k lowest eigenpairs of H_t on a grid (order 4) and the gap by spectral_gap."""
    lo, hi = box_from_mixture(reference.marginal(t), 1e-10)
    dim = len(lo)
    grid = Grid(lo, hi, EIGEN_NODES[dim])
    form = "ground_state" if score is reference else "potential"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H = ScoreHamiltonian(score, t, grid, order=4, form=form)
        res = spectrum(H, k=k, return_eigenvectors=True, generator=torch.Generator().manual_seed(0))
        gap = spectral_gap(score, t, rtol=1e-4, box=(lo, hi))
    points = grid.points()
    potential = quantum_potential(score, points, t).value
    numbers = {"t": t, "eigenvalues": res.eigenvalues, "residual_norms": res.residual_norms,
               "converged": bool(res.converged.all()), "form": form, "grid": list(grid.n),
               "gap": {"value": gap.value, "error": gap.error, "converged": gap.converged}}
    arrays = {"t": t, "axes": [a.numpy() for a in grid.axes()], "potential": potential.reshape(grid.n).numpy(),
              "eigenvalues": res.eigenvalues.numpy(),
              "eigenvectors": [res.eigenvectors[:, j].reshape(grid.n).numpy() / math.sqrt(grid.cell_volume)
                               for j in range(k)]}
    return numbers, arrays


# --------------------------------------------------------------------------- 2. schedules


def _schedules(reference: ExactScore, profile: Any, config: dict[str, Any]) -> list[Schedule]:
    sch = config["schedules"]
    args = (sch["n_levels"], sch["t_max"], sch["t_min"], reference.process, sch["budget"])
    covered = profile.times.min() <= sch["t_min"] and profile.times.max() >= sch["t_max"]
    source = {"profile": profile} if covered else {"score": reference}
    out = [standard_schedule(name, *args, **source) for name in sch["standard"]]
    if sch["design"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            designed = design_schedule(reference, None, sch["n_levels"], sch["budget"], sch["t_max"], sch["t_min"],
                                       max_time=sch["design_max_time"], seed=config["seed"])
        out.append(designed)
    return out


def _judge(reference: ExactScore, schedule: Schedule) -> dict[str, Any]:
    """Exact propagation of ``schedule`` (annealed Langevin) and its tracking bound."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = propagate_exact(reference.mixture, reference.process, schedule)
        bound = tracking_bound(reference.mixture, reference.process, schedule)
    return {"name": schedule.name, "times": schedule.times, "langevin_time": schedule.langevin_time,
            "tv": result.tv, "weight_error": result.weight_error, "chi2": result.chi2,
            "judge_error": result.numerical_error, "judge_converged": bool(result.converged),
            "tv_bound": bound.tv, "chi2_bound": bound.chi2}


# --------------------------------------------------------------------------- 3. energies


def _energies(score: Score, reference: ExactScore, config: dict[str, Any]) -> dict[str, Any]:
    cfg = config["energy"]
    generator = torch.Generator().manual_seed(config["seed"])
    x = reference.mixture.sample(cfg["n_points"], generator)
    if x.shape[1] == 1:
        x = x.sort(0).values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = energy(score, reference.process, x, method=cfg["method"], n_steps=cfg["n_steps"])
    exact = -reference.mixture.log_prob(x)
    out = {"points": x, "value": res.value, "error": res.error, "exact": exact, "nfe": res.nfe,
           "max_abs_error": float((res.value - exact).abs().max()), "method": cfg["method"],
           "n_steps": cfg["n_steps"]}
    closure = getattr(res, "closure", None)
    if closure is not None:
        out["cycle_closure"] = closure
    return out


def _free_energy(score: Score, reference: ExactScore, config: dict[str, Any]) -> dict[str, Any]:
    cfg = config["energy"]
    mixture = reference.mixture
    m, d = mixture.mean(), mixture.dim
    v = float(torch.diagonal(mixture.covariance()).mean())

    def gaussian(x: torch.Tensor) -> torch.Tensor:
        return ((x - m) ** 2).sum(-1) / (2 * v)

    n, generator = cfg["free_energy_samples"], torch.Generator().manual_seed(config["seed"])
    samples_1 = m + math.sqrt(v) * torch.randn(n, d, dtype=torch.float64, generator=generator)
    U_0 = mixture if score is reference else ScoreEnergy(score, n_steps=cfg["n_steps"])
    samples_0 = None if score is reference else mixture.sample(n, generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = free_energy_difference(U_0, gaussian, method=cfg["free_energy_method"], n_samples=n,
                                     samples_0=samples_0, samples_1=samples_1, generator=generator)
    return {"method": res.method, "value": res.value, "error": res.error, "systematic_error": res.systematic_error,
            "exact": -0.5 * d * math.log(2 * math.pi * v), "converged": bool(res.converged), "ess": res.ess,
            "n_energy_evaluations": res.n_energy_evaluations,
            "end_states": f"U_0 = -log p_0 ({'exact' if score is reference else 'PF-ODE energy'}), "
                          f"U_1 = |x - m|^2 / (2 v), v = {v:.6g}"}


# --------------------------------------------------------------------------- 4. audit


def _audit(score: Score, reference: ExactScore, config: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = config["audit"]
    generator = torch.Generator().manual_seed(config["seed"])
    rows = []
    for t in cfg["times"]:
        x = reference.marginal(t).sample(cfg["n_points"], generator)
        audit = score_audit(score, x, t)
        row = {"t": t, "curl_ratio": audit.curl_ratio, "curl_ratio_error": audit.curl_ratio_error,
               "rms_norm": audit.rms_norm, "max_norm": audit.max_norm, "n_nonfinite": audit.n_nonfinite,
               "warnings": audit.warnings}
        if score is not reference:
            err = score_error(score, reference, x, t)
            row.update(relative_score_error=err.relative, relative_score_error_stderr=err.relative_stderr)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- assembly


def build_report(config: dict[str, Any], progress: bool = True,
                 log: Callable[[str], None] | None = None) -> Report:
    """Run every part of the report for a validated ``config`` (module docstring).

    ``progress`` shows tqdm bars; ``log`` (e.g. print) receives one line per finished part.
    Times in the config must lie in the process's range (:class:`TimeRangeError` otherwise).
    """
    note = log or (lambda _: None)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    score, reference, model = _scores(config, progress)
    seconds["model"] = time.perf_counter() - start
    process = reference.process
    process.time(torch.tensor([config["gap"]["t_min"], config["gap"]["t_max"], config["schedules"]["t_max"],
                               *config["gap"]["eigenfunction_times"], *config["audit"]["times"]],
                              dtype=torch.float64))

    start = time.perf_counter()
    profile = _profile(score, reference, config, progress)
    pairs = [_eigenpairs(score, reference, t, config["gap"]["k"]) for t in config["gap"]["eigenfunction_times"]]
    seconds["spectrum"] = time.perf_counter() - start
    note(f"spectrum: {len(profile.times)} times, gap {np.nanmin(profile.gap):.3g} .. {np.nanmax(profile.gap):.3g}")

    start = time.perf_counter()
    judged = [_judge(reference, s) for s in _schedules(reference, profile, config)]
    seconds["schedules"] = time.perf_counter() - start
    note(f"schedules: {len(judged)} judged by exact propagation")

    start = time.perf_counter()
    energies = _energies(score, reference, config)
    free = _free_energy(score, reference, config)
    seconds["energy"] = time.perf_counter() - start
    note(f"energies: max |E - E_exact| = {energies['max_abs_error']:.2e}; "
         f"Delta F = {free['value']:.4f} +- {free['error']:.4f} (exact {free['exact']:.4f})")

    start = time.perf_counter()
    audit = _audit(score, reference, config)
    seconds["audit"] = time.perf_counter() - start

    numbers = _finite({
        "version": version("scorehamiltonian"), "config": config, "model": model,
        "spectrum": {"profile": {"times": profile.times, "gap": profile.gap, "gap_error": profile.gap_error,
                                 "converged": profile.converged, "lambda0": profile.lambda0,
                                 "speed": profile.speed, "speed_stderr": profile.speed_stderr,
                                 "failures": [list(f) for f in profile.failures]},
                     "eigenpairs": [n for n, _ in pairs]},
        "schedules": judged, "energy": energies, "free_energy": free, "audit": audit, "seconds": seconds,
    })
    arrays = {"profile": profile, "eigenpairs": [a for _, a in pairs], "schedules": judged, "energy": energies,
              "dim": model["dim"], "learned": score is not reference}
    return Report(numbers, arrays)


def _summary(numbers: dict[str, Any]) -> str:
    """The Markdown summary of a report's numbers."""
    model, prof = numbers["model"], numbers["spectrum"]["profile"]
    lines = [f"# scorehamiltonian report: {numbers['config'].get('title') or model['example']}", "",
             (f"Score: {model['kind']} ({model['score']}), target example {model['example']!r}, "
             f"{model['process']}, d = {model['dim']}."), "", "## Spectral gap and adiabatic speed", "",
             "| t | gap | error | converged | A(t) | stderr |", "|---|---|---|---|---|---|"]
    for row in zip(prof["times"], prof["gap"], prof["gap_error"], prof["converged"], prof["speed"],
                   prof["speed_stderr"]):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    lines += ["", "## Schedules (annealed Langevin, judged by exact propagation)", "",
              "| schedule | final TV | tracking bound (TV) | bound / TV | basin-weight error |",
              "|---|---|---|---|---|"]
    for s in numbers["schedules"]:
        ratio = s["tv_bound"] / s["tv"] if s["tv"] and s["tv_bound"] is not None else None
        lines.append(f"| {s['name']} | {_cell(s['tv'])} | {_cell(s['tv_bound'])} | {_cell(ratio)} | "
                     f"{_cell(s['weight_error'])} |")
    e, f = numbers["energy"], numbers["free_energy"]
    lines += ["", "## Energies", "",
              (f"-log p_0 by the PF-ODE ({e['method']}, {e['n_steps']} steps, {e['nfe']} score evaluations) at "
              f"{len(e['value'])} samples of p_0: max |E - E_exact| = {_cell(e['max_abs_error'])}, "
              f"largest reported error {_cell(max(v for v in e['error'] if v is not None))}."), "",
              (f"Delta F ({f['method']}; {f['end_states']}) = {_cell(f['value'])} +- {_cell(f['error'])} "
              f"(exact {_cell(f['exact'])}, converged {f['converged']})."), "", "## Score audit", "",
              "| t | curl ratio | error | rms abs(s) | non-finite | relative score error |", "|---|---|---|---|---|---|"]
    for a in numbers["audit"]:
        rel = a.get("relative_score_error")
        rel_text = "exact" if rel is None else f"{_cell(rel)} +- {_cell(a['relative_score_error_stderr'])}"
        lines.append(f"| {_cell(a['t'])} | {_cell(a['curl_ratio'])} | {_cell(a['curl_ratio_error'])} | "
                     f"{_cell(a['rms_norm'])} | {a['n_nonfinite']} | {rel_text} |")
    lines += ["", "## Figures", "",
              ("- `eigenfunctions.png`: the quantum potential V_t and the lowest eigenfunctions of H_t, offset by "
              "their eigenvalues (2D: the first two excited states)."),
              "- `gap_profile.png`: the gap and the adiabatic speed A(t) with error bars and the GP band.",
              "- `schedules.png`: the levels of each schedule in t, marker area proportional to Langevin time.",
              "- `bounds.png`: each schedule's exactly propagated final TV beside its tracking bound.",
              "- `energy.png`: the PF-ODE energy against the exact -log p_0."]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.4g}"
    return str(value)


def check_output_folder(folder: str | os.PathLike[str], overwrite: bool) -> None:
    """:class:`OutputError` if ``folder`` holds files and ``overwrite`` is False, or if its
    parent cannot be written (checked before any work)."""
    folder = os.path.abspath(folder)
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise OutputError(f"the output folder {folder!r} is not empty; pass --overwrite to replace it")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"the output path {folder!r} is a file, not a folder")
    parent = os.path.dirname(folder)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write into {parent!r} (missing or not writable)")


def write_report(report: Report, folder: str | os.PathLike[str], overwrite: bool = False) -> list[str]:
    """Write the figures, ``report.json`` and ``summary.md`` into ``folder``; the files' paths.

    Everything is written into a temporary sibling folder first and renamed into place at
    the end, so a failure leaves ``folder`` as it was. An existing non-empty folder is
    replaced only with ``overwrite``.
    """
    from . import plots

    folder = os.path.abspath(folder)
    check_output_folder(folder, overwrite)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", dir=os.path.dirname(folder))
    try:
        plots.report_figures(report.arrays, staging)
        write_json(os.path.join(staging, "report.json"), report.numbers)
        with open(os.path.join(staging, "summary.md"), "w") as handle:
            handle.write(_summary(report.numbers))
        if os.path.isdir(folder):
            old = folder + ".old"
            os.replace(folder, old)
            os.replace(staging, folder)
            shutil.rmtree(old)
        else:
            os.replace(staging, folder)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write the report into {folder!r}: {err}") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))
