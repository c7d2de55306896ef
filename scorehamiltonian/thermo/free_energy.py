"""Free-energy differences between two states (THEORY section 5), in units of k_B T.

End states p_i(x) = exp(-U_i(x)) / Z_i, i = 0, 1, with unnormalised energies U_i given as
callables, :class:`GaussianMixture` (U = -log p, Z = 1) or learned scores
(:class:`ScoreEnergy`: U = the probability-flow energy -log p_0 of :func:`energy`). The target
is Delta F = F_1 - F_0 = -log(Z_1 / Z_0), along the linear path
U_lambda = (1 - lambda) U_0 + lambda U_1, lambda in [0, 1], with dU/dlambda = U_1 - U_0 =: W.

Estimators (:func:`free_energy_difference`):

- "ti", thermodynamic integration: Delta F = int_0^1 <W>_lambda dlambda, Gauss-Legendre in lambda
  (n_nodes nodes); <W>_lambda from independent MALA chains at each node (the final state of
  each chain, so the samples are independent and the standard error is std / sqrt(n)). Checks:
  chains started from p_0 and from p_1 (where both can be drawn) must agree at every node
  (else they have not mixed), and the highest Legendre coefficient of <W>_lambda through the
  nodes must be at noise level (else the quadrature is not resolved); failures warn.
- "ais", annealed importance sampling / Jarzynski: particles x ~ p_0 are carried along a
  lambda-schedule 0 = l_0 < ... < l_K = 1 with weights
  log w = sum_k (U_{l_{k-1}} - U_{l_k})(x_{k-1}) and n_moves Langevin moves at each intermediate
  level. MALA moves leave p_l invariant. ULA moves (no rejection) are made exact on path space:
  with the reversed ULA step as backward kernel, each move adds its Metropolis-Hastings
  log-ratio -U(y) + U(x) + log q(x | y) - log q(y | x) to log w (Crooks; Wu et al. 2020,
  Thin et al. 2021), so E[w] = Z_1 / Z_0 for every step size. Delta F = -log mean(w), standard
  error std(w) / (mean(w) sqrt(n)) (delta method), ESS = (sum w)^2 / sum w^2.
- "bar": Bennett's acceptance ratio (pymbar) between neighbouring states of a lambda ladder
  (default the end states only), summed, variances added.
- "mbar": MBAR (pymbar) on the ensembles of every state of the ladder.
- "zwanzig": exponential averaging (pymbar) of W over p_0: Delta F = -log <e^{-W}>_0.

Samples of an end state come from its exact sampler (mixtures), from ``samples_0`` /
``samples_1``, or else from MALA chains started from the other end state's samples.
Lambda-schedules (:func:`lambda_schedule`): uniform, "thermodynamic" (equal increments of the
thermodynamic length int A dlambda, A(l) = sqrt(Var_l W) / 2 the adiabatic speed of sqrt(p_l)),
or "gap" (equal increments of int A / lambda_1 dlambda, lambda_1(l) the spectral gap of the
Score Hamiltonian of p_l from :func:`spectral_gap`, grids in d <= 3).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..common.errors import (
    InputShapeError,
    NonFiniteScoreError,
    NotDifferentiableError,
    SamplesRequiredError,
    ScheduleError,
)
from ..common.validation import as_float_tensor
from ..sampling.schedules import as_schedule
from ..score.interface import Score
from ..score.mixture import GaussianMixture
from ..score.processes import OU
from ..spectral.eigensolvers import ConvergenceWarning
from ..spectral.gap import spectral_gap
from ..spectral.grid import box_from_samples
from .energy import energy, start_time

__all__ = [
    "FreeEnergyResult",
    "LambdaSchedule",
    "ScoreEnergy",
    "free_energy_difference",
    "lambda_schedule",
]

FreeEnergyMethod = Literal["ti", "ais", "bar", "mbar", "zwanzig"]
Move = Literal["mala", "ula"]

#: Target acceptance rate of the step-size adaptation of MALA chains.
_TARGET_ACCEPTANCE = 0.57
#: ULA steps are tuned to the step at which MALA would accept this fraction (smaller steps:
#: ULA has no rejection to stop particles in stiff tails from diverging).
_ULA_ACCEPTANCE = 0.9
#: Langevin drifts h |grad U| are truncated at this many noise lengths sqrt(2 h d).
_DRIFT_LIMIT = 2.0
#: Chains started from p_0 and from p_1 disagree (not mixed) beyond this many standard errors.
_MIXING_Z = 4.0
#: The highest Legendre coefficient of <W>_lambda counts as unresolved beyond this many standard errors.
_RESOLUTION_Z = 3.0
#: Rounds of step tuning per AIS level, and the size of the tuning population.
_TUNE_ROUNDS = 5
_PILOT_PARTICLES = 256
#: Fraction of 1 / L (L = E|grad U|^2 / d, the mean curvature) used as the default Langevin step.
_STEP_FRACTION = 0.5


# --------------------------------------------------------------------------- end states


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
        result = energy(self.score, None, x, self.schedule, **self.energy_kwargs)
        self.max_error = max(self.max_error, float(result.error.max()))
        return result.value

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """grad U = -s_{t_start}(x)."""
        return -self.score(x, self.t_start)


@dataclass
class _State:
    """An end state: energy U(x) (n,), its gradient (n, d), an exact sampler or None, its label."""

    energy: Callable[[torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    sample: Callable[[int, torch.Generator], torch.Tensor] | None
    dim: int | None
    name: str
    systematic: Callable[[], float]


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
        return _State(obj, obj.grad, None, obj.dim, name, lambda: obj.max_error)
    if callable(obj):
        return _State(obj, _autograd_gradient(obj, name), None, None, name, lambda: 0.0)
    raise TypeError(f"{name} must be a callable U(x), a GaussianMixture, a Score or a ScoreEnergy; got {type(obj).__name__}")


class _Path:
    """The linear path U_lambda = (1 - lambda) U_0 + lambda U_1, with checked energies and a counter."""

    def __init__(self, state_0: _State, state_1: _State) -> None:
        self.states = (state_0, state_1)
        self.n_energy = 0
        self.n_grad = 0

    def ends(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_0(x), U_1(x)), each (n,), finite."""
        self.n_energy += x.shape[0]
        return tuple(_checked_energy(s.energy(x), x, s.name) for s in self.states)

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


