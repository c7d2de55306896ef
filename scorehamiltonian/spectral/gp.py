"""The Gaussian-process fit that chooses the next time of an adaptive gap profile.

:func:`fit_gp` fits a constant-mean Gaussian process (scaled Matern-5/2 or RBF kernel, gpytorch)
with fixed, per-point observation noise to a profile's log values over scaled log t, by a
fixed Adam run from a fixed start (a deterministic function of the data), and returns its
posterior mean and standard deviation; :func:`~.profiles.gap_profile` places its next time
where that standard deviation is largest. gpytorch is imported with this module, which
:mod:`.profiles` loads on the first adaptive sweep.
"""


from __future__ import annotations

import contextlib
from collections.abc import Iterator

import gpytorch
import numpy as np
import torch

__all__ = ["fit_gp"]

#: Adam iterations and learning rate of a GP hyperparameter fit.
_GP_ITERATIONS = 60
_GP_LEARNING_RATE = 0.15
#: Floor of the GP observation noise (variance, in units of the standardised targets).
_GP_NOISE_FLOOR = 1e-8


class _ExactGP(gpytorch.models.ExactGP):
    """Constant mean, scaled Matern-5/2 or RBF kernel, on a scalar input."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, likelihood: gpytorch.likelihoods.Likelihood,
                 kernel: str) -> None:
        super().__init__(x, y, likelihood)
        lengthscale = gpytorch.constraints.Interval(0.02, 5.0)
        base = (gpytorch.kernels.MaternKernel(nu=2.5, lengthscale_constraint=lengthscale) if kernel == "matern52"
                else gpytorch.kernels.RBFKernel(lengthscale_constraint=lengthscale))
        base.lengthscale = 0.3
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(base)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (restoring the caller's setting after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit_gp(u: np.ndarray, y: np.ndarray, noise: np.ndarray, u_new: np.ndarray,
            kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation of the latent function at u_new.

    u : inputs in [0, 1]; y : targets; noise : their observation-noise variances (same units
    as y). Targets are standardised, hyperparameters (constant mean, output scale,
    lengthscale) maximise the exact marginal likelihood with a fixed Adam run from a fixed
    start, so the fit is a deterministic function of the data. NaN with fewer than 2 points.
    The matrices are tiny: the fit runs on one thread (many times faster on a busy machine).
    """
    if u.size < 2:
        return np.full(u_new.shape, np.nan), np.full(u_new.shape, np.nan)
    order = np.argsort(u, kind="stable")
    u, y, noise = u[order], y[order], noise[order]
    centre, scale = float(y.mean()), float(y.std())
    scale = scale if scale > 1e-12 else 1.0
    x_train = torch.as_tensor(u, dtype=torch.float64)
    y_train = torch.as_tensor((y - centre) / scale, dtype=torch.float64)
    noise_var = torch.as_tensor(np.maximum(noise / scale**2, _GP_NOISE_FLOOR), dtype=torch.float64)
    with _one_thread(), gpytorch.settings.min_fixed_noise(double_value=_GP_NOISE_FLOOR):
        likelihood = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(noise=noise_var, learn_additional_noise=False)
        model = _ExactGP(x_train, y_train, likelihood, kernel).double()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        optimizer = torch.optim.Adam(model.parameters(), lr=_GP_LEARNING_RATE)
        model.train()
        likelihood.train()
        for _ in range(_GP_ITERATIONS):
            optimizer.zero_grad()
            loss = -mll(model(x_train), y_train)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
            posterior = model(torch.as_tensor(u_new, dtype=torch.float64))
            mean, std = posterior.mean.numpy(), posterior.variance.clamp_min(0).sqrt().numpy()
    return centre + scale * mean, scale * std
