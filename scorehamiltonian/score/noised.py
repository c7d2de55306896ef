"""Exact noised densities of a low-dimensional p_0 by quadrature, and products of exact scores.

THEORY section 1: X_t = alpha_t X_0 + sigma_t Z, so for a data density p_0 on R^d (d = 1, 2)

    p_t(x) = int p_0(y) N(x; alpha_t y, sigma_t^2 I) dy,

and with the residual r = x - alpha_t y and the posterior p(y | x) proportional to the integrand

    s_t(x) = -E[r | x] / sigma_t^2,       div s_t(x) = (tr Cov[r | x] / sigma_t^2 - d) / sigma_t^2

(differentiate log p_t under the integral: grad log N = -r / sigma^2, Hess log N = -I / sigma^2, and
Hess log p_t = E[Hess log N] + Cov[grad log N]). :class:`NoisedDensity` evaluates the three by
trapezoid sums, which converge spectrally for these smooth, rapidly decaying integrands. The
integrand's narrowest scale in y is (1/w^2 + 1/s^2)^(-1/2), w the narrowest width of p_0 (from the
largest curvature of -log p_0 where p_0 is significant) and s = sigma_t / alpha_t the kernel's width
in y; the spacing is ``spacing`` (0.7 by default) times that scale. Two layouts of the same sum:

- "grid": y on a tensor grid over the box [lo, hi] holding p_0; the Gaussian kernel factorises over
  axes, so in 2D the double sum is two matrix products (K_2 W^T and K_1 W, W = p_0 on the grid),
  O(n_1 n_2) flops a point. Points are sorted into tiles of about 1024 neighbours, and a tile uses
  only the y within ``reach`` sigma_t / alpha_t of its points' x / alpha_t (a band); points of
  the far tails whose posterior reaches the band's inner edge are summed again over the whole box
  (when its grid has at most 2^17 nodes).
- "local": y = x / alpha_t + s u with u on a grid of spacing ``spacing`` (1 + s^2 / w^2)^(-1/2) in
  the ball |u| <= ``reach``: p_t(x) = alpha_t^-d int p_0(x / alpha_t + s u) N(u; 0, I) du, about
  700 evaluations of p_0 a point in 2D while s << w, whatever the box. Used when the grid layout
  would need more than 2^22 nodes (s below about 1e-3 of the box).

At sigma_t = 0 the density is p_0(x / alpha_t) / alpha_t^d itself, its score and divergence by
autograd. Accuracy: the truncations (box, band, ball) drop at most exp(-reach^2 / 2) d max p_0 /
alpha^d (and the box's face values) from p_t(x), a relative error below ``tol`` (1e-10) wherever
p_t(x) >= ``floor`` (1e-14) max p_0 / alpha^d; the trapezoid's discretisation error is below the
round-off measured in the tests against exact Gaussian mixtures (about 1e-14 in log p_t, 1e-13
relative in the score, 1e-11 in the divergence). Round-off in the divergence is about
1e-16 d / sigma_t^2 (absolute), from tr Cov[r] - d sigma^2. Beyond that region log p_t is a finite
underestimate (the truncated sums miss mass), smooth where the whole box is summed, not otherwise.
Cost on 2 busy cores (1 thread), Mueller-Brown, log p_t on a 511^2 grid: 3 to 6 s for t >= 0.01
(more for t = 0.001, whose box grid has 750^2 nodes).

:class:`ProductScore`: a density that factorises over blocks of coordinates stays a product under
the (isotropic) noise, p_t(x) = prod_k p_t^(k)(x_Bk), so its log-density, score and divergence are
sums of its factors'.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..common.errors import InputShapeError
from .interface import AnalyticScore, DensityScore
from .mixture import MixtureEvaluation
from .processes import OU, ForwardProcess

__all__ = ["NoisedDensity", "ProductScore", "SampledDensityScore", "narrowest_width", "noised_draws"]

LogDensity = Callable[[torch.Tensor], torch.Tensor]
Sampler = Callable[[int, torch.Generator | None], torch.Tensor]

_LOG_2PI = 1.8378770664093453
#: Values held at once in a chunk's largest (points x quadrature nodes) array.
_CHUNK_VALUES = 1 << 21
#: Points per tile of the grid layout (points sorted into tiles of nearby points, so that each
#: tile's band of y is narrow): n / 64 within these bounds.
_TILE = (64, 1024)
#: The grid layout is used while its tensor grid has at most this many nodes (the local one beyond).
_GRID_NODES = 1 << 22
#: Far-tail points are summed over the whole box while its grid has at most this many nodes.
_WHOLE_BOX_NODES = 1 << 17
#: A point whose grid sum underflows (far outside p_0's support) is redone in log space.
_UNDERFLOW = 1e-280


def narrowest_width(log_prob0: LogDensity, lo: Sequence[float], hi: Sequence[float], depth: float,
                    nodes: int = 512) -> float:
    """1 / sqrt(largest eigenvalue of -Hess log p_0) over the nodes of an ``nodes``-per-axis grid
    of the box where log p_0 >= max - ``depth`` (second differences; units of x). Sets the
    quadrature spacing of :class:`NoisedDensity`, whose accuracy the tests verify independently."""
    axes = [torch.linspace(a, b, nodes, dtype=torch.float64) for a, b in zip(lo, hi)]
    h = [float(ax[1] - ax[0]) for ax in axes]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    lp = log_prob0(mesh.reshape(-1, len(axes))).reshape(mesh.shape[:-1])
    inner = tuple(slice(1, -1) for _ in axes)

    def second(a: int, b: int) -> torch.Tensor:
        def shift(da: int, db: int) -> torch.Tensor:
            index = [slice(1, -1)] * len(axes)
            index[a] = slice(1 + da, nodes - 1 + da)
            if b != a:
                index[b] = slice(1 + db, nodes - 1 + db)
            return lp[tuple(index)]
        if a == b:
            return (shift(1, 0) - 2 * lp[inner] + shift(-1, 0)) / h[a] ** 2
        return (shift(1, 1) - shift(1, -1) - shift(-1, 1) + shift(-1, -1)) / (4 * h[a] * h[b])

    hess = torch.stack([torch.stack([second(a, b) for b in range(len(axes))], -1) for a in range(len(axes))], -1)
    curvature = torch.linalg.eigvalsh(-hess)[..., -1]
    significant = lp[inner] >= float(lp.max()) - depth
    largest = float(curvature[significant].max())
    if not largest > 0:
        raise ValueError("log p_0 has no positive curvature on the box: is the box around its modes?")
    return 1.0 / math.sqrt(largest)


class SampledDensityScore(DensityScore):
    """A :class:`DensityScore` that may carry an exact sampler of its data p_0, ``sampler(n,
    generator)`` -> (n, d) (None: the base class's attached ``data``, or none)."""

    sampler: Sampler | None = None

    @property
    def can_sample(self) -> bool:
        """True when an exact sampler of p_0 was given (or data attached)."""
        return self.sampler is not None or self.data is not None

    def sample(self, n: int, t: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws of p_t: exact draws of p_0 noised to t, alpha_t x_0 + sigma_t z."""
        if self.sampler is None:
            return super().sample(n, t, generator)
        return noised_draws(self.process, self.sampler, n, t, generator)


class NoisedDensity(SampledDensityScore):
    """The exact p_t = p_0 * N(0, sigma_t^2 I) (scaled by alpha_t) of a 1D or 2D p_0, by quadrature.

    Parameters
    ----------
    log_prob0 : log p_0 up to a constant, a torch function of y (n, d) -> (n,), differentiable
        (autograd gives the score at sigma_t = 0); float64.
    lo, hi : the box holding p_0: on its faces log p_0 must lie below max - log(1 / (tol floor))
        (checked on a grid of the faces; :class:`ValueError` otherwise).
    process : the forward process (OU by default).
    width : p_0's narrowest width w (units of x); by default :func:`narrowest_width`.
    spacing, reach : the quadrature's spacing in units of the integrand's width, and the
        truncation radius in kernel widths (default: from tol and floor, module docstring).
    tol, floor : the relative accuracy claimed for p_t(x) wherever p_t(x) >= floor max p_0 /
        alpha^d (module docstring).
    sampler : optional exact sampler of p_0, ``sampler(n, generator)`` -> (n, d); then
        :meth:`sample` draws exact samples of p_t.
    layout : "auto" ("grid" unless its grid would exceed 2^22 nodes, then "local"), "grid" or "local".

    Attributes: ``log_z`` (log of int exp(log_prob0), by the same trapezoid rule, its error
    ``log_z_error`` from a grid of half the spacing), ``width``, ``lo``, ``hi``. The
    log-density is normalised (``normalised = True``).
    """

    normalised = True

    def __init__(self, log_prob0: LogDensity, lo: Sequence[float], hi: Sequence[float],
                 process: ForwardProcess | None = None, *, width: float | None = None, spacing: float = 0.7,
                 reach: float | None = None, tol: float = 1e-10, floor: float = 1e-14,
                 sampler: Sampler | None = None, layout: str = "auto") -> None:
        lo_t, hi_t = [float(v) for v in lo], [float(v) for v in hi]
        if len(lo_t) != len(hi_t) or len(lo_t) not in (1, 2) or not all(a < b for a, b in zip(lo_t, hi_t)):
            raise InputShapeError(f"NoisedDensity needs a 1D or 2D box with lo < hi; got lo={lo_t}, hi={hi_t}")
        if layout not in ("auto", "grid", "local"):
            raise ValueError(f"layout must be 'auto', 'grid' or 'local'; got {layout!r}")
        if not 0 < tol < 1 or not 0 < floor < 1 or not spacing > 0:
            raise ValueError(f"need 0 < tol, floor < 1 and spacing > 0; got {tol}, {floor}, {spacing}")
        self.function, self.lo, self.hi, self.dim = log_prob0, lo_t, hi_t, len(lo_t)
        self.process = process if process is not None else OU()
        self.depth, self.tol = math.log(1.0 / (tol * floor)), float(tol)
        self.reach = float(reach) if reach is not None else math.sqrt(2.0 * (self.depth + math.log(self.dim)))
        self.spacing, self.layout, self.sampler = float(spacing), layout, sampler
        self.width = float(width) if width is not None else narrowest_width(log_prob0, lo_t, hi_t, self.depth)
        self._grids: dict[tuple[int, ...], tuple[list[torch.Tensor], torch.Tensor, float]] = {}
        self.log_max = self._check_faces()
        self.log_z = self._log_integral(1.0)
        self.log_z_error = abs(self._log_integral(0.5) - self.log_z)
        self._data_score = AnalyticScore(self._log_p0, self.process, self.dim, normalised=True)

    def __repr__(self) -> str:
        name = getattr(self.function, "__name__", type(self.function).__name__)
        return f"NoisedDensity({name}, box={self.lo}..{self.hi}, process={self.process!r})"

    def _log_p0(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.function(y) - self.log_z

    def _check_faces(self) -> float:
        """max log p_0 (nodes of the box's grid) after checking that the faces are below max - depth."""
        _, lw, _ = self._grid(self.width * self.spacing)
        top = float(lw.max())
        faces = torch.cat([lw.select(a, i).reshape(-1) for a in range(self.dim) for i in (0, -1)])
        if float(faces.max()) > top - self.depth:
            raise ValueError(f"the box {self.lo}..{self.hi} cuts p_0: log p_0 on its faces reaches "
                             f"{float(faces.max()) - top:.3g} below its maximum, less than {self.depth:.3g}; enlarge it")
        return top

    def _grid(self, step: float) -> tuple[list[torch.Tensor], torch.Tensor, float]:
        """Axes, log p_0 on their tensor grid (nodes per axis from ``step``) and the cell volume."""
        n = self._nodes(step)
        if n not in self._grids:
            if math.prod(n) > 4 * _GRID_NODES:
                raise ValueError(f"the quadrature grid {n} is too large; pass layout='local' or a coarser spacing")
            axes = [torch.linspace(a, b, m, dtype=torch.float64) for a, b, m in zip(self.lo, self.hi, n)]
            mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.dim)
            with torch.no_grad():
                lw = torch.cat([self.function(c) for c in mesh.split(1 << 18)]).reshape(n)
            cell = math.prod((b - a) / (m - 1) for a, b, m in zip(self.lo, self.hi, n))
            if len(self._grids) >= 4:
                self._grids.pop(next(iter(self._grids)))
            self._grids[n] = (axes, lw, cell)
        return self._grids[n]

    def _log_integral(self, refine: float) -> float:
        _, lw, cell = self._grid(self.width * self.spacing * refine)
        return float(torch.logsumexp(lw.reshape(-1), 0)) + math.log(cell)

    def _scale(self, alpha: float, sigma: float) -> float:
        """The integrand's narrowest width in y, (1/w^2 + alpha^2 / sigma^2)^(-1/2)."""
        return 1.0 / math.sqrt(1.0 / self.width**2 + (alpha / sigma) ** 2)

    def choose_layout(self, t: float) -> str:
        """The layout used at time t: "exact" (sigma_t = 0), "grid" or "local" (module docstring)."""
        alpha, sigma = float(self.process.alpha(t)), float(self.process.sigma(t))
        if sigma == 0.0:
            return "exact"
        if self.layout != "auto":
            return self.layout
        return "grid" if math.prod(self._nodes(self.spacing * self._scale(alpha, sigma))) <= _GRID_NODES else "local"

    def _nodes(self, step: float) -> tuple[int, ...]:
        """Nodes per axis of the box's tensor grid of spacing at most ``step``."""
        return tuple(max(3, math.ceil((b - a) / step) + 1) for a, b in zip(self.lo, self.hi))

    def _ball(self, alpha: float, sigma: float) -> tuple[torch.Tensor, float]:
        """Nodes u of the local layout in |u| <= reach and their spacing (from the integrand's
        width in u, (1 + s^2 / w^2)^(-1/2))."""
        step = self.spacing * self._scale(alpha, sigma) * alpha / sigma
        m = math.ceil(self.reach / step)
        axis = torch.arange(-m, m + 1, dtype=torch.float64) * step
        u = torch.stack(torch.meshgrid(*([axis] * self.dim), indexing="ij"), -1).reshape(-1, self.dim)
        return u[(u**2).sum(-1) <= self.reach**2], step

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, x: Any, t: Any) -> MixtureEvaluation:
        """log p_t(x) (normalised), s_t(x) and div s_t(x) by quadrature (module docstring)."""
        return self._evaluate_all(x, t, moments=True)

    def log_prob(self, x: Any, t: Any) -> torch.Tensor:
        """log p_t(x) alone (the quadrature without the posterior moments)."""
        return self._evaluate_all(x, t, moments=False).log_prob

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._evaluate_all(x, t, moments=True, checked=True).score

    def _evaluate_all(self, x: Any, t: Any, moments: bool, checked: bool = False) -> MixtureEvaluation:
        if not checked:
            x, t = self.prepare(x, t)
        shape, dtype = x.shape[:-1], x.dtype
        flat, times = x.detach().reshape(-1, self.dim).to(torch.float64), t.reshape(-1).to(torch.float64)
        log_p = torch.empty(flat.shape[0], dtype=torch.float64)
        score, div = torch.zeros_like(flat), torch.zeros_like(log_p)
        for value in torch.unique(times).tolist():
            rows = torch.nonzero(times == value).flatten()
            layout = self.choose_layout(value)
            if layout == "exact":
                out = self._data_score.evaluate(flat[rows] / float(self.process.alpha(value)), torch.zeros(rows.numel()))
                alpha = float(self.process.alpha(value))
                parts = (out.log_prob - self.dim * math.log(alpha), out.score / alpha, out.divergence / alpha**2)
            else:
                method = self._grid_sum if layout == "grid" else self._local_sum
                parts = method(flat[rows], float(self.process.alpha(value)), float(self.process.sigma(value)), moments)
            log_p[rows] = parts[0]
            if moments:
                score[rows], div[rows] = parts[1], parts[2]
        cast = {"dtype": dtype, "device": x.device}
        return MixtureEvaluation(log_p.reshape(shape).to(**cast), score.reshape(x.shape).to(**cast),
                                 div.reshape(shape).to(**cast))

    def _finish(self, log_sum: torch.Tensor, mean_r: torch.Tensor | None, var_r: torch.Tensor | None,
                sigma: float) -> tuple[torch.Tensor, ...]:
        """(log p_t, s_t, div s_t) from log sum_j w_j K_j (kernel normalisation and log Z included)
        and the posterior mean and summed variance of the residual r = x - alpha y."""
        log_p = log_sum - 0.5 * self.dim * (_LOG_2PI + 2.0 * math.log(sigma)) - self.log_z
        if mean_r is None:
            return (log_p,)
        return log_p, -mean_r / sigma**2, (var_r / sigma**2 - self.dim) / sigma**2

    def _local_sum(self, x: torch.Tensor, alpha: float, sigma: float, moments: bool) -> tuple[torch.Tensor, ...]:
        """The local layout: y = x / alpha + (sigma / alpha) u over the ball of u (module docstring)."""
        u, step = self._ball(alpha, sigma)
        s = sigma / alpha
        # trapezoid weight of a node in y: (s h_u)^d; log N(x; alpha y, sigma^2) = -|u|^2 / 2 + const.
        log_node = -0.5 * (u**2).sum(-1) + self.dim * math.log(s * step)
        outs = []
        for chunk in x.split(max(1, _CHUNK_VALUES // u.shape[0])):
            y = chunk[:, None, :] / alpha + s * u
            with torch.no_grad():
                log_w = self.function(y.reshape(-1, self.dim)).reshape(y.shape[:-1]) + log_node
            outs.append(_log_moments(log_w, -sigma * u[None], moments))
        return self._finish(*_joined(outs), sigma=sigma)

    def _grid_sum(self, x: torch.Tensor, alpha: float, sigma: float, moments: bool) -> tuple[torch.Tensor, ...]:
        """The grid layout: trapezoid over the box's tensor grid, factorised kernel, tile by tile
        (module docstring). The band drops at most exp(-reach^2 / 2) sum(W) from a point's sum;
        points where that is not below ``tol`` times their sum and whose posterior weight on an
        inner edge of the band exceeds ``tol`` (far tails, where the posterior can lie beyond the
        band) are summed again over the whole box while it has at most ``_WHOLE_BOX_NODES`` nodes
        (sigma_t / alpha_t about w or more), so that log p_t stays smooth there; with finer grids
        (small t) their values stay those of the band, finite underestimates."""
        axes, lw, cell = self._grid(self.spacing * self._scale(alpha, sigma))
        args = (axes, lw, alpha, sigma, moments)
        out = self._tiled(x, *args, banded=True)
        floor = -0.5 * self.reach**2 + float(torch.logsumexp(lw.reshape(-1), 0)) - self.log_max - math.log(self.tol)
        far = torch.nonzero((out[0] < floor) & (out[3] > self.tol)).flatten()
        if far.numel() and lw.numel() <= _WHOLE_BOX_NODES:
            for whole, part in zip(out, self._tiled(x[far], *args, banded=False)):
                if whole is not None:
                    whole[far] = part
        log_sum, mean_r, var_r, _ = out
        return self._finish(log_sum + self.log_max + math.log(cell), mean_r, var_r, sigma)

    def _tiled(self, x: torch.Tensor, axes: list[torch.Tensor], lw: torch.Tensor, alpha: float, sigma: float,
               moments: bool, banded: bool) -> tuple[torch.Tensor | None, ...]:
        """(log sum, mean r, summed variance of r, posterior weight on the band's inner edges) of the
        grid layout, tile by tile."""
        log_sum, edge = torch.empty(x.shape[0], dtype=torch.float64), torch.empty(x.shape[0], dtype=torch.float64)
        mean_r, var_r = (torch.empty_like(x), torch.empty_like(log_sum)) if moments else (None, None)
        size = min(max(_TILE[0], x.shape[0] // 64), _TILE[1], _CHUNK_VALUES // max(a.numel() for a in axes))
        for tile in _tiles(x, max(1, size)):
            part = self._grid_tile(x[tile], axes, lw, alpha, sigma, moments, banded)
            log_sum[tile], edge[tile] = part[0], part[3]
            if moments:
                mean_r[tile], var_r[tile] = part[1], part[2]
        return log_sum, mean_r, var_r, edge

    def _grid_tile(self, x: torch.Tensor, axes: list[torch.Tensor], lw: torch.Tensor, alpha: float, sigma: float,
                   moments: bool, banded: bool) -> tuple[torch.Tensor | None, ...]:
        """One tile of the grid layout: per axis the band of y within ``reach`` kernel widths of the
        tile's x / alpha (``banded``) or the whole axis, the kernel rows and the weights W = p_0 on
        the band each scaled to a largest entry 1 (their logs restored after the sum);
        sum_ab K1_ia W_ab K2_ib = sum_a K1_ia (K2 W^T)_ia."""
        band, kernels, residuals, shifts = [], [], [], []
        for a, axis in enumerate(axes):
            i0, i1 = 0, axis.numel()
            if banded:
                ends = torch.stack([x[:, a].min() - self.reach * sigma, x[:, a].max() + self.reach * sigma]) / alpha
                i0 = min(int(torch.searchsorted(axis, ends[0])), axis.numel() - 1)
                i1 = max(int(torch.searchsorted(axis, ends[1], right=True)), i0 + 1)
            band.append(slice(i0, i1))
            r = x[:, a, None] - alpha * axis[i0:i1]
            e = r**2 / (2.0 * sigma**2)
            shift = e.min(1).values
            kernels.append(torch.exp(shift[:, None] - e))
            residuals.append(r)
            shifts.append(shift)
        block = lw[tuple(band)]
        top = block.max()
        w = torch.exp(block - top)
        if self.dim == 1:
            other = [w.expand(x.shape[0], -1)]
        else:
            other = [kernels[1] @ w.T] + ([kernels[0] @ w] if moments else [])
        total = (kernels[0] * other[0]).sum(1)
        log_sum = torch.log(total) - sum(shifts) + (float(top) - self.log_max)
        mean_r = var_r = None
        if moments:
            mean_r = torch.stack([(k * r * o).sum(1) for k, r, o in zip(kernels, residuals, other)], -1) / total[:, None]
            second = torch.stack([(k * r**2 * o).sum(1) for k, r, o in zip(kernels, residuals, other)], -1)
            var_r = (second / total[:, None] - mean_r**2).sum(-1)
        low = ~(total > _UNDERFLOW)
        if bool(low.any()):
            redo = self._log_space_chunk(x[low], [ax[cut] for ax, cut in zip(axes, band)], block, alpha, sigma, moments)
            log_sum[low] = redo[0]
            if moments:
                mean_r[low], var_r[low] = redo[1], redo[2]
        edge = torch.zeros_like(total)
        for a, (cut, axis) in enumerate(zip(band, axes)):
            for j, face in ((0, cut.start == 0), (-1, cut.stop == axis.numel())):
                if not face:
                    column = other[0][:, j] if a == 0 else kernels[0] @ w[:, j]
                    edge = torch.maximum(edge, kernels[a][:, j] * column / total)
        return log_sum, mean_r, var_r, edge

    def _log_space_chunk(self, x: torch.Tensor, axes: list[torch.Tensor], lw: torch.Tensor, alpha: float,
                         sigma: float, moments: bool) -> tuple[torch.Tensor | None, ...]:
        """The grid sum in log space over the band's nodes (``axes`` and ``lw`` cut to it), for points
        whose scaled sum underflows."""
        nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.dim)
        flat = lw.reshape(-1) - self.log_max
        outs = []
        for chunk in x.split(max(1, _CHUNK_VALUES // nodes.shape[0])):
            r = chunk[:, None, :] - alpha * nodes
            outs.append(_log_moments(flat - (r**2).sum(-1) / (2.0 * sigma**2), r, moments))
        return _joined(outs)


def noised_draws(process: ForwardProcess, sampler: Sampler, n: int, t: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws of p_t from an exact sampler of p_0: alpha_t x_0 + sigma_t z, x_0 then z from
    ``generator``; shape (n, d)."""
    t = float(process.time(float(t)))
    x0 = sampler(int(n), generator)
    return process.perturb(x0, t, torch.randn(x0.shape, dtype=x0.dtype, generator=generator))


def _tiles(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Indices of x (n, d) in tiles of about ``size`` nearby points: sorted along axis 0 into
    about sqrt(n / size) slabs (d = 2), each sorted along axis 1 and cut into tiles."""
    order = torch.argsort(x[:, 0])
    if x.shape[1] == 1:
        return list(order.split(size))
    slabs = max(1, round(math.sqrt(x.shape[0] / size)))
    tiles: list[torch.Tensor] = []
    for slab in order.split(math.ceil(x.shape[0] / slabs)):
        tiles.extend(slab[torch.argsort(x[slab, 1])].split(size))
    return tiles


def _joined(parts: list[tuple[torch.Tensor | None, ...]]) -> tuple[torch.Tensor | None, ...]:
    """Chunks' (log sum, mean, variance) joined along the points (None stays None)."""
    return tuple(torch.cat(p) if p[0] is not None else None for p in zip(*parts))


def _log_moments(log_w: torch.Tensor, r: torch.Tensor, moments: bool) -> tuple[torch.Tensor | None, ...]:
    """log sum_j exp(log_w_ij) and, with ``moments``, the weighted mean of r_ij (..., d) and the
    summed weighted variance, centred in a second pass (no cancellation)."""
    log_sum = torch.logsumexp(log_w, 1)
    if not moments:
        return log_sum, None, None
    p = torch.exp(log_w - log_sum[:, None])
    mean = (p[..., None] * r).sum(1)
    var = (p * ((r - mean[:, None, :]) ** 2).sum(-1)).sum(1)
    return log_sum, mean, var


class ProductScore(SampledDensityScore):
    """The exact score of a product density p_t(x) = prod_k prod_c p_t^(k)(x[blocks_k[c]]).

    ``factors``: :class:`DensityScore` s of dimensions d_k (one process for all); ``blocks``:
    per factor an integer tensor (copies_k, d_k) of coordinates, each coordinate of x in
    exactly one block. The noise acts on every coordinate alike, so a product of data densities
    stays one, and log p_t, the score and its divergence are sums over the blocks (each factor
    is evaluated once on all of its copies stacked). ``normalised`` if every factor is.
    ``sampler``: optional exact sampler of p_0 (n, generator) -> (n, d).
    """

    def __init__(self, factors: Sequence[DensityScore], blocks: Sequence[Any], sampler: Sampler | None = None) -> None:
        if len(factors) != len(blocks) or not factors:
            raise InputShapeError("ProductScore needs one block tensor per factor")
        self.factors = list(factors)
        self.blocks = [torch.as_tensor(b, dtype=torch.long) for b in blocks]
        for f, b in zip(self.factors, self.blocks):
            if b.ndim != 2 or b.shape[1] != f.dim:
                raise InputShapeError(f"blocks for {f!r} must have shape (copies, {f.dim}); got {tuple(b.shape)}")
        used = torch.cat([b.reshape(-1) for b in self.blocks])
        self.dim = int(used.numel())
        if not torch.equal(torch.sort(used).values, torch.arange(self.dim)):
            raise InputShapeError(f"the blocks must cover coordinates 0..{self.dim - 1} once each")
        self.process = self.factors[0].process
        self.normalised = all(f.normalised for f in self.factors)
        self.sampler = sampler

    def __repr__(self) -> str:
        return f"ProductScore({[f'{b.shape[0]} x {f!r}' for f, b in zip(self.factors, self.blocks)]})"

    def evaluate(self, x: Any, t: Any) -> MixtureEvaluation:
        """Sums over the blocks of each factor's log p_t and divergence; the score block by block."""
        x, t = self.prepare(x, t)
        flat, times = x.reshape(-1, self.dim), t.reshape(-1)
        log_p, div, score = torch.zeros_like(times), torch.zeros_like(times), torch.empty_like(flat)
        for factor, block in zip(self.factors, self.blocks):
            copies = block.shape[0]
            part = factor.evaluate(flat[:, block].reshape(-1, factor.dim), times.repeat_interleave(copies))
            log_p = log_p + part.log_prob.reshape(-1, copies).sum(1)
            div = div + part.divergence.reshape(-1, copies).sum(1)
            score[:, block] = part.score.reshape(-1, copies, factor.dim)
        return MixtureEvaluation(log_p.reshape(x.shape[:-1]), score.reshape(x.shape), div.reshape(x.shape[:-1]))

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.evaluate(x, t).score
