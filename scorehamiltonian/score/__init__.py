"""The score side: forward processes, scores of every kind, and what is read off a score alone.

THEORY sections 1 and 2. A score s_t(x) = grad log p_t(x) of a forward process
X_t = alpha_t X_0 + sigma_t Z is the input of everything else in the toolkit.

- ``processes``: the forward processes (:class:`OU`, :class:`VPLinear`, :class:`VE`, :class:`EDM`).
- ``mixture``: :class:`GaussianMixture`, whose noised marginals are exact (the ground truth).
- ``interface``: the one score interface (:class:`Score`, with ``sample`` for samples of
  p_t), scores with an exact log-density (:class:`DensityScore`: :class:`ExactScore` of a
  mixture, :class:`AnalyticScore` of any torch log-density) and any network with the score /
  epsilon / x0 conventions (:func:`as_score`).
- ``training``: denoising score matching of a small MLP (:func:`train_dsm`), with held-out
  rows and early stopping; ``ensemble``: K such models and their spread
  (:class:`ScoreEnsemble`, :func:`train_ensemble`); ``checkpoints``: their files
  (:func:`save_score`, :func:`load_score`).
- ``adapters``: models in (:func:`load_torchscript`, :func:`load_module`, :func:`from_diffusers`,
  :func:`from_k_diffusion`), each an :class:`AdaptedScore` (diffusers on :class:`DiscreteVP`).
- ``derivatives``: the divergence and Jacobian of a score (exact, autograd, Hutchinson, finite
  differences), with error estimates.
- ``potential``: the quantum potential V_t = |s_t|^2 / 4 + div(s_t) / 2 (:func:`quantum_potential`).
- ``audit``: finiteness, scale, curl and the error against a reference score (:func:`score_audit`);
  ``extrapolation``: where a learned score extrapolates (distance to the data, ensemble
  disagreement, :func:`extrapolation_map`) and the held-out denoising loss (:func:`denoising_loss`).
- ``examples``: the built-in targets (:func:`example`); ``systems``: systems no one here wrote
  (Mueller-Brown, many-well-32, two-moons, digits; :func:`system`), with exact references by
  ``quadrature`` (basins, basin probabilities, 1D gaps) and exact noised scores of any density
  by ``noised`` (:class:`NoisedDensity`, :class:`ProductScore`).
"""

from .adapters import (
    AdaptedNetwork,
    AdaptedScore,
    from_diffusers,
    from_k_diffusion,
    load_module,
    load_torchscript,
)
from .audit import ScoreAudit, ScoreError, fokker_planck_residual, score_audit, score_error
from .checkpoints import load_score, save_score
from .derivatives import DivergenceResult, JacobianResult, divergence, jacobian
from .ensemble import ScoreEnsemble, train_ensemble
from .examples import EXAMPLES, example
from .extrapolation import DenoisingLoss, ExtrapolationMap, denoising_loss, extrapolation_map
from .interface import (
    AnalyticScore,
    DensityScore,
    ExactScore,
    ExtrapolationWarning,
    ModelScore,
    Score,
    as_score,
)
from .mixture import GaussianMixture, MixtureEvaluation
from .noised import NoisedDensity, ProductScore
from .potential import PotentialResult, quantum_potential
from .processes import EDM, OU, VE, DiscreteVP, ForwardProcess, VPLinear, process_from_config
from .quadrature import BasinResult, QuadratureGap, gap_1d
from .systems import SYSTEMS, DataSystem, DensitySystem, ManyWell, MuellerBrown, System, system
from .training import MLPScore, train_dsm

__all__ = [
    "EDM",
    "EXAMPLES",
    "OU",
    "SYSTEMS",
    "VE",
    "AdaptedNetwork",
    "AdaptedScore",
    "AnalyticScore",
    "BasinResult",
    "DataSystem",
    "DenoisingLoss",
    "DensityScore",
    "DensitySystem",
    "DiscreteVP",
    "DivergenceResult",
    "ExactScore",
    "ExtrapolationMap",
    "ExtrapolationWarning",
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
    "ScoreEnsemble",
    "ScoreError",
    "System",
    "VPLinear",
    "as_score",
    "denoising_loss",
    "divergence",
    "example",
    "extrapolation_map",
    "fokker_planck_residual",
    "from_diffusers",
    "from_k_diffusion",
    "gap_1d",
    "jacobian",
    "load_module",
    "load_score",
    "load_torchscript",
    "process_from_config",
    "quantum_potential",
    "save_score",
    "score_audit",
    "score_error",
    "system",
    "train_dsm",
    "train_ensemble",
]
