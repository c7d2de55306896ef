"""The spectral engine: the Score Hamiltonian H_t = -Laplacian + V_t and its lowest eigenvalues.

THEORY sections 2 and 6. Route (a), grids in d <= 3, and route (b), sample-based
Rayleigh-Ritz in any d; every eigenvalue comes with a residual, an error bound and a
convergence flag.

- ``grid``: boxes and regular grids (:class:`Grid`, :func:`box_from_score`, ...).
- ``operator``: :class:`ScoreHamiltonian`, the matrix-free operator on a grid (potential or
  ground-state form), built on the compiled kernels of ``stencil``.
- ``eigensolvers``: :func:`spectrum`, the k lowest eigenvalues with error bounds, dispatching to
  ``lobpcg`` (default), ``lanczos`` (block Lanczos, ARPACK) with the ``preconditioners`` and
  the geometric ``multigrid`` (grid ``transfer``); ``blocks`` and ``ritz_update`` hold the
  block linear algebra, ``solution`` the final check every solver ends with.
- ``gap``: :func:`spectral_gap`, lambda_1 refined over grids to a requested accuracy.
- ``profiles``: :func:`gap_profile`, the gap and the adiabatic speed over many times (adaptive
  by the Gaussian process of ``gp``, checkpointed); ``speed``: :func:`adiabatic_speed`.
- ``ritz``: :func:`ritz_gap`, upper bounds on the gap from samples (bases in ``ritz_basis``).
- ``batch``: several times on one grid in one batched solve (:func:`batch_spectrum`).
- ``memory``: what a grid job will hold, checked before allocating (:func:`estimate_memory`).
"""

from .batch import HamiltonianBatch, batch_spectrum
from .eigensolvers import spectrum
from .gap import GapLevel, GapResult, spectral_gap
from .grid import Grid, box_from_mixture, box_from_samples, box_from_score, box_over_times
from .memory import MemoryEstimate, available_memory, estimate_memory
from .operator import BoundaryMassWarning, ResolutionWarning, ScoreHamiltonian
from .profiles import GapProfile, gap_profile
from .ritz import RitzResult, ritz_gap
from .solution import ConvergenceWarning, SpectrumResult
from .speed import AdiabaticSpeed, adiabatic_speed

__all__ = [
    "AdiabaticSpeed",
    "BoundaryMassWarning",
    "ConvergenceWarning",
    "GapLevel",
    "GapProfile",
    "GapResult",
    "Grid",
    "HamiltonianBatch",
    "MemoryEstimate",
    "ResolutionWarning",
    "RitzResult",
    "ScoreHamiltonian",
    "SpectrumResult",
    "adiabatic_speed",
    "available_memory",
    "batch_spectrum",
    "box_from_mixture",
    "box_from_samples",
    "box_from_score",
    "box_over_times",
    "estimate_memory",
    "gap_profile",
    "ritz_gap",
    "spectral_gap",
    "spectrum",
]
