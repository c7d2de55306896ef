"""The score interface: ExactScore, adapters for epsilon and x0 networks, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorehamiltonian import (
    EDM,
    OU,
    ExactScore,
    InputDtypeError,
    InputShapeError,
    ModelScore,
    NonFiniteScoreError,
    TimeRangeError,
    as_score,
)

from ..conftest import interior_times, random_mixture


def test_exact_score_shapes_and_time_forms(process):
    score = ExactScore(random_mixture(2), process)
    x = torch.randn(6, 2, dtype=torch.float64)
    t = interior_times(process)[1:]
    assert score(x, float(t[2])).shape == (6, 2)
    per_point = score(x, t[:6])
    for i in range(6):
        torch.testing.assert_close(per_point[i], score(x[i : i + 1], float(t[i]))[0], rtol=1e-13, atol=1e-13)
    assert score(x.reshape(2, 3, 2), float(t[2])).shape == (2, 3, 2)


class EpsNet(torch.nn.Module):
    """An epsilon-network built from the exact score: eps(x, t) = -sigma_t s(x, t)."""

    def __init__(self, exact: ExactScore) -> None:
        super().__init__()
        self.exact = exact

    def forward(self, x, t):
        return -self.exact.process.sigma(t)[..., None] * self.exact(x, t)


def test_epsilon_network_round_trips(process):
    exact = ExactScore(random_mixture(3), process)
    score = as_score(EpsNet(exact), kind="eps", process=process, dim=3)
    x = torch.randn(20, 3, dtype=torch.float64)
    t = interior_times(process)[1:]
    for tt in t:
        torch.testing.assert_close(score(x, float(tt)), exact(x, float(tt)), rtol=1e-12, atol=1e-12)


def test_denoiser_round_trips(process):
    exact = ExactScore(random_mixture(2), process)
    p = process

    def denoiser(x, t):  # Tweedie: E[x0 | x_t] = (x + sigma^2 s) / alpha
        return (x + p.sigma(t)[..., None] ** 2 * exact(x, t)) / p.alpha(t)[..., None]

    score = as_score(denoiser, kind="x0", process=p)
    x = torch.randn(20, 2, dtype=torch.float64)
    for tt in interior_times(p)[1:]:
        torch.testing.assert_close(score(x, float(tt)), exact(x, float(tt)), rtol=1e-10, atol=1e-10)


def test_edm_style_denoiser_conditioned_on_sigma_and_log_snr():
    process = EDM(sigma_max=20.0)
    exact = ExactScore(random_mixture(2), process)
    seen = {}

    def denoiser(x, sigma):  # k-diffusion convention D(x, sigma), alpha = 1
        seen["sigma"] = sigma
        return x + sigma[..., None] ** 2 * exact(x, sigma)

    x = torch.randn(8, 2, dtype=torch.float64)
    score = as_score(denoiser, kind="x0", process=process, time_input="sigma")
    torch.testing.assert_close(score(x, 0.7), exact(x, 0.7), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(seen["sigma"], torch.full((8,), 0.7, dtype=torch.float64))

    ou = OU()
    exact_ou = ExactScore(random_mixture(2), ou)
    by_log_snr = as_score(
        lambda x, lam: exact_ou(x, ou.log_snr_to_t(lam)), kind="score", process=ou, time_input="log_snr"
    )
    torch.testing.assert_close(by_log_snr(x, 0.4), exact_ou(x, 0.4), rtol=1e-10, atol=1e-10)


def test_float32_module_gets_float32_inputs_and_returns_float64():
    module_score = ModelScore(ScaledIdentity(), kind="score", dim=2)
    x = torch.randn(4, 2, dtype=torch.float64)
    out = module_score(x, 0.5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, -x.float().double())
    assert module_score.compute_dtype(torch.float64) == torch.float32


class ScaledIdentity(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(-1.0))

    def forward(self, x, t):
        assert x.dtype == torch.float32 and t.dtype == torch.float32
        return self.scale * x


def test_as_score_passes_scores_through():
    exact = ExactScore(random_mixture(1), OU())
    assert as_score(exact) is exact
    with pytest.raises(ValueError):
        as_score(exact, kind="eps")
    with pytest.raises(ValueError, match="kind"):
        as_score(lambda x, t: x, kind="velocity")


# ---- bad input: each raises the named error ------------------------------------------------


def test_nan_score_names_first_x_and_t():
    def broken(x, t):
        out = -x.clone()
        out[(x[..., 0] > 1.0) & (t > 0.2)] = float("nan")
        return out

    score = as_score(broken, dim=1)
    x = torch.tensor([[0.0], [0.5], [1.5], [2.0]], dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.4, 0.5], dtype=torch.float64)
    with pytest.raises(NonFiniteScoreError, match=r"2 of 4 points.*index \(2,\): x = \[1\.5\], t = 0\.4"):
        score(x, t)
    with pytest.raises(NonFiniteScoreError, match="not finite"):
        as_score(lambda x, t: x / 0.0)(torch.ones(3, 2, dtype=torch.float64), 0.5)


def test_wrong_shapes_are_refused():
    exact = ExactScore(random_mixture(2), OU())
    with pytest.raises(InputShapeError, match="last axis"):
        exact(torch.zeros(5, 3, dtype=torch.float64), 0.5)
    with pytest.raises(InputShapeError, match="scalar"):
        exact(torch.tensor(1.0, dtype=torch.float64), 0.5)
    with pytest.raises(InputShapeError, match="does not broadcast"):
        exact(torch.zeros(5, 2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64))
    with pytest.raises(InputShapeError, match="must return a tensor of x's shape"):
        as_score(lambda x, t: x.sum(-1))(torch.zeros(5, 2, dtype=torch.float64), 0.5)
    with pytest.raises(InputShapeError, match="not a tensor"):
        as_score(lambda x, t: np.zeros(3))(torch.zeros(3, 1, dtype=torch.float64), 0.5)


def test_wrong_dtypes_are_refused():
    exact = ExactScore(random_mixture(2), OU())
    with pytest.raises(InputDtypeError, match="torch.int64"):
        exact(torch.zeros(5, 2, dtype=torch.int64), 0.5)
    with pytest.raises(InputDtypeError, match="complex"):
        exact(torch.zeros(5, 2, dtype=torch.complex128), 0.5)
    with pytest.raises(InputDtypeError):
        exact(np.array([["a", "b"]]), 0.5)


def test_times_outside_the_process_range_are_refused(process):
    exact = ExactScore(random_mixture(1), process)
    x = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(TimeRangeError, match="outside the valid time range"):
        exact(x, process.t_max * 1.5)
    with pytest.raises(TimeRangeError):
        exact(x, torch.tensor([0.1 * process.t_max, -1.0, float("nan")], dtype=torch.float64))


def test_epsilon_adapter_refuses_zero_sigma():
    score = as_score(lambda x, t: x, kind="eps", process=OU())
    with pytest.raises(TimeRangeError, match="sigma_t"):
        score(torch.zeros(2, 1, dtype=torch.float64), 0.0)


def _mixture_log_prob(exact: ExactScore):
    """log p_t of a Gaussian mixture written out by hand in torch (full covariances)."""
    mix, proc = exact.mixture, exact.process

    def log_prob(x, t):
        alpha, sigma = proc.alpha(t)[:, None, None], proc.sigma(t)[:, None, None]
        covs = alpha[..., None] ** 2 * mix.covs + sigma[..., None] ** 2 * torch.eye(mix.dim, dtype=x.dtype)
        comps = torch.distributions.MultivariateNormal(alpha * mix.means, covariance_matrix=covs)
        return torch.logsumexp(torch.log(mix.weights) + comps.log_prob(x[:, None, :]), dim=1)

    return log_prob


def test_analytic_score_equals_the_exact_mixture_score(process):
    """as_score(log_prob=...) differentiates the log-density by autograd: its score and its
    divergence (the Hessian's trace) equal the closed forms of ExactScore to round-off, and it
    is a DensityScore whose log_prob is the function given."""
    from scorehamiltonian.score.interface import DensityScore

    exact = ExactScore(random_mixture(2, seed=3), process)
    analytic = as_score(log_prob=_mixture_log_prob(exact), process=process, dim=2, normalised=True)
    assert isinstance(analytic, DensityScore) and isinstance(exact, DensityScore)
    x = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in interior_times(process)[1:4]:
        got, want = analytic.evaluate(x, float(t)), exact.evaluate(x, float(t))
        torch.testing.assert_close(got.log_prob, want.log_prob, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.score, want.score, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got.divergence, want.divergence, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(analytic(x, float(t)), want.score, rtol=1e-10, atol=1e-10)


def test_attached_data_are_noised_to_t_and_checked():
    """as_score(..., data=x0): sample(n, t) returns alpha_t x0 + sigma_t z for rows of the data
    (reproducibly with a generator); the exact score samples its marginal; a score with neither
    raises SamplesRequiredError naming data=; bad data name the problem."""
    from scorehamiltonian import SamplesRequiredError

    process = OU()
    data = torch.tensor([[1.0, -1.0], [3.0, 2.0]], dtype=torch.float64)
    model = as_score(lambda x, t: -x, process=process, dim=2)
    with pytest.raises(SamplesRequiredError, match="data="):
        model.sample(5, 0.1)
    assert not model.can_sample
    attached = as_score(model, data=data)
    assert attached is not model and attached.can_sample and model.data is None
    draws = attached.sample(4000, 0.0, torch.Generator().manual_seed(0))
    assert {tuple(r) for r in draws.tolist()} <= {tuple(r) for r in data.tolist()}
    t = 2.0
    draws = attached.sample(20000, t, torch.Generator().manual_seed(1))
    again = attached.sample(20000, t, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)
    alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
    # mean alpha * mean(x0) and variance alpha^2 var(x0) + sigma^2 per axis, within 5 standard errors
    want_mean = alpha * data.mean(0)
    want_var = alpha**2 * data.var(0, correction=0) + sigma**2
    assert ((draws.mean(0) - want_mean).abs() < 5 * (want_var / draws.shape[0]).sqrt()).all()
    assert ((draws.var(0) / want_var - 1).abs() < 5 * (2 / draws.shape[0]) ** 0.5).all()
    assert ExactScore(random_mixture(2), process).sample(3, 0.5).shape == (3, 2)
    with pytest.raises(InputShapeError, match="NaN or Inf in 1 of 2 rows"):
        as_score(model, data=torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(InputShapeError, match=r"\(N, 2\)"):
        as_score(model, data=torch.zeros(4, 3))


def test_an_analytic_log_density_linear_in_x_has_a_constant_score_and_no_divergence():
    score = as_score(log_prob=lambda x, t: 2.0 * x[:, 0] - x[:, 1], dim=2)
    x = torch.randn(4, 2, dtype=torch.float64)
    ev = score.evaluate(x, 0.2)
    assert torch.equal(ev.divergence, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(ev.score, torch.tensor([[2.0, -1.0]], dtype=torch.float64).expand(4, 2))
    torch.testing.assert_close(score.log_prob(x, 0.2), 2.0 * x[:, 0] - x[:, 1])
