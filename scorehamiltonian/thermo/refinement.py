"""Accuracy on request: each point's time grid for the probability-flow energy (THEORY section 5).

:func:`refine` drives :func:`~.energy.energy` when no grid is given. Every point starts on the
pilot grid (EDM, ``PILOT_STEPS`` steps), which only shows where the errors are. After each solve (step doubling,
:func:`~.integrators.integrate_recorded`) a point whose error bar is trusted and meets its
request is done; every other point gets its own next grid, on which the local errors of its
last solve are spread evenly (equidistribution), with the fewest steps the error model allows:

- local errors: step doubling's trajectory differences give, for coarse step j of length
  H = h_1 + h_2, |dD_j| ~ c_j (H^(p+1) - h_1^(p+1) - h_2^(p+1)), so c_j, the local error
  c_j h^(p+1) of a step h there (p the order);
- grid: step density proportional to c^(1/(p+1)), which minimises sum_k c h_k^(p+1) over
  grids of N steps (every step then makes the same error), mixed with a uniform density of
  weight ``BETA`` so that no stretch of time goes unresolved; the map from the step index to
  time is the monotone cubic (Fritsch-Carlson) interpolant of the cumulative density, smooth
  as step doubling needs (every other time of the grid is the same map with N / 2 steps);
- steps: the model predicts kappa sum_j c_j H_j^(p+1) / (w_j N)^p for the error of the new
  grid (w_j the share of the steps in coarse step j), kappa the ratio of the last Richardson
  estimate to the model's own prediction on the last grid (the cancellation between local
  errors, clipped to [1/2, 4]). N is the smallest allowed count (a multiple of 4, four
  counts per octave above 64) at which SAFETY times that is half the integrator's target,
  at least twice the last N where the last bar was not trusted, and more than the last N
  after the pilot (a point is refined again only where its last grid missed the target;
  where the model asked for no more steps, it had repeated that grid for ever: two of 600
  samples of the 2D four-mode mixture, on 32 steps). A point's step count therefore grows
  every round after the first, and the refinement ends.

The integrator's target is max(r - o, r / 4, o / 4), r the request and o the parts of the
error that refinement cannot reduce (reference law, Hutchinson, start). Where o exceeds r the
point cannot reach its request, and its integrator is refined only to a quarter of o (its bar
then at most 1.25 o): a learned score read from its smallest training time (start error
0.4 - 1.4 nats on a 2D model) took 32 - 64 steps, not 44 - 112 to a quarter of 1e-3.

A point whose next N would exceed ``max_steps`` keeps its last result and is reported as
not having reached its request.

Batching: the grids of a round are solved together, each shorter grid preceded by steps of
length 0 at its start time, which leave the state as it is (a row's result is that of its own
grid; its evaluations are counted without them). A call of the score on a small batch costs
mostly its fixed overhead, so one solve for the round's step counts rather than one for each
(the trimodal mixture at atol 1e-5, 30 points: 2240 calls and 0.46 s against 7112 and 1.28 s);
step counts whose padding would cost more than the calls it saves (``OVERHEAD_ROWS``) get a
solve of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .integrators import SAFETY

__all__ = ["BETA", "MIN_STEPS", "OVERHEAD_ROWS", "PILOT_STEPS", "Outcome", "allowed_steps", "equidistributed_times",
           "padded", "refine"]

#: Steps of the pilot grid every point starts on (with 16, the local errors it showed were too
#: rough: the first equidistributed grid missed the target by 100-7000x on the asymmetric
#: mixture under OU at atol 1e-5, costing a second one; with 32 it met it: 688 evaluations
#: per point instead of 1013).
PILOT_STEPS = 32
#: Share of the steps spread uniformly in t on an equidistributed grid.
BETA = 0.1
#: The fewest steps a result is accepted on (its coarsest companion then has 8): on coarser
#: grids step doubling was seen to under-estimate while looking asymptotic (asymmetric mixture,
#: OU, 24 steps: bar 7e-4, error 1.1e-3 at observed ratio 52). Nor is a result accepted on the
#: pilot grid: EDM is a poor grid under OU, and on the 32-step pilot two points of the trimodal
#: mixture were under-covered 18x and 19x at observed ratios 13 and 49.
MIN_STEPS = 32
#: Rows whose work in one call of the score equals the call's fixed cost (measured on CPU:
#: 0.16 ms per call against 0.09 - 0.3 us per row for the built-in mixtures, 1.2 ms against
#: 1.1 us for an ensemble of three MLPs; larger on a GPU). A round's grids of n steps for R
#: rows join a solve of N > n steps where R (N - n) <= OVERHEAD_ROWS n: the padding then costs
#: at most the calls it saves (module docstring, Batching).
OVERHEAD_ROWS = 512
#: The error model aims at this fraction of the integrator's target.
_AIM = 0.5
#: Bounds of the cancellation factor kappa of the error model.
_KAPPA = (0.5, 4.0)
#: Differences below this fraction of 1 + |E| are round-off, not local errors.
_ROUNDOFF_RTOL = 1e-12


@dataclass(frozen=True)
class Outcome:
    """What :func:`refine` needs of a solve of some points on their grids (all (k,) but
    ``increments``, (k, N / 2)).

    value : the energies. error : the integrator's error bar. trusted : whether that bar can
    be trusted. other_error : the parts of the error that refinement cannot reduce (reference
    law, Hutchinson, start). increments : :func:`~.integrators.trajectory_differences`.
    """

    value: torch.Tensor
    error: torch.Tensor
    trusted: torch.Tensor
    other_error: torch.Tensor
    increments: torch.Tensor


def allowed_steps(n: float) -> int:
    """The smallest allowed step count >= n: a multiple of 4 up to 64, above that
    16, 20, 24 or 28 times a power of 2 (at most 25 % above n)."""
    if n <= 64:
        return 4 * math.ceil(n / 4)
    power = 2 ** max(0, math.floor(math.log2(n / 16)) - 1)
    return next(a * p for p in (power, 2 * power, 4 * power) for a in (16, 20, 24, 28) if a * p >= n)


def _local_error_coefficients(times: torch.Tensor, increments: torch.Tensor, values: torch.Tensor,
                              order: int) -> torch.Tensor:
    """c_j (k, N / 2) from the increments of step doubling on per-row grids (N + 1, k)."""
    h = times.diff(dim=0).T
    h1, h2 = h[:, 0::2], h[:, 1::2]
    big = (h1 + h2) ** (order + 1) - h1 ** (order + 1) - h2 ** (order + 1)
    size = increments.abs()
    size = torch.where(size <= _ROUNDOFF_RTOL * (1.0 + values.abs())[:, None], 0.0, size)
    return torch.where(big > 0, size / big, 0.0)


def _cell_shares(coarse: torch.Tensor, c: torch.Tensor, order: int) -> torch.Tensor:
    """w_j (k, N / 2): the share of the next grid's steps in each coarse step."""
    H = coarse.diff(dim=0).T
    density = c ** (1.0 / (order + 1)) * H
    total = density.sum(-1, keepdim=True)
    uniform = H / H.sum(-1, keepdim=True)
    equi = torch.where(total > 0, density / torch.where(total > 0, total, 1.0), uniform)
    return (1.0 - BETA) * equi + BETA * uniform


