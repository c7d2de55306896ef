"""Ensembles of scores: K models of the same data, whose spread measures what the data leave open.

A :class:`ScoreEnsemble` is itself a score, the members' mean s_bar = (1/K) sum_k s_k (THEORY
section 1: each member is an estimate of the same grad log p_t). Its members stay available,
so that a result computed from the ensemble can carry the members' disagreement as a model
error: :meth:`ScoreEnsemble.spread` gives the per-point standard deviation of the members'
scores, and any quantity Q(s) can be recomputed on each member to give the spread of Q.

:func:`train_ensemble` trains K members by :func:`~.training.train_dsm` on bootstrap resamples
of the same training rows (one held-out split shared by all, so their held-out losses are
comparable), each from its own seed: the spread then covers both the sampling of the data
and the optimisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..common.errors import InputShapeError
from .interface import Score, as_score
from .processes import ForwardProcess
from .training import train_dsm

__all__ = ["ScoreEnsemble", "train_ensemble"]


class ScoreEnsemble(Score):
    """The mean of K >= 2 scores of one process and dimension, with the members kept.

    ``ScoreEnsemble(members)``: each member a :class:`Score` or anything :func:`as_score`
    wraps. ``t_trained`` is the largest of the members' (the ensemble is trained where every
    member is); ``data`` is taken from the first member that has some.
    """

    def __init__(self, members: Sequence[Any]) -> None:
        members = [as_score(m) for m in members]
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members; got {len(members)}")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            if m.process != first.process:
                raise ValueError(f"member {k} has process {m.process!r}, member 0 {first.process!r}")
            if m.dim != first.dim:
                raise InputShapeError(f"member {k} has dimension {m.dim}, member 0 {first.dim}")
        self.members = members
        self.process, self.dim = first.process, first.dim
        trained = [m.t_trained for m in members if m.t_trained is not None]
        self.t_trained = max(trained) if trained else None
        self.data = next((m.data for m in members if m.data is not None), None)

    def __repr__(self) -> str:
        return f"ScoreEnsemble({len(self.members)} x {self.members[0]!r})"

    def __len__(self) -> int:
        return len(self.members)

    @property
    def learned(self) -> bool:
        """An ensemble is a fitted model whose members' spread is its model error."""
        return True

    def member_scores(self, x: Any, t: Any) -> torch.Tensor:
        """The members' scores at x, shape (K, ...x.shape), each checked like any score."""
        return torch.stack([m(x, t) for m in self.members])

    def spread(self, x: Any, t: Any) -> torch.Tensor:
        """Per point, the standard deviation of the members' scores about their mean,
        sqrt((1/(K-1)) sum_k |s_k - s_bar|^2), shape x.shape[:-1] (units of the score, 1/x)."""
        scores = self.member_scores(x, t)
        return ((scores - scores.mean(0)) ** 2).sum(-1).sum(0).div(len(self.members) - 1).sqrt()

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.raw(x, t) for m in self.members]).mean(0)


def train_ensemble(
    samples: Any,
    n_members: int,
    process: ForwardProcess | None = None,
    *,
    seed: int = 0,
    **train_options: Any,
) -> ScoreEnsemble:
    """K = ``n_members`` scores trained by :func:`~.training.train_dsm` on the same data.

    Member k uses seed ``seed + k`` (initialisation and batches) and a bootstrap resample of
    the training rows; the held-out rows are the same for every member (split with ``seed``).
    ``train_options`` go to :func:`~.training.train_dsm` (steps, hidden, validation, ...).
    """
    n_members = int(n_members)
    if n_members < 2:
        raise ValueError(f"n_members must be at least 2; got {n_members}")
    for reserved in ("bootstrap", "split_seed"):
        if reserved in train_options:
            raise ValueError(f"train_ensemble sets {reserved} itself; do not pass it")
    members = [train_dsm(samples, process, seed=int(seed) + k, bootstrap=True, split_seed=int(seed), **train_options)
               for k in range(n_members)]
    return ScoreEnsemble(members)
