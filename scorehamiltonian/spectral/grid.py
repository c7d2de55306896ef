"""Regular grids on boxes in 1, 2 and 3 dimensions, and choosing a box that holds the mass.

A :class:`Grid` has n_a interior nodes per axis a on [lo_a, hi_a]; the Dirichlet boundary
sits on the box faces, so the nodes are x_i = lo + (i + 1) h with h = (hi - lo) / (n + 1),
i = 0 .. n - 1. Grid functions are stored flat in C order (the last axis fastest).
Refining keeps the boundary and halves h: n -> 2 (n + 1) - 1, so every coarse node is a
fine node (what Richardson extrapolation across grids needs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from scipy.special import ndtri

from ..common.errors import InputShapeError
from ..score.mixture import GaussianMixture

__all__ = [
    "Grid",
    "box_from_mixture",
    "box_from_samples",
    "box_from_score",
    "box_over_times",
    "mixture_mass_outside",
]


def _per_axis(value: Any, dim: int, name: str, cast=float) -> tuple:
    values = [value] * dim if not isinstance(value, Sequence) else list(value)
    if len(values) != dim:
        raise InputShapeError(f"{name} has {len(values)} entries; the grid has {dim} axes")
    return tuple(cast(v) for v in values)


@dataclass(frozen=True, init=False)
class Grid:
    """A box [lo, hi] in d = 1, 2 or 3 dimensions with n interior nodes per axis.

    ``Grid(lo, hi, n)``: lo and hi are floats (1D) or sequences of length d; n an int
    (the same on every axis) or a sequence of ints. Units are those of x.
    """

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    n: tuple[int, ...]

    def __init__(self, lo: float | Sequence[float], hi: float | Sequence[float], n: int | Sequence[int]) -> None:
        dim = len(lo) if isinstance(lo, Sequence) else (len(hi) if isinstance(hi, Sequence) else 1)
        if dim not in (1, 2, 3):
            raise InputShapeError(f"grids exist in 1, 2 or 3 dimensions; got d = {dim}")
        lo_t, hi_t = _per_axis(lo, dim, "lo"), _per_axis(hi, dim, "hi")
        n_t = _per_axis(n, dim, "n", cast=int)
        for a in range(dim):
            if not (math.isfinite(lo_t[a]) and math.isfinite(hi_t[a]) and lo_t[a] < hi_t[a]):
                raise ValueError(f"axis {a}: need finite lo < hi; got [{lo_t[a]}, {hi_t[a]}]")
            if n_t[a] < 3:
                raise ValueError(f"axis {a}: need at least 3 interior nodes; got n = {n_t[a]}")
        object.__setattr__(self, "lo", lo_t)
        object.__setattr__(self, "hi", hi_t)
        object.__setattr__(self, "n", n_t)

    @property
    def dim(self) -> int:
        """Number of axes d."""
        return len(self.n)

    @property
    def h(self) -> tuple[float, ...]:
        """Spacing per axis, (hi - lo) / (n + 1)."""
        return tuple((b - a) / (m + 1) for a, b, m in zip(self.lo, self.hi, self.n))

    @property
    def size(self) -> int:
        """Number of unknowns N = prod n."""
        return math.prod(self.n)

    @property
    def cell_volume(self) -> float:
        """prod h: the quadrature weight of one node."""
        return math.prod(self.h)

    def axes(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> list[torch.Tensor]:
        """The interior node coordinates of each axis, lo + (i + 1) h."""
        return [
            lo + h * torch.arange(1, m + 1, dtype=dtype, device=device)
            for lo, h, m in zip(self.lo, self.h, self.n)
        ]

    def points(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
        """All nodes, shape (N, d), in C order."""
        mesh = torch.meshgrid(*self.axes(dtype, device), indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=-1)

    def refine(self) -> Grid:
        """The grid with half the spacing on the same box (n -> 2 n + 1)."""
        return Grid(self.lo, self.hi, [2 * m + 1 for m in self.n])

    def with_spacing(self, h: float) -> Grid:
        """The grid on the same box whose spacing is at most h on every axis."""
        return Grid(self.lo, self.hi, [max(3, math.ceil((b - a) / h) - 1) for a, b in zip(self.lo, self.hi)])

    def boundary_shell(self, width: int = 1) -> torch.Tensor:
        """Boolean mask (N,) of the nodes within ``width`` nodes of a face."""
        masks = []
        for m in self.n:
            idx = torch.arange(m)
            masks.append((idx < width) | (idx >= m - width))
        shell = torch.zeros(self.n, dtype=torch.bool)
        for a, mask in enumerate(masks):
            shape = [1] * self.dim
            shape[a] = self.n[a]
            shell = shell | mask.reshape(shape)
        return shell.reshape(-1)


def box_from_mixture(mixture: GaussianMixture, tol: float = 1e-12) -> tuple[list[float], list[float]]:
    """A box holding all but ``tol`` of the mixture's mass.

    Per axis, each component's marginal N(mu, S_aa) contributes the interval mu +- z sqrt(S_aa)
    with two-sided tail mass tol / d (z = Phi^{-1}(1 - tol / (2 d))); the union over components
    bounds the mass outside the box by sum_axes tol / d = tol (union bound).
    """
    if not 0 < tol < 1:
        raise ValueError(f"tol must lie in (0, 1); got {tol}")
    z = float(ndtri(1.0 - tol / (2 * mixture.dim)))
    std = torch.sqrt(torch.diagonal(mixture.covs, dim1=-2, dim2=-1))
    lo = (mixture.means - z * std).amin(0)
    hi = (mixture.means + z * std).amax(0)
    return lo.tolist(), hi.tolist()


def box_over_times(mixture: GaussianMixture, process: Any, times: Sequence[float],
                   tol: float = 1e-12) -> tuple[list[float], list[float]]:
    """The smallest box holding :func:`box_from_mixture` (tol) of p_t = ``mixture`` noised by
    ``process`` at every t in ``times``: one box for several times (a
    :class:`~.batch.HamiltonianBatch`), holding all but ``tol`` of each p_t."""
    boxes = [box_from_mixture(mixture.marginal(process, t), tol) for t in times]
    return ([min(b[0][a] for b in boxes) for a in range(mixture.dim)],
            [max(b[1][a] for b in boxes) for a in range(mixture.dim)])


def mixture_mass_outside(mixture: GaussianMixture, lo: Sequence[float], hi: Sequence[float]) -> float:
    """An upper bound on the mixture's mass outside the box [lo, hi] (per-axis union bound).

    sum_k w_k sum_a [Phi((lo_a - mu_ka) / s_ka) + Phi((mu_ka - hi_a) / s_ka)], s_ka^2 = S_k,aa:
    exact in 1D, at most d times too large otherwise.
    """
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    std = torch.sqrt(torch.diagonal(mixture.covs, dim1=-2, dim2=-1)).to(torch.float64)
    mu = mixture.means.to(torch.float64)
    below = torch.special.ndtr((lo_t - mu) / std)
    above = torch.special.ndtr((mu - hi_t) / std)
    return float((mixture.weights.to(torch.float64) * (below + above).sum(-1)).sum())


def box_from_samples(samples: torch.Tensor, tol: float = 1e-12) -> tuple[list[float], list[float]]:
    """A box around samples of p: their range widened by a Gaussian tail allowance.

    The range [min, max] of n samples holds all but about 1/n of the mass; beyond it the box
    extends by (z(tol) - z(1/n)) std per axis, the extra width a Gaussian tail needs to
    go from 1/n down to tol (z(q) = Phi^{-1}(1 - q / (2 d))). Approximate for heavier tails:
    check the result with the boundary-mass warning of the operator.
    """
    samples = torch.as_tensor(samples, dtype=torch.float64)
    n, d = samples.shape
    if n < 10:
        raise ValueError(f"need at least 10 samples to choose a box; got {n}")
    z_tol = float(ndtri(1.0 - tol / (2 * d)))
    z_n = float(ndtri(1.0 - 1.0 / (2 * d * n)))
    pad = max(z_tol - z_n, 1.0) * samples.std(0)
    return (samples.amin(0) - pad).tolist(), (samples.amax(0) + pad).tolist()


def box_from_score(
    score: Any,
    t: float,
    tol: float = 1e-12,
    n_chains: int = 2000,
    n_steps: int = 600,
    generator: torch.Generator | None = None,
) -> tuple[list[float], list[float]]:
    """A box for p_t known only through its score, from unadjusted Langevin chains.

    Chains x <- x + eta s_t(x) + sqrt(2 eta) xi start from N(0, r^2 I) with
    r = 3 max(1, sigma_t), so that every basin within reach of the start receives chains;
    the step is eta = 0.05 d / mean |s|^2 (a twentieth of the variance of a Gaussian with the
    same Fisher information), re-estimated at half time. The chains' end points go to
    :func:`box_from_samples`. ULA does not mix between well-separated modes, but a box only
    needs each mode visited; the operator's boundary-mass warning checks the result.
    """
    from ..score.interface import as_score

    score = as_score(score)
    if score.dim is None:
        raise InputShapeError("the score does not state its dimension; pass box=(lo, hi) explicitly")
    radius = 3.0 * max(1.0, float(score.process.sigma(t)))
    x = radius * torch.randn(n_chains, score.dim, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        s = score(x, t)
        for step in range(n_steps):
            if step in (0, n_steps // 2):
                eta = 0.05 * score.dim / float((s**2).sum(-1).mean().clamp_min(1e-12))
            noise = torch.randn(x.shape, dtype=x.dtype, generator=generator)
            x = x + eta * s + (2.0 * eta) ** 0.5 * noise
            s = score(x, t)
    return box_from_samples(x, tol)