# --------------------------------------------------------------------------- samples and moves


@dataclass(frozen=True)
class _Sampling:
    """Settings of the MALA / ULA moves: step size h (units x^2), burn-in steps, generator."""

    step: float
    n_steps: int
    generator: torch.Generator


def _drift(g: torch.Tensor, step: float) -> torch.Tensor:
    """-h grad U truncated to norm <= _DRIFT_LIMIT sqrt(2 h d) (MALTA, Roberts & Tweedie 1996)."""
    drift = -step * g
    limit = _DRIFT_LIMIT * math.sqrt(2 * step * g.shape[-1])
    return drift * (limit / drift.norm(dim=-1, keepdim=True).clamp_min(limit))


def _langevin_step(path: _Path, x: torch.Tensor, u: torch.Tensor, g: torch.Tensor, lam: float, step: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One Langevin proposal y = x + drift(x) + sqrt(2h) xi at lambda and its MH log-ratio
    -U(y) + U(x) + log q(x | y) - log q(y | x), q the Gaussian proposal kernel."""
    noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    y = x + _drift(g, step) + math.sqrt(2 * step) * noise
    uy, gy = path.energy_and_grad(y, lam)
    forward = ((y - x - _drift(g, step)) ** 2).sum(-1) / (4 * step)
    backward = ((x - y - _drift(gy, step)) ** 2).sum(-1) / (4 * step)
    return y, uy, gy, -uy + u + forward - backward


def _mala(path: _Path, x: torch.Tensor, lam: float, step: float, n_steps: int, generator: torch.Generator
          ) -> tuple[torch.Tensor, float]:
    """n_steps MALA steps at lambda with a fixed step; returns the states and the acceptance rate."""
    u, g = path.energy_and_grad(x, lam)
    accepted = 0.0
    for _ in range(n_steps):
        y, uy, gy, log_ratio = _langevin_step(path, x, u, g, lam, step, generator)
        accept = torch.log(torch.rand(x.shape[0], dtype=x.dtype, device=x.device, generator=generator)) < log_ratio
        x, u, g = (torch.where(accept[:, None], y, x), torch.where(accept, uy, u), torch.where(accept[:, None], gy, g))
        accepted += float(accept.to(x.dtype).mean())
    return x, accepted / max(n_steps, 1)


def _adapted_chains(path: _Path, x: torch.Tensor, lam: float, sampling: _Sampling) -> tuple[torch.Tensor, float, float]:
    """MALA chains at lambda: the step adapted toward acceptance 0.57 over the first half of the
    steps (blocks of 10), then frozen for the second half. Returns final states, step, acceptance."""
    step = sampling.step
    half = sampling.n_steps // 2
    for _ in range(half // 10):
        x, rate = _mala(path, x, lam, step, 10, sampling.generator)
        step *= math.exp(2.0 * (rate - _TARGET_ACCEPTANCE))
    x, rate = _mala(path, x, lam, step, sampling.n_steps - 10 * (half // 10), sampling.generator)
    return x, step, rate


def _draw(state: _State, given: torch.Tensor | None, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """n samples of an end state: the first n given ones, else its exact sampler, else None."""
    if given is not None:
        if given.shape[0] < n:
            raise SamplesRequiredError(f"{n} samples of {state.name} are needed; {given.shape[0]} were given")
        return given[:n]
    return None if state.sample is None else state.sample(n, generator)


@dataclass(frozen=True)
class _Ensemble:
    """Samples at one lambda and how they were made (exact / given, or MALA chains)."""

    x: torch.Tensor
    start: torch.Tensor
    acceptance: float | None


def _ensemble(path: _Path, lam: float, n: int, pools: tuple[torch.Tensor | None, torch.Tensor | None],
              sampling: _Sampling) -> _Ensemble:
    """n independent samples of p_lambda.

    At lambda = 0 or 1 the end state's own samples when it has them. Otherwise n MALA chains:
    half started from p_0's pool and half from p_1's when both exist (else all from the one that
    does), ``start`` recording 0 / 1 per chain.
    """
    end = {0.0: 0, 1.0: 1}.get(lam)
    if end is not None and pools[end] is not None:
        return _Ensemble(pools[end][:n], torch.full((n,), end), None)
    have = [i for i in (0, 1) if pools[i] is not None]
    if not have:
        raise SamplesRequiredError(
            "neither end state can be sampled: pass samples_0 or samples_1 (or GaussianMixture end states)"
        )
    start = torch.arange(n) % len(have) if len(have) == 2 else torch.full((n,), have[0])
    x0 = torch.cat([pools[i][: int((start == i).sum())] for i in have])
    start = torch.cat([torch.full((int((start == i).sum()),), i) for i in have])
    x, _, rate = _adapted_chains(path, x0, lam, sampling)
    return _Ensemble(x, start, rate)


def _mixing_z(w: torch.Tensor, start: torch.Tensor) -> float:
    """|mean of W over chains from p_0 - over chains from p_1| in standard errors (0 with one start)."""
    groups = [w[start == i] for i in (0, 1)]
    if min(len(gr) for gr in groups) < 2:
        return 0.0
    diff = float(groups[0].mean() - groups[1].mean())
    se = math.sqrt(sum(float(gr.var()) / len(gr) for gr in groups))
    return abs(diff) / se if se > 0 else (0.0 if diff == 0 else math.inf)


def _default_step(path: _Path, pools: tuple[torch.Tensor | None, ...]) -> float:
    """0.5 / L with L = max over the end states' samples of E|grad U_i|^2 / d (= E[Laplacian U_i] / d)."""
    curvature = []
    for i, pool in enumerate(pools):
        if pool is not None:
            g = path.states[i].grad(pool).detach()
            curvature.append(float((g**2).sum(-1).mean()) / pool.shape[-1])
    return _STEP_FRACTION / max(curvature)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FreeEnergyResult:
    """Delta F = F_1 - F_0 = -log(Z_1 / Z_0) in k_B T, with its standard error and diagnostics.

    value, error : the estimate and its standard error (statistical only).
    systematic_error : a bound from the end-state energies' own errors (ScoreEnergy: the
        largest reported PF-ODE error of each state, summed; 0 for exact energies).
    method : the estimator; converged : False when a check failed (a warning was issued).
    ess : effective sample size of the importance weights (ais, zwanzig), else None.
    n_samples : samples (particles, chains) used in total.
    n_energy_evaluations, n_gradient_evaluations : point evaluations of the pair (U_0, U_1)
        and of their gradients.
    lambdas : the lambda nodes / schedule / ladder used.
    node_values, node_errors : per-node <W> and its standard error (ti), per-pair BAR values (bar).
    log_weights : the AIS / Zwanzig log-weights (n,); acceptance : mean MALA acceptance.
    mixing_z : largest disagreement (in standard errors) between chains started from p_0 and
        from p_1 (ti, mbar and bar with sampled intermediate states).
    step_size : the Langevin step h (the per-level steps of AIS, an array).
    """

    value: float
    error: float
    systematic_error: float
    method: str
    converged: bool
    ess: float | None
    n_samples: int
    n_energy_evaluations: int
    n_gradient_evaluations: int
    lambdas: np.ndarray
    node_values: np.ndarray | None = None
    node_errors: np.ndarray | None = None
    log_weights: torch.Tensor | None = None
    acceptance: float | None = None
    mixing_z: float | None = None
    step_size: float | np.ndarray | None = None


def _warn(method: str, message: str) -> None:
    warnings.warn(f"free_energy_difference({method!r}): {message}", ConvergenceWarning, stacklevel=4)


# --------------------------------------------------------------------------- lambda schedules


def _checked_lambdas(lambdas: Any) -> np.ndarray:
    """An increasing lambda-schedule from 0 to 1 (an int K: K uniform steps)."""
    if isinstance(lambdas, (int, np.integer)):
        if lambdas < 1:
            raise ScheduleError(f"a lambda-schedule needs at least 1 step; got {lambdas}")
        return np.linspace(0.0, 1.0, int(lambdas) + 1)
    values = as_schedule(lambdas).times[::-1].copy()
    if values[0] != 0.0 or values[-1] != 1.0:
        raise ScheduleError(
            f"a lambda-schedule must run from 0 to 1 (either direction); it spans [{values[0]!r}, {values[-1]!r}]"
        )
    return values


@dataclass(frozen=True)
class LambdaSchedule:
    """A lambda-schedule and the pilot profile it was derived from.

    lambdas : (K + 1,) increasing from 0 to 1. kind : "uniform", "thermodynamic" or "gap".
    pilot : (P,) pilot lambdas; speed, speed_error : A(l) = sqrt(Var_l W) / 2 and its standard
    error (delta method); gap, gap_error : lambda_1 of H_l and its error ("gap" only, else NaN).
    """

    lambdas: np.ndarray
    kind: str
    pilot: np.ndarray
    speed: np.ndarray
    speed_error: np.ndarray
    gap: np.ndarray
    gap_error: np.ndarray


def _speed(w: torch.Tensor) -> tuple[float, float]:
    """A = sqrt(Var W) / 2 and its delta-method standard error."""
    var = float(w.var())
    n = w.shape[0]
    fourth = float(((w - w.mean()) ** 4).mean())
    var_se = math.sqrt(max(fourth - var**2, 0.0) / n)
    return 0.5 * math.sqrt(var), var_se / (4 * math.sqrt(var)) if var > 0 else math.inf


class _PathScore(Score):
    """The score -grad U_l of p_l, with log p_l = -U_l up to its constant (the box and
    boundary-mass checks of :func:`spectral_gap` read it); time-independent (any t of OU)."""

    def __init__(self, path: _Path, lam: float, dim: int) -> None:
        self.path, self.lam, self.dim, self.process = path, lam, dim, OU()

    def log_prob(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        u0, u1 = self.path.ends(x.reshape(-1, x.shape[-1]))
        return -((1 - self.lam) * u0 + self.lam * u1).reshape(x.shape[:-1])

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        g0, g1 = (s.grad(flat) for s in self.path.states)
        return -((1 - self.lam) * g0 + self.lam * g1).reshape(x.shape)


def _path_gap(path: _Path, lam: float, box: tuple[list[float], list[float]], rtol: float) -> tuple[float, float]:
    """lambda_1 - lambda_0 of H_l = -Laplacian + |grad U_l|^2 / 4 - Laplacian U_l / 2 on grids
    (spectral_gap, potential form; the ground-state form's LOBPCG failed to factorise on these
    problems at the time of writing)."""
    result = spectral_gap(_PathScore(path, lam, len(box[0])), 0.0, rtol=rtol, box=box, form="potential")
    return result.value, result.error


def _equal_increments(pilot: np.ndarray, density: np.ndarray, n_steps: int) -> np.ndarray:
    """lambdas at equal increments of int_0^l density (trapezoid on the pilot grid, inverted linearly)."""
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(pilot))])
    lambdas = np.interp(cumulative[-1] * np.arange(n_steps + 1) / n_steps, cumulative, pilot)
    lambdas[0], lambdas[-1] = 0.0, 1.0
    return lambdas


