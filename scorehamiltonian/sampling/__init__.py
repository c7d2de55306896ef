"""The sampling side: schedules, their exact judge, the designer, and the bounds that hold.

THEORY sections 3 and 4: sampling as adiabatic transport of the ground state sqrt(p_t).

- ``schedules``: :class:`Schedule` (levels and Langevin times, exports to k-diffusion,
  diffusers and torchdiffeq) and the standard and spectral rules (:func:`standard_schedule`).
- ``grid_model`` and ``propagation``: exact propagation of annealed Langevin, the reverse SDE
  and the probability-flow ODE on 1D / 2D grids (:func:`propagate_exact`), no Monte Carlo.
- ``designer``: schedules that minimise the exactly propagated error (:func:`design_schedule`);
  ``reduced``: the reduced model in the lowest modes where no grid exists.
- ``solvers``: the solvers people run (Euler, Heun, DPM-Solver++(2M), DDIM, Euler-Maruyama,
  ancestral, annealed Langevin, predictor-corrector) in the libraries' variables, one
  implementation for sample runs, exact propagation and exports (:func:`sample`, :func:`solver_nfe`);
  ``judges``: their exact laws on 1D / 2D grids (:func:`judge_solver`); ``exports``: schedules to
  k-diffusion and diffusers and sigma lists back (:func:`to_k_diffusion`, :func:`to_diffusers`,
  :func:`schedule_from_sigmas`); ``baselines``: EDM, log-SNR, time-uniform / quadratic, Align Your
  Steps (published and optimised), StepOptim, OSS and the spectral rules (:func:`baseline_schedule`);
  ``steps``: step schedules designed for those solvers at a given NFE, against the exact judge in
  1D / 2D or, in any d, the model's own fine run (its law of log-density, its distance;
  :func:`design_steps`); ``sample_judges``: judges from samples in high d, each with its
  standard error (:func:`sliced_wasserstein`, :func:`mmd`, :func:`cross_entropy_gap` from
  :func:`expected_energy`,
  :func:`basin_weight_error`, and for labelled data without a density a classifier's held-out
  judges, :func:`fit_classifier_judge`).
- ``bounds``: the tracking bound and the score-error limit eps^2 / lambda_1, checked against
  exact propagation (:func:`tracking_bound`, :func:`score_error_bound`).
- ``diagnostics``: lambda_1, lambda_2, the adiabatic lag and basin masses along t
  (:func:`spectral_diagnostics`).
"""

from .baselines import AYS_SIGMAS, BASELINES, PROCESS_BASELINES, baseline_schedule, klub
from .bounds import ScoreErrorBound, TrackingBound, score_error_bound, tracking_bound
from .designer import DEFAULT_BASELINES, DesignResult, design_schedule, perturbed_mixtures
from .diagnostics import SpectralDiagnostics, spectral_diagnostics
from .exports import KDiffusionSchedule, schedule_from_sigmas, to_diffusers, to_k_diffusion
from .grid_model import GridModel, default_grid
from .judges import SolverJudgement, judge_solver, solver_grid
from .propagation import PropagationResult, propagate_exact
from .reduced import ReducedPrediction, reduced_prediction
from .sample_judges import (
    ClassifierJudge,
    SampleDistance,
    basin_weight_error,
    cross_entropy_gap,
    expected_energy,
    fit_classifier_judge,
    mmd,
    sliced_wasserstein,
)
from .schedules import STANDARD_SCHEDULES, PathProfile, Schedule, as_schedule, path_profile, standard_schedule
from .solvers import FINALS, SOLVERS, SampleRun, prior_samples, sample, solver_nfe, steps_for_nfe
from .steps import DESIGN_METRICS, StepDesign, design_steps

__all__ = [
    "AYS_SIGMAS",
    "BASELINES",
    "DEFAULT_BASELINES",
    "DESIGN_METRICS",
    "FINALS",
    "PROCESS_BASELINES",
    "SOLVERS",
    "STANDARD_SCHEDULES",
    "ClassifierJudge",
    "DesignResult",
    "GridModel",
    "KDiffusionSchedule",
    "PathProfile",
    "PropagationResult",
    "ReducedPrediction",
    "SampleDistance",
    "SampleRun",
    "Schedule",
    "ScoreErrorBound",
    "SolverJudgement",
    "SpectralDiagnostics",
    "StepDesign",
    "TrackingBound",
    "as_schedule",
    "baseline_schedule",
    "basin_weight_error",
    "cross_entropy_gap",
    "default_grid",
    "design_schedule",
    "design_steps",
    "expected_energy",
    "fit_classifier_judge",
    "judge_solver",
    "klub",
    "mmd",
    "path_profile",
    "perturbed_mixtures",
    "prior_samples",
    "propagate_exact",
    "reduced_prediction",
    "sample",
    "schedule_from_sigmas",
    "score_error_bound",
    "sliced_wasserstein",
    "solver_grid",
    "solver_nfe",
    "spectral_diagnostics",
    "standard_schedule",
    "steps_for_nfe",
    "to_diffusers",
    "to_k_diffusion",
    "tracking_bound",
]
