"""HamiltonianBatch and batch_spectrum: the batched matvec against each member's own, the
batched LOBPCG against spectrum() and ARPACK shift-invert on every member, honest failure
flags, input checks, seeds."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from scorehamiltonian import (
    OU,
    VE,
    BoundaryMassWarning,
    ConvergenceError,
    ConvergenceWarning,
    ExactScore,
    GaussianMixture,
    Grid,
    HamiltonianBatch,
    InputDtypeError,
    InputShapeError,
    InsufficientMemoryError,
    NonFiniteScoreError,
    TimeRangeError,
    as_score,
    batch_spectrum,
    box_over_times,
    example,
    spectrum,
)
from scorehamiltonian.spectral import batch as batch_module
from scorehamiltonian.spectral import memory

EPS = torch.finfo(torch.float64).eps


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


CASES = {
    # name: (mixture, times, nodes per axis, box tolerance)
    "1d": (example("asymmetric"), [0.05, 0.2, 0.5, 1.5], 301, 1e-12),
    "2d": (example("four_mode_2d"), [0.3, 0.6, 1.2], 79, 1e-10),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    mixture, times, n, tol = CASES[request.param]
    grid = Grid(*box_over_times(mixture, OU(), times, tol), n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the grids resolve every p_t and hold its mass
        batch = HamiltonianBatch(ExactScore(mixture, OU()), times, grid)
    return request.param, batch


def shift_invert_reference(member, k: int) -> tuple[np.ndarray, np.ndarray]:
    """ARPACK shift-invert eigenvalues of member.to_scipy() below the Gershgorin bound, with
    the residual norms of its vectors (each value is within its residual of an eigenvalue)."""
    A = member.to_scipy()
    lo, hi = member.spectral_bounds()
    values, vectors = spla.eigsh(A, k=k, sigma=lo - 1e-8 * (hi - lo), which="LM", tol=1e-14)
    order = np.argsort(values)
    values, vectors = values[order], vectors[:, order]
    vectors = vectors / np.linalg.norm(vectors, axis=0)
    residuals = np.linalg.norm(A @ vectors - vectors * values, axis=0)
    return values, residuals


# ---------------------------------------------------------------------------------------
# The batched matvec
# ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("dim", "n"), [(1, 37), (2, 13), (3, 7)])
@pytest.mark.parametrize("order", [2, 4])
@pytest.mark.parametrize("columns", [None, 3])
def test_batched_matvec_equals_each_members_matvec(dim, n, order, columns):
    score = ExactScore(GaussianMixture([0.4, 0.6], [[-1.0] * dim, [1.0] * dim], [1.0, 2.0]), OU())
    batch = HamiltonianBatch(score, [0.1, 0.4, 2.0], Grid([-4.0] * dim, [4.0] * dim, n), order=order)
    B, N, _ = batch.shape
    V = torch.randn(B, N, *(() if columns is None else (columns,)), dtype=torch.float64, generator=seeded())
    out = batch.matvec(V)
    assert out.shape == V.shape and out.dtype == torch.float64
    for b, member in enumerate(batch.members):
        # each entry is the same few products summed in the same order: round-off at most
        bound = 4 * EPS * float(member.diagonal().norm()) * float(V[b].norm())
        assert float((out[b] - member.matvec(V[b])).abs().max()) <= bound
    assert torch.equal(batch.diagonal(), torch.stack([m.diagonal() for m in batch.members]))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_matvec_casts_to_the_batchs_dtype():
    score = ExactScore(GaussianMixture([1.0], [[0.0, 0.0]], [1.0]), OU())
    batch = HamiltonianBatch(score, [0.5, 1.0], Grid([-5.0, -5.0], [5.0, 5.0], 15), dtype=torch.float32)
    V = torch.randn(2, 225, 2, dtype=torch.float64, generator=seeded())
    out = batch.matvec(V)
    assert out.dtype == torch.float32 and batch.ground_states.dtype == torch.float32
    for b, member in enumerate(batch.members):
        assert torch.equal(out[b], member.matvec(V[b]))


# ---------------------------------------------------------------------------------------
# batch_spectrum against spectrum() and ARPACK
# ---------------------------------------------------------------------------------------


def test_batch_spectrum_agrees_with_spectrum_and_shift_invert(case):
    name, batch = case
    k = 3
    results = batch_spectrum(batch, k=k, tol=1e-9, generator=seeded(), return_eigenvectors=True)
    assert len(results) == len(batch)
    assert len({r.wall_time for r in results}) == 1
    for member, t, result in zip(batch.members, batch.times, results):
        assert result.method == f"batched lobpcg ({len(batch)} operators, fourier) at t={t:g}"
        assert result.converged.all() and result.work == result.n_matvec > 0
        ours, bound = result.eigenvalues.numpy(), result.eigenvalue_errors.numpy()
        single = spectrum(member, k=k, tol=1e-9, generator=seeded())
        assert (np.abs(ours - single.eigenvalues.numpy()) <= bound + single.eigenvalue_errors.numpy()).all()
        reference, reference_residual = shift_invert_reference(member, k)
        assert (np.abs(ours - reference) <= bound + reference_residual).all(), (name, t)
        v = result.eigenvectors
        assert v.shape == (batch.shape[1], k)
        assert torch.allclose(v.T @ v, torch.eye(k, dtype=torch.float64), atol=1e-12)
        residual = (member.matvec(v) - v * result.eigenvalues).norm(dim=0)
        assert torch.allclose(residual, result.residual_norms, rtol=1e-6, atol=1e-12)
    # members stop once converged: the easiest costs fewer matvecs than the hardest
    counts = [r.n_matvec for r in results]
    assert min(counts) < max(counts)


def test_a_start_block_close_to_converged_is_not_accepted_without_a_step():
    # bimodal at t = 2, seed 9: the start's (x - <x>) g column is within 1.5e-5 of the first
    # excited state and the random guards lie far above lambda_2, so the cluster bound of the
    # start block's Ritz values is below tol although lambda_1 is off by 1.5e-5 relative; every
    # member takes a LOBPCG step first, and its bound then holds.
    mixture = example("bimodal")
    batch = HamiltonianBatch(ExactScore(mixture, OU()), [2.0], Grid(*box_over_times(mixture, OU(), [2.0], 1e-12), 127))
    for seed in range(10):
        result = batch_spectrum(batch, k=2, tol=1e-5, generator=seeded(seed))[0]
        reference, reference_residual = shift_invert_reference(batch.members[0], 2)
        assert result.converged.all() and result.n_matvec > 9
        assert (np.abs(result.eigenvalues.numpy() - reference)
                <= result.eigenvalue_errors.numpy() + reference_residual).all()


@pytest.mark.parametrize("preconditioner", ["jacobi", None])
def test_other_preconditioners_reach_the_same_eigenvalues(preconditioner):
    mixture, times = example("bimodal"), [0.3, 1.0]
    batch = HamiltonianBatch(ExactScore(mixture, OU()), times, Grid(*box_over_times(mixture, OU(), times, 1e-12), 127))
    results = batch_spectrum(batch, k=2, preconditioner=preconditioner, generator=seeded())
    name = preconditioner or "none"
    for member, result in zip(batch.members, results):
        assert result.converged.all() and f"operators, {name})" in result.method
        reference, reference_residual = shift_invert_reference(member, 2)
        assert (np.abs(result.eigenvalues.numpy() - reference)
                <= result.eigenvalue_errors.numpy() + reference_residual).all()


def test_without_deflation_the_random_start_finds_the_same_levels():
    mixture, times = example("asymmetric"), [0.2, 0.8]
    batch = HamiltonianBatch(ExactScore(mixture, OU()), times, Grid(*box_over_times(mixture, OU(), times, 1e-12), 201))
    for member, result in zip(batch.members, batch_spectrum(batch, k=2, deflate=False, generator=seeded())):
        reference, reference_residual = shift_invert_reference(member, 2)
        assert result.converged.all()
        assert (np.abs(result.eigenvalues.numpy() - reference)
                <= result.eigenvalue_errors.numpy() + reference_residual).all()


def test_float32_batch_at_a_reachable_tol():
    mixture, times = example("bimodal"), [0.3, 1.0]
    grid = Grid(*box_over_times(mixture, OU(), times, 1e-12), 127)
    batch = HamiltonianBatch(ExactScore(mixture, OU()), times, grid, dtype=torch.float32)
    # float32 round-off, 2 eps ||diag(H) v||, is about 1.5e-4 of the gap at t = 0.3 here
    results = batch_spectrum(batch, k=2, tol=1e-3, generator=seeded(), return_eigenvectors=True)
    for member, result in zip(batch.members, results):
        assert result.converged.all() and result.eigenvectors.dtype == torch.float32
        reference, reference_residual = shift_invert_reference(member, 2)
        assert (np.abs(result.eigenvalues.numpy() - reference)
                <= result.eigenvalue_errors.numpy() + reference_residual).all()
    with pytest.raises(InputDtypeError, match="float64"):
        batch_spectrum(batch, k=2, tol=1e-8)


# ---------------------------------------------------------------------------------------
# Honest failure, input checks, seeds
# ---------------------------------------------------------------------------------------


def test_maxiter_one_is_flagged_and_can_raise(case):
    _, batch = case
    with pytest.warns(ConvergenceWarning, match="batched lobpcg .* did not reach tol"):
        results = batch_spectrum(batch, k=3, maxiter=1, generator=seeded())
    assert not any(bool(r.converged.all()) for r in results)
    for member, result in zip(batch.members, results):
        # unconverged values still lie within their residual norms of eigenvalues
        reference, reference_residual = shift_invert_reference(member, 3)
        assert (np.abs(result.eigenvalues.numpy() - reference) <= result.residual_norms.numpy()
                + reference_residual + 1e-12).all()
    with pytest.raises(ConvergenceError, match="did not reach tol"):
        batch_spectrum(batch, k=3, maxiter=1, raise_on_failure=True, generator=seeded())


def test_same_seed_gives_bit_identical_results(case):
    _, batch = case
    first, second = (batch_spectrum(batch, k=2, generator=seeded(7), return_eigenvectors=True, deflate=False)
                     for _ in range(2))
    for a, b in zip(first, second):
        for field in ("eigenvalues", "eigenvectors", "residual_norms", "eigenvalue_errors", "converged"):
            assert torch.equal(getattr(a, field), getattr(b, field))
        assert a.n_matvec == b.n_matvec


def test_bad_input_raises_the_documented_errors():
    score = ExactScore(example("bimodal"), OU())
    grid = Grid(-8.0, 8.0, 95)
    batch = HamiltonianBatch(score, [0.5, 1.0], grid)
    with pytest.raises(InputShapeError, match=r"shape \(2, 95\) or \(2, 95, m\)"):
        batch.matvec(torch.zeros(3, 95, dtype=torch.float64))
    for shape in [(2, 94), (95,), (2, 95, 1, 1)]:
        with pytest.raises(InputShapeError):
            batch.matvec(torch.zeros(shape, dtype=torch.float64))
    with pytest.raises(InputDtypeError):
        batch.matvec(torch.zeros(2, 95, dtype=torch.int64))
    with pytest.raises(InputShapeError, match="1-dimensional but the grid is 2-dimensional"):
        HamiltonianBatch(score, [0.5], Grid([-6.0, -6.0], [6.0, 6.0], 15))
    with pytest.raises(TimeRangeError, match="distinct"):
        HamiltonianBatch(score, [0.5, 1.0, 0.5], grid)
    for times in ([-0.1, 0.5], [0.5, math.nan], [math.inf]):
        with pytest.raises(TimeRangeError):
            HamiltonianBatch(score, times, grid)
    with pytest.raises(TimeRangeError, match="outside the valid time range"):
        HamiltonianBatch(ExactScore(example("bimodal"), VE(sigma_min=0.01, sigma_max=20.0)), [0.5, 1.5], grid)
    for times in ([], [[0.5, 1.0]]):
        with pytest.raises(InputShapeError):
            HamiltonianBatch(score, times, grid)
    nan_score = as_score(lambda x, t: x * math.nan, dim=1)
    with pytest.raises(NonFiniteScoreError):
        HamiltonianBatch(nan_score, [0.5, 1.0], grid)
    with pytest.raises(ValueError, match="preconditioner"):
        batch_spectrum(batch, preconditioner="multigrid")
    with pytest.raises(ValueError, match="k must"):
        batch_spectrum(batch, k=93)
    with pytest.raises(ValueError, match="maxiter"):
        batch_spectrum(batch, maxiter=0)


def test_member_warnings_name_their_time_and_the_callers_line():
    score = ExactScore(example("bimodal"), OU())
    with pytest.warns(BoundaryMassWarning, match=r"^t=(0\.5|1): the box") as record:
        HamiltonianBatch(score, [0.5, 1.0], Grid(-5.0, 5.0, 95))
    assert [str(w.message)[:4] for w in record] == ["t=0.", "t=1:"]
    assert {Path(w.filename).name for w in record} == {"test_batch.py"}


def test_jobs_that_will_not_fit_are_refused_before_any_work(monkeypatch):
    calls = []

    def counting(x, t):
        calls.append(x.shape)
        return -x

    grid = Grid(-8.0, 8.0, 95)
    batch = HamiltonianBatch(ExactScore(example("bimodal"), OU()), [0.5, 1.0], grid)
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 1024)
    with pytest.raises(InsufficientMemoryError, match="2 operators on the .* grid needs about"):
        HamiltonianBatch(as_score(counting, dim=1), [0.5, 1.0], grid)
    assert not calls
    with pytest.raises(InsufficientMemoryError, match=r"batch_spectrum\(k=3\) on 2 operators of 95 unknowns"):
        batch_spectrum(batch, k=3)


def test_whitening_falls_back_alone_for_a_semidefinite_member():
    # Member 0 definite (Cholesky), member 1 numerically semi-definite: whitened by its
    # eigendecomposition, its negative direction dropped, the other member untouched.
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=seeded()))
    G = torch.stack([Q @ torch.diag(torch.tensor([2.0, 1.0, 1.0, 0.5, 0.1], dtype=torch.float64)) @ Q.T,
                     Q @ torch.diag(torch.tensor([2.0, 1.0, 1.0, 0.5, -1e-13], dtype=torch.float64)) @ Q.T])
    kept = torch.ones(2, 5, dtype=torch.bool)
    W, Z, genuine = batch_module._whiten(G, kept)
    assert genuine.sum(1).tolist() == [5, 4]
    for j, r in enumerate((5, 4)):
        assert torch.allclose(W[j, :r] @ G[j] @ W[j, :r].T, torch.eye(r, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(Z[j].T @ Z[j], G[j], atol=1e-12)
    assert torch.allclose(W[0], torch.linalg.inv(torch.linalg.cholesky(G[0])), atol=1e-12)
    assert not W[1, 4:].any() and not Z[1, 4:].any()


def test_the_batch_applies_the_members_sparse_matrices():
    score = ExactScore(example("bimodal"), OU())
    batch = HamiltonianBatch(score, [0.5, 1.0], Grid(-8.0, 8.0, 95))
    V = torch.randn(2, 95, 2, dtype=torch.float64, generator=seeded())
    out = batch.matvec(V)
    for b, member in enumerate(batch.members):
        A = member.to_scipy()
        assert isinstance(A, sp.csr_matrix)
        reference = A @ V[b].numpy()
        assert np.abs(out[b].numpy() - reference).max() <= 8 * EPS * np.abs(A).sum(1).max() * float(V[b].abs().max())
