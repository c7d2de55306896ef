"""Real systems that no one here wrote: two physical densities with exact references, two data sets.

Each is a :class:`System` (name, dimension, coordinates, ``sample``); the registry :data:`SYSTEMS`
and :func:`system` give them by name. Densities (THEORY sections 1, 2, 5) are
:class:`DensitySystem` s, with the unnormalised log-density of the data ``log_prob`` (torch,
differentiable), the potential where physics gives one (beta U = -log p_0 + const), exact samples,
log Z, basin probabilities and free energies by quadrature, and ``exact_score(process)``: the exact
noised score as a :class:`~.interface.DensityScore` (its ``log_prob``, score and divergence at any
(x, t), and exact samples of p_t). Data sets are :class:`DataSystem` s: a fixed train / held-out
split (the held-out rows are the reference), labels kept, no density.

- ``mueller-brown``: the Mueller-Brown potential (Mueller and Brown 1979) at beta = 0.1, in the
  standardised coordinates z = (x - M) / S, M = (-0.544, 1.395) (its mean, rounded), S = 0.229
  (the root of its mean per-coordinate variance, rounded); the reference values of the project
  use these coordinates.
- ``many-well-32``: 16 independent copies of the 2D double well of the Boltzmann-generator
  literature (Noe et al. 2019; the "many-well" of Midgley et al. 2023, FAB), pairs (x_2i, x_2i+1)
  with U(x1, x2) = x1^4 - 6 x1^2 - x1 / 2 + x2^2 / 2 (beta = 1), raw coordinates.
- ``two-moons``: scikit-learn's ``make_moons`` (noise 0.05, random_state 0; 16000 train, 4000
  held out), standardised.
- ``digits``: scikit-learn's 8 x 8 handwritten digits (1797 images bundled with the library, no
  download; 64-d, pixels 0..16), a stratified 75 / 25 split (random_state 0), standardised.

Standardisation of the data sets: z = (x - m) / S with m the training mean per coordinate and one
isotropic S, S^2 the mean per-coordinate variance of the training rows (shapes are kept).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from ..common.errors import SamplesRequiredError
from .interface import DensityScore, ExactScore
from .mixture import GaussianMixture
from .noised import NoisedDensity, ProductScore
from .processes import ForwardProcess
from .quadrature import BasinResult, EnvelopeSampler, QuadratureGap, gap_1d, steepest_descent_basins

__all__ = ["DATA_SETS", "SYSTEMS", "DataSystem", "DensitySystem", "ManyWell", "MuellerBrown", "System", "system"]


class System(ABC):
    """A built-in system: ``name``, dimension ``dim``, ``description`` (what the data are, their
    coordinates and units), ``has_density`` (an exact density: a :class:`DensitySystem`)."""

    name: str
    dim: int
    description: str
    has_density: bool = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, d={self.dim})"

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of the data p_0, shape (n, d), float64, in the system's coordinates."""

    def exact_score(self, process: ForwardProcess | None = None) -> DensityScore:
        """The exact noised score of the system (a :class:`DensityScore`); data sets have none."""
        raise SamplesRequiredError(f"{self.name} is a data set with no exact density: train a model on its "
                                   "samples (system.train) and attach them with as_score(model, data=system.train)")


