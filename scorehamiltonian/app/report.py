"""The main job: one report on a score covering all four parts of the toolkit.

:func:`build_report` resolves a validated configuration (:mod:`scorehamiltonian.app.config`)
into the score under study and its reference (:mod:`.subjects`: an exact example, a data
file, a log-density, or the training data alone) and runs the four sections of
:mod:`.sections`: the spectrum (gap profile and eigenpairs), schedules (judged exactly where
the reference is a Gaussian mixture in d <= 2, by the reduced model otherwise), energies and
one free-energy difference, and the audit. Every section works in any dimension with what
the reference knows, and says what it lacks.

It returns a :class:`Report`: ``numbers`` (JSON-ready, every value beside its error or
flag; :data:`REPORT_SCHEMA` is its schema) and the arrays the figures need. Writing files
is :func:`write_report`'s job: PNG figures, ``report.json`` and ``summary.md``, assembled
in a temporary folder and moved into place only when complete.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from ..common.errors import ConfigError, OutputError
from ..common.files import write_json
from ..thermo.energy import start_time
from . import sections
from .subjects import resolve_subject

__all__ = ["REPORT_SCHEMA", "Report", "build_report", "write_report"]

#: Files a report writes.
FIGURES = ("eigenfunctions.png", "gap_profile.png", "schedules.png", "bounds.png", "energy.png")

_VALUE_ERROR = {"type": "object", "required": ["value", "error"],
                "properties": {"value": {"type": ["number", "null"]}, "error": {"type": ["number", "null"]}}}
_ARRAY = {"type": "array", "items": {"type": ["number", "null"]}}

#: JSON schema of ``report.json`` (numbers are floats or null where not finite).
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "config", "model", "spectrum", "schedules", "energy", "free_energy", "audit",
                 "seconds", "failures"],
    "properties": {
        "version": {"type": "string"},
        "config": {"type": "object"},
        "model": {"type": "object", "required": ["kind", "reference", "process", "dim"]},
        "spectrum": {
            "type": ["object", "null"], "required": ["profile", "eigenpairs"],
            "properties": {
                "profile": {"type": "object", "required": ["times", "gap", "gap_error", "gap_model_error",
                                                           "converged", "resolved", "speed", "speed_stderr"],
                            "properties": {"times": _ARRAY, "gap": _ARRAY, "gap_error": _ARRAY,
                                           "gap_model_error": _ARRAY, "speed": _ARRAY,
                                           "speed_stderr": _ARRAY,
                                           "converged": {"type": "array", "items": {"type": "boolean"}},
                                           "resolved": {"type": "array", "items": {"type": "boolean"}}}},
                "eigenpairs": {"type": "array", "items": {
                    "type": "object", "required": ["t", "eigenvalues", "residual_norms", "converged", "gap"],
                    "properties": {"gap": _VALUE_ERROR}}},
            },
        },
        "schedules": {"type": ["array", "null"], "minItems": 1, "items": {
            "type": "object",
            "required": ["name", "times", "langevin_time", "tv", "weight_error", "tv_bound", "chi2_bound",
                         "judge_error"],
            "properties": {"times": _ARRAY, "langevin_time": _ARRAY}}},
        "energy": {"type": ["object", "null"],
                   "required": ["points", "value", "error", "exact", "max_abs_error", "nfe", "n_steps", "atol",
                                "reached"]},
        "free_energy": {"type": ["object", "null"], "required": ["method", "value", "error", "exact", "converged"]},
        "audit": {"type": ["array", "null"], "minItems": 1, "items": {
            "type": "object", "required": ["t", "curl_ratio", "curl_ratio_error", "rms_norm", "n_nonfinite"]}},
        "seconds": {"type": "object"},
        "failures": {"type": "object", "additionalProperties": {"type": "string"}},
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


# --------------------------------------------------------------------------- assembly


def _within_model_times(config: dict[str, Any], floor: float, note: Callable[[str], None]) -> dict[str, Any]:
    """``config`` with gap.t_min and schedules.t_min raised to ``floor``, the model's
    :func:`start_time` (an epsilon or x0 network is not evaluated below its training times)."""
    raised = {section: config[section]["t_min"] for section in ("gap", "schedules") if config[section]["t_min"] < floor}
    if not raised:
        return config
    for section, t_min in raised.items():
        if floor >= config[section]["t_max"]:
            raise ConfigError(f"config field '{section}.t_max': must exceed the model's smallest training time "
                              f"{floor:g} (got {config[section]['t_max']:g})")
        note(f"{section}.t_min raised from {t_min:g} to {floor:g}, the model's smallest training time")
    return {**config, **{section: {**config[section], "t_min": floor} for section in raised}}


def build_report(config: dict[str, Any], progress: bool = True,
                 log: Callable[[str], None] | None = None) -> Report:
    """Run every part of the report for a validated ``config`` (module docstring).

    ``progress`` shows tqdm bars; ``log`` (e.g. print) receives one line per finished part.
    Times in the config must lie in the process's range (:class:`TimeRangeError` otherwise).
    A section that raises does not lose the others: its entry in ``numbers`` is None, its
    reason is in ``numbers["failures"]`` (section -> "Type: message"; the schedules are
    skipped when the spectrum failed), and the summary and the figures say so.
    """
    note = log or (lambda _: None)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    score, reference, model = resolve_subject(config, progress)
    seconds["model"] = time.perf_counter() - start
    config = _within_model_times(config, start_time(score), note)
    score.process.time(torch.tensor([config["gap"]["t_min"], config["gap"]["t_max"], config["schedules"]["t_max"],
                                     *config["gap"]["eigenfunction_times"], *config["audit"]["times"]],
                                    dtype=torch.float64))

    failures: dict[str, str] = {}

    def attempt(name: str, work: Callable[[], Any], needs: str | None = None) -> Any:
        """work() timed into seconds[name]; a failure is recorded and logged, not raised, so
        that the other sections are still reported (``needs``: a failed section it depends on)."""
        if needs in failures:
            failures[name] = f"skipped: needs the {needs} section, which failed"
            return None
        start = time.perf_counter()
        try:
            return work()
        except Exception as err:  # noqa: BLE001 - one section's failure must not lose the others
            failures[name] = f"{type(err).__name__}: {err}"
            note(f"{name}: FAILED ({failures[name]})")
            return None
        finally:
            seconds[name] = time.perf_counter() - start

    def spectrum() -> tuple[Any, list[Any]]:
        profile = sections.profile(score, reference, config, progress)
        pairs = [sections.eigenpairs(score, reference, t, config["gap"]["k"], config["seed"])
                 for t in config["gap"]["eigenfunction_times"]]
        note(f"spectrum: {len(profile.times)} times, gap {np.nanmin(profile.gap):.3g} .. {np.nanmax(profile.gap):.3g}")
        return profile, pairs

    profile, pairs = attempt("spectrum", spectrum) or (None, None)
    judged = attempt("schedules", lambda: sections.schedule_section(score, reference, profile, config), "spectrum")
    if judged is not None:
        note(f"schedules: {len(judged)} judged by {judged[0]['judge']}")
    steps = None
    if config["schedules"]["sampler"] != "langevin":
        steps = attempt("solver_schedules", lambda: sections.solver_section(score, reference, config))
        if steps is not None:
            note(f"step schedules: {len(steps['rows'])} for {steps['solver']} at {steps['nfe']} evaluations, "
                 f"judged by {steps['judge']}")
    energies = attempt("energy", lambda: sections.energy_section(score, reference, config))
    if energies is not None:
        note("energies: " + (f"max |E - E_exact| = {energies['max_abs_error']:.2e}" if energies["exact"] is not None
                             else "no exact log-density in the reference"))
    free = attempt("free_energy", lambda: sections.free_energy_section(score, reference, config))
    if free is not None and free["value"] is not None:
        note(f"free energy: Delta F = {free['value']:.4f} +- {free['error']:.4f} (exact {free['exact']:.4f})")
    audit = attempt("audit", lambda: sections.audit_section(score, reference, config))

    numbers = _finite({
        "version": version("scorehamiltonian"), "config": config, "model": model,
        "spectrum": None if profile is None else {
            "profile": {"times": profile.times, "gap": profile.gap, "gap_error": profile.gap_error,
                        "gap_model_error": profile.gap_model_error, "converged": profile.converged,
                        "resolved": profile.resolved,
                        "lambda0": profile.lambda0, "speed": profile.speed, "speed_stderr": profile.speed_stderr,
                        "route": profile.settings["route"], "failures": [list(f) for f in profile.failures]},
            "eigenpairs": [n for n, _ in pairs]},
        "schedules": judged, "solver_schedules": steps, "energy": energies, "free_energy": free, "audit": audit,
        "seconds": seconds, "failures": failures,
    })
    arrays = {"profile": profile, "eigenpairs": None if pairs is None else [a for _, a in pairs],
              "schedules": judged, "energy": energies, "dim": model["dim"], "learned": model["kind"] != "exact"}
    return Report(numbers, arrays)


def _summary(numbers: dict[str, Any]) -> str:
    """The Markdown summary of a report's numbers; a failed section gets its reason instead."""
    model, failures = numbers["model"], numbers["failures"]
    lines = [f"# scorehamiltonian report: {numbers['config'].get('title') or model['reference']}", "",
             (f"Score: {model['kind']} ({model['score']}), measured against {model['reference']}"
              f"{'' if model['exact_reference'] else ' (no exact score)'}, {model['process']}, d = {model['dim']}.")]
    if failures:
        lines += ["", "**Incomplete report:** " + "; ".join(f"{k}: {v}" for k, v in failures.items()) + "."]
    for name, part in (("spectrum", _spectrum_lines), ("schedules", _schedule_lines),
                       ("solver_schedules", _solver_lines), ("energy", _energy_lines), ("audit", _audit_lines)):
        if name in failures and name != "energy":  # the energy section also holds Delta F
            lines += ["", f"## {name.replace('_', ' ').capitalize()}", "", f"Not computed: {failures[name]}."]
        else:
            lines += part(numbers)
    lines += ["", "## Figures", "",
              ("- `eigenfunctions.png`: the quantum potential V_t and the lowest eigenfunctions of H_t, offset by "
               "their eigenvalues (2D: the first two excited states; d > 2: the slowest Ritz function at samples "
               "of p_t against their two leading principal coordinates)."),
              "- `gap_profile.png`: the gap and the adiabatic speed A(t) with error bars and the GP band.",
              "- `schedules.png`: the levels of each schedule in t, marker area proportional to Langevin time.",
              ("- `bounds.png`: each schedule's exactly propagated final TV beside its tracking bound (or its "
               "predicted TV with error bars, by the reduced model)."),
              ("- `energy.png`: the PF-ODE energy against the exact -log p_0 (or its histogram over samples of "
               "the data where the reference has no log-density)."),
              "", "A figure whose section failed is not drawn."]
    return "\n".join(lines) + "\n"