def equidistributed_times(coarse: torch.Tensor, shares: torch.Tensor, n_steps: int) -> torch.Tensor:
    """(n_steps + 1, k) increasing times whose step density puts the share w_j of the steps in
    coarse step j (``coarse`` (K + 1, k), ``shares`` (k, K)): the Fritsch-Carlson monotone
    cubic through (cumulative share, time), at n_steps + 1 equally spaced shares."""
    u = torch.cat([torch.zeros_like(shares[:, :1]), shares.cumsum(-1)], -1)
    u = u / u[:, -1:]
    t = coarse.T
    du, dt = u.diff(dim=-1), t.diff(dim=-1)
    secant = dt / du
    w1, w2 = 2 * du[:, 1:] + du[:, :-1], du[:, 1:] + 2 * du[:, :-1]
    inner = (w1 + w2) / (w1 / secant[:, :-1] + w2 / secant[:, 1:])
    slope = torch.cat([secant[:, :1], inner, secant[:, -1:]], -1)
    query = (torch.arange(n_steps + 1, dtype=u.dtype, device=u.device) / n_steps).expand(u.shape[0], -1)
    j = torch.searchsorted(u.contiguous(), query.contiguous(), right=True).clamp(1, u.shape[1] - 1) - 1
    u0, width = u.gather(1, j), du.gather(1, j)
    s = ((query - u0) / width).clamp(0.0, 1.0)
    t0, t1 = t.gather(1, j), t.gather(1, j + 1)
    m0, m1 = slope.gather(1, j) * width, slope.gather(1, j + 1) * width
    times = ((2 * s**3 - 3 * s**2 + 1) * t0 + (s**3 - 2 * s**2 + s) * m0 + (-2 * s**3 + 3 * s**2) * t1
             + (s**3 - s**2) * m1)
    times[:, 0], times[:, -1] = t[:, 0], t[:, -1]
    return times.T


