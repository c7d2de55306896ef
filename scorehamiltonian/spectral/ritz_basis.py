"""The bases of the sample-based Rayleigh-Ritz gap (THEORY section 2, route (b)).

Every basis lives in whitened coordinates z = Lambda^{-1/2} U^T (x - m) (:class:`Whitening`,
from the fit samples' mean and covariance): products of normalised Hermite polynomials
("polynomial"), tanh ridge functions placed where the samples resolve them ("tanh"), or the
last hidden layer of a small network trained to minimise the Rayleigh quotient
("network"). :func:`feature_map` builds the requested basis (sizes chosen for "auto") as a
:class:`FeatureMap`, which gives values, gradients in x and the Dirichlet Gram matrix for
:func:`~.ritz.ritz_gap`, whose module docstring states the bases and their sizes.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..common.errors import InputShapeError, NotPositiveDefiniteError
from ..common.seeds import draw_seed
from ..common.validation import as_float_tensor

__all__ = ["SAMPLES_PER_FUNCTION", "BasisName", "FeatureMap", "Whitening", "basis_name", "feature_map"]

BasisName = Literal["auto", "polynomial", "tanh", "poly+tanh", "network"]

#: Samples per basis function in the fit half below which the result is flagged (and "auto" shrinks).
SAMPLES_PER_FUNCTION = 10
#: Number of leading principal axes carrying ridge features.
RIDGE_AXES = 3
#: Smallest and largest ridge width, in whitened units.
RIDGE_WIDTHS = (0.005, 1.0)
#: Fit samples a ridge feature's transition (one width either side of its centre) must hold.
#: A step whose transition holds no sample has zero sample Dirichlet energy: it would fit the
#: gaps between samples instead of p_t.
MIN_TRANSITION_SAMPLES = 100
#: Number of distinct ridge widths.
N_RIDGE_WIDTHS = 6
#: The "network" basis: hidden width (= basis functions), training steps and learning rate.
NETWORK_WIDTH = 32
NETWORK_STEPS = 400
NETWORK_LEARNING_RATE = 1e-2
#: Steps between the held-out checks of the network's training (early stopping).
NETWORK_CHECK = 10


@dataclass(frozen=True)
class Whitening:
    """z = Lambda^{-1/2} U^T (x - mean); axes (columns of U) by decreasing variance Lambda."""

    mean: torch.Tensor
    axes: torch.Tensor
    variances: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Whitening:
        mean = x.mean(0)
        cov = torch.cov(x.T, correction=1).reshape(x.shape[1], x.shape[1])
        variances, axes = torch.linalg.eigh(cov)
        if not bool(variances[0] > 1e-12 * variances[-1]):
            raise NotPositiveDefiniteError(
                "the samples' covariance is singular (eigenvalues "
                f"{variances[0].item():.3g} .. {variances[-1].item():.3g}): they lie in a subspace, "
                "where p_t has no density and no finite Poincare constant"
            )
        return cls(mean, axes.flip(1), variances.flip(0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.axes / self.variances.sqrt()


class _HermiteBasis:
    """prod_j He_{n_j}(z_j) / sqrt(n_j!) for 1 <= sum_j n_j <= degree.

    Each function is stored as ``degree`` slots (variable, power), distinct variables, padded
    with power 0.
    """

    def __init__(self, dim: int, degree: int, device: torch.device) -> None:
        slots = [_slots(combo, degree) for k in range(1, degree + 1)
                 for combo in itertools.combinations_with_replacement(range(dim), k)]
        table = torch.tensor(slots, dtype=torch.long, device=device).reshape(-1, degree, 2)
        self.variables, self.powers = table[..., 0], table[..., 1]
        self.degree, self.dim = degree, dim
        self.size = len(slots)

    def _tables(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """He_p(z_j) / sqrt(p!) and its first and second derivatives, p He_{p-1}(z_j) / sqrt(p!)
        and p (p - 1) He_{p-2}(z_j) / sqrt(p!), each (n, d, degree+1)."""
        he = [torch.ones_like(z), z]
        for p in range(1, self.degree):
            he.append(z * he[p] - p * he[p - 1])
        norm = torch.tensor([math.sqrt(math.factorial(p)) for p in range(self.degree + 1)],
                            dtype=z.dtype, device=z.device)
        values = torch.stack(he[: self.degree + 1], dim=-1) / norm
        powers = torch.arange(self.degree + 1, dtype=z.dtype, device=z.device)
        derivs = torch.cat([torch.zeros_like(values[..., :1]), values[..., :-1]], dim=-1) * powers.sqrt()
        seconds = torch.cat([torch.zeros_like(derivs[..., :1]), derivs[..., :-1]], dim=-1) * powers.sqrt()
        return values, derivs, seconds

    def values(self, z: torch.Tensor) -> torch.Tensor:
        table = self._tables(z)[0]
        out = torch.ones(z.shape[0], self.size, dtype=z.dtype, device=z.device)
        for s in range(self.degree):
            out = out * table[:, self.variables[:, s], self.powers[:, s]]
        return out

    def coarse(self) -> torch.Tensor:
        """The coarser basis's columns (bool, (size,)): total degree below ``degree``; at degree
        1, the leading half of the principal axes (all of them in 1D: no coarser basis)."""
        if self.degree > 1:
            return self.powers.sum(1) < self.degree
        return self.variables[:, 0] < max(1, (self.dim + 1) // 2)

    def partials(self, z: torch.Tensor, order: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """For j = 0..d-1: (columns, d^order phi / d z_j^order of those columns), order 1 or 2."""
        tables = self._tables(z)
        table, derivs = tables[0], tables[order]
        for j in range(self.dim):
            cols, parts = [], []
            for s in range(self.degree):
                idx = torch.nonzero((self.variables[:, s] == j) & (self.powers[:, s] > 0)).flatten()
                part = derivs[:, j, self.powers[idx, s]]
                for other in set(range(self.degree)) - {s}:
                    part = part * table[:, self.variables[idx, other], self.powers[idx, other]]
                cols.append(idx)
                parts.append(part)
            yield torch.cat(cols), torch.cat(parts, dim=1)


def _slots(combo: tuple[int, ...], degree: int) -> list[list[int]]:
    """(variable, power) pairs of a multiset of variables, padded to ``degree`` slots."""
    pairs = [[var, power] for var, power in sorted(Counter(combo).items())]
    return pairs + [[0, 0]] * (degree - len(pairs))


class _RidgeBasis:
    """tanh((u . z - c) / w) for directions u (F, d), centres c (F,) and widths w (F,); the features
    come in blocks of ``block`` per direction, the first ``n_axes`` blocks on the ridge axes."""

    def __init__(self, directions: torch.Tensor, centres: torch.Tensor, widths: torch.Tensor,
                 n_axes: int, block: int) -> None:
        self.directions, self.centres, self.widths = directions, centres, widths
        self.size = centres.numel()
        self.dim = directions.shape[1]
        self.n_axes, self.block = n_axes, block

    @classmethod
    def fit(cls, z: torch.Tensor, n_features: int, generator: torch.Generator | None,
            whitening: Whitening | None = None) -> _RidgeBasis:
        """Features on RIDGE_AXES axes (:func:`_ridge_axes`) and random directions in their span,
        from whitened z."""
        dim = z.shape[1]
        n_axes = min(dim, RIDGE_AXES)
        axes = _ridge_axes(z, whitening, n_axes)
        random = _random_directions(2 * n_axes if n_axes > 1 else 0, n_axes, z, generator) @ axes
        directions = torch.cat([axes, random / random.norm(dim=1, keepdim=True)])
        n_centres = max(1, n_features // (directions.shape[0] * N_RIDGE_WIDTHS))
        grids = [_centres_and_widths(z @ u, n_centres) for u in directions]
        rows = torch.repeat_interleave(directions, n_centres * N_RIDGE_WIDTHS, dim=0)
        return cls(rows, torch.cat([g[0] for g in grids]), torch.cat([g[1] for g in grids]), n_axes,
                   n_centres * N_RIDGE_WIDTHS)

    def values(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh((z @ self.directions.T - self.centres) / self.widths)

    def coarse(self) -> torch.Tensor:
        """The coarser basis's columns: the axes' features and every other random direction's (a
        coarser angular resolution; halving the centres instead missed a curved boundary that
        neither basis holds: four modes in 2D, +35 % with a change of 1 %)."""
        direction = torch.arange(self.size, device=self.centres.device) // self.block
        return (direction < self.n_axes) | ((direction - self.n_axes) % 2 == 0)

    def partials(self, z: torch.Tensor, order: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """d^order tanh(a) / d z_j^order, a = (u . z - c) / w: (1 - tanh^2) u_j / w (order 1),
        -2 tanh (1 - tanh^2) u_j^2 / w^2 (order 2)."""
        value = self.values(z)
        slope = (1.0 - value**2) / self.widths
        curve = -2.0 * value * slope / self.widths
        for j in range(self.dim):
            idx = torch.nonzero(self.directions[:, j]).flatten()
            u = self.directions[idx, j]
            yield idx, slope[:, idx] * u if order == 1 else curve[:, idx] * u**2


def _ridge_axes(z: torch.Tensor, whitening: Whitening | None, n_axes: int) -> torch.Tensor:
    """(n_axes, d) unit directions in z for the ridge features.

    Where d <= n_axes they are the principal axes (they span every direction). Above, the
    leading principal axes are arbitrary within a degenerate eigenspace (16 identical double
    wells in d = 32: a step along a mixture of wells is no eigenfunction, and the Ritz value came
    out 0.63 for the true 0.25), so the candidates are the principal axes and the data's own
    coordinate axes (x_j - m_j = (U Lambda^{1/2})_j . z), ranked by non-Gaussianity of the
    standardised projection p, skew(p)^2 + kurt(p)^2 / 4 (the Jarque-Bera form: 0 for a
    Gaussian, large for separated modes, skewed or not), each kept unless within cos 0.9 of
    one already kept.
    """
    dim = z.shape[1]
    if whitening is None or dim <= n_axes:
        return torch.eye(n_axes, dim, dtype=z.dtype, device=z.device)
    coordinate = whitening.axes * whitening.variances.sqrt()
    candidates = torch.cat([torch.eye(dim, dtype=z.dtype, device=z.device),
                            coordinate / coordinate.norm(dim=1, keepdim=True)])
    p = z @ candidates.T
    p = (p - p.mean(0)) / p.std(0, correction=0)
    score = p.pow(3).mean(0) ** 2 + (p.pow(4).mean(0) - 3.0) ** 2 / 4
    kept: list[torch.Tensor] = []
    for index in torch.argsort(score, descending=True, stable=True).tolist():
        u = candidates[index]
        if all(float((u @ v).abs()) < 0.9 for v in kept):
            kept.append(u)
        if len(kept) == n_axes:
            break
    return torch.stack(kept)


def _centres_and_widths(y: torch.Tensor, n_centres: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres evenly spaced over the central 99.8 % of y, each with N_RIDGE_WIDTHS geometric widths.

    The narrowest width at centre c is the distance from c to its MIN_TRANSITION_SAMPLES-th
    nearest sample (at least RIDGE_WIDTHS[0]); the widest is RIDGE_WIDTHS[1] or that, if larger.
    """
    lo, hi = torch.quantile(y, torch.tensor([0.001, 0.999], dtype=y.dtype, device=y.device))
    centres = torch.linspace(float(lo), float(hi), n_centres, dtype=y.dtype, device=y.device)
    k = min(MIN_TRANSITION_SAMPLES, y.numel())
    narrow = torch.kthvalue((y[:, None] - centres).abs(), k, dim=0).values.clamp_min(RIDGE_WIDTHS[0])
    wide = narrow.clamp_min(RIDGE_WIDTHS[1])
    steps = torch.linspace(0.0, 1.0, N_RIDGE_WIDTHS, dtype=y.dtype, device=y.device)
    widths = narrow[:, None] * (wide / narrow)[:, None] ** steps
    return centres.repeat_interleave(N_RIDGE_WIDTHS), widths.flatten()


