"""The adiabatic speed A(t) = || d/dt sqrt(p_t) ||_{L2}: how fast the ground state moves (THEORY section 3).

:func:`adiabatic_speed` estimates A(t) (units 1 / t) from samples of p_t and the score and
its divergence, through d/dt log p_t from the Fokker-Planck equation, with its Monte Carlo
standard error and the mass-conservation check E[d/dt log p_t] = 0. 2 int A dt is the
Fisher-Rao (thermodynamic) length of the path, which the schedules of
:mod:`scorehamiltonian.sampling` consume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..common.errors import InputShapeError
from ..common.validation import as_float_tensor
from ..score import derivatives
from ..score.derivatives import DivergenceMethod
from ..score.interface import Score, as_score

__all__ = ["AdiabaticSpeed", "adiabatic_speed", "dlogp_dt"]

#: Divergence estimators whose per-point error is a standard error of zero-mean probe noise.
_STOCHASTIC_DIVERGENCES = ("hutchinson", "hutch++")


@dataclass(frozen=True)
class AdiabaticSpeed:
    """A(t) = || d/dt sqrt(p_t) ||_{L2} from samples of p_t (units 1 / t).

    value, stderr : A(t) and its Monte Carlo standard error (delta method).
    mean, mean_stderr : the sample mean of d/dt log p_t and its standard error; the exact
        mean is 0 (mass conservation), so |mean| of a few mean_stderr or more flags a
        score that is not the score of the samples' density.
    n_samples : samples used; divergence_method : the divergence estimator used.
    """

    value: float
    stderr: float
    mean: float
    mean_stderr: float
    n_samples: int
    divergence_method: str


def dlogp_dt(score: Score, x: torch.Tensor, t: float, method: DivergenceMethod,
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """d/dt log p_t at the points x (n, d) from the score (formula in :func:`adiabatic_speed`).

    Returns (value, error, method): shapes (n,), error = (g^2 / 2) times the divergence
    estimator's per-point error, and the divergence method used.
    """
    div = derivatives.divergence(score, x, t, method=method, generator=generator)
    s = div.score
    f = float(score.process.f(t))
    half_g2 = 0.5 * float(score.process.g2(t))
    value = -x.shape[-1] * f - f * (x * s).sum(-1) + half_g2 * (div.value + (s * s).sum(-1))
    return value, half_g2 * div.error, div.method


def adiabatic_speed(
    score: Any,
    t: float,
    samples: Any = None,
    n_samples: int = 20000,
    generator: torch.Generator | None = None,
    divergence: DivergenceMethod = "auto",
) -> AdiabaticSpeed:
    """The adiabatic speed A(t) = || d/dt sqrt(p_t) ||_{L2} = (1/2) sqrt(E_{p_t}[(d/dt log p_t)^2]).

    Derivation. X_t solves dX = f(t) X dt + g(t) dW in R^d, so p_t obeys the Fokker-Planck
    equation d/dt p = -div(f x p) + (g^2 / 2) Laplacian p = -d f p - f x . grad p
    + (g^2 / 2) Laplacian p. Dividing by p, with s = grad log p and
    Laplacian p / p = div(p s) / p = div s + |s|^2:

        d/dt log p_t(x) = -d f(t) - f(t) x . s_t(x) + (g(t)^2 / 2) (div s_t(x) + |s_t(x)|^2).

    Then d/dt sqrt(p) = sqrt(p) (d/dt log p) / 2, so A^2 = int p (d/dt log p)^2 / 4 dx
    = E_p[(d/dt log p)^2] / 4, and E_p[d/dt log p] = d/dt int p = 0 (the check reported as
    ``mean``). A is in units of 1 / t (t the process's own time); 2 int A dt is the
    Fisher-Rao length of the path.

    Estimator. With q_i = d/dt log p_t(x_i) at n samples, Q = mean_i(w_i), w_i = q_i^2
    (minus (g^2/2)^2 e_i^2 for the stochastic divergence estimators "hutchinson" and
    "hutch++", whose per-point standard error e_i adds probe noise of variance e_i^2 to q_i:
    the subtraction removes that bias), A = sqrt(max(Q, 0)) / 2 and, by the delta method,
    stderr = se(Q) / (4 sqrt(Q)) with se(Q) = std(w) / sqrt(n) (sqrt(se(Q)) / 2 when Q <= 0,
    where the delta method fails). The deterministic error of "fd" divergences is not
    included.

    score : a :class:`Score` or a callable (wrapped by :func:`as_score`).
    samples : (n, d) samples of p_t. Without them ``n_samples`` draws of
        :meth:`Score.sample` are used (an exact marginal, or the data attached with
        ``as_score(..., data=x0)``); a score with neither raises
        :class:`SamplesRequiredError`. Samples are not produced by
        Langevin dynamics with the score: it does not cross the barriers between modes, and
        A(t) weighs the basins by their mass. Pass e.g. data noised to t,
        alpha_t x0 + sigma_t z.
    divergence : the estimator of div s (:func:`scorehamiltonian.score.derivatives.divergence`;
        "auto" is exact for a :class:`DensityScore`); ``generator`` also seeds its probes.
    """
    score = as_score(score)
    t = float(score.process.time(float(t)))
    if samples is None:
        if int(n_samples) < 2:
            raise ValueError(f"n_samples must be at least 2 for a standard error; got {n_samples}")
        x = score.sample(int(n_samples), t, generator)
    else:
        x = as_float_tensor(samples, "samples")
        if x.ndim != 2 or x.shape[0] < 2 or (score.dim is not None and x.shape[1] != score.dim):
            want = f"(n, {score.dim})" if score.dim is not None else "(n, d)"
            raise InputShapeError(f"samples must have shape {want} with n >= 2; got {tuple(x.shape)}")
    q, err, method = dlogp_dt(score, x, t, divergence, generator)
    w = q**2 - err**2 if method in _STOCHASTIC_DIVERGENCES else q**2
    n = q.shape[0]
    q_mean, q_se = float(q.mean()), float(q.std(correction=1)) / math.sqrt(n)
    total, total_se = float(w.mean()), float(w.std(correction=1)) / math.sqrt(n)
    if total > 0:
        value, stderr = 0.5 * math.sqrt(total), total_se / (4.0 * math.sqrt(total))
    else:
        value, stderr = 0.0, 0.5 * math.sqrt(total_se)
    return AdiabaticSpeed(value, stderr, q_mean, q_se, n, method)
