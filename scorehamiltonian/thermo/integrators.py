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
import math
from collections.abc import Callable
from typing import Any

import scipy.optimize
import torch

__all__ = ["ORDERS", "Field", "integrate", "integrator_error"]

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
#: Steps shorter than this fraction of the longest are never split (``_split_steps``).
_NEGLIGIBLE_STEP = 1e-3


def _fixed_step(field: Field, x: torch.Tensor, m: int, times: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate (x, l) over the increasing ``times`` with an explicit Runge-Kutta tableau."""
    a, b, c = _TABLEAUS[method]
    state = (x, torch.zeros(x.shape[0], m, dtype=x.dtype, device=x.device))
    for t0, t1 in itertools.pairwise(times):
        h = t1 - t0
        stages: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, ci in enumerate(c):
            stages.append(field(t0 + ci * h, _combine(state, h, a[i - 1], stages) if i else state))
        state = _combine(state, h, b, stages)
    return state


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
    """The smallest ratio r = h_small / h_large of two paired steps at which step doubling
    still covers their local error c (h_1^(p+1) + h_2^(p+1)) (equal c): the root of
    f (1 + r)^(p+1) - f (1 + r^(p+1)) - (1 + r^(p+1)) = 0, f = 2 for Euler (its estimate is
    doubled) else 1; 0.149 for RK4, 0.268 for Heun and Euler."""
    f = 2.0 if order == 1 else 1.0
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
    """Step-doubling error of values[0], the observed ratio and whether the refinement is asymptotic.

    With d1 = |E_h - E_2h| and d2 = |E_2h - E_4h|: error = max(d1, d2 / 2^p) (times 2 for Euler);
    the second term covers points where the leading error term changes sign and d1 alone
    vanishes. Ratio d2 / d1 (2^p asymptotically). Asymptotic: ratio >= 2^(p-1), or d1 at
    round-off level. dopri5: |E - E_loose|, ratio NaN, no such check (all True).
    """
    d1 = (values[0] - values[1]).abs()
    if method == "dopri5":
        return d1, torch.full_like(d1, math.nan), torch.ones_like(d1, dtype=torch.bool)
    order = ORDERS[method]
    d2 = (values[1] - values[2]).abs()
    ratio = d2 / d1
    roundoff = d1 <= _ROUNDOFF_RTOL * (1.0 + values[0].abs())
    error = torch.maximum(d1, d2 / 2.0**order) * (2.0 if order == 1 else 1.0)
    if len(values) == 4:
        error = error + (values[0] - values[3]).abs() * 2.0**order / (2.0**order - 1.0)
    return error, ratio, (ratio >= 2.0 ** (order - 1)) | roundoff


def integrate(field: Field, x: torch.Tensor, m: int, times: torch.Tensor, method: str, rtol: float, atol: float
           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_T, l per probe) on the grid and its error-estimating companions.

    Fixed steps: the grid, every other time of it and every fourth (step doubling twice), and
    the grid with the steps of ``_split_steps`` halved when there are any.
    dopri5: tolerances (rtol, atol) and ten times looser.
    """
    if method == "dopri5":
        span = times[[0, -1]]
        return [_dopri5(field, x, m, span, f * rtol, f * atol) for f in (1.0, _LOOSE_FACTOR)]
    if method not in _TABLEAUS:
        raise ValueError(f"method must be one of 'rk4', 'heun', 'euler', 'dopri5'; got {method!r}")
    grids = [times, _coarse(times), _coarse(_coarse(times))]
    split = _split_steps(times, ORDERS[method])
    if split:
        grids.append(_refine(times, split))
    return [_fixed_step(field, x, m, grid, method) for grid in grids]