def _spectrum_lines(numbers: dict[str, Any]) -> list[str]:
    model, prof = numbers["model"], numbers["spectrum"]["profile"]
    route = "grids, Richardson-extrapolated" if prof["route"] == "grid" else "sample-based Rayleigh-Ritz (model form)"
    lines = ["", f"## Spectral gap and adiabatic speed ({route})", "",
             "| t | gap | error | model error | converged | A(t) | stderr |", "|---|---|---|---|---|---|---|"]
    for row in zip(prof["times"], prof["gap"], prof["gap_error"], prof["gap_model_error"], prof["converged"],
                   prof["speed"], prof["speed_stderr"]):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    unresolved = [t for t, resolved in zip(prof["times"], prof["resolved"]) if not resolved]
    if unresolved:
        lines += ["", (f"At t = {', '.join(_cell(t) for t in unresolved)} the gap lies within its error of 0 (a "
                       "negative value is an estimate, not a result): it is smaller than the error can resolve, "
                       "which means metastability, or too few samples or too coarse a grid to see the gap.")]
    if prof["route"] != "grid":
        lines += ["", ("Rayleigh-Ritz values are upper bounds on the gap: 'converged' says the held-out estimate "
                       "raised no flag; its error includes the change on a coarser basis, which cannot see a slow mode "
                       "that neither basis holds: such a basis gives a value above the gap (ritz_gap, module "
                       "docstring).")]
    if model["kind"] != "exact" and None in prof["gap_model_error"]:
        lines += ["", ("Model error '-': a single learned model cannot know its own error, so no gap is "
                  "converged; train an ensemble (`model.ensemble = K`, or `scorehamiltonian train --ensemble K`).")]
    elif model["kind"] != "exact":
        lines += ["", ("Model error: the larger of the ensemble members' spread and the model's miss of the data's "
                       "own gap (grids: Rayleigh-Ritz in the data's Dirichlet form on the training data noised to t; "
                       "Rayleigh-Ritz: the data form of the same fitted function). The members share the bias of "
                       "their common data, which their spread alone cannot see.")]
    return lines