def _next_steps(times: torch.Tensor, outcome: Outcome, target: torch.Tensor, order: int, first: bool
                ) -> tuple[torch.Tensor, list[int]]:
    """The shares of the next grids and their step counts (module docstring), per row; ``first``:
    the last grid was the pilot."""
    c = _local_error_coefficients(times, outcome.increments, outcome.value, order)
    coarse = times[::2]
    shares = _cell_shares(coarse, c, order)
    H = coarse.diff(dim=0).T
    h = times.diff(dim=0).T
    last = (c * (h[:, 0::2] ** (order + 1) + h[:, 1::2] ** (order + 1))).sum(-1)
    kappa = torch.where(last > 0, outcome.error / SAFETY / torch.where(last > 0, last, 1.0), 1.0).clamp(*_KAPPA)
    unit = (c * H ** (order + 1) / shares**order).sum(-1)
    needed = (SAFETY * kappa * unit / (_AIM * target)) ** (1.0 / order)
    n_last = times.shape[0] - 1
    steps = []
    for need, trusted in zip(needed.tolist(), outcome.trusted.tolist()):
        floor = 2 * n_last if not trusted else (n_last / 2 if first else n_last + 1)
        steps.append(allowed_steps(max(need if math.isfinite(need) else 2 * n_last, floor, MIN_STEPS)))
    return shares, steps


def padded(grids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids (n_i + 1, k_i) as one block (N + 1, sum k_i), N the longest n_i, each preceded by
    N - n_i steps of length 0 at its start time (which leave a Runge-Kutta state as it is), and
    each column's own n_i."""
    longest = max(grid.shape[0] for grid in grids) - 1
    times = torch.cat([torch.cat([grid[:1].expand(longest + 1 - grid.shape[0], -1), grid]) for grid in grids], -1)
    steps = torch.cat([torch.full((grid.shape[1],), grid.shape[0] - 1, device=grid.device) for grid in grids])
    return times, steps


def _merged(pending: dict[int, list[tuple[torch.Tensor, torch.Tensor]]]
            ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The round's solves: (rows, times (N + 1, k), steps (k,)) (``padded``). From the longest
    step count down, the R rows of n steps join the last solve begun (N steps) where
    R (N - n) <= ``OVERHEAD_ROWS`` n, else begin one."""
    batches: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]] = []
    for n in sorted(pending, reverse=True):
        rows = sum(len(r) for r, _ in pending[n])
        if not batches or rows * (batches[-1][0] - n) > OVERHEAD_ROWS * n:
            batches.append((n, []))
        batches[-1][1].extend(pending[n])
    return [(torch.cat([r for r, _ in parts]), *padded([grid for _, grid in parts])) for _, parts in batches]


def refine(solve: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Outcome], pilot: torch.Tensor,
           n_rows: int, request: Callable[[torch.Tensor], torch.Tensor], order: int, max_steps: int) -> None:
    """Solve every row to its request with the fewest steps (module docstring).

    solve(rows, times, steps) solves the rows (a LongTensor) on per-row grids (N + 1,
    len(rows)), row i's own grid of steps[i] steps being the last steps[i] + 1 times of its
    column (before them, steps of length 0), and keeps what it computed (the last solve of a
    row is its result). pilot : (N0 + 1,) the first grid (N0 a multiple of 4). request(value) :
    the accuracy asked for, atol + rtol |E|.
    """
    groups = [(torch.arange(n_rows, device=pilot.device), *padded([pilot[:, None].expand(-1, n_rows)]))]
    first = True
    while groups:
        pending: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for rows, times, steps in groups:
            outcome = solve(rows, times, steps)
            wanted = request(outcome.value)
            target = torch.maximum(torch.maximum(wanted - outcome.other_error, wanted / 4), outcome.other_error / 4)
            done = outcome.trusted & (outcome.error <= target) & (steps >= MIN_STEPS) & (not first)
            for n in steps[~done].unique().tolist():
                todo = (~done & (steps == n)).nonzero().flatten()
                pad = times.shape[0] - 1 - n
                part = Outcome(*(getattr(outcome, f)[todo] for f in ("value", "error", "trusted", "other_error")),
                               outcome.increments[todo, pad // 2:])
                own = times[pad:, todo]
                shares, counts = _next_steps(own, part, target[todo], order, first)
                counts = torch.tensor(counts)
                for m in sorted(set(counts.tolist())):
                    if m > max_steps:
                        continue
                    chosen = (counts == m).nonzero().flatten()
                    grid = equidistributed_times(own[::2, chosen], shares[chosen], m)
                    pending.setdefault(m, []).append((rows[todo[chosen]], grid))
        groups = _merged(pending)
        first = False
