"""Checkpoints of trained scores: one MLP score, or an ensemble of them, as plain data.

A checkpoint is ``torch.save`` of a dict of plain Python types and tensors, read back with
``torch.load(weights_only=True)``, so loading one never runs code from the file. Two formats:

- ``scorehamiltonian.mlp_score`` (version 1): ``config`` (the :class:`~.training.MLPScore`
  constructor arguments, with the process config), ``training`` (the training record or
  None) and ``state_dict``;
- ``scorehamiltonian.mlp_ensemble`` (version 1): ``members``, a list of such dicts without
  their own format tags (a :class:`~.ensemble.ScoreEnsemble` of MLP scores).

Files are written atomically (a temporary file moved into place), so a failure never leaves
a partial checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..common.errors import CheckpointError
from ..common.files import atomic_write
from .ensemble import ScoreEnsemble
from .interface import ModelScore, Score
from .processes import process_from_config
from .training import CONFIG_KEYS, MLPScore, as_model_score

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "ENSEMBLE_FORMAT", "load_score", "save_score"]

CHECKPOINT_FORMAT = "scorehamiltonian.mlp_score"
ENSEMBLE_FORMAT = "scorehamiltonian.mlp_ensemble"
CHECKPOINT_VERSION = 1
_MEMBER_KEYS = {"config", "training", "state_dict"}


def save_score(score: ModelScore | ScoreEnsemble, path: str | os.PathLike[str]) -> None:
    """Write ``score`` to a checkpoint file (module docstring): a ModelScore of kind "eps"
    wrapping an :class:`~.training.MLPScore` (as returned by :func:`~.training.train_dsm`
    or :func:`load_score`), or a :class:`~.ensemble.ScoreEnsemble` of such scores."""
    if isinstance(score, ScoreEnsemble):
        payload = {"format": ENSEMBLE_FORMAT, "version": CHECKPOINT_VERSION,
                   "members": [_member(m) for m in score.members]}
    else:
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **_member(score)}
    atomic_write(path, lambda f: torch.save(payload, f))


def _member(score: Score) -> dict[str, Any]:
    """The plain data of one MLP score: its config, training record and CPU state_dict."""
    if not (isinstance(score, ModelScore) and isinstance(score.model, MLPScore) and score.kind == "eps"):
        raise TypeError(
            f"save_score needs a ModelScore of kind 'eps' wrapping an MLPScore (as returned "
            f"by train_dsm or load_score), or an ensemble of them; got {score!r}"
        )
    mlp = score.model
    if score.process != mlp.process:
        raise ValueError(
            f"the score's process {score.process!r} differs from the one the MLP was built "
            f"for, {mlp.process!r}"
        )
    return {"config": mlp.config, "training": mlp.training_config,
            "state_dict": {k: v.detach().cpu().clone() for k, v in mlp.state_dict().items()}}


def load_score(path: str | os.PathLike[str], device: torch.device | str | None = None) -> ModelScore | ScoreEnsemble:
    """Read a checkpoint written by :func:`save_score`: a ``ModelScore(mlp, kind="eps")`` or a
    :class:`~.ensemble.ScoreEnsemble` of them, onto ``device`` (CPU by default).

    Loads with ``torch.load(weights_only=True)`` (plain data and tensors only; no code from
    the file runs). Raises :class:`CheckpointError`, naming the file, when it is missing,
    unreadable or not a checkpoint (including one holding pickled objects), has another
    format tag or version, lacks keys, or its config or tensors do not fit an MLPScore.
    The process is rebuilt with ``process_from_config``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path!r}")
    map_location = torch.device(device) if device is not None else torch.device("cpu")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path!r} is not a readable scorehamiltonian checkpoint (torch.load with "
            f"weights_only=True failed: {type(exc).__name__}: {first_line})"
        ) from exc
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if not (isinstance(fmt, str) and fmt in (CHECKPOINT_FORMAT, ENSEMBLE_FORMAT)):
        found = repr(fmt) if isinstance(payload, dict) else f"a {type(payload).__name__}, not a dict"
        raise CheckpointError(f"{path!r} is not a {CHECKPOINT_FORMAT!r} checkpoint (found format {found})")
    version = payload.get("version")
    if not (type(version) is int and version == CHECKPOINT_VERSION):
        raise CheckpointError(
            f"{path!r} has checkpoint version {version!r}; this code reads version {CHECKPOINT_VERSION}"
        )
    if fmt == CHECKPOINT_FORMAT:
        return _load_member(payload, repr(path), map_location)
    members = payload.get("members")
    if not (isinstance(members, list) and len(members) >= 2):
        raise CheckpointError(f"{path!r}: an ensemble checkpoint needs a list of at least 2 'members'")
    return ScoreEnsemble([_load_member(m, f"{path!r} member {k}", map_location) for k, m in enumerate(members)])


def _load_member(payload: Any, where: str, map_location: torch.device) -> ModelScore:
    """One MLP score from its plain data; CheckpointError naming ``where`` if it does not fit."""
    missing = _MEMBER_KEYS - set(payload) if isinstance(payload, dict) else _MEMBER_KEYS
    if missing:
        raise CheckpointError(f"{where} lacks the keys {sorted(missing)}")
    config, state, training = payload["config"], payload["state_dict"], payload["training"]
    plain = isinstance(config, dict) and isinstance(state, dict)
    if not (plain and (training is None or isinstance(training, dict))):
        raise CheckpointError(f"{where}: 'config' and 'state_dict' must be dicts and 'training' a dict or None")
    if set(config) != set(CONFIG_KEYS):
        raise CheckpointError(f"{where}: config keys {sorted(config)} differ from the MLPScore keys {sorted(CONFIG_KEYS)}")
    try:
        process = process_from_config(config["process_config"])
        mlp = MLPScore(**config)
        mlp.load_state_dict(state)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: config or weights do not fit an MLPScore: {exc}") from exc
    mlp.training_config = training
    mlp.to(map_location).eval()
    return as_model_score(mlp, process)
