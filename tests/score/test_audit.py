"""Score audit: curl of the Jacobian, finiteness, scale, and score error."""

from __future__ import annotations

import math

import pytest
import torch

from scorehamiltonian import ExactScore, as_score, score_audit, score_error

from ..conftest import interior_times, random_mixture


def test_exact_score_is_conservative():
    exact = ExactScore(random_mixture(3, seed=1))
    x = exact.mixture.sample(300, torch.Generator().manual_seed(0))
    report = score_audit(exact, x, 0.2)
    assert report.finite and report.n_points == 300
    assert report.curl_ratio < 1e-13 and report.jacobian_method == "autograd"
    s = exact(x, 0.2)
    assert report.rms_norm == pytest.approx(float(s.norm(dim=-1).pow(2).mean().sqrt()), rel=1e-12)
    assert report.max_norm == pytest.approx(float(s.norm(dim=-1).max()), rel=1e-12)
    assert report.warnings == []


@pytest.mark.parametrize("jacobian_method", ["autograd", "fd"])
def test_rotational_field_has_the_exact_curl_ratio(jacobian_method):
    # s = -x + c R x with R = [[0, -1], [1, 0]]: J = -I + c R, its antisymmetric part c R, so
    # ||A||_F / ||J||_F = c sqrt(2) / sqrt(2 + 2 c^2) = c / sqrt(1 + c^2) at every point.
    c = 0.3
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    field = as_score(lambda x, t: -x + c * x @ rot.T, dim=2)
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="not the gradient"):
        report = score_audit(field, x, 0.5, jacobian_method=jacobian_method)
    want = c / math.sqrt(1 + c**2)
    assert abs(report.curl_ratio - want) <= report.curl_ratio_error + 1e-14
    assert report.curl_ratio_max == pytest.approx(want, rel=1e-6)
    assert report.jacobian_method == jacobian_method


def test_non_finite_scores_are_counted_and_named_not_raised():
    exact = ExactScore(random_mixture(2, seed=2))

    def broken(x, t):
        out = exact(x, t)
        return torch.where(x[..., :1] > 1.0, torch.full_like(out, float("inf")), out)

    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.5, 1.0], [3.0, 3.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="NaN or Inf at 2 of 4 points"):
        report = score_audit(as_score(broken, dim=2), x, 0.3)
    assert not report.finite and report.n_nonfinite == 2
    assert report.first_nonfinite == ([2.0, 0.0], 0.3)
    assert report.curl_ratio < 1e-12  # audited on the finite points


def test_score_error_of_a_scaled_score_is_the_scale():
    exact = ExactScore(random_mixture(2, seed=3))
    x = exact.marginal(0.4).sample(500, torch.Generator().manual_seed(2))
    scaled = as_score(lambda x, t: 1.05 * exact(x, t), dim=2)
    err = score_error(scaled, exact, x, 0.4)
    assert err.relative == pytest.approx(0.05, rel=1e-12)
    assert err.relative_stderr < 1e-12
    assert err.mse == pytest.approx(0.05**2 * float(exact(x, 0.4).pow(2).sum(-1).mean()), rel=1e-12)
    assert score_error(exact, exact, x, 0.4).mse == 0.0


def test_score_error_stderr_covers_the_population_value():
    # Model = exact + constant offset b: eps^2 = |b|^2 exactly, and relative^2 = |b|^2 / E|s|^2;
    # E|s|^2 = -E[div s] (integration by parts) gives the population value independently.
    exact = ExactScore(random_mixture(2, seed=4))
    b = torch.tensor([0.3, -0.1], dtype=torch.float64)
    model = as_score(lambda x, t: exact(x, t) + b, dim=2)
    gen = torch.Generator().manual_seed(5)
    x = exact.marginal(0.2).sample(4000, gen)
    err = score_error(model, exact, x, 0.2)
    big = exact.marginal(0.2).sample(400_000, gen)
    fisher = float(-exact.divergence(big, 0.2).mean())
    want = math.sqrt(float(b @ b) / fisher)
    assert abs(err.relative - want) < 4 * err.relative_stderr + 4e-3 * want


def test_fokker_planck_residual_vanishes_for_true_scores_and_sees_an_inconsistent_family(process):
    """An exact mixture score satisfies d/dt s = grad q_t to round-off under every process; adding
    eps grad phi(x) (phi = sin x_1, the same at every t) breaks it with a residual that is a
    quadratic in eps with no constant term (q_t is quadratic in s): r(2e) - 2 r(e) = 4 (r(e) - 2 r(e/2))."""
    from scorehamiltonian.score.audit import fokker_planck_residual

    exact = ExactScore(random_mixture(2, seed=4), process)
    x = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = float(interior_times(process)[3])
    assert fokker_planck_residual(exact, x, t).relative.max() < 1e-11

    def perturbed(eps):
        def field(y, s):
            bump = torch.stack([torch.cos(y[..., 0]), torch.zeros_like(y[..., 1])], -1)
            return exact(y, s) + eps * bump
        return as_score(field, process=process, dim=2)

    assert fokker_planck_residual(perturbed(0.1), x, t).mean_relative > 1e-4
    big, small, smaller = (fokker_planck_residual(perturbed(e), x, t).residual for e in (0.2, 0.1, 0.05))
    torch.testing.assert_close(big - 2 * small, 4 * (small - 2 * smaller), rtol=1e-8, atol=1e-11)


class _Slope(torch.autograd.Function):
    """x -> -x^2 whose own derivative is missing (as a CPU flash-attention kernel's backward is)."""

    @staticmethod
    def forward(ctx, x):
        return -(x**2)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("derivative for slope_backward is not implemented")


class _Cubic(torch.autograd.Function):
    """x -> -x^3 / 3: differentiable once (its backward is _Slope), not twice."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return -(x**3) / 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _Slope.apply(x) * grad


def test_fokker_planck_residual_names_a_score_autograd_cannot_differentiate_twice():
    """A diffusers UNet's attention on the CPU has no double backward: the residual raises
    NotDifferentiableError naming why (a RuntimeError before, which ended a 33-minute report)."""
    from scorehamiltonian.common.errors import NotDifferentiableError
    from scorehamiltonian.score.audit import fokker_planck_residual

    score = as_score(lambda x, t: _Cubic.apply(x) * (1 + 0 * t[:, None]), dim=2)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NotDifferentiableError, match="cannot take the second derivatives.*slope_backward is not implemented"):
        fokker_planck_residual(score, x, 0.5)
