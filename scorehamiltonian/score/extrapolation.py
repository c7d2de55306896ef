"""Where a learned score extrapolates: a per-point map that needs no truth (THEORY sections 1 and 3).

A learned s_t is fitted where the data (noised to t) are; elsewhere it extrapolates, and every
readout that depends on those regions (the gap of a metastable target at its saddle, the
energy of a point between basins) inherits an error that no numerical refinement sees.
:func:`extrapolation_map` gives, per point x:

- ``distance``: the distance from x to the nearest training point, in units of the data's
  own scale h = the median nearest-neighbour distance among the data points (so 1 is "as
  close as the data are to each other", and 10 is ten such gaps away from any data);
- ``disagreement``: for a :class:`~.ensemble.ScoreEnsemble`, its members' spread relative to
  the mean score, spread(x) / |s_bar(x)| (:meth:`~.ensemble.ScoreEnsemble.spread`): where
  the data fix the score the members agree, elsewhere they need not; NaN for one model;
- ``figure``: the ranking figure, disagreement (1 + distance) for an ensemble (the members
  can agree by accident far from data, which the distance then still shows), the distance
  alone for one model.

:func:`denoising_loss` is the held-out check: the epsilon-prediction loss
E |sigma_t s_t(alpha_t x_0 + sigma_t z) + z|^2 / d over held-out samples x_0 (lower is better;
its minimum over all fields is not 0 but the data's own irreducible loss, so it is compared
between models, or against the training rows, where a larger held-out loss means overfit).
The Fokker-Planck residual (:func:`~.audit.fokker_planck_residual`) and the disagreement
between the probability-flow and the line-integral energies
(:func:`~scorehamiltonian.thermo.line_energy.readout_disagreement`) complete the audit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..common.errors import SamplesRequiredError
from ..common.validation import check_points
from .ensemble import ScoreEnsemble
from .interface import Score, as_score

__all__ = ["DenoisingLoss", "ExtrapolationMap", "denoising_loss", "extrapolation_map", "nearest_distance"]

#: Data points used for the data's nearest-neighbour scale (a random subset beyond it).
SCALE_POINTS = 4000
#: Rows per block of pairwise distances.
_BLOCK = 2048


@dataclass(frozen=True)
class ExtrapolationMap:
    """The per-point extrapolation map of :func:`extrapolation_map` (module docstring).

    distance : (n,) nearest-training-point distance in units of ``data_scale`` (NaN without data);
    disagreement : (n,) ensemble spread / |mean score| (NaN for a single model);
    figure : (n,) the ranking figure (higher: more extrapolation);
    data_scale : the data's median nearest-neighbour distance (units of x); t : the time used.
    """

    distance: torch.Tensor
    disagreement: torch.Tensor
    figure: torch.Tensor
    data_scale: float
    t: float


def nearest_distance(x: torch.Tensor, data: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """(n,) Euclidean distance from each row of x (n, d) to its nearest row of ``data`` (m, d),
    in blocks; ``exclude_self`` skips zero distances (x a subset of the data)."""
    out = []
    for block in x.split(_BLOCK):
        dist = torch.cdist(block, data)
        if exclude_self:
            dist = dist.masked_fill(dist == 0, math.inf)
        out.append(dist.min(1).values)
    return torch.cat(out)


def extrapolation_map(score: Any, x: Any, t: float | None = None, *, data: Any = None,
                      generator: torch.Generator | None = None) -> ExtrapolationMap:
    """The extrapolation map of a score at points x (n, d) (module docstring).

    t : the time of the score (default its training t_min ``t_trained``, else the process's
    t_min). data : (m, d) the training samples of p_0 (default the score's ``data``; None and
    no ``data`` on the score: the distance is NaN). generator : picks the subset of
    ``SCALE_POINTS`` data points for the scale when there are more.
    Cost: one evaluation of each member at x; O(n m) distances.
    """
    score = as_score(score)
    x = check_points(x, score.dim)
    x = x.reshape(-1, x.shape[-1])
    t = float(score.t_trained if t is None and score.t_trained is not None else
              score.process.t_min if t is None else t)
    data = score.data if data is None else data
    distance, scale = torch.full(x.shape[:1], math.nan, dtype=x.dtype), math.nan
    if data is not None:
        data = torch.as_tensor(data, dtype=x.dtype, device=x.device).reshape(-1, x.shape[-1])
        if data.shape[0] < 2:
            raise SamplesRequiredError(f"the data's scale needs at least 2 data points; got {data.shape[0]}")
        subset = data if data.shape[0] <= SCALE_POINTS else data[
            torch.randperm(data.shape[0], generator=generator)[:SCALE_POINTS]]
        scale = float(nearest_distance(subset, subset, exclude_self=True).median())
        distance = nearest_distance(x, data) / scale
    if isinstance(score, ScoreEnsemble):
        with torch.no_grad():
            mean = score(x, t).norm(dim=-1)
            disagreement = score.spread(x, t) / mean.clamp_min(torch.finfo(x.dtype).tiny)
        figure = disagreement * (1.0 + torch.nan_to_num(distance, nan=0.0))
    else:
        disagreement = torch.full(x.shape[:1], math.nan, dtype=x.dtype)
        figure = distance
    return ExtrapolationMap(distance.cpu(), disagreement.detach().cpu(), figure.detach().cpu(), scale, t)


@dataclass(frozen=True)
class DenoisingLoss:
    """The denoising (epsilon-prediction) loss of :func:`denoising_loss`: ``value`` its mean over the
    draws, ``stderr`` its standard error, ``n_draws`` the draws (dimensionless)."""

    value: float
    stderr: float
    n_draws: int


def denoising_loss(score: Score, samples: Any, *, t_range: tuple[float, float] | None = None,
                   n_draws: int = 4096, generator: torch.Generator | None = None) -> DenoisingLoss:
    """E |sigma_t s_t(x_t) + z|^2 / d, x_t = alpha_t x_0 + sigma_t z, over x_0 drawn from the rows of
    ``samples`` (held-out data), z ~ N(0, I), t by its log-SNR uniform over ``t_range`` (default
    [t_trained or t_min, t_max]; sigma_t > 0 needed at its lower end), the law the training of
    :func:`~.training.train_dsm` draws from. Standard error: std / sqrt(n_draws) (independent draws)."""
    score = as_score(score)
    x0 = check_points(samples, score.dim)
    x0 = x0.reshape(-1, x0.shape[-1])
    process = score.process
    lo, hi = t_range if t_range is not None else (score.t_trained or process.t_min, process.t_max)
    lam_lo, lam_hi = (float(process.log_snr(torch.tensor(float(v), dtype=torch.float64))) for v in (hi, lo))
    if not math.isfinite(lam_hi):
        raise ValueError(f"sigma_t is 0 at t = {lo}: give t_range=(t_lo, t_hi) with sigma_{{t_lo}} > 0")
    rows = torch.randint(x0.shape[0], (int(n_draws),), generator=generator)
    lam = lam_lo + (lam_hi - lam_lo) * torch.rand(int(n_draws), generator=generator, dtype=torch.float64)
    t = process.log_snr_to_t(lam).clamp(float(lo), float(hi)).to(x0.dtype)
    z = torch.randn(x0[rows].shape, generator=generator, dtype=torch.float64).to(x0.dtype)
    x_t = process.perturb(x0[rows], t, z)
    with torch.no_grad():
        per_draw = ((process.sigma(t)[:, None] * score(x_t, t) + z) ** 2).mean(-1)
    return DenoisingLoss(float(per_draw.mean()), float(per_draw.std()) / math.sqrt(int(n_draws)), int(n_draws))
