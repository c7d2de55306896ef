"""The main job: `scorehamiltonian report` on every built-in configuration, and bad configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest

from scorehamiltonian.app.cli import main
from scorehamiltonian.app.config import BUILTIN, builtin_config, load_config, validate_config
from scorehamiltonian.app.report import FIGURES, REPORT_SCHEMA, _grid_text, _within_model_times, build_report
from scorehamiltonian.app.sections import energy_section, solver_section
from scorehamiltonian.app.subjects import resolve_subject
from scorehamiltonian.common.errors import ConfigError
from scorehamiltonian.score.systems import SYSTEMS


def _check_numbers(numbers: dict) -> None:
    """The report's own claims hold: bounds above measurements, energies within their errors."""
    jsonschema.validate(numbers, REPORT_SCHEMA)
    for s in numbers["schedules"]:
        assert s["tv_bound"] is None or s["tv_bound"] >= s["tv"] - s["judge_error"], s["name"]
        assert math.isclose(sum(s["langevin_time"]), numbers["config"]["schedules"]["budget"], rel_tol=1e-9)
    energy = numbers["energy"]
    if numbers["model"]["kind"] == "exact":
        for value, error, exact in zip(energy["value"], energy["error"], energy["exact"]):
            assert abs(value - exact) <= error, (value, error, exact)
        if energy["atol"] is not None:  # refined: the request is met, and so within atol of the truth
            assert all(energy["reached"]) and energy["max_abs_error"] <= energy["atol"]
        free = numbers["free_energy"]
        assert abs(free["value"] - free["exact"]) <= 4 * free["error"] + free["systematic_error"]
    prof, rtol = numbers["spectrum"]["profile"], numbers["config"]["gap"]["rtol"]
    assert all(g > 0 for g in prof["gap"])
    if numbers["model"]["kind"] == "exact":
        assert all(prof["converged"]) and not any(prof["gap_model_error"])
    else:  # an ensemble: its spread is the model error, and converged means both parts within rtol
        assert all(e <= rtol * g for e, g in zip(prof["gap_error"], prof["gap"]))
        assert all(m > 0 for m in prof["gap_model_error"])
        assert prof["converged"] == [m <= rtol * g for m, g in zip(prof["gap_model_error"], prof["gap"])]


#: Reports that train on a built-in system take minutes each (two-moons --small: 100 s on 2 cores):
#: under the slow mark; tests/app/test_subjects.py checks their wiring in seconds. The 1D examples
#: asymmetric and trimodal (15 s and 7 s) take bimodal's code path: also slow, to keep the suite
#: within its 10 minutes.
_SLOW_BUILTIN = {*SYSTEMS, "asymmetric", "trimodal"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_BUILTIN else n
                                  for n in sorted(BUILTIN)])
