"""Lambda-schedules for AIS, BAR and MBAR on the alchemical path (THEORY sections 3 and 5).

:func:`lambda_schedule` spaces the lambdas uniformly, at equal increments of the
thermodynamic length int A dlambda (A(l) = sqrt(Var_l W) / 2, the adiabatic speed of
sqrt(p_l)), or at equal increments of int A / lambda_1 dlambda with lambda_1(l) the spectral
gap of the Score Hamiltonian of p_l (grids, d <= 3), from a pilot run of MALA chains.
"""


from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..common.errors import InputShapeError, ScheduleError
from ..sampling.schedules import as_schedule
from ..score.derivatives import divergence
from ..score.interface import DensityScore
from ..score.mixture import MixtureEvaluation
from ..score.processes import OU
from ..spectral.gap import spectral_gap
from ..spectral.grid import box_from_samples
from .path import LinearPath, ensemble, setup_path

__all__ = ["LambdaSchedule", "checked_lambdas", "lambda_schedule"]


def checked_lambdas(lambdas: Any) -> np.ndarray:
    """An increasing lambda-schedule from 0 to 1 (an int K: K uniform steps)."""
    if isinstance(lambdas, (int, np.integer)):
        if lambdas < 1:
            raise ScheduleError(f"a lambda-schedule needs at least 1 step; got {lambdas}")
        return np.linspace(0.0, 1.0, int(lambdas) + 1)
    values = as_schedule(lambdas).times[::-1].copy()
    if values[0] != 0.0 or values[-1] != 1.0:
        raise ScheduleError(
            f"a lambda-schedule must run from 0 to 1 (either direction); it spans [{values[0]!r}, {values[-1]!r}]"
        )
    return values


@dataclass(frozen=True)
class LambdaSchedule:
    """A lambda-schedule and the pilot profile it was derived from.

    lambdas : (K + 1,) increasing from 0 to 1. kind : "uniform", "thermodynamic" or "gap".
    pilot : (P,) pilot lambdas; speed, speed_error : A(l) = sqrt(Var_l W) / 2 and its standard
    error (delta method); gap, gap_error : lambda_1 of H_l and its error ("gap" only, else NaN).
    """

    lambdas: np.ndarray
    kind: str
    pilot: np.ndarray
    speed: np.ndarray
    speed_error: np.ndarray
    gap: np.ndarray
    gap_error: np.ndarray


def _speed(w: torch.Tensor) -> tuple[float, float]:
    """A = sqrt(Var W) / 2 and its delta-method standard error."""
    var = float(w.var())
    n = w.shape[0]
    fourth = float(((w - w.mean()) ** 4).mean())
    var_se = math.sqrt(max(fourth - var**2, 0.0) / n)
    return 0.5 * math.sqrt(var), var_se / (4 * math.sqrt(var)) if var > 0 else math.inf


class _PathScore(DensityScore):
    """The score -grad U_l of p_l, with log p_l = -U_l up to its constant (the box and
    boundary-mass checks of :func:`spectral_gap` read it) and div s = -Laplacian U_l by
    autograd; time-independent (any t of OU)."""

    normalised = False

    def __init__(self, path: LinearPath, lam: float, dim: int) -> None:
        self.path, self.lam, self.dim, self.process = path, lam, dim, OU()

    def log_prob(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        u0, u1 = self.path.ends(x.reshape(-1, x.shape[-1]))
        return -((1 - self.lam) * u0 + self.lam * u1).reshape(x.shape[:-1])

    def evaluate(self, x: Any, t: Any) -> MixtureEvaluation:
        x, t = self.prepare(x, t)
        div = divergence(self, x, t, method="autograd")
        return MixtureEvaluation(self.log_prob(x, t), div.score, div.value)

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        g0, g1 = (s.grad(flat) for s in self.path.states)
        return -((1 - self.lam) * g0 + self.lam * g1).reshape(x.shape)


def _path_gap(path: LinearPath, lam: float, box: tuple[list[float], list[float]], rtol: float) -> tuple[float, float]:
    """lambda_1 - lambda_0 of H_l = -Laplacian + |grad U_l|^2 / 4 - Laplacian U_l / 2 on grids
    (spectral_gap, potential form; the ground-state form's LOBPCG failed to factorise on these
    problems at the time of writing)."""
    result = spectral_gap(_PathScore(path, lam, len(box[0])), 0.0, rtol=rtol, box=box, form="potential")
    return result.value, result.error


def _equal_increments(pilot: np.ndarray, density: np.ndarray, n_steps: int) -> np.ndarray:
    """lambdas at equal increments of int_0^l density (trapezoid on the pilot grid, inverted linearly)."""
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(pilot))])
    lambdas = np.interp(cumulative[-1] * np.arange(n_steps + 1) / n_steps, cumulative, pilot)
    lambdas[0], lambdas[-1] = 0.0, 1.0
    return lambdas


