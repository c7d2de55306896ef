"""The spectral gap and the adiabatic speed along the diffusion time: the profile of a schedule.

Two functions of t summarise how hard sampling is at each noise level (THEORY section 3):

- the gap lambda_1(t) - lambda_0(t) of the Score Hamiltonian H_t (units 1 / x^2: the
  relaxation rate per unit Langevin time), from :func:`scorehamiltonian.spectral.gap.spectral_gap`;
- the adiabatic speed A(t) = || d/dt sqrt(p_t) ||_{L2} (units 1 / t, t the process's time),
  from :func:`adiabatic_speed`: how fast the ground state sqrt(p_t) moves.

:func:`gap_profile` evaluates both over many times: given explicitly, or chosen adaptively
by a Gaussian process on log t (the next time is where the GP of log gap or log A is least
certain), with a progress bar, an atomic checkpoint after every time (an interrupted sweep
resumes and gives the identical result) and per-time failures recorded rather than raised.
The result is a :class:`GapProfile` (save / load as JSON, plot).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..common.errors import CheckpointError, OutputError, SamplesRequiredError, TimeRangeError
from ..common.executors import TaskFailure, executor_from, map_tasks
from ..common.files import read_json, write_json
from ..common.seeds import seeded_rng, time_seed
from ..common.validation import checked_times
from ..score.derivatives import DivergenceMethod
from ..score.interface import ExactScore, Score, as_score
from .gap import spectral_gap
from .ritz import ritz_gap
from .solution import ConvergenceWarning
from .speed import adiabatic_speed

__all__ = ["GapProfile", "gap_profile"]

#: Format tags of the files written here.
PROFILE_FORMAT = "scorehamiltonian.gap_profile/1"
CHECKPOINT_FORMAT = "scorehamiltonian.gap_profile.checkpoint/2"
#: Observation-noise variance (log units) given to a point whose error is not finite.
_GP_UNKNOWN_NOISE = 1.0
SampleSource = Callable[[float, torch.Generator], torch.Tensor]
_ARRAY_FIELDS = (
    "times", "lambda0", "lambda1", "eigenvalues", "gap", "gap_error", "gap_model_error", "converged", "speed",
    "speed_stderr", "speed_mean", "speed_mean_stderr", "proposal_gap_std", "proposal_speed_std",
    "solve_order", "band_times", "band_log_gap_mean", "band_log_gap_std", "band_log_speed_mean",
    "band_log_speed_std",
)


@dataclass(frozen=True, eq=False)
class GapProfile:
    """The spectral gap and the adiabatic speed over diffusion times t (process time units).

    Per solved time (arrays of length n, sorted by t; NaN where that part failed):

    times : t; solve_order : the order in which the times were solved (0 first).
    lambda0, lambda1 : the two lowest eigenvalues of H_t on the finest grid of
        :func:`spectral_gap` (unextrapolated; 1 / x^2). eigenvalues : (n, k), the k lowest.
    gap, gap_error, converged : the Richardson-extrapolated gap lambda_1 - lambda_0 and its
        estimated error (for a true score lambda_0 = 0, so this is lambda_1 to full relative
        accuracy), and whether it met rtol (model error included).
    gap_model_error : the model's share of the gap's error (:func:`spectral_gap`,
        :func:`ritz_gap`): 0 for an analytic score, an ensemble's spread, NaN for a single
        learned model (which is then never converged). Error bars and the GP band's noise
        use gap_error + gap_model_error (NaN counted as 0 there: the band is the model's curve).
    speed, speed_stderr : A(t) = || d/dt sqrt(p_t) || (1 / t) and its standard error.
    speed_mean, speed_mean_stderr : the sample mean of d/dt log p_t (exactly 0) and its
        standard error: the check of :class:`AdiabaticSpeed`.
    proposal_gap_std, proposal_speed_std : for adaptively chosen times, the GP's predictive
        standard deviation of log gap and log A at t when t was chosen; NaN otherwise.

    failures : (t, message) for every part (gap or speed) that raised at t.
    band_times (m,), band_log_gap_mean / _std, band_log_speed_mean / _std : the GP fits of
        log gap and log A (natural logs) on a dense log-spaced grid: the band is
        exp(mean +- 2 std). NaN where fewer than 2 times succeeded.
    settings : the inputs of the sweep (also the content of the checkpoint's hash).
    """

    times: np.ndarray
    lambda0: np.ndarray
    lambda1: np.ndarray
    eigenvalues: np.ndarray
    gap: np.ndarray
    gap_error: np.ndarray
    gap_model_error: np.ndarray
    converged: np.ndarray
    speed: np.ndarray
    speed_stderr: np.ndarray
    speed_mean: np.ndarray
    speed_mean_stderr: np.ndarray
    proposal_gap_std: np.ndarray
    proposal_speed_std: np.ndarray
    solve_order: np.ndarray
    band_times: np.ndarray
    band_log_gap_mean: np.ndarray
    band_log_gap_std: np.ndarray
    band_log_speed_mean: np.ndarray
    band_log_speed_std: np.ndarray
    failures: tuple[tuple[float, str], ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def resolved(self) -> np.ndarray:
        """Per time, whether the gap is resolved (:func:`gap_resolved`)."""
        return gap_resolved(self.gap, self.gap_error, self.gap_model_error)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the profile as JSON (floats exact, NaN and Infinity as JSON extensions), atomically."""
        data = {name: getattr(self, name).tolist() for name in _ARRAY_FIELDS}
        data.update(format=PROFILE_FORMAT, failures=[list(f) for f in self.failures], settings=self.settings)
        write_json(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GapProfile:
        """Read a profile written by :meth:`save`; :class:`CheckpointError` if it is not one."""
        data = read_json(path)
        if data.get("format") != PROFILE_FORMAT:
            raise CheckpointError(f"{os.fspath(path)!r} is not a {PROFILE_FORMAT!r} file "
                                  f"(format {data.get('format')!r})")
        arrays = {name: np.asarray(data[name], dtype=_dtype(name)) for name in _ARRAY_FIELDS}
        arrays["eigenvalues"] = arrays["eigenvalues"].reshape(len(arrays["times"]), -1)
        failures = tuple((float(t), str(msg)) for t, msg in data["failures"])
        return cls(**arrays, failures=failures, settings=data["settings"])

    def plot(self, ax: Any = None) -> Any:
        """Plot the gap (error bars, GP band exp(mean +- 2 std)) and A(t) against t, log axes.

        Without ``ax``: a new figure (no pyplot state, Agg-safe) with the gap above and A(t)
        below. With ``ax``: the gap on ``ax`` and A(t) on ``ax.twinx()``. Failed times are
        marked by dotted vertical lines. Returns the figure.
        """
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(7.0, 6.0), layout="constrained")
            ax_gap, ax_speed = fig.subplots(2, 1, sharex=True)
        else:
            fig, ax_gap = ax.figure, ax
            ax_speed = ax.twinx()
        panels = (
            (ax_gap, self.gap, self.gap_error + np.nan_to_num(self.gap_model_error), self.band_log_gap_mean, self.band_log_gap_std,
             "C0", "gap $\\lambda_1-\\lambda_0$ ($1/x^2$)"),
            (ax_speed, self.speed, self.speed_stderr, self.band_log_speed_mean, self.band_log_speed_std,
             "C1", "adiabatic speed $A(t)$ ($1/t$)"),
        )
        for axis, value, error, mean, std, color, label in panels:
            yerr = np.where(np.isfinite(error), error, 0.0)
            axis.errorbar(self.times, value, yerr=yerr, fmt="o", ms=3, color=color, label=label)
            if np.isfinite(mean).any():
                axis.plot(self.band_times, np.exp(mean), color=color, lw=1)
                axis.fill_between(self.band_times, np.exp(mean - 2 * std), np.exp(mean + 2 * std),
                                  color=color, alpha=0.2, lw=0)
            axis.set_xscale("log")
            axis.set_yscale("log")
            if self.band_times[-1] > self.band_times[0]:
                axis.set_xlim(self.band_times[0], self.band_times[-1])
            axis.set_ylabel(label, color=color)
            for t, _ in self.failures:
                axis.axvline(t, color="red", ls=":", lw=1)
        (ax_speed if ax is None else ax_gap).set_xlabel("diffusion time $t$")
        return fig


def _dtype(name: str) -> Any:
    return {"converged": bool, "solve_order": np.int64}.get(name, np.float64)


def _score_description(score: Score) -> dict[str, Any]:
    """What identifies a score in a checkpoint: type, repr, process, mixture or weights hash."""
    desc: dict[str, Any] = {
        "type": f"{type(score).__module__}.{type(score).__qualname__}",
        "repr": repr(score),
        "process": score.process.config(),
        "options": {a: getattr(score, a) for a in ("kind", "time_input", "dim") if hasattr(score, a)},
    }
    if isinstance(score, ExactScore):
        desc["mixture"] = score.mixture.config()
    model = getattr(score, "model", None)
    if isinstance(model, torch.nn.Module):
        digest = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        desc["parameters_sha256"] = digest.hexdigest()
    return desc


def _callable_name(function: Callable[..., Any]) -> str:
    """module.qualname of a function (of its type for other callables, e.g. a partial)."""
    owner = function if hasattr(function, "__qualname__") else type(function)
    return f"{owner.__module__}.{owner.__qualname__}"


def _checked_range(score: Score, t_range: tuple[float, float] | None) -> tuple[float, float]:
    process = score.process
    if t_range is None:
        lo = process.t_min if process.t_min > 0 else 1e-3 * process.t_max
        return float(lo), float(process.t_max)
    lo, hi = (float(v) for v in t_range)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise TimeRangeError(f"t_range must satisfy 0 < lo < hi < inf; got {t_range!r}")
    process.time(torch.tensor([lo, hi], dtype=torch.float64))
    return lo, hi


def _empty_record(t: float, k: int) -> dict[str, Any]:
    """The record of time t before (or without) any result: NaN figures, no failures."""
    return {
        "t": t, "lambda0": math.nan, "lambda1": math.nan, "eigenvalues": [math.nan] * k,
        "gap": math.nan, "gap_error": math.nan, "gap_model_error": math.nan, "converged": False, "speed": math.nan,
        "speed_stderr": math.nan, "speed_mean": math.nan, "speed_mean_stderr": math.nan, "failures": [],
    }


def _solve(score: Score, settings: dict[str, Any], samples: SampleSource | None,
           gap_options: dict[str, Any], t: float) -> dict[str, Any]:
    """Gap and speed at t with the seed time_seed(seed, t); failures recorded, not raised."""
    k, seed = settings["k"], settings["seed"]
    record = _empty_record(t, k)
    generator = torch.Generator().manual_seed(time_seed(seed, t))
    if settings["route"] == "ritz":
        try:
            x = None if samples is None else samples(t, generator)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ritz = ritz_gap(score, t, samples=x, n_samples=settings["n_samples"], n_eigenvalues=k - 1,
                                generator=generator, **gap_options)
            eigenvalues = [0.0] + ritz.ritz_values.tolist()[: k - 1]
            eigenvalues += [math.nan] * (k - len(eigenvalues))
            record.update(lambda0=0.0, lambda1=ritz.value, eigenvalues=eigenvalues, gap=ritz.value,
                          gap_error=ritz.error, gap_model_error=ritz.model_error, converged=ritz.reliable)
        except Exception as err:  # noqa: BLE001 - a per-time failure is recorded, the sweep goes on
            record["failures"].append(f"ritz_gap: {type(err).__name__}: {err}")
    else:
        with seeded_rng(time_seed(seed, t)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    x = None if samples is None or "box" in gap_options else samples(t, generator)
                    gap = spectral_gap(score, t, rtol=settings["rtol"], k=k, samples=x, **gap_options)
                eigenvalues = gap.eigenvalues.to(torch.float64).cpu().tolist()[:k]
                eigenvalues += [math.nan] * (k - len(eigenvalues))
                record.update(lambda0=eigenvalues[0], lambda1=eigenvalues[1], eigenvalues=eigenvalues,
                              gap=float(gap.value), gap_error=float(gap.error),
                              gap_model_error=float(gap.model_error), converged=bool(gap.converged))
            except Exception as err:  # noqa: BLE001 - as above
                record["failures"].append(f"spectral_gap: {type(err).__name__}: {err}")
    generator = torch.Generator().manual_seed(time_seed(seed, t))
    try:
        x = None if samples is None else samples(t, generator)
        speed = adiabatic_speed(score, t, samples=x, n_samples=settings["n_samples"], generator=generator,
                                divergence=settings["divergence"])
        record.update(speed=speed.value, speed_stderr=speed.stderr, speed_mean=speed.mean,
                      speed_mean_stderr=speed.mean_stderr)
    except Exception as err:  # noqa: BLE001 - as above
        record["failures"].append(f"adiabatic_speed: {type(err).__name__}: {err}")
    return record


def _log_targets(records: list[dict[str, Any]], value: str, errors: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """(t, log value, noise variance of log value) over the records with a positive value; the
    error is the sum of the ``errors`` columns after the first, NaN counted as 0 (a model error
    nobody can know), added to the first."""
    t = np.array([r["t"] for r in records], dtype=np.float64)
    v = np.array([r[value] for r in records], dtype=np.float64)
    e = np.array([r[errors[0]] + sum(np.nan_to_num(r[k]) for k in errors[1:]) for r in records], dtype=np.float64)
    keep = np.isfinite(v) & (v > 0)
    rel2 = (e[keep] / v[keep]) ** 2
    return t[keep], np.log(v[keep]), np.where(np.isfinite(rel2), rel2, _GP_UNKNOWN_NOISE)


def _bands(records: list[dict[str, Any]], band_times: np.ndarray, kernel: str) -> dict[str, np.ndarray]:
    """GP mean and std of log gap and log A on band_times (inputs: log t scaled to [0, 1])."""
    from . import gp  # gpytorch loads on the first adaptive sweep, not with the package

    lo, hi = math.log(band_times[0]), math.log(band_times[-1])
    width = hi - lo if hi > lo else 1.0

    def scaled(t: np.ndarray) -> np.ndarray:
        return (np.log(t) - lo) / width

    out = {}
    for name, value, errors in (("gap", "gap", ("gap_error", "gap_model_error")), ("speed", "speed", ("speed_stderr",))):
        t, y, noise = _log_targets(records, value, errors)
        mean, std = gp.fit_gp(scaled(t), y, noise, scaled(band_times), kernel)
        out[f"band_log_{name}_mean"], out[f"band_log_{name}_std"] = mean, std
    return out


def gap_resolved(gap: Any, error: Any, model_error: Any) -> np.ndarray:
    """Whether each gap lies beyond its error from 0: gap > error + model_error (an unknown,
    NaN, model error counted as 0; a NaN gap is not resolved)."""
    gap, error, model_error = (np.asarray(v, dtype=np.float64) for v in (gap, error, model_error))
    return gap > error + np.nan_to_num(model_error)


def _propose(records: list[dict[str, Any]], band_times: np.ndarray, settings: dict[str, Any]
             ) -> tuple[float, float, float] | None:
    """The next time (with the GP stds of log gap and log A there), or None when done.

    Candidates are the band grid's nodes more than half a grid step (in log t) from every
    time tried so far. The acquisition is max(std log gap, std log A) / band_tol (infinite
    where a GP has too few points); the sweep stops when it is below 1 on every candidate.
    Ties (also the all-infinite start) go to the candidate farthest from the tried times.
    Where the nearest tried time has no resolved gap (a value within its error of 0, or
    none), only A's std counts: another solve there would not resolve the gap either.
    """
    log_band = np.log(band_times)
    tried = np.log(np.array([r["t"] for r in records], dtype=np.float64))
    separation = np.abs(log_band[:, None] - tried[None, :])
    distance = separation.min(axis=1)
    resolved = gap_resolved(*([r[k] for r in records] for k in ("gap", "gap_error", "gap_model_error")))
    free = distance > 0.5 * (log_band[-1] - log_band[0]) / (len(band_times) - 1)
    if not free.any():
        return None
    bands = _bands(records, band_times, settings["kernel"])
    gap_std, speed_std = bands["band_log_gap_std"], bands["band_log_speed_std"]
    gap_std = np.where(resolved[separation.argmin(axis=1)], gap_std, 0.0)
    acquisition = np.fmax(gap_std, speed_std) / settings["band_tol"]
    acquisition = np.where(np.isnan(acquisition), np.inf, acquisition)
    best = acquisition[free].max()
    if best < 1.0:
        return None
    candidates = np.flatnonzero(free & (acquisition == best))
    i = int(candidates[np.argmax(distance[candidates])])
    return float(band_times[i]), float(gap_std[i]), float(speed_std[i])


def _profile(records: list[dict[str, Any]], band_times: np.ndarray, settings: dict[str, Any]) -> GapProfile:
    order = np.argsort([r["t"] for r in records], kind="stable")
    rec = [records[i] for i in order]

    def column(key: str, dtype: Any = np.float64) -> np.ndarray:
        return np.array([r[key] for r in rec], dtype=dtype)

    return GapProfile(
        times=column("t"), lambda0=column("lambda0"), lambda1=column("lambda1"),
        eigenvalues=np.array([r["eigenvalues"] for r in rec], dtype=np.float64).reshape(len(rec), settings["k"]),
        gap=column("gap"), gap_error=column("gap_error"), gap_model_error=column("gap_model_error"),
        converged=column("converged", bool),
        speed=column("speed"), speed_stderr=column("speed_stderr"), speed_mean=column("speed_mean"),
        speed_mean_stderr=column("speed_mean_stderr"), proposal_gap_std=column("proposal_gap_std"),
        proposal_speed_std=column("proposal_speed_std"), solve_order=order.astype(np.int64),
        band_times=band_times, **_bands(records, band_times, settings["kernel"]),
        failures=tuple((r["t"], msg) for r in records for msg in r["failures"]),
        settings=settings,
    )


def _resume(checkpoint: str | os.PathLike[str], settings: dict[str, Any], fingerprint: str) -> list[dict[str, Any]]:
    """The records of an existing checkpoint written with the same settings, else []."""
    if not os.path.exists(checkpoint):
        return []
    data = read_json(checkpoint)
    if data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{os.fspath(checkpoint)!r} is not a {CHECKPOINT_FORMAT!r} checkpoint "
                              f"(format {data.get('format')!r})")
    if data.get("fingerprint") != fingerprint:
        ours = json.loads(json.dumps(settings))
        theirs = data.get("settings", {})
        differ = sorted(key for key in (set(ours) | set(theirs)) - {"fingerprint"} if ours.get(key) != theirs.get(key))
        raise CheckpointError(
            f"the checkpoint {os.fspath(checkpoint)!r} was written by a sweep with different settings "
            f"(differing: {', '.join(differ) or 'the hash'}); refusing to mix them: rerun with the same "
            "settings to resume, or pass another checkpoint path"
        )
    return list(data["records"])


def gap_profile(
    score: Any,
    times: Sequence[float] | np.ndarray | None = None,
    t_range: tuple[float, float] | None = None,
    n_initial: int = 6,
    max_solves: int = 24,
    adaptive: bool = True,
    rtol: float = 1e-4,
    k: int = 3,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool = True,
    band_tol: float = 0.05,
    kernel: Literal["matern52", "rbf"] = "matern52",
    n_band: int = 200,
    n_samples: int = 20000,
    divergence: DivergenceMethod = "auto",
    samples: SampleSource | None = None,
    seed: int = 0,
    gap_options: Mapping[str, Any] | None = None,
    executor: Any = None,
    n_workers: int = 2,
    route: Literal["auto", "grid", "ritz"] = "auto",
) -> GapProfile:
    """The gap lambda_1 - lambda_0 of H_t and the adiabatic speed A(t) over many times t.

    At each t: :func:`spectral_gap` (``rtol``, ``k`` and ``gap_options``, e.g. order, form,
    method, mass_tol, max_unknowns, box, raise_on_failure; ``samples`` at t, when given,
    start its box) gives the gap with its error and the k lowest eigenvalues;
    :func:`adiabatic_speed` (``n_samples`` draws, ``divergence``)
    gives A(t) with its standard error. Units: gap 1 / x^2, A 1 / t, t the process's time.

    Route. ``route="grid"`` is the above (d <= 3); ``"ritz"`` takes the gap from
    :func:`~.ritz.ritz_gap` on ``n_samples`` samples of p_t instead (any d; ``gap_options``
    then go to ritz_gap): the held-out Rayleigh quotient of the model's slowest Ritz function
    with its error (standard error, basis error and fit bias: ``RitzResult.error``), lambda_0 =
    0 and the held-out Ritz values as the eigenvalues, ``converged`` when no reliability flag
    is raised (a Ritz value is an estimate with an error, not a bound refined to ``rtol``).
    ``"auto"``: the grid for scores of dimension at most 3 (or unknown), Ritz above.

    Times. ``times`` (positive, distinct, in the process's range) are solved in the given
    order; the band grid then spans [min, max] of them and includes them. Otherwise the
    sweep covers ``t_range`` (default [t_min, t_max] of score.process, with t_min replaced
    by 1e-3 t_max when it is 0) and the band grid is ``n_band`` log-spaced times over it:
    first ``n_initial`` log-spaced band times are solved, then, when ``adaptive``, one
    unsolved band time after another (more than half a grid step in log t from every
    solved one) where the larger of the GPs' predictive stds of log gap and log A (natural
    logs), divided by ``band_tol``, is largest (next to a time whose gap lies within its
    error of 0, A's alone), until ``max_solves`` times are solved or that ratio is below 1
    everywhere. Each GP (``kernel``: Matern-5/2 or RBF on log t
    scaled to [0, 1]; constant mean; fixed observation noise (error / value)^2, the squared
    relative error, or 1 where the error is not finite) is refitted from scratch after
    every time; the final fits give the result's band.

    Reproducibility. At time t spectral_gap runs inside :func:`seeded_rng` (time_seed(seed, t))
    (the global torch and numpy RNGs, restored afterwards) and the sampling generator is
    seeded with :func:`time_seed` (seed, t). With ``checkpoint`` (a JSON path), the records
    are written atomically (temporary file + os.replace) after every time with a hash of the
    settings (score description: type, repr, process config, mixture or a hash of the
    module's weights; times or t_range; rtol, k, seed, and every other option above except
    ``progress``); an existing checkpoint with the same hash is resumed, one with another
    raises :class:`CheckpointError`. The checkpoint is written once before any work, so an
    unwritable folder raises :class:`OutputError` at once; a write that fails later (a full
    disk) raises OutputError too, with the times solved so far as its ``.profile`` and the
    file left at its last good state. A resumed sweep reproduces the uninterrupted one
    exactly (same machine, library versions and torch thread count) because every step is a
    deterministic function of the records. Not covered: ARPACK's own random start
    (gap_options method "eigsh"/"eigsh-sa"), and the state of a ``samples`` callable beyond
    the generator it is given.

    Parallel sweeps. ``executor`` runs the planned times (``times``, or the ``n_initial``
    first ones of an adaptive sweep) in parallel: None (serial), "dask" (a LocalCluster of
    ``n_workers`` single-threaded processes), a dask ``Client`` (e.g. of a real cluster) or
    any ``concurrent.futures.Executor`` (see :mod:`scorehamiltonian.common.executors`). Records are
    kept and checkpointed in the planned order, so the result is the serial one (bit for bit
    when the serial run also uses one torch thread); the adaptive times that follow depend on
    all earlier ones and run here, one after another.

    Failures. An exception in spectral_gap or adiabatic_speed at t is recorded in
    ``failures`` as (t, "stage: Type: message") and that part is NaN; the sweep goes on
    (a task lost with its worker is recorded as "task: Type: message").
    Non-converged gaps are flagged in ``converged``; one warning summarises both at the end.

    score : a :class:`Score` or callable. samples : for scores that cannot sample p_t
        themselves (:meth:`Score.sample`), a callable (t, generator) -> (n, d) samples of p_t
        (e.g. data noised to t); identified in the hash by its qualified name only.
    progress : a tqdm progress bar (off with False).
    """
    score = as_score(score)
    if samples is None and not score.can_sample:
        raise SamplesRequiredError(
            f"gap_profile needs samples of p_t for the adiabatic speed of {score!r}: attach samples of "
            "the data with as_score(score, data=x0), or pass samples=callable(t, generator) -> (n, d) tensor"
        )
    gap_options = dict(gap_options or {})
    clash = {"score", "t", "rtol", "k", "samples"} & set(gap_options)
    if clash:
        raise ValueError(f"gap_options must not set {sorted(clash)}: they are arguments of gap_profile")
    if int(k) < 2:
        raise ValueError(f"k must be at least 2 (lambda_0 and lambda_1); got {k}")
    if not (band_tol > 0 and int(n_band) >= 2 and int(n_initial) >= 2):
        raise ValueError(f"need band_tol > 0, n_band >= 2 and n_initial >= 2; got {band_tol}, {n_band}, "
                         f"{n_initial}")
    if adaptive and times is None and int(max_solves) < int(n_initial):
        raise ValueError(f"max_solves ({max_solves}) must be at least n_initial ({n_initial})")
    if kernel not in ("matern52", "rbf"):
        raise ValueError(f"kernel must be 'matern52' or 'rbf'; got {kernel!r}")
    if route not in ("auto", "grid", "ritz"):
        raise ValueError(f"route must be 'auto', 'grid' or 'ritz'; got {route!r}")
    if route == "auto":
        route = "ritz" if score.dim is not None and score.dim > 3 else "grid"
    explicit = checked_times(score.process, times, "the profile is analysed in log t") if times is not None else None
    if explicit is not None and t_range is not None:
        raise ValueError("pass either times or t_range, not both")
    lo, hi = (min(explicit), max(explicit)) if explicit is not None else _checked_range(score, t_range)
    settings = {
        "score": _score_description(score),
        "samples": None if samples is None else _callable_name(samples),
        "times": explicit, "t_range": None if explicit is not None else [lo, hi],
        "n_initial": None if explicit is not None else int(n_initial),
        "max_solves": None if explicit is not None or not adaptive else int(max_solves),
        "adaptive": explicit is None and bool(adaptive), "rtol": float(rtol), "k": int(k),
        "band_tol": float(band_tol), "kernel": kernel, "n_band": int(n_band), "n_samples": int(n_samples),
        "divergence": divergence, "seed": int(seed), "gap_options": gap_options, "route": route,
    }
    try:
        text = json.dumps(settings, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"gap_options must hold JSON values (they enter the checkpoint hash): {err}") from None
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    settings = {**json.loads(text), "fingerprint": fingerprint}  # as a checkpoint holds them
    band_times = np.geomspace(lo, hi, int(n_band))
    if explicit is not None:
        planned, band_times = explicit, np.union1d(band_times, explicit)
    else:
        nodes = np.round(np.linspace(0, int(n_band) - 1, int(n_initial))).astype(int)
        planned = [float(band_times[i]) for i in np.unique(nodes)]
    total = int(max_solves) if settings["adaptive"] else len(planned)
    records = _resume(checkpoint, settings, fingerprint) if checkpoint is not None else []
    solve = functools.partial(_solve, score, settings, samples, gap_options)

    def save() -> None:
        if checkpoint is None:
            return
        try:
            write_json(checkpoint, {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint,
                                    "settings": settings, "records": records})
        except OutputError as err:
            failure = OutputError(f"{err}; the checkpoint keeps its last good state and the {len(records)} "
                                  "times solved so far are in this error's .profile")
            failure.profile = _profile(records, band_times, settings) if records else None
            raise failure from err

    def keep(t: float, outcome: dict[str, Any] | TaskFailure, proposal: tuple[float, float]) -> None:
        if isinstance(outcome, TaskFailure):
            outcome = {**_empty_record(t, settings["k"]), "failures": [f"task: {outcome.error}: {outcome.message}"]}
        outcome["proposal_gap_std"], outcome["proposal_speed_std"] = proposal
        records.append(outcome)
        save()
        bar.update(1)
        bar.set_postfix(t=f"{t:.3g}", gap=f"{outcome['gap']:.3g}", A=f"{outcome['speed']:.3g}")

    save()  # an unwritable checkpoint folder fails here, before any work
    with tqdm(total=total, initial=len(records), disable=not progress, desc="gap profile") as bar:
        with executor_from(executor, n_workers) as pool:
            for t, outcome in map_tasks(solve, planned[len(records):], pool):
                keep(t, outcome, (math.nan, math.nan))
        while settings["adaptive"] and len(records) < total:
            choice = _propose(records, band_times, settings)
            if choice is None:
                break
            keep(choice[0], next(map_tasks(solve, [choice[0]]))[1], choice[1:])
    profile = _profile(records, band_times, settings)
    n_bad, n_fail = int((~profile.converged).sum()), len(profile.failures)
    if n_bad or n_fail:
        warnings.warn(f"gap_profile: {n_bad} of {len(records)} gaps not converged to rtol = {rtol:g} and "
                      f"{n_fail} failures (see .converged and .failures)", ConvergenceWarning, stacklevel=2)
    return profile
