"""The sampling side: schedules, their exact judge, the designer, and the bounds that hold.

THEORY sections 3 and 4: sampling as adiabatic transport of the ground state sqrt(p_t).

- ``schedules``: :class:`Schedule` (levels and Langevin times, exports to k-diffusion,
  diffusers and torchdiffeq) and the standard and spectral rules (:func:`standard_schedule`).
- ``grid_model`` and ``propagation``: exact propagation of annealed Langevin, the reverse SDE
  and the probability-flow ODE on 1D / 2D grids (:func:`propagate_exact`), no Monte Carlo.
- ``designer``: schedules that minimise the exactly propagated error (:func:`design_schedule`);
  ``reduced``: the reduced model in the lowest modes where no grid exists.
- ``bounds``: the tracking bound and the score-error limit eps^2 / lambda_1, checked against
  exact propagation (:func:`tracking_bound`, :func:`score_error_bound`).
- ``diagnostics``: lambda_1, lambda_2, the adiabatic lag and basin masses along t
  (:func:`spectral_diagnostics`).
"""

from .bounds import ScoreErrorBound, TrackingBound, score_error_bound, tracking_bound
from .designer import DEFAULT_BASELINES, DesignResult, design_schedule, perturbed_mixtures
from .diagnostics import SpectralDiagnostics, spectral_diagnostics
from .grid_model import GridModel, default_grid
from .propagation import PropagationResult, propagate_exact
from .reduced import ReducedPrediction, reduced_prediction
from .schedules import STANDARD_SCHEDULES, PathProfile, Schedule, as_schedule, path_profile, standard_schedule

__all__ = [
    "DEFAULT_BASELINES",
    "STANDARD_SCHEDULES",
    "DesignResult",
    "GridModel",
    "PathProfile",
    "PropagationResult",
    "ReducedPrediction",
    "Schedule",
    "ScoreErrorBound",
    "SpectralDiagnostics",
    "TrackingBound",
    "as_schedule",
    "default_grid",
    "design_schedule",
    "path_profile",
    "perturbed_mixtures",
    "propagate_exact",
    "reduced_prediction",
    "score_error_bound",
    "spectral_diagnostics",
    "standard_schedule",
    "tracking_bound",
]
