"""The alchemical path between two end states, and Langevin sampling along it (THEORY section 5).

End states p_i proportional to exp(-U_i) are callables, Gaussian mixtures or learned scores
(:class:`ScoreEnergy`: the probability-flow energy of :func:`~.energy.energy`);
:class:`LinearPath` is U_lambda = (1 - lambda) U_0 + lambda U_1 with checked, counted
energies and gradients. :func:`ensemble` draws independent samples of p_lambda: the end
states' own samples, or MALA chains (drift truncated as in MALTA, step adapted toward
acceptance 0.57) started from them; :func:`langevin_step` is the proposal with its
Metropolis-Hastings log-ratio that MALA and the ULA moves of AIS share. :func:`setup_path`
assembles the path, the end states' samples and the sampler settings for the estimators of
:mod:`.free_energy` and the schedules of :mod:`.lambda_schedules`.
"""


from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..common.errors import InputShapeError, NonFiniteScoreError, NotDifferentiableError, SamplesRequiredError
from ..common.validation import as_float_tensor
from ..score.interface import Score
from ..score.mixture import GaussianMixture
from .energy import energy, start_time

__all__ = [
    "TARGET_ACCEPTANCE",
    "Ensemble",
    "LinearPath",
    "Sampling",
    "ScoreEnergy",
    "ensemble",
    "langevin_step",
    "mala",
    "mixing_z",
    "setup_path",
]

#: Target acceptance rate of the step-size adaptation of MALA chains.
TARGET_ACCEPTANCE = 0.57
#: Langevin drifts h |grad U| are truncated at this many noise lengths sqrt(2 h d).
_DRIFT_LIMIT = 2.0
#: Fraction of 1 / L (L = E|grad U|^2 / d, the mean curvature) used as the default Langevin step.
_STEP_FRACTION = 0.5


