"""scorehamiltonian: spectral analysis of diffusion models through the Score Hamiltonian.

H_t = -Laplacian + |s_t|^2 / 4 + div(s_t) / 2, built from a score s_t = grad log p_t.
See THEORY.md for the conventions every module shares.
"""

from .audit import ScoreAudit, ScoreError, score_audit, score_error
from .derivatives import DivergenceResult, JacobianResult, divergence, jacobian
from .eigensolvers import ConvergenceWarning, SpectrumResult, spectrum
from .errors import (
    CheckpointError,
    ConvergenceError,
    InputDtypeError,
    InputShapeError,
    MixtureWeightsError,
    NonFiniteScoreError,
    NotDifferentiableError,
    NotPositiveDefiniteError,
    OutputError,
    ResolutionError,
    SamplesRequiredError,
    ScoreHamiltonianError,
    TimeRangeError,
)
from .examples import EXAMPLES, example
from .gap import GapLevel, GapResult, spectral_gap
from .grid import Grid, box_from_mixture, box_from_samples, box_from_score
from .mixture import GaussianMixture, MixtureEvaluation
from .operator import BoundaryMassWarning, ResolutionWarning, ScoreHamiltonian
from .parallel import TaskFailure, executor_from, map_tasks
from .potential import PotentialResult, quantum_potential
from .processes import EDM, OU, VE, ForwardProcess, VPLinear, process_from_config
from .profiles import AdiabaticSpeed, GapProfile, adiabatic_speed, gap_profile
from .ritz import RitzResult, ritz_gap
from .scores import ExactScore, ModelScore, Score, as_score
from .training import MLPScore, load_score, save_score, train_dsm

__version__ = "0.1.0"

__all__ = [
    "EDM",
    "EXAMPLES",
    "OU",
    "VE",
    "AdiabaticSpeed",
    "BoundaryMassWarning",
    "CheckpointError",
    "ConvergenceError",
    "ConvergenceWarning",
    "DivergenceResult",
    "ExactScore",
    "ForwardProcess",
    "GapLevel",
    "GapProfile",
    "GapResult",
    "GaussianMixture",
    "Grid",
    "InputDtypeError",
    "InputShapeError",
    "JacobianResult",
    "MLPScore",
    "MixtureEvaluation",
    "MixtureWeightsError",
    "ModelScore",
    "NonFiniteScoreError",
    "NotDifferentiableError",
    "NotPositiveDefiniteError",
    "OutputError",
    "PotentialResult",
    "ResolutionError",
    "ResolutionWarning",
    "RitzResult",
    "SamplesRequiredError",
    "Score",
    "ScoreAudit",
    "ScoreError",
    "ScoreHamiltonian",
    "ScoreHamiltonianError",
    "SpectrumResult",
    "TaskFailure",
    "TimeRangeError",
    "VPLinear",
    "adiabatic_speed",
    "as_score",
    "box_from_mixture",
    "box_from_samples",
    "box_from_score",
    "divergence",
    "example",
    "executor_from",
    "gap_profile",
    "jacobian",
    "load_score",
    "map_tasks",
    "process_from_config",
    "quantum_potential",
    "ritz_gap",
    "save_score",
    "score_audit",
    "score_error",
    "spectral_gap",
    "spectrum",
    "train_dsm",
]