def lambda_schedule(
    U_0: Any,
    U_1: Any,
    n_steps: int,
    kind: Literal["uniform", "thermodynamic", "gap"] = "gap",
    *,
    n_pilot: int = 9,
    n_samples: int = 2000,
    n_mcmc: int = 200,
    samples_0: Any = None,
    samples_1: Any = None,
    step_size: float | None = None,
    gap_rtol: float = 1e-2,
    generator: torch.Generator | None = None,
) -> LambdaSchedule:
    """A lambda-schedule of ``n_steps`` steps for AIS / BAR / MBAR on the path U_l = (1 - l) U_0 + l U_1.

    "uniform": equal steps. "thermodynamic": equal increments of int A dl, with the adiabatic
    speed of the ground state sqrt(p_l), A(l) = || d/dl sqrt(p_l) || = sqrt(Var_l W) / 2
    (d/dl log p_l = -(W - <W>_l)), estimated from ``n_samples`` samples at ``n_pilot`` equally
    spaced pilot lambdas (MALA chains of ``n_mcmc`` steps). "gap": equal increments of
    int A / lambda_1 dl, lambda_1(l) the spectral gap of the Score Hamiltonian of p_l
    (:func:`spectral_gap`, relative accuracy ``gap_rtol``, box from the pilot samples), d <= 3.
    A and lambda_1 are interpolated linearly between pilot lambdas. Seeded by ``generator``.
    """
    path, pools, sampling = _setup(U_0, U_1, samples_0, samples_1, n_samples, n_mcmc, step_size, generator)
    pilot = np.linspace(0.0, 1.0, int(n_pilot))
    nan = np.full(pilot.size, np.nan)
    speed, speed_error, gap, gap_error = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    if kind == "uniform":
        return LambdaSchedule(np.linspace(0.0, 1.0, int(n_steps) + 1), kind, pilot, speed, speed_error, gap, gap_error)
    if kind not in ("thermodynamic", "gap"):
        raise ValueError(f"kind must be 'uniform', 'thermodynamic' or 'gap'; got {kind!r}")
    ensembles = [_ensemble(path, float(lam), n_samples, pools, sampling) for lam in pilot]
    for i, ens in enumerate(ensembles):
        u0, u1 = path.ends(ens.x)
        speed[i], speed_error[i] = _speed(u1 - u0)
    density = speed
    if kind == "gap":
        box = box_from_samples(torch.cat([e.x for e in ensembles]).detach().cpu(), tol=1e-14)
        if len(box[0]) > 3:
            raise InputShapeError(f"the gap schedule discretises H_lambda on grids in d <= 3; d = {len(box[0])}")
        for i, lam in enumerate(pilot):
            gap[i], gap_error[i] = _path_gap(path, float(lam), box, gap_rtol)
        density = speed / gap
    return LambdaSchedule(_equal_increments(pilot, density, int(n_steps)), kind, pilot, speed, speed_error,
                          gap, gap_error)