class ScoreEnergy:
    """An end state from a (learned) score: U(x) = -log p_0(x) by the probability-flow ODE.

    U is normalised (Z = 1 up to the ODE's error), its gradient is -s_{t_start}(x) (t_start as
    in :func:`energy`: the process's t_min, or a network's smallest training time where it is
    undefined at t_min), and each call records the largest reported energy error in
    ``max_error`` (added to the systematic error of a free energy). ``schedule`` and
    ``energy_kwargs`` go to :func:`energy` (closure audit off by default: call :func:`energy`
    once for it).
    """

    def __init__(self, score: Score, schedule: Any = None, **energy_kwargs: Any) -> None:
        self.score, self.schedule = score, schedule
        given = energy_kwargs.get("t_start")
        self.t_start = start_time(score) if given is None else float(given)
        self.energy_kwargs = {"closure": False, **energy_kwargs, "t_start": self.t_start}
        self.dim = score.dim
        self.max_error = 0.0

    def __repr__(self) -> str:
        return f"ScoreEnergy({self.score!r})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_error(x)[0]

    def with_error(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U(x) and its reported error bar at each point (both (n,), k_B T)."""
        result = energy(self.score, None, x, self.schedule, **self.energy_kwargs)
        self.max_error = max(self.max_error, float(result.error.max()))
        return result.value, result.error

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """grad U = -s_{t_start}(x)."""
        return -self.score(x, self.t_start)


@dataclass
class _State:
    """An end state: energy U(x) (n,), its gradient (n, d), an exact sampler or None, its label,
    the largest energy error seen so far, and U(x) with each point's error bar (zero when exact)."""

    energy: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    sample: Callable[[int, torch.Generator], torch.Tensor] | None
    dim: int | None
    name: str
    systematic: Callable[[], float]
    with_error: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    def energy_and_error(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.with_error is not None:
            return self.with_error(x)
        return self.energy(x), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)


def _autograd_gradient(function: Callable[[torch.Tensor], torch.Tensor], name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """grad U by autograd; differentiable again (create_graph) when x itself requires grad."""
    def grad(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            u = function(leaf)
            if not (isinstance(u, torch.Tensor) and u.requires_grad):
                raise NotDifferentiableError(
                    f"{name} does not depend differentiably on x; Langevin moves and gaps need its gradient"
                )
            (g,) = torch.autograd.grad(u.sum(), leaf, create_graph=x.requires_grad)
        return g

    return grad


def _as_state(obj: Any, name: str) -> _State:
    if isinstance(obj, GaussianMixture):
        return _State(lambda x: -obj.log_prob(x), lambda x: -obj.score(x), obj.sample, obj.dim, name, lambda: 0.0)
    if isinstance(obj, Score):
        obj = ScoreEnergy(obj)
    if isinstance(obj, ScoreEnergy):
        return _State(obj, obj.grad, None, obj.dim, name, lambda: obj.max_error, obj.with_error)
    if callable(obj):
        return _State(obj, _autograd_gradient(obj, name), None, None, name, lambda: 0.0)
    raise TypeError(f"{name} must be a callable U(x), a GaussianMixture, a Score or a ScoreEnergy; got {type(obj).__name__}")


class LinearPath:
    """The linear path U_lambda = (1 - lambda) U_0 + lambda U_1, with checked energies and a counter."""

    def __init__(self, state_0: _State, state_1: _State) -> None:
        self.states = (state_0, state_1)
        self.n_energy = 0
        self.n_grad = 0

    def ends(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_0(x), U_1(x)), each (n,), finite."""
        return self.ends_with_errors(x)[0]

    def ends_with_errors(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """((U_0(x), U_1(x)), (their error bars)), each (n,), finite: the bars are zero for exact energies."""
        self.n_energy += x.shape[0]
        pairs = [s.energy_and_error(x) for s in self.states]
        energies = tuple(_checked_energy(u, x, s.name) for (u, _), s in zip(pairs, self.states))
        return energies, tuple(e.detach().to(x.dtype) for _, e in pairs)

    def energy_and_grad(self, x: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        u0, u1 = self.ends(x)
        self.n_grad += x.shape[0]
        g0, g1 = (s.grad(x).detach() for s in self.states)
        return (1 - lam) * u0 + lam * u1, (1 - lam) * g0 + lam * g1

    def systematic(self) -> float:
        return sum(s.systematic() for s in self.states)


def _checked_energy(u: Any, x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(u, torch.Tensor) or u.shape != x.shape[:1]:
        shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise InputShapeError(f"{name} returned {shape} for x of shape {tuple(x.shape)}; expected ({x.shape[0]},)")
    bad = ~torch.isfinite(u)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise NonFiniteScoreError(
            f"energy {name} is not finite at {int(bad.sum())} of {u.numel()} points; first at "
            f"x = {x[i].detach().cpu().tolist()}: {float(u[i])!r}"
        )
    return u.detach().to(x.dtype)


@dataclass(frozen=True)
class Sampling:
    """Settings of the MALA / ULA moves: step size h (units x^2), burn-in steps, generator."""

    step: float
    n_steps: int
    generator: torch.Generator


def _drift(g: torch.Tensor, step: float) -> torch.Tensor:
    """-h grad U truncated to norm <= _DRIFT_LIMIT sqrt(2 h d) (MALTA, Roberts & Tweedie 1996)."""
    drift = -step * g
    limit = _DRIFT_LIMIT * math.sqrt(2 * step * g.shape[-1])
    return drift * (limit / drift.norm(dim=-1, keepdim=True).clamp_min(limit))


def langevin_step(path: LinearPath, x: torch.Tensor, u: torch.Tensor, g: torch.Tensor, lam: float, step: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One Langevin proposal y = x + drift(x) + sqrt(2h) xi at lambda and its MH log-ratio
    -U(y) + U(x) + log q(x | y) - log q(y | x), q the Gaussian proposal kernel."""
    noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    y = x + _drift(g, step) + math.sqrt(2 * step) * noise
    uy, gy = path.energy_and_grad(y, lam)
    forward = ((y - x - _drift(g, step)) ** 2).sum(-1) / (4 * step)
    backward = ((x - y - _drift(gy, step)) ** 2).sum(-1) / (4 * step)
    return y, uy, gy, -uy + u + forward - backward


def mala(path: LinearPath, x: torch.Tensor, lam: float, step: float, n_steps: int, generator: torch.Generator
          ) -> tuple[torch.Tensor, float]:
    """n_steps MALA steps at lambda with a fixed step; returns the states and the acceptance rate."""
    u, g = path.energy_and_grad(x, lam)
    accepted = 0.0
    for _ in range(n_steps):
        y, uy, gy, log_ratio = langevin_step(path, x, u, g, lam, step, generator)
        accept = torch.log(torch.rand(x.shape[0], dtype=x.dtype, device=x.device, generator=generator)) < log_ratio
        x, u, g = (torch.where(accept[:, None], y, x), torch.where(accept, uy, u), torch.where(accept[:, None], gy, g))
        accepted += float(accept.to(x.dtype).mean())
    return x, accepted / max(n_steps, 1)


def _adapted_chains(path: LinearPath, x: torch.Tensor, lam: float, sampling: Sampling) -> tuple[torch.Tensor, float, float]:
    """MALA chains at lambda: the step adapted toward acceptance 0.57 over the first half of the
    steps (blocks of 10), then frozen for the second half. Returns final states, step, acceptance."""
    step = sampling.step
    half = sampling.n_steps // 2
    for _ in range(half // 10):
        x, rate = mala(path, x, lam, step, 10, sampling.generator)
        step *= math.exp(2.0 * (rate - TARGET_ACCEPTANCE))
    x, rate = mala(path, x, lam, step, sampling.n_steps - 10 * (half // 10), sampling.generator)
    return x, step, rate


def _draw(state: _State, given: torch.Tensor | None, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """n samples of an end state: the first n given ones, else its exact sampler, else None."""
    if given is not None:
        if given.shape[0] < n:
            raise SamplesRequiredError(f"{n} samples of {state.name} are needed; {given.shape[0]} were given")
        return given[:n]
    return None if state.sample is None else state.sample(n, generator)


@dataclass(frozen=True)
class Ensemble:
    """Samples at one lambda and how they were made (exact / given, or MALA chains)."""

    x: torch.Tensor
    start: torch.Tensor
    acceptance: float | None


def ensemble(path: LinearPath, lam: float, n: int, pools: tuple[torch.Tensor | None, torch.Tensor | None],
              sampling: Sampling) -> Ensemble:
    """n independent samples of p_lambda.

    At lambda = 0 or 1 the end state's own samples when it has them. Otherwise n MALA chains:
    half started from p_0's pool and half from p_1's when both exist (else all from the one that
    does), ``start`` recording 0 / 1 per chain.
    """
    end = {0.0: 0, 1.0: 1}.get(lam)
    if end is not None and pools[end] is not None:
        return Ensemble(pools[end][:n], torch.full((n,), end), None)
    have = [i for i in (0, 1) if pools[i] is not None]
    if not have:
        raise SamplesRequiredError(
            "neither end state can be sampled: pass samples_0 or samples_1 (or GaussianMixture end states)"
        )
    start = torch.arange(n) % len(have) if len(have) == 2 else torch.full((n,), have[0])
    x0 = torch.cat([pools[i][: int((start == i).sum())] for i in have])
    start = torch.cat([torch.full((int((start == i).sum()),), i) for i in have])
    x, _, rate = _adapted_chains(path, x0, lam, sampling)
    return Ensemble(x, start, rate)


def mixing_z(w: torch.Tensor, start: torch.Tensor) -> float:
    """|mean of W over chains from p_0 - over chains from p_1| in standard errors (0 with one start)."""
    groups = [w[start == i] for i in (0, 1)]
    if min(len(gr) for gr in groups) < 2:
        return 0.0
    diff = float(groups[0].mean() - groups[1].mean())
    se = math.sqrt(sum(float(gr.var()) / len(gr) for gr in groups))
    return abs(diff) / se if se > 0 else (0.0 if diff == 0 else math.inf)


def _default_step(path: LinearPath, pools: tuple[torch.Tensor | None, ...]) -> float:
    """0.5 / L with L = max over the end states' samples of E|grad U_i|^2 / d (= E[Laplacian U_i] / d)."""
    curvature = []
    for i, pool in enumerate(pools):
        if pool is not None:
            g = path.states[i].grad(pool).detach()
            curvature.append(float((g**2).sum(-1).mean()) / pool.shape[-1])
    return _STEP_FRACTION / max(curvature)


def setup_path(U_0: Any, U_1: Any, samples_0: Any, samples_1: Any, n: int, n_mcmc: int, step_size: float | None,
           generator: torch.Generator | None) -> tuple[LinearPath, tuple[torch.Tensor | None, ...], Sampling]:
    states = (_as_state(U_0, "U_0"), _as_state(U_1, "U_1"))
    given = [None if s is None else as_float_tensor(s, f"samples_{i}") for i, s in enumerate((samples_0, samples_1))]
    for i, g in enumerate(given):
        if g is not None and g.ndim != 2:
            raise InputShapeError(f"samples_{i} must have shape (n, d); got {tuple(g.shape)}")
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    pools = tuple(_draw(s, g, n, generator) for s, g in zip(states, given))
    dims = {d for d in [s.dim for s in states] + [p.shape[1] for p in pools if p is not None] if d is not None}
    if len(dims) > 1:
        raise InputShapeError(
            f"the end states live in different dimensions {sorted(dims)} (U_0 / U_1 dims "
            f"{[s.dim for s in states]}, ensembles {[None if p is None else p.shape[1] for p in pools]})"
        )
    path = LinearPath(*states)
    step = _default_step(path, pools) if step_size is None and any(p is not None for p in pools) else step_size
    if step is None:
        raise SamplesRequiredError("neither end state can be sampled: pass samples_0 or samples_1")
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step_size must be a positive finite number; got {step!r}")
    return path, pools, Sampling(step, int(n_mcmc), generator)
