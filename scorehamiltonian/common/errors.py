"""The toolkit's exceptions.

Every error the toolkit raises on bad input is one of these, so that callers can catch
``ScoreHamiltonianError`` for all of them or a specific class for one failure. Each also
derives from the closest built-in exception (``ValueError``, ``TypeError`` ...), so code
written against the built-ins keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConvergenceError",
    "DataError",
    "InputDtypeError",
    "InputShapeError",
    "InsufficientMemoryError",
    "MixtureWeightsError",
    "NonFiniteScoreError",
    "NotDifferentiableError",
    "NotPositiveDefiniteError",
    "OutputError",
    "ResolutionError",
    "SamplesRequiredError",
    "ScheduleError",
    "ScoreHamiltonianError",
    "TimeRangeError",
]


class ScoreHamiltonianError(Exception):
    """Base class of every error raised by scorehamiltonian."""


class InputShapeError(ScoreHamiltonianError, ValueError):
    """An array has the wrong number of dimensions or a size that does not match."""


class InputDtypeError(ScoreHamiltonianError, TypeError):
    """An array has a dtype the computation cannot use (integer, bool, complex)."""


class TimeRangeError(ScoreHamiltonianError, ValueError):
    """A diffusion time lies outside the forward process's valid range (or is NaN)."""


class NonFiniteScoreError(ScoreHamiltonianError, FloatingPointError):
    """A score returned NaN or Inf; the message names the first x and t where it did."""


class NotPositiveDefiniteError(ScoreHamiltonianError, ValueError):
    """A covariance matrix is not symmetric positive definite (numerically)."""


class MixtureWeightsError(ScoreHamiltonianError, ValueError):
    """Mixture weights are negative, non-finite or do not sum to one."""


class NotDifferentiableError(ScoreHamiltonianError, TypeError):
    """Autograd was asked for, but the score's output does not depend differentiably on x."""


class CheckpointError(ScoreHamiltonianError, ValueError):
    """A checkpoint file is missing, unreadable or not a scorehamiltonian checkpoint."""


class OutputError(ScoreHamiltonianError, OSError):
    """A result or checkpoint file cannot be written (folder missing, unwritable or full);
    the message names the path and the reason, and nothing already written is damaged."""


class InsufficientMemoryError(ScoreHamiltonianError, MemoryError):
    """A grid job would need more memory than its device has free; the message gives both
    figures (:func:`~scorehamiltonian.spectral.memory.estimate_memory`). Raised before allocating."""


class ConvergenceError(ScoreHamiltonianError, RuntimeError):
    """An iterative solver did not reach the requested accuracy (raised where asked to)."""


class SamplesRequiredError(ScoreHamiltonianError, ValueError):
    """A sample-based estimator needs samples of p_t that the score cannot provide exactly."""


class ResolutionError(ScoreHamiltonianError, ValueError):
    """A grid is too coarse to resolve p_t: its sharpest mode spans less than one spacing."""


class ScheduleError(ScoreHamiltonianError, ValueError):
    """A sampling schedule is malformed: times not strictly monotone, non-finite, too few,
    or Langevin times of the wrong length, negative or non-finite."""


class ConfigError(ScoreHamiltonianError, ValueError):
    """A report configuration is malformed; the message names the field and what was expected."""


class DataError(ScoreHamiltonianError, ValueError):
    """A data file cannot be read as an (N, d) table of finite numbers (the message names it)."""