# --------------------------------------------------------------------------- estimators


def _setup(U_0: Any, U_1: Any, samples_0: Any, samples_1: Any, n: int, n_mcmc: int, step_size: float | None,
           generator: torch.Generator | None) -> tuple[_Path, tuple[torch.Tensor | None, ...], _Sampling]:
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
    path = _Path(*states)
    step = _default_step(path, pools) if step_size is None and any(p is not None for p in pools) else step_size
    if step is None:
        raise SamplesRequiredError("neither end state can be sampled: pass samples_0 or samples_1")
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step_size must be a positive finite number; got {step!r}")
    return path, pools, _Sampling(step, int(n_mcmc), generator)


def _legendre_resolution(nodes: np.ndarray, weights: np.ndarray, values: np.ndarray, errors: np.ndarray) -> float:
    """|c_{n-1}| / sd(c_{n-1}) of the Legendre interpolant of the node values (nodes on [-1, 1])."""
    n = nodes.size
    p_top = np.polynomial.legendre.legval(nodes, np.eye(n)[n - 1])
    scale = (2 * n - 1) / 2
    coefficient = scale * float(np.sum(weights * values * p_top))
    noise = scale * math.sqrt(float(np.sum((weights * errors * p_top) ** 2)))
    return abs(coefficient) / noise if noise > 0 else (0.0 if coefficient == 0 else math.inf)


