"""Independent reference spectra for the tests: Dirichlet-form Galerkin in Chebyshev bases.

lambda_1 = min over f with E_p f = 0 of E_p |grad f|^2 / Var_p f (THEORY section 2). With the
basis T_1 .. T_M (Chebyshev polynomials of the box-mapped coordinate; tensor products in 2D)
and Gauss-Legendre quadrature of p, A_ij = E_p[grad phi_i . grad phi_j] and
B_ij = Cov_p(phi_i, phi_j); the generalised eigenvalues of A c = lambda B c converge
spectrally to lambda_1 <= lambda_2 <= ... (upper bounds: Rayleigh-Ritz). Nothing here shares
code with the grid operator.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg


def _basis_1d(x: np.ndarray, lo: float, hi: float, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """T_1..T_degree of u = (2x - lo - hi) / (hi - lo) and their x-derivatives, shape (n, degree).

    Three-term recurrences: T_{m+1} = 2u T_m - T_{m-1}, U likewise, and T_m' = m U_{m-1}.
    """
    u = (2 * x - lo - hi) / (hi - lo)
    t_prev, t_cur = np.ones_like(u), u.copy()
    u_prev, u_cur = np.zeros_like(u), np.ones_like(u)
    values, derivs = [], []
    for m in range(1, degree + 1):
        values.append(t_cur)
        derivs.append(m * u_cur * 2 / (hi - lo))
        t_prev, t_cur = t_cur, 2 * u * t_cur - t_prev
        u_prev, u_cur = u_cur, 2 * u * u_cur - u_prev
    return np.stack(values, -1), np.stack(derivs, -1)


@functools.lru_cache(maxsize=8)
def _gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [-1, 1] (read-only), computed once per n: numpy's
    leggauss solves an n x n eigenproblem (3 s at n = 2500), and the tests ask for the same n
    again and again."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    nodes.flags.writeable = weights.flags.writeable = False
    return nodes, weights


def galerkin_levels(log_p, lo, hi, degree: int, n_quad: int, k: int = 3) -> np.ndarray:
    """The k lowest non-zero Dirichlet-form Ritz values of p on the box [lo, hi] (1D or 2D).

    log_p maps points (n, d) to log p (unnormalised is fine).
    """
    lo, hi = np.atleast_1d(lo).astype(float), np.atleast_1d(hi).astype(float)
    nodes, weights = _gauss_legendre(n_quad)
    axes = [0.5 * (b - a) * nodes + 0.5 * (a + b) for a, b in zip(lo, hi)]
    wts = [0.5 * (b - a) * weights for a, b in zip(lo, hi)]
    mesh = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([m.reshape(-1) for m in mesh], -1)
    w = np.ones(1)
    for wa in wts:
        w = np.multiply.outer(w, wa).reshape(-1)
    lp = log_p(pts)
    p = w * np.exp(lp - lp.max())
    p /= p.sum()
    per_axis = [_basis_1d(a, lo[i], hi[i], degree) for i, a in enumerate(axes)]
    if len(axes) == 1:
        phi, grads = per_axis[0][0], [per_axis[0][1]]
    else:
        (v0, d0), (v1, d1) = per_axis
        n0, n1 = len(axes[0]), len(axes[1])
        # products T_i(x) T_j(y), i, j in 0..degree, not both 0
        full0 = np.concatenate([np.ones((n0, 1)), v0], 1)
        full1 = np.concatenate([np.ones((n1, 1)), v1], 1)
        dfull0 = np.concatenate([np.zeros((n0, 1)), d0], 1)
        dfull1 = np.concatenate([np.zeros((n1, 1)), d1], 1)
        phi = np.einsum("ai,bj->abij", full0, full1).reshape(n0 * n1, -1)[:, 1:]
        gx = np.einsum("ai,bj->abij", dfull0, full1).reshape(n0 * n1, -1)[:, 1:]
        gy = np.einsum("ai,bj->abij", full0, dfull1).reshape(n0 * n1, -1)[:, 1:]
        grads = [gx, gy]
    centred = phi - p @ phi
    b = centred.T @ (p[:, None] * centred)
    a = sum(g.T @ (p[:, None] * g) for g in grads)
    # Whiten B, dropping directions below 1e-13 of its largest eigenvalue.
    evals, evecs = np.linalg.eigh(b)
    keep = evals > 1e-13 * evals.max()
    white = evecs[:, keep] / np.sqrt(evals[keep])
    return scipy.linalg.eigvalsh(white.T @ a @ white)[:k]
