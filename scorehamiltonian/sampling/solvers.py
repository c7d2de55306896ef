"""The solvers people run, stepping the variables k-diffusion and diffusers step (THEORY sections 1, 3).

One implementation serves the sample runs (:func:`sample`), the exact propagation on grids
(:mod:`.judges`) and the exports (:meth:`Schedule.sigmas`, :meth:`Schedule.to_k_diffusion`,
:meth:`Schedule.to_diffusers`): each solver is a list of *moves* (:func:`solver_moves`), maps
x -> mean(x) (+ std z) of the toolkit's variable x, and every consumer applies the same moves.

Variables. A :class:`Schedule`'s times t_0 = t_max > ... > t_N of the process (alpha_t, sigma_t)
are the *levels* (:class:`Levels`). The libraries' variables there are the noise level
sigma_i = sigma_t / alpha_t and the state y = x / alpha_t (the variance-exploding scaling of
k-diffusion and diffusers' Euler / Heun / DPM-Solver); the denoised mean is
D_i(x) = (x + sigma_t^2 s_t(x)) / alpha_t (data units) and d = (y - D) / sigma_i. The
ODE solvers, from level i to i + 1 (h = sigma_{i+1} - sigma_i, lambda = -log sigma):

- ``euler``: y' = y + h d (Karras et al. 2022, Alg. 1; k-diffusion ``sample_euler``);
- ``heun``: y~ = y + h d, y' = y + h (d + d(y~, sigma_{i+1})) / 2 (Karras et al. Alg. 1, ``sample_heun``);
- ``dpmpp-2m``: y' = (sigma_{i+1} / sigma_i) y - expm1(-h_l) D', h_l = lambda_{i+1} - lambda_i,
  D' = (1 + 1/(2r)) D_i - D_{i-1} / (2r), r = h_l,prev / h_l; D' = D_i on the first step
  (Lu et al. 2022, DPM-Solver++(2M); ``sample_dpmpp_2m``);
- ``ddim``: x' = alpha_{i+1} D + sigma_t,{i+1} eps, eps = (x - alpha_i D) / sigma_t,i (Song et al.
  2021, eta = 0): in y the same map as ``euler``, y' = D + (sigma_{i+1} / sigma_i)(y - D);
- ``euler-t``: the toolkit's earlier sampler, Euler in process time on x,
  x' = (1 - dt f) x + dt g^2 s / 2, dt = t_i - t_{i+1} (kept under this explicit name);

the SDE solvers (mean map and Gaussian noise std, x' = mean + std z):

- ``euler-maruyama``: the reverse SDE dy = -2 sigma s_y dsigma + sqrt(2 sigma) dW in sigma,
  y' = y + 2 h d + sqrt(2 sigma_i (sigma_i - sigma_{i+1})) z;
- ``euler-maruyama-t``: the earlier sampler, x' = (1 - dt f) x + dt g^2 s + g sqrt(dt) z;
- ``ancestral``: DDPM ancestral sampling (Ho et al. 2020, eq. 7; k-diffusion
  ``sample_euler_ancestral``, eta = 1): sigma_up = sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2),
  sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2), y' = y + (sigma_down - sigma_i) d + sigma_up z
  (the posterior of y_{i+1} given y_i and x0 = D exactly);
- ``langevin``: annealed Langevin (Song & Ermon 2019), ``steps_per_level`` = m unadjusted Langevin
  steps x' = x + delta s_t(x) + sqrt(2 delta) z at each level t_1 .. t_N (no transport between
  levels);
- ``pc``: predictor-corrector (Song et al. 2021): an ``euler-maruyama`` step to level i + 1, then
  m Langevin steps there.

Langevin step delta_k at level k: u_k / m with u_k the schedule's ``langevin_time`` when its
budget is positive, else ``step_scale`` * sigma_t(t_k)^2 (Song & Ermon's alpha_i proportional to
sigma_i^2; step_scale 0.2 is their 2e-5 / 0.01^2 ratio).

The final step. A schedule's N + 1 times give N steps from t_max to t_min and the solver returns
x at t_min. With ``final="zero"`` one more level, sigma = 0 (the data; alpha = 1), follows t_N,
as in the libraries' sigma lists ending with 0. A step that lands on sigma = 0 (also a
schedule whose last time has sigma_t = 0, e.g. OU at t = 0) is, for every solver, the
denoising step x' = D_N(x): the Tweedie mean, one evaluation, no noise (k-diffusion's Euler /
Heun / DPM-Solver++ / ancestral step to 0 all reduce to it).

NFE, counted as the libraries count model calls, for S steps of which the last lands on
sigma = 0 or not (z = 1 or 0): euler, ddim, dpmpp-2m, euler-t, euler-maruyama(-t), ancestral:
S; heun: 2 S - z (the step to 0 is an Euler step); langevin: m (S - z) + z; pc: S + m (S - z).
So a schedule of N steps run to t_min costs N (Euler) and 2N (Heun), and k-diffusion's
``get_sigmas_karras(n, ...)`` (n levels, then 0) is ``final="zero"`` with N = n - 1: n and 2n - 1.
:func:`solver_nfe` gives these counts and :func:`sample` counts the calls it makes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..common.errors import ScheduleError
from ..score.processes import ForwardProcess
from .schedules import as_schedule

__all__ = [
    "FINALS",
    "SOLVERS",
    "Field",
    "Levels",
    "Move",
    "SampleRun",
    "ancestral_step",
    "ddim_step",
    "denoise_step",
    "dpmpp_2m_step",
    "euler_maruyama_step",
    "euler_maruyama_t_step",
    "euler_step",
    "euler_t_step",
    "heun_step",
    "langevin_step",
    "prior_samples",
    "sample",
    "solver_moves",
    "solver_nfe",
    "steps_for_nfe",
]

Final = Literal["t_min", "zero"]
FINALS = ("t_min", "zero")
#: The deterministic solvers (probability-flow ODE), then the stochastic ones.
ODE_SOLVERS = ("euler", "heun", "dpmpp-2m", "ddim", "euler-t")
SDE_SOLVERS = ("euler-maruyama", "euler-maruyama-t", "ancestral", "langevin", "pc")
SOLVERS = ODE_SOLVERS + SDE_SOLVERS
#: Song & Ermon's (2019) annealed Langevin step, alpha_i = eps sigma_i^2 / sigma_L^2 = 0.2 sigma_i^2.
DEFAULT_STEP_SCALE = 0.2


@dataclass(frozen=True)
class Levels:
    """The levels a solver visits: the schedule's times, then sigma = 0 with ``final="zero"``.

    times (L,): process times (NaN at the sigma = 0 level); alpha, sigma_t (L,): the process's
    alpha_t and sigma_t (1 and 0 at that level); sigma (L,): the libraries' noise level
    sigma_t / alpha_t; langevin_time (L,): the schedule's u_k at level k >= 1 (0 at level 0 and
    at the sigma = 0 level); final: "t_min" or "zero". Steps: L - 1.
    """

    times: np.ndarray
    alpha: np.ndarray
    sigma_t: np.ndarray
    sigma: np.ndarray
    langevin_time: np.ndarray
    final: str
    process: ForwardProcess

    @classmethod
    def of(cls, schedule: Any, process: ForwardProcess, final: Final = "t_min") -> Levels:
        """The levels of ``schedule`` (a :class:`Schedule` or times) on ``process``; ScheduleError if a
        level before the last has sigma_t = 0 (nothing can step from the data) or ``final`` is unknown."""
        if final not in FINALS:
            raise ValueError(f"final must be one of {FINALS}; got {final!r}")
        schedule = as_schedule(schedule, process)
        t = torch.tensor(schedule.times, dtype=torch.float64)
        alpha, sigma_t = process.alpha(t).numpy(), process.sigma(t).numpy()
        langevin = np.concatenate([[0.0], schedule.langevin_time])
        times = schedule.times
        if final == "zero":
            times, alpha = np.append(times, np.nan), np.append(alpha, 1.0)
            sigma_t, langevin = np.append(sigma_t, 0.0), np.append(langevin, 0.0)
        if (sigma_t[:-1] <= 0).any():
            raise ScheduleError(f"level t = {times[np.flatnonzero(sigma_t[:-1] <= 0)[0]]!r} has sigma_t = 0 "
                                "before the last level: no solver steps on from the data")
        return cls(times, alpha, sigma_t, sigma_t / alpha, langevin, final, process)

    @property
    def n_steps(self) -> int:
        """S: the steps from level 0 to the last level."""
        return self.times.size - 1

    @property
    def to_zero(self) -> bool:
        """Whether the last step lands on sigma = 0 (the denoising step)."""
        return bool(self.sigma[-1] == 0)


class Field:
    """A score at the levels, as the solvers read it; ``calls`` counts its evaluations (the NFE)."""

    def __init__(self, score: Any, levels: Levels) -> None:
        self.score, self.levels, self.calls = score, levels, 0

    def at(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """s_t(x) at level i (one evaluation)."""
        self.calls += 1
        return self.score(x, float(self.levels.times[i]))

    def denoised(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """D_i(x) = (x + sigma_t^2 s_t(x)) / alpha_t in data units (one evaluation)."""
        lv = self.levels
        return (x + float(lv.sigma_t[i]) ** 2 * self.at(x, i)) / float(lv.alpha[i])


def _y_to_x(field: Field, y: torch.Tensor, i: int) -> torch.Tensor:
    return float(field.levels.alpha[i]) * y


def denoise_step(field: Field, x: torch.Tensor, i: int) -> torch.Tensor:
    """x' = D_i(x): the step from level i to sigma = 0, the one move every solver takes there."""
    return field.denoised(x, i)


