"""Test-only models for tests/score/test_adapters.py, imported by ``load_module`` through the
factory strings ``"tests.score.adapter_models:NAME"`` (not collected: no ``test_`` prefix).

:class:`GaussianNet` predicts, for data N(m, v I) noised by a forward process, the exact
score, epsilon, x0 or v at (x, c), with c the time, sigma_t or log-SNR: its adapted score must
equal the :class:`ExactScore` of the same Gaussian to round-off.
"""

from __future__ import annotations

from typing import Any

import torch

from scorehamiltonian.score.processes import ForwardProcess, process_from_config


class GaussianNet(torch.nn.Module):
    """Exact predictions for N(mean, exp(log_var) I): s = -(x - alpha m) / (alpha^2 v + sigma^2),
    eps = -sigma s, x0 = (x + sigma^2 s) / alpha, v = alpha eps - sigma x0."""

    def __init__(self, dim: int, kind: str, time_input: str, process: dict[str, Any]) -> None:
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.log_var = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.kind, self.time_input = kind, time_input
        self.process: ForwardProcess = process_from_config(process)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        p = self.process
        t = {"t": lambda: c, "sigma": lambda: p.sigma_to_t(c), "log_snr": lambda: p.log_snr_to_t(c)}[self.time_input]()
        alpha, sigma = p.alpha(t)[:, None], p.sigma(t)[:, None]
        score = -(x - alpha * self.mean) / (alpha**2 * self.log_var.exp() + sigma**2)
        eps, x0 = -sigma * score, (x + sigma**2 * score) / alpha
        return {"score": score, "eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[self.kind]


class OUEpsNet(torch.nn.Module):
    """TorchScript-able exact epsilon of N(mean, I) under OU (alpha = e^-t, sigma^2 = 1 - e^-2t):
    eps = sigma (x - alpha m), the data variance being 1. Takes x of shape (n, 2, 3) and t (n,)."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = torch.nn.Parameter(torch.arange(6, dtype=torch.float64).reshape(2, 3) / 6)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 3 and x.shape[1] == 2 and x.shape[2] == 3 and t.dim() == 1
        alpha = torch.exp(-t)[:, None, None]
        sigma = torch.sqrt(-torch.expm1(-2.0 * t))[:, None, None]
        return sigma * (x - alpha * self.mean)


class WrongShapeNet(torch.nn.Module):
    """Returns one value per point instead of the point's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scale * x.sum(-1)


def broken_factory() -> torch.nn.Module:
    raise RuntimeError("this factory always fails")


def not_a_module() -> object:
    return object()


NOT_CALLABLE = 3
