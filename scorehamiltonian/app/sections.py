"""The four sections of the report, each computed from the score and what its reference knows.

1. spectrum: the gap profile lambda_1(t) - lambda_0(t) with its errors and the adiabatic speed
   A(t) (:func:`~scorehamiltonian.spectral.profiles.gap_profile`: grids in d <= 3, Ritz above),
   and the lowest eigenpairs at chosen times (grid eigenfunctions in d <= 2; in higher d the
   slowest Ritz function at samples of p_t, against their two leading principal coordinates);
2. schedules: the named baselines and a designed schedule, judged by exact propagation with
   their tracking bounds where the reference is a Gaussian mixture in d <= 2, else by the
   reduced model in the lowest Ritz modes (a prediction, labelled as such); with a solver
   (``schedules.sampler``), also its step schedules at ``schedules.nfe`` evaluations: the
   baselines of the papers and :func:`design_steps`, judged by the solver's exact law for a
   mixture in d <= 2, else by the sliced Wasserstein distance of its samples to the reference's;
3. energies: -log p_0 by the probability-flow ODE at samples of the data, with numerical and
   model errors (an ensemble's spread), against the exact value where the reference has a
   log-density (up to a constant where it is not normalised), and one free-energy difference
   with a closed form (d <= 3);
4. audit: finiteness, scale, curl of the score's Jacobian, the Fokker-Planck residual of the
   score family (differentiable scores), and the error against the exact score where the
   reference has one.
Each returns JSON-ready numbers and the arrays its figure draws.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import torch
from scipy.stats import spearmanr

from ..common.errors import NotDifferentiableError
from ..sampling.baselines import PROCESS_BASELINES, baseline_schedule
from ..sampling.bounds import tracking_bound
from ..sampling.designer import design_schedule
from ..sampling.judges import judge_solver
from ..sampling.propagation import propagate_exact
from ..sampling.reduced import reduced_prediction
from ..sampling.sample_judges import sliced_wasserstein
from ..sampling.schedules import Schedule, standard_schedule
from ..sampling.solvers import prior_samples, sample
from ..sampling.steps import design_steps
from ..score.audit import fokker_planck_residual, score_audit, score_error
from ..score.interface import Score
from ..score.potential import quantum_potential
from ..spectral.eigensolvers import spectrum
from ..spectral.gap import spectral_gap
from ..spectral.grid import Grid, box_from_mixture, box_from_samples
from ..spectral.operator import ScoreHamiltonian
from ..spectral.profiles import gap_profile
from ..spectral.ritz import ritz_gap
from ..thermo.energy import energy
from ..thermo.free_energy import free_energy_difference
from ..thermo.path import ScoreEnergy
from .subjects import Reference

__all__ = ["audit_section", "eigenpairs", "energy_section", "free_energy_section", "judge", "profile",
           "schedule_section", "solver_section"]

#: Interior nodes per axis of the eigenfunction grids (1D, 2D).
EIGEN_NODES = {1: 255, 2: 63}
#: Samples of p_t behind the adiabatic speed, the Ritz eigenfunctions and the reduced model.
N_SAMPLES = 4000
#: The free-energy difference runs in d <= this (its PF-ODE energies of thousands of samples).
MAX_FREE_ENERGY_DIM = 3
#: Independent reduced models behind each predicted TV (their spread is its standard error: one
#: model's predictions of the same schedule scatter over 0.2 - 1.9 times the exact TV).
REDUCED_REPLICATES = 3
#: Samples behind the sliced Wasserstein judge of solver schedules (no exact law).
N_SOLVER_SAMPLES = 2000
#: Points of the Fokker-Planck residual in the audit (about 3 d backward passes each).
FOKKER_PLANCK_POINTS = 200


def _sampler(reference: Reference, n: int = N_SAMPLES) -> Any:
    def draw(t: float, generator: torch.Generator) -> torch.Tensor:
        return reference.sample(n, t, generator)

    return draw


def _exact(score: Score, reference: Reference) -> bool:
    return reference.exact is not None and score is reference.exact


# --------------------------------------------------------------------------- 1. spectrum


def profile(score: Score, reference: Reference, config: dict[str, Any], progress: bool) -> Any:
    """The gap profile over the union of [gap.t_min, gap.t_max] and [schedules.t_min,
    schedules.t_max], so that the spectral schedules interpolate it and never recompute it."""
    gap, sch = config["gap"], config["schedules"]
    t_range = (min(gap["t_min"], sch["t_min"]), max(gap["t_max"], sch["t_max"]))
    return gap_profile(score, t_range=t_range, n_initial=gap["n_initial"],
                       max_solves=max(gap["max_solves"], gap["n_initial"]), rtol=gap["rtol"], k=gap["k"],
                       n_samples=gap["n_samples"], samples=None if _exact(score, reference) else _sampler(reference),
                       seed=config["seed"], progress=progress)


def eigenpairs(score: Score, reference: Reference, t: float, k: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The k lowest eigenpairs of H_t on a grid (order 4) and the gap by spectral_gap in d <= 2;
    above, the Ritz spectrum and the slowest Ritz function at samples of p_t."""
    if reference.dim > 2:
        return _ritz_pairs(score, reference, t, k, seed)
    if reference.mixture is not None:
        lo, hi = box_from_mixture(reference.exact.marginal(t), 1e-10)
    else:
        lo, hi = box_from_samples(reference.sample(N_SAMPLES, t, torch.Generator().manual_seed(seed)), 1e-10)
    grid = Grid(lo, hi, EIGEN_NODES[reference.dim])
    form = "ground_state" if _exact(score, reference) else "potential"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H = ScoreHamiltonian(score, t, grid, order=4, form=form)
        res = spectrum(H, k=k, return_eigenvectors=True, generator=torch.Generator().manual_seed(0))
        gap = spectral_gap(score, t, rtol=1e-4, box=(lo, hi))
    potential = quantum_potential(score, grid.points(), t).value
    numbers = {"t": t, "route": "grid", "eigenvalues": res.eigenvalues, "residual_norms": res.residual_norms,
               "converged": bool(res.converged.all()), "form": form, "grid": list(grid.n),
               "gap": {"value": gap.value, "error": gap.error, "converged": gap.converged}}
    arrays = {"t": t, "route": "grid", "axes": [a.numpy() for a in grid.axes()],
              "potential": potential.reshape(grid.n).numpy(), "eigenvalues": res.eigenvalues.numpy(),
              "eigenvectors": [res.eigenvectors[:, j].reshape(grid.n).numpy() / math.sqrt(grid.cell_volume)
                               for j in range(k)]}
    return numbers, arrays


