"""Grid transfers, the geometric multigrid preconditioner and nested iteration."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from scorehamiltonian import (
    ExactScore,
    GaussianMixture,
    Grid,
    ScoreHamiltonian,
    box_from_mixture,
)
from scorehamiltonian.common import threads
from scorehamiltonian.score.examples import four_mode_benchmark
from scorehamiltonian.spectral import blocks, transfer
from scorehamiltonian.spectral import ritz_update as _ritz_update
from scorehamiltonian.spectral.eigensolvers import spectrum
from scorehamiltonian.spectral.multigrid import DEGREE, Multigrid, hierarchy, rayleigh_quotient

GAUSSIAN = ExactScore(GaussianMixture([1.0], [[0.0, 0.0]], [[0.5, 1.2]]))
BOX = ([-7.0, -10.0], [7.0, 10.0])


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nodes(n: int) -> torch.Tensor:
    """The interior nodes of [0, 1] with n of them (the Grid convention)."""
    return torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)


def bump(n: tuple[int, ...]) -> torch.Tensor:
    """f = prod_a x_a (1 - x_a) on the grid with n nodes per axis, shape (1, *n); zero on the faces."""
    mesh = torch.meshgrid(*[nodes(k) for k in n], indexing="ij")
    return math.prod(x * (1 - x) for x in mesh).unsqueeze(0)


@pytest.fixture(params=[True, False], ids=["numba", "torch"])
def backend(request, monkeypatch):
    """Run a transfer test on the numba kernels (forced at any size) and on the torch path
    (any device)."""
    monkeypatch.setattr(threads, "NUMBA_MIN_SIZE", 0 if request.param else math.inf)
    return request.param


@pytest.mark.parametrize("n_coarse, n_fine", [((7,), (15,)), ((5, 6), (12, 14)), ((3, 4, 5), (7, 9, 10))])
def test_restriction_is_the_scaled_transpose_of_prolongation(backend, n_coarse, n_fine):
    u = torch.randn(2, *n_coarse, dtype=torch.float64, generator=seeded(1))
    r = torch.randn(2, *n_fine, dtype=torch.float64, generator=seeded(2))
    scale = math.prod((c + 1) / (f + 1) for c, f in zip(n_coarse, n_fine))
    lhs = scale * float((transfer.prolong(u, n_fine) * r).sum())
    rhs = float((u * transfer.restrict(r, n_coarse)).sum())
    assert abs(lhs - rhs) <= 1e-13 * (abs(lhs) + 1)


@pytest.mark.parametrize("n_coarse", [(7,), (5, 9), (3, 4, 5)])
def test_prolongation_is_exact_at_shared_nodes_and_second_order_between(backend, n_coarse):
    n_fine = tuple(2 * n + 1 for n in n_coarse)  # Grid.refine: the coarse nodes are fine nodes
    fine = transfer.prolong(bump(n_coarse), n_fine)
    shared = fine[(0, *[slice(1, None, 2)] * len(n_coarse))]
    torch.testing.assert_close(shared, bump(n_coarse)[0], rtol=0, atol=1e-15)
    # linear interpolation of f: |error| <= (h^2 / 8) sum_a max |d^2 f / dx_a^2|, |f_aa| <= 2
    h2 = max(1.0 / (n + 1) for n in n_coarse) ** 2
    assert float((fine - bump(n_fine)).abs().max()) <= h2 / 8 * 2 * len(n_coarse)


def test_interpolating_to_coarse_nested_nodes_is_injection(backend):
    fine = torch.randn(3, 15, 11, dtype=torch.float64, generator=seeded(3))
    coarse = transfer.interpolate(fine, (7, 5))
    torch.testing.assert_close(coarse, fine[:, 1::2, 1::2], rtol=0, atol=0)


@pytest.mark.parametrize("n_coarse, n_fine", [((31,), (64,)), ((20, 33), (42, 66)), ((15, 30, 20), (32, 61, 40))])
def test_numba_transfers_equal_the_torch_path(monkeypatch, n_coarse, n_fine):
    """The numba kernels (one thread and, above PARALLEL_MIN_SIZE values, parallel chunks)
    against the torch path, one axis at a time: the same weights summed in another order,
    so equal to a few ulps of the largest term; ``out`` is added to (prolong) or overwritten
    (restrict)."""
    u = torch.randn(3, *n_coarse, dtype=torch.float64, generator=seeded(5))
    r = torch.randn(3, *n_fine, dtype=torch.float64, generator=seeded(6))
    base = torch.randn(3, *n_fine, dtype=torch.float64, generator=seeded(7))
    def both_ways() -> tuple[torch.Tensor, ...]:
        into = torch.full((3, *n_coarse), math.nan, dtype=torch.float64)
        return (transfer.prolong(u, n_fine), transfer.restrict(r, n_coarse),
                transfer.prolong(u, n_fine, out=base.clone()), transfer.restrict(r, n_coarse, out=into), into)

    monkeypatch.setattr(threads, "NUMBA_MIN_SIZE", 0)
    kernels = both_ways()
    monkeypatch.setattr(threads, "NUMBA_MIN_SIZE", math.inf)
    reference = both_ways()
    for got, want in zip(kernels, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_transfers_add_into_out_and_interpolate_columns():
    u = torch.randn(2, 5, 6, dtype=torch.float64, generator=seeded(4))
    out = torch.ones(2, 11, 13, dtype=torch.float64)
    transfer.prolong(u, (11, 13), out=out)
    torch.testing.assert_close(out, 1 + transfer.prolong(u, (11, 13)), rtol=0, atol=1e-15)
    cols = u.reshape(2, -1).T
    moved = transfer.interpolate_columns(cols, (5, 6), (11, 13))
    assert moved.shape == (143, 2)
    torch.testing.assert_close(moved.T.reshape(2, 11, 13), out - 1, rtol=0, atol=1e-15)
    torch.testing.assert_close(transfer.interpolate_columns(cols[:, 0], (5, 6), (11, 13)), moved[:, 0])


def gaussian_operator(n: int, form: str = "potential", backend: str = "auto") -> ScoreHamiltonian:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ScoreHamiltonian(GAUSSIAN, 0.0, Grid(*BOX, n), form=form, backend=backend)


def shift_for(H: ScoreHamiltonian) -> float:
    """The eigensolver's rule: 1% of the energy scale 1 / width^2 below rho."""
    width = H.points_per_width * max(H.grid.h)
    return rayleigh_quotient(H) - 0.01 / width**2


