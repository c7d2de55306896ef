"""Jacobians and divergences: exact, autograd, Hutchinson, Hutch++ and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorehamiltonian import ExactScore, NotDifferentiableError, as_score, divergence, jacobian

from ..conftest import interior_times, random_mixture


def _opaque(exact: ExactScore):
    """The exact score as a plain callable: no closed-form divergence is visible."""
    return as_score(lambda x, t: exact(x, t), process=exact.process, dim=exact.dim)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_autograd_divergence_is_exact(d, process):
    exact = ExactScore(random_mixture(d), process)
    x = exact.mixture.sample(100, torch.Generator().manual_seed(0))
    for t in interior_times(process)[::2]:
        res = divergence(_opaque(exact), x, float(t), method="autograd")
        assert res.method == "autograd" and res.n_vjp == d
        want = exact.divergence(x, float(t))
        torch.testing.assert_close(res.value, want, rtol=1e-11, atol=1e-11 * float(want.abs().max()))


@pytest.mark.parametrize("d", [1, 2, 5])
def test_finite_differences_lie_within_their_error_estimate(d, process):
    exact = ExactScore(random_mixture(d, seed=2), process)
    x = exact.mixture.sample(300, torch.Generator().manual_seed(1)) * 1.3
    numpy_score = as_score(
        lambda x, t: torch.from_numpy(exact(torch.from_numpy(np.asarray(x)), t).numpy()),
        process=process, dim=d,
    )
    for t in interior_times(process)[::2]:
        res = divergence(numpy_score, x, float(t))  # auto: not differentiable -> fd
        assert res.method == "fd" and res.n_evaluations == 1 + 4 * d
        want = exact.divergence(x, float(t))
        err = (res.value - want).abs()
        assert bool((err <= res.error).all()), f"max error / estimate = {float((err / res.error).max()):.3g}"
        # ... and the estimate is informative, not vacuous: eps^(2/3) ~ 4e-11 relative, within 1e4.
        assert bool((res.error <= 1e-6 * (1 + want.abs())).all())


def test_jacobian_methods_agree_and_are_symmetric_for_a_true_score():
    exact = ExactScore(random_mixture(3, seed=4))
    x = exact.mixture.sample(50, torch.Generator().manual_seed(2))
    auto = jacobian(_opaque(exact), x, 0.2, method="autograd")
    fd = jacobian(_opaque(exact), x, 0.2, method="fd")
    assert bool(((auto.value - fd.value).abs() <= fd.error).all())
    torch.testing.assert_close(auto.value, auto.value.transpose(-1, -2), rtol=1e-12, atol=1e-12)


def _z_scores(estimate, exact_value):
    return ((estimate.value - exact_value) / estimate.error).numpy()


def test_hutchinson_agrees_within_its_standard_error():
    # A statistical test with a fixed seed: with m = 32 Rademacher probes the standardised
    # errors z = (estimate - exact) / stderr follow a Student t with 31 degrees of freedom
    # (sd 1.03, P(|z| <= 2) = 0.946). Over 400 points the sample sd lies in [0.93, 1.13] and the
    # coverage in [0.92, 0.97] with probability > 0.999; a biased estimator or a wrong stderr
    # (off by 20%) falls outside.
    d = 10
    exact = ExactScore(random_mixture(d, seed=6))
    x = exact.mixture.sample(400, torch.Generator().manual_seed(3))
    res = divergence(_opaque(exact), x, 0.1, method="hutchinson", n_probes=32,
                     generator=torch.Generator().manual_seed(11))
    assert res.n_vjp == 32
    z = _z_scores(res, exact.divergence(x, 0.1))
    assert abs(z.mean()) < 4 * 1.03 / np.sqrt(400)
    assert 0.9 < z.std() < 1.16
    assert 0.92 <= np.mean(np.abs(z) <= 2) <= 0.97
    again = divergence(_opaque(exact), x, 0.1, method="hutchinson", n_probes=32,
                       generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(again.value, res.value, rtol=0, atol=0)


def test_hutch_plus_plus_agrees_within_its_standard_error_and_is_exact_at_full_rank():
    d = 24
    exact = ExactScore(random_mixture(d, seed=8))
    x = exact.mixture.sample(400, torch.Generator().manual_seed(4))
    want = exact.divergence(x, 0.1)
    res = divergence(_opaque(exact), x, 0.1, method="hutch++", n_probes=48,
                     generator=torch.Generator().manual_seed(12))
    z = _z_scores(res, want)  # 16 residual probes: Student t with 15 dof, sd 1.07
    assert abs(z.mean()) < 4 * 1.07 / np.sqrt(400)
    assert 0.9 < z.std() < 1.25
    hutch = divergence(_opaque(exact), x, 0.1, method="hutchinson", n_probes=48,
                       generator=torch.Generator().manual_seed(12))
    assert float(res.error.mean()) < float(hutch.error.mean()), "the low-rank part must cut the variance"
    full = divergence(_opaque(exact), x[:20], 0.1, method="hutch++", n_probes=3 * d)
    torch.testing.assert_close(full.value, want[:20], rtol=1e-10, atol=1e-10)
    assert bool((full.error == 0).all())


def test_auto_method_choice():
    exact = ExactScore(random_mixture(2))
    x = torch.randn(5, 2, dtype=torch.float64)
    assert divergence(exact, x, 0.3).method == "exact"
    assert divergence(_opaque(exact), x, 0.3).method == "autograd"
    big = ExactScore(random_mixture(70, k=1))
    assert divergence(_opaque(big), torch.randn(3, 70, dtype=torch.float64), 0.3, n_probes=12).method == "hutch++"


def test_autograd_on_a_non_differentiable_callable_says_what_to_do():
    score = as_score(lambda x, t: torch.from_numpy(-np.asarray(x)), dim=1)
    with pytest.raises(NotDifferentiableError, match="'fd'"):
        divergence(score, torch.ones(3, 1, dtype=torch.float64), 0.5, method="autograd")
    detached = as_score(lambda x, t: -x.detach(), dim=1)
    with pytest.raises(NotDifferentiableError, match="no autograd graph"):
        jacobian(detached, torch.ones(3, 1, dtype=torch.float64), 0.5, method="autograd")


def test_bad_options():
    exact = ExactScore(random_mixture(2))
    x = torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="method"):
        divergence(exact, x, 0.3, method="magic")
    with pytest.raises(ValueError, match="n_probes"):
        divergence(exact, x, 0.3, method="hutchinson", n_probes=1)
    with pytest.raises(ValueError, match="closed-form"):
        divergence(_opaque(exact), x, 0.3, method="exact")
