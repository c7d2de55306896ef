"""The grid Score Hamiltonian: stencils, both forms, reconstruction of log p, input checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla
import torch

from scorehamiltonian import (
    OU,
    ExactScore,
    GaussianMixture,
    NonFiniteScoreError,
    ResolutionError,
    as_score,
)
from scorehamiltonian.score.examples import four_mode_2d
from scorehamiltonian.spectral import operator
from scorehamiltonian.spectral.grid import (
    Grid,
    box_from_mixture,
    box_from_samples,
    box_over_times,
    mixture_mass_outside,
)
from scorehamiltonian.spectral.operator import BoundaryMassWarning, ResolutionWarning, ScoreHamiltonian

from ..conftest import random_mixture


def lowest(H: ScoreHamiltonian, k: int) -> np.ndarray:
    """Reference eigenvalues of the exported matrix (dense below 3000 unknowns)."""
    a = H.to_scipy()
    if a.shape[0] <= 3000:
        return np.linalg.eigvalsh(a.toarray())[:k]
    lo, _ = H.spectral_bounds()
    return np.sort(sla.eigsh(a, k=k, sigma=lo - 1.0, which="LM", return_eigenvectors=False))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dim, n", [(1, 37), (2, 13), (3, 7), (2, 3), (3, 4)])
@pytest.mark.parametrize("order", [2, 4])
def test_matvec_backends_agree_with_the_sparse_matrix(dim, n, order):
    """Both backends against the sparse matrix, including lines shorter than the stencil
    (n = 3, 4 at order 4: the numba kernel's fused interior pass is empty, every node an end
    node)."""
    score = ExactScore(GaussianMixture([0.4, 0.6], [[-1.0] * dim, [1.0] * dim], [1.0, 2.0]))
    half = 4.0 if n > 5 else 1.5  # a small box keeps the tiny grids above the resolution floor
    grid = Grid([-half] * dim, [half] * dim, n)
    x = torch.randn(grid.size, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ops = [ScoreHamiltonian(score, 0.3, grid, order=order, backend=b) for b in ("torch", "numba")]
    ref = ops[0].to_scipy() @ x.numpy()
    for op in ops:
        np.testing.assert_allclose(op.matvec(x).numpy(), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
        np.testing.assert_allclose(op.matvec(x[:, 0]).numpy(), ref[:, 0], rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(ops[0].diagonal().numpy(), ops[0].to_scipy().diagonal())
    lo, hi = ops[0].spectral_bounds()
    w = np.linalg.eigvalsh(ops[0].to_scipy().toarray())
    assert lo <= w[0] and w[-1] <= hi


@pytest.mark.filterwarnings("ignore::scorehamiltonian.spectral.operator.ResolutionWarning")
@pytest.mark.parametrize("form", ["potential", "ground_state"])
@pytest.mark.parametrize("order", [2, 4])
def test_gaussian_levels_converge_at_the_stencil_order(form, order):
    # p = N(0, diag(nu)) in 2D: levels n1 / nu1 + n2 / nu2 (THEORY section 2).
    nu = (0.5, 1.2)
    score = ExactScore(GaussianMixture([1.0], [[0.0, 0.0]], [list(nu)]))
    exact = np.array([0.0, 1 / nu[1], min(1 / nu[0], 2 / nu[1])])
    errors, spacings = [], []
    grid = Grid([-7.0, -10.0], [7.0, 10.0], [21, 31])
    for _ in range(3):
        H = ScoreHamiltonian(score, 0.0, grid, order=order, form=form)
        w = lowest(H, 3)
        errors.append(np.abs(w - exact)[1:].max() if form == "ground_state" else np.abs(w - exact).max())
        spacings.append(max(grid.h))
        grid = grid.refine()
    observed = math.log(errors[-2] / errors[-1]) / math.log(spacings[-2] / spacings[-1])
    assert abs(observed - order) < 0.5, f"observed order {observed:.2f} for a stencil of order {order}"
    if form == "ground_state":
        assert abs(w[0]) < 1e-10


def test_ground_state_form_keeps_lambda0_zero_and_potential_form_does_not():
    score = ExactScore(four_mode_2d())
    lo, hi = box_from_mixture(score.mixture, 1e-10)
    grid = Grid(lo, hi, 63)
    gs = ScoreHamiltonian(score, 0.0, grid, form="ground_state")
    pot = ScoreHamiltonian(score, 0.0, grid, form="potential")
    w_gs, w_pot = lowest(gs, 2), lowest(pot, 2)
    assert abs(w_gs[0]) < 1e-11
    assert w_pot[0] < -1e-3  # about -h^2 / (16 sigma^4) per sharp mode
    # The ground state is the exact eigenvector of the ground-state form.
    r = gs.matvec(gs.ground_state)
    assert float(r.norm()) < 1e-10 * float(gs.diagonal().abs().max())


def test_non_conservative_field_has_a_clearly_nonzero_lambda0():
    # s = -x + c R x, R a rotation by 90 degrees: V = (1 + c^2) |x|^2 / 4 - 1, a harmonic
    # oscillator with lambda_0 = sqrt(1 + c^2) - 1 exactly (zero for c = 0).
    c = 1.0
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    field = as_score(lambda x, t: -x + c * x @ rot.T, dim=2)
    grid = Grid([-8.0, -8.0], [8.0, 8.0], 63)
    H = ScoreHamiltonian(field, 0.5, grid)
    w = lowest(H, 1)
    assert abs(w[0] - (math.sqrt(1 + c**2) - 1)) < 5e-3
    assert H.curl_residual > 0.3
    conservative = ScoreHamiltonian(as_score(lambda x, t: -x, dim=2), 0.5, grid)
    assert abs(lowest(conservative, 1)[0]) < 5e-3 and conservative.curl_residual < 1e-12


def test_reconstructed_log_density_converges_at_second_order():
    exact = ExactScore(random_mixture(2, k=2, seed=11))
    opaque = as_score(lambda x, t: exact(x, t), dim=2)
    lo, hi = box_from_mixture(exact.marginal(0.2), 1e-9)
    errors, grid = [], Grid(lo, hi, 41)
    for _ in range(3):
        H = ScoreHamiltonian(opaque, 0.2, grid, form="ground_state")
        ref = ScoreHamiltonian(exact, 0.2, grid, form="ground_state")
        p = torch.exp(ref.log_density) * grid.cell_volume
        errors.append(float((p * (H.log_density - ref.log_density).abs()).sum()))
        assert H.curl_residual < 0.05
        grid = grid.refine()
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(3.0 < r < 5.0 for r in ratios), ratios


def test_dirichlet_form_matches_the_rayleigh_quotient():
    score = ExactScore(random_mixture(2, seed=3))
    lo, hi = box_from_mixture(score.mixture, 1e-10)
    H = ScoreHamiltonian(score, 0.0, Grid(lo, hi, 55), form="ground_state")
    v = torch.randn(H.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = v - H.ground_state[:, None] * (H.ground_state @ v)
    want = (v * H.matvec(v)).sum(0) / (v * v).sum(0)
    torch.testing.assert_close(H.dirichlet_form(v), want, rtol=1e-10, atol=0)
    assert bool((H.dirichlet_form(v) > 0).all())


def test_a_box_that_cuts_the_mass_warns_with_the_figure():
    score = ExactScore(GaussianMixture([1.0], [[0.0]], [[1.0]]))
    with pytest.warns(BoundaryMassWarning, match=r"mass [0-9.e-]+ on the outermost layer"):
        ScoreHamiltonian(score, 0.0, Grid(-2.0, 2.0, 81))
    lo, hi = box_from_mixture(score.mixture, 1e-12)
    H = ScoreHamiltonian(score, 0.0, Grid(lo, hi, 81))
    assert H.boundary_mass < 1e-10


def test_a_grid_too_coarse_for_the_modes_warns_or_refuses():
    sharp = ExactScore(GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.01], [0.01]]))
    with pytest.warns(ResolutionWarning, match="spans only"):
        ScoreHamiltonian(sharp, 0.0, Grid(-2.0, 2.0, 99))  # h = 0.04, width 0.1
    with pytest.raises(ResolutionError, match="does not resolve"):
        ScoreHamiltonian(sharp, 0.0, Grid(-2.0, 2.0, 19))  # h = 0.2


def test_nan_from_the_score_names_where():
    def broken(x, t):
        out = -x.clone()
        out[(x[..., 0] > 0.9) & (x[..., 0] < 1.1)] = float("nan")
        return out

    with pytest.raises(NonFiniteScoreError, match=r"x = \[1\.0\]"):
        ScoreHamiltonian(as_score(broken, dim=1), 0.3, Grid(-5.0, 5.0, 49))


def test_boxes_from_mixture_and_samples_hold_the_mass():
    mix = four_mode_2d()
    lo, hi = box_from_mixture(mix, 1e-8)
    x = mix.sample(200_000, torch.Generator().manual_seed(0))
    inside = ((x > torch.tensor(lo)) & (x < torch.tensor(hi))).all(-1)
    assert bool(inside.all())
    slo, shi = box_from_samples(x[:5000], 1e-8)
    inside = ((x > torch.tensor(slo)) & (x < torch.tensor(shi))).all(-1)
    assert bool(inside.all()), "a box from 5000 samples must hold 200000 more (tail mass 1e-8)"
    assert Grid(lo, hi, 10).refine().n == (21, 21)


def test_box_over_times_holds_the_mass_at_every_time():
    """Under OU the modes shrink towards 0 and widen to 1: the common box must hold all but
    tol of p_t at each time (checked by the exact mass outside), and be the tightest such
    union: each face is some time's own face."""
    mix, times = four_mode_2d(), [0.01, 0.3, 3.0]
    lo, hi = box_over_times(mix, OU(), times, 1e-8)
    own = [box_from_mixture(mix.marginal(OU(), t), 1e-8) for t in times]
    for t in times:
        assert mixture_mass_outside(mix.marginal(OU(), t), lo, hi) <= 1e-8
    for a in range(2):
        assert lo[a] in [b[0][a] for b in own] and hi[a] in [b[1][a] for b in own]