def test_hierarchy_coarsens_to_the_direct_solve_size():
    H = gaussian_operator(255)
    levels = hierarchy(H)
    assert [lv.grid.n for lv in levels] == [(255, 255), (127, 127), (63, 63)]
    assert levels[-1].shape[0] <= 4096 < levels[-2].shape[0]


@pytest.mark.parametrize("degree", [2, 4])
@pytest.mark.parametrize("n", [127, 255])
def test_v_cycle_contracts_the_error_independently_of_the_grid(n, degree):
    # Local Fourier analysis of Chebyshev(2, 2) smoothing on [lambda_max / 4, lambda_max]
    # gives a smoothing factor 1 / T_2(5/3)^2 = (9/41)^2 ~ 0.05; with the coarse-grid
    # correction of a resolved potential the two-grid factor stays near 0.2 on every grid.
    # The A-norm contraction of I - B A (power iteration) must stay below 0.25 as levels are
    # added. At degree 4 the smoothing factor is 1 / T_4(5/3)^2 ~ 6e-4 and the coarse-grid
    # correction alone limits the cycle: measured 0.07 (127^2) and 0.09 (255^2), bound 0.12.
    H = gaussian_operator(n)
    sigma = shift_for(H)
    mg = Multigrid(H, sigma, degree=degree)
    assert len(mg.levels) == (2 if n == 127 else 3)

    def A(x: torch.Tensor) -> torch.Tensor:
        return H.matvec(x) - sigma * x

    e = torch.randn(H.shape[0], 1, dtype=torch.float64, generator=seeded(5))
    for _ in range(20):
        new = e - mg(A(e))
        factor = math.sqrt(float((new * A(new)).sum()) / float((e * A(e)).sum()))
        e = new / new.norm()
    assert factor < {2: 0.25, 4: 0.12}[degree]


@pytest.mark.parametrize("degree", [1, 2, 3, DEGREE])
def test_v_cycle_is_symmetric_positive_definite_and_counts_its_work(degree):
    H = gaussian_operator(255)
    mg = Multigrid(H, shift_for(H), degree=degree)
    x, y = (torch.randn(H.shape[0], 3, dtype=torch.float64, generator=seeded(s)) for s in (6, 7))
    before = mg.work
    Bx = mg(x)
    # one cycle on m = 3 columns: 2 x degree level matvecs on each level above the coarsest
    # (degree - 1 pre-smoothing, 1 residual, degree post-smoothing), weighted by its
    # unknowns, plus the coarsest solve
    per_column = sum(2 * degree * lv.weight for lv in mg.levels[:-1]) + mg._solve_work
    assert mg.work - before == pytest.approx(3 * per_column, rel=1e-12)
    By = mg(y)
    cross = (Bx * y).sum(0) - (x * By).sum(0)
    assert float(cross.abs().max()) <= 1e-12 * float(Bx.norm() * y.norm())
    assert bool(((Bx * x).sum(0) > 0).all())