def _ti(path: _Path, pools: tuple, sampling: _Sampling, n: int, n_nodes: int) -> FreeEnergyResult:
    nodes, weights = np.polynomial.legendre.leggauss(int(n_nodes))
    lambdas = 0.5 * (nodes + 1.0)
    means, errors, mixing, rates = [], [], [], []
    for lam in lambdas:
        ens = _ensemble(path, float(lam), n, pools, sampling)
        u0, u1 = path.ends(ens.x)
        w = u1 - u0
        means.append(float(w.mean()))
        errors.append(float(w.std()) / math.sqrt(n))
        mixing.append(_mixing_z(w, ens.start))
        rates.append(ens.acceptance)
    means, errors = np.array(means), np.array(errors)
    value = float(np.sum(0.5 * weights * means))
    error = math.sqrt(float(np.sum((0.5 * weights * errors) ** 2)))
    resolution = _legendre_resolution(nodes, weights, means, errors)
    converged = max(mixing) <= _MIXING_Z and resolution <= _RESOLUTION_Z
    if max(mixing) > _MIXING_Z:
        _warn("ti", f"chains from p_0 and p_1 disagree by {max(mixing):.1f} standard errors: not mixed at some lambda")
    if resolution > _RESOLUTION_Z:
        _warn("ti", f"the highest Legendre coefficient of <dU/dlambda> is {resolution:.1f} standard errors from 0: "
                    "use more nodes")
    return FreeEnergyResult(
        value, error, path.systematic(), "ti", converged, None, n * len(lambdas), path.n_energy, path.n_grad,
        lambdas, means, errors, acceptance=float(np.mean(rates)), mixing_z=max(mixing), step_size=sampling.step,
    )


