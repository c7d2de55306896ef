"""The report's configuration: a TOML file checked against a JSON schema before any work.

A configuration names the score (a built-in example's exact score, an MLP trained on its
samples or on a built-in system, a checkpoint written by
:func:`~scorehamiltonian.score.checkpoints.save_score`, or a user's model through the adapters)
and the sizes of each part of the report. Every field has a default but the model; the
reference (``model.example``, ``model.system`` or a ``[reference]`` table) is optional.
Unknown fields, wrong types, values out of range and a model file that does not exist raise
:class:`ConfigError` naming the field.

Paths: ``model.path`` (read only) is relative to the configuration file's folder. No field
names an output path: everything the report writes goes into the output folder given on
the command line, so a configuration cannot write elsewhere.

The built-in configurations (:data:`BUILTIN`) are one per example and one per system of
:mod:`~scorehamiltonian.score.systems` (an ensemble trained on its samples); ``small=True``
gives the reduced sizes the tests use.
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

import jsonschema

from ..common.errors import ConfigError
from ..sampling.solvers import ODE_SOLVERS
from ..sampling.steps import DESIGN_METRICS
from ..score.examples import EXAMPLES, example
from ..score.processes import PROCESS_NAMES
from ..score.systems import DATA_SETS, SYSTEMS, system

__all__ = ["BUILTIN", "CONFIG_SCHEMA", "MODEL_KINDS", "builtin_config", "load_config", "validate_config"]

#: model.kind, and the fields each needs beyond the common ones: an exact example, an MLP trained
#: here, the toolkit's checkpoint, and the adapters of scorehamiltonian.score.adapters.
MODEL_KINDS: dict[str, tuple[str, ...]] = {
    "exact": (), "mlp": (), "file": ("path",), "torchscript": ("path",), "module": ("factory", "weights"),
    "diffusers": ("path",), "k-diffusion": ("factory", "weights", "sigma_min", "sigma_max"),
}
#: The solvers ``schedules.sampler`` may name (design_steps designs for the ODE solvers).
STEP_SOLVERS = tuple(name for name in ODE_SOLVERS if name != "euler-t")
#: Fields that name files (or, for diffusers, folders), resolved against the configuration's folder.
_PATHS = (("model", "path"), ("model", "weights"), ("model", "scheduler"), ("model", "data"), ("reference", "samples"))


def _number(default: float, minimum: float | None = None, exclusive: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "number", "default": default}
    if minimum is not None:
        spec["exclusiveMinimum" if exclusive else "minimum"] = minimum
    return spec


def _integer(default: int, minimum: int = 1) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "default": default}


def _section(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": list(required), "default": {}}


_TIMES = {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1}
_STANDARD = ["uniform", "log-uniform", "cosine", "edm", "log-snr", "thermodynamic", "adiabatic-A/gap",
             "adiabatic-A/sqrt-gap", "langevin-1/gap"]

#: JSON schema of a report configuration (TOML tables map to the objects below).
CONFIG_SCHEMA: dict[str, Any] = _section({
    "title": {"type": "string", "default": ""},
    "seed": _integer(0, minimum=0),
    "model": _section({
        "example": {"enum": sorted(EXAMPLES), "description": "the exact target (the reference of every check)"},
        "system": {"enum": sorted(SYSTEMS), "description": "a built-in system: the reference, and training data"},
        "kind": {"enum": list(MODEL_KINDS), "default": "exact"},
        "path": {"type": "string", "minLength": 1,
                 "description": "checkpoint file (file), TorchScript file (torchscript) or model folder (diffusers)"},
        "factory": {"type": "string", "minLength": 1, "description": "'package.module:name' (module, k-diffusion)"},
        "weights": {"type": "string", "minLength": 1, "description": "weights file (module, k-diffusion)"},
        "kwargs": {"type": "object", "default": {}, "description": "arguments of the factory"},
        "scheduler": {"type": "string", "minLength": 1, "description": "scheduler folder or file (diffusers)"},
        "prediction": {"enum": ["score", "eps", "x0", "v"], "default": "score"},
        "time_input": {"enum": ["t", "sigma", "log_snr"], "default": "t"},
        "sample_shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
        "sigma_min": {"type": "number", "exclusiveMinimum": 0},
        "sigma_max": {"type": "number", "exclusiveMinimum": 0},
        "data": {"type": "string", "minLength": 1, "description": "data file to train on, for kind = 'mlp'"},
        "process": {"enum": sorted(PROCESS_NAMES), "default": "ou"},
        "train_samples": _integer(10_000, minimum=100),
        "train_steps": _integer(1200),
        "ensemble": _integer(1),
    }),
    "reference": {"type": "object", "additionalProperties": False, "properties": {
        "example": {"enum": sorted(EXAMPLES), "description": "a built-in exact target"},
        "system": {"enum": sorted(SYSTEMS), "description": "a built-in system (exact density or held-out data)"},
        "samples": {"type": "string", "minLength": 1, "description": "held-out samples of the data (a file)"},
        "log_prob": {"type": "string", "minLength": 1, "description": "'package.module:function', log p_0(x)"},
        "normalised": {"type": "boolean", "default": False},
        "dim": {"type": "integer", "minimum": 1},
    }},
    "gap": _section({
        "t_min": _number(1e-3, 0, exclusive=True),
        "t_max": _number(5.0, 0, exclusive=True),
        "n_initial": _integer(5, minimum=2),
        "max_solves": _integer(8, minimum=2),
        "rtol": _number(1e-4, 0, exclusive=True),
        "k": _integer(3, minimum=2),
        "n_samples": _integer(4000, minimum=100),
        "eigenfunction_times": {**_TIMES, "default": [0.01, 0.3, 2.0]},
    }),
    "schedules": _section({
        "n_levels": _integer(10),
        "budget": _number(10.0, 0, exclusive=True),
        "t_min": _number(1e-3, 0, exclusive=True),
        "t_max": _number(5.0, 0, exclusive=True),
        "standard": {"type": "array", "items": {"enum": _STANDARD}, "minItems": 1, "uniqueItems": True,
                     "default": ["log-uniform", "cosine", "edm", "thermodynamic", "adiabatic-A/gap"]},
        "design": {"type": "boolean", "default": True},
        "design_max_time": _number(60.0, 0, exclusive=True),
        "sampler": {"enum": ["langevin", *STEP_SOLVERS], "default": "langevin",
                    "description": "a solver: also its step schedules at nfe evaluations (baselines and design_steps)"},
        "nfe": _integer(20, minimum=2),
        "design_metric": {"enum": list(DESIGN_METRICS),
                          "description": "design_steps' objective (default: tv for a mixture in d <= 2, else energy)"},
    }),
    "energy": _section({
        "n_points": _integer(24),
        "atol": _number(1e-3, 0, exclusive=True),
        "max_steps": _integer(1024, minimum=32),
        "n_steps": {"type": "integer", "minimum": 2,
                    "description": "a fixed grid of this many steps instead of the refinement to atol"},
        "method": {"enum": ["euler", "heun", "rk4", "dopri5"], "default": "rk4"},
        "free_energy_method": {"enum": ["ti", "ais", "bar", "mbar"], "default": "bar"},
        "free_energy_samples": _integer(2000, minimum=10),
        "free_energy_steps": {**_integer(128, minimum=2),
                              "description": "the fixed grid of the free energy's PF-ODE energies (thousands of them)"},
        "free_energy_atol": _number(0.1, 0, exclusive=True),
    }),
    "audit": _section({
        "times": {**_TIMES, "default": [0.01, 0.1, 1.0]},
        "n_points": _integer(2000, minimum=10),
    }),
}, required=("model",))


def _fill_defaults(schema: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """``value`` with every missing property that has a schema default filled in (recursively)."""
    out = dict(value)
    for name, spec in schema.get("properties", {}).items():
        if name not in out and "default" in spec:
            out[name] = copy.deepcopy(spec["default"])
        if spec.get("type") == "object" and isinstance(out.get(name), dict):
            out[name] = _fill_defaults(spec, out[name])
    return out


def _field(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "(top level)"


def validate_config(config: dict[str, Any], folder: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """The configuration with defaults filled in, or :class:`ConfigError` naming the bad field.

    Beyond the schema: t_min < t_max in ``gap`` and ``schedules``; ``model.path`` required
    for kind "file", forbidden otherwise; ``model.data`` only for kind "mlp"; a reference
    given once (``model.example``, ``model.system`` or a ``[reference]`` table, which needs
    an example, a system, samples or a log_prob); a reference with an exact density for kind
    "exact" (an example or a density system) and training data for kind "mlp"
    (``model.data``, an example or a system); every file path (model.path, model.data,
    reference.samples) resolved against ``folder`` to an existing file.
    """
    validator = jsonschema.Draft202012Validator(CONFIG_SCHEMA)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise ConfigError(f"config field {_field(first)!r}: {first.message}")
    config = _fill_defaults(CONFIG_SCHEMA, config)
    for section in ("gap", "schedules"):
        if config[section]["t_min"] >= config[section]["t_max"]:
            raise ConfigError(f"config field '{section}.t_min': must be below {section}.t_max "
                              f"({config[section]['t_min']} >= {config[section]['t_max']})")
    model, reference = config["model"], config.get("reference")
    kind = model["kind"]
    for name in MODEL_KINDS[kind]:
        if name not in model:
            raise ConfigError(f"config field 'model.{name}': required when model.kind = {kind!r}")
    for name in ("path", "factory", "weights", "scheduler", "sigma_min", "sigma_max"):
        owners = [k for k, needs in MODEL_KINDS.items() if name in needs] + (["diffusers"] if name == "scheduler" else [])
        if name in model and kind not in owners:
            raise ConfigError(f"config field 'model.{name}': for model.kind in {owners} only, not {kind!r}")
    if "data" in model and kind != "mlp":
        raise ConfigError("config field 'model.data': training data are for model.kind = 'mlp' only")
    sources = [f"model.{k}" for k in ("example", "system") if k in model] + (["[reference]"] if reference else [])
    if len(sources) > 1:
        raise ConfigError(f"config field 'reference': give the reference once, not {' and '.join(sources)}")
    if reference is not None and not {"example", "system", "samples", "log_prob"} & set(reference):
        raise ConfigError("config field 'reference': needs an example, a system, samples or a log_prob")
    named = {k: v for k, v in {**(reference or {}), **model}.items() if k in ("example", "system", "data")}
    if kind == "exact" and not ("example" in named or named.get("system", DATA_SETS[0]) not in DATA_SETS):
        raise ConfigError("config field 'model.example': model.kind = 'exact' needs a built-in example or a "
                          f"system with a density ({sorted(set(SYSTEMS) - set(DATA_SETS))})")
    if kind == "mlp" and not named:
        raise ConfigError("config field 'model.data': model.kind = 'mlp' needs training data, an example or a system")
    for section, field_name in _PATHS:
        table = config.get(section) or {}
        if field_name in table:
            path = Path(folder) / table[field_name]
            folders = kind == "diffusers" and field_name in ("path", "scheduler")
            if not (path.exists() if folders else path.is_file()):
                noun = "model" if field_name == "path" else field_name
                raise ConfigError(f"config field '{section}.{field_name}': no {noun} {'folder or ' if folders else ''}"
                                  f"file at {os.fspath(path)!r}")
            table[field_name] = os.fspath(path.resolve())
    return config


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the TOML configuration at ``path`` (:func:`validate_config`)."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"no configuration file at {os.fspath(path)!r}") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the configuration {os.fspath(path)!r}: {err}") from err
    return validate_config(raw, Path(path).parent)


#: Built-in configurations, one per example (``example = name``); "mlp" trains an ensemble of
#: three scores on samples of the bimodal example (its spread is the results' model error); one
#: per system, an ensemble of three trained on its exact samples or training rows (cached).
BUILTIN: dict[str, dict[str, Any]] = {
    **{name: {"title": f"built-in example {name}", "model": {"example": name}} for name in EXAMPLES},
    "mlp": {"title": "MLP score ensemble (3 members) trained on samples of the bimodal example",
            "model": {"example": "bimodal", "kind": "mlp", "ensemble": 3}},
    **{name: {"title": f"MLP score ensemble (3 members) trained on {name}",
              "model": {"system": name, "kind": "mlp", "ensemble": 3}} for name in SYSTEMS},
}

#: The reduced sizes of ``builtin_config(..., small=True)``.
_SMALL = {
    "gap": {"n_initial": 3, "max_solves": 3, "rtol": 1e-3, "n_samples": 1000, "eigenfunction_times": [0.05, 1.0]},
    "schedules": {"n_levels": 6, "budget": 5.0, "standard": ["log-uniform", "thermodynamic"],
                  "design_max_time": 10.0},
    "energy": {"n_points": 6, "atol": 1e-2, "max_steps": 128, "free_energy_samples": 300, "free_energy_steps": 32},
    "audit": {"times": [0.1, 1.0], "n_points": 300},
    "model": {"train_samples": 2000, "train_steps": 300},
}


#: Further reductions of the small variant in 2D (each eigen-solve and propagation costs more).
_SMALL_2D = {
    "gap": {"eigenfunction_times": [1.0]},
    "schedules": {"standard": ["log-uniform"], "design_max_time": 4.0},
}


def builtin_config(name: str, small: bool = False) -> dict[str, Any]:
    """The validated built-in configuration ``name`` (:data:`BUILTIN`), reduced with ``small``."""
    if name not in BUILTIN:
        raise ConfigError(f"unknown built-in configuration {name!r}; choose one of {sorted(BUILTIN)}")
    config = copy.deepcopy(BUILTIN[name])
    if small:
        model = config["model"]
        dim = example(model["example"]).dim if "example" in model else system(model["system"]).dim
        reductions = [_SMALL, _SMALL_2D] if dim == 2 else [_SMALL]
        for reduction in reductions:
            for section, values in reduction.items():
                config[section] = {**config.get(section, {}), **values}
    return validate_config(config)
