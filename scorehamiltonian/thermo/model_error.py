"""The model error of a readout from a learned score: what kind of source it is, and the members' spread.

THEORY section 5 readouts (energies, Delta F, free energies of states) of a learned score
inherit the model's error, which no refinement of the numerics removes. The rule, the same
for every readout (and for the gap, :mod:`~scorehamiltonian.spectral.gap`):

- an exact or analytic source (a log-density, a formula, a mixture): model error 0;
- a :class:`~scorehamiltonian.score.ensemble.ScoreEnsemble` (or any source with ``members``):
  the readout is recomputed on each member Q_k, and the model error is their standard
  deviation sqrt(sum_k (Q_k - Q_bar)^2 / (K - 1)) (units of Q); where the members' readouts
  carry a numerical error of their own on the mean's discretisation (energies: their own
  error bar on the mean's grid), the largest is added, flagged ``model_unresolved`` where it
  dominates;
- a single learned model: it cannot know its error; the model error is NaN, the result is
  flagged ``MODEL_UNKNOWN`` and never converged, with one warning naming the reason.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import torch

from ..spectral.solution import ConvergenceWarning

__all__ = ["MODEL_SPREAD", "MODEL_UNKNOWN", "MODEL_UNRESOLVED", "SourceKind", "member_spread", "source_kind",
           "warn_model_unknown"]

SourceKind = Literal["exact", "single", "ensemble"]
#: The flag of a result from a single learned model: its model error is unknown (NaN).
MODEL_UNKNOWN = "model_unknown"
#: The flag of a result whose ensemble spread (the model error) exceeds the accuracy asked for.
MODEL_SPREAD = "model_spread"
#: The flag of a readout whose members' own numerical error exceeds their spread: the model
#: error there is a bound dominated by numerics, not the members' disagreement.
MODEL_UNRESOLVED = "model_unresolved"


def source_kind(source: Any) -> SourceKind:
    """"ensemble" for a source with ``members`` (a ScoreEnsemble, or an energy carrying its
    members'), "single" for any other learned score (``source.learned``; a ScoreEnergy's
    score), "exact" otherwise (analytic scores, log-densities, energy callables, mixtures)."""
    inner = getattr(source, "score", source)
    if getattr(source, "members", None) is not None or getattr(inner, "members", None) is not None:
        return "ensemble"
    return "single" if bool(getattr(inner, "learned", False)) else "exact"


def member_spread(values: Any) -> Any:
    """The standard deviation over the first axis (the members; ddof = 1) of a (K, ...) array or
    tensor of the members' readouts: the model error of the ensemble's readout."""
    if isinstance(values, torch.Tensor):
        return values.std(0, correction=1)
    return np.std(np.asarray(values, dtype=float), axis=0, ddof=1)


def warn_model_unknown(what: str) -> str:
    """Warn once (ConvergenceWarning) that ``what`` comes from a single learned model whose model
    error is unknown; return the flag's message, starting with ``MODEL_UNKNOWN``."""
    message = (f"{MODEL_UNKNOWN}: {what} comes from a single learned model, which cannot know its own error "
               "(model_error is NaN and the result is not converged); train an ensemble (train_ensemble, or "
               "scorehamiltonian train --ensemble K) for a model error")
    warnings.warn(message, ConvergenceWarning, stacklevel=3)
    return message