@pytest.mark.parametrize("degree", [1, 2, DEGREE])
def test_v_cycle_on_the_torch_path_equals_the_numba_kernels(monkeypatch, degree):
    """The cycle other devices run (torch passes, the smoothing steps one after another
    instead of one sweep, torch transfers) against the numba kernels on the CPU: the same
    arithmetic in another order, equal to round-off relative to the result."""
    x = torch.randn(255**2, 3, dtype=torch.float64, generator=seeded(8))
    monkeypatch.setattr(threads, "NUMBA_MIN_SIZE", 0)
    fine = gaussian_operator(255, backend="numba")
    numba_mg = Multigrid(fine, shift_for(fine), degree=degree)
    kernels = numba_mg(x)
    monkeypatch.setattr(threads, "NUMBA_MIN_SIZE", math.inf)
    torch_ops = [gaussian_operator(n, backend="torch") for n in (255, 127, 63)]
    torch_mg = Multigrid(torch_ops[0], shift_for(fine), degree=degree, levels=torch_ops)
    assert [lv.H.grid.n for lv in torch_mg.levels] == [lv.H.grid.n for lv in numba_mg.levels]
    torch.testing.assert_close(torch_mg(x), kernels, rtol=0, atol=1e-12 * float(kernels.abs().max()))


def test_coarsest_shift_is_lowered_until_the_factorisation_is_positive_definite():
    H = gaussian_operator(127)
    lowest = float(np.sort(sla.eigsh(H.to_scipy(), k=1, sigma=-10.0, return_eigenvectors=False))[0])
    mg = Multigrid(H, lowest + 0.5)  # a shift above lambda_0 on every level
    coarsest = mg.levels[-1]
    coarse_lowest = sla.eigsh(coarsest.H.to_scipy(), k=1, sigma=-10.0, return_eigenvectors=False)[0]
    assert coarsest.shift < coarse_lowest
    assert not (mg._lu.U.diagonal() <= 0).any()


def four_modes(n: int) -> ScoreHamiltonian:
    """The benchmark's mixture: modes at (+-1.5, +-1.5), covariance diag(0.3^2, 0.6^2)."""
    mixture = four_mode_benchmark()
    lo, hi = box_from_mixture(mixture, 1e-12)
    return ScoreHamiltonian(ExactScore(mixture), 0.0, Grid(lo, hi, n))


def test_nested_iteration_matches_a_cold_start_within_the_bounds():
    H = four_modes(127)
    reference = np.sort(sla.eigsh(H.to_scipy(), k=4, sigma=H.spectral_bounds()[0], return_eigenvectors=False))
    nested = spectrum(H, k=2, tol=1e-7, generator=seeded())
    cold = spectrum(H, k=2, tol=1e-7, nested=False, generator=seeded())
    assert "nested iteration from 1 coarser grids" in nested.method and "nested" not in cold.method
    assert "multigrid" in nested.method
    for result in (nested, cold):
        assert result.converged.all()
        slack = 1e-13 * np.abs(reference).max()  # ARPACK's own round-off
        assert (np.abs(result.eigenvalues.numpy() - reference[:2]) <= result.eigenvalue_errors.numpy() + slack).all()
        assert result.work > result.n_matvec
    assert abs(nested.gap - cold.gap) <= nested.gap_error + cold.gap_error


def test_the_in_place_rayleigh_ritz_update_is_the_same_on_both_paths(monkeypatch):
    """LOBPCG writes each Rayleigh-Ritz update over its own blocks in place: on the CPU in one
    numba pass (``ritz_update``), on other devices by torch in ``UPDATE_CHUNKS`` column
    chunks. The torch path, in one chunk and in 16 (127^2 = 16129 columns, a remainder
    included), gives the numba path's iterations and eigenvalues to round-off."""
    H = four_modes(127)
    monkeypatch.setattr(threads, "NUMBA_MIN_SIZE", 0)
    fused = spectrum(H, k=2, tol=1e-7, generator=seeded())
    monkeypatch.setattr(threads, "NUMBA_MIN_SIZE", math.inf)
    for chunks in (1, 16):
        monkeypatch.setattr(blocks, "UPDATE_CHUNKS", chunks)
        chunked = spectrum(H, k=2, tol=1e-7, generator=seeded())
        assert chunked.n_matvec == fused.n_matvec and chunked.converged.all()
        torch.testing.assert_close(chunked.eigenvalues, fused.eigenvalues, rtol=1e-12, atol=0)