def _tuned_steps(path: _Path, x: torch.Tensor, lambdas: np.ndarray, sampling: _Sampling, target: float
                 ) -> np.ndarray:
    """Per-level Langevin steps from a pilot population carried along the levels by MALA (no
    weights): at each intermediate level, _TUNE_ROUNDS rounds of 2 MALA steps, each followed by
    log h += 2 (acceptance - target). The first level starts from ``sampling.step``."""
    step, steps = sampling.step, []
    for lam in lambdas[1:-1]:
        for _ in range(_TUNE_ROUNDS):
            x, rate = _mala(path, x, float(lam), step, 2, sampling.generator)
            step *= math.exp(2.0 * (rate - target))
        steps.append(step)
    return np.array(steps)


def _ais_weights(path: _Path, x: torch.Tensor, lambdas: np.ndarray, steps: np.ndarray, move: str, n_moves: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, float | None]:
    """AIS / Jarzynski log-weights along ``lambdas`` (module docstring), with steps[k - 1] at the
    intermediate level k, and the mean MALA acceptance."""
    if move not in ("mala", "ula"):
        raise ValueError(f"move must be 'mala' or 'ula'; got {move!r}")
    log_w = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    rates = []
    for k in range(1, lambdas.size):
        u0, u1 = path.ends(x)
        log_w -= float(lambdas[k] - lambdas[k - 1]) * (u1 - u0)
        if k == lambdas.size - 1:
            break
        lam, step = float(lambdas[k]), float(steps[k - 1])
        if move == "mala":
            x, rate = _mala(path, x, lam, step, n_moves, generator)
            rates.append(rate)
            continue
        x, log_w = _ula_moves(path, x, log_w, lam, step, n_moves, generator)
    return log_w, (float(np.mean(rates)) if rates else None)