class DensitySystem(System):
    """A system with an exact density p_0 proportional to exp(log_prob) (nats, system coordinates).

    Subclasses set ``log_z`` (log int exp(log_prob) dz, with ``log_z_error``), implement
    :meth:`log_prob`, :meth:`sample` (exact) and :meth:`exact_score`, and give :meth:`basins`.
    """

    has_density = True
    log_z: float
    log_z_error: float

    @abstractmethod
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p_0(x) (nats) at x (..., d) in system coordinates; differentiable."""

    @abstractmethod
    def basins(self) -> BasinResult:
        """Basin probabilities and free energies by quadrature."""


# -- Mueller-Brown --------------------------------------------------------------------------------

#: Mueller-Brown parameters (Mueller and Brown 1979): U = sum_k A_k exp(a_k dx^2 + b_k dx dy + c_k dy^2),
#: dx = x - x0_k, dy = y - y0_k.
MB_PARAMETERS = {
    "A": (-200.0, -100.0, -170.0, 15.0), "a": (-1.0, -1.0, -6.5, 0.7), "b": (0.0, 0.0, 11.0, 0.6),
    "c": (-10.0, -10.0, -6.5, 0.7), "x0": (1.0, 0.0, -0.5, -1.0), "y0": (0.0, 0.5, 1.5, 1.0),
}
#: The named minima (physical coordinates), in the order of :meth:`MuellerBrown.basins`.
MB_MINIMA = {"A": (-0.558, 1.442), "B": (0.623, 0.028), "C": (-0.050, 0.467)}


def mueller_brown_potential(xy: torch.Tensor) -> torch.Tensor:
    """U(x, y) of Mueller and Brown (energy units of the paper) at xy (..., 2) in physical units."""
    p = {k: torch.tensor(v, dtype=xy.dtype, device=xy.device) for k, v in MB_PARAMETERS.items()}
    dx, dy = xy[..., 0, None] - p["x0"], xy[..., 1, None] - p["y0"]
    return (p["A"] * torch.exp(p["a"] * dx * dx + p["b"] * dx * dy + p["c"] * dy * dy)).sum(-1)


class MuellerBrown(DensitySystem):
    """The Mueller-Brown density p_0 proportional to exp(-beta U) at beta = 0.1, in z = (x - M) / S.

    ``to_physical(z) = M + S z``; ``potential(z)`` = U(M + S z); ``log_prob(z) = -beta U(M + S z)``
    (a density in z: the Jacobian S^2 is in ``log_z``). The exact score is a :class:`NoisedDensity`
    on the box ``box`` (z), where log p_0 falls 55 nats below its maximum or more on the faces.
    Basins: steepest descent on a grid of spacing ``basin_spacing`` in physical units (nodes at
    multiples of it), the rule of the project's reference; their error is the change on a grid of
    twice the spacing. The rule is a grid rule: continuous gradient-flow basins differ by about
    1 % for C (measured: A 0.97438, B 0.02241, C 0.00321 by RK2 flows from a 0.004 grid).
    """

    name, dim, beta = "mueller-brown", 2, 0.1
    mean, scale = (-0.544, 1.395), 0.229
    box = ((-13.5, -13.5), (9.5, 9.5))
    #: Physical box of the basin grid: all but about 1e-17 of the mass (log p_0 within 40 of its maximum).
    basin_box = ((-3.3, -1.3), (1.5, 3.3))
    basin_spacing = 0.002
    description = ("Mueller-Brown potential at beta = 0.1 (standard parameters), 2-d, in standardised "
                   "coordinates z = (x - M) / S, M = (-0.544, 1.395), S = 0.229")

    def __init__(self) -> None:
        reference = NoisedDensity(self.log_prob, *self.box)
        self.log_z, self.log_z_error, self.width = reference.log_z, reference.log_z_error, reference.width
        self._sampler = EnvelopeSampler(self.log_prob, *self.box, cell=self.width)
        reference.sampler = self._sampler
        self._scores = {repr(reference.process): reference}
        self._basins: BasinResult | None = None

    def to_physical(self, z: torch.Tensor) -> torch.Tensor:
        """x = M + S z (physical Mueller-Brown coordinates)."""
        return torch.tensor(self.mean, dtype=z.dtype, device=z.device) + self.scale * z

    def from_physical(self, x: torch.Tensor) -> torch.Tensor:
        """z = (x - M) / S."""
        return (x - torch.tensor(self.mean, dtype=x.dtype, device=x.device)) / self.scale

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """U at the physical point M + S z (the paper's energy units)."""
        return mueller_brown_potential(self.to_physical(z))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """-beta U(M + S z): log p_0 in z up to the constant ``log_z``."""
        return -self.beta * self.potential(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws of p_0 in z (rejection under a checked grid envelope, :class:`EnvelopeSampler`)."""
        return self._sampler(int(n), generator)

    def exact_score(self, process: ForwardProcess | None = None) -> NoisedDensity:
        """The exact score of p_t for ``process`` (OU by default) in z: a :class:`NoisedDensity`."""
        key = repr(process) if process is not None else next(iter(self._scores))
        if key not in self._scores:
            self._scores[key] = NoisedDensity(self.log_prob, *self.box, process, width=self.width, sampler=self._sampler)
        return self._scores[key]

    def basins(self) -> BasinResult:
        """Probabilities of the basins of A, B, C (:func:`.quadrature.steepest_descent_basins` of U on
        the physical grid ``basin_spacing`` over ``basin_box``), computed once (seconds)."""
        if self._basins is None:
            coarse, fine = self._basin_masses(2 * self.basin_spacing), self._basin_masses(self.basin_spacing)
            probabilities = torch.tensor(fine[0], dtype=torch.float64)
            errors = (probabilities - torch.tensor(coarse[0], dtype=torch.float64)).abs()
            self._basins = BasinResult(tuple(MB_MINIMA), torch.tensor(fine[1], dtype=torch.float64), probabilities,
                                       errors, other=fine[2], spacing=self.basin_spacing,
                                       rule="8-neighbour steepest descent of U on a physical grid, nodes at "
                                            "multiples of the spacing")
        return self._basins

    def basin_of(self, z: torch.Tensor) -> torch.Tensor:
        """The basin (0 = A, 1 = B, 2 = C, 3 = other or outside ``basin_box``) of points z (..., 2):
        that of the nearest node of the grid of :meth:`basins`."""
        self.basins()
        origin, h, index = self._basin_map
        nodes = torch.round((self.to_physical(z.detach().to(torch.float64)) - origin) / h).long()
        inside = ((nodes >= 0) & (nodes < torch.tensor(index.shape))).all(-1)
        nodes = torch.minimum(nodes.clamp_min(0), torch.tensor(index.shape) - 1)
        return torch.where(inside, index[nodes[..., 0], nodes[..., 1]], torch.full_like(inside, 3, dtype=torch.long))

    def _basin_masses(self, h: float) -> tuple[list[float], list[tuple[float, float]], float]:
        """(P_A, P_B, P_C), the grid minima found, and the mass of any other grid minimum; keeps the
        grid's basin indices (0, 1, 2, 3 for other) for :meth:`basin_of`."""
        axes = [torch.arange(math.ceil(a / h), math.floor(b / h) + 1, dtype=torch.float64) * h
                for a, b in zip(*self.basin_box)]
        mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        energy = torch.cat([mueller_brown_potential(c) for c in mesh.reshape(-1, 2).split(1 << 18)]).reshape(mesh.shape[:-1])
        labels = steepest_descent_basins(energy).reshape(-1)
        weights = torch.exp(-self.beta * (energy - energy.min())).reshape(-1)
        flat = mesh.reshape(-1, 2)
        roots, inverse = torch.unique(labels, return_inverse=True)
        distance = torch.cdist(flat[roots], torch.tensor(list(MB_MINIMA.values()), dtype=torch.float64))
        basin = torch.where(distance.min(1).values < 4 * h, distance.argmin(1), torch.full_like(roots, 3))
        mass = torch.zeros(4, dtype=torch.float64).index_add_(0, basin[inverse], weights) / float(weights.sum())
        found = [tuple(flat[roots[basin == k][0]].tolist()) if bool((basin == k).any()) else (math.nan, math.nan)
                 for k in range(3)]
        self._basin_map = (torch.tensor([axes[0][0], axes[1][0]]), h, basin[inverse].reshape(energy.shape))
        return mass[:3].tolist(), found, float(mass[3])


# -- many-well ------------------------------------------------------------------------------------

#: The double well of Noe et al. (2019) and FAB (Midgley et al. 2023): U = a x1 + b x1^2 + c x1^4 + x2^2 / 2.
DOUBLE_WELL = {"a": -0.5, "b": -6.0, "c": 1.0}


def double_well_factor(x1: torch.Tensor) -> torch.Tensor:
    """log p of the double well's first coordinate, -(a x1 + b x1^2 + c x1^4), unnormalised; x1 (n, 1) -> (n,)."""
    y = x1[..., 0]
    return -(DOUBLE_WELL["a"] * y + DOUBLE_WELL["b"] * y**2 + DOUBLE_WELL["c"] * y**4)


class ManyWell(DensitySystem):
    """``wells`` independent copies of the 2D double well, d = 2 wells, pairs (x_2i, x_2i+1).

    p_0(x) = prod_i q(x_2i) N(x_2i+1; 0, 1) with q proportional to exp(-(x^4 - 6 x^2 - x / 2)), raw
    coordinates, beta = 1. Everything factorises: log Z = wells (log Z_q + log(2 pi) / 2); the
    noised density is the product of the noised factors (:class:`ProductScore` of a 1D
    :class:`NoisedDensity` and the exact Gaussian); the gap of H_t of the product is the smallest
    of its factors' gaps, min(lambda_1(q_t), 1 / (alpha_t^2 + sigma_t^2)); the basins are the 2^wells
    sign patterns of x_2i - x*, x* = -0.0417 the top of the barrier (steepest descent in 1D), with
    probabilities prod_i P_(+/-).
    """

    box = ((-3.5,), (3.5,))
    barrier_top = -0.041670  # root of 4 x^3 - 12 x - 1/2 = 0 between the wells (refined in __init__)

    def __init__(self, wells: int = 16) -> None:
        self.wells, self.dim = int(wells), 2 * int(wells)
        self.name = f"many-well-{self.dim}"
        self.description = (f"{self.wells} copies of the 2D double well x1^4 - 6 x1^2 - x1/2 + x2^2/2 "
                            f"(Noe et al. 2019, FAB), d = {self.dim}, raw coordinates, beta = 1")
        self._factor = NoisedDensity(double_well_factor, *self.box)
        self._factor_sampler = EnvelopeSampler(double_well_factor, *self.box, cell=self._factor.width)
        self._factor.sampler = self._factor_sampler
        self.log_z_factor, self.log_z_error_factor = self._factor.log_z, self._factor.log_z_error
        self.log_z = self.wells * (self.log_z_factor + 0.5 * math.log(2 * math.pi))
        self.log_z_error = self.wells * self.log_z_error_factor
        self.barrier_top = _cubic_root_near(self.barrier_top)
        self._scores: dict[str, ProductScore] = {}

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """sum_i [log q(x_2i) - x_2i+1^2 / 2], unnormalised (log Z in ``log_z``)."""
        pairs = x.reshape(*x.shape[:-1], self.wells, 2)
        return (double_well_factor(pairs[..., :1]) - 0.5 * pairs[..., 1] ** 2).sum(-1)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) = -log_prob(x) (beta = 1)."""
        return -self.log_prob(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws: the double-well coordinates by rejection (:class:`EnvelopeSampler`), the
        Gaussian ones by randn; shape (n, d)."""
        first = self._factor_sampler(int(n) * self.wells, generator).reshape(int(n), self.wells)
        second = torch.randn(int(n), self.wells, dtype=torch.float64, generator=generator)
        return torch.stack([first, second], -1).reshape(int(n), self.dim)

    def exact_score(self, process: ForwardProcess | None = None) -> ProductScore:
        """The exact score of p_t: the product of the noised double-well and Gaussian factors."""
        factor = self._factor if process is None else NoisedDensity(double_well_factor, *self.box, process,
                                                                   width=self._factor.width)
        key = repr(factor.process)
        if key not in self._scores:
            gauss = ExactScore(GaussianMixture([1.0], [[0.0]], [1.0]), factor.process)
            index = torch.arange(self.dim).reshape(self.wells, 2)
            self._scores[key] = ProductScore([factor, gauss], [index[:, :1], index[:, 1:]], sampler=self.sample)
        return self._scores[key]

    def factor_probabilities(self) -> tuple[float, float, float]:
        """(P_+, P_-, error) of one double-well factor: the mass right / left of the barrier top,
        by the same trapezoid rule as log Z; the error from a grid of half the spacing."""
        return _split_mass(self._factor, self.barrier_top)

    def basins(self) -> BasinResult:
        """The two basins of one factor (deep x1 > x*, shallow x1 < x*); a sign pattern with k
        shallow wells has probability P_+^(wells - k) P_-^k and free energy k log(P_+ / P_-)."""
        plus, minus, error = self.factor_probabilities()
        minima = torch.tensor([[_cubic_root_near(1.7)], [_cubic_root_near(-1.7)]], dtype=torch.float64)
        return BasinResult(("deep", "shallow"), minima, torch.tensor([plus, minus], dtype=torch.float64),
                           torch.tensor([error, error], dtype=torch.float64), other=0.0,
                           spacing=self._factor.width * self._factor.spacing,
                           rule="x1 right / left of the barrier top x* (1D steepest descent), per factor")

    def basin_of(self, x: torch.Tensor) -> torch.Tensor:
        """The number of shallow wells (x_2i < x*) of each point x (..., d)."""
        return (x.reshape(*x.shape[:-1], self.wells, 2)[..., 0] < self.barrier_top).sum(-1)

    def gap(self, t: float, process: ForwardProcess | None = None) -> QuadratureGap:
        """lambda_1 of H_t of the product: min over factors (module docstring), the double-well
        factor's by :func:`gap_1d` on its exact noised log-density, the Gaussian's 1 / (alpha^2 + sigma^2)."""
        score = self.exact_score(process)
        factor = score.factors[0]
        alpha, sigma = float(factor.process.alpha(t)), float(factor.process.sigma(t))
        lo = alpha * self.box[0][0] - 8.0 * sigma
        hi = alpha * self.box[1][0] + 8.0 * sigma
        gauss = 1.0 / (alpha**2 + sigma**2)
        well = gap_1d(lambda x: factor.log_prob(x, t), lo, hi)
        return well if well.value <= gauss else QuadratureGap(gauss, 0.0, (gauss,) * 3, well.elements)


def _cubic_root_near(x: float) -> float:
    """The stationary point of the double well's x1 potential near x: Newton on 4 c x^3 + 2 b x + a."""
    a, b, c = DOUBLE_WELL["a"], DOUBLE_WELL["b"], DOUBLE_WELL["c"]
    for _ in range(50):
        x -= (4 * c * x**3 + 2 * b * x + a) / (12 * c * x**2 + 2 * b)
    return x


def _split_mass(density: NoisedDensity, cut: float) -> tuple[float, float, float]:
    """Mass of a normalised 1D :class:`NoisedDensity`'s p_0 right and left of ``cut`` (trapezoid with
    the cut node shared half and half) and the change on a grid of half the spacing."""
    def split(refine: float) -> float:
        step = density.width * density.spacing * refine
        y = torch.arange(cut, density.hi[0] + step, step, dtype=torch.float64)
        w = torch.exp(density.function(y[:, None]) - density.log_z) * step
        w[0] *= 0.5
        return float(w.sum())

    right = split(1.0)
    return right, 1.0 - right, abs(split(0.5) - right)


# -- data sets ------------------------------------------------------------------------------------


class DataSystem(System):
    """A data set: ``train`` (N, d) and ``held_out`` (M, d) float64 rows in standardised coordinates
    (module docstring), ``train_labels`` / ``held_out_labels`` (int64), ``mean`` and ``scale`` of
    the standardisation (``to_physical(z) = mean + scale z``). No density: ``sample`` draws rows of
    ``train`` with replacement, and :meth:`exact_score` raises."""

    def __init__(self, name: str, description: str, x_train: Any, y_train: Any, x_held: Any, y_held: Any) -> None:
        train = torch.as_tensor(x_train, dtype=torch.float64)
        self.name, self.description, self.dim = name, description, int(train.shape[1])
        self.mean = train.mean(0)
        self.scale = float(((train - self.mean) ** 2).mean().sqrt())
        self.train = (train - self.mean) / self.scale
        self.held_out = (torch.as_tensor(x_held, dtype=torch.float64) - self.mean) / self.scale
        self.train_labels = torch.as_tensor(y_train, dtype=torch.int64)
        self.held_out_labels = torch.as_tensor(y_held, dtype=torch.int64)

    def to_physical(self, z: torch.Tensor) -> torch.Tensor:
        """The data's own units: mean + scale z."""
        return self.mean.to(z) + self.scale * z

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n rows of ``train`` drawn with replacement, shape (n, d)."""
        return self.train[torch.randint(0, self.train.shape[0], (int(n),), generator=generator)]


def two_moons() -> DataSystem:
    """scikit-learn's make_moons: 20000 points, noise 0.05, random_state 0; the first 16000 train."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=20000, noise=0.05, random_state=0)
    return DataSystem("two-moons", "scikit-learn make_moons (noise 0.05, random_state 0), 2-d, standardised",
                      x[:16000], y[:16000], x[16000:], y[16000:])


def digits() -> DataSystem:
    """scikit-learn's 8 x 8 digits (1797 images, bundled), a stratified 75 / 25 split, random_state 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_held, y_train, y_held = train_test_split(data.data, data.target, test_size=0.25, random_state=0,
                                                        stratify=data.target)
    return DataSystem("digits", "scikit-learn 8 x 8 handwritten digits (pixels 0..16), 64-d, standardised",
                      x_train, y_train, x_held, y_held)


#: The systems of :data:`SYSTEMS` that are data sets (:class:`DataSystem`: no density).
DATA_SETS = ("two-moons", "digits")

SYSTEMS: dict[str, Callable[[], System]] = {
    "mueller-brown": MuellerBrown,
    "many-well-32": ManyWell,
    "two-moons": two_moons,
    "digits": digits,
}


@functools.cache
def system(name: str) -> System:
    """The built-in system called ``name`` (one of :data:`SYSTEMS`), built once per process."""
    try:
        return SYSTEMS[name]()
    except KeyError:
        raise KeyError(f"unknown system {name!r}; choose one of {sorted(SYSTEMS)}") from None
