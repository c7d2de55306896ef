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

Model error (the rule of :mod:`.model_error`). An end state with ``members`` (a
:class:`~scorehamiltonian.score.ensemble.ScoreEnsemble`, a :class:`ScoreEnergy` of one, or any
energy callable carrying its members' energies) is an ensemble: the estimate is run with the
ensemble's own energy (the mean score's; its energies skip their own members' readouts) and
again with each member in its place (both ends' k-th members when both are ensembles, of
equal K), every run from the same seed; ``model_error`` is the members' standard deviation
of Delta F. Cost: K + 1 estimates. An exact end state (a callable, a mixture, an analytic
score) has none; a learned end state that is a single model makes it NaN, flagged
``model_unknown`` and never converged. ``total_error`` = error + systematic_error +
model_error (standard error, bound and one standard deviation of the members, added);
``atol`` asks for total_error <= atol.

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
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from ..common.errors import SamplesRequiredError
from ..common.seeds import draw_seed
from ..score.interface import Score
from ..spectral.solution import ConvergenceWarning
from .lambda_schedules import LambdaSchedule, checked_lambdas
from .model_error import MODEL_SPREAD, member_spread, source_kind, warn_model_unknown
from .path import (
    TARGET_ACCEPTANCE,
    Ensemble,
    LinearPath,
    Sampling,
    ScoreEnergy,
    ensemble,
    langevin_step,
    mala,
    mixing_z,
    setup_path,
)

__all__ = ["MAX_PARETO_K", "MIN_ESS", "MIN_ESS_FRACTION", "MIN_OVERLAP", "MIN_STATE_SAMPLES", "FreeEnergyResult", "free_energy_difference", "pareto_k"]

FreeEnergyMethod = Literal["ti", "ais", "bar", "mbar", "zwanzig"]
Move = Literal["mala", "ula"]
#: ULA steps are tuned to the step at which MALA would accept this fraction (smaller steps:
#: ULA has no rejection to stop particles in stiff tails from diverging).
_ULA_ACCEPTANCE = 0.9
#: Chains started from p_0 and from p_1 disagree (not mixed) beyond this many standard errors.
_MIXING_Z = 4.0
#: The highest Legendre coefficient of <W>_lambda counts as unresolved beyond this many standard errors.
_RESOLUTION_Z = 3.0
#: Rounds of step tuning per AIS level, and the size of the tuning population.
_TUNE_ROUNDS = 5
_PILOT_PARTICLES = 256
#: Smallest overlap-matrix element between neighbouring states that BAR and MBAR trust
#: (Klimovich, Shirts and Mobley 2015 recommend at least 0.03).
MIN_OVERLAP = 0.03
#: Fewest samples per state (or particles) an estimate is trusted with.
MIN_STATE_SAMPLES = 50
#: Smallest effective sample size of importance weights (ais, zwanzig): MIN_ESS_FRACTION of the
#: samples and at least MIN_ESS. Below about 20 the delta-method error of a log-mean-exp is
#: unreliable: measured, Zwanzig between N(0, 0.3^2) and N(0, 3^2) with an ESS of 13.8 of 200
#: missed Delta F by 4.2 of its standard errors.
MIN_ESS_FRACTION = 0.01
MIN_ESS = 20.0
#: Largest Pareto tail shape of importance weights that is trusted (Vehtari et al. 2024: above
#: 0.7 the importance-sampling estimate is unreliable whatever the sample size).
MAX_PARETO_K = 0.7


@dataclass(frozen=True)
class FreeEnergyResult:
    """Delta F = F_1 - F_0 = -log(Z_1 / Z_0) in k_B T, with its standard error and diagnostics.

    value, error : the estimate and its standard error (statistical only).
    model_error : the members' spread of Delta F (module docstring, Model error): 0 between
        exact end states, NaN with a single learned model.
    systematic_error : a bound from the end-state energies' own errors (0 for exact energies).
        bar, mbar, zwanzig: the largest change of the estimate when every energy at the
        samples used moves by its own error bar (ScoreEnergy: the PF-ODE's) in the direction
        that moves Delta F most (:func:`_energy_bound`); ti and ais: the largest reported
        error of each state, summed.
    method : the estimator; converged : False when a check failed (a warning was issued),
        the model error is unknown, or total_error exceeds ``atol``;
        ``flags`` names each failed check. Every estimator checks that value and error are
        finite and that each state has at least ``MIN_STATE_SAMPLES`` samples; BAR and MBAR
        that neighbouring states overlap (``overlap`` >= ``MIN_OVERLAP``); AIS and Zwanzig
        that the importance weights keep an effective sample size of at least
        ``MIN_ESS_FRACTION`` of the samples and ``MIN_ESS`` and a Pareto tail below
        ``MAX_PARETO_K``, and AIS that its reverse run agrees; TI, BAR and MBAR with sampled intermediate states
        that chains from either end agree (``mixing_z``); TI that the quadrature is resolved.
    ess : effective sample size of the importance weights (ais, zwanzig), else None.
    overlap : the smallest overlap-matrix element between neighbouring states (pymbar's
        overlap matrix O_ij = sum_n W_ni W_nj N_j; bar and mbar), else None.
    pareto_k : the Pareto tail shape of the importance weights (:func:`pareto_k`; ais,
        zwanzig), flagged above ``MAX_PARETO_K``. reverse_value : Delta F from AIS run the other
        way, from samples of p_1 (when there are any); it must pass the same weight checks and
        agree within 4 combined standard errors (particles that lag behind the path bias both
        runs, in opposite directions, while the weights of one can look well behaved: measured,
        N(-4.8, 1.5^2) to N(2, 0.5^2) forward gave 2.17 +- 0.18 for the exact 1.10 with an ESS
        of 28 of 200 and a tail shape of 0.33, and the reverse run's ESS was below 20).
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
    overlap: float | None = None
    pareto_k: float | None = None
    reverse_value: float | None = None
    flags: tuple[str, ...] = ()
    model_error: float = 0.0

    @property
    def total_error(self) -> float:
        """error + systematic_error + model_error (k_B T): the whole interval's half-width."""
        return self.error + self.systematic_error + self.model_error


def _verdict(method: str, value: float, error: float, n_per_state: int, checks: list[str | None]) -> tuple[str, ...]:
    """The failed checks of an estimate: non-finite value or error, fewer than
    ``MIN_STATE_SAMPLES`` samples per state, and the method's own ``checks`` (a message each,
    None when passed). Warns once, naming every failed check."""
    flags = [c for c in checks if c is not None]
    if not (math.isfinite(value) and math.isfinite(error)):
        flags.append(f"the estimate {value!r} +- {error!r} is not finite")
    if n_per_state < MIN_STATE_SAMPLES:
        flags.append(f"only {n_per_state} samples per state (at least {MIN_STATE_SAMPLES} are needed)")
    if flags:
        warnings.warn(f"free_energy_difference({method!r}) is not converged: " + "; ".join(flags),
                      ConvergenceWarning, stacklevel=4)
    return tuple(flags)


def _mixing_check(mixing: float) -> str | None:
    if mixing > _MIXING_Z:
        return f"chains from p_0 and p_1 disagree by {mixing:.1f} standard errors: not mixed at some lambda"
    return None


def _ess_check(ess: float, n: int) -> str | None:
    least = max(MIN_ESS_FRACTION * n, MIN_ESS)
    if not ess >= least:
        return (f"effective sample size {ess:.1f} of {n} (below {least:g}): the importance weights rest on a "
                "few samples; use more samples, levels or moves")
    return None


def _tail_check(log_w: torch.Tensor) -> str | None:
    k = pareto_k(log_w)
    if k > MAX_PARETO_K:
        return (f"the largest importance weights have a Pareto tail of shape {k:.2f} (above {MAX_PARETO_K}): their "
                "mean has no reliable error")
    return None


def _overlap_check(overlap: float) -> str | None:
    if not overlap >= MIN_OVERLAP:
        return (f"neighbouring states overlap by {overlap:.2g} (below {MIN_OVERLAP}): the estimate cannot be "
                "trusted; add intermediate states (lambdas)")
    return None


def _mbar_solution(u_kn: np.ndarray, n_per_state: int) -> tuple[float, float, float, str | None]:
    """MBAR (pymbar) on the reduced energies ``u_kn`` (K states, ``n_per_state`` samples of
    each, in state order): Delta f between the first and the last state, its standard error,
    the smallest overlap-matrix element between neighbouring states, and None; or, when
    pymbar cannot solve (states that do not overlap), NaN, NaN, 0 and its message."""
    K = u_kn.shape[0]
    pymbar = _pymbar()
    try:
        with _quiet():
            mbar = pymbar.MBAR(u_kn, np.full(K, n_per_state))
            result = mbar.compute_free_energy_differences()
            matrix = mbar.compute_overlap()["matrix"]
    except pymbar.utils.ParameterError as err:
        first_line = (str(err).strip().splitlines() or [""])[0]
        return math.nan, math.nan, 0.0, f"MBAR found no solution ({first_line})"
    overlap = float(min(min(matrix[k, k + 1], matrix[k + 1, k]) for k in range(K - 1)))
    return float(result["Delta_f"][0, -1]), float(result["dDelta_f"][0, -1]), overlap, None


def _legendre_resolution(nodes: np.ndarray, weights: np.ndarray, values: np.ndarray, errors: np.ndarray) -> float:
    """|c_{n-1}| / sd(c_{n-1}) of the Legendre interpolant of the node values (nodes on [-1, 1])."""
    n = nodes.size
    p_top = np.polynomial.legendre.legval(nodes, np.eye(n)[n - 1])
    scale = (2 * n - 1) / 2
    coefficient = scale * float(np.sum(weights * values * p_top))
    noise = scale * math.sqrt(float(np.sum((weights * errors * p_top) ** 2)))
    return abs(coefficient) / noise if noise > 0 else (0.0 if coefficient == 0 else math.inf)


def _ti(path: LinearPath, pools: tuple, sampling: Sampling, n: int, n_nodes: int) -> FreeEnergyResult:
    nodes, weights = np.polynomial.legendre.leggauss(int(n_nodes))
    lambdas = 0.5 * (nodes + 1.0)
    means, errors, mixing, rates = [], [], [], []
    for lam in lambdas:
        ens = ensemble(path, float(lam), n, pools, sampling)
        u0, u1 = path.ends(ens.x)
        w = u1 - u0
        means.append(float(w.mean()))
        errors.append(float(w.std()) / math.sqrt(n))
        mixing.append(mixing_z(w, ens.start))
        rates.append(ens.acceptance)
    means, errors = np.array(means), np.array(errors)
    value = float(np.sum(0.5 * weights * means))
    error = math.sqrt(float(np.sum((0.5 * weights * errors) ** 2)))
    resolution = _legendre_resolution(nodes, weights, means, errors)
    resolved = None if resolution <= _RESOLUTION_Z else (
        f"the highest Legendre coefficient of <dU/dlambda> is {resolution:.1f} standard errors from 0: use more nodes")
    flags = _verdict("ti", value, error, n, [_mixing_check(max(mixing)), resolved])
    return FreeEnergyResult(
        value, error, path.systematic(), "ti", not flags, None, n * len(lambdas), path.n_energy, path.n_grad,
        lambdas, means, errors, acceptance=float(np.mean(rates)), mixing_z=max(mixing), step_size=sampling.step,
        flags=flags,
    )


def _tuned_steps(path: LinearPath, x: torch.Tensor, lambdas: np.ndarray, sampling: Sampling, target: float
                 ) -> np.ndarray:
    """Per-level Langevin steps from a pilot population carried along the levels by MALA (no
    weights): at each intermediate level, _TUNE_ROUNDS rounds of 2 MALA steps, each followed by
    log h += 2 (acceptance - target). The first level starts from ``sampling.step``."""
    step, steps = sampling.step, []
    for lam in lambdas[1:-1]:
        for _ in range(_TUNE_ROUNDS):
            x, rate = mala(path, x, float(lam), step, 2, sampling.generator)
            step *= math.exp(2.0 * (rate - target))
        steps.append(step)
    return np.array(steps)


def _ais_weights(path: LinearPath, x: torch.Tensor, lambdas: np.ndarray, steps: np.ndarray, move: str, n_moves: int,
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
            x, rate = mala(path, x, lam, step, n_moves, generator)
            rates.append(rate)
            continue
        x, log_w = _ula_moves(path, x, log_w, lam, step, n_moves, generator)
    return log_w, (float(np.mean(rates)) if rates else None)


def _ula_moves(path: LinearPath, x: torch.Tensor, log_w: torch.Tensor, lam: float, step: float, n_moves: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n_moves ULA moves at lambda (every proposal taken), each adding its MH log-ratio to log w."""
    u, g = path.energy_and_grad(x, lam)
    for _ in range(n_moves):
        x, u, g, log_ratio = langevin_step(path, x, u, g, lam, step, generator)
        log_w = log_w + log_ratio
    return x, log_w


def pareto_k(log_w: torch.Tensor) -> float:
    """The shape k of a generalised Pareto distribution fitted to the largest importance weights
    (Pareto-smoothed importance sampling's diagnostic, Vehtari, Simpson, Gelman, Yao and Gabry
    2024): the weights' variance is finite only for k < 1/2 and the estimate is unreliable
    above ``MAX_PARETO_K`` = 0.7, whatever the effective sample size says.

    The tail: the M = min(n / 5, 3 sqrt(n)) largest weights, as exceedances over the next one,
    on the scale of the largest weight. The fit: the profile-likelihood empirical-Bayes
    estimator of Zhang and Stephens (2009): for candidate rates b_j (j = 1..m, m = 30 + sqrt(M),
    b_j = 1 / x_M + (1 - sqrt(m / (j - 1/2))) / (3 x_q), x_q the lower quartile), k(b) =
    mean log(1 - b x) and the profile log-likelihood L(b) = M (log(-b / k(b)) - k(b) - 1); b is
    their posterior mean with weights proportional to exp(L), and k = mean log(1 - b x) (a
    heavier tail, a larger k), shrunk toward 1/2 by a weak prior of 10 observations. NaN with
    fewer than 5 tail weights. Checked on generalised Pareto draws: k = 0.2, 0.5, 1.2 come back
    as 0.21, 0.51, 1.26 from 4000 weights."""
    values = (log_w - log_w.max()).detach().cpu().numpy()
    n = values.size
    tail = int(min(math.ceil(0.2 * n), math.ceil(3 * math.sqrt(n))))
    if tail < 5:
        return math.nan
    ordered = np.sort(values)
    cutoff = ordered[-tail - 1]
    x = np.sort(np.exp(ordered[-tail:]) - math.exp(cutoff))
    x = x[x > 0]
    if x.size < 5:
        return math.nan
    m = 30 + int(math.sqrt(x.size))
    j = np.arange(1, m + 1, dtype=float)
    rates = 1.0 / x[-1] + (1.0 - np.sqrt(m / (j - 0.5))) / (3.0 * x[int(x.size / 4 + 0.5) - 1])
    shapes = np.log1p(-rates[:, None] * x).mean(1)
    profile = x.size * (np.log(-rates / shapes) - shapes - 1.0)
    weights = np.exp(profile - profile.max())
    rate = float((rates * weights).sum() / weights.sum())
    shape = float(np.log1p(-rate * x).mean())
    return (x.size * shape + 10 * 0.5) / (x.size + 10)


def _log_mean_exp_stats(log_w: torch.Tensor) -> tuple[float, float, float]:
    """-log mean(w), its delta-method standard error std(w) / (mean(w) sqrt(n)), and the ESS."""
    n = log_w.shape[0]
    w = torch.exp(log_w - log_w.max())
    mean = float(w.mean())
    value = -(float(log_w.max()) + math.log(mean))
    error = float(w.std()) / (mean * math.sqrt(n))
    ess = float(w.sum()) ** 2 / float((w**2).sum())
    return value, error, ess


def _ais(path: LinearPath, pools: tuple, sampling: Sampling, n: int, lambdas: np.ndarray, move: str, n_moves: int,
         tune: bool) -> FreeEnergyResult:
    if pools[0] is None:
        raise SamplesRequiredError("AIS starts from samples of p_0: pass samples_0 or a GaussianMixture U_0")
    if tune:
        pilot = pools[0][torch.randperm(n, generator=sampling.generator)[: min(n, _PILOT_PARTICLES)]]
        steps = _tuned_steps(path, pilot, lambdas, sampling, _ULA_ACCEPTANCE if move == "ula" else TARGET_ACCEPTANCE)
    else:
        steps = np.full(max(lambdas.size - 2, 0), sampling.step)
    log_w, rate = _ais_weights(path, pools[0], lambdas, steps, move, int(n_moves), sampling.generator)
    value, error, ess = _log_mean_exp_stats(log_w)
    checks = [_ess_check(ess, n), _tail_check(log_w)]
    reverse = None
    if pools[1] is not None:
        back, _ = _ais_weights(path, pools[1], lambdas[::-1].copy(), steps[::-1].copy(), move, int(n_moves),
                               sampling.generator)
        reverse, reverse_error, reverse_ess = _log_mean_exp_stats(back)
        reverse = -reverse
        z = abs(value - reverse) / math.hypot(error, reverse_error) if error + reverse_error > 0 else 0.0
        unreliable = [c for c in (_ess_check(reverse_ess, n), _tail_check(back)) if c is not None]
        if unreliable:
            checks.append("the reverse run (from p_1) cannot confirm the forward one: " + "; ".join(unreliable))
        elif not z <= _MIXING_Z:
            checks.append(f"the reverse run (from p_1) gives {reverse:.4g} +- {reverse_error:.2g}, {z:.1f} standard "
                          "errors from the forward one: the particles do not follow the path; use more levels or moves")
    flags = _verdict("ais", value, error, n, checks)
    return FreeEnergyResult(value, error, path.systematic(), f"ais-{move}", not flags, ess, n, path.n_energy,
                            path.n_grad, lambdas, log_weights=log_w, acceptance=rate, step_size=steps,
                            pareto_k=pareto_k(log_w), reverse_value=reverse, flags=flags)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pymbar prints banners and solver progress and logs warnings: all of it is silenced inside
    the block (its failures reach the caller as flags and exceptions instead)."""
    logger = logging.getLogger("pymbar")
    level = logger.level
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            logger.setLevel(level)


def _pymbar() -> Any:
    """pymbar, imported quietly."""
    with _quiet():
        import pymbar
    return pymbar


def _ladder(path: LinearPath, pools: tuple, sampling: Sampling, n: int, lambdas: np.ndarray
            ) -> tuple[list[Ensemble], float, float | None]:
    ensembles = [ensemble(path, float(lam), n, pools, sampling) for lam in lambdas]
    mixing = 0.0
    for ens in ensembles:
        if ens.acceptance is not None:
            u0, u1 = path.ends(ens.x)
            mixing = max(mixing, mixing_z(u1 - u0, ens.start))
    rates = [e.acceptance for e in ensembles if e.acceptance is not None]
    return ensembles, mixing, (float(np.mean(rates)) if rates else None)


Ends = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _energy_bound(estimate: Any, ends: list[Ends], value: float, path: LinearPath) -> float:
    """The systematic error of an estimate from fixed energies: the largest change of
    ``estimate`` (a function of the (U_0, U_1) pairs of every ensemble) when each energy moves
    by its own error bar in the direction that moves Delta F most. Delta F = F_1 - F_0 falls as
    any U_0 value rises and rises with any U_1 value (BAR: each forward work W_i enters
    Bennett's equation through a term that falls as W_i rises, each reverse work through one
    that rises; the exponential average and MBAR likewise), so (U_0 + e_0, U_1 - e_1) and
    (U_0 - e_0, U_1 + e_1) give its extremes at these samples. Where an extreme is not finite,
    the largest error of each state, summed (``path.systematic``)."""
    if not any(bool((e0 > 0).any() or (e1 > 0).any()) for _, (e0, e1) in ends):
        return 0.0
    sides = [estimate([(u0 + sign * e0, u1 - sign * e1) for (u0, u1), (e0, e1) in ends]) for sign in (1.0, -1.0)]
    if not all(math.isfinite(v) for v in sides):
        return path.systematic()
    return max(abs(v - value) for v in sides)


def _bar_rungs(pairs: list[tuple[torch.Tensor, torch.Tensor]], lambdas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bennett's Delta f (pymbar) between each pair of neighbouring states and its standard
    error, from each ensemble's (U_0, U_1) at its own samples."""
    bar = _pymbar().other_estimators.bar
    values, errors = [], []
    for k in range(1, lambdas.size):
        dl = float(lambdas[k] - lambdas[k - 1])
        (a0, a1), (b0, b1) = pairs[k - 1], pairs[k]
        with _quiet():
            result = bar((dl * (a1 - a0)).cpu().numpy(), (-dl * (b1 - b0)).cpu().numpy())
        values.append(float(result["Delta_f"]))
        errors.append(float(result["dDelta_f"]))
    return np.array(values), np.array(errors)


def _mbar_reduced(u0: torch.Tensor, u1: torch.Tensor, lambdas: np.ndarray) -> np.ndarray:
    """The reduced energies u_kn = (1 - lambda_k) U_0 + lambda_k U_1 of every state at every sample."""
    lam = torch.as_tensor(lambdas, dtype=u0.dtype, device=u0.device)[:, None]
    return ((1 - lam) * u0 + lam * u1).cpu().numpy()


def _bar(path: LinearPath, pools: tuple, sampling: Sampling, n: int, lambdas: np.ndarray) -> FreeEnergyResult:
    ensembles, mixing, rate = _ladder(path, pools, sampling, n, lambdas)
    ends = [path.ends_with_errors(e.x) for e in ensembles]
    pairs = [energies for energies, _ in ends]
    values, errors = _bar_rungs(pairs, lambdas)
    overlaps = [_mbar_solution(_mbar_reduced(*(torch.cat([pairs[k - 1][i], pairs[k][i]]) for i in (0, 1)),
                                             lambdas[k - 1:k + 1]), n)[2] for k in range(1, lambdas.size)]
    value, error, overlap = float(values.sum()), math.sqrt(float(np.sum(np.square(errors)))), min(overlaps)
    systematic = _energy_bound(lambda moved: float(_bar_rungs(moved, lambdas)[0].sum()), ends, value, path)
    flags = _verdict("bar", value, error, n, [_mixing_check(mixing), _overlap_check(overlap)])
    return FreeEnergyResult(value, error, systematic, "bar", not flags, None, n * lambdas.size,
                            path.n_energy, path.n_grad, lambdas, values, errors,
                            acceptance=rate, mixing_z=mixing, step_size=sampling.step, overlap=overlap, flags=flags)


def _mbar(path: LinearPath, pools: tuple, sampling: Sampling, n: int, lambdas: np.ndarray) -> FreeEnergyResult:
    ensembles, mixing, rate = _ladder(path, pools, sampling, n, lambdas)
    ends = [path.ends_with_errors(torch.cat([e.x for e in ensembles]))]
    (u0, u1), _ = ends[0]
    value, error, overlap, failure = _mbar_solution(_mbar_reduced(u0, u1, lambdas), n)

    def estimate(moved: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        return _mbar_solution(_mbar_reduced(*moved[0], lambdas), n)[0]

    systematic = _energy_bound(estimate, ends, value, path) if failure is None else path.systematic()
    flags = _verdict("mbar", value, error, n, [failure, _mixing_check(mixing), _overlap_check(overlap)])
    return FreeEnergyResult(value, error, systematic, "mbar", not flags, None, n * lambdas.size,
                            path.n_energy, path.n_grad, lambdas, acceptance=rate, mixing_z=mixing,
                            step_size=sampling.step, overlap=overlap, flags=flags)


def _exp_average(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """-log <e^{-W}>_0 (pymbar) and its standard error, W = U_1 - U_0 at samples of p_0."""
    u0, u1 = pairs[0]
    with _quiet():
        result = _pymbar().other_estimators.exp((u1 - u0).cpu().numpy())
    return float(result["Delta_f"]), float(result["dDelta_f"])


def _zwanzig(path: LinearPath, pools: tuple, sampling: Sampling, n: int) -> FreeEnergyResult:
    zero = ensemble(path, 0.0, n, pools, sampling)
    ends = [path.ends_with_errors(zero.x)]
    (u0, u1), _ = ends[0]
    log_w = -(u1 - u0)
    value, error = _exp_average([(u0, u1)])
    _, _, ess = _log_mean_exp_stats(log_w)
    systematic = _energy_bound(lambda moved: _exp_average(moved)[0], ends, value, path)
    flags = _verdict("zwanzig", value, error, n, [_ess_check(ess, n), _tail_check(log_w)])
    return FreeEnergyResult(value, error, systematic, "zwanzig", not flags, ess, n, path.n_energy,
                            path.n_grad, np.array([0.0, 1.0]), log_weights=log_w, acceptance=zero.acceptance,
                            step_size=sampling.step, pareto_k=pareto_k(log_w), flags=flags)


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
    atol: float | None = None,
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
    atol : the accuracy asked of the whole interval (k_B T; None: none): total_error above it
        is flagged and warned. Ensembles as end states: module docstring, Model error.
    """
    options = {"method": method, "n_samples": n_samples, "samples_0": samples_0, "samples_1": samples_1,
               "lambdas": lambdas, "n_nodes": n_nodes, "move": move, "n_moves": n_moves, "n_mcmc": n_mcmc,
               "step_size": step_size}
    kinds = (source_kind(U_0), source_kind(U_1))
    if "ensemble" not in kinds:
        result, model_error, flags = _estimate(U_0, U_1, generator=generator, **options), 0.0, []
        if "single" in kinds:
            model_error, flags = math.nan, [warn_model_unknown("free_energy_difference")]
        warned = len(flags)
    else:
        warned = 0
        seed = 0 if generator is None else draw_seed(generator)
        ends = [_members(U) if kind == "ensemble" else None for U, kind in zip((U_0, U_1), kinds)]
        sizes = {len(e) for e in ends if e is not None}
        if len(sizes) > 1:
            raise ValueError(f"both end states are ensembles, of different sizes {sorted(sizes)}: their members pair by index")
        result = _estimate(*(_without_members(U) if kind == "ensemble" else U for U, kind in zip((U_0, U_1), kinds)),
                           generator=torch.Generator().manual_seed(seed), **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = [_estimate(*(U if e is None else e[k] for U, e in zip((U_0, U_1), ends)),
                              generator=torch.Generator().manual_seed(seed), **options) for k in range(sizes.pop())]
        model_error, flags = float(member_spread([r.value for r in runs])), []
        failed = [k for k, r in enumerate(runs) if not r.converged]
        if failed:
            flags.append(f"{MODEL_SPREAD}: the estimates of members {failed} are not converged, so their spread is not "
                         "a trusted model error")
    total = result.error + result.systematic_error + model_error
    if atol is not None and not total <= float(atol):
        flags.append(f"the total error {total:.3g} (statistical {result.error:.3g}, systematic "
                     f"{result.systematic_error:.3g}, model {model_error:.3g}) exceeds atol = {float(atol):g}")
    for flag in flags[warned:]:
        warnings.warn(f"free_energy_difference({method!r}) is not converged: {flag}", ConvergenceWarning, stacklevel=2)
    return replace(result, model_error=model_error, flags=result.flags + tuple(flags),
                   converged=result.converged and not flags)


def _members(U: Any) -> list[Any]:
    """The members of an ensemble end state, as end states (a ScoreEnergy's with its settings)."""
    if isinstance(U, ScoreEnergy):
        return [ScoreEnergy(m, U.schedule, **U.energy_kwargs) for m in U.score.members]
    return list(U.members)


def _without_members(U: Any) -> Any:
    """An ensemble end state whose energies skip their own members' readouts (a score's
    ScoreEnergy with ``model_error=False``); other ensembles as they are."""
    if isinstance(U, ScoreEnergy):
        return ScoreEnergy(U.score, U.schedule, **{**U.energy_kwargs, "model_error": False})
    if isinstance(U, Score):
        return ScoreEnergy(U, model_error=False)
    return U


def _estimate(U_0: Any, U_1: Any, method: str, n_samples: int, samples_0: Any, samples_1: Any, lambdas: Any,
              n_nodes: int, move: str, n_moves: int, n_mcmc: int, step_size: float | None,
              generator: torch.Generator | None) -> FreeEnergyResult:
    """One estimate of Delta F by ``method`` (:func:`free_energy_difference`, without the model error)."""
    path, pools, sampling = setup_path(U_0, U_1, samples_0, samples_1, int(n_samples), n_mcmc, step_size, generator)
    n = int(n_samples)
    if isinstance(lambdas, LambdaSchedule):
        lambdas = lambdas.lambdas
    if method == "ti":
        return _ti(path, pools, sampling, n, n_nodes)
    if method == "ais":
        return _ais(path, pools, sampling, n, checked_lambdas(16 if lambdas is None else lambdas), move, n_moves,
                    tune=step_size is None)
    if method == "bar":
        return _bar(path, pools, sampling, n, checked_lambdas(1 if lambdas is None else lambdas))
    if method == "mbar":
        return _mbar(path, pools, sampling, n, checked_lambdas(4 if lambdas is None else lambdas))
    if method == "zwanzig":
        return _zwanzig(path, pools, sampling, n)
    raise ValueError(f"method must be 'ti', 'ais', 'bar', 'mbar' or 'zwanzig'; got {method!r}")
