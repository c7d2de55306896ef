"""The quantum potential of the Score Hamiltonian (THEORY section 2).

H_t = -Laplacian + V_t with V_t(x) = |s_t(x)|^2 / 4 + div s_t(x) / 2, in units of 1 / x^2
(x in the units of the data, t in the process's time). For p_t = N(m, C):
V_t(x) = (x - m)^T C^{-2} (x - m) / 4 - tr(C^{-1}) / 2, a harmonic oscillator whose levels
are sums of n_i / c_i over the eigenvalues c_i of C.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .derivatives import DivergenceMethod, DivergenceResult, divergence

__all__ = ["PotentialResult", "quantum_potential"]


@dataclass(frozen=True)
class PotentialResult:
    """V_t at a batch of points with its error.

    value, error : (...,) the potential and its error (half the divergence's error: a
    standard error for stochastic divergences, an estimate for finite differences, 0 for
    exact ones); score : (..., d); divergence : the :class:`DivergenceResult` used.
    """

    value: torch.Tensor
    error: torch.Tensor
    score: torch.Tensor
    divergence: DivergenceResult


def quantum_potential(
    score: Any,
    x: Any,
    t: Any,
    divergence_method: DivergenceMethod = "auto",
    n_probes: int = 64,
    generator: torch.Generator | None = None,
) -> PotentialResult:
    """V_t(x) = |s_t(x)|^2 / 4 + div s_t(x) / 2 at x of shape (..., d).

    ``score`` is a :class:`Score` or a callable ``score(x, t)`` (wrapped by
    :func:`as_score`); ``t`` a float or a tensor broadcastable to x.shape[:-1]. The
    divergence is computed by ``divergence_method`` ("auto", "exact", "autograd",
    "hutchinson", "hutch++" or "fd"; see :func:`scorehamiltonian.score.derivatives.divergence`),
    with ``n_probes`` and ``generator`` for the stochastic methods.
    """
    div = divergence(score, x, t, method=divergence_method, n_probes=n_probes, generator=generator)
    value = 0.25 * (div.score**2).sum(-1) + 0.5 * div.value
    return PotentialResult(value, 0.5 * div.error, div.score, div)
