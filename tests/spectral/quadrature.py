"""An independent 1D reference for lambda_1: inverse iteration of the generator by quadrature.

In 1D the generator L u = u'' + (log p)' u' = (p u')' / p needs no eigen-solver: for f with
E_p f = 0 (and reflecting ends), -L u = f is solved by two integrations,

    p u' = -F,  F(x) = int_a^x p f,   u = int u' (then centred: E_p u = 0),

which is one step of inverse iteration on the centred functions. Its Rayleigh quotient
rho = E_p u'^2 / Var_p u tends to lambda_1 like (lambda_1 / lambda_2)^(2 k) after k steps,
so steps from f = x - E_p x reach it to round-off (two for gaps of 1e-12, where lambda_1 /
lambda_2 ~ 1e-12; hundreds for nearly Gaussian targets): it stops when rho changes by less
than 1e-15 relative, or rises (exact steps only lower it: a rise is round-off). The integrals use Chebyshev spectral integration on panels
(``panels`` panels of ``nodes`` Chebyshev-Lobatto points, cumulative integrals exact for
polynomials of that degree on each panel), and F is integrated from whichever end is nearer
so that its tails keep relative accuracy. The accuracy is checked by halving the panels.

Nothing here shares code with the toolkit's grids, operators or eigen-solvers (THEORY section 2,
the Dirichlet form; section 6: the flux form in 1D is exact to round-off).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.polynomial import chebyshev as C


@functools.lru_cache(maxsize=4)
def _panel_rule(nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chebyshev-Lobatto points on [-1, 1] (ascending), the cumulative integration matrix
    (values at the points -> int_{-1}^{x_i}) and the quadrature weights (int_{-1}^{1})."""
    x = -np.cos(np.pi * np.arange(nodes) / (nodes - 1))
    vander = C.chebvander(x, nodes - 1)
    to_coef = np.linalg.inv(vander)
    integral = np.stack([C.chebval(x, C.chebint(np.eye(nodes)[j], lbnd=-1)) for j in range(nodes)], 1)
    cumulative = integral @ to_coef
    return x, cumulative, cumulative[-1].copy()


def _lambda1(log_p, a: float, b: float, panels: int, nodes: int, max_steps: int) -> float:
    x0, cum, _ = _panel_rule(nodes)
    edges = np.linspace(a, b, panels + 1)
    half = 0.5 * np.diff(edges)
    x = (0.5 * (edges[:-1] + edges[1:]))[:, None] + half[:, None] * x0[None, :]
    lp = log_p(x.reshape(-1)).reshape(x.shape)
    p = np.exp(lp - lp.max())
    if not (p > 0).all():
        raise ValueError("p underflows to 0 on [a, b]: narrow the interval to where log p > max - 700")

    def cumulate(g: np.ndarray) -> np.ndarray:
        """int_a^x g at every point (panels x nodes)."""
        inside = (g @ cum.T) * half[:, None]
        offsets = np.concatenate([[0.0], np.cumsum(inside[:, -1])[:-1]])
        return inside + offsets[:, None]

    def cumulate_right(g: np.ndarray) -> np.ndarray:
        """int_x^b g at every point."""
        return cumulate(g)[-1, -1] - cumulate(g)

    mass = cumulate(p)[-1, -1]
    p = p / mass

    def mean(g: np.ndarray) -> float:
        return float(cumulate(p * g)[-1, -1])

    left_side = cumulate(p) <= 0.5
    f = x - mean(x)
    rho = previous = np.inf
    for _ in range(max_steps):
        f = f - mean(f)
        pf = p * f
        F = np.where(left_side, cumulate(pf), -cumulate_right(pf))
        du = -F / p
        u = cumulate(du)
        u = u - mean(u)
        rho = float(cumulate(p * du**2)[-1, -1] / cumulate(p * u**2)[-1, -1])
        f = u / np.sqrt(mean(u**2))
        if previous - rho <= 1e-15 * rho:  # settled, or rising: round-off (exact steps only lower rho)
            return min(rho, previous)
        previous = rho
    raise RuntimeError(f"inverse iteration did not settle in {max_steps} steps (lambda_1 / lambda_2 near 1?)")


def lambda1_1d(log_p, a: float, b: float, panels: int = 400, nodes: int = 24,
               max_steps: int = 3000) -> tuple[float, float]:
    """(lambda_1, its estimated error) of the density exp(log_p) on [a, b] with reflecting ends:
    the inverse-iteration Rayleigh quotient on ``panels`` and on ``2 panels`` (module
    docstring); the error is their difference. ``log_p`` maps a numpy array of points to log p
    (unnormalised is fine); [a, b] must hold all the mass that matters."""
    coarse = _lambda1(log_p, a, b, panels, nodes, max_steps)
    fine = _lambda1(log_p, a, b, 2 * panels, nodes, max_steps)
    return fine, abs(fine - coarse)