def euler_step(field: Field, x: torch.Tensor, i: int) -> torch.Tensor:
    """Euler in sigma on y: y' = y + (sigma_{i+1} - sigma_i) (y - D) / sigma_i."""
    lv = field.levels
    sigma, y = float(lv.sigma[i]), x / float(lv.alpha[i])
    d = (y - field.denoised(x, i)) / sigma
    return _y_to_x(field, y + d * (float(lv.sigma[i + 1]) - sigma), i + 1)


def heun_step(field: Field, x: torch.Tensor, i: int) -> torch.Tensor:
    """Heun (EDM's second order) in sigma on y: an Euler predictor, then the mean of the two slopes."""
    lv = field.levels
    sigma, sigma_next, y = float(lv.sigma[i]), float(lv.sigma[i + 1]), x / float(lv.alpha[i])
    d = (y - field.denoised(x, i)) / sigma
    y_euler = y + d * (sigma_next - sigma)
    d_next = (y_euler - field.denoised(_y_to_x(field, y_euler, i + 1), i + 1)) / sigma_next
    return _y_to_x(field, y + (d + d_next) / 2 * (sigma_next - sigma), i + 1)


def ddim_step(field: Field, x: torch.Tensor, i: int) -> torch.Tensor:
    """DDIM (eta = 0) on x: x' = alpha_{i+1} D + sigma_t,{i+1} (x - alpha_i D) / sigma_t,i."""
    lv = field.levels
    denoised = field.denoised(x, i)
    eps = (x - float(lv.alpha[i]) * denoised) / float(lv.sigma_t[i])
    return float(lv.alpha[i + 1]) * denoised + float(lv.sigma_t[i + 1]) * eps