def _ula_moves(path: _Path, x: torch.Tensor, log_w: torch.Tensor, lam: float, step: float, n_moves: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n_moves ULA moves at lambda (every proposal taken), each adding its MH log-ratio to log w."""
    u, g = path.energy_and_grad(x, lam)
    for _ in range(n_moves):
        x, u, g, log_ratio = _langevin_step(path, x, u, g, lam, step, generator)
        log_w = log_w + log_ratio
    return x, log_w


def _log_mean_exp_stats(log_w: torch.Tensor) -> tuple[float, float, float]:
    """-log mean(w), its delta-method standard error std(w) / (mean(w) sqrt(n)), and the ESS."""
    n = log_w.shape[0]
    w = torch.exp(log_w - log_w.max())
    mean = float(w.mean())
    value = -(float(log_w.max()) + math.log(mean))
    error = float(w.std()) / (mean * math.sqrt(n))
    ess = float(w.sum()) ** 2 / float((w**2).sum())
    return value, error, ess


def _ais(path: _Path, pools: tuple, sampling: _Sampling, n: int, lambdas: np.ndarray, move: str, n_moves: int,
         tune: bool) -> FreeEnergyResult:
    if pools[0] is None:
        raise SamplesRequiredError("AIS starts from samples of p_0: pass samples_0 or a GaussianMixture U_0")
    if tune:
        pilot = pools[0][torch.randperm(n, generator=sampling.generator)[: min(n, _PILOT_PARTICLES)]]
        steps = _tuned_steps(path, pilot, lambdas, sampling, _ULA_ACCEPTANCE if move == "ula" else _TARGET_ACCEPTANCE)
    else:
        steps = np.full(max(lambdas.size - 2, 0), sampling.step)
    log_w, rate = _ais_weights(path, pools[0], lambdas, steps, move, int(n_moves), sampling.generator)
    value, error, ess = _log_mean_exp_stats(log_w)
    converged = ess >= 0.01 * n
    if not converged:
        _warn("ais", f"effective sample size {ess:.1f} of {n}: the standard error is unreliable; use more levels or moves")
    return FreeEnergyResult(value, error, path.systematic(), f"ais-{move}", converged, ess, n, path.n_energy,
                            path.n_grad, lambdas, log_weights=log_w, acceptance=rate, step_size=steps)


def _pymbar() -> Any:
    """pymbar, imported quietly (it prints banners and logs warnings on import)."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pymbar
    return pymbar


def _ladder(path: _Path, pools: tuple, sampling: _Sampling, n: int, lambdas: np.ndarray
            ) -> tuple[list[_Ensemble], float, float | None]:
    ensembles = [_ensemble(path, float(lam), n, pools, sampling) for lam in lambdas]
    mixing = 0.0
    for ens in ensembles:
        if ens.acceptance is not None:
            u0, u1 = path.ends(ens.x)
            mixing = max(mixing, _mixing_z(u1 - u0, ens.start))
    rates = [e.acceptance for e in ensembles if e.acceptance is not None]
    return ensembles, mixing, (float(np.mean(rates)) if rates else None)


def _mixing_warning(method: str, mixing: float) -> bool:
    if mixing > _MIXING_Z:
        _warn(method, f"chains from p_0 and p_1 disagree by {mixing:.1f} standard errors: not mixed at some lambda")
    return mixing <= _MIXING_Z


def _bar(path: _Path, pools: tuple, sampling: _Sampling, n: int, lambdas: np.ndarray) -> FreeEnergyResult:
    ensembles, mixing, rate = _ladder(path, pools, sampling, n, lambdas)
    bar = _pymbar().other_estimators.bar
    values, errors = [], []
    for k in range(1, lambdas.size):
        dl = float(lambdas[k] - lambdas[k - 1])
        (a0, a1), (b0, b1) = path.ends(ensembles[k - 1].x), path.ends(ensembles[k].x)
        result = bar((dl * (a1 - a0)).cpu().numpy(), (-dl * (b1 - b0)).cpu().numpy())
        values.append(float(result["Delta_f"]))
        errors.append(float(result["dDelta_f"]))
    converged = _mixing_warning("bar", mixing)
    return FreeEnergyResult(float(np.sum(values)), math.sqrt(float(np.sum(np.square(errors)))), path.systematic(),
                            "bar", converged, None, n * lambdas.size, path.n_energy, path.n_grad, lambdas,
                            np.array(values), np.array(errors), acceptance=rate, mixing_z=mixing,
                            step_size=sampling.step)


def _mbar(path: _Path, pools: tuple, sampling: _Sampling, n: int, lambdas: np.ndarray) -> FreeEnergyResult:
    ensembles, mixing, rate = _ladder(path, pools, sampling, n, lambdas)
    x = torch.cat([e.x for e in ensembles])
    u0, u1 = path.ends(x)
    lam = torch.as_tensor(lambdas, dtype=x.dtype, device=x.device)[:, None]
    u_kn = ((1 - lam) * u0 + lam * u1).cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mbar = _pymbar().MBAR(u_kn, np.full(lambdas.size, n))
        result = mbar.compute_free_energy_differences()
    converged = _mixing_warning("mbar", mixing)
    return FreeEnergyResult(float(result["Delta_f"][0, -1]), float(result["dDelta_f"][0, -1]), path.systematic(),
                            "mbar", converged, None, n * lambdas.size, path.n_energy, path.n_grad, lambdas,
                            acceptance=rate, mixing_z=mixing, step_size=sampling.step)


def _zwanzig(path: _Path, pools: tuple, sampling: _Sampling, n: int) -> FreeEnergyResult:
    ensemble = _ensemble(path, 0.0, n, pools, sampling)
    u0, u1 = path.ends(ensemble.x)
    log_w = -(u1 - u0)
    result = _pymbar().other_estimators.exp((u1 - u0).cpu().numpy())
    _, _, ess = _log_mean_exp_stats(log_w)
    converged = ess >= 0.01 * n
    if not converged:
        _warn("zwanzig", f"effective sample size {ess:.1f} of {n}: the standard error is unreliable")
    return FreeEnergyResult(float(result["Delta_f"]), float(result["dDelta_f"]), path.systematic(), "zwanzig",
                            converged, ess, n, path.n_energy, path.n_grad, np.array([0.0, 1.0]), log_weights=log_w,
                            acceptance=ensemble.acceptance, step_size=sampling.step)


def free_energy_difference(
    U_0: Any,
    U_1: Any,
    method: FreeEnergyMethod = "bar",
    *,
    n_samples: int = 2000,
    samples_0: Any = None,
    samples_1: Any = None,
    lambdas: Any = None,
    n_nodes: int = 8,
    move: Move = "mala",
    n_moves: int = 2,
    n_mcmc: int = 200,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> FreeEnergyResult:
    """Delta F = F_1 - F_0 = -log(Z_1 / Z_0) in k_B T between p_i proportional to exp(-U_i).

    U_0, U_1 : callables U(x) -> (n,) for x (n, d) (differentiable by autograd where Langevin
        moves need the gradient), :class:`GaussianMixture` (U = -log p, exact samples), or
        :class:`ScoreEnergy` / :class:`Score` (probability-flow energies of a learned score).
    method : "ti", "ais", "bar", "mbar" or "zwanzig" (module docstring).
    n_samples : independent samples per ensemble (chains per lambda, AIS particles).
    samples_0, samples_1 : (n, d) samples of the end states when they cannot be drawn exactly.
    lambdas : the lambda-schedule (an int K for K uniform steps, an array or a
        :class:`Schedule` monotone from 0 to 1 either way, or a :class:`LambdaSchedule`):
        AIS's levels (default 16 steps), BAR's ladder (default the end states [0, 1]) and
        MBAR's states (default 4 steps).
    n_nodes : Gauss-Legendre nodes in lambda (ti).
    move, n_moves : AIS moves ("mala" or "ula") and their number per intermediate level.
    n_mcmc : MALA steps of each chain that samples an intermediate state (half adapt the step).
    step_size : Langevin step h (units x^2), fixed everywhere. Default: chains sampling an
        intermediate state start from 0.5 / L (L = E|grad U|^2 / d over the end states' samples,
        the mean curvature) and adapt it toward MALA acceptance 0.57 during their first half;
        AIS tunes one step per level the same way on a separate pilot population of 256
        (toward acceptance 0.9 for ULA moves).
    generator : a seeded torch.Generator for every random draw (default: seed 0).
    """
    path, pools, sampling = _setup(U_0, U_1, samples_0, samples_1, int(n_samples), n_mcmc, step_size, generator)
    n = int(n_samples)
    if isinstance(lambdas, LambdaSchedule):
        lambdas = lambdas.lambdas
    if method == "ti":
        return _ti(path, pools, sampling, n, n_nodes)
    if method == "ais":
        return _ais(path, pools, sampling, n, _checked_lambdas(16 if lambdas is None else lambdas), move, n_moves,
                    tune=step_size is None)
    if method == "bar":
        return _bar(path, pools, sampling, n, _checked_lambdas(1 if lambdas is None else lambdas))
    if method == "mbar":
        return _mbar(path, pools, sampling, n, _checked_lambdas(4 if lambdas is None else lambdas))
    if method == "zwanzig":
        return _zwanzig(path, pools, sampling, n)
    raise ValueError(f"method must be 'ti', 'ais', 'bar', 'mbar' or 'zwanzig'; got {method!r}")