def _random_directions(n: int, dim: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n unit vectors uniform on the sphere in R^dim."""
    device = generator.device if generator is not None else like.device
    u = torch.randn(n, dim, dtype=like.dtype, device=device, generator=generator).to(like.device)
    return u / u.norm(dim=1, keepdim=True)


def _network_quotient(model: torch.nn.Module, z: torch.Tensor, variances: torch.Tensor,
                      create_graph: bool) -> torch.Tensor:
    """mean |grad_x f|^2 / var f of the network's output f over z (z requires grad)."""
    f = model(z).squeeze(-1)
    (grad,) = torch.autograd.grad(f.sum(), z, create_graph=create_graph)
    return ((grad**2) / variances).sum(-1).mean() / f.var()


class _NetworkBasis:
    """h(z): the last hidden layer of a tanh network d -> W -> W, whose scalar head w . h was
    trained to minimise the Rayleigh quotient of the fit samples (module docstring)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self.size = NETWORK_WIDTH

    @classmethod
    def fit(cls, z: torch.Tensor, variances: torch.Tensor, generator: torch.Generator | None) -> _NetworkBasis:
        """Train on whitened fit samples z (|grad_x f|^2 = sum_j (d f / d z_j)^2 / Lambda_j):
        on 80 % of them, keeping the parameters whose quotient on the other 20 % was lowest
        (checked every ``NETWORK_CHECK`` steps), so that a network that starts to fit the
        gaps between samples is stopped where it still describes p_t."""
        seed = draw_seed(generator)
        n_train = max(2, int(0.8 * z.shape[0]))
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            net = torch.nn.Sequential(torch.nn.Linear(z.shape[1], NETWORK_WIDTH), torch.nn.Tanh(),
                                      torch.nn.Linear(NETWORK_WIDTH, NETWORK_WIDTH), torch.nn.Tanh()
                                      ).to(dtype=z.dtype, device=z.device)
            head = torch.nn.Linear(NETWORK_WIDTH, 1).to(dtype=z.dtype, device=z.device)
            model = torch.nn.Sequential(net, head)
            optimiser = torch.optim.Adam(model.parameters(), lr=NETWORK_LEARNING_RATE)
            train, check = (part.detach().clone().requires_grad_(True) for part in (z[:n_train], z[n_train:]))
            best, state = math.inf, copy.deepcopy(net.state_dict())
            for step in range(NETWORK_STEPS + 1):
                if step % NETWORK_CHECK == 0:
                    held_out = float(_network_quotient(model, check, variances, create_graph=False))
                    if held_out < best:
                        best, state = held_out, copy.deepcopy(net.state_dict())
                if step == NETWORK_STEPS:
                    break
                optimiser.zero_grad()
                _network_quotient(model, train, variances, create_graph=True).backward()
                optimiser.step()
        net.load_state_dict(state)
        net.requires_grad_(False)
        return cls(net)

    def values(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def coarse(self) -> torch.Tensor:
        """The coarser basis's columns: the first half of the hidden units."""
        return torch.arange(self.size) < self.size // 2

    def partials(self, z: torch.Tensor, order: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """First or second derivatives along each z_j, by forward-mode autograd (jvp, or a jvp of a jvp)."""
        columns = torch.arange(self.size, device=z.device)
        for j in range(z.shape[1]):
            direction = torch.zeros_like(z)
            direction[:, j] = 1.0

            def slope(w: torch.Tensor, e: torch.Tensor = direction) -> torch.Tensor:
                return torch.func.jvp(self.net, (w,), (e,))[1]

            yield columns, slope(z) if order == 1 else torch.func.jvp(slope, (z,), (direction,))[1]


class FeatureMap:
    """Whitening followed by one or more bases; values, gradients and Gram matrices in x.
    ``shortfall``: the ridge features "auto" left out of its default count for want of samples."""

    def __init__(self, whitening: Whitening, parts: list[Any], shortfall: int = 0) -> None:
        self.whitening, self.parts, self.shortfall = whitening, parts, int(shortfall)
        self.size = sum(p.size for p in parts)
        self.dim = whitening.mean.numel()

    def check(self, x: Any) -> torch.Tensor:
        x = as_float_tensor(x, "x", dtype=self.whitening.mean.dtype, device=self.whitening.mean.device)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise InputShapeError(f"x must have shape (..., {self.dim}); got {tuple(x.shape)}")
        return x

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Basis functions at x (n, d): (n, m)."""
        z = self.whitening(x)
        return torch.cat([p.values(z) for p in self.parts], dim=1)

    def coarse(self) -> torch.Tensor:
        """(m,) bool: the columns of the coarser basis that estimates the basis error (each part
        coarsened: one polynomial degree less, every other random ridge direction, half the
        network's units)."""
        return torch.cat([p.coarse().to(self.whitening.mean.device) for p in self.parts])

    def partials(self, x: torch.Tensor, order: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """For j = 0..d-1: (columns, d^order phi / d z_j^order of those columns, (n, len(columns))),
        order 1 or 2."""
        z = self.whitening(x)
        offsets = itertools.accumulate([0] + [p.size for p in self.parts])
        streams = [_shifted(p.partials(z, order), off) for p, off in zip(self.parts, offsets)]
        for pieces in zip(*streams):
            yield torch.cat([c for c, _ in pieces]), torch.cat([v for _, v in pieces], dim=1)

    def generator(self, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """L phi = Laplacian_x phi + s . grad_x phi of every basis function at x (n, d), for the
        drift s (n, d) (a score at x): shape (n, m). In whitened coordinates
        Laplacian_x phi = sum_j d^2 phi / d z_j^2 / Lambda_j and s . grad_x phi = s_z . grad_z phi
        with s_z = Lambda^{-1/2} U^T s."""
        out = x.new_zeros(x.shape[0], self.size)
        s_z = (score @ self.whitening.axes) / self.whitening.variances.sqrt()
        for j, ((cols, first), (_, second)) in enumerate(zip(self.partials(x), self.partials(x, order=2))):
            out[:, cols] += second / self.whitening.variances[j] + first * s_z[:, j : j + 1]
        return out

    def dirichlet_gram(self, x: torch.Tensor) -> torch.Tensor:
        """A_ik = mean_n grad_x phi_i . grad_x phi_k = sum_j mean(dz_j phi_i dz_j phi_k) / Lambda_j."""
        gram = x.new_zeros(self.size, self.size)
        for j, (cols, part) in enumerate(self.partials(x)):
            gram[cols[:, None], cols] += part.T @ part / self.whitening.variances[j]
        return gram / x.shape[0]

    def z_gradients(self, x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """d f / d z_j of f = phi @ coefficients (m, r): shape (n, r, d)."""
        cols_parts = list(self.partials(x))
        return torch.stack([part @ coefficients[cols] for cols, part in cols_parts], dim=-1)

    def gradients(self, x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """grad_x f of f = phi @ coefficients (m, r): shape (n, r, d)."""
        scaled = self.z_gradients(x, coefficients) / self.whitening.variances.sqrt()
        return scaled @ self.whitening.axes.T


def _shifted(stream: Iterator[tuple[torch.Tensor, torch.Tensor]], offset: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (columns, partials) stream of one basis with its columns moved by ``offset``."""
    for cols, part in stream:
        yield cols + offset, part


def basis_name(basis: str) -> str:
    return "poly+tanh" if basis == "auto" else basis


def feature_map(x_fit: torch.Tensor, basis: str, degree: int | None, n_features: int | None,
                 generator: torch.Generator | None) -> FeatureMap:
    """Whitening from the fit half and the requested basis (sizes chosen for "auto")."""
    if basis not in ("auto", "polynomial", "tanh", "poly+tanh", "network"):
        raise ValueError(f"basis must be 'auto', 'polynomial', 'tanh', 'poly+tanh' or 'network'; got {basis!r}")
    whitening = Whitening.fit(x_fit)
    z = whitening(x_fit)
    n, dim = x_fit.shape
    budget = n // (2 * SAMPLES_PER_FUNCTION) if basis == "auto" else None
    parts: list[Any] = []
    if basis == "network":
        return FeatureMap(whitening, [_HermiteBasis(dim, 1, x_fit.device),
                                       _NetworkBasis.fit(z, whitening.variances, generator)])
    if basis != "tanh":
        parts.append(_HermiteBasis(dim, degree or _auto_degree(dim, budget), x_fit.device))
    shortfall = 0
    if basis != "polynomial":
        count = n_features or _auto_features(dim, budget)
        shortfall = 0 if n_features else _auto_features(dim, None) - count
        parts.append(_RidgeBasis.fit(z, count, generator, whitening))
    return FeatureMap(whitening, parts, shortfall)


def step_probe(features: FeatureMap, x_fit: torch.Tensor, generator: torch.Generator | None) -> FeatureMap:
    """The tanh ridge features of "auto" (its default count, capped by the fit samples) in the
    whitening of ``features``: steps between modes, which a polynomial basis holds only at high
    degree (the probe of :func:`~.ritz.ritz_gap`'s basis error)."""
    budget = x_fit.shape[0] // (2 * SAMPLES_PER_FUNCTION)
    ridge = _RidgeBasis.fit(features.whitening(x_fit), _auto_features(x_fit.shape[1], budget), generator,
                            features.whitening)
    return FeatureMap(features.whitening, [ridge])


def _auto_degree(dim: int, budget: int | None) -> int:
    """Highest default degree (3 up to d = 5, 2 up to d = 60, then 1) whose basis fits the sample budget."""
    degree = 3 if dim <= 5 else 2 if dim <= 60 else 1
    while degree > 1 and budget is not None and math.comb(dim + degree, degree) - 1 > budget:
        degree -= 1
    return degree


def _auto_features(dim: int, budget: int | None) -> int:
    """Default ridge-feature count (240 in 1D, 270 otherwise), capped by the sample budget."""
    count = 240 if dim == 1 else 270
    return max(N_RIDGE_WIDTHS, min(count, budget)) if budget is not None else count