def dpmpp_2m_step(field: Field, x: torch.Tensor, i: int, previous: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver++(2M) on y (module docstring); returns x' and D_i (the next step's ``previous``)."""
    lv = field.levels
    sigma, sigma_next, y = float(lv.sigma[i]), float(lv.sigma[i + 1]), x / float(lv.alpha[i])
    denoised = field.denoised(x, i)
    h = math.log(sigma) - math.log(sigma_next)
    corrected = denoised
    if previous is not None:
        r = (math.log(float(lv.sigma[i - 1])) - math.log(sigma)) / h
        corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
    return _y_to_x(field, (sigma_next / sigma) * y - math.expm1(-h) * corrected, i + 1), denoised


def _time_step(field: Field, i: int) -> tuple[float, float, float]:
    """dt = t_i - t_{i+1}, f(t_i), g^2(t_i)."""
    lv = field.levels
    t = float(lv.times[i])
    return t - float(lv.times[i + 1]), float(lv.process.f(t)), float(lv.process.g2(t))


def euler_t_step(field: Field, x: torch.Tensor, i: int) -> torch.Tensor:
    """Euler in process time on x: x' = (1 - dt f) x + dt g^2 s_t(x) / 2."""
    dt, f, g2 = _time_step(field, i)
    return (1 - dt * f) * x + 0.5 * dt * g2 * field.at(x, i)


def euler_maruyama_step(field: Field, x: torch.Tensor, i: int) -> tuple[torch.Tensor, float]:
    """Reverse-SDE Euler-Maruyama in sigma on y: mean y + 2 (sigma' - sigma) d, std sqrt(2 sigma (sigma - sigma'))."""
    lv = field.levels
    sigma, sigma_next, y = float(lv.sigma[i]), float(lv.sigma[i + 1]), x / float(lv.alpha[i])
    d = (y - field.denoised(x, i)) / sigma
    alpha_next = float(lv.alpha[i + 1])
    return alpha_next * (y + 2 * (sigma_next - sigma) * d), alpha_next * math.sqrt(2 * sigma * (sigma - sigma_next))


