"""Schedules out to k-diffusion and diffusers, and library sigma lists in (THEORY section 1).

The conventions are those of :mod:`.solvers`: a schedule's N + 1 times are N steps ending at t_N,
or N + 1 steps ending at sigma = 0 with ``final="zero"``; the libraries step y = x / alpha_t in
sigma = sigma_t / alpha_t. What each library is given, so that it runs exactly the toolkit's
solver with the same number of model calls:

- k-diffusion (:func:`to_k_diffusion`): the sigmas sigma_t / alpha_t of the N + 1 times, with a
  trailing 0 only for ``final="zero"`` (``sample_euler`` then makes N or N + 1 calls,
  ``sample_heun`` 2 N or 2 N + 1, ``sample_dpmpp_2m`` N or N + 1), and the two scales that
  map the toolkit's x to the library's y = x / alpha_{t_0} at the start and back,
  x = alpha_{t_N} y, at the end (1 after a step to sigma = 0);
- diffusers (:func:`to_diffusers`): a copy of the user's scheduler, configured and with
  ``set_timesteps`` called, whose ``timesteps`` loop is the schedule:
  ``EulerDiscreteScheduler`` takes the sigmas themselves (``set_timesteps(sigmas=...)``, the
  last one included: no 0 is added for ``final="t_min"``); ``HeunDiscreteScheduler`` takes
  fractional training indices (``timesteps=``, the index n where its table's sigma,
  interpolated linearly in n, equals ours) and always ends with a step to 0, so it needs
  ``final="zero"``; ``DPMSolverMultistepScheduler`` takes integer indices only (the schedule's
  levels must sit on its table) and its last level is 0 (``final_sigmas_type="zero"``) or the
  table's first entry (``"sigma_min"``), with ``lower_order_final=False`` and the second-order
  midpoint DPM-Solver++, which is the toolkit's dpmpp-2m; ``EDMEulerScheduler`` reads
  ``set_timesteps(sigmas=...)`` as a ramp r in [0, 1] of its Karras schedule, so it is given
  r = (sigma^(1/rho) - sigma_max^(1/rho)) / (sigma_min^(1/rho) - sigma_max^(1/rho)) with its own
  sigma_min, sigma_max, rho, and ends with a step to 0 (``final="zero"``). A training index is
  the scheduler's own (timestep n of its ``alphas_cumprod`` table), never a process time.
  Every configured scheduler is checked: its sigmas must equal ours to float32 rounding.

Between table entries diffusers interpolates sigma in the index (linearly, or log-linearly for
Euler's sigma-to-timestep map) while :class:`DiscreteVP` interpolates -log abar by a monotone
cubic; at the table's indices (integer timesteps) the two agree exactly, elsewhere the model's
conditioning differs by a fraction of one index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..common.errors import ScheduleError
from ..score.processes import ForwardProcess
from .schedules import Schedule, as_schedule
from .solvers import Final, Levels

__all__ = ["KDiffusionSchedule", "schedule_from_sigmas", "to_diffusers", "to_k_diffusion"]

#: Relative agreement of a configured diffusers scheduler's sigmas with ours (float32 storage,
#: float32 timesteps interpolated in the table: a few float32 ulps).
_FLOAT32_AGREEMENT = 1e-5
#: Distance from an integer index below which a level counts as sitting on the table.
_INDEX_TOL = 1e-3


@dataclass(frozen=True)
class KDiffusionSchedule:
    """The arguments of a k-diffusion sampler for a schedule (module docstring).

    sigmas : (N + 1,) or (N + 2,) tensor, sigma_t / alpha_t at the times (then 0 with
    ``final="zero"``): pass as ``sample_euler(model, y, sigmas)``; scale_in : 1 / alpha_{t_0},
    so that y_0 = scale_in * x_0; scale_out : alpha_{t_N} (1 after a step to 0), so that the
    toolkit's x = scale_out * y of the sampler's output.
    """

    sigmas: torch.Tensor
    scale_in: float
    scale_out: float


def to_k_diffusion(schedule: Schedule, process: ForwardProcess, final: Final = "t_min",
                   dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> KDiffusionSchedule:
    """k-diffusion's sigmas and the start and end scales of ``schedule`` on ``process`` (module docstring)."""
    levels = Levels.of(schedule, process, final)
    return KDiffusionSchedule(torch.as_tensor(levels.sigma, dtype=dtype, device=device),
                              1.0 / float(levels.alpha[0]), float(levels.alpha[-1]))


