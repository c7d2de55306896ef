"""Energy differences from line integrals of the score, with the cycle-closure audit (THEORY section 5).

log p_t(b) - log p_t(a) = int_gamma s_t . dl along
several paths gamma from a to b (Gauss-Legendre in the path parameter). For a true score every
path gives the same number; the spread (the cycle closure: the integral around the loop made
of two paths) is the audit figure of a learned score, and :func:`~.energy.energy` reports it beside the
energies of any score that is not an :class:`ExactScore`.
"""


from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..common.validation import check_points
from ..score.interface import Score, as_score

__all__ = ["LineEnergyResult", "ReadoutDisagreement", "line_energy", "readout_disagreement"]


@dataclass(frozen=True)
class LineEnergyResult:
    """log p_t(b) - log p_t(a) from line integrals of the score along several paths.

    value : (n,) the mean over paths of int s_t . dl (nats).
    error : (n,) quadrature_error + closure: bounds the distance of every path's integral
        from ``value``.
    closure : (n,) max - min over paths: the largest cycle-closure residual |oint s . dl| of a
        loop made of two of the paths (zero to quadrature error for a true score).
    quadrature_error : (n,) max over paths of |I_n - I_{n/2}| (Gauss-Legendre with n and n/2
        nodes): an over-estimate of the error of I_n for a smooth integrand.
    per_path : (n, P) each path's integral; nfe : score evaluations per point.
    """

    value: torch.Tensor
    error: torch.Tensor
    closure: torch.Tensor
    quadrature_error: torch.Tensor
    per_path: torch.Tensor
    nfe: int


def _perpendicular_basis(u: torch.Tensor) -> torch.Tensor:
    """(n, d, d - 1) orthonormal directions perpendicular to the unit vectors u (n, d).

    Columns 2..d of the Householder reflection that maps e_1 to +-u.
    """
    e1 = torch.zeros_like(u)
    e1[:, 0] = 1.0
    flip = (u[:, :1] < 0).to(u.dtype) * 2 - 1
    v = u - flip * e1
    reflection = torch.eye(u.shape[1], dtype=u.dtype, device=u.device) - 2 * v[:, :, None] * v[:, None, :] / (
        (v**2).sum(-1)[:, None, None]
    )
    return reflection[:, :, 1:]