def euler_maruyama_t_step(field: Field, x: torch.Tensor, i: int) -> tuple[torch.Tensor, float]:
    """Reverse-SDE Euler-Maruyama in process time on x: mean (1 - dt f) x + dt g^2 s, std g sqrt(dt)."""
    dt, f, g2 = _time_step(field, i)
    return (1 - dt * f) * x + dt * g2 * field.at(x, i), math.sqrt(g2 * dt)


def ancestral_step(field: Field, x: torch.Tensor, i: int) -> tuple[torch.Tensor, float]:
    """DDPM ancestral step in sigma on y (module docstring): mean y + (sigma_down - sigma) d, std sigma_up."""
    lv = field.levels
    sigma, sigma_next, y = float(lv.sigma[i]), float(lv.sigma[i + 1]), x / float(lv.alpha[i])
    sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    d = (y - field.denoised(x, i)) / sigma
    alpha_next = float(lv.alpha[i + 1])
    return alpha_next * (y + d * (sigma_down - sigma)), alpha_next * sigma_up


def langevin_step(field: Field, x: torch.Tensor, k: int, delta: float) -> tuple[torch.Tensor, float]:
    """One unadjusted Langevin step at level k on x: mean x + delta s_t(x), std sqrt(2 delta)."""
    return x + delta * field.at(x, k), math.sqrt(2 * delta)


@dataclass(frozen=True)
class Move:
    """One map of a solver run: ``apply(field, x, state) -> (mean, std, state)`` (std a float, 0 for a
    deterministic map; ``state`` carries a multistep solver's memory, None otherwise). ``markov``:
    the map depends on x alone (every move but DPM-Solver++(2M)'s); ``level``: the level it lands on."""

    apply: Callable[[Field, torch.Tensor, Any], tuple[torch.Tensor, float, Any]]
    markov: bool
    level: int


def _deterministic(step: Callable[[Field, torch.Tensor, int], torch.Tensor], i: int) -> Move:
    return Move(lambda field, x, state: (step(field, x, i), 0.0, None), True, i + 1)


def _noisy(step: Callable[..., tuple[torch.Tensor, float]], i: int, *args: float) -> Move:
    def apply(field: Field, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, float, Any]:
        return (*step(field, x, i, *args), None)

    return Move(apply, True, i if step is langevin_step else i + 1)


def _dpmpp_move(i: int) -> Move:
    def apply(field: Field, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, float, Any]:
        out, denoised = dpmpp_2m_step(field, x, i, state)
        return out, 0.0, denoised

    return Move(apply, False, i + 1)


def langevin_delta(levels: Levels, k: int, steps_per_level: int, step_scale: float) -> float:
    """Langevin step at level k (module docstring): u_k / m when the schedule has Langevin time, else
    step_scale sigma_t(t_k)^2."""
    if levels.langevin_time.sum() > 0:
        return float(levels.langevin_time[k]) / steps_per_level
    return step_scale * float(levels.sigma_t[k]) ** 2


_ONE_STEP = {"euler": euler_step, "heun": heun_step, "ddim": ddim_step, "euler-t": euler_t_step}
_NOISY_STEP = {"euler-maruyama": euler_maruyama_step, "euler-maruyama-t": euler_maruyama_t_step,
               "ancestral": ancestral_step}


def _check_solver(solver: str, steps_per_level: int) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    if int(steps_per_level) != steps_per_level or steps_per_level < 1:
        raise ValueError(f"steps_per_level must be an integer >= 1; got {steps_per_level!r}")


def solver_moves(solver: str, levels: Levels, *, steps_per_level: int = 1,
                 step_scale: float = DEFAULT_STEP_SCALE) -> list[Move]:
    """The moves of ``solver`` over ``levels``, in order (module docstring): one per step, the
    Langevin steps of "langevin" and "pc" one move each, and the denoising step for a step to sigma = 0."""
    _check_solver(solver, steps_per_level)
    moves: list[Move] = []
    for i in range(levels.n_steps):
        if levels.sigma[i + 1] == 0:
            moves.append(_deterministic(denoise_step, i))
            continue
        if solver in _ONE_STEP:
            moves.append(_deterministic(_ONE_STEP[solver], i))
        elif solver == "dpmpp-2m":
            moves.append(_dpmpp_move(i))
        elif solver in _NOISY_STEP:
            moves.append(_noisy(_NOISY_STEP[solver], i))
        elif solver == "pc":
            moves.append(_noisy(euler_maruyama_step, i))
        if solver in ("langevin", "pc"):
            delta = langevin_delta(levels, i + 1, int(steps_per_level), float(step_scale))
            moves += [_noisy(langevin_step, i + 1, delta) for _ in range(int(steps_per_level))]
    return moves


