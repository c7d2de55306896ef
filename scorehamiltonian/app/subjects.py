"""What a report studies and what it measures it against, resolved from a configuration.

The subject is a score (:class:`~scorehamiltonian.score.interface.Score`): a built-in
example's exact score, an MLP trained here (on a data file, on samples of an example or on a
built-in system, optionally an ensemble), or a model file. The :class:`Reference` holds
whatever is known about the truth, each part optional: the exact score of p_t at every t (a
Gaussian-mixture example: energies, score errors, exact propagation of schedules; a density
system: its exact noised score), a log-density of the data (``"package.module:function"``:
exact energies up to a constant), and samples of the data (held-out data, or exact draws),
from which samples of p_t are made. Each section of the report uses what the reference has
and says what it lacks.

Trained models are cached: an MLP (or ensemble) trained here is written to
``$SCOREHAMILTONIAN_CACHE`` (default ``~/.cache/scorehamiltonian``; ``off`` disables it) under
a hash of its training rows, process, options and the package version, and read back on the
next run instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..common.errors import ConfigError, SamplesRequiredError
from ..common.imports import resolve
from ..score.adapters import from_diffusers, from_k_diffusion, load_module, load_torchscript, module_from
from ..score.checkpoints import load_score, save_score
from ..score.ensemble import train_ensemble
from ..score.examples import example
from ..score.interface import DensityScore, ExactScore, Score, as_score
from ..score.mixture import GaussianMixture
from ..score.processes import PROCESS_NAMES, ForwardProcess
from ..score.systems import DensitySystem, system
from ..score.training import train_dsm
from .data import load_data

__all__ = ["Reference", "resolve_subject"]


@dataclass
class Reference:
    """The truth a report measures a score against (module docstring).

    name : how the summary names it. dim : the dimension d. process : the forward process.
    exact : the exact score of p_t at every t, or None. mixture : the Gaussian mixture of an
    example (exact propagation of schedules in d <= 2), or None. log_density : log p_0 of the
    data as a function of x (n, d) -> (n,), or None; ``normalised`` whether it integrates to
    one. data : samples of p_0 (n, d), or None. training : the rows a model is trained on when
    the reference is a data set whose ``data`` are its held-out rows (else None: train on
    samples of the reference).
    """

    name: str
    dim: int
    process: ForwardProcess
    exact: DensityScore | None = None
    mixture: GaussianMixture | None = None
    log_density: Callable[[torch.Tensor], torch.Tensor] | None = None
    normalised: bool = False
    data: torch.Tensor | None = None
    training: torch.Tensor | None = None

    @property
    def can_sample(self) -> bool:
        return (self.exact is not None and self.exact.can_sample) or self.data is not None

    def sample(self, n: int, t: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples of p_t: exact draws, or the data noised to t (alpha_t x_0 + sigma_t z)."""
        if self.exact is not None and self.exact.can_sample:
            return self.exact.sample(n, t, generator)
        if self.data is None:
            raise SamplesRequiredError(f"the reference {self.name} has no samples: give [reference] samples = FILE "
                                       "or an example")
        return as_score(lambda x, s: x, process=self.process, dim=self.dim, data=self.data).sample(n, t, generator)

    def data_samples(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples of p_0: exact draws of a mixture, else the first n rows of the data."""
        if self.mixture is not None:
            return self.mixture.sample(n, generator)
        if self.data is None:
            raise SamplesRequiredError(f"the reference {self.name} has no samples of the data")
        return self.data[:n]


def _process(model: dict[str, Any]) -> ForwardProcess:
    return PROCESS_NAMES[model["process"]]()


def _reference(config: dict[str, Any]) -> Reference | None:
    """The reference of ``[reference]``, else of ``model.example``, else None."""
    section, model = config.get("reference", {}), config["model"]
    name = section.get("example") or model.get("example")
    process = _process(model)
    named_system = section.get("system") or model.get("system")
    if named_system is not None:
        return _system_reference(named_system, process, config["model"]["train_samples"], config["seed"])
    if name is not None:
        mixture = example(name)
        exact = ExactScore(mixture, process)
        return Reference(f"example {name!r}", mixture.dim, process, exact=exact, mixture=mixture,
                         log_density=mixture.log_prob, normalised=True)
    if not section:
        return None
    data = load_data(section["samples"]) if "samples" in section else None
    log_density = None
    if "log_prob" in section:
        function = resolve(section["log_prob"], "config field 'reference.log_prob'")
        if not callable(function):
            raise ConfigError(f"config field 'reference.log_prob': {section['log_prob']!r} is not callable")
        log_density = function
    dim = data.shape[1] if data is not None else section.get("dim")
    if dim is None:
        raise ConfigError("config field 'reference.dim': needed when the reference has no samples")
    label = " and ".join(f"{k} {section[k]}" for k in ("samples", "log_prob") if k in section)
    return Reference(label, int(dim), process, log_density=log_density,
                     normalised=bool(section.get("normalised", False)), data=data)


def _system_reference(name: str, process: ForwardProcess, n: int, seed: int) -> Reference:
    """A built-in system as a reference: a density system's exact noised score, normalised
    log-density, n exact draws to train on and n independent ones as data; a data set's
    held-out rows as data and its training rows to train on."""
    found = system(name)
    label = f"system {name!r}"
    if isinstance(found, DensitySystem):
        def log_density(x: torch.Tensor) -> torch.Tensor:
            return found.log_prob(x) - found.log_z

        training, held_out = (found.sample(n, torch.Generator().manual_seed(seed + k)) for k in (0, 1))
        return Reference(label, found.dim, process, exact=found.exact_score(process), log_density=log_density,
                         normalised=True, data=held_out, training=training)
    return Reference(label, found.dim, process, data=found.held_out, training=found.train)


def _cache_file(samples: torch.Tensor, options: dict[str, Any]) -> str | None:
    """Where a model trained on ``samples`` with ``options`` is cached (module docstring), or None."""
    from .. import __version__

    folder = os.environ.get("SCOREHAMILTONIAN_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                                    "scorehamiltonian"))
    if folder == "off":
        return None
    digest = hashlib.sha256(samples.detach().to(torch.float64).contiguous().numpy().tobytes())
    digest.update(json.dumps({**options, "version": __version__}, sort_keys=True, default=repr).encode())
    return os.path.join(folder, f"model-{digest.hexdigest()[:24]}.pt")


def _trained(samples: torch.Tensor, process: ForwardProcess, ensemble: int, options: dict[str, Any],
             progress: bool) -> Score:
    """An MLP score (ensemble > 1: an ensemble) trained on ``samples``, from the cache when there."""
    path = _cache_file(samples, {**options, "process": repr(process), "ensemble": ensemble})
    if path is not None and os.path.isfile(path):
        return as_score(load_score(path), data=samples)
    if ensemble > 1:
        score = as_score(train_ensemble(samples, ensemble, process, **options, progress=progress), data=samples)
    else:
        score = as_score(train_dsm(samples, process, **options, progress=progress), data=samples)
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_score(score, path)
    return score


def _model(config: dict[str, Any], reference: Reference | None, progress: bool) -> Score:
    model, kind = config["model"], config["model"]["kind"]
    if kind == "exact":
        if reference is None or reference.exact is None:
            raise ConfigError("config field 'model.kind': 'exact' needs a reference with an exact score "
                              "(model.example or reference.example)")
        return reference.exact
    if kind == "file":
        return load_score(model["path"])
    shape = tuple(model["sample_shape"]) if "sample_shape" in model else None
    if kind == "torchscript":
        return load_torchscript(model["path"], model["prediction"], _process(model), model["time_input"],
                                sample_shape=shape)
    if kind == "module":
        return load_module(model["factory"], model["weights"], model["prediction"], _process(model),
                           model["time_input"], sample_shape=shape, kwargs=model["kwargs"])
    if kind == "diffusers":
        return from_diffusers(model["path"], model.get("scheduler"), sample_shape=shape)
    if kind == "k-diffusion":
        denoiser = module_from(model["factory"], model["weights"], model["kwargs"])
        return from_k_diffusion(denoiser, model["sigma_min"], model["sigma_max"], sample_shape=shape)
    if kind == "mlp":
        generator = torch.Generator().manual_seed(config["seed"])
        if "data" in model:
            samples = load_data(model["data"])
        elif reference is not None and reference.training is not None:
            samples = reference.training
        elif reference is not None and reference.can_sample:
            samples = reference.data_samples(model["train_samples"], generator)
        else:
            raise ConfigError("config field 'model.data': kind 'mlp' needs training data (a file), an example or "
                              "a system")
        options = {"steps": model.get("train_steps"), "seed": config["seed"]}
        return _trained(samples, _process(model), model["ensemble"], options, progress)
    raise ConfigError(f"config field 'model.kind': unknown kind {kind!r}")


def resolve_subject(config: dict[str, Any], progress: bool = True) -> tuple[Score, Reference, dict[str, Any]]:
    """(the score under study, its reference, a description of both) for a validated config.

    Without a reference of its own, the reference is the model's training data (a file),
    which gives samples but no exact values. Raises :class:`ConfigError` naming the field
    when the model and the reference do not fit together (dimension, no samples at all).
    """
    reference = _reference(config)
    score = _model(config, reference, progress)
    if reference is None:
        data = score.data
        if data is None:
            raise ConfigError("config section 'reference': the report needs samples of the data: give "
                              "[reference] samples = FILE, an example, or train on model.data")
        reference = Reference(f"training data {config['model'].get('data', '')}".strip(), data.shape[1],
                              score.process, data=data)
    if score.dim is not None and score.dim != reference.dim:
        raise ConfigError(f"config field 'model': the model has d = {score.dim} but the reference "
                          f"{reference.name} has d = {reference.dim}")
    if score.process != reference.process:
        reference.process = score.process
        if reference.mixture is not None:
            reference.exact = ExactScore(reference.mixture, score.process)
    info = {"kind": config["model"]["kind"], "example": config["model"].get("example") or config["model"].get("system"),
            "reference": reference.name,
            "process": repr(score.process), "dim": reference.dim, "score": repr(score),
            "exact_reference": reference.exact is not None, "path": config["model"].get("path"),
            "files": [os.fspath(p) for p in (config["model"].get("data"),) if p]}
    return score, reference, info