def lambda_schedule(
    U_0: Any,
    U_1: Any,
    n_steps: int,
    kind: Literal["uniform", "thermodynamic", "gap"] = "gap",
    *,
    n_pilot: int = 9,
    n_samples: int = 2000,
    n_mcmc: int = 200,
    samples_0: Any = None,
    samples_1: Any = None,
    step_size: float | None = None,
    gap_rtol: float = 1e-2,
    generator: torch.Generator | None = None,
) -> LambdaSchedule:
    """A lambda-schedule of ``n_steps`` steps for AIS / BAR / MBAR on the path U_l = (1 - l) U_0 + l U_1.

    "uniform": equal steps. "thermodynamic": equal increments of int A dl, with the adiabatic
    speed of the ground state sqrt(p_l), A(l) = || d/dl sqrt(p_l) || = sqrt(Var_l W) / 2
    (d/dl log p_l = -(W - <W>_l)), estimated from ``n_samples`` samples at ``n_pilot`` equally
    spaced pilot lambdas (MALA chains of ``n_mcmc`` steps). "gap": equal increments of
    int A / lambda_1 dl, lambda_1(l) the spectral gap of the Score Hamiltonian of p_l
    (:func:`spectral_gap`, relative accuracy ``gap_rtol``, box from the pilot samples), d <= 3.
    A and lambda_1 are interpolated linearly between pilot lambdas. Seeded by ``generator``.
    """
    path, pools, sampling = setup_path(U_0, U_1, samples_0, samples_1, n_samples, n_mcmc, step_size, generator)
    pilot = np.linspace(0.0, 1.0, int(n_pilot))
    nan = np.full(pilot.size, np.nan)
    speed, speed_error, gap, gap_error = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    if kind == "uniform":
        return LambdaSchedule(np.linspace(0.0, 1.0, int(n_steps) + 1), kind, pilot, speed, speed_error, gap, gap_error)
    if kind not in ("thermodynamic", "gap"):
        raise ValueError(f"kind must be 'uniform', 'thermodynamic' or 'gap'; got {kind!r}")
    ensembles = [ensemble(path, float(lam), n_samples, pools, sampling) for lam in pilot]
    for i, ens in enumerate(ensembles):
        u0, u1 = path.ends(ens.x)
        speed[i], speed_error[i] = _speed(u1 - u0)
    density = speed
    if kind == "gap":
        box = box_from_samples(torch.cat([e.x for e in ensembles]).detach().cpu(), tol=1e-14)
        if len(box[0]) > 3:
            raise InputShapeError(f"the gap schedule discretises H_lambda on grids in d <= 3; d = {len(box[0])}")
        for i, lam in enumerate(pilot):
            gap[i], gap_error[i] = _path_gap(path, float(lam), box, gap_rtol)
        density = speed / gap
    return LambdaSchedule(_equal_increments(pilot, density, int(n_steps)), kind, pilot, speed, speed_error,
                          gap, gap_error)
