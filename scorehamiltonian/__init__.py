"""scorehamiltonian: spectral analysis of diffusion models through the Score Hamiltonian.

H_t = -Laplacian + |s_t|^2 / 4 + div(s_t) / 2, built from a score s_t = grad log p_t.
See THEORY.md for the conventions every module shares.
"""

from .audit import ScoreAudit, ScoreError, score_audit, score_error
from .derivatives import DivergenceResult, JacobianResult, divergence, jacobian
from .errors import (
    CheckpointError,
    InputDtypeError,
    InputShapeError,
    MixtureWeightsError,
    NonFiniteScoreError,
    NotDifferentiableError,
    NotPositiveDefiniteError,
    ScoreHamiltonianError,
    TimeRangeError,
)
from .examples import EXAMPLES, example
from .mixture import GaussianMixture, MixtureEvaluation
from .potential import PotentialResult, quantum_potential
from .processes import EDM, OU, VE, ForwardProcess, VPLinear, process_from_config
from .scores import ExactScore, ModelScore, Score, as_score
from .training import MLPScore, load_score, save_score, train_dsm

__version__ = "0.1.0"

__all__ = [
    "EDM",
    "EXAMPLES",
    "OU",
    "VE",
    "CheckpointError",
    "DivergenceResult",
    "ExactScore",
    "ForwardProcess",
    "GaussianMixture",
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
    "PotentialResult",
    "Score",
    "ScoreAudit",
    "ScoreError",
    "ScoreHamiltonianError",
    "TimeRangeError",
    "VPLinear",
    "as_score",
    "divergence",
    "example",
    "jacobian",
    "load_score",
    "process_from_config",
    "quantum_potential",
    "save_score",
    "score_audit",
    "score_error",
    "train_dsm",
]
