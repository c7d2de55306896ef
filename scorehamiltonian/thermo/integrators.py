"""Integrating the probability-flow state with an error estimate: fixed-step Runge-Kutta and dopri5.

:func:`integrate` carries the augmented state (x, l) of the probability-flow readout over a
time grid with an explicit Runge-Kutta tableau (Euler, Heun, RK4) on the grid, every other
time of it and every fourth (step doubling twice), plus the grid with the steps that step
doubling cannot see halved; or adaptively with torchdiffeq's dopri5 at the requested
tolerances and ten times looser. :func:`integrator_error` turns those solutions into the
error estimate and the asymptotic check stated in :mod:`.energy` (THEORY section 5).
"""


from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import scipy.optimize
import torch

__all__ = ["DOPRI5_RATIO", "ORDERS", "SAFETY", "STAGES", "Field", "check_method", "integrate", "integrate_recorded",
           "integrator_error", "trajectory_differences"]

#: The augmented field (t, (x, l)) -> (dx/dt, dl/dt per probe) that the integrators carry.
Field = Callable[[torch.Tensor, tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]

#: Differences below this fraction of 1 + |E| count as round-off in the asymptotic check.
_ROUNDOFF_RTOL = 1e-10
#: Factor between the tolerances of the dopri5 solve and of its error-estimating companion.
_LOOSE_FACTOR = 10.0
#: Butcher tableaus (a, b, c) of the explicit fixed-step integrators, and their orders.
_TABLEAUS: dict[str, tuple[list[list[float]], list[float], list[float]]] = {
    "euler": ([], [1.0], [0.0]),
    "heun": ([[1.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}
ORDERS = {"euler": 1, "heun": 2, "rk4": 4, "dopri5": 5}
#: Score evaluations per step of the fixed-step integrators.
STAGES = {name: len(tableau[1]) for name, tableau in _TABLEAUS.items()}
#: The factor of the integrator's error bar over the Richardson estimate of its error: the
#: estimate's 99th percentile of true / estimated error on asymptotic points of the benchmark
#: mixtures (RK4 on EDM and uniform grids of 32-256 steps, OU and VE) was about 10, its 90th 1.3
#: (the bar / true ratio is then SAFETY at the median).
SAFETY = 3.0
#: The ratio of successive dopri5 differences at tolerances tol, 10 tol, 100 tol under
#: tolerance proportionality (global error ~ tol^(5/6)).
DOPRI5_RATIO = 10.0 ** (5.0 / 6.0)
#: Steps shorter than this fraction of the longest are never split (``_split_steps``).
_NEGLIGIBLE_STEP = 1e-3


def _fixed_step(field: Field, x: torch.Tensor, m: int, times: torch.Tensor, method: str, record: bool = False
                ) -> Any:
    """Integrate (x, l) over the increasing ``times`` with an explicit Runge-Kutta tableau.

    ``times``: (N + 1,) one grid for every row, or (N + 1, n) one grid per row. Returns the
    final state; with ``record``, also the states at every time and the first stage (the
    field at the start of each step), for :func:`trajectory_differences`.
    """
    a, b, c = _TABLEAUS[method]
    state = (x, torch.zeros(x.shape[0], m, dtype=x.dtype, device=x.device))
    nodes, slopes = [state], []
    for t0, t1 in itertools.pairwise(times):
        h = t1 - t0
        column = h.reshape(-1, 1)
        stages: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, ci in enumerate(c):
            stages.append(field(t0 + ci * h, _combine(state, column, a[i - 1], stages) if i else state))
        state = _combine(state, column, b, stages)
        if record:
            nodes.append(state)
            slopes.append(stages[0])
    return (state, nodes, slopes) if record else state


def _combine(state: tuple[torch.Tensor, ...], h: torch.Tensor, coeffs: list[float],
             stages: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """state + h sum_i coeffs_i stages_i, component by component."""
    return tuple(s0 + h * sum(c * k[j] for c, k in zip(coeffs, stages)) for j, s0 in enumerate(state))


def _dopri5(field: Field, x: torch.Tensor, m: int, span: torch.Tensor, rtol: float, atol: float) -> tuple[torch.Tensor, torch.Tensor]:
    from torchdiffeq import odeint

    y0 = (x, torch.zeros(x.shape[0], m, dtype=x.dtype, device=x.device))
    xs, ls = odeint(field, y0, span, rtol=rtol, atol=atol, method="dopri5")
    return xs[-1], ls[-1]


def _single_step(steps: Any) -> int | None:
    """The step left unpaired by step doubling, given the step lengths (a torch or numpy
    vector): none for an even count, else the smallest step at an even position (the pairs
    before and after it then tile the rest)."""
    if len(steps) % 2 == 0:
        return None
    return 2 * int(steps[0::2].argmin())


def _coarse(times: torch.Tensor) -> torch.Tensor:
    """Every other time of the grid, keeping both ends; with an odd number of steps the
    smallest step at an even position stays single (``_single_step``)."""
    j = _single_step(times.diff().abs())
    if j is None:
        return times[::2]
    return torch.cat([times[: j + 1 : 2], times[j + 1 :: 2]])


@functools.cache
def _least_pair_ratio(order: int) -> float:
    """The smallest ratio r = h_small / h_large of two paired steps at which the step-doubling
    bar still covers their local error c (h_1^(p+1) + h_2^(p+1)) (equal c): the bar is
    SAFETY |E_h - E_2h| / (2^p - 1), so r is the root of
    f ((1 + r)^(p+1) - 1 - r^(p+1)) = 1 + r^(p+1), f = SAFETY / (2^p - 1); 0.44 for RK4,
    0.27 for Heun, 0.17 for Euler (SAFETY = 3)."""
    f = SAFETY / (2.0**order - 1.0)
    return float(scipy.optimize.brentq(
        lambda r: f * ((1 + r) ** (order + 1) - 1 - r ** (order + 1)) - (1 + r ** (order + 1)), 1e-9, 1.0))


def _split_steps(times: torch.Tensor, order: int) -> list[int]:
    """The steps whose error step doubling cannot see: the larger step of every pair of the
    first coarsening whose ratio h_small / h_large is below ``_least_pair_ratio``, and a
    single step larger than both neighbours; steps shorter than ``_NEGLIGIBLE_STEP`` times
    the longest are left out (their error, ~h^(p+1), cannot matter)."""
    steps = times.diff().abs().cpu().numpy()
    j = _single_step(steps)
    starts = list(range(0, len(steps) - 1, 2)) if j is None else (
        list(range(0, j, 2)) + list(range(j + 1, len(steps) - 1, 2)))
    least, floor = _least_pair_ratio(order), _NEGLIGIBLE_STEP * steps.max()
    split = [a if steps[a] > steps[a + 1] else a + 1 for a in starts
             if min(steps[a], steps[a + 1]) < least * max(steps[a], steps[a + 1])]
    if j is not None and 0 < j < len(steps) - 1 and steps[j] > max(steps[j - 1], steps[j + 1]):
        split.append(j)
    return sorted(i for i in split if steps[i] > floor)


def _refine(times: torch.Tensor, split: list[int]) -> torch.Tensor:
    """The grid with the midpoint of each step in ``split`` inserted."""
    mids = (times[split] + times[[i + 1 for i in split]]) / 2
    return torch.cat([times, mids]).sort(descending=bool(times[0] > times[-1])).values


def integrator_error(values: list[torch.Tensor], method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The error bar of values[0], the observed ratio and whether the bar can be trusted.

    With d1 = |E_h - E_2h|, d2 = |E_2h - E_4h| and q = 2^p (dopri5: E at tolerances tol, 10 tol,
    100 tol and q = 10^(5/6), the global error being proportional to tol^(p/(p+1))): the
    Richardson estimate of the error of E_h is R = max(d1, d2 / q) / (r - 1), r the observed
    ratio d2 / d1 kept within [(q + 1) / 2, q] (the extrapolation at the observed order, never
    beyond the method's; the d2 term covers points where the leading error term changes sign
    and d1 alone vanishes). The sequence is asymptotic where the observed ratio is at least
    q / 2 (or d1 is at round-off level); the bar is then ``SAFETY`` R. Elsewhere it is SAFETY max(d1, d2), and
    it is trusted only where the differences shrink at least as fast as a first-order
    method's (ratio >= 2: the remaining changes then sum to at most d1); a point whose
    differences do not shrink is not trusted (``converged`` False). The Richardson error of
    the steps step doubling cannot see (values[3], ``_split_steps``) is added, times SAFETY.
    """
    d1 = (values[0] - values[1]).abs()
    d2 = (values[1] - values[2]).abs()
    q = DOPRI5_RATIO if method == "dopri5" else 2.0 ** ORDERS[method]
    ratio = d2 / d1
    roundoff = d1 <= _ROUNDOFF_RTOL * (1.0 + values[0].abs())
    asymptotic = (ratio >= q / 2) | roundoff
    observed = torch.nan_to_num(ratio, nan=q).clamp(max=q).clamp(min=(q + 1.0) / 2.0)
    richardson = torch.maximum(d1, d2 / q) / (observed - 1.0)
    if len(values) == 4:
        richardson = richardson + (values[0] - values[3]).abs() * q / (q - 1.0)
    error = SAFETY * torch.where(asymptotic, richardson, torch.maximum(d1, d2))
    return error, ratio, asymptotic | (ratio >= 2.0)


def integrate(field: Field, x: torch.Tensor, m: int, times: torch.Tensor, method: str, rtol: float, atol: float
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x_T, l per probe) on the grid, then its error-estimating companions, one at a time.

    Fixed steps: the grid, every other time of it and every fourth (step doubling twice), and
    the grid with the steps of ``_split_steps`` halved when there are any.
    dopri5: solver tolerances (rtol, atol), ten and a hundred times looser.
    """
    if method == "dopri5":
        span = times[[0, -1]]
        for factor in (1.0, _LOOSE_FACTOR, _LOOSE_FACTOR**2):
            yield _dopri5(field, x, m, span, factor * rtol, factor * atol)
        return
    check_method(method)
    grids = [times, _coarse(times), _coarse(_coarse(times))]
    split = _split_steps(times, ORDERS[method])
    if split:
        grids.append(_refine(times, split))
    for grid in grids:
        yield _fixed_step(field, x, m, grid, method)


def check_method(method: str) -> None:
    """ValueError unless ``method`` is one of the integrators."""
    if method not in ORDERS:
        raise ValueError(f"method must be one of 'rk4', 'heun', 'euler', 'dopri5'; got {method!r}")


def integrate_recorded(field: Field, process: Any, x: torch.Tensor, m: int, times: torch.Tensor, method: str
                       ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Step doubling on per-row grids of N steps, N a multiple of 4 (``times`` (N + 1, n),
    increasing): the end states on the grid, every other time and every fourth, as
    :func:`integrate`, and the local differences of :func:`trajectory_differences`."""
    fine = _fixed_step(field, x, m, times, method, record=True)
    coarse = _fixed_step(field, x, m, times[::2], method, record=True)
    coarser = _fixed_step(field, x, m, times[::4], method)
    return [fine[0], coarse[0], coarser], trajectory_differences(process, times, fine, coarse)


def trajectory_differences(process: Any, times: torch.Tensor, fine: Any, coarse: Any) -> torch.Tensor:
    """How much each step of the coarse grid adds to E_h - E_2h: (n, N / 2) increments of
    D(t) = (l_h - l_2h)(t) + s_t(x_h(t)) . (x_h - x_2h)(t) over the coarse steps (l averaged
    over probes). D is the first-order change of the invariant l(t) + log p_t(x(t)) of the
    exact flow (:mod:`.energy`), so an increment is the local error made in that step (coarse
    step minus its two fine steps), not carried from earlier ones. s is read off the first
    stage of each fine step, s = (f x - dx/dt) / (g^2 / 2); at the start D = 0, and at the
    end s is that of the reference law, -x / sigma_T^2. ``process``: the forward process
    (its f, g^2, sigma); ``fine``, ``coarse``: :func:`_fixed_step`'s recorded output."""
    _, f_nodes, f_slopes = fine
    _, c_nodes, _ = coarse
    differences = [torch.zeros_like(f_nodes[0][1][:, 0])]
    for j in range(1, len(c_nodes)):
        (x_h, l_h), (x_2h, l_2h) = f_nodes[2 * j], c_nodes[j]
        t = times[2 * j]
        if 2 * j < len(f_slopes):
            half_g2 = 0.5 * process.g2(t)
            s = (process.f(t)[:, None] * x_h - f_slopes[2 * j][0]) / half_g2[:, None]
        else:
            s = -x_h / process.sigma(t)[:, None] ** 2
        differences.append((l_h - l_2h).mean(-1) + (s * (x_h - x_2h)).sum(-1))
    return torch.stack(differences, -1).diff(dim=-1)
