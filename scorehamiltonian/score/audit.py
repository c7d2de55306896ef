"""Audits of a score field: finiteness, scale, conservativeness, consistency in t, error against a reference.

A true score s = grad log p has a symmetric Jacobian (it is a Hessian). A learned field need
not: its antisymmetric part A = (J - J^T) / 2 (the curl) measures how far it is from any
gradient field, and makes the Score Hamiltonian's lambda_0 drift from 0 (THEORY section 2).
The audit figure is the relative curl

    curl_ratio = sqrt( sum_x ||A(x)||_F^2 / sum_x ||J(x)||_F^2 )  in [0, 1],

0 for an exact score (to round-off) and 1/sqrt(2)-ish for a pure rotation. In d = 1 every
field is a gradient and the ratio is 0 by construction.

A family of true scores is also consistent in t (THEORY section 3): p_t obeys the
Fokker-Planck equation, so d/dt log p_t = q_t := -d f - f x . s + (g^2 / 2)(div s + |s|^2) and

    r(x, t) = d/dt s_t(x) - grad_x q_t(x) = 0.

:func:`fokker_planck_residual` measures r for any differentiable score (every derivative by
autograd: d/dt through the score's time input, grad div s as the gradient of the trace of the
Jacobian), at points where data lie and where they do not; unlike the curl it is not empty in
1D, and it needs no truth.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..common.errors import NotDifferentiableError
from .derivatives import JacobianMethod, jacobian
from .interface import as_score

__all__ = ["FokkerPlanckResidual", "ScoreAudit", "ScoreError", "fokker_planck_residual", "score_audit", "score_error"]


@dataclass(frozen=True)
class ScoreAudit:
    """The result of :func:`score_audit`.

    n_points, n_nonfinite : points audited and points where the score is NaN or Inf;
    first_nonfinite : (x, t) of the first such point, or None;
    rms_norm, max_norm : sqrt(mean |s|^2) and max |s| over the finite points (units 1/x);
    curl_ratio : the relative antisymmetric part of the Jacobian (module docstring) and
    curl_ratio_error : its error bound from the Jacobian's error (0 for autograd);
    curl_ratio_max : the largest per-point ratio ||A||_F / ||J||_F;
    jacobian_method : "autograd" or "fd"; warnings : what the audit found wrong, in words.
    """

    n_points: int
    n_nonfinite: int
    first_nonfinite: tuple[list[float], float] | None
    rms_norm: float
    max_norm: float
    curl_ratio: float
    curl_ratio_error: float
    curl_ratio_max: float
    jacobian_method: str
    warnings: list[str] = field(default_factory=list)

    @property
    def finite(self) -> bool:
        """True when the score is finite at every audited point."""
        return self.n_nonfinite == 0


def score_audit(
    score: Any,
    x: Any,
    t: Any,
    jacobian_method: JacobianMethod = "auto",
    curl_tolerance: float = 1e-2,
) -> ScoreAudit:
    """Audit a score at points x (..., d) and time t; never raises on NaN or Inf scores.

    Counts the points where the score is not finite (and names the first), measures the
    score's scale, and computes the relative curl of its Jacobian (autograd, or central
    differences for non-differentiable callables) over the finite points. Emits a
    ``UserWarning`` when the score is not finite somewhere or curl_ratio exceeds
    ``curl_tolerance``; the same messages are in ``result.warnings``.
    """
    score = as_score(score)
    x, t = score.prepare(x, t)
    s = score.raw(x, t).detach()
    finite = torch.isfinite(s).all(-1)
    n_bad = int((~finite).sum())
    notes, first = [], None
    if n_bad:
        index = tuple(int(i) for i in torch.nonzero(~finite)[0])
        first = (x[index].tolist(), float(t[index]))
        notes.append(f"score is NaN or Inf at {n_bad} of {finite.numel()} points; first at x = {first[0]}, t = {first[1]}")
    xf, tf, sf = x[finite], t[finite], s[finite]
    norms = sf.norm(dim=-1)
    curl, curl_err, curl_max, method = float("nan"), float("nan"), float("nan"), str(jacobian_method)
    if xf.shape[0]:
        jac = jacobian(score, xf, tf, method=jacobian_method)
        method = jac.method
        anti = 0.5 * (jac.value - jac.value.transpose(-1, -2))
        anti_sq, full_sq = (anti**2).sum((-2, -1)), (jac.value**2).sum((-2, -1))
        curl = float(anti_sq.sum().sqrt() / full_sq.sum().sqrt().clamp_min(torch.finfo(x.dtype).tiny))
        curl_err = float(jac.error.norm() / full_sq.sum().sqrt().clamp_min(torch.finfo(x.dtype).tiny))
        curl_max = float((anti_sq / full_sq.clamp_min(torch.finfo(x.dtype).tiny)).sqrt().max())
        if curl - curl_err > curl_tolerance:
            notes.append(
                f"the score's Jacobian has a relative antisymmetric part of {curl:.3g} "
                f"(> {curl_tolerance:g}): the field is not the gradient of a log-density"
            )
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return ScoreAudit(
        n_points=int(finite.numel()),
        n_nonfinite=n_bad,
        first_nonfinite=first,
        rms_norm=float((norms**2).mean().sqrt()) if norms.numel() else float("nan"),
        max_norm=float(norms.max()) if norms.numel() else float("nan"),
        curl_ratio=curl,
        curl_ratio_error=curl_err,
        curl_ratio_max=curl_max,
        jacobian_method=method,
        warnings=notes,
    )


@dataclass(frozen=True)
class ScoreError:
    """Monte Carlo score error against a reference at samples of p_t.

    mse, mse_stderr : eps^2 = E_{p_t} |s - s_ref|^2 and its standard error (units 1/x^2);
    relative, relative_stderr : sqrt(eps^2 / E |s_ref|^2) and its delta-method standard
    error; n_samples : the number of samples.
    """

    mse: float
    mse_stderr: float
    relative: float
    relative_stderr: float
    n_samples: int


def score_error(score: Any, reference: Any, x: Any, t: Any) -> ScoreError:
    """The error of ``score`` against ``reference`` at samples x (n, d) of p_t.

    mse = mean_n |s(x_n) - s_ref(x_n)|^2 estimates eps^2 = E_{p_t} |s - s_ref|^2, the
    quantity in the score-error limit eps^2 / lambda_1 (THEORY section 4); the relative
    error is sqrt(mse / mean_n |s_ref|^2). Standard errors assume independent samples.
    """
    score, reference = as_score(score), as_score(reference)
    x, t = score.prepare(x, t)
    with torch.no_grad():
        err2 = ((score(x, t) - reference(x, t)) ** 2).sum(-1).flatten()
        ref2 = (reference(x, t) ** 2).sum(-1).flatten()
    n = err2.numel()
    if n < 2:
        raise ValueError(f"score_error needs at least 2 samples; got {n}")
    mse, ref = float(err2.mean()), float(ref2.mean())
    cov = torch.cov(torch.stack([err2, ref2])) / n
    rel = (mse / ref) ** 0.5
    grad = torch.tensor([0.5 / (rel * ref), -0.5 * rel / ref], dtype=cov.dtype) if rel > 0 else torch.zeros(2, dtype=cov.dtype)
    rel_var = float(grad @ cov @ grad)
    return ScoreError(mse, float(cov[0, 0].sqrt()), rel, max(rel_var, 0.0) ** 0.5, n)


@dataclass(frozen=True)
class FokkerPlanckResidual:
    """The Fokker-Planck residual r = d/dt s_t - grad q_t of a score family (module docstring).

    residual : (n, d) r at each point (units 1 / (x t)); relative : (n,) the per-point ratio
    |r| / (|d/dt s_t| + |grad q_t|), in [0, 1] and 0 for a true score (to round-off);
    mean_relative, mean_relative_stderr : its mean over the points and standard error.
    """

    residual: torch.Tensor
    relative: torch.Tensor
    mean_relative: float
    mean_relative_stderr: float


def fokker_planck_residual(score: Any, x: Any, t: float) -> FokkerPlanckResidual:
    """r(x, t) = d/dt s_t(x) - grad_x q_t(x) at points x (n, d), q_t the Fokker-Planck rate
    d/dt log p_t = -d f - f x . s + (g^2 / 2)(div s + |s|^2) (module docstring).

    Every derivative is taken by autograd: d/dt s_t through the score's own time input (d
    backward passes), div s as the trace of the Jacobian with its graph kept (d more) and its
    gradient, so the score must be twice differentiable in x and once in t
    (:class:`NotDifferentiableError` otherwise). Cost: about 3 d backward passes per point.
    """
    score = as_score(score)
    x, times = score.prepare(x, t)
    if x.ndim != 2:
        raise ValueError(f"fokker_planck_residual needs points of shape (n, d); got {tuple(x.shape)}")
    process, d = score.process, x.shape[-1]
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        tt = times.detach().clone().requires_grad_(True)
        s = score(leaf, tt)
        if not s.requires_grad:
            raise NotDifferentiableError(f"{score!r} has no autograd graph: the Fokker-Planck residual needs autograd")
        try:
            ds_dt = torch.stack([torch.autograd.grad(s[:, i].sum(), tt, retain_graph=True)[0] for i in range(d)], -1)
            div = sum(torch.autograd.grad(s[:, i].sum(), leaf, create_graph=True)[0][:, i] for i in range(d))
            f, half_g2 = process.f(times), 0.5 * process.g2(times)
            rate = -d * f - f * (leaf * s).sum(-1) + half_g2 * (div + (s**2).sum(-1))
            (grad_rate,) = torch.autograd.grad(rate.sum(), leaf)
        except RuntimeError as err:  # e.g. an attention kernel with no double backward on this device
            raise NotDifferentiableError(f"{score!r}: autograd cannot take the second derivatives the "
                                         f"Fokker-Planck residual needs ({err})") from err
    residual = (ds_dt - grad_rate).detach()
    scale = ds_dt.detach().norm(dim=-1) + grad_rate.detach().norm(dim=-1)
    relative = residual.norm(dim=-1) / scale.clamp_min(torch.finfo(x.dtype).tiny)
    n = relative.numel()
    stderr = float(relative.std(correction=1)) / n**0.5 if n > 1 else float("nan")
    return FokkerPlanckResidual(residual, relative, float(relative.mean()), stderr)