@pytest.mark.parametrize("q, r", [(4, 4), (12, 8), (9, 3)])
def test_the_numba_rayleigh_ritz_update_is_the_formula_on_any_thread_count(q, r):
    """update_rows against the dense formula (S[:r] <- CT S[:q], HS[:r] <- CT HS[:q],
    R = HS[:m] - diag(theta) S[:m] below them, and R's squared row norms) on a width that
    is no multiple of its tile or chunk and large enough for the parallel pass, with the
    same bits on one thread as on two. The norms are the squares summed one by one, tile by
    tile, chunk by chunk, to the bit: the order that makes them the same on every call."""
    m, n = 3, 3 * _ritz_update.CHUNK + 77
    g = seeded(q)
    S0, HS0 = (torch.randn(r + q + m, n, dtype=torch.float64, generator=g) for _ in range(2))
    CT = torch.randn(r, q, dtype=torch.float64, generator=g)
    theta = torch.randn(m, dtype=torch.float64, generator=g)
    S_new, HS_new = CT @ S0[:q], CT @ HS0[:q]
    R = HS_new[:m] - theta[:, None] * S_new[:m]
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            S, HS = S0.clone(), HS0.clone()
            squares = _ritz_update.update_rows(CT, S, HS, theta)
            results.append((S, HS, squares))
    finally:
        torch.set_num_threads(before)
    S, HS, squares = results[0]
    torch.testing.assert_close(S[:r], S_new, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(HS[:r], HS_new, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(HS[r : r + m], R, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(squares, (R**2).sum(1), rtol=1e-13, atol=0)
    for i, row in enumerate(HS[r : r + m].tolist()):
        chunks = []
        for start in range(0, n, _ritz_update.CHUNK):
            chunk = 0.0
            for first in range(start, min(start + _ritz_update.CHUNK, n), _ritz_update.TILE):
                tile = 0.0
                for value in row[first : min(first + _ritz_update.TILE, n)]:
                    tile += value * value
                chunk += tile
            chunks.append(chunk)
        assert squares[i].item() == sum(chunks)
    assert torch.equal(S[r:], S0[r:]) and torch.equal(HS[r + m :], HS0[r + m :])
    for a, b in zip(results[0], results[1]):
        assert torch.equal(a, b)


def test_a_warm_start_from_a_coarser_grid_replaces_nested_iteration():
    fine = four_modes(127)
    coarse = spectrum(fine.coarsen(), k=2, tol=1e-7, return_eigenvectors=True, generator=seeded())
    v0 = transfer.interpolate_columns(coarse.eigenvectors, (63, 63), (127, 127))
    warm = spectrum(fine, k=2, tol=1e-7, v0=v0, generator=seeded())
    nested = spectrum(fine, k=2, tol=1e-7, generator=seeded())
    assert "nested" not in warm.method and warm.converged.all()
    assert abs(warm.gap - nested.gap) <= warm.gap_error + nested.gap_error


def test_three_dimensional_gaussian_levels_with_the_multigrid_preconditioner():
    # p = N(0, diag(nu)): levels sum n_a / nu_a (THEORY section 2) up to O(h^2); the solver's
    # own bounds are checked against ARPACK on the same matrix.
    nu = (0.5, 0.8, 1.2)
    score = ExactScore(GaussianMixture([1.0], [[0.0] * 3], [list(nu)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H = ScoreHamiltonian(score, 0.0, Grid([-5.0, -6.5, -8.0], [5.0, 6.5, 8.0], 19), form="ground_state")
    result = spectrum(H, k=3, tol=1e-8, generator=seeded())
    assert "multigrid, 2 levels" in result.method and result.converged.all()
    reference = np.sort(sla.eigsh(H.to_scipy(), k=3, sigma=-1.0, return_eigenvectors=False))
    assert (np.abs(result.eigenvalues.numpy() - reference) <= result.eigenvalue_errors.numpy() + 1e-12).all()
    exact = np.array([0.0, 1 / nu[2], 1 / nu[1]])
    h2 = max(H.grid.h) ** 2
    assert np.abs(result.eigenvalues.numpy() - exact).max() < h2 / min(nu) ** 2


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_passes_keep_torch_thread_count(threads):
    """Numba's OpenMP layer shares the runtime with torch: its parallel passes and transfers
    run on torch's thread count and leave it as the user set it (they used to raise it to
    numba's, changing torch's results in the last bits after the first multigrid cycle)."""
    grid = Grid(*BOX, (255, 255))
    H = ScoreHamiltonian(GAUSSIAN, 0.0, grid, order=4, backend="numba")
    u = torch.rand(2, grid.size, dtype=torch.float64, generator=seeded())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        H.residual(u, u, 0.0)
        transfer.restrict(u.reshape(2, *grid.n), (127, 127))
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