def _ritz_pairs(score: Score, reference: Reference, t: float, k: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    x = reference.sample(N_SAMPLES, t, generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ritz = ritz_gap(score, t, samples=x, n_eigenvalues=max(k - 1, 1), generator=generator)
    shown = x[:2000]
    centred = shown - shown.mean(0)
    axes = torch.linalg.svd(centred, full_matrices=False).Vh[:2]
    numbers = {"t": t, "route": "ritz", "eigenvalues": [0.0, *ritz.ritz_values.tolist()],
               "residual_norms": None, "converged": ritz.reliable, "form": ritz.form, "grid": None,
               "gap": {"value": ritz.value, "error": ritz.error, "converged": ritz.reliable}, "flags": ritz.flags}
    arrays = {"t": t, "route": "ritz", "coordinates": (centred @ axes.T).numpy(),
              "values": ritz.eigenfunction(shown).detach().numpy(), "gap": ritz.value}
    return numbers, arrays


# --------------------------------------------------------------------------- 2. schedules


def schedule_section(score: Score, reference: Reference, profile_: Any, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The configured schedules, each judged (:func:`judge`)."""
    sch = config["schedules"]
    exact_judge = reference.mixture is not None and reference.dim <= 2
    args = (sch["n_levels"], sch["t_max"], sch["t_min"], score.process, sch["budget"])
    out = [standard_schedule(name, *args, profile=profile_) for name in sch["standard"]]
    if sch["design"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exact_judge:
                designed = design_schedule(reference.exact, None, sch["n_levels"], sch["budget"], sch["t_max"],
                                           sch["t_min"], max_time=sch["design_max_time"], seed=config["seed"])
            else:
                designed = design_schedule(score, None, sch["n_levels"], sch["budget"], sch["t_max"], sch["t_min"],
                                           model="reduced", reduced_options=_reduced_options(reference, config))
        out.append(designed)
    return [judge(score, reference, s, config) for s in out]


def _reduced_options(reference: Reference, config: dict[str, Any]) -> dict[str, Any]:
    return {"samples": _sampler(reference), "n_samples": N_SAMPLES, "seed": config["seed"]}


def judge(score: Score, reference: Reference, schedule: Schedule, config: dict[str, Any]) -> dict[str, Any]:
    """Exact propagation of ``schedule`` (annealed Langevin) and its tracking bound for a
    mixture reference in d <= 2, else the reduced model's predicted final TV: the mean over
    ``REDUCED_REPLICATES`` reduced models from draws the design never saw (seeds from seed + 2:
    the reduced design searched on seed's model and chose between itself and its fallback on
    seed + 1's, :func:`design_schedule`), with their standard error, which holds the models' own
    sampling noise."""
    row = {"name": schedule.name, "times": schedule.times, "langevin_time": schedule.langevin_time}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if reference.mixture is not None and reference.dim <= 2:
            result = propagate_exact(reference.mixture, reference.process, schedule)
            bound = tracking_bound(reference.mixture, reference.process, schedule)
            return {**row, "judge": "exact propagation", "tv": result.tv, "weight_error": result.weight_error,
                    "chi2": result.chi2, "judge_error": result.numerical_error,
                    "judge_converged": bool(result.converged), "tv_bound": bound.tv, "chi2_bound": bound.chi2}
        prediction = reduced_prediction(score, schedule, **{**_reduced_options(reference, config),
                                                             "seed": config["seed"] + 2},
                                        replicates=REDUCED_REPLICATES)
    return {**row, "judge": "reduced model (prediction)", "tv": prediction.tv, "judge_error": prediction.tv_stderr,
            "weight_error": None, "chi2": prediction.chi2, "judge_converged": not prediction.flags,
            "tv_bound": None, "chi2_bound": None, "flags": list(prediction.flags)}


def solver_section(score: Score, reference: Reference, config: dict[str, Any]) -> dict[str, Any]:
    """Step schedules of ``schedules.sampler`` at ``schedules.nfe`` score evaluations: every
    process baseline and :func:`design_steps` (``schedules.design_metric``; by default the exact
    objective for a mixture in d <= 2, the model's own energy objective otherwise), each judged
    (module docstring)."""
    sch = config["schedules"]
    solver, nfe = sch["sampler"], sch["nfe"]
    exact_judge = reference.mixture is not None and reference.dim <= 2
    source = reference.exact if exact_judge else score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schedules = [baseline_schedule(name, source, nfe, solver, sch["t_max"], sch["t_min"])
                     for name in PROCESS_BASELINES]
        design = None
        if sch["design"]:
            design = design_steps(source, None, nfe=nfe, solver=solver, t_max=sch["t_max"], t_min=sch["t_min"],
                                  metric=sch.get("design_metric"), max_time=sch["design_max_time"],
                                  seed=config["seed"])
            schedules.append(replace(design.schedule, name="designed"))
        rows = [_judge_steps(score, reference, s, solver, exact_judge, config["seed"]) for s in schedules]
    return {"solver": solver, "nfe": nfe, "judge": "exact law" if exact_judge else "sliced Wasserstein (samples)",
            "rows": rows, "design": None if design is None else {
                "metric": design.metric, "value": design.value, "error": design.error, "start": design.start,
                "seconds": design.seconds, "converged": design.converged, "notes": list(design.notes)}}


def _judge_steps(score: Score, reference: Reference, schedule: Schedule, solver: str, exact: bool,
                 seed: int) -> dict[str, Any]:
    row = {"name": schedule.name, "times": schedule.times}
    if exact:
        judged = judge_solver(reference.mixture, reference.process, schedule, solver)
        return {**row, "value": judged.tv, "error": judged.error, "kl": judged.kl, "nfe": judged.nfe}
    generator = torch.Generator().manual_seed(seed)
    x0 = prior_samples(score.process, schedule.t_max, N_SOLVER_SAMPLES, reference.dim, generator)
    with torch.no_grad():
        run = sample(solver, score, x0, schedule, generator=generator)
    distance = sliced_wasserstein(run.x, reference.sample(N_SOLVER_SAMPLES, schedule.t_min, generator), seed=seed)
    return {**row, "value": distance.value, "error": distance.error, "kl": None, "nfe": run.nfe}


# --------------------------------------------------------------------------- 3. energies


def energy_section(score: Score, reference: Reference, config: dict[str, Any]) -> dict[str, Any]:
    """PF-ODE energies at samples of the data, each refined to ``energy.atol`` within
    ``energy.max_steps`` steps (or on a fixed grid of ``energy.n_steps``), against the
    reference's log-density if any."""
    cfg = config["energy"]
    generator = torch.Generator().manual_seed(config["seed"])
    x = reference.data_samples(cfg["n_points"], generator)
    if x.shape[1] == 1:
        x = x.sort(0).values
    grid = ({"n_steps": cfg["n_steps"]} if cfg.get("n_steps") is not None else
            {"atol": cfg["atol"], "max_steps": cfg["max_steps"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = energy(score, score.process, x, method=cfg["method"], **grid)
    out = {"points": x, "value": res.value, "error": res.error, "model_error": res.model_error,
           "total_error": res.total_error, "flags": list(res.flags), "nfe": res.nfe, "method": cfg["method"],
           "n_steps": res.n_steps, "atol": grid.get("atol"),
           "reached": res.reached, "exact": None, "max_abs_error": None, "normalised": reference.normalised}
    if reference.log_density is not None:
        exact = -reference.log_density(x).detach()
        shift = 0.0 if reference.normalised else float((res.value - exact).mean())
        out.update(exact=exact + shift, max_abs_error=float((res.value - exact - shift).abs().max()),
                   spearman=float(spearmanr(res.value.numpy(), exact.numpy()).statistic))
    closure = getattr(res, "closure", None)
    if closure is not None:
        out["cycle_closure"] = closure
    return out


def free_energy_section(score: Score, reference: Reference, config: dict[str, Any]) -> dict[str, Any]:
    """Delta F between U_0 = -log p_0 (the score's; normalised) and U_1(x) = |x - m|^2 / (2 v),
    whose exact value is -(d/2) log(2 pi v): m and v the reference's mean and mean variance."""
    cfg, d = config["energy"], reference.dim
    empty = {"method": cfg["free_energy_method"], "value": None, "error": None, "exact": None, "converged": False}
    if d > MAX_FREE_ENERGY_DIM:
        return {**empty, "skipped": f"d = {d} > {MAX_FREE_ENERGY_DIM}: thousands of PF-ODE energies in high d"}
    n, generator = cfg["free_energy_samples"], torch.Generator().manual_seed(config["seed"])
    if reference.mixture is not None:
        m, v = reference.mixture.mean(), float(torch.diagonal(reference.mixture.covariance()).mean())
    else:
        data = reference.data_samples(n, generator)
        m, v = data.mean(0), float(data.var(0).mean())

    def gaussian(x: torch.Tensor) -> torch.Tensor:
        return ((x - m) ** 2).sum(-1) / (2 * v)

    samples_1 = m + math.sqrt(v) * torch.randn(n, d, dtype=torch.float64, generator=generator)
    exact = _exact(score, reference)
    U_0 = reference.mixture if exact else ScoreEnergy(score, n_steps=cfg["free_energy_steps"])
    readout = "exact" if exact else f"PF-ODE energy, {cfg['free_energy_steps']} fixed steps"
    samples_0 = None if exact else reference.data_samples(n, generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = free_energy_difference(U_0, gaussian, method=cfg["free_energy_method"], n_samples=n,
                                     samples_0=samples_0, samples_1=samples_1, generator=generator,
                                     atol=cfg["free_energy_atol"])
    return {"method": res.method, "value": res.value, "error": res.error, "systematic_error": res.systematic_error,
            "model_error": res.model_error, "total_error": res.total_error,
            "exact": -0.5 * d * math.log(2 * math.pi * v), "converged": bool(res.converged), "ess": res.ess,
            "overlap": res.overlap, "flags": list(res.flags), "n_energy_evaluations": res.n_energy_evaluations,
            "end_states": f"U_0 = -log p_0 ({readout}), "
                          f"U_1 = |x - m|^2 / (2 v), v = {v:.6g}"}


# --------------------------------------------------------------------------- 4. audit


def audit_section(score: Score, reference: Reference, config: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = config["audit"]
    generator = torch.Generator().manual_seed(config["seed"])
    rows = []
    for t in cfg["times"]:
        x = reference.sample(cfg["n_points"], t, generator)
        audit = score_audit(score, x, t)
        row = {"t": t, "curl_ratio": audit.curl_ratio, "curl_ratio_error": audit.curl_ratio_error,
               "rms_norm": audit.rms_norm, "max_norm": audit.max_norm, "n_nonfinite": audit.n_nonfinite,
               "warnings": audit.warnings}
        if reference.exact is not None and not _exact(score, reference):
            err = score_error(score, reference.exact, x, t)
            row.update(relative_score_error=err.relative, relative_score_error_stderr=err.relative_stderr)
        try:
            consistency = fokker_planck_residual(score, x[:FOKKER_PLANCK_POINTS], t)
            row.update(fokker_planck=consistency.mean_relative, fokker_planck_stderr=consistency.mean_relative_stderr)
        except NotDifferentiableError as err:
            row.update(fokker_planck=None, fokker_planck_stderr=None,
                       warnings=[*row["warnings"], f"no Fokker-Planck residual: {err}"])
        rows.append(row)
    return rows
