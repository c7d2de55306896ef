"""Regular grids on boxes in 1, 2 and 3 dimensions, and choosing a box that holds the mass.

A :class:`Grid` has n_a interior nodes per axis a on [lo_a, hi_a]; the Dirichlet boundary
sits on the box faces, so the nodes are x_i = lo + (i + 1) h with h = (hi - lo) / (n + 1),
i = 0 .. n - 1. Grid functions are stored flat in C order (the last axis fastest).
Refining keeps the boundary and halves h: n -> 2 (n + 1) - 1, so every coarse node is a
fine node (multigrid's transfers are then injections).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from scipy.special import ndtri

from ..common.errors import InputShapeError
from ..score.mixture import GaussianMixture

__all__ = [
    "Grid",
    "box_for_score",
    "box_from_density",
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
    n_steps: int | None = None,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> tuple[list[float], list[float]]:
    """A box for p_t known only through its score, from unadjusted Langevin chains.

    Chains x <- x + eta s_t(x) + sqrt(2 eta) xi start from ``start`` (points near p_t, e.g.
    data noised to t: ``n_chains`` of its rows drawn by ``generator``; ``n_steps`` default
    :data:`START_STEPS`) or else from N(0, r^2 I) with r = 3 max(1, sigma_t), so that every
    basin within reach of the start receives chains (``n_steps`` default 600). The step is
    eta = 0.05 d / mean |s|^2 (a twentieth of the variance of a Gaussian with the same
    Fisher information, so each step relaxes the sharpest direction by about 5 %),
    re-estimated at half time. The chains' end points go to :func:`box_from_samples`: the
    box is the score's own p_t's, not the start's. ULA does not mix between well-separated
    modes, but a box only needs each mode visited; the operator's boundary-mass warning
    checks the result.
    """
    from ..score.interface import as_score

    score = as_score(score)
    if start is not None:
        start = torch.as_tensor(start, dtype=torch.float64)
        if start.ndim != 2 or (score.dim is not None and start.shape[1] != score.dim) or len(start) < 10:
            raise InputShapeError(f"start must be at least 10 points of shape (n, {score.dim}); got {tuple(start.shape)}")
        x = start[torch.randint(len(start), (n_chains,), generator=generator)] if len(start) > n_chains else start
        n_steps = START_STEPS if n_steps is None else n_steps
    elif score.dim is None:
        raise InputShapeError("the score does not state its dimension; pass box=(lo, hi) explicitly")
    else:
        radius = 3.0 * max(1.0, float(score.process.sigma(t)))
        x = radius * torch.randn(n_chains, score.dim, dtype=torch.float64, generator=generator)
        n_steps = 600 if n_steps is None else n_steps
    with torch.no_grad():
        s = score(x, t)
        for step in range(n_steps):
            if step in (0, n_steps // 2):
                eta = 0.05 * x.shape[1] / float((s**2).sum(-1).mean().clamp_min(1e-12))
            noise = torch.randn(x.shape, dtype=x.dtype, generator=generator)
            x = x + eta * s + (2.0 * eta) ** 0.5 * noise
            s = score(x, t)
    return box_from_samples(x, tol)


#: Langevin steps of :func:`box_from_score` from points near p_t: 100 steps of 5 % relax the
#: sharpest direction by e^-5, enough to carry the start into the score's own tails.
START_STEPS = 100


#: Nodes per axis of the grids on which :func:`box_from_density` reads log p.
DENSITY_BOX_NODES = {1: 4097, 2: 257, 3: 41}
#: Spacings kept beyond the nodes of the mass in :func:`box_from_density`.
BOX_MARGIN = 4


def box_from_density(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    start: tuple[Sequence[float], Sequence[float]],
    tol: float = 1e-12,
    max_rounds: int = 24,
) -> tuple[list[float], list[float]]:
    """A box holding all but about ``tol`` of p, from its log-density (any shape of tails).

    ``log_prob`` maps points (n, d) to log p (unnormalised is fine; -inf where p = 0);
    ``start`` = (lo, hi) is a first box, e.g. around samples. Each round reads log p on a
    regular grid of the current box (``DENSITY_BOX_NODES`` per axis) and keeps the nodes of
    highest p until those left out hold at most ``tol`` of the mass on the box (the grid's
    quadrature of p, normalised on the box), until a first box holds them all: from then on
    it keeps the nodes within the depth max log p - min log p of that round's set (a fixed
    level set: recomputing the quantile on ever smaller boxes would drop ``tol`` of the mass
    again every round). The next box is the bounding box of the kept nodes and
    ``BOX_MARGIN`` spacings beyond (so that a next grid up to three times coarser, after a
    side was pushed out, still leaves them inside its outermost node); a side whose kept
    nodes reach its outermost node is pushed out by the box's width instead, since p may go
    on beyond. It stops when no side moves by more than two spacings.
    The mass beyond the final box is not bounded (no tail is assumed): the operator's
    boundary-mass warning checks the result. Raises :class:`ValueError` for a log p that is
    NaN or +inf, or nowhere finite, on a box, and when the box does not settle in
    ``max_rounds`` rounds (mass escaping to infinity).
    """
    if not 0 < tol < 1:
        raise ValueError(f"tol must lie in (0, 1); got {tol}")
    lo, hi = [float(v) for v in start[0]], [float(v) for v in start[1]]
    dim = len(lo)
    depth = None
    for _ in range(max_rounds):
        grid = Grid(lo, hi, DENSITY_BOX_NODES[dim])
        phi = torch.cat([log_prob(chunk) for chunk in grid.points().split(1 << 16)]).to(torch.float64)
        if bool(torch.isnan(phi).any()) or bool((phi == math.inf).any()) or not bool(torch.isfinite(phi).any()):
            raise ValueError(f"log p is NaN or +inf, or nowhere finite, on the box [{lo}, {hi}]")
        top = float(phi.max())
        if depth is None:
            ascending = torch.sort(torch.softmax(phi, 0)).values
            dropped = int(torch.searchsorted(torch.cumsum(ascending, 0), torch.tensor(tol, dtype=torch.float64)))
            keep = (torch.softmax(phi, 0) >= ascending[min(dropped, grid.size - 1)]).reshape(grid.n)
        else:
            keep = (phi >= top - depth).reshape(grid.n)
        new_lo, new_hi, moved, touched = [], [], False, False
        for a, (axis, h) in enumerate(zip(grid.axes(), grid.h)):
            rows = keep.movedim(a, 0).reshape(grid.n[a], -1).any(1).nonzero().flatten()
            first, last = int(rows[0]), int(rows[-1])
            width = hi[a] - lo[a]
            a_lo = lo[a] - width if first == 0 else max(lo[a], float(axis[first]) - BOX_MARGIN * h)
            a_hi = hi[a] + width if last == grid.n[a] - 1 else min(hi[a], float(axis[last]) + BOX_MARGIN * h)
            moved = moved or abs(a_lo - lo[a]) > 2 * h or abs(a_hi - hi[a]) > 2 * h
            touched = touched or first == 0 or last == grid.n[a] - 1
            new_lo.append(a_lo)
            new_hi.append(a_hi)
        if depth is None and not touched:
            depth = top - float(phi.reshape(grid.n)[keep].min())
        lo, hi = new_lo, new_hi
        if not moved:
            return lo, hi
    raise ValueError(f"box_from_density: the box did not settle in {max_rounds} rounds (last [{lo}, {hi}]): "
                     "does p have its mass at infinity?")


#: Samples drawn to place a box when the score can sample p_t.
BOX_SAMPLES = 4000


def box_for_score(score: Any, t: float, mass_tol: float = 1e-12,
                  samples: torch.Tensor | None = None) -> tuple[list[float], list[float]]:
    """A box holding all but about ``mass_tol`` of p_t, from whatever the score knows.

    ``samples``: points of p_t (n, d), e.g. data noised to t, for a score that cannot draw
    them itself (default: :data:`BOX_SAMPLES` of the score's own draws when it can sample).
    An exact mixture (a score with ``marginal``): :func:`box_from_mixture`. A score with an
    exact log-density (:class:`~scorehamiltonian.score.interface.DensityScore`):
    :func:`box_from_density`, started from the samples' box when there are samples, else
    from [-r, r]^d, r = 3 max(1, sigma_t). A learned score: Langevin chains on the score
    (:func:`box_from_score`), started from the samples when there are any (the box is the
    model's p_t, which need not be the data's). Other scores: the samples' box
    (:func:`box_from_samples`), else Langevin chains.
    Raises :class:`InputShapeError` when the score states no dimension and has no samples, or
    when no box settles on its log-density.
    """
    from ..score.interface import DensityScore, as_score

    score = as_score(score)
    generator = torch.Generator().manual_seed(0)
    if hasattr(score, "marginal"):
        return box_from_mixture(score.marginal(t), mass_tol)
    if samples is None and score.can_sample:
        samples = score.sample(BOX_SAMPLES, t, generator)
    if isinstance(score, DensityScore):
        if samples is not None:
            start = box_from_samples(samples, mass_tol)
        else:
            if score.dim is None:
                raise InputShapeError("the score does not state its dimension; pass dim= to as_score, or box=(lo, hi)")
            radius = 3.0 * max(1.0, float(score.process.sigma(t)))
            start = ([-radius] * score.dim, [radius] * score.dim)

        def log_prob(x: torch.Tensor) -> torch.Tensor:
            return score.log_prob(x, t)

        try:
            return box_from_density(log_prob, start, mass_tol)
        except ValueError as err:
            raise InputShapeError(f"could not place a box from the score's log-density at t = {t:g}: {err}; "
                                  "pass box=(lo, hi)") from err
    if samples is not None and not score.learned:
        return box_from_samples(samples, mass_tol)
    return box_from_score(score, t, mass_tol, generator=generator, start=samples)
