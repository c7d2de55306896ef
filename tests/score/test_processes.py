"""Forward processes: closed forms against autograd, identities, conversions, range checks."""

from __future__ import annotations

import pytest
import torch

from scorehamiltonian import EDM, OU, VE, TimeRangeError, VPLinear, process_from_config

from ..conftest import PROCESSES


def _times(process) -> torch.Tensor:
    # Open interval: d sigma / dt is infinite at t = 0 for the variance-preserving processes.
    return process.t_min + torch.linspace(1e-3, 1.0, 41, dtype=torch.float64) * (process.t_max - process.t_min)


def _derivative(fn, t: torch.Tensor) -> torch.Tensor:
    t = t.clone().requires_grad_(True)
    out = fn(t)
    if not out.requires_grad:  # a constant: full_like carries no graph
        return torch.zeros_like(t)
    (grad,) = torch.autograd.grad(out.sum(), t)
    return grad


def _close(a, b, rtol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


def test_identities_hold_across_the_range(process):
    t = _times(process)
    alpha, sigma, f, g2 = process.alpha(t), process.sigma(t), process.f(t), process.g2(t)
    # f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2, by autograd of the closed forms.
    _close(f, _derivative(lambda s: torch.log(process.alpha(s)), t))
    _close(g2, _derivative(lambda s: process.sigma(s) ** 2, t) - 2 * f * sigma**2)
    _close(process.dalpha(t), _derivative(process.alpha, t))
    _close(process.dsigma(t), _derivative(process.sigma, t))
    _close(process.df(t), _derivative(process.f, t))
    _close(process.dg2(t), _derivative(process.g2, t))
    assert alpha.dtype == torch.float64 and bool((g2 > 0).all())


@pytest.mark.parametrize(
    "process, alpha, sigma, f, g2",
    [
        (OU(), lambda t: torch.exp(-t), lambda t: torch.sqrt(1 - torch.exp(-2 * t)), lambda t: -1.0, lambda t: 2.0),
        (EDM(), lambda t: 1.0, lambda t: t, lambda t: 0.0, lambda t: 2 * t),
        (VE(0.02, 30.0), lambda t: 1.0, lambda t: 0.02 * 1500.0**t, lambda t: 0.0,
         lambda t: 2 * (0.02 * 1500.0**t) ** 2 * torch.log(torch.tensor(1500.0, dtype=torch.float64))),
        (VPLinear(0.1, 20.0), lambda t: torch.exp(-0.5 * (0.1 * t + 9.95 * t**2)),
         lambda t: torch.sqrt(1 - torch.exp(-(0.1 * t + 9.95 * t**2))), lambda t: -0.5 * (0.1 + 19.9 * t),
         lambda t: 0.1 + 19.9 * t),
    ],
    ids=["OU", "EDM", "VE", "VPLinear"],
)
def test_table_of_theory_section_1(process, alpha, sigma, f, g2):
    t = _times(process)
    for got, want in [(process.alpha(t), alpha(t)), (process.sigma(t), sigma(t)), (process.f(t), f(t)), (process.g2(t), g2(t))]:
        _close(got, torch.broadcast_to(torch.as_tensor(want, dtype=torch.float64), t.shape), rtol=1e-10)


def test_conversions_round_trip(process):
    t = _times(process)[:-3]  # sigma_t saturates at 1 for large t in VP processes
    _close(process.log_snr_to_t(process.log_snr(t)), t, rtol=1e-10)
    _close(process.sigma_to_t(process.sigma(t)), t, rtol=1e-7)
    lam = process.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease with t"
    _close(lam, torch.log(process.alpha(t) ** 2 / process.sigma(t) ** 2), rtol=1e-10)


def test_vectorised_any_shape_and_float32(process):
    t = _times(process)[:6].reshape(2, 3)
    assert process.sigma(t).shape == (2, 3)
    s32 = process.sigma(t.float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), process.sigma(t), rtol=1e-5, atol=1e-6)
    assert process.alpha(float(t[0, 1])).dtype == torch.float64


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: type(p).__name__)
def test_times_outside_the_range_are_refused(process):
    for bad in (process.t_min - 1e-3, process.t_max * 1.001, float("nan")):
        with pytest.raises(TimeRangeError, match="outside the valid time range"):
            process.sigma(torch.tensor([0.5 * process.t_max, bad], dtype=torch.float64))
    with pytest.raises(TimeRangeError):
        process.sigma_to_t(10 * float(process.sigma(process.t_max)))


def test_config_round_trip(process):
    assert process_from_config(process.config()) == process
    with pytest.raises(ValueError, match="unknown process"):
        process_from_config({"name": "Brownian"})


def test_invalid_parameters():
    with pytest.raises(ValueError):
        VE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError):
        OU(T=-1.0)