def _schedule_lines(numbers: dict[str, Any]) -> list[str]:
    schedules = numbers["schedules"]
    judge = schedules[0]["judge"]
    lines = ["", f"## Schedules (annealed Langevin, judged by {judge})", ""]
    if judge == "exact propagation":
        lines += ["| schedule | final TV | tracking bound (TV) | bound / TV | basin-weight error |",
                  "|---|---|---|---|---|"]
        for s in schedules:
            ratio = s["tv_bound"] / s["tv"] if s["tv"] and s["tv_bound"] is not None else None
            lines.append(f"| {s['name']} | {_cell(s['tv'])} | {_cell(s['tv_bound'])} | {_cell(ratio)} | "
                         f"{_cell(s['weight_error'])} |")
    else:
        lines += ["| schedule | predicted final TV | stderr (over reduced models) | reliable |", "|---|---|---|---|"]
        lines += [f"| {s['name']} | {_cell(s['tv'])} | {_cell(s['judge_error'])} | {s['judge_converged']} |"
                  for s in schedules]
    return lines


def _energy_lines(numbers: dict[str, Any]) -> list[str]:
    e, f, failures = numbers["energy"], numbers["free_energy"], numbers["failures"]
    if "free_energy" in failures:
        free = f"Delta F: not computed: {failures['free_energy']}."
    elif "skipped" in f:
        free = f"Delta F: skipped ({f['skipped']})."
    else:
        free = (f"Delta F ({f['method']}; {f['end_states']}) = {_cell(f['value'])} +- {_cell(f['error'])} "
                f"(statistical) +- {_cell(f['systematic_error'])} "
                "(systematic: as far as the energies' error bars can move it) "
                f"+- {_cell(f['model_error'])} (model) (exact {_cell(f['exact'])}; converged to "
                f"{_cell(numbers['config']['energy']['free_energy_atol'])} k_B T: "
                f"{f['converged']}{'; ' + ', '.join(f['flags']) if f['flags'] else ''}).")
    if e is None:
        return ["", "## Energies", "", f"Not computed: {failures['energy']}.", "", free]
    against = ("no exact log-density in the reference" if e["exact"] is None else
               f"max |E - E_exact| = {_cell(e['max_abs_error'])}"
               + ("" if e["normalised"] else " (up to a constant), Spearman " + _cell(e.get("spearman"))))
    return ["", "## Energies", "",
            (f"-log p_0 by the PF-ODE ({e['method']}, {_grid_text(e)}, {e['nfe']} score evaluations per point) at "
             f"{len(e['value'])} samples of p_0: {against}, "
             f"largest numerical error {_cell(max(v for v in e['error'] if v is not None))}, "
             f"largest model error {_cell(_largest(e['model_error']))}"
             f"{' (flags: ' + ', '.join(e['flags']) + ')' if e['flags'] else ''}."), "", free]


