"""Derivatives of a score: its Jacobian and its divergence, each with an error figure.

The divergence div s = tr(ds/dx) enters the quantum potential (THEORY section 2) and the
probability-flow energy (section 5). Estimators, all batched over the points x (..., d):

- ``"exact"``: a score that knows its divergence in closed form (:class:`ExactScore`).
- ``"autograd"``: tr J from the full Jacobian, d vector-Jacobian products; exact to
  round-off (error reported as 0).
- ``"hutchinson"``: mean over m Rademacher probes v of v^T J v (unbiased); error = the
  sample standard error std_j(v_j^T J v_j) / sqrt(m).
- ``"hutch++"``: Meyer et al. (2021): with k = m // 3, the exact trace of J on the range Q
  of J^T S (S a d x k sign sketch) plus Hutchinson with k probes on (I - QQ^T) J (I - QQ^T);
  error = the standard error of that residual part (exact when k >= d).
- ``"fd"``: central differences of the score, for callables autograd cannot see through.
  Step h_j = eps^(1/3) max(1, |x_j|) (eps of the dtype; the step that balances O(h^2)
  truncation against O(eps / h) round-off), rounded so that x +- h is exact; error estimate
  |D(2h) - D(h)| / 3 (Richardson) plus the round-off bound eps (|s(x+h)| + |s(x-h)|) / (2h).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..common.errors import NotDifferentiableError
from ..common.validation import require_finite
from .interface import DensityScore, Score, as_score

__all__ = [
    "DivergenceResult",
    "JacobianResult",
    "divergence",
    "jacobian",
    "rademacher",
    "score_with_graph",
    "vjp",
]

DivergenceMethod = Literal["auto", "exact", "autograd", "hutchinson", "hutch++", "fd"]
JacobianMethod = Literal["auto", "autograd", "fd"]

#: Round-off of one score evaluation, in units of eps (|s| + |J| |x|): the error of computing
#: s from x (condition number |J| |x| / |s|) times a margin for the operations it takes.
_ROUNDOFF_FACTOR = 64.0

#: Above this dimension ``method="auto"`` estimates divergences stochastically (Hutch++).
AUTO_EXACT_MAX_DIM = 64


@dataclass(frozen=True)
class JacobianResult:
    """J_ij = d s_i / d x_j at a batch of points.

    value : (..., d, d) Jacobian; error : (..., d, d) absolute error estimate (zeros for
    autograd); score : (..., d) the score at the points; method : "autograd" or "fd";
    n_evaluations / n_vjp : forward score evaluations (points times calls, per point) and
    vector-Jacobian products used.
    """

    value: torch.Tensor
    error: torch.Tensor
    score: torch.Tensor
    method: str
    n_evaluations: int
    n_vjp: int


@dataclass(frozen=True)
class DivergenceResult:
    """div s at a batch of points, with its error.

    value, error : (...,); ``error`` is a standard error for the stochastic methods, an
    error estimate for finite differences and 0 for exact ones (round-off only).
    score : (..., d) the score at the points. method, n_evaluations, n_vjp: as in
    :class:`JacobianResult`.
    """

    value: torch.Tensor
    error: torch.Tensor
    score: torch.Tensor
    method: str
    n_evaluations: int
    n_vjp: int


def score_with_graph(score: Score, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate the score at a leaf copy of x that requires grad; raise if it has no graph."""
    x_leaf = x.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            s = score(x_leaf, t)
    except RuntimeError as err:
        raise NotDifferentiableError(
            f"{score!r} failed on an input that requires grad ({err}); use the "
            "finite-difference method ('fd') for callables autograd cannot trace"
        ) from err
    if not s.requires_grad:
        raise NotDifferentiableError(
            f"{score!r} does not depend differentiably on x (its output has no autograd graph); "
            "use the finite-difference method ('fd') for non-differentiable callables"
        )
    return x_leaf, s