def _default_bulges(a: torch.Tensor, b: torch.Tensor, n_paths: int) -> torch.Tensor:
    """(P, n, d) bulge vectors: 0 (straight), then +-|b - a| / 2 along perpendicular directions
    in turn (along the segment itself in 1D, where every path gives the same integral)."""
    delta = b - a
    length = delta.norm(dim=-1, keepdim=True)
    u = delta / length.clamp_min(torch.finfo(a.dtype).tiny)
    basis = u[:, :, None] if a.shape[1] == 1 else _perpendicular_basis(u)
    bulges = [torch.zeros_like(a)]
    for k in range(1, n_paths):
        direction = basis[:, :, ((k - 1) // 2) % basis.shape[2]]
        bulges.append((-1) ** (k - 1) * 0.5 * length * direction)
    return torch.stack(bulges)


def _path_integral(score: Score, a: torch.Tensor, b: torch.Tensor, bulges: torch.Tensor, t: float,
                   n_nodes: int) -> torch.Tensor:
    """(n, P) int_0^1 s_t(gamma(u)) . gamma'(u) du, gamma(u) = a + u (b - a) + sin(pi u) bulge."""
    nodes, weights = (torch.as_tensor(v, dtype=a.dtype, device=a.device) for v in np.polynomial.legendre.leggauss(n_nodes))
    u, w = 0.5 * (nodes + 1.0), 0.5 * weights
    delta = (b - a)[None, None]
    points = a[None, None] + u[:, None, None, None] * delta + torch.sin(math.pi * u)[:, None, None, None] * bulges[None]
    tangent = delta + math.pi * torch.cos(math.pi * u)[:, None, None, None] * bulges[None]
    s = score(points.reshape(-1, a.shape[1]), t).reshape(points.shape)
    return torch.einsum("q,qpnd->np", w, (s * tangent)).detach()


def line_energy(
    score: Any,
    a: Any,
    b: Any,
    t: float | None = None,
    paths: int | Any = 3,
    n_nodes: int = 32,
) -> LineEnergyResult:
    """log p_t(b) - log p_t(a) = int_gamma s_t . dl along several paths, with the cycle closure.

    Paths gamma_k(u) = a + u (b - a) + sin(pi u) delta_k, u in [0, 1], integrated by
    Gauss-Legendre with ``n_nodes`` nodes in u (and n_nodes / 2 for the error estimate).
    ``paths`` is the number P of paths (the straight one and P - 1 arcs bulging by
    |b - a| / 2 to alternate sides along the directions perpendicular to b - a), or a tensor of
    bulge vectors delta_k, shape (P, d) or (P, n, d). a, b : (n, d) or (d,) end points;
    t : the time of the score (default the process's t_min). Units: nats.
    """
    score = as_score(score)
    a, b = (check_points(v, score.dim, name) for v, name in ((a, "a"), (b, "b")))
    a, b = torch.broadcast_tensors(a, b)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    t = score.process.t_min if t is None else float(t)
    if int(n_nodes) < 4:
        raise ValueError(f"n_nodes must be at least 4 (the error estimate uses n_nodes / 2); got {n_nodes}")
    if isinstance(paths, int):
        if paths < 2:
            raise ValueError(f"paths must be at least 2 for a cycle closure; got {paths}")
        bulges = _default_bulges(a, b, paths)
    else:
        bulges = torch.as_tensor(paths, dtype=a.dtype, device=a.device)
        bulges = bulges[:, None].expand(-1, *a.shape) if bulges.ndim == 2 else bulges.expand(-1, *a.shape)
    fine = _path_integral(score, a, b, bulges, t, int(n_nodes))
    coarse = _path_integral(score, a, b, bulges, t, int(n_nodes) // 2)
    quadrature = (fine - coarse).abs().amax(-1)
    closure = fine.amax(-1) - fine.amin(-1)
    nfe = bulges.shape[0] * (int(n_nodes) + int(n_nodes) // 2)
    return LineEnergyResult(fine.mean(-1), quadrature + closure, closure, quadrature, fine, nfe)


@dataclass(frozen=True)
class ReadoutDisagreement:
    """How far two readouts of the same energies that use the score differently disagree.

    value : (n,) |(E(x) - E(x_a)) + (log p_t(x) - log p_t(x_a))| (nats): E the probability-flow
        energies given (the score over every time, along trajectories), the second term the
        straight line integral of s_t from the anchor x_a to x (the score at one small time,
        in space); 0 at the anchor. Both readouts are exact for a true score.
    numerical : (n,) the part of it that their numerical errors can explain (error of E at x
        and at x_a plus the line integral's error).
    anchor : the index of the anchor (the lowest energy among the points).
    """

    value: torch.Tensor
    numerical: torch.Tensor
    anchor: int


def readout_disagreement(score: Any, x: Any, energies: Any, t: float, errors: Any = None,
                         n_nodes: int = 32) -> ReadoutDisagreement:
    """The disagreement between probability-flow energies ``energies`` (n,) of points x (n, d)
    (with their ``errors``, default 0) and line integrals of the score at time t (the energies'
    start time, small) from the lowest-energy point (:class:`ReadoutDisagreement`): a check
    that needs no truth and is not empty in 1D (unlike the cycle closure). Cost: 3 n_nodes
    score evaluations per point (:func:`line_energy` with two paths, its error estimate included)."""
    score = as_score(score)
    x = check_points(x, score.dim)
    x = x.reshape(-1, x.shape[-1])
    values = torch.as_tensor(energies, dtype=x.dtype, device=x.device).reshape(-1)
    errors = torch.zeros_like(values) if errors is None else torch.as_tensor(errors, dtype=x.dtype).reshape(-1)
    if values.shape[0] != x.shape[0] or errors.shape != values.shape:
        raise ValueError(f"energies and errors need one value per point: {x.shape[0]} points, "
                         f"{values.shape[0]} energies, {errors.shape[0]} errors")
    anchor = int(torch.argmin(values))
    line = line_energy(score, x[anchor].expand_as(x), x, t=t, paths=2, n_nodes=n_nodes)
    straight = line.per_path[:, 0]
    value = ((values - values[anchor]) + straight).abs()
    numerical = errors + errors[anchor] + line.quadrature_error
    value[anchor], numerical[anchor] = 0.0, 0.0
    return ReadoutDisagreement(value, numerical, anchor)