def _grid_text(e: dict[str, Any]) -> str:
    """The energies' grids: the fixed step count, or the refinement's request, range and outcome."""
    steps = [int(n) for n in e["n_steps"]]
    if e.get("atol") is None:
        return f"{steps[0]} steps"
    reached = sum(bool(r) for r in e["reached"])
    return (f"refined to atol = {_cell(e['atol'])}: {min(steps)}-{max(steps)} steps, request reached at "
            f"{reached} of {len(steps)} points")


def _audit_lines(numbers: dict[str, Any]) -> list[str]:
    lines = ["", "## Score audit", "",
             ("| t | curl ratio | error | rms abs(s) | non-finite | Fokker-Planck residual (relative) | "
              "relative score error |"), "|---|---|---|---|---|---|---|"]
    for a in numbers["audit"]:
        rel = a.get("relative_score_error")
        rel_text = ("exact" if numbers["model"]["kind"] == "exact" else "no exact score") if rel is None else (
            f"{_cell(rel)} +- {_cell(a['relative_score_error_stderr'])}")
        fp = a.get("fokker_planck")
        fp_text = "not differentiable" if fp is None else f"{_cell(fp)} +- {_cell(a['fokker_planck_stderr'])}"
        lines.append(f"| {_cell(a['t'])} | {_cell(a['curl_ratio'])} | {_cell(a['curl_ratio_error'])} | "
                     f"{_cell(a['rms_norm'])} | {a['n_nonfinite']} | {fp_text} | {rel_text} |")
    return lines


def _solver_lines(numbers: dict[str, Any]) -> list[str]:
    """The summary's table of step schedules for a solver (none when the sampler is Langevin)."""
    steps = numbers.get("solver_schedules")
    if steps is None:
        return []
    metric = "TV" if steps["judge"] == "exact law" else "sliced W1"
    lines = ["", (f"## Step schedules for {steps['solver']} at {steps['nfe']} score evaluations (judged by "
                 f"{steps['judge']})"), "", f"| schedule | {metric} | error | NFE |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {_cell(r['value'])} | {_cell(r['error'])} | {r['nfe']} |" for r in steps["rows"]]
    d = steps["design"]
    if d is not None:
        lines += ["", f"Designed by design_steps ({d['metric']}, from {d['start']}, {_cell(d['seconds'])} s, converged "
                      f"{d['converged']})" + (": " + "; ".join(d["notes"]) if d["notes"] else "") + "."]
    return lines


def _largest(values: list[float | None]) -> float | None:
    """The largest of the finite values (None when there is none: a single model's unknown error)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else None


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