def schedule_from_sigmas(sigmas: Any, process: ForwardProcess, name: str = "custom") -> tuple[Schedule, Final]:
    """A library's sigma list (sigma_t / alpha_t, descending, an optional trailing 0) as the schedule of
    ``process`` with the same levels, and ``final`` ("zero" when the list ends with 0).

    The times solve -2 log sigma = log_snr(t); a level beyond an end of the process's range by
    less than a relative 1e-5 in sigma (float32 storage) is put on that end, one further out
    raises :class:`TimeRangeError`.
    """
    values = np.asarray(sigmas.detach().cpu() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=np.float64)
    final: Final = "zero" if values.size and values[-1] == 0 else "t_min"
    positive = values[:-1] if final == "zero" else values
    if (positive <= 0).any():
        raise ScheduleError(f"sigmas must be positive before an optional trailing 0; got {values.tolist()}")
    lam = -2.0 * np.log(positive)
    ends = process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64)).numpy()
    clipped = np.clip(lam, ends[0], ends[1])
    near = np.abs(lam - clipped) <= 2 * _FLOAT32_AGREEMENT
    lam = np.where(near, clipped, lam)
    times = process.log_snr_to_t(torch.tensor(lam)).numpy()
    return as_schedule(times, process, name=name), final


def _table_sigmas(scheduler: Any) -> np.ndarray:
    """sigma_n = sqrt((1 - abar_n) / abar_n) of the scheduler's table (ascending in n), float64."""
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise ScheduleError(f"{type(scheduler).__name__} has no alphas_cumprod table")
    abar = np.asarray(table.detach().cpu() if isinstance(table, torch.Tensor) else table, dtype=np.float64)
    return np.sqrt((1.0 - abar) / abar)


def _indices(sigma: np.ndarray, table: np.ndarray, scheduler: str) -> np.ndarray:
    """Fractional indices n with table(n) = sigma, the table interpolated linearly in n."""
    lo, hi = table[0] * (1 - _FLOAT32_AGREEMENT), table[-1] * (1 + _FLOAT32_AGREEMENT)
    bad = np.flatnonzero((sigma < lo) | (sigma > hi))
    if bad.size:
        raise ScheduleError(f"level {int(bad[0])} has sigma = {sigma[bad[0]]:.6g}, outside the range "
                            f"[{table[0]:.6g}, {table[-1]:.6g}] of {scheduler}'s table")
    return np.interp(sigma, table, np.arange(table.size, dtype=np.float64))


def _need_zero(levels: Levels, scheduler: str) -> None:
    if not levels.to_zero:
        raise ScheduleError(f"{scheduler} always ends with a step to sigma = 0: export with final='zero'")


