"""The quantum potential against the Gaussian closed form (THEORY section 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorehamiltonian import ExactScore, GaussianMixture, as_score, quantum_potential

from ..conftest import interior_times, random_mixture


def gaussian_coefficients(mean, cov, alpha, sigma):
    """For p_t = N(m, C), C = alpha^2 S + sigma^2 I: V = (x-m)^T Q (x-m) + c0 with
    Q = C^{-2} / 4 and c0 = -tr(C^{-1}) / 2 (independent numpy reference)."""
    c = alpha**2 * cov + sigma**2 * np.eye(len(mean))
    c_inv = np.linalg.inv(c)
    return alpha * mean, c_inv @ c_inv / 4, -np.trace(c_inv) / 2


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("method", ["exact", "autograd"])
def test_gaussian_potential_is_the_quadratic_of_theory(d, method, process):
    base = random_mixture(d, k=1, seed=d)
    mean, cov = base.means[0].numpy(), base.covs[0].numpy()
    score = ExactScore(base, process)
    if method == "autograd":
        score = as_score(lambda x, t, s=score: s(x, t), process=process, dim=d)
    x = torch.randn(40, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    for t in interior_times(process)[1:]:
        m, q, c0 = gaussian_coefficients(mean, cov, float(process.alpha(t)), float(process.sigma(t)))
        res = quantum_potential(score, x, float(t), divergence_method=method)
        diff = x.numpy() - m
        want = np.einsum("ni,ij,nj->n", diff, q, diff) + c0
        np.testing.assert_allclose(res.value.numpy(), want, rtol=1e-10, atol=1e-10 * abs(c0))
        # The coefficients themselves: V(m) = c0 and, V being exactly quadratic, its second
        # differences with any step are 2 Q (round-off only).
        v = lambda y, t=float(t): quantum_potential(score, y, t, divergence_method=method).value.numpy()
        center = torch.as_tensor(m)[None]
        np.testing.assert_allclose(v(center)[0], c0, rtol=1e-11)
        h = 0.5 * np.sqrt(np.diag(cov).min() + 1e-2)
        hess = np.empty((d, d))
        for i in range(d):
            for j in range(d):
                ei, ej = np.eye(d)[i] * h, np.eye(d)[j] * h
                pts = torch.as_tensor(np.stack([m + ei + ej, m + ei - ej, m - ei + ej, m - ei - ej]))
                vv = v(pts)
                hess[i, j] = (vv[0] - vv[1] - vv[2] + vv[3]) / (4 * h * h)
        np.testing.assert_allclose(hess, 2 * q, rtol=1e-7, atol=1e-7 * np.abs(q).max())


def test_one_dimensional_harmonic_oscillator():
    # THEORY: p = N(0, v) in 1D gives V = x^2 / (4 v^2) - 1 / (2 v).
    v = 0.7
    score = ExactScore(GaussianMixture([1.0], [0.0], [v]))
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    res = quantum_potential(score, x, 0.0)
    torch.testing.assert_close(res.value, x[:, 0] ** 2 / (4 * v**2) - 1 / (2 * v), rtol=1e-13, atol=1e-13)
    assert bool((res.error == 0).all())


def test_mixture_potential_methods_agree_within_their_errors():
    exact = ExactScore(random_mixture(3, seed=9))
    x = exact.mixture.sample(200, torch.Generator().manual_seed(5))
    opaque = as_score(lambda x, t: exact(x, t), dim=3)
    want = quantum_potential(exact, x, 0.05).value
    for method in ("autograd", "fd"):
        res = quantum_potential(opaque, x, 0.05, divergence_method=method)
        assert bool(((res.value - want).abs() <= res.error + 1e-10 * want.abs()).all()), method
    stochastic = quantum_potential(opaque, x, 0.05, divergence_method="hutchinson", n_probes=64,
                                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(stochastic.error, 0.5 * stochastic.divergence.error)
    z = ((stochastic.value - want) / stochastic.error).numpy()
    assert abs(z.mean()) < 0.35 and 0.8 < z.std() < 1.25
