"""Baseline step schedules for the solvers, implemented from their papers (THEORY section 3).

Every baseline is a function of (score or process, nfe, solver, t_max, t_min) returning a
:class:`Schedule` with the most steps whose run costs at most ``nfe`` evaluations
(:func:`~.solvers.steps_for_nfe`; ``final="zero"`` adds the step to sigma = 0 after t_min).
sigma below is the libraries' noise level sigma_t / alpha_t, lambda = -log sigma.

Rules of the process alone:

- "edm": equal steps in sigma^(1/rho), rho = 7 (Karras et al. 2022, eq. 5);
- "log-snr": equal steps in log-SNR (= in log sigma; k-diffusion's exponential schedule);
- "time-uniform": equal steps in the process time t;
- "time-quadratic": equal steps in sqrt(t) (the quadratic spacing of DDIM, Song et al. 2021);
- "ays-sd15", "ays-sdxl", "ays-svd": the published Align Your Steps lists (Sabour et al. 2024,
  10 steps; :data:`AYS_SIGMAS`), resampled to N + 1 levels by linear interpolation of log sigma
  at equally spaced positions (the authors' recipe for other step counts) and carried to
  [sigma(t_min), sigma(t_max)] by the affine map of log sigma between the list's ends and ours
  (the lists were optimised for other ranges: their shape is what transfers);
- "stepoptim": Xue et al. (CVPR 2024): minimise the solver's error bound
  J = sum_j |sum_n c_nj| e_j over the interior lambda_1 < ... < lambda_{N-1}, where the solver's
  step n in exponential-integrator form is y_{n+1} / sigma_{n+1} = y_n / sigma_n +
  sum_j c_nj D_j (order 1, Euler / DDIM: c_nn = e^lambda_{n+1} - e^lambda_n; order 2,
  DPM-Solver++(2M): c_nn = (e^lambda_{n+1} - e^lambda_n)(1 + 1 / (2 r_n)),
  c_n,n-1 = -(e^lambda_{n+1} - e^lambda_n) / (2 r_n), r_n = h_{n-1} / h_n, the first step of order
  1) and e_j = sigma_j^2 / sqrt(1 + sigma_j^2) is the paper's model of the data-prediction error
  (sigma_t^2 / alpha_t of the variance-preserving process with the same sigma). Heun is given
  the order-2 objective, every other solver the order-1 one. Minimised on the softmax logits of
  the increments of lambda, within +-``STEPOPTIM_BOUND``, by L-BFGS-B from the log-SNR schedule
  and by Powell from there and from L-BFGS-B's result, the lowest J kept (the order-2 J, a sum
  of |.|, has kinks and many local minima: on OU to t_min 1e-3 with 50 steps the three reached
  5.58, 5.23 and 2.98; no one of them was lowest everywhere);

rules of the model (``score`` needed):

- "ays-klub": the Align Your Steps optimisation run on the model: minimise the KL upper bound
  between the reverse SDE and its linearisation with the denoiser held at each step's start,
  KLUB = sum_i int_{sigma_{i+1}}^{sigma_i} sigma^-3 E |D(y_sigma, sigma) - D(y_{sigma_i}, sigma_i)|^2 dsigma,
  y_sigma = x_0 + sigma z, y_{sigma_i} = y_sigma + sqrt(sigma_i^2 - sigma^2) z', x_0 from the data,
  by Monte Carlo with fixed draws (``n_samples``) and 6-point Gauss-Legendre quadrature in log sigma
  per step, each interior level in turn minimised over its bracket (the paper's iterative
  refinement) from the EDM schedule until no level moves by 1e-3 in log sigma;
- "oss": Optimal Stepsize Sampling (Pei et al. 2025): the N levels, among the K + 1 of a teacher
  run of the same solver (``teacher_steps`` = K steps of the EDM schedule), whose student run
  ends closest to the teacher's end, by dynamic programming: the student's best state after i
  steps at teacher level j is the step from the state at level k < j that lands nearest the
  teacher there (mean squared distance over ``n_samples`` draws of the initial law), and the
  path to level K is traced back. Stochastic solvers use their probability-flow counterpart
  (euler) as teacher and student;
- "thermodynamic", "adiabatic-A/gap", "adiabatic-A/sqrt-gap": the spectral rules of
  :func:`~.schedules.standard_schedule` (equal increments of int A dt, int A / lambda_1 dt,
  int A / sqrt(lambda_1) dt), from ``profile`` or computed from ``score``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.optimize
import torch

from ..common.errors import ScheduleError
from ..score.processes import ForwardProcess
from .schedules import Schedule, standard_schedule
from .solvers import SDE_SOLVERS, Field, Final, Levels, dpmpp_2m_step, sample, steps_for_nfe

__all__ = [
    "AYS_SIGMAS",
    "BASELINES",
    "PROCESS_BASELINES",
    "STEPOPTIM_BOUND",
    "ays_klub_levels",
    "baseline_schedule",
    "klub",
    "lambda_from_logits",
    "oss_levels",
    "sigma_ends",
    "stepoptim_levels",
    "stepoptim_objective",
    "times_of_sigmas",
]

#: The published Align Your Steps 10-step sigma lists (Sabour et al. 2024; NVIDIA's quickstart guide,
#: research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html): Stable Diffusion 1.5, SDXL, and
#: Stable Video Diffusion.
AYS_SIGMAS = {
    "sd15": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
             0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}
_RULES = {"edm": "edm", "log-snr": "log-snr", "time-uniform": "uniform"}
_SPECTRAL = ("thermodynamic", "adiabatic-A/gap", "adiabatic-A/sqrt-gap")
#: Every name :func:`baseline_schedule` accepts (the model rules last).
BASELINES = ("edm", "log-snr", "time-uniform", "time-quadratic", "ays-sd15", "ays-sdxl", "ays-svd", "stepoptim",
             "ays-klub", "oss", *_SPECTRAL)
#: The baselines that need only the process (no model evaluations).
PROCESS_BASELINES = BASELINES[:8]
_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(6)
_SECOND_ORDER = ("heun", "dpmpp-2m")


def sigma_ends(process: ForwardProcess, t_max: float, t_min: float) -> tuple[float, float]:
    """The noise levels sigma = sigma_t / alpha_t at t_max and t_min."""
    ratio = process.sigma(torch.tensor([t_max, t_min], dtype=torch.float64)) / process.alpha(
        torch.tensor([t_max, t_min], dtype=torch.float64))
    return float(ratio[0]), float(ratio[1])


def times_of_sigmas(process: ForwardProcess, sigmas: np.ndarray, t_max: float, t_min: float) -> np.ndarray:
    """Times of the noise levels (descending), the ends exactly t_max and t_min."""
    times = process.log_snr_to_t(torch.tensor(-2.0 * np.log(sigmas))).numpy()
    times[0], times[-1] = t_max, t_min
    return times


def _ays_published(key: str, n_steps: int, process: ForwardProcess, t_max: float, t_min: float) -> np.ndarray:
    log_list = np.log(np.asarray(AYS_SIGMAS[key], dtype=np.float64))
    log_at = np.interp(np.linspace(0.0, 1.0, n_steps + 1), np.linspace(0.0, 1.0, log_list.size), log_list)
    top, bottom = (math.log(s) for s in sigma_ends(process, t_max, t_min))
    mapped = bottom + (log_at - log_list[-1]) * (top - bottom) / (log_list[0] - log_list[-1])
    return times_of_sigmas(process, np.exp(mapped), t_max, t_min)


def lambda_from_logits(lam_0: float, lam_n: float, logits: np.ndarray) -> np.ndarray:
    """lambda_0 .. lambda_N (lambda = -log sigma) with increments (lam_n - lam_0) softmax(logits): every
    logit vector gives levels from lam_0 to lam_n, strictly monotone; logits = log(diff(lambda)) inverts it."""
    share = np.exp(logits - logits.max())
    return lam_0 + (lam_n - lam_0) * np.concatenate([[0.0], np.cumsum(share / share.sum())])


#: Bound on the StepOptim logits: lambda's increments stay within e^16 of each other. At +-20 the
#: increments underflowed to 0 and J to 0 / 0 on L-BFGS-B's first line search (EDM, 5 Heun steps:
#: the search stopped at its start), and unbounded searches merge steps (J falls, NFE is wasted).
STEPOPTIM_BOUND = 8.0


def stepoptim_objective(lam: np.ndarray, order: int) -> float:
    """J of Xue et al. (module docstring) for levels lambda_0 < ... < lambda_N (lambda = -log sigma);
    inf where a previous step vanishes (an infinite extrapolation)."""
    growth, sigma = np.exp(lam), np.exp(-lam)
    step = np.diff(growth)
    coef = np.concatenate([step, [0.0]])
    if order != 1:  # every step but the first: c_nn gains step r / 2, c_n,n-1 loses it
        with np.errstate(divide="ignore", invalid="ignore"):
            half_inverse_r = 0.5 * np.diff(lam)[1:] / np.diff(lam)[:-1]
        coef[1:-1] += step[1:] * half_inverse_r
        coef[:-2] -= step[1:] * half_inverse_r
    with np.errstate(invalid="ignore"):
        value = float(np.sum(np.abs(coef) * sigma**2 / np.sqrt(1 + sigma**2)))
    return value if math.isfinite(value) else math.inf


def stepoptim_levels(process: ForwardProcess, n_steps: int, solver: str, t_max: float, t_min: float) -> np.ndarray:
    """The StepOptim times (module docstring) for ``n_steps`` steps of ``solver``."""
    top, bottom = sigma_ends(process, t_max, t_min)
    lam_0, lam_n = -math.log(top), -math.log(bottom)
    order = 2 if solver in _SECOND_ORDER else 1
    def objective(logits: np.ndarray) -> float:
        return stepoptim_objective(lambda_from_logits(lam_0, lam_n, logits), order)

    bounds = [(-STEPOPTIM_BOUND, STEPOPTIM_BOUND)] * n_steps
    gradient = scipy.optimize.minimize(objective, np.zeros(n_steps), method="L-BFGS-B", bounds=bounds)
    runs = [gradient] + [scipy.optimize.minimize(objective, start, method="Powell", bounds=bounds)
                         for start in (np.zeros(n_steps), gradient.x)]
    best = min(runs, key=lambda run: objective(run.x))
    return times_of_sigmas(process, np.exp(-lambda_from_logits(lam_0, lam_n, best.x)), t_max, t_min)


def _denoiser(score: Any) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """D(y, sigma) in the libraries' variables for the score's process."""
    process = score.process

    def denoise(y: torch.Tensor, sigma: float) -> torch.Tensor:
        t = float(process.log_snr_to_t(torch.tensor(-2.0 * math.log(sigma), dtype=torch.float64)))
        alpha, sigma_t = float(process.alpha(t)), float(process.sigma(t))
        x = alpha * y
        return (x + sigma_t**2 * score(x, t)) / alpha

    return denoise


def _data(score: Any, n: int, generator: torch.Generator) -> torch.Tensor:
    mixture = getattr(score, "mixture", None)
    if mixture is not None:
        return mixture.sample(n, generator)
    return score.sample(n, float(score.process.t_min), generator)


class _Klub:
    """The KLUB of the module docstring with fixed draws: x_0 (data), z, z' (``n_samples``, ``seed``)."""

    def __init__(self, score: Any, n_samples: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(int(seed))
        self.x0 = _data(score, int(n_samples), generator)
        self.z1 = torch.randn(self.x0.shape, generator=generator, dtype=self.x0.dtype)
        self.z2 = torch.randn(self.x0.shape, generator=generator, dtype=self.x0.dtype)
        self.denoise = _denoiser(score)

    def term(self, upper: float, lower: float) -> float:
        """int_lower^upper s^-3 E |D(y_s, s) - D(y_upper, upper)|^2 ds, Gauss-Legendre in log s."""
        a, b = math.log(lower), math.log(upper)
        total = 0.0
        with torch.no_grad():
            for node, weight in zip(_GAUSS_NODES, _GAUSS_WEIGHTS):
                s = math.exp(0.5 * (a + b) + 0.5 * (b - a) * node)
                y = self.x0 + s * self.z1
                start = y + math.sqrt(max(upper**2 - s**2, 0.0)) * self.z2
                gap = ((self.denoise(y, s) - self.denoise(start, upper)) ** 2).sum(-1).mean()
                total += 0.5 * (b - a) * weight * float(gap) / s**2
        return total


def klub(score: Any, sigmas: Any, *, n_samples: int = 1000, seed: int = 0) -> float:
    """The AYS KL upper bound (module docstring) of descending positive noise levels ``sigmas``."""
    levels = np.asarray(sigmas, dtype=np.float64)
    bound = _Klub(score, n_samples, seed)
    return float(sum(bound.term(hi, lo) for hi, lo in itertools.pairwise(levels)))


def ays_klub_levels(score: Any, n_steps: int, t_max: float, t_min: float, *, n_samples: int = 1000,
                    seed: int = 0, max_sweeps: int = 8) -> np.ndarray:
    """The AYS times optimised on the model's KLUB (module docstring)."""
    process = score.process
    bound = _Klub(score, n_samples, seed)
    top, bottom = sigma_ends(process, t_max, t_min)
    log_s = np.log(standard_schedule("edm", n_steps, t_max, t_min, process).sigmas(process))
    log_s[0], log_s[-1] = math.log(top), math.log(bottom)
    for _ in range(int(max_sweeps)):
        moved = 0.0
        for i in range(1, n_steps):
            def local(v: float, i: int = i) -> float:
                return bound.term(math.exp(log_s[i - 1]), math.exp(v)) + bound.term(math.exp(v), math.exp(log_s[i + 1]))

            span = log_s[i - 1] - log_s[i + 1]
            best = scipy.optimize.minimize_scalar(local, bounds=(log_s[i + 1] + 1e-6 * span, log_s[i - 1] - 1e-6 * span),
                                                  method="bounded", options={"xatol": 1e-4 * span})
            moved = max(moved, abs(best.x - log_s[i]))
            log_s[i] = best.x
        if moved < 1e-3:
            break
    return times_of_sigmas(process, np.exp(log_s), t_max, t_min)


def _student_step(solver: str, score: Any, state: tuple[torch.Tensor, Any, int | None], k: int, j: int,
                  tau: np.ndarray) -> tuple[torch.Tensor, Any, int | None]:
    """One student step from teacher level k to j; the state (x_k, D at the previous level, its index)
    carries DPM-Solver++(2M)'s memory (None for the other solvers)."""
    x, previous, k_prev = state
    if solver != "dpmpp-2m":
        return sample(solver, score, x, tau[[k, j]]).x, None, None
    first = k_prev is None
    levels = Levels.of(tau[[k, j]] if first else tau[[k_prev, k, j]], score.process)
    x_next, denoised = dpmpp_2m_step(Field(score, levels), x, 0 if first else 1, None if first else previous)
    return x_next, denoised, k


def oss_levels(score: Any, n_steps: int, solver: str, t_max: float, t_min: float, *, teacher_steps: int = 40,
               n_samples: int = 200, seed: int = 0) -> np.ndarray:
    """The OSS times (module docstring): N of the teacher's K + 1 levels, by dynamic programming."""
    solver = "euler" if solver in SDE_SOLVERS else solver
    if n_steps > teacher_steps:
        raise ScheduleError(f"OSS picks {n_steps} steps among {teacher_steps} teacher steps: raise teacher_steps")
    process = score.process
    tau = standard_schedule("edm", teacher_steps, t_max, t_min, process).times
    generator = torch.Generator().manual_seed(int(seed))
    scale = math.sqrt(float(process.alpha(t_max)) ** 2 + float(process.sigma(t_max)) ** 2)
    x0 = scale * torch.randn(n_samples, score.dim, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        teacher = [x0, *sample(solver, score, x0, tau, keep_trajectory=True).trajectory]
        states: dict[int, tuple[tuple[torch.Tensor, Any, int | None], list[int]]] = {0: ((x0, None, None), [0])}
        for i in range(1, n_steps + 1):
            targets = [teacher_steps] if i == n_steps else range(i, teacher_steps - (n_steps - i) + 1)
            reached = {}
            for j in targets:
                best = None
                for k, (state, path) in states.items():
                    if k < j:
                        landed = _student_step(solver, score, state, k, j, tau)
                        cost = float(((landed[0] - teacher[j]) ** 2).sum(-1).mean())
                        if best is None or cost < best[0]:
                            best = (cost, landed, [*path, j])
                reached[j] = best[1:]
            states = reached
    return tau[states[teacher_steps][1]]


def _check_baseline(name: str, score: Any) -> None:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {list(BASELINES)}")
    if name in ("ays-klub", "oss") and score is None:
        raise ScheduleError(f"baseline {name!r} is computed on the model: pass a score")


def baseline_schedule(name: str, source: Any, nfe: int, solver: str, t_max: float, t_min: float, *,
                      final: Final = "t_min", steps_per_level: int = 1, profile: Any = None,
                      **options: Any) -> Schedule:
    """The baseline ``name`` (one of :data:`BASELINES`, module docstring) for ``solver`` at ``nfe`` evaluations.

    source : a score (its ``process`` is used; needed by "ays-klub", "oss" and, without
    ``profile``, the spectral rules) or a :class:`ForwardProcess`. final, steps_per_level : as in
    :func:`~.solvers.sample` (they set the number of steps). profile : a
    :class:`~.schedules.PathProfile` for the spectral rules. options : ``n_samples``, ``seed``
    (ays-klub, oss), ``teacher_steps`` (oss). The schedule is named after the baseline.
    """
    score = None if isinstance(source, ForwardProcess) else source
    process = source if score is None else score.process
    _check_baseline(name, score)
    t_max, t_min = float(t_max), float(t_min)
    n = steps_for_nfe(solver, nfe, final=final, steps_per_level=steps_per_level)
    if name in _RULES or name in _SPECTRAL:
        rule = _RULES.get(name, name)
        return Schedule(standard_schedule(rule, n, t_max, t_min, process, score=score, profile=profile).times,
                        np.zeros(n), name)
    if name == "time-quadratic":
        root = math.sqrt(t_max) + (math.sqrt(t_min) - math.sqrt(t_max)) * np.arange(n + 1) / n
        times = root**2
        times[0], times[-1] = t_max, t_min
    elif name.startswith("ays-") and name != "ays-klub":
        times = _ays_published(name[4:], n, process, t_max, t_min)
    elif name == "stepoptim":
        times = stepoptim_levels(process, n, solver, t_max, t_min)
    elif name == "ays-klub":
        times = ays_klub_levels(score, n, t_max, t_min, **options)
    else:
        times = oss_levels(score, n, solver, t_max, t_min, **options)
    return Schedule(times, np.zeros(n), name)
