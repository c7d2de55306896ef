"""Built-in example targets: Gaussian mixtures with exactly known scores and spectra.

Covariances are given as variances (std^2). The names are those the CLI accepts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .mixture import GaussianMixture

__all__ = ["EXAMPLES", "example", "four_mode_benchmark"]


def bimodal() -> GaussianMixture:
    """1D balanced two-mode mixture: weights 1/2, 1/2; means -2, 2; std 0.5."""
    return GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.25, 0.25])


def asymmetric() -> GaussianMixture:
    """1D unbalanced two-mode mixture: weights 0.2, 0.8; means -2.5, 2; std 0.3, 0.6."""
    return GaussianMixture([0.2, 0.8], [-2.5, 2.0], [0.09, 0.36])


def trimodal() -> GaussianMixture:
    """1D unbalanced three-mode mixture: weights 0.2, 0.5, 0.3; means -3, 0, 2.5; std 0.4, 0.6, 0.3."""
    return GaussianMixture([0.2, 0.5, 0.3], [-3.0, 0.0, 2.5], [0.16, 0.36, 0.09])


def four_mode_2d() -> GaussianMixture:
    """2D four-mode mixture: equal weights at (+-1.5, +-1.5), isotropic std 0.3 and 0.6 alternating."""
    means = torch.tensor([[-1.5, -1.5], [1.5, -1.5], [1.5, 1.5], [-1.5, 1.5]], dtype=torch.float64)
    return GaussianMixture(torch.full((4,), 0.25, dtype=torch.float64), means, [0.09, 0.36, 0.09, 0.36])


def four_mode_benchmark(dim: int = 2) -> GaussianMixture:
    """The eigen-solver benchmark's mixture (analysis/bench_gap.py): equal weights at
    (+-1.5, +-1.5) with covariance diag(0.3^2, 0.6^2); in 3D at (+-1.5, +-1.5, 0) with
    diag(0.3^2, 0.6^2, 0.45^2). Not a CLI example (d = 3 is beyond the report's grids)."""
    if dim not in (2, 3):
        raise ValueError(f"the benchmark mixture is 2- or 3-dimensional; got dim={dim}")
    corners = [[sx * 1.5, sy * 1.5] + [0.0] * (dim - 2) for sx in (1, -1) for sy in (1, -1)]
    variances = [0.3**2, 0.6**2, 0.45**2][:dim]
    return GaussianMixture(torch.full((4,), 0.25, dtype=torch.float64), torch.tensor(corners, dtype=torch.float64),
                           torch.tensor([variances] * 4, dtype=torch.float64))


EXAMPLES: dict[str, Callable[[], GaussianMixture]] = {
    "bimodal": bimodal,
    "asymmetric": asymmetric,
    "trimodal": trimodal,
    "four_mode_2d": four_mode_2d,
}


def example(name: str) -> GaussianMixture:
    """The built-in mixture called ``name`` (one of :data:`EXAMPLES`)."""
    try:
        return EXAMPLES[name]()
    except KeyError:
        raise ValueError(f"unknown example {name!r}; choose one of {sorted(EXAMPLES)}") from None