def test_report_runs_on_every_builtin_config(name, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "--example", name, "--small", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "final TV" in printed and str(out) in printed
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([*FIGURES, "report.json", "summary.md"])
    assert all((out / f).stat().st_size > 1000 for f in FIGURES)
    numbers = json.loads((out / "report.json").read_text())
    _check_numbers(numbers)
    summary = (out / "summary.md").read_text()
    assert "## Schedules" in summary
    assert ("the data's own gap" in summary) == (name == "mlp")  # the ensemble's model error, explained
    assert list(tmp_path.iterdir()) == [out]  # no staging folder left behind


def test_a_failing_section_does_not_lose_the_others(tmp_path, capsys, monkeypatch):
    """The spectrum and the energies raise: the report is still written with the free energy
    and the audit, the schedules (which need the spectrum) skipped, each reason in the json,
    the summary and on stderr, and the command exits 1."""
    from scorehamiltonian.app import sections

    def fails(message: str):
        def run(*args, **kwargs):
            raise RuntimeError(message)
        return run

    monkeypatch.setattr(sections, "profile", fails("spectrum broke"))
    monkeypatch.setattr(sections, "energy_section", fails("energies broke"))
    out = tmp_path / "out"
    assert main(["report", "--example", "bimodal", "--small", "--quiet", "--out", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "summary.md"]
    numbers = json.loads((out / "report.json").read_text())
    jsonschema.validate(numbers, REPORT_SCHEMA)
    assert numbers["failures"] == {"spectrum": "RuntimeError: spectrum broke",
                                   "schedules": "skipped: needs the spectrum section, which failed",
                                   "energy": "RuntimeError: energies broke"}
    assert numbers["spectrum"] is numbers["schedules"] is numbers["energy"] is None
    free = numbers["free_energy"]
    assert abs(free["value"] - free["exact"]) <= 4 * free["error"] + free["systematic_error"]
    assert len(numbers["audit"]) == len(numbers["config"]["audit"]["times"])
    summary = (out / "summary.md").read_text()
    assert "Not computed: RuntimeError: spectrum broke" in summary and "Delta F (" in summary
    assert "section energy failed: RuntimeError: energies broke" in capsys.readouterr().err


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "field"), [
    ('[model]\nexample = "bimodal"\nexampel = 1\n', "'model': Additional properties are not allowed"),
    ('[model]\nexample = "bimodal"\n[gap]\nn_initial = "four"\n', "'gap.n_initial': 'four' is not of type"),
    ('[model]\nexample = "nowhere"\n', "'model.example': 'nowhere' is not one of"),
    ('[model]\nexample = "bimodal"\nkind = "file"\npath = "missing.pt"\n', "'model.path': no model file at"),
    ('[gap]\nrtol = 1e-3\n', "'(top level)': 'model' is a required property"),
    ('[model]\nexample = "bimodal"\n[schedules]\nt_min = 6.0\n', "'schedules.t_min': must be below"),
    ('[model]\nexample = "bimodal"\n[output]\nfolder = "/etc"\n', "Additional properties are not allowed ('output'"),
    ('[model\nexample = "bimodal"\n', "cannot read the configuration"),
    ('[model]\nsystem = "digits"\n', "'model.example': model.kind = 'exact' needs a built-in example or a system"),
    ('[model]\nsystem = "digits"\nkind = "mlp"\n[reference]\nexample = "bimodal"\n',
     "give the reference once, not model.system and [reference]"),
    ('[model]\nkind = "mlp"\n', "'model.data': model.kind = 'mlp' needs training data, an example or a system"),
])
def test_bad_configs_exit_nonzero_naming_the_field_and_write_nothing(text, field, tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    code = main(["report", str(_write(tmp_path, text)), "--out", str(out), "--overwrite"])
    assert code == 2
    err = capsys.readouterr().err
    assert field in err, err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "earlier results"


def test_a_non_empty_output_folder_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["report", "--example", "bimodal", "--small", "--quiet", "--out", str(out)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_config_defaults_and_paths(tmp_path):
    model = tmp_path / "models" / "m.pt"
    model.parent.mkdir()
    model.write_bytes(b"")
    config = load_config(_write(tmp_path, '[model]\nexample = "trimodal"\nkind = "file"\npath = "models/m.pt"\n'))
    assert config["model"]["path"] == str(model.resolve())
    assert config["gap"]["rtol"] == 1e-4 and config["schedules"]["n_levels"] == 10
    assert validate_config({"model": {"example": "bimodal"}}) == builtin_config("bimodal") | {"title": ""}
    with pytest.raises(ConfigError, match="unknown built-in"):
        builtin_config("nope")


def test_a_solver_sampler_adds_its_step_schedules(tmp_path):
    """[schedules] sampler = a solver: every process baseline and the designed steps, judged by the
    solver's exact law, each at the requested NFE; the design is never worse than its start."""
    config = builtin_config("asymmetric", small=True)
    config["schedules"].update(sampler="dpmpp-2m", nfe=10, design_max_time=5.0)
    config = validate_config(config)
    numbers = build_report(config, progress=False).numbers
    steps = numbers["solver_schedules"]
    assert steps["judge"] == "exact law" and steps["solver"] == "dpmpp-2m"
    rows = {r["name"]: r for r in steps["rows"]}
    assert all(r["nfe"] == 10 for r in rows.values())
    assert rows["designed"]["value"] <= rows[steps["design"]["start"]]["value"]
    jsonschema.validate(numbers, REPORT_SCHEMA)


def test_energies_are_refined_to_atol_unless_a_fixed_grid_is_given():
    """energy.atol (the default): every exact energy within it, on grids of its own size per
    point; energy.n_steps: that one grid for every point, its bars not held to atol."""
    config = validate_config(builtin_config("bimodal", small=True))
    score, reference, _ = resolve_subject(config, progress=False)
    refined = energy_section(score, reference, config)
    assert refined["atol"] == config["energy"]["atol"] and bool(refined["reached"].all())
    assert float((refined["value"] - refined["exact"]).abs().max()) <= refined["atol"]
    assert _grid_text(refined).startswith(f"refined to atol = {refined['atol']:.4g}: ")
    fixed = energy_section(score, reference, {**config, "energy": {**config["energy"], "n_steps": 16}})
    assert fixed["atol"] is None and bool((fixed["n_steps"] == 16).all()) and _grid_text(fixed) == "16 steps"
    assert bool(((fixed["value"] - fixed["exact"]).abs() <= fixed["error"]).all())


def test_the_design_metric_reaches_the_designer_and_a_bad_one_is_refused():
    config = builtin_config("asymmetric", small=True)
    config["schedules"].update(sampler="dpmpp-2m", nfe=6, design_max_time=1.0, design_metric="trajectory")
    config = validate_config(config)
    score, reference, _ = resolve_subject(config, progress=False)
    steps = solver_section(score, reference, config)
    assert steps["design"]["metric"] == "trajectory" and steps["judge"] == "exact law"
    with pytest.raises(ConfigError, match="design_metric"):
        validate_config({**config, "schedules": {**config["schedules"], "design_metric": "fid"}})


def test_times_below_a_networks_training_range_are_raised_to_it():
    """An epsilon network is not evaluated below its smallest training time: the report raises
    gap.t_min and schedules.t_min to it and says so (the digits report extrapolated to 1e-3 and
    recomputed the profile there, for over 17 minutes); a range that ends below it is refused."""
    config = builtin_config("bimodal")
    lines = []
    raised = _within_model_times(config, 0.01, lines.append)
    assert raised["gap"]["t_min"] == raised["schedules"]["t_min"] == 0.01
    assert config["gap"]["t_min"] == 1e-3  # the caller's config is not changed
    assert len(lines) == 2 and "gap.t_min raised from 0.001 to 0.01" in lines[0]
    assert _within_model_times(config, 1e-4, lines.append) is config and len(lines) == 2
    with pytest.raises(ConfigError, match="'gap.t_max': must exceed the model's smallest training time 6"):
        _within_model_times(config, 6.0, lines.append)