@dataclass(frozen=True)
class SampleRun:
    """What :func:`sample` returns: x (n, d), the samples at the last level (toolkit variable: x at t_N,
    or data units after a step to sigma = 0); nfe, the score evaluations made; trajectory, the
    states after every move (with ``keep_trajectory``, else empty)."""

    x: torch.Tensor
    nfe: int
    trajectory: tuple[torch.Tensor, ...] = ()


def sample(solver: str, score: Any, x: torch.Tensor, schedule: Any, *, final: Final = "t_min",
           generator: torch.Generator | None = None, steps_per_level: int = 1,
           step_scale: float = DEFAULT_STEP_SCALE, keep_trajectory: bool = False) -> SampleRun:
    """Run ``solver`` (one of :data:`SOLVERS`) from x (n, d), samples of the initial law at t_0 =
    schedule.t_max in the toolkit's variable, along ``schedule`` on ``score.process``.

    Noise is drawn with ``torch.randn(..., generator=generator)`` in x's dtype. The run is
    differentiable in x for the ODE solvers (no ``no_grad`` inside). ``final``,
    ``steps_per_level`` and ``step_scale``: module docstring. Returns a :class:`SampleRun`
    whose ``nfe`` equals :func:`solver_nfe` for the same arguments.
    """
    levels = Levels.of(schedule, score.process, final)
    field = Field(score, levels)
    state, trajectory = None, []
    for move in solver_moves(solver, levels, steps_per_level=steps_per_level, step_scale=step_scale):
        mean, std, state = move.apply(field, x, state)
        x = mean if std == 0 else mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        if keep_trajectory:
            trajectory.append(x)
    return SampleRun(x, field.calls, tuple(trajectory))


def solver_nfe(solver: str, n_steps: int, *, to_zero: bool = False, steps_per_level: int = 1) -> int:
    """Score evaluations of ``solver`` over ``n_steps`` steps S, the last landing on sigma = 0 when
    ``to_zero`` (module docstring: S, 2 S - z, m (S - z) + z, S + m (S - z))."""
    _check_solver(solver, steps_per_level)
    s, z, m = int(n_steps), int(bool(to_zero)), int(steps_per_level)
    if s < 1:
        raise ScheduleError(f"a run needs at least one step; got {n_steps!r}")
    if solver == "heun":
        return 2 * s - z
    if solver == "langevin":
        return m * (s - z) + z
    if solver == "pc":
        return s + m * (s - z)
    return s


def steps_for_nfe(solver: str, nfe: int, *, final: Final = "t_min", steps_per_level: int = 1) -> int:
    """N, the intervals of the largest schedule whose run costs at most ``nfe`` evaluations
    (S = N steps, or N + 1 with ``final="zero"``); ScheduleError when even N = 1 costs more."""
    if final not in FINALS:
        raise ValueError(f"final must be one of {FINALS}; got {final!r}")
    extra = int(final == "zero")
    n = 0
    while solver_nfe(solver, n + 1 + extra, to_zero=bool(extra), steps_per_level=steps_per_level) <= nfe:
        n += 1
    if n == 0:
        cost = solver_nfe(solver, 1 + extra, to_zero=bool(extra), steps_per_level=steps_per_level)
        raise ScheduleError(f"{nfe} evaluations do not pay for one step of {solver!r} (final={final!r}: {cost})")
    return n


def prior_samples(process: ForwardProcess, t_max: float, n: int, dim: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws of the reference Gaussian N(0, (alpha_T^2 + sigma_T^2) I) at T = t_max (the "prior"
    initial law of :func:`~scorehamiltonian.sampling.propagation.propagate_exact`), float64 (n, dim)."""
    scale = math.sqrt(float(process.alpha(t_max)) ** 2 + float(process.sigma(t_max)) ** 2)
    return scale * torch.randn(int(n), int(dim), dtype=torch.float64, generator=generator)
