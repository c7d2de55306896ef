"""Several Score Hamiltonians H_{t_1}, ..., H_{t_B} on one grid, applied and solved at once.

A :class:`HamiltonianBatch` holds B = len(times) grid operators H_b = -Laplacian_h + V_{t_b}
(:class:`~.operator.ScoreHamiltonian`, same grid, stencil order and form; units 1 / x^2) and
applies all of them in one torch pass: for V of shape (B, N, m),
(H V)_b = diag_b * V_b + sum_axes sum_o c_o / h_a^2 (V_b shifted by +-o along axis a), with
diag_b = c_0 sum_a 1 / h_a^2 + V_{t_b} and zero values beyond the box (Dirichlet). On a GPU
the batch turns B small launches per operation into one.

:func:`batch_spectrum` finds the k lowest eigenvalues of every member with block LOBPCG run on
all members together (batched products over (B, q, N) row blocks, batched eigendecompositions
of the q x q Rayleigh-Ritz matrices, the batched matvec, a batched preconditioner) and ends,
for each member separately, with the honest check of :mod:`.eigensolvers`: the same residual
norms, error bounds, convergence flags and ConvergenceWarning / ConvergenceError as
``spectrum(member, k)``.

Conventions of the batched LOBPCG (the orthonormal-basis form of Hetmaniuk and Lehoucq 2006,
as ``lobpcg.lobpcg``):

- Each member's basis is the row block S_b = [X_b; P_b; W_b] (m = k + ``GUARD`` rows each):
  [X; P] orthonormal, W the preconditioned residuals of the unconverged columns (soft
  locking), projected once off [X; P]; a row of W that keeps less than ``NEW_DIRECTION`` of
  its norm carries no new direction and is set to zero. Members differ in how many of their
  rows carry a direction; a row that carries none (a zero row, or a direction dropped below
  ``DROP`` in coefficient space) is a *phantom*: its Gram entry is set to 1 and its
  Rayleigh-Ritz diagonal to 1 + 2 ||K||_F (K the member's reduced matrix), decoupled from the
  rest, so that every member keeps the same block sizes, the Gram matrices stay definite for
  the batched Cholesky factorisation, and phantoms sort above every genuine Ritz value.
- Orthonormalisation happens in coefficient space: the W block by the eigendecomposition of
  its Gram matrix (directions below ``DROP`` dropped), then the whole basis by Cholesky; a
  member whose Gram matrix is numerically semi-definite falls back, alone, to the single
  solver's ``whitening`` (eigendecomposition, directions dropped). P is the part of the
  previous X orthogonal to the new X, orthonormalised in coefficient space (twice).
- A member stops being updated (and costs nothing more) when its first k columns meet
  ``tol`` by the single solver's test (``lobpcg.converged_or_stuck``: error bound plus round-off
  term), when those that miss are stuck at the round-off floor, or when its preconditioned
  residuals add no new direction; the others go on, up to ``maxiter`` iterations. As in
  ``lobpcg.lobpcg``, the start block stops no member: every member takes at least
  one LOBPCG step, with the columns that have not passed (module docstring of
  :mod:`.eigensolvers`: a start's guard values are no neighbours to trust). Measured before
  both solvers had the rule, with ``spectrum(H, k=2)`` stopping at the start: 1D bimodal,
  t in {0.3, 1, 2}, 127 and 511 nodes, 10 seeds: 8 to 10 of 30 runs at tol = 1e-5 and 15
  to 20 of 30 at tol = 1e-3 flagged a wrong lambda_1 converged; after one step none of
  1620 batched results did (bimodal, asymmetric and trimodal, three times each, k = 1 to 3,
  tol = 1e-3 to 1e-8, 20 seeds).
- Preconditioners approximate (H_b - sigma_b)^{-1}, sigma_b below lambda_0 of member b from
  its ground state (``eigensolvers.shift_below``): "fourier", (-Laplacian_h + c_b)^{-1} by
  DST-I on every axis with c_b a quarter of the median of V_b - sigma_b (at least 1), the
  rule of ``spectrum(..., preconditioner="fourier")``; "jacobi", 1 / (diag_b - sigma_b);
  None, the identity.
- ``n_matvec`` per member counts the columns of that member passed through the batched
  matvec (the rows of W of a member are padded with zero rows to the largest count in the
  batch, and the padding is counted: it is computed), the ground-state matvec of the shift
  and the final check; ``work`` equals it (the preconditioner is not counted, as in
  ``spectrum``).

Measured (``analysis/bench_batch.py``, 2 CPU cores, four-mode benchmark mixture on 256^2, k = 2,
times log-spaced in [1e-3, 1]): the batch takes 0.9 (B = 1 and 4) and 0.45 (B = 16) of the time
of a loop of ``spectrum(..., preconditioner="fourier")``, with the same gaps to 2e-9 relative
(a shared machine, load 1 to 4); on the CPU a loop of the default ``spectrum`` (multigrid
preconditioner, nested iteration) is 15 to 40 times faster than the batch. The batch is for devices where B small launches cost more
than one large one (GPUs; not measured here).

What is not batched: the construction (the score is evaluated member by member), the start
(``eigensolvers.start_block`` per member), the per-member convergence test (q x q numpy
work) and the final check (one ``ScoreHamiltonian.matvec`` per member, by design). Multigrid
and AMG preconditioners are not available here (they are per operator).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from typing import Any, Literal

import torch

from ..common.errors import ConvergenceError, InputShapeError
from ..common.validation import as_float_tensor, checked_times
from ..score.derivatives import DivergenceMethod
from ..score.interface import as_score
from .blocks import DROP, NEW_DIRECTION, WORK_DTYPE, Counted, symmetric, whitening
from .eigensolvers import DEFAULT_MAXITER, check_arguments, shift_below, start_block
from .grid import Grid
from .lobpcg import converged_or_stuck
from .memory import check_memory, estimate_memory
from .operator import Form, ScoreHamiltonian
from .preconditioners import dst1, fourier_shift, laplacian_eigenvalues
from .solution import GUARD, SpectrumResult, final_check, spectrum_result
from .stencil import shifted_sum

__all__ = ["HamiltonianBatch", "batch_spectrum"]

BatchPreconditioner = Literal["fourier", "jacobi"] | None


class HamiltonianBatch:
    """B Score Hamiltonians H_{t_b} = -Laplacian_h + V_{t_b} on one grid (module docstring).

    Parameters
    ----------
    score : a :class:`~.scores.Score` or callable ``score(x, t)``, x of shape (..., d).
    times : the B diffusion times (a sequence or 1D tensor): distinct, finite, inside the
        score's process's range (:class:`TimeRangeError` otherwise; :class:`InputShapeError`
        for an empty or multi-dimensional one).
    grid : the common :class:`~.grid.Grid` (d = 1, 2, 3; :class:`InputShapeError` when the
        score states another dimension).
    order, form, divergence, mass_tol, dtype, device : as for
        :class:`~.operator.ScoreHamiltonian`; every member is built with the torch backend,
        so its errors (ResolutionError, NonFiniteScoreError, ...) apply per time, and its
        warnings (BoundaryMassWarning, ResolutionWarning) are passed on, prefixed with the
        time, at the caller's line.

    Before any score is evaluated, the memory of B operators, their stacked diagonals and
    ground states and one build (:func:`~.memory.estimate_memory`) is compared with what the
    device has free (:class:`InsufficientMemoryError` when it will not fit).

    Attributes
    ----------
    members : the B :class:`ScoreHamiltonian` (full operators, e.g. for ``spectrum``).
    times : the times as floats, in the given order.
    shape : (B, N, N).
    ground_states : (B, N) sqrt(p_{t_b}) at the nodes, unit 2-norm per row.
    """

    def __init__(
        self,
        score: Any,
        times: Any,
        grid: Grid,
        order: int = 2,
        form: Form = "potential",
        divergence: DivergenceMethod = "auto",
        mass_tol: float = 1e-7,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.score = as_score(score)
        self.times = tuple(checked_times(self.score.process, times))
        self.grid, self.order, self.form, self.dtype = grid, order, form, dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        B, N = len(self.times), grid.size
        one = estimate_memory(grid.n, dtype=dtype)
        stacked = 2 * B * N * (torch.finfo(dtype).bits // 8)
        check_memory(B * one.operator + stacked + one.build, f"{B} operators on the {grid} grid", self.device)
        self.members = []
        for t in self.times:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.members.append(ScoreHamiltonian(self.score, t, grid, order=order, form=form,
                                                     divergence=divergence, backend="torch", mass_tol=mass_tol,
                                                     dtype=dtype, device=self.device))
            for warning in caught:
                warnings.warn(f"t={t:g}: {warning.message}", warning.category, stacklevel=2)
        self.shape = (B, N, N)
        self._diag = torch.stack([member._diag for member in self.members])
        self.ground_states = torch.stack([member.ground_state for member in self.members])
        self._weights = [(a + 2, o, w) for a, o, w in self.members[0]._weights]

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return (f"HamiltonianBatch(times={list(self.times)}, grid={self.grid}, order={self.order}, "
                f"form={self.form!r}, dtype={self.dtype}, device={self.device})")

    def diagonal(self) -> torch.Tensor:
        """The diagonals of the B operators, (B, N), in the batch's dtype and device."""
        return self._diag.clone()

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """H_b V_b for every member b, in one pass: V of shape (B, N) or (B, N, m) (a floating
        tensor, any device; cast to the batch's dtype and device), the result of V's shape in
        the batch's dtype on its device. :class:`InputShapeError` for any other shape,
        :class:`InputDtypeError` for an integer, bool or complex V."""
        V = as_float_tensor(V, "V")
        B, N, _ = self.shape
        if V.ndim not in (2, 3) or V.shape[0] != B or V.shape[1] != N:
            raise InputShapeError(f"matvec needs V of shape ({B}, {N}) or ({B}, {N}, m); got {tuple(V.shape)}")
        rows = V.reshape(B, N, -1).transpose(1, 2).to(dtype=self.dtype, device=self.device)
        return self._apply(rows).transpose(1, 2).reshape(V.shape)

    def _apply(self, rows: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """H_b applied to row blocks (a, r, N) of the members ``index`` (all when None), in the
        batch's dtype: diag_b * u plus the stencil's shifted sums over the grid axes."""
        diag = self._diag if index is None else self._diag[index]
        a, r, N = rows.shape
        u = rows.reshape(a, r, *self.grid.n)
        out = (diag.reshape(a, 1, *self.grid.n) * u).add_(shifted_sum(u, self._weights))
        return out.reshape(a, r, N)

    def _work_apply(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``_apply`` for float64 work rows: cast to the batch's dtype and back."""
        return self._apply(rows.to(self.dtype), None if index.numel() == len(self) else index).to(WORK_DTYPE)


def _solver_bytes(B: int, N: int, m: int) -> int:
    """Bytes ``batch_spectrum`` holds with block size m, float64 work vectors (8 bytes): per
    member, S and HS (3m rows each), their gathered copies while some members have stopped
    (6m), the updated [X; P] and H [X; P] (4m), the rows of W and the preconditioner's
    temporaries (6m), the work diagonal and the preconditioner's diagonal (2); plus one
    member's final check (4m rows) at a time. Measured peak RSS increase (256^2, k = 2, 40
    iterations, CPU): 150 MiB for B = 4 (estimate 188), 660 MiB for B = 16 (estimate 728)."""
    return 8 * N * (B * (22 * m + 2) + 4 * m)


def batch_spectrum(
    batch: HamiltonianBatch,
    k: int = 3,
    tol: float = 1e-8,
    maxiter: int | None = None,
    preconditioner: BatchPreconditioner = "fourier",
    deflate: bool = True,
    return_eigenvectors: bool = False,
    raise_on_failure: bool = False,
    generator: torch.Generator | None = None,
) -> list[SpectrumResult]:
    """The k lowest eigenvalues of every member of ``batch``, with error bounds, one
    :class:`~.solution.SpectrumResult` per time (in the batch's order).

    Block LOBPCG on all B operators at once (module docstring), started per member from
    ``member.ground_state`` (``deflate``; it also places the preconditioner's shift), the
    (x_a - <x_a>) g columns and random columns drawn from ``generator`` (k + ``GUARD``
    columns in all, ``eigensolvers.start_block``), preconditioned by "fourier", "jacobi" or
    None. ``maxiter``: LOBPCG iterations, at least 1 (default 500). ``tol``: relative accuracy
    from the ground level, as in :func:`~.eigensolvers.spectrum` (eigenvalue i converged when
    its error bound is at most tol * max(theta_i - theta_0, theta_1 - theta_0); units of H,
    1 / x^2). Bad arguments raise as in ``spectrum`` (ValueError for k, the preconditioner or
    maxiter, :class:`InputDtypeError` for a tol out of the dtype's reach).

    Every member ends with the package's honest check (``solution.final_check``: its
    vectors orthonormalised and multiplied by ``member.matvec`` once more) and
    ``solution.spectrum_result``, so eigenvalues, residual norms, error bounds, ``converged``
    flags and the ConvergenceWarning (ConvergenceError with ``raise_on_failure``) for a member
    short of ``tol`` are exactly those of ``spectrum``'s. ``method`` is
    "batched lobpcg (B operators, <preconditioner>) at t=<t>", ``n_matvec`` and ``work`` count
    that member's matvec columns (module docstring), ``wall_time`` is the whole batch's.
    The memory of the solve (``_solver_bytes``) is checked against the device's free memory
    first (:class:`InsufficientMemoryError`).
    """
    start = time.perf_counter()
    members = batch.members
    check_arguments(members[0], k, tol, "lobpcg")
    if preconditioner not in ("fourier", "jacobi", None):
        raise ValueError(f"preconditioner must be 'fourier', 'jacobi' or None; got {preconditioner!r}")
    budget = DEFAULT_MAXITER["lobpcg"] if maxiter is None else int(maxiter)
    if budget < 1:
        raise ValueError(f"maxiter must be >= 1 (the start block alone is never accepted); got {maxiter}")
    B, N, _ = batch.shape
    m = k + GUARD
    check_memory(_solver_bytes(B, N, m), f"batch_spectrum(k={k}) on {B} operators of {N} unknowns", batch.device)
    ops = [Counted(member) for member in members]
    diag = batch._diag.to(WORK_DTYPE)
    grounds = [member.ground_state if deflate else None for member in members]
    shifts = [shift_below(op, member, g) for op, member, g in zip(ops, members, grounds)]
    X0 = torch.stack([start_block(op, m, None, g, batch.grid, generator).T for op, g in zip(ops, grounds)])
    precond = _Preconditioner(batch, diag, shifts, preconditioner)
    X = _Solver(batch, ops, diag, precond, k, tol).run(X0, budget)
    checks = [final_check(op, X[b].T, diag[b]) for b, op in enumerate(ops)]
    results = []
    for check, op, t in zip(checks, ops, batch.times):  # a loop: spectrum_result's warnings name the caller's line
        results.append(spectrum_result(check, k, op, start, f"batched lobpcg ({B} operators, {precond.name}) at t={t:g}",
                               tol, return_eigenvectors, raise_on_failure))
    wall_time = time.perf_counter() - start
    return [replace(result, wall_time=wall_time) for result in results]


class _Preconditioner:
    """R_b -> an approximation of (H_b - sigma_b)^{-1} R_b for row blocks R (a, r, N) of the
    members ``index`` (module docstring for the choices)."""

    def __init__(self, batch: HamiltonianBatch, diag: torch.Tensor, shifts: list[float],
                 choice: BatchPreconditioner) -> None:
        self.name, self.dims = choice or "none", tuple(batch.grid.n)
        sigma = torch.tensor(shifts, dtype=WORK_DTYPE, device=diag.device)[:, None]
        if choice == "fourier":
            c = fourier_shift(diag, batch.grid, sigma)
            eig = laplacian_eigenvalues(batch.grid, diag.device)
            scale = math.prod(2.0 / (n + 1) for n in self.dims)
            self.inv = scale / (eig.unsqueeze(0) + c.reshape(-1, *[1] * len(self.dims)))
        elif choice == "jacobi":
            self.inv = 1.0 / (diag - sigma).clamp_min(1e-300)

    def __call__(self, R: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.name == "none":
            return R
        if self.name == "jacobi":
            return R * self.inv[index].unsqueeze(1)
        a, r, N = R.shape
        u = R.reshape(a, r, *self.dims)
        axes = range(2, 2 + len(self.dims))
        for axis in axes:
            u = dst1(u, axis)
        u = u * self.inv[index].unsqueeze(1)
        for axis in axes:
            u = dst1(u, axis)
        return u.reshape(a, r, N)


def _eye(q: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(q, dtype=like.dtype, device=like.device)


def _compact(rows: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of each member that ``mask`` keeps moved to the front, the block cut to the
    largest count in the batch (the others padded with their masked-out rows, zeroed)."""
    if bool(mask.all()):
        return rows, mask
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    r = int(mask.sum(1).max())
    order = order[:, :r]
    kept = torch.gather(mask, 1, order)
    picked = torch.gather(rows, 1, order.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))
    return picked * kept.unsqueeze(-1), kept


def _orthonormal_columns(Y: torch.Tensor, against: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of Y (a, q, j) made orthonormal and orthogonal to the orthonormal columns of
    ``against`` (a, q, i), twice over (each pass: projected off twice, then the Gram matrix's
    eigendecomposition with directions below ``DROP`` dropped, as ``blocks.orthonormal``).
    Dropped columns are zero; returns them and the mask of kept columns (a, j)."""
    for _ in range(2):
        for _ in range(2):
            Y = Y - against @ (against.mT @ Y)
        w, U = torch.linalg.eigh(symmetric(Y.mT @ Y))
        top = w[:, -1:]
        keep = (w > DROP**2 * top) & (top > 0)
        Y = Y @ (U * torch.where(keep, w.clamp_min(1e-300).rsqrt(), 0.0).unsqueeze(1))
    return Y, keep


def _whiten(G: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W, Z, genuine) with W G W^T = I and Z = the factor with G = Z^T Z per member, by a
    batched Cholesky factorisation (W = L^{-1}, Z = L^T; the phantom coordinates, identity in
    G, stay decoupled). A member whose G is numerically semi-definite is whitened alone by
    ``blocks.whitening`` on its kept coordinates (eigendecomposition, directions below
    ``DROP`` dropped); its rows of W and Z past the kept directions are zero. ``genuine``
    (a, q) marks the whitened coordinates that carry a direction."""
    a, q, _ = G.shape
    L, info = torch.linalg.cholesky_ex(G)
    W = torch.linalg.solve_triangular(L, _eye(q, G).expand(a, q, q), upper=False)
    Z, genuine = L.mT.clone(), kept.clone()
    for j in (info != 0).nonzero().flatten().tolist():
        index = kept[j].nonzero().flatten()
        Wj, Zj = whitening(G[j][index][:, index])
        r = Wj.shape[0]
        W[j], Z[j] = 0.0, 0.0
        W[j, :r, index], Z[j, :r, index] = Wj, Zj
        genuine[j] = torch.arange(q, device=G.device) < r
    return W, Z, genuine


def _rayleigh_ritz(S: torch.Tensor, HS: torch.Tensor, valid: torch.Tensor, fixed: int, m: int,
                   with_p: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Batched Rayleigh-Ritz on the row blocks S, HS (a, q, N): rows [0, fixed) orthonormal
    ([X; P], invalid rows zero), the rest appended (W). ``valid`` (a, q): rows that carry a
    direction. Returns the m lowest Ritz values (a, m), the coefficients C (a, q, m or 2m)
    with [X_new; P_new] = C^T S (P_new the part of the old X orthogonal to the new X, zero
    rows where it has none), and P_new's mask (a, m) when ``with_p``."""
    a, q, _ = S.shape
    M, A = symmetric(S @ S.mT), symmetric(HS @ S.mT)
    E = torch.zeros(a, q, q, dtype=S.dtype, device=S.device)
    E[:, :fixed, :fixed] = _eye(fixed, S) * valid[:, None, :fixed]
    w, U = torch.linalg.eigh(M[:, fixed:, fixed:])
    top = w[:, -1:]
    keep = (w > DROP**2 * top) & (top > 0)
    E[:, fixed:, fixed:] = U * torch.where(keep, w.clamp_min(1e-300).rsqrt(), 0.0).unsqueeze(1)
    kept = torch.cat([valid[:, :fixed], keep], 1)
    G = symmetric(E.mT @ M @ E)
    G.diagonal(dim1=-2, dim2=-1).add_((~kept).to(G.dtype))
    W, Z, genuine = _whiten(G, kept)
    if bool((genuine.sum(1) < m).any()):
        raise ConvergenceError("batched lobpcg: a member's basis lost independence (fewer than k + guard directions)")
    pair = genuine.unsqueeze(2) & genuine.unsqueeze(1)
    K = symmetric(W @ E.mT @ A @ E @ W.mT) * pair
    big = 1.0 + 2.0 * torch.linalg.matrix_norm(K)
    K.diagonal(dim1=-2, dim2=-1).add_((~genuine) * big.unsqueeze(1))
    theta, V = torch.linalg.eigh(K)
    Vm = V[:, :, :m] * genuine.unsqueeze(2)
    lift = E @ W.mT
    if not with_p:
        return theta[:, :m], lift @ Vm, None
    P, p_valid = _orthonormal_columns(Z[:, :, :m] * genuine.unsqueeze(2), Vm)
    return theta[:, :m], lift @ torch.cat([Vm, P], 2), p_valid


class _Solver:
    """The batched LOBPCG iteration (module docstring). State per member: S, HS (B, 3m, N)
    with rows [X; P; R] (the residuals R = HX - theta X sit where W will go), P's mask, which
    members still run and which of their columns are still active (unconverged)."""

    def __init__(self, batch: HamiltonianBatch, ops: list[Counted], diag: torch.Tensor,
                 precond: _Preconditioner, k: int, tol: float) -> None:
        self.batch, self.ops, self.diag, self.precond, self.k, self.tol = batch, ops, diag, precond, k, tol
        self.diag_max = diag.abs().amax(-1).tolist()

    def run(self, X0: torch.Tensor, maxiter: int) -> torch.Tensor:
        """The m lowest Ritz vectors of every member, rows (B, m, N), from the start X0."""
        B, m, N = X0.shape
        self.m = m
        everyone = torch.arange(B, device=X0.device)
        self.S = torch.zeros(B, 3 * m, N, dtype=WORK_DTYPE, device=X0.device)
        self.HS = torch.zeros_like(self.S)
        self.scratch = torch.zeros(m, N, dtype=WORK_DTYPE, device=X0.device)
        self.p_valid = torch.zeros(B, m, dtype=torch.bool, device=X0.device)
        self.running = torch.ones(B, dtype=torch.bool)
        self.active = torch.ones(B, m, dtype=torch.bool, device=X0.device)
        HX0 = self.batch._work_apply(X0, everyone)
        self._count(everyone, m)
        theta, C, _ = _rayleigh_ritz(X0, HX0, torch.ones(B, m, dtype=torch.bool, device=X0.device), 0, m, False)
        self._update(everyone, theta, C.mT @ X0, C.mT @ HX0, None)
        for _ in range(maxiter):
            if not bool(self.running.any()):
                break
            self._step(self.running.nonzero().flatten().to(X0.device))
        return self.S[:, :m]

    def _count(self, index: torch.Tensor, columns: int) -> None:
        for b in index.tolist():
            self.ops[b].count += columns

    def _step(self, index: torch.Tensor) -> None:
        """One LOBPCG iteration of the members ``index``: W from the active residuals, the
        Rayleigh-Ritz step on [X; P; W], the new [X; P] and their convergence."""
        m, B = self.m, self.S.shape[0]
        S, HS = (self.S, self.HS) if index.numel() == B else (self.S[index], self.HS[index])
        R, active = _compact(S[:, 2 * m :], self.active[index])
        W = self.precond(R, index) * active.unsqueeze(-1)
        before = torch.linalg.vector_norm(W, dim=-1)
        XP = S[:, : 2 * m]
        W = torch.baddbmm(W, W @ XP.mT, XP, alpha=-1.0)
        fresh = torch.linalg.vector_norm(W, dim=-1) > NEW_DIRECTION * before
        going = fresh.any(1)
        if not bool(going.all()):
            self.running[index[~going].cpu()] = False
            index, S, HS, W, fresh = index[going], S[going], HS[going], W[going], fresh[going]
            if index.numel() == 0:
                return
        W, fresh = _compact(W, fresh)
        r = W.shape[1]
        S[:, 2 * m : 2 * m + r] = W
        HS[:, 2 * m : 2 * m + r] = self.batch._work_apply(W, index)
        self._count(index, r)
        q = 2 * m + r
        valid = torch.cat([torch.ones_like(fresh[:, :1]).expand(-1, m), self.p_valid[index], fresh], 1)
        theta, C, p_valid = _rayleigh_ritz(S[:, :q], HS[:, :q], valid, 2 * m, m, True)
        self._update(index, theta, C.mT @ S[:, :q], C.mT @ HS[:, :q], p_valid)

    def _update(self, index: torch.Tensor, theta: torch.Tensor, XP: torch.Tensor, HXP: torch.Tensor,
                p_valid: torch.Tensor | None) -> None:
        """Install the new [X; P], H [X; P] and Ritz values of the members ``index``, store
        their residuals in the W rows, and decide which go on (``lobpcg.converged_or_stuck``). The
        start block's Rayleigh-Ritz values (``p_valid`` None) stop no member (module docstring)."""
        m, rows = self.m, XP.shape[1]
        R = torch.addcmul(HXP[:, :m], XP[:, :m], theta.unsqueeze(-1), value=-1.0)
        self.S[index, :rows], self.HS[index, :rows], self.S[index, 2 * m :] = XP, HXP, R
        if p_valid is not None:
            self.p_valid[index] = p_valid
        theta_cpu, rnorm_cpu = theta.cpu(), R.norm(dim=-1).cpu()
        for j, b in enumerate(index.tolist()):
            passed, stuck = converged_or_stuck(theta_cpu[j], XP[j, :m].T, rnorm_cpu[j], self.diag[b], self.diag_max[b],
                                    self.ops[b].eps, self.tol, self.scratch.T)
            if p_valid is not None and (not (~passed)[: self.k].any() or (passed | stuck)[: self.k].all()):
                self.running[b] = False
            self.active[b] = torch.as_tensor(~passed, device=self.active.device)
