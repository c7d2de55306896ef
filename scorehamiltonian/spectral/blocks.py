"""Block linear algebra shared by the eigensolvers (THEORY section 6): the operator as they see it.

:class:`Counted` wraps H with a matvec counter in float64 columns; :func:`orthonormal`,
:func:`inner` (Gram products of long row blocks as one batched GEMM), :func:`whitening` and
:func:`beside` are the small dense steps; :class:`Blocks` holds LOBPCG's row blocks
S = [X; P; W] and H S and updates them by Rayleigh-Ritz in place, forming the new residuals
and their norms in the same pass (:mod:`.ritz_update` on the CPU). Used by :mod:`.lobpcg`,
:mod:`.lanczos`, the final check of :mod:`.solution` and the batched solver of :mod:`.batch`.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

from ..common.threads import use_numba
from .ritz_update import update_rows

if TYPE_CHECKING:
    from .solution import SymmetricOperator

__all__ = [
    "DROP",
    "NEW_DIRECTION",
    "UPDATE_CHUNKS",
    "WORK_DTYPE",
    "Blocks",
    "Counted",
    "beside",
    "inner",
    "orthonormal",
    "random_columns",
    "symmetric",
    "whitening",
]

WORK_DTYPE = torch.float64
#: Columns dropped from an orthonormalisation when they keep less than this of their norm.
DROP = 1e-10
#: LOBPCG drops a preconditioned residual that keeps less than this of its norm once
#: projected off the current basis (no new direction; sqrt of float64 eps).
NEW_DIRECTION = 1.5e-8
#: ``inner`` sums its products over column chunks of this length (one batched GEMM).
_INNER_CHUNK = 4096
#: The in-place Rayleigh-Ritz update (``Blocks._combine``) runs as one numba pass on the CPU
#: from ``NUMBA_MIN_SIZE`` unknowns (:mod:`.ritz_update`; at 512^2 with 4 rows 6.5 ms against
#: 9.3 ms for the torch path, medians of interleaved calls); smaller operators and other
#: devices take the torch path in ``UPDATE_CHUNKS`` column chunks (a few large GEMMs rather
#: than many small launches, for a buffer of m / 4 rows).
UPDATE_CHUNKS = 8


class Counted:
    """H with a matvec counter, taking and returning float64 columns (N, m); ``extra``
    collects work done outside H.matvec, in H-matvec equivalents."""

    def __init__(self, H: SymmetricOperator) -> None:
        self.H, self.count, self.extra = H, 0, 0.0
        self.n = int(H.shape[0])
        self._matvec_into = H.dtype == WORK_DTYPE and "out" in inspect.signature(H.matvec).parameters
        self.device = torch.device(H.device)
        self.eps = torch.finfo(H.dtype).eps

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        self.count += X.shape[1]
        out = self.H.matvec(X.to(dtype=self.H.dtype, device=self.device))
        return out.to(WORK_DTYPE).reshape(X.shape)

    def rows(self, U: torch.Tensor, out: torch.Tensor) -> None:
        """out = (H U^T)^T for row blocks (m, N), written in place when H's matvec takes
        ``out`` (as :class:`ScoreHamiltonian`'s does) and works in float64."""
        if self._matvec_into:
            self.count += U.shape[0]
            self.H.matvec(U.T, out=out.T)
        else:
            out.copy_(self(U.T).T)


def orthonormal(X: torch.Tensor, against: torch.Tensor | None = None, drop: float = 1e-10) -> torch.Tensor:
    """An orthonormal basis of X (projected off the orthonormal ``against`` twice), columns
    whose relative norm falls below ``drop`` removed."""
    for _ in range(2):
        if against is not None:
            X = X - against @ (against.T @ X)
        norms = X.norm(dim=0)
        X = X[:, norms > drop * norms.max().clamp_min(1e-300)]
        if X.shape[1] == 0:
            return X
        gram = X.T @ X
        w, U = torch.linalg.eigh(gram)
        keep = w > drop**2 * w.max()
        X = X @ (U[:, keep] / w[keep].sqrt())
    return X


def inner(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A B^T for row blocks A (p, N) and B (q, N): sum_j A[:, j] B[:, j]^T, summed as one
    batched GEMM over chunks of ``_INNER_CHUNK`` columns plus the remainder. A plain GEMM
    with so small an output and so long an inner dimension runs at a fraction of the
    machine's speed (2-4x slower on the CPU at N ~ 1e6); the chunked sum is also a blocked
    sum, within the (2 + log2 N) eps of ``projection_roundoff``. Rows with a stride other
    than 1 between columns take the plain GEMM."""
    n = A.shape[1]
    chunks = n // _INNER_CHUNK
    if chunks < 2 or A.stride(1) != 1 or B.stride(1) != 1:
        return A @ B.T
    cut = chunks * _INNER_CHUNK
    left = A[:, :cut].view(A.shape[0], chunks, _INNER_CHUNK).transpose(0, 1)
    right = B[:, :cut].view(B.shape[0], chunks, _INNER_CHUNK).permute(1, 2, 0)
    out = torch.bmm(left, right).sum(0)
    return out.addmm_(A[:, cut:], B[:, cut:].T) if cut < n else out


def symmetric(G: torch.Tensor) -> torch.Tensor:
    """(G + G^T) / 2 of a matrix or a batch of matrices (..., q, q)."""
    return 0.5 * (G + G.mT)


class Blocks:
    """Row blocks S = [X; P; W] (each row one vector) and HS = H S, ``depth`` m rows each
    (3 for LOBPCG, 2 for a Rayleigh-Ritz on X alone), allocated once: a Rayleigh-Ritz update
    writes the new [X; P] and [HX; HP] over S and HS in place, one column tile or chunk at a
    time (``use_numba``), so no (N, m) block is ever concatenated, copied or double-buffered,
    and in the same pass the residuals R = HX - X diag(theta) of the new Ritz vectors and
    their norms (``rnorm``), from the chunk just written. Between updates the rows past the
    basis are free: R lives in HS's (it is consumed by the preconditioner before H W is
    written there) and the round-off scratch in S's (before the preconditioner writes W
    there).

    [X; P] is orthonormal; W is only projected off it (once, in place). Its normalisation
    and the choice of independent directions happen in coefficient space, from the exact
    Gram matrix of S (``rayleigh_ritz``), so no pass over the vectors is spent on them."""

    def __init__(self, op: Counted, m: int, depth: int = 3) -> None:
        def block(rows: int) -> torch.Tensor:
            return torch.zeros(rows, op.n, dtype=WORK_DTYPE, device=op.device)

        self.S, self.HS = block(depth * m), block(depth * m)
        self._numba = use_numba(op.device, op.n)
        self._chunk = -(-op.n // UPDATE_CHUNKS)
        self._update = None if self._numba else torch.zeros(2 * m * self._chunk, dtype=WORK_DTYPE, device=op.device)
        self.op, self.m, self.q, self.a = op, m, 0, 0
        self._before = torch.zeros(0, dtype=WORK_DTYPE, device=op.device)
        self._gram: torch.Tensor | None = None
        self.rnorm = torch.zeros(0, dtype=WORK_DTYPE, device=op.device)

    @property
    def R(self) -> torch.Tensor:
        """m free rows of HS (past the basis) for the residual."""
        return self.HS[self.q : self.q + self.m]

    @property
    def scratch(self) -> torch.Tensor:
        """m free rows of S (past the basis) for the round-off term."""
        return self.S[self.q : self.q + self.m]

    @property
    def X(self) -> torch.Tensor:
        """The current Ritz vectors, columns (N, m) (a view of S's first m rows)."""
        return self.S[: self.m].T

    def free(self, a: int) -> torch.Tensor:
        """The next a rows of S, to be filled and then passed to ``append``."""
        return self.S[self.q : self.q + a]

    def append(self, W: torch.Tensor) -> None:
        """Append the rows W (a, N) (or the rows of ``free`` already holding them) projected
        once off the orthonormal S[:q], and H times them."""
        q, a = self.q, W.shape[0]
        new = self.S[q : q + a]
        if W.data_ptr() != new.data_ptr():
            new.copy_(W)
        products = inner(self.S[: q + a], new)
        self._before = products[q:].diagonal()
        self._gram = None if q else products  # appended to nothing: products is S's Gram matrix
        if q:
            new.addmm_(products[:q].T, self.S[:q], alpha=-1.0)
        self.op.rows(new, self.HS[q : q + a])
        self.q, self.a = q + a, a

    def descend(self, W: torch.Tensor, rows: torch.Tensor) -> None:
        """X[rows] <- X[rows] - W, then X (all of it, as new rows) and H X replace S."""
        X = self.S[: self.m]
        X.index_add_(0, rows, W, alpha=-1.0)
        self.q = 0
        self.append(X)

    def _reduced(self, M: torch.Tensor) -> torch.Tensor:
        """E (q x r): coefficients of an orthonormal basis of the appended rows' span, [X; P]
        kept as they are. Appended rows that kept less than ``NEW_DIRECTION`` of their norm
        after the projection are left out (no new direction); the rest are orthonormalised
        by the eigendecomposition of their Gram matrix, directions below ``DROP`` dropped."""
        q, a = self.q, self.a
        old = q - a
        gram = M[old:, old:]
        fresh = (gram.diagonal() > NEW_DIRECTION**2 * self._before).nonzero().flatten()
        E = torch.zeros(q, old, dtype=M.dtype, device=M.device)
        E[:old] = torch.eye(old, dtype=M.dtype, device=M.device)
        if fresh.numel() == 0:
            return E
        w, U = torch.linalg.eigh(gram[fresh][:, fresh])
        keep = w > DROP**2 * w.max()
        T = torch.zeros(q, int(keep.sum()), dtype=M.dtype, device=M.device)
        T[old + fresh] = U[:, keep] / w[keep].sqrt()
        return torch.cat([E, T], 1)

    def rayleigh_ritz(self, p_old: int) -> tuple[torch.Tensor, int]:
        """Rayleigh-Ritz on span(S): the m lowest Ritz pairs become X (rows 0..m-1) and, when
        ``p_old`` >= 0, the part of the previous X orthogonal to the new X becomes P (built in
        coefficient space, Hetmaniuk and Lehoucq 2006). Returns the Ritz values and P's rows
        (-1 when no new direction came in: the caller stops)."""
        S, HS = self.S[: self.q], self.HS[: self.q]
        M = symmetric(inner(S, S) if self._gram is None else self._gram)
        E = self._reduced(M)
        if E.shape[1] == self.q - self.a and p_old >= 0:
            return torch.empty(0), -1
        Linv, lift = whitening(symmetric(E.T @ M @ E))
        self.m = min(self.m, Linv.shape[0])
        theta, V = torch.linalg.eigh(symmetric(Linv @ E.T @ inner(HS, S) @ E @ Linv.T))
        coefficients = V[:, : self.m]
        if p_old >= 0:
            old = lift[:, : self.m]
            coefficients = torch.cat([coefficients, orthonormal(old, against=coefficients)], 1)
        C = E @ Linv.T @ coefficients
        r = C.shape[1]
        self._combine(C.T.contiguous(), theta[: self.m])
        self.q, self.a = r, 0
        return theta[: self.m], r - self.m

    def _combine(self, CT: torch.Tensor, theta: torch.Tensor) -> None:
        """S[:r] <- CT S[:q] and HS[:r] <- CT HS[:q] in place (CT of shape (r, q)), then
        R = HS[:m] - S[:m] diag(theta) into HS[r:r + m] and its row norms into ``rnorm``:
        on the CPU by :func:`~.ritz_update.update_rows`, elsewhere by column chunks through
        a small buffer. Each tile or chunk of the q rows is read before any of it is
        overwritten, and R is formed while it is in cache."""
        r, q, m, n = CT.shape[0], CT.shape[1], self.m, self.S.shape[1]
        if self._numba:
            self.rnorm = update_rows(CT, self.S, self.HS, theta.contiguous()).sqrt()
            return
        squares = torch.zeros(m, dtype=WORK_DTYPE, device=self.S.device)
        for a in range(0, n, self._chunk):
            b = min(a + self._chunk, n)
            chunk = self._update[: r * (b - a)].view(r, b - a)
            for rows in (self.S, self.HS):
                torch.matmul(CT, rows[:q, a:b], out=chunk)
                rows[:r, a:b].copy_(chunk)
            R = torch.addcmul(self.HS[:m, a:b], self.S[:m, a:b], theta[:, None], value=-1.0,
                              out=self.HS[r : r + m, a:b])
            norms = torch.linalg.vector_norm(R, dim=1)
            squares.addcmul_(norms, norms)
        self.rnorm = squares.sqrt()


def whitening(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, Z) with W G W^T = I and G = Z^T Z (so Z W^T = I): W = L^{-1}, Z = L^T from the
    Cholesky factor G = L L^T, or, when round-off has made G numerically semi-definite
    (a basis that lost orthogonality after iterating at the round-off floor), from its
    eigendecomposition G = U diag(w) U^T with directions w < DROP^2 max(w) dropped:
    W = diag(w^-1/2) U^T, Z = diag(w^1/2) U^T."""
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        eye = torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
        return torch.linalg.solve_triangular(L, eye, upper=False), L.T
    w, U = torch.linalg.eigh(G)
    keep = w > DROP**2 * w.max()
    w, U = w[keep], U[:, keep]
    return (U / w.sqrt()).T, (U * w.sqrt()).T


def random_columns(op: Counted, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """m standard normal columns (drawn on the CPU with ``generator``, then moved)."""
    return torch.randn(op.n, m, dtype=WORK_DTYPE, generator=generator).to(op.device)


def beside(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """[X, Y] (N, p + q) column-major, so that its rows are contiguous for ``inner`` and
    LOBPCG's row blocks."""
    return torch.cat([X.T, Y.T]).T
