"""scorehamiltonian: spectral analysis of diffusion models through the Score Hamiltonian.

H_t = -Laplacian + |s_t|^2 / 4 + div(s_t) / 2, built from a score s_t = grad log p_t.
See THEORY.md for the conventions every module shares.
"""

from .audit import ScoreAudit, ScoreError, score_audit, score_error
from .batch import HamiltonianBatch, batch_spectrum
from .bounds import ScoreErrorBound, TrackingBound, score_error_bound, tracking_bound
from .config import builtin_config, load_config, validate_config
from .derivatives import DivergenceResult, JacobianResult, divergence, jacobian
from .designer import DesignResult, ReducedPrediction, design_schedule, perturbed_mixtures, reduced_prediction
from .diagnostics import SpectralDiagnostics, spectral_diagnostics
from .eigensolvers import ConvergenceWarning, SpectrumResult, spectrum
from .energy import EnergyResult, LineEnergyResult, energy, line_energy
from .errors import (
    CheckpointError,
    ConfigError,
    ConvergenceError,
    InputDtypeError,
    InputShapeError,
    InsufficientMemoryError,
    MixtureWeightsError,
    NonFiniteScoreError,
    NotDifferentiableError,
    NotPositiveDefiniteError,
    OutputError,
    ResolutionError,
    SamplesRequiredError,
    ScheduleError,
    ScoreHamiltonianError,
    TimeRangeError,
)
from .examples import EXAMPLES, example
from .free_energy import (
    FreeEnergyResult,
    LambdaSchedule,
    ScoreEnergy,
    free_energy_difference,
    lambda_schedule,
)
from .gap import GapLevel, GapResult, spectral_gap
from .grid import Grid, box_from_mixture, box_from_samples, box_from_score, box_over_times
from .memory import MemoryEstimate, available_memory, estimate_memory
from .mixture import GaussianMixture, MixtureEvaluation
from .operator import BoundaryMassWarning, ResolutionWarning, ScoreHamiltonian
from .parallel import TaskFailure, executor_from, map_tasks
from .potential import PotentialResult, quantum_potential
from .processes import EDM, OU, VE, ForwardProcess, VPLinear, process_from_config
from .profiles import AdiabaticSpeed, GapProfile, adiabatic_speed, gap_profile
from .propagation import GridModel, PropagationResult, default_grid, propagate_exact
from .report import Report, build_report, write_report
from .ritz import RitzResult, ritz_gap
from .schedules import STANDARD_SCHEDULES, PathProfile, Schedule, as_schedule, path_profile, standard_schedule
from .scores import ExactScore, ModelScore, Score, as_score
from .training import MLPScore, load_score, save_score, train_dsm

__version__ = "0.1.0"

__all__ = [
    "EDM",
    "EXAMPLES",
    "OU",
    "STANDARD_SCHEDULES",
    "VE",
    "AdiabaticSpeed",
    "BoundaryMassWarning",
    "CheckpointError",
    "ConfigError",
    "ConvergenceError",
    "ConvergenceWarning",
    "DesignResult",
    "DivergenceResult",
    "EnergyResult",
    "ExactScore",
    "ForwardProcess",
    "FreeEnergyResult",
    "GapLevel",
    "GapProfile",
    "GapResult",
    "GaussianMixture",
    "Grid",
    "GridModel",
    "HamiltonianBatch",
    "InputDtypeError",
    "InputShapeError",
    "InsufficientMemoryError",
    "JacobianResult",
    "LambdaSchedule",
    "LineEnergyResult",
    "MLPScore",
    "MemoryEstimate",
    "MixtureEvaluation",
    "MixtureWeightsError",
    "ModelScore",
    "NonFiniteScoreError",
    "NotDifferentiableError",
    "NotPositiveDefiniteError",
    "OutputError",
    "PathProfile",
    "PotentialResult",
    "PropagationResult",
    "ReducedPrediction",
    "Report",
    "ResolutionError",
    "ResolutionWarning",
    "RitzResult",
    "SamplesRequiredError",
    "Schedule",
    "ScheduleError",
    "Score",
    "ScoreAudit",
    "ScoreEnergy",
    "ScoreError",
    "ScoreErrorBound",
    "ScoreHamiltonian",
    "ScoreHamiltonianError",
    "SpectralDiagnostics",
    "SpectrumResult",
    "TaskFailure",
    "TimeRangeError",
    "TrackingBound",
    "VPLinear",
    "adiabatic_speed",
    "as_schedule",
    "as_score",
    "available_memory",
    "batch_spectrum",
    "box_from_mixture",
    "box_from_samples",
    "box_from_score",
    "box_over_times",
    "build_report",
    "builtin_config",
    "default_grid",
    "design_schedule",
    "divergence",
    "energy",
    "estimate_memory",
    "example",
    "executor_from",
    "free_energy_difference",
    "gap_profile",
    "jacobian",
    "lambda_schedule",
    "line_energy",
    "load_config",
    "load_score",
    "map_tasks",
    "path_profile",
    "perturbed_mixtures",
    "process_from_config",
    "propagate_exact",
    "quantum_potential",
    "reduced_prediction",
    "ritz_gap",
    "save_score",
    "score_audit",
    "score_error",
    "score_error_bound",
    "spectral_diagnostics",
    "spectral_gap",
    "spectrum",
    "standard_schedule",
    "tracking_bound",
    "train_dsm",
    "validate_config",
    "write_report",
]