def _euler(levels: Levels, scheduler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _indices(levels.sigma[levels.sigma > 0], _table_sigmas(scheduler), "EulerDiscreteScheduler")
    return {}, {"sigmas": levels.sigma.tolist()}


def _heun(levels: Levels, scheduler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _need_zero(levels, "HeunDiscreteScheduler")
    return {}, {"timesteps": _indices(levels.sigma[:-1], _table_sigmas(scheduler), "HeunDiscreteScheduler").tolist()}


def _dpm(levels: Levels, scheduler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    table = _table_sigmas(scheduler)
    index = _indices(levels.sigma[:-1], table, "DPMSolverMultistepScheduler")
    off = np.flatnonzero(np.abs(index - np.round(index)) > _INDEX_TOL)
    if off.size:
        raise ScheduleError(f"DPMSolverMultistepScheduler takes integer timesteps only: level {int(off[0])} sits at "
                            f"index {index[off[0]]:.4f} of its table; put the schedule's levels on the table")
    final_type = "zero"
    if not levels.to_zero:
        if abs(levels.sigma[-1] / table[0] - 1) > _FLOAT32_AGREEMENT:
            raise ScheduleError(f"DPMSolverMultistepScheduler ends at sigma = 0 or at its table's first entry "
                                f"({table[0]:.6g}); this schedule ends at {levels.sigma[-1]:.6g}: use final='zero' "
                                "or end the schedule there")
        final_type = "sigma_min"
    overrides = {"final_sigmas_type": final_type, "lower_order_final": False, "euler_at_final": False,
                 "solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "thresholding": False}
    return overrides, {"timesteps": np.round(index).astype(int).tolist()}


def _edm_euler(levels: Levels, scheduler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    _need_zero(levels, "EDMEulerScheduler")
    config = scheduler.config
    if config.get("sigma_schedule", "karras") != "karras":
        raise ScheduleError("EDMEulerScheduler with sigma_schedule='exponential' ignores custom sigmas; "
                            "configure it with sigma_schedule='karras'")
    rho = float(config["rho"])
    top, bottom = float(config["sigma_max"]) ** (1 / rho), float(config["sigma_min"]) ** (1 / rho)
    ramp = (levels.sigma[:-1] ** (1 / rho) - top) / (bottom - top)
    return {"final_sigmas_type": "zero"}, {"sigmas": torch.tensor(ramp, dtype=torch.float64)}


_SCHEDULERS = {"EulerDiscreteScheduler": _euler, "HeunDiscreteScheduler": _heun,
               "DPMSolverMultistepScheduler": _dpm, "EDMEulerScheduler": _edm_euler}
_SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                  "use_flow_sigmas")


def _levels_of(configured: Any, name: str) -> np.ndarray:
    """The distinct levels a configured scheduler steps through (Heun repeats its inner levels)."""
    sigmas = np.asarray(configured.sigmas.detach().cpu(), dtype=np.float64)
    if name == "HeunDiscreteScheduler":
        sigmas = np.concatenate([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    return sigmas


def to_diffusers(schedule: Schedule, process: ForwardProcess, scheduler: Any, final: Final = "t_min") -> Any:
    """A copy of ``scheduler`` configured for ``schedule`` (module docstring), ``set_timesteps`` called.

    Loop ``for t in configured.timesteps`` as usual: the model is called len(timesteps) times,
    :func:`~.solvers.solver_nfe` of the matching solver (euler, heun, dpmpp-2m), and the sample
    after the loop is the library variable y (x = alpha_{t_N} y, or the data after a step to 0).
    Raises :class:`ScheduleError` for a scheduler class not listed there, a level outside its
    table, an index that must be an integer and is not, a ``final`` the scheduler cannot end
    with, or a configured scheduler whose sigmas differ from ours.
    """
    name = type(scheduler).__name__
    if name not in _SCHEDULERS:
        raise ScheduleError(f"no export to {name}; supported: {sorted(_SCHEDULERS)}")
    levels = Levels.of(schedule, process, final)
    overrides, arguments = _SCHEDULERS[name](levels, scheduler)
    overrides.update({key: False for key in _SIGMA_OPTIONS if scheduler.config.get(key)})
    configured = type(scheduler).from_config(dict(scheduler.config), **overrides)
    configured.set_timesteps(**arguments)
    got = _levels_of(configured, name)
    if got.shape != levels.sigma.shape or not np.allclose(got, levels.sigma, rtol=_FLOAT32_AGREEMENT, atol=0.0):
        raise ScheduleError(f"{name} set up sigmas {got.tolist()} instead of {levels.sigma.tolist()}")
    return configured