def vjp(s: torch.Tensor, x_leaf: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """v^T J at every point: sum_i v_i d s_i / d x (a zero tensor where s does not depend on x)."""
    (g,) = torch.autograd.grad(s, x_leaf, grad_outputs=v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x_leaf) if g is None else g


def _jacobian_autograd(score: Score, x: torch.Tensor, t: torch.Tensor) -> JacobianResult:
    x_leaf, s = score_with_graph(score, x, t)
    d = x.shape[-1]
    rows = []
    for i in range(d):
        e = torch.zeros_like(s)
        e[..., i] = 1.0
        rows.append(vjp(s, x_leaf, e))
    value = torch.stack(rows, dim=-2).detach()
    return JacobianResult(value, torch.zeros_like(value), s.detach(), "autograd", 1, d)


def _central_differences(
    score: Score, x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Central-difference Jacobians with steps h and 2h from one batched score call.

    Returns J(h), J(2h) (entry [i, j] = d s_i / d x_j, shape (..., d, d)), the score at x
    and the round-off level of one score evaluation divided by the step width, per entry.
    """
    d = x.shape[-1]
    eps = torch.finfo(score.compute_dtype(x.dtype)).eps
    base = eps ** (1.0 / 3.0) * x.abs().clamp_min(1.0)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    shifted, widths = [x[None]], []
    for m in (1, 2):
        plus = x[..., None, :] + m * base[..., None, :] * eye
        minus = x[..., None, :] - m * base[..., None, :] * eye
        widths.append(torch.diagonal(plus - minus, dim1=-2, dim2=-1))
        shifted += [plus.movedim(-2, 0), minus.movedim(-2, 0)]
    points = torch.cat(shifted, dim=0)
    times = t.expand(points.shape[:-1])
    values = score(points.reshape(-1, d), times.reshape(-1)).reshape(points.shape)
    s0, rest = values[0], values[1:].reshape(2, 2, d, *x.shape)
    j1, j2 = ((rest[k, 0] - rest[k, 1]).movedim(0, -1) / widths[k][..., None, :] for k in (0, 1))
    scale = s0.abs() + (j1.abs() * x.abs()[..., None, :]).sum(-1)
    roundoff = _ROUNDOFF_FACTOR * eps * scale[..., :, None] / widths[0][..., None, :]
    return j1, j2, s0, roundoff


def _jacobian_fd(score: Score, x: torch.Tensor, t: torch.Tensor) -> JacobianResult:
    j1, j2, s0, roundoff = _central_differences(score, x, t)
    error = (j2 - j1).abs() + roundoff
    return JacobianResult(j1, error, s0, "fd", 1 + 4 * x.shape[-1], 0)


def jacobian(score: Any, x: Any, t: Any, method: JacobianMethod = "auto") -> JacobianResult:
    """The Jacobian J_ij = d s_i / d x_j of a score at x (..., d), time t.

    ``method``: "autograd" (d vector-Jacobian products, exact to round-off), "fd" (central
    differences with a Richardson error estimate, 1 + 4d score evaluations per point), or
    "auto" (autograd when the score is differentiable, else fd).
    """
    score = as_score(score)
    x, t = score.prepare(x, t)
    if method == "auto":
        try:
            return _jacobian_autograd(score, x, t)
        except NotDifferentiableError:
            return _jacobian_fd(score, x, t)
    if method == "autograd":
        return _jacobian_autograd(score, x, t)
    if method == "fd":
        return _jacobian_fd(score, x, t)
    raise ValueError(f"jacobian: method must be 'auto', 'autograd' or 'fd'; got {method!r}")


def rademacher(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Independent +-1 entries of ``shape`` (Hutchinson probes), in ``like``'s dtype and device,
    drawn with ``generator`` on that device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def _hutchinson(score: Score, x: torch.Tensor, t: torch.Tensor, n_probes: int, generator) -> DivergenceResult:
    x_leaf, s = score_with_graph(score, x, t)
    probes = rademacher((n_probes, *x.shape), x, generator)
    samples = torch.stack([(vjp(s, x_leaf, v) * v).sum(-1) for v in probes])
    value = samples.mean(0).detach()
    error = (samples.std(0, correction=1) / n_probes**0.5).detach()
    return DivergenceResult(value, error, s.detach(), "hutchinson", 1, n_probes)


def _hutch_plus_plus(score: Score, x: torch.Tensor, t: torch.Tensor, n_probes: int, generator) -> DivergenceResult:
    d = x.shape[-1]
    k = n_probes // 3
    if k < 2:
        raise ValueError(f"hutch++ needs n_probes >= 6 (three blocks of at least 2); got {n_probes}")
    x_leaf, s = score_with_graph(score, x, t)
    sketch = rademacher((k, *x.shape), x, generator)
    range_cols = torch.stack([vjp(s, x_leaf, v) for v in sketch], dim=-1).detach()
    q, _ = torch.linalg.qr(range_cols)
    rank = q.shape[-1]
    low_rank = sum((vjp(s, x_leaf, q[..., j]) * q[..., j]).sum(-1) for j in range(rank))
    n_vjp = k + rank
    if rank >= d:
        value = low_rank.detach()
        return DivergenceResult(value, torch.zeros_like(value), s.detach(), "hutch++", 1, n_vjp)
    probes = rademacher((k, *x.shape), x, generator)
    residual = []
    for v in probes:
        w = v - torch.einsum("...ij,...j->...i", q, torch.einsum("...ij,...i->...j", q, v))
        residual.append((vjp(s, x_leaf, w) * w).sum(-1))
    residual = torch.stack(residual)
    value = (low_rank + residual.mean(0)).detach()
    error = (residual.std(0, correction=1) / k**0.5).detach()
    return DivergenceResult(value, error, s.detach(), "hutch++", 1, n_vjp + k)


def divergence(
    score: Any,
    x: Any,
    t: Any,
    method: DivergenceMethod = "auto",
    n_probes: int = 64,
    generator: torch.Generator | None = None,
) -> DivergenceResult:
    """div s_t(x) = sum_i d s_i / d x_i at x (..., d), with its error (see module docstring).

    ``method="auto"`` picks "exact" for a score with a closed-form divergence, "autograd" for
    a differentiable score in d <= AUTO_EXACT_MAX_DIM, "hutch++" above that, and "fd" for
    a score autograd cannot differentiate. ``n_probes`` (m) and ``generator`` (a seeded
    torch.Generator on x's device, for reproducible probes) serve the stochastic methods.
    """
    score = as_score(score)
    x, t = score.prepare(x, t)
    if method == "auto":
        if isinstance(score, DensityScore):
            return _divergence(score, x, t, "exact", n_probes, generator)
        preferred = "autograd" if x.shape[-1] <= AUTO_EXACT_MAX_DIM else "hutch++"
        try:
            return _divergence(score, x, t, preferred, n_probes, generator)
        except NotDifferentiableError:
            return _divergence(score, x, t, "fd", n_probes, generator)
    return _divergence(score, x, t, method, n_probes, generator)


def _divergence(
    score: Score, x: torch.Tensor, t: torch.Tensor, method: str, n_probes: int, generator
) -> DivergenceResult:
    if method == "exact":
        if not isinstance(score, DensityScore):
            raise ValueError(f"{score!r} has no closed-form divergence (not a DensityScore); choose another method")
        ev = score.evaluate(x, t)
        require_finite(torch.cat([ev.score, ev.divergence[..., None]], -1), x, t, "exact score or divergence")
        return DivergenceResult(ev.divergence, torch.zeros_like(ev.divergence), ev.score, "exact", 1, 0)
    if method in ("autograd", "fd"):
        jac = jacobian(score, x, t, method=method)
        value = torch.diagonal(jac.value, dim1=-2, dim2=-1).sum(-1)
        error = torch.diagonal(jac.error, dim1=-2, dim2=-1).sum(-1)
        return DivergenceResult(value, error, jac.score, method, jac.n_evaluations, jac.n_vjp)
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(
            "divergence: method must be one of 'auto', 'exact', 'autograd', 'hutchinson', "
            f"'hutch++', 'fd'; got {method!r}"
        )
    if int(n_probes) < 2:
        raise ValueError(f"n_probes must be at least 2 for a standard error; got {n_probes}")
    if method == "hutchinson":
        return _hutchinson(score, x, t, int(n_probes), generator)
    return _hutch_plus_plus(score, x, t, int(n_probes), generator)
