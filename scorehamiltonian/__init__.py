"""scorehamiltonian: spectral analysis of diffusion models through the Score Hamiltonian.

H_t = -Laplacian + |s_t|^2 / 4 + div(s_t) / 2, built from a score s_t = grad log p_t.
See THEORY.md for the conventions every module shares.
"""

from .app.config import builtin_config, load_config, validate_config
from .app.report import Report, build_report, write_report
from .common.errors import (
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
from .common.executors import TaskFailure, executor_from, map_tasks
from .sampling.bounds import ScoreErrorBound, TrackingBound, score_error_bound, tracking_bound
from .sampling.designer import (
    DesignResult,
    ReducedPrediction,
    design_schedule,
    perturbed_mixtures,
    reduced_prediction,
)
from .sampling.diagnostics import SpectralDiagnostics, spectral_diagnostics
from .sampling.propagation import GridModel, PropagationResult, default_grid, propagate_exact
from .sampling.schedules import (
    STANDARD_SCHEDULES,
    PathProfile,
    Schedule,
    as_schedule,
    path_profile,
    standard_schedule,
)
from .score.audit import ScoreAudit, ScoreError, score_audit, score_error
from .score.derivatives import DivergenceResult, JacobianResult, divergence, jacobian
from .score.examples import EXAMPLES, example
from .score.interface import ExactScore, ModelScore, Score, as_score
from .score.mixture import GaussianMixture, MixtureEvaluation
from .score.potential import PotentialResult, quantum_potential
from .score.processes import EDM, OU, VE, ForwardProcess, VPLinear, process_from_config
from .score.training import MLPScore, load_score, save_score, train_dsm
from .spectral.batch import HamiltonianBatch, batch_spectrum
from .spectral.eigensolvers import ConvergenceWarning, SpectrumResult, spectrum
from .spectral.gap import GapLevel, GapResult, spectral_gap
from .spectral.grid import Grid, box_from_mixture, box_from_samples, box_from_score, box_over_times
from .spectral.memory import MemoryEstimate, available_memory, estimate_memory
from .spectral.operator import BoundaryMassWarning, ResolutionWarning, ScoreHamiltonian
from .spectral.profiles import AdiabaticSpeed, GapProfile, adiabatic_speed, gap_profile
from .spectral.ritz import RitzResult, ritz_gap
from .thermo.energy import EnergyResult, LineEnergyResult, energy, line_energy
from .thermo.free_energy import (
    FreeEnergyResult,
    LambdaSchedule,
    ScoreEnergy,
    free_energy_difference,
    lambda_schedule,
)

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
