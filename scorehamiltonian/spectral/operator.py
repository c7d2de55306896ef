"""The Score Hamiltonian on a grid: a matrix-free operator H_h = -Laplacian_h + V.

Discretisation (THEORY section 2). -Laplacian_h is the centred finite-difference stencil of
order 2 (3 points per axis: (-1, 2, -1) / h^2) or order 4 (5 points: (1, -16, 30, -16, 1) /
(12 h^2)) with homogeneous Dirichlet conditions on the box faces (values beyond the
interior nodes are zero). Two choices of the diagonal V:

- ``form="potential"``: V = |s|^2 / 4 + div s / 2 at the nodes, the quantum potential. This
  is what the theory prescribes for any score, learned ones included; its discrete ground
  state energy is not 0 but about -h^2 / (64 sigma^4) (order 2) or -h^4 / (384 sigma^6)
  (order 4) for a Gaussian mode of width sigma (measured in notebooks/01), so its
  eigenvalues carry an O(h^order) error that must be estimated.
- ``form="ground_state"``: V = (Laplacian_h psi_0) / psi_0 with psi_0 = sqrt(p) on the grid,
  so that H_h psi_0 = 0 exactly on every grid: lambda_0 = 0 to round-off and small gaps keep
  their relative accuracy. log p comes from the score's exact ``log_prob`` when it has one,
  else from the least-squares solve of grad phi = s on the grid (:func:`log_density_on_grid`).

Steep or vanishing p (the e^{x^2} walls of Mueller-Brown, p = 0 outside a support): at a node
more than ``WALL_DEPTH`` = 60 nats below the maximum (p < 1e-26 of its peak), log p is
replaced by (max - WALL_DEPTH) - ``WALL_SLOPE`` d, d the node's distance (in nodes, taxicab)
from the nodes above that depth: beyond the e^-60 level set the density falls on by e^-2 a
node whatever it did. The operator is then exactly the ground-state form of that density
p~ (H psi_0 = 0 and the Dirichlet form hold exactly), which equals p wherever it holds mass:
lambda_1 moves by a relative amount of order e^-60 over the gap's own size, nothing float64
sees for gaps above 1e-20. What it prevents: ratios exp((phi_j - phi_i) / 2) that overflow
(log p falling by 1e5 nats between neighbours), flat deep regions (a floor), which would be
free particles with levels ~ (pi / L)^2 posing as low levels of H, and the order-4 stencil's
large negative potential where log p falls by more than 2 log 16 nats a node (its second
neighbours enter with weight -1/12): a fall of 2 nats a node is a barrier of about 1 / h^2
in either order.

Both forms are symmetric; the ground-state form (order 2) is the square-root approximation
of the generator: its off-diagonals are -1/h^2 and its Dirichlet form is
psi^T H psi = -1/2 sum_{i != j} H_ij psi0_i psi0_j (f_i - f_j)^2 with f = psi / psi0.

Matvecs run in torch on any device (v of shape (N,) or (N, m)), or with a numba kernel on
the CPU. ``to_scipy`` exports the same matrix for reference solvers. For multigrid
(:mod:`.multigrid`): ``coarsen`` gives the same H_t on a coarser grid of the box (no score
evaluations), ``residual`` applies b - (H - shift) u to row blocks, and ``smooth`` the steps
of a polynomial smoother (and the residual after them), all in one sweep over the grid on
the numba backend.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Literal

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.sparse as sp
import torch

from ..common.errors import InputShapeError, NonFiniteScoreError, ResolutionError
from ..common.threads import run_lines, run_parallel, use_numba, workers
from ..score.derivatives import DivergenceMethod
from ..score.interface import DensityScore, Score, as_score
from ..score.potential import quantum_potential
from .grid import Grid
from .memory import check_memory, estimate_memory
from .stencil import shifted_sum, stencil, stencil_lines, stencil_lines_parallel, sweep_parallel, sweep_worker
from .transfer import interpolate

__all__ = ["WALL_DEPTH", "WALL_SLOPE", "BoundaryMassWarning", "ResolutionWarning", "ScoreHamiltonian", "log_density_on_grid"]

Form = Literal["potential", "ground_state"]
Backend = Literal["auto", "torch", "numba"]

#: Below this depth (nats under the maximum) log p falls by WALL_SLOPE a node (module docstring).
WALL_DEPTH, WALL_SLOPE = 60.0, 2.0
#: Points per width of the sharpest mode below which the grid is refused, and warned about.
_MIN_POINTS_PER_WIDTH, _WARN_POINTS_PER_WIDTH = 1.0, 4.0
_CHUNK = 1 << 16
#: Lines per band of the 3D smoothing sweep (``stencil._sweep_task``): its rings then hold about
#: (32 + halos) x n2 values a plane, stored together, and stay in cache where whole planes
#: do not. On 2 threads at 128^3 (4 columns, 4 steps and the residual, order 2) the sweep
#: took 120-180 ms in whole planes, 97-100 ms in bands of 32-48 lines and 118 ms in bands
#: of 24; at 256^3 (1 column) 340 ms whole, 280 ms in bands of 64, 200-220 ms in bands of
#: 32 or 16. Order 4 (more arithmetic a node) gained nothing and lost nothing. Bands kept
#: in whole-plane rings were erratic: their rows sat at the same offset of planes 128 KiB
#: apart, and the gain came and went between processes.
_SWEEP_BAND = 32


class ResolutionWarning(UserWarning):
    """The grid spacing is coarse against the width of the sharpest mode of p_t."""


class BoundaryMassWarning(UserWarning):
    """The box cuts off probability mass: p_t is not negligible at its faces."""


def log_density_on_grid(
    score: Score, t: float, grid: Grid, scores: torch.Tensor | None = None
) -> tuple[torch.Tensor, float]:
    """log p_t at the nodes (normalised so that sum_i p_i prod h = 1) and the curl residual.

    With an exact log-density (a :class:`DensityScore`) it is used directly (residual 0).
    Otherwise phi solves the least-squares problem min sum_edges (phi_j - phi_i - b_ij)^2 over
    the grid's edges, b_ij = h (s_i + s_j) . e / 2 (trapezoid line integral of the score along
    the edge); its normal equations are the graph Laplacian with natural (Neumann)
    boundaries, diagonalised by the DCT-II on every axis (O(N log N)). The returned residual
    ||D phi - b|| / ||b|| is the part of the score no potential explains: O(h^2) for an exact
    score (trapezoid error), larger for a non-conservative field.
    """
    points = grid.points(dtype=torch.float64)
    if isinstance(score, DensityScore):
        phi = torch.cat([score.log_prob(chunk, t) for chunk in points.split(_CHUNK)])
        residual = 0.0
    else:
        s = scores if scores is not None else torch.cat([score(chunk, t) for chunk in points.split(_CHUNK)])
        phi, residual = _least_squares_potential(s.detach().to(torch.float64).cpu().numpy(), grid)
        phi = torch.from_numpy(phi)
    phi = phi - torch.logsumexp(phi, 0) - math.log(grid.cell_volume)
    return phi, residual


def _walled(log_density: torch.Tensor, grid: Grid) -> torch.Tensor:
    """log p with its deep nodes replaced by the falling wall of the module docstring."""
    level = float(log_density.max()) - WALL_DEPTH
    deep = (log_density < level).reshape(grid.n)
    if not bool(deep.any()):
        return log_density
    distance = torch.from_numpy(scipy.ndimage.distance_transform_cdt(deep.numpy(), metric="taxicab").astype(np.float64))
    wall = (level - WALL_SLOPE * distance).reshape(-1)
    return torch.where(deep.reshape(-1), wall, log_density)


def _least_squares_potential(s: np.ndarray, grid: Grid) -> tuple[np.ndarray, float]:
    field = s.reshape(*grid.n, grid.dim)
    rhs = np.zeros(grid.n)
    increments = []
    for a, h in enumerate(grid.h):
        comp = field[..., a]
        m = grid.n[a] - 1
        left, right = np.take(comp, range(m), axis=a), np.take(comp, range(1, m + 1), axis=a)
        b = 0.5 * h * (left + right)
        increments.append(b)
        idx_lo = [slice(None)] * grid.dim
        idx_hi = [slice(None)] * grid.dim
        idx_lo[a], idx_hi[a] = slice(0, m), slice(1, m + 1)
        rhs[tuple(idx_lo)] -= b
        rhs[tuple(idx_hi)] += b
    eig = np.zeros(grid.n)
    for a, m in enumerate(grid.n):
        shape = [1] * grid.dim
        shape[a] = m
        eig = eig + (4.0 * np.sin(0.5 * np.pi * np.arange(m) / m) ** 2).reshape(shape)
    coef = scipy.fft.dctn(rhs, type=2, norm="ortho")
    eig.flat[0] = 1.0
    coef = coef / eig
    coef.flat[0] = 0.0
    phi = scipy.fft.idctn(coef, type=2, norm="ortho")
    res2 = b2 = 0.0
    for a, b in enumerate(increments):
        diff = np.diff(phi, axis=a) - b
        res2 += float((diff**2).sum())
        b2 += float((b**2).sum())
    return phi.reshape(-1), math.sqrt(res2 / b2) if b2 > 0 else 0.0


class ScoreHamiltonian:
    """H_h = -Laplacian_h + V on a :class:`Grid`, from a score at time t (module docstring).

    Parameters
    ----------
    score : a :class:`Score` or callable ``score(x, t)`` with x of shape (..., d).
    t : the diffusion time (a float in the process's range).
    grid : the grid (d = 1, 2, 3; must match the score's dimension).
    order : 2 or 4, the order of the Laplacian stencil.
    form : "potential" (V = |s|^2/4 + div s/2) or "ground_state" (H psi_0 = 0 exactly).
    divergence : divergence method of the potential form (see ``quantum_potential``).
    backend : "torch", "numba" (CPU) or "auto" (numba on the CPU from
        ``NUMBA_MIN_SIZE`` = 2^12 unknowns, :func:`~..common.threads.use_numba`, else torch).
    mass_tol : warn (:class:`BoundaryMassWarning`) when the mass of p_t on the outermost
        layer of nodes exceeds this.
    dtype, device : of the matvec (float64 by default). The operator's memory
        (:func:`~.memory.estimate_memory`) is checked against the device's free memory
        before the score is evaluated (:class:`InsufficientMemoryError` when it will not fit).

    Attributes
    ----------
    potential, potential_error : V at the nodes (N,) and its error (from the divergence).
    log_density : log p_t at the nodes, normalised on the grid (N,), falling by
        ``WALL_SLOPE`` a node below ``WALL_DEPTH`` nats under its maximum (module docstring).
    ground_state : sqrt(p_t) at the nodes with unit 2-norm (N,): the exact lowest
        eigenvector of the ground-state form, an approximate one of the potential form.
    curl_residual : the relative residual of the reconstruction grad phi = s (0 with an
        exact log_prob).
    boundary_mass : the mass of p_t on the outermost layer of nodes.
    points_per_width : the sharpest mode's width (1 / sqrt of the largest curvature
        -Laplacian log p / d where p is above 1e-6 of its peak) over max h.
    """

    def __init__(
        self,
        score: Any,
        t: float,
        grid: Grid,
        order: int = 2,
        form: Form = "potential",
        divergence: DivergenceMethod = "auto",
        backend: Backend = "auto",
        mass_tol: float = 1e-7,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.score = as_score(score)
        if self.score.dim is not None and self.score.dim != grid.dim:
            raise InputShapeError(f"the score is {self.score.dim}-dimensional but the grid is {grid.dim}-dimensional")
        if form not in ("potential", "ground_state"):
            raise ValueError(f"form must be 'potential' or 'ground_state'; got {form!r}")
        if backend not in ("auto", "torch", "numba"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'numba'; got {backend!r}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if backend == "numba" and self.device.type != "cpu":
            raise ValueError("the numba backend runs on the CPU; use backend='torch' on other devices")
        self.t, self.order, self.form, self.dtype = float(t), order, form, dtype
        self.coef = stencil(order)
        self._backend_request = backend
        need = estimate_memory(grid.n, dtype=dtype)
        check_memory(need.operator + need.build, f"the operator on the {grid} grid", self.device)
        potential, self.potential_error, log_density, self.curl_residual = self._evaluate(grid, divergence)
        self._set_arrays(grid, potential, log_density)
        self._check_box(mass_tol)

    def __repr__(self) -> str:
        return (f"ScoreHamiltonian(t={self.t}, grid={self.grid}, order={self.order}, "
                f"form={self.form!r}, backend={self.backend!r})")

    def _evaluate(self, grid: Grid, divergence: DivergenceMethod) -> tuple[torch.Tensor | None, torch.Tensor,
                                                                           torch.Tensor, float]:
        """(V or None for the ground-state form, its error, log p, curl residual) from the score."""
        points = grid.points(dtype=torch.float64)
        if self.form == "ground_state":
            log_density, curl = log_density_on_grid(self.score, self.t, grid)
            return None, torch.zeros(grid.size, dtype=torch.float64), log_density, curl
        parts = [quantum_potential(self.score, chunk, self.t, divergence_method=divergence)
                 for chunk in points.split(_CHUNK)]
        scores = torch.cat([p.score for p in parts])
        log_density, curl = log_density_on_grid(self.score, self.t, grid, scores)
        return torch.cat([p.value for p in parts]), torch.cat([p.error for p in parts]), log_density, curl

    def _set_arrays(self, grid: Grid, potential: torch.Tensor | None, log_density: torch.Tensor) -> None:
        """Install the grid, log p (floored: module docstring) and V (derived from log p in the
        ground-state form)."""
        if not bool(torch.isfinite(log_density.max())):
            raise NonFiniteScoreError(f"log p_t on the {grid} grid has no finite maximum (NaN or +inf); "
                                      "check the score's log_prob on the box")
        log_density = _walled(log_density, grid)
        self.grid, self.shape = grid, (grid.size, grid.size)
        backend = self._backend_request
        if backend == "auto":
            backend = "numba" if use_numba(self.device, grid.size) else "torch"
        self.backend = backend
        h2inv = [1.0 / h**2 for h in grid.h]
        self._weights = [(a, o, self.coef[o] * h2inv[a]) for a in range(grid.dim) for o in range(1, len(self.coef))]
        center = self.coef[0] * sum(h2inv)
        if potential is None:
            potential = -(center + self._neighbour_ratios(log_density))
        self.log_density, self.potential = log_density, potential
        half = 0.5 * (log_density - log_density.max())
        self.ground_state = (torch.exp(half) / torch.exp(half).norm()).to(self.dtype).to(self.device)
        self._diag = (potential + center).to(self.dtype).to(self.device)
        # The numba kernels see the grid as (planes, n1, n2), planes along its first axis (the
        # smoothing sweep's): 1D (1, 1, n), 2D (n0, 1, n1), 3D as it is; h^-2 zero on unit axes.
        axes = {1: (None, None, 0), 2: (0, None, 1), 3: (0, 1, 2)}[grid.dim]
        self._n3 = tuple(1 if a is None else grid.n[a] for a in axes)
        h2 = np.array([0.0 if a is None else h2inv[a] for a in axes])
        self._h2inv = h2.astype(np.float64 if self.dtype == torch.float64 else np.float32)
        # A tuple, not an array: its length (the order's reach) is then known when the kernels
        # compile, which picks the fused pass for the order at no cost per line.
        self._coef = tuple(self._h2inv.dtype.type(c) for c in self.coef)

    def _neighbour_ratios(self, log_density: torch.Tensor) -> torch.Tensor:
        """sum_nb H_i,nb psi0_nb / psi0_i = sum_nb w_nb exp((phi_nb - phi_i) / 2) at every node.

        The ground-state potential is V_i = (Laplacian_h psi0)_i / psi0_i = -(c_0 sum 1/h^2 +
        this), computed from log-density differences so that psi0 never underflows.
        """
        half = (0.5 * log_density).reshape(self.grid.n)
        total = torch.zeros_like(half)
        for a, o, w in self._weights:
            m = self.grid.n[a] - o
            lo, hi = half.narrow(a, 0, m), half.narrow(a, o, m)
            total.narrow(a, o, m).add_(torch.exp(lo - hi), alpha=w)
            total.narrow(a, 0, m).add_(torch.exp(hi - lo), alpha=w)
        return total.reshape(-1)

    def _measure(self, minimum: float = _MIN_POINTS_PER_WIDTH) -> float:
        """Set ``boundary_mass`` and ``points_per_width`` (ResolutionError below ``minimum``);
        return the sharpest width."""
        p = torch.exp(self.log_density) * self.grid.cell_volume
        self.boundary_mass = float(p[self.grid.boundary_shell(1)].sum())
        phi = self.log_density.reshape(self.grid.n)
        lap = shifted_sum(phi, [(a, 1, 1.0 / h**2) for a, h in enumerate(self.grid.h)]).reshape(-1)
        lap = lap - 2.0 * sum(1.0 / h**2 for h in self.grid.h) * self.log_density
        interior = ~self.grid.boundary_shell(1) & (self.log_density > self.log_density.max() - math.log(1e6))
        curvature = float((-lap[interior]).clamp_min(0).max()) / self.grid.dim if bool(interior.any()) else 0.0
        width = 1.0 / math.sqrt(curvature) if curvature > 0 else math.inf
        self.points_per_width = width / max(self.grid.h)
        if self.points_per_width < minimum:
            raise ResolutionError(
                f"the grid (h = {max(self.grid.h):.3g}) does not resolve p_t: its sharpest mode has "
                f"width about {width:.3g}, {self.points_per_width:.2f} grid spacings; refine the grid"
            )
        return width

    def _check_box(self, mass_tol: float) -> None:
        width = self._measure()
        if self.boundary_mass > mass_tol:
            warnings.warn(
                f"the box {list(zip(self.grid.lo, self.grid.hi))} cuts off probability mass: "
                f"p_t has mass {self.boundary_mass:.3g} on the outermost layer of nodes "
                f"(tolerance {mass_tol:g}); enlarge the box",
                BoundaryMassWarning, stacklevel=3,
            )
        if self.points_per_width < _WARN_POINTS_PER_WIDTH:
            warnings.warn(
                f"coarse grid: the sharpest mode of p_t (width about {width:.3g}) spans only "
                f"{self.points_per_width:.2f} spacings h = {max(self.grid.h):.3g}; discretisation "
                "errors will be large", ResolutionWarning, stacklevel=3,
            )

    def coarsen(self, grid: Grid | None = None, min_points_per_width: float = _MIN_POINTS_PER_WIDTH) -> ScoreHamiltonian:
        """The same H_t on a coarser grid of the same box, without evaluating the score again.

        ``grid`` defaults to (n - 1) // 2 nodes per axis: for odd n the grid whose
        :meth:`Grid.refine` is this one, whose nodes are a subset of these. log p and (in the
        potential form) V are interpolated linearly to the new nodes (:mod:`.transfer`), so on
        nested grids the result equals a fresh ``ScoreHamiltonian`` on ``grid`` (log p
        exactly, V exactly); the ground-state form derives V from log p on the new grid.
        No warnings (it serves solvers: multigrid levels, nested iteration); raises
        :class:`ResolutionError` when the sharpest mode of p_t spans fewer than
        ``min_points_per_width`` new spacings (by default the constructor's limit, 1),
        ValueError when an axis would have fewer than 3 nodes or the box differs.
        """
        grid = grid if grid is not None else Grid(self.grid.lo, self.grid.hi, [(n - 1) // 2 for n in self.grid.n])
        if grid.lo != self.grid.lo or grid.hi != self.grid.hi:
            raise ValueError(f"coarsen keeps the box {self.grid.lo}, {self.grid.hi}; got {grid}")

        def to_grid(values: torch.Tensor) -> torch.Tensor:
            return interpolate(values.reshape(1, *self.grid.n), grid.n).reshape(-1)

        coarse = copy.copy(self)
        coarse._backend_request = self.backend
        log_density = to_grid(self.log_density)
        log_density = log_density - torch.logsumexp(log_density, 0) - math.log(grid.cell_volume)
        coarse.potential_error = to_grid(self.potential_error)
        coarse._set_arrays(grid, to_grid(self.potential) if self.form == "potential" else None, log_density)
        coarse._measure(min_points_per_width)
        return coarse

    def matvec(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """H v for v of shape (N,) or (N, m), in the operator's dtype and device. A column-major
        (N, m) block (``v.T`` contiguous) is used in place; the result is column-major, written
        into ``out`` when given (same shape, column-major, the operator's dtype and device)."""
        if v.shape[0] != self.shape[0] or v.ndim not in (1, 2):
            raise ValueError(f"matvec needs shape ({self.shape[0]},) or ({self.shape[0]}, m); got {tuple(v.shape)}")
        rows = v.reshape(self.shape[0], -1).to(dtype=self.dtype, device=self.device).T.contiguous()
        target = torch.empty_like(rows) if out is None else out.reshape(rows.shape[::-1]).T
        if out is not None and not (target.is_contiguous() and target.dtype == self.dtype
                                    and target.device == self.device and target.data_ptr() == out.data_ptr()):
            raise ValueError("matvec's out must be a column-major (N, m) tensor of the operator's dtype and device")
        if self.backend == "numba":
            self._pass(rows, target)
        else:
            u = rows.reshape(-1, *self.grid.n)
            weights = [(a + 1, o, w) for a, o, w in self._weights]
            torch.add(self._diag.reshape(1, *self.grid.n) * u, shifted_sum(u, weights),
                      out=target.reshape(u.shape))
        return target.T.reshape(v.shape) if out is None else out

    def _pass(self, u: torch.Tensor, out: torch.Tensor) -> None:
        """out = H u for contiguous (m, N) row blocks: one numba pass (``stencil_lines``), on one
        thread when small, else in parallel chunks (a few per thread, for balance)."""
        arrays = [t.detach().numpy().reshape(t.shape[0], *self._n3) for t in (u, out)]
        run_lines(stencil_lines, stencil_lines_parallel, u.numel(), u.shape[0] * self._n3[0] * self._n3[1], arrays[0],
                  self._diag.numpy().reshape(self._n3), self._coef, self._h2inv, arrays[1])

    def residual(self, u: torch.Tensor, b: torch.Tensor, shift: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """b - (H - shift) u for row blocks u, b of shape (m, N) (one column per row,
        contiguous); written to ``out`` when given."""
        out = torch.empty_like(u) if out is None else out
        return torch.sub(b, self.matvec(u.T).T, out=out).add_(u, alpha=shift)

    def smooth(self, b: torch.Tensor, shift: float, dinv: torch.Tensor, steps: list[tuple[float, float]],
               out: torch.Tensor, x0: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``len(steps)`` steps (alpha_t, beta_t) of a polynomial (Chebyshev / Jacobi) smoother
        for (H - shift) x = b, on row blocks (m, N) (one column per row, contiguous):
        d_t = alpha_t d_{t-1} + beta_t dinv (b - (H - shift) x_{t-1}), x_t = x_{t-1} + d_t,
        from x_0 = x0 (alpha_0 must be 0: there is no d_{-1}), or from x_0 = 0 when x0 is None
        (x_1 = d_1 = beta_0 dinv b, no matvec; alpha_0 unused). The last iterate is written to
        ``out``; with ``residual``, b - (H - shift) out is written there too. On the numba
        backend every step and the residual run in one sweep over the grid
        (:func:`~.stencil._sweep_task`: b, dinv and the diagonal are read from memory once, not once
        per step); in torch, one step after another. ``out`` and ``residual`` must not alias
        x0, b or each other. Returns ``out``."""
        if not steps or (x0 is not None and steps[0][0] != 0.0):
            raise ValueError(f"smooth needs at least one step, the first with alpha = 0 from a given x0; got {steps}")
        blocks = [t for t in (b, out, x0, residual) if t is not None]
        if not all(t.shape == b.shape and t.ndim == 2 and t.shape[1] == self.shape[0] and t.is_contiguous()
                   and t.dtype == self.dtype and t.device == self.device for t in blocks):
            raise ValueError(f"smooth takes contiguous (m, {self.shape[0]}) row blocks of the operator's dtype and "
                             f"device; got {[(tuple(t.shape), t.dtype, str(t.device)) for t in blocks]}")
        written = [t.data_ptr() for t in (out, residual) if t is not None]
        if len(set(written)) < len(written) or set(written) & {t.data_ptr() for t in (b, x0) if t is not None}:
            raise ValueError("smooth's out and residual must not alias x0, b or each other")
        if self.backend == "numba":
            self._sweep(b, shift, dinv, steps, out, x0, residual)
            return out
        d, r = torch.empty_like(b), torch.empty_like(b)
        if x0 is None:
            torch.mul(b, dinv, out=out).mul_(steps[0][1])
            d.copy_(out)
        else:
            out.copy_(x0)
        for alpha, beta in steps[1 if x0 is None else 0:]:
            self.residual(out, b, shift, out=r)
            if alpha == 0.0:
                torch.mul(r, dinv, out=d).mul_(beta)
            else:
                d.mul_(alpha).addcmul_(r, dinv, value=beta)
            out.add_(d)
        if residual is not None:
            self.residual(out, b, shift, out=residual)
        return out

    def _sweep(self, b: torch.Tensor, shift: float, dinv: torch.Tensor, steps: list[tuple[float, float]],
               out: torch.Tensor, x0: torch.Tensor | None, residual: torch.Tensor | None) -> None:
        """:meth:`smooth` on the numba backend: tasks of (column, range of planes, band of
        about ``_SWEEP_BAND`` lines), a range of planes per worker or fewer (halos are
        recomputed, so ranges stay long against them), spread over the workers (one thread
        when small), each with its own rings (allocated per call, so that concurrent calls
        on one operator share nothing)."""
        m, planes, n1, n2 = b.shape[0], *self._n3
        reach = len(self.coef) - 1
        threads = workers(b.numel())
        bands = max(1, round(n1 / _SWEEP_BAND))
        pieces = max(1, min(threads // math.gcd(m * bands, threads), planes // (4 * (len(steps) + 1) * reach)))
        dtype = self._h2inv.dtype
        rows = min(n1, -(-n1 // bands) + 2 * len(steps) * reach)  # a band and its halos (stencil._sweep_task)
        rings = (np.empty((threads, len(steps), 2 * reach + 1, rows, n2), dtype),
                 np.empty((threads, len(steps), reach + 1, rows, n2), dtype), np.empty((threads, n2), dtype))

        def view(t: torch.Tensor) -> np.ndarray:
            return t.detach().numpy().reshape(m, *self._n3)

        alphas, betas = (np.array(column, dtype=dtype) for column in zip(*steps))
        args = (pieces, bands, x0 is None, residual is not None, view(b if x0 is None else x0), view(b),
                self._diag.numpy().reshape(self._n3), shift, dinv.numpy().reshape(self._n3), self._coef, self._h2inv,
                alphas, betas, view(out), view(out if residual is None else residual), *rings)
        if threads == 1:
            sweep_worker(0, 1, *args)
        else:
            run_parallel(threads, sweep_parallel, threads, *args)

    def diagonal(self) -> torch.Tensor:
        """The diagonal of H, (N,)."""
        return self._diag.clone()

    def spectral_bounds(self) -> tuple[float, float]:
        """Gershgorin interval [lower, upper] holding every eigenvalue of H."""
        off = sum(abs(w) * 2 for _, _, w in self._weights)
        return float(self._diag.min()) - off, float(self._diag.max()) + off

    def to_scipy(self) -> sp.csr_matrix:
        """The same matrix as a scipy CSR matrix (float64): one diagonal per axis and
        offset o, at o times the axis' stride (C order), zero where the neighbour lies
        beyond the axis' last node."""
        n = self.grid.size
        index = np.arange(n)
        diagonals, offsets = [self._diag.detach().cpu().double().numpy()], [0]
        for a, o, w in self._weights:
            stride = math.prod(self.grid.n[a + 1:])
            if o >= self.grid.n[a]:
                continue
            inside = (index[: n - o * stride] // stride) % self.grid.n[a] + o < self.grid.n[a]
            band = np.where(inside, w, 0.0)
            diagonals += [band, band]
            offsets += [o * stride, -o * stride]
        return sp.diags(diagonals, offsets, shape=(n, n), format="csr")

    def dirichlet_form(self, v: torch.Tensor, with_error: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """v^T H v / v^T v for columns v (N,) or (N, m) orthogonal to ``ground_state``,
        through the ground-state identity v^T H v = -1/2 sum_{i != j} H_ij psi0_i psi0_j
        (f_i - f_j)^2, f = v / psi0 (ground-state form only). Each term is a square (the
        order-4 stencil's second neighbours enter with a negative weight 1/16 of the first
        ones'), so a tiny gap keeps its relative accuracy where v^T H v by matvec would cancel.

        ``with_error``: also return a bound on the round-off of the computed value (same
        shape). Each term is (a - b)^2 with a = u_i e^{d/2}, b = u_j e^{-d/2}, d the
        difference of half log-densities (a correctly rounded subtraction, so relative
        error eps); a - b carries at most eps (3 + |d| / 2)(|a| + |b|) (the exponential's
        argument and result, the products, the subtraction), the square twice that times
        |a - b|, and the sums eps log2 (terms) of their total; the quotient adds the
        denominator's eps log2 N.
        """
        if self.form != "ground_state":
            raise ValueError("dirichlet_form needs form='ground_state' (H psi0 = 0 exactly)")
        cols = v.reshape(self.shape[0], -1).to(torch.float64).cpu()
        half = (0.5 * self.log_density).reshape(*self.grid.n, 1)
        u = cols.reshape(*self.grid.n, -1)
        total = torch.zeros(u.shape[-1], dtype=torch.float64)
        spread, magnitude, terms = torch.zeros_like(total), torch.zeros_like(total), 0
        for a, o, w in self._weights:
            m = self.grid.n[a] - o
            ui, uj = u.narrow(a, 0, m), u.narrow(a, o, m)
            hi_, hj = half.narrow(a, 0, m), half.narrow(a, o, m)
            # psi0_i psi0_j (f_i - f_j)^2 = (u_i e^{(h_j - h_i)/2} - u_j e^{(h_i - h_j)/2})^2
            d = hj - hi_
            left, right = ui * torch.exp(0.5 * d), uj * torch.exp(-0.5 * d)
            diff = left - right
            total += -w * (diff**2).reshape(-1, u.shape[-1]).sum(0)
            if with_error:
                local = diff.abs() * (3 + 0.5 * d.abs()) * (left.abs() + right.abs())
                spread += abs(w) * local.reshape(-1, u.shape[-1]).sum(0)
                magnitude += abs(w) * (diff**2).reshape(-1, u.shape[-1]).sum(0)
                terms += diff[..., 0].numel()
        norm2 = (cols**2).sum(0)
        value = total / norm2

        def shaped(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(v.shape[1:]) if v.ndim == 2 else x[0]

        if not with_error:
            return shaped(value)
        eps = torch.finfo(torch.float64).eps
        error = (eps * (2 * spread + math.log2(max(terms, 2)) * magnitude) / norm2
                 + eps * math.log2(self.shape[0]) * value.abs())
        return shaped(value), shaped(error)
