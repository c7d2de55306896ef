"""The score side: forward processes, scores of every kind, and what is read off a score alone.

THEORY sections 1 and 2. A score s_t(x) = grad log p_t(x) of a forward process
X_t = alpha_t X_0 + sigma_t Z is the input of everything else in the toolkit.

- ``processes``: the forward processes (:class:`OU`, :class:`VPLinear`, :class:`VE`, :class:`EDM`).
- ``mixture``: :class:`GaussianMixture`, whose noised marginals are exact (the ground truth).
- ``interface``: the one score interface (:class:`Score`), the exact score of a mixture
  (:class:`ExactScore`) and any network with the score / epsilon / x0 conventions
  (:func:`as_score`).
- ``training``: denoising score matching of a small MLP (:func:`train_dsm`) and its checkpoints.
- ``derivatives``: the divergence and Jacobian of a score (exact, autograd, Hutchinson, finite
  differences), with error estimates.
- ``potential``: the quantum potential V_t = |s_t|^2 / 4 + div(s_t) / 2 (:func:`quantum_potential`).
- ``audit``: finiteness, scale, curl and the error against a reference score (:func:`score_audit`).
- ``examples``: the built-in targets (:func:`example`).
"""

from .audit import ScoreAudit, ScoreError, score_audit, score_error
from .derivatives import DivergenceResult, JacobianResult, divergence, jacobian
from .examples import EXAMPLES, example
from .interface import ExactScore, ModelScore, Score, as_score
from .mixture import GaussianMixture, MixtureEvaluation
from .noised import NoisedDensity, ProductScore
from .potential import PotentialResult, quantum_potential
from .processes import EDM, OU, VE, ForwardProcess, VPLinear, process_from_config
from .quadrature import BasinResult, QuadratureGap, gap_1d
from .systems import SYSTEMS, DataSystem, DensitySystem, ManyWell, MuellerBrown, System, system
from .training import MLPScore, load_score, save_score, train_dsm

__all__ = [
    "EDM",
    "EXAMPLES",
    "OU",
    "SYSTEMS",
    "VE",
    "BasinResult",
    "DataSystem",
    "DensitySystem",
    "DivergenceResult",
    "ExactScore",
    "ForwardProcess",
    "GaussianMixture",
    "JacobianResult",
    "MLPScore",
    "ManyWell",
    "MixtureEvaluation",
    "ModelScore",
    "MuellerBrown",
    "NoisedDensity",
    "PotentialResult",
    "ProductScore",
    "QuadratureGap",
    "Score",
    "ScoreAudit",
    "ScoreError",
    "System",
    "VPLinear",
    "as_score",
    "divergence",
    "example",
    "gap_1d",
    "jacobian",
    "load_score",
    "process_from_config",
    "quantum_potential",
    "save_score",
    "score_audit",
    "score_error",
    "system",
    "train_dsm",
]