def smoothing_by_formula(A: sp.csr_matrix, b: np.ndarray, dinv: np.ndarray, steps: list[tuple[float, float]],
                         x0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The smoother of ScoreHamiltonian.smooth step by step in numpy, A = H - shift (sparse),
    on row blocks: x_t = x_{t-1} + d_t, d_t = alpha_t d_{t-1} + beta_t dinv (b - x_{t-1} A^T)."""
    x, d = (np.zeros_like(b) if x0 is None else x0.copy()), np.zeros_like(b)
    for alpha, beta in steps:
        d = alpha * d + beta * dinv * (b - (A @ x.T).T)
        x = x + d
    return x, b - (A @ x.T).T


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("dim, n, m", [(1, 37, 3), (2, 13, 3), (3, 7, 3), (3, 4, 2), (2, 129, 3), (3, 41, 1)])
@pytest.mark.parametrize("order", [2, 4])
def test_smoothing_sweep_matches_the_step_by_step_formulas(monkeypatch, dim, n, m, order):
    """All steps (and the residual) in one sweep over the grid, on both backends: from zero
    and from x0, at degrees 1 to 4, against the steps one by one with the sparse matrix. The
    larger grids run in parallel tasks that split the planes (their halos recomputed), and
    give the same bits on one thread as on two, and in 3D in bands of lines narrower than
    their halos as in whole planes."""
    score = ExactScore(GaussianMixture([0.4, 0.6], [[-1.0] * dim, [1.0] * dim], [1.0, 2.0]))
    half = 4.0 if n > 5 else 1.5  # as in the matvec test: 4^3 keeps every node an end node at order 4
    grid = Grid([-half] * dim, [half] * dim, n)
    gen = torch.Generator().manual_seed(2)
    x0, b = (torch.randn(m, grid.size, dtype=torch.float64, generator=gen) for _ in range(2))
    dinv = torch.rand(grid.size, dtype=torch.float64, generator=gen)
    shift = -0.7
    chebyshev = [(0.0, 0.8), (0.3, 1.9), (0.45, 1.7), (0.5, 1.6)]
    for backend in ("torch", "numba"):
        H = ScoreHamiltonian(score, 0.3, grid, order=order, backend=backend)
        A = (H.to_scipy() - shift * sp.identity(grid.size)).tocsr()
        for degree, start in itertools.product((1, 2, 4), (None, x0)):
            steps = chebyshev[:degree]
            want_x, want_r = smoothing_by_formula(A, b.numpy(), dinv.numpy(), steps,
                                                  None if start is None else start.numpy())
            out, r = torch.full_like(b, math.nan), torch.full_like(b, math.nan)
            assert H.smooth(b, shift, dinv, steps, out, x0=start, residual=r) is out
            scale = np.abs(want_r).max() + np.abs(want_x).max()
            np.testing.assert_allclose(out.numpy(), want_x, rtol=0, atol=1e-12 * scale)
            np.testing.assert_allclose(r.numpy(), want_r, rtol=0, atol=1e-12 * scale)
            alone = torch.full_like(b, math.nan)
            H.smooth(b, shift, dinv, steps, alone, x0=start)
            assert torch.equal(alone, out)
            before = torch.get_num_threads()
            try:
                torch.set_num_threads(1)
                H.smooth(b, shift, dinv, steps, alone, x0=start)
            finally:
                torch.set_num_threads(before)
            assert torch.equal(alone, out)
            for band in (1, 3):
                banded = torch.full_like(b, math.nan), torch.full_like(b, math.nan)
                with monkeypatch.context() as patch:
                    patch.setattr(operator, "_SWEEP_BAND", band)
                    H.smooth(b, shift, dinv, steps, banded[0], x0=start, residual=banded[1])
                assert torch.equal(banded[0], out) and torch.equal(banded[1], r)


def float32_operator(order: int) -> tuple[ScoreHamiltonian, np.ndarray]:
    """A float32 operator on the numba backend (3D, 9^3) and its own matrix in float64."""
    dim = 3
    score = ExactScore(GaussianMixture([0.4, 0.6], [[-1.0] * dim, [1.0] * dim], [1.0, 2.0]))
    H = ScoreHamiltonian(score, 0.3, Grid([-4.0] * dim, [4.0] * dim, 9), order=order, backend="numba",
                         dtype=torch.float32)
    return H, H.to_scipy().astype(np.float64)


def float32_bound(order: int, size: np.ndarray, extra: int = 0) -> np.ndarray:
    """A sum of at most 1 + 2 dim reach (+ extra) products in float32 errs by at most that
    many float32 epsilons times the sum of their magnitudes, ``size`` (Higham's gamma_n)."""
    return (1 + 2 * 3 * (order // 2) + extra) * float(torch.finfo(torch.float32).eps) * size


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("order", [2, 4])
def test_numba_matvec_in_float32_rounds_only_at_float32(order):
    """The numba kernel compiled for a float32 operator (its coefficients float32 scalars)
    against the operator's own float32 matrix applied in float64."""
    H, A = float32_operator(order)
    x = torch.randn(2, H.shape[0], generator=torch.Generator().manual_seed(3)).to(torch.float32)
    y = H.matvec(x.T.contiguous())
    assert y.dtype == torch.float32
    X = x.double().numpy().T
    assert (np.abs(y.double().numpy() - A @ X) <= float32_bound(order, abs(A) @ np.abs(X))).all()


@pytest.mark.slow  # compiling the sweep for float32 takes about 30 s
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_numba_sweep_in_float32_rounds_only_at_float32():
    """The float32 sweep's residual b - (A - shift) x against the same in float64 from its x:
    the matvec's bound with two more terms (b and shift x)."""
    H, A = float32_operator(2)
    b = torch.randn(2, H.shape[0], generator=torch.Generator().manual_seed(4)).to(torch.float32)
    shift, dinv = -0.5, torch.full((H.shape[0],), 0.01, dtype=torch.float32)
    out, r = torch.empty_like(b), torch.empty_like(b)
    H.smooth(b, shift, dinv, [(0.0, 0.8), (0.3, 1.9)], out, residual=r)
    X, B = out.double().numpy().T, b.double().numpy().T
    size = np.abs(B) + abs(A) @ np.abs(X) + abs(shift) * np.abs(X)
    assert (np.abs(r.double().numpy().T - (B - A @ X + shift * X)) <= float32_bound(2, size, extra=2)).all()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_smoothing_refuses_aliased_or_strided_blocks_and_a_first_step_that_reads_d():
    score = ExactScore(GaussianMixture([1.0], [[0.0, 0.0]], [1.0]))
    H = ScoreHamiltonian(score, 0.3, Grid([-5.0, -5.0], [5.0, 5.0], 15))
    b, x0, out = (torch.rand(2, H.shape[0], dtype=torch.float64) for _ in range(3))
    dinv = torch.ones(H.shape[0], dtype=torch.float64)
    with pytest.raises(ValueError, match="must not alias"):
        H.smooth(b, 0.0, dinv, [(0.0, 1.0)], x0, x0=x0)
    with pytest.raises(ValueError, match="must not alias"):
        H.smooth(b, 0.0, dinv, [(0.0, 1.0)], out, residual=out)
    with pytest.raises(ValueError, match="alpha = 0"):
        H.smooth(b, 0.0, dinv, [(0.5, 1.0)], out, x0=x0)
    with pytest.raises(ValueError, match="at least one step"):
        H.smooth(b, 0.0, dinv, [], out)
    with pytest.raises(ValueError, match="contiguous"):
        H.smooth(b, 0.0, dinv, [(0.0, 1.0)], out.T.contiguous().T)  # column-major: its rows are not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        H.smooth(b, 0.0, dinv, [(0.0, 1.0)], out.float())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_residual_matches_its_formula():
    score = ExactScore(GaussianMixture([0.4, 0.6], [[-1.0, -1.0], [1.0, 1.0]], [1.0, 2.0]))
    grid = Grid([-4.0, -4.0], [4.0, 4.0], 257)  # numba backend
    gen = torch.Generator().manual_seed(3)
    u, b = (torch.randn(2, grid.size, dtype=torch.float64, generator=gen) for _ in range(2))
    H = ScoreHamiltonian(score, 0.3, grid)
    assert H.backend == "numba"
    want = b.numpy() - (H.to_scipy() @ u.numpy().T).T - 0.7 * u.numpy()
    np.testing.assert_allclose(H.residual(u, b, -0.7).numpy(), want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_matvec_takes_column_major_blocks_in_place():
    score = ExactScore(GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 2.0]]))
    H = ScoreHamiltonian(score, 0.0, Grid([-5.0, -6.0], [5.0, 6.0], 257))  # numba backend (> 2^16 nodes)
    assert H.backend == "numba"
    rows = torch.randn(3, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    column_major, row_major = rows.T, rows.T.contiguous()
    out = H.matvec(column_major)
    assert out.T.is_contiguous()
    torch.testing.assert_close(out, H.matvec(row_major), rtol=0, atol=0)
    ref = H.to_scipy() @ row_major.numpy()
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("form", ["potential", "ground_state"])
def test_coarsen_on_nested_grids_equals_a_fresh_operator(form):
    score = ExactScore(random_mixture(2, k=2, seed=5))
    lo, hi = box_from_mixture(score.marginal(0.1), 1e-8)
    fine = ScoreHamiltonian(score, 0.1, Grid(lo, hi, 63), form=form)
    coarse = fine.coarsen()
    fresh = ScoreHamiltonian(score, 0.1, Grid(lo, hi, 31), form=form)
    assert coarse.grid == fresh.grid
    torch.testing.assert_close(coarse.log_density, fresh.log_density, rtol=0, atol=1e-12)
    torch.testing.assert_close(coarse.diagonal(), fresh.diagonal(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(coarse.ground_state, fresh.ground_state, rtol=0, atol=1e-14)
    assert coarse.points_per_width == pytest.approx(fresh.points_per_width, rel=1e-12)
    v = torch.randn(coarse.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(coarse.matvec(v), fresh.matvec(v), rtol=1e-12, atol=1e-10)


def test_coarsen_refuses_a_grid_that_does_not_resolve_the_modes():
    sharp = ExactScore(GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.01], [0.01]]))
    H = ScoreHamiltonian(sharp, 0.0, Grid(-2.0, 2.0, 199))  # h = 0.02, width 0.1
    assert H.coarsen().grid.n == (99,)
    with pytest.raises(ResolutionError, match="does not resolve"):
        H.coarsen(Grid(-2.0, 2.0, 19))
    assert H.coarsen(Grid(-2.0, 2.0, 19), min_points_per_width=0.1).grid.n == (19,)
    with pytest.raises(ValueError, match="box"):
        H.coarsen(Grid(-3.0, 2.0, 99))


def test_matvec_writes_into_a_column_major_out():
    score = ExactScore(GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 2.0]]))
    for backend in ("torch", "numba"):
        H = ScoreHamiltonian(score, 0.0, Grid([-5.0, -6.0], [5.0, 6.0], 21), backend=backend)
        v = torch.randn(H.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        out = torch.empty(2, H.shape[0], dtype=torch.float64).T
        assert H.matvec(v, out=out) is out
        torch.testing.assert_close(out, H.matvec(v), rtol=0, atol=0)
        with pytest.raises(ValueError, match="column-major"):
            H.matvec(v, out=torch.empty(H.shape[0], 2, dtype=torch.float64))
