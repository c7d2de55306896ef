"""One score interface: ``score(x, t) -> tensor`` with s_t(x) = grad_x log p_t(x).

x has shape (..., d); t is a float or a tensor broadcastable to x.shape[:-1]; the result has
x's shape, dtype and device. Every :class:`Score` checks its input (shape, dtype, t inside the
process's time range) and its output (shape, finiteness: NaN or Inf raises
:class:`NonFiniteScoreError` naming the first x and t where it appeared).

Network conventions (THEORY section 1), for X_t = alpha_t X_0 + sigma_t Z:
  epsilon-prediction  eps(x, c):  s = -eps / sigma_t
  x0-prediction       D(x, c):    s = (alpha_t D - x) / sigma_t^2
(k-diffusion / EDM denoisers D(x, sigma) are x0-predictors for an alpha = 1 process such as
:class:`EDM`, conditioned on ``time_input="sigma"``.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import torch

from ..common.errors import InputShapeError, TimeRangeError
from ..common.validation import broadcast_time, check_points, require_finite
from .mixture import GaussianMixture, MixtureEvaluation
from .processes import OU, ForwardProcess

__all__ = ["ExactScore", "ModelScore", "Score", "as_score"]

ScoreKind = Literal["score", "eps", "x0"]
TimeInput = Literal["t", "sigma", "log_snr"]


class Score(ABC):
    """Base class: a (possibly learned) score s_t(x) of a forward process.

    Attributes
    ----------
    process : the forward process whose times the score accepts.
    dim : the dimension d, or None when the score accepts any d.
    """

    process: ForwardProcess
    dim: int | None = None

    def prepare(self, x: Any, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Check x (shape (..., d), floating) and t (inside the time range); broadcast t."""
        x = check_points(x, self.dim)
        self.process.time(t)  # before broadcasting: an empty batch does not excuse a bad t
        return x, broadcast_time(t, x)

    def raw(self, x: Any, t: Any) -> torch.Tensor:
        """The score with input and shape checks but without the finiteness check."""
        return self._shape_checked(*self.prepare(x, t))

    def __call__(self, x: Any, t: Any) -> torch.Tensor:
        """s_t(x), shape of x; raises NonFiniteScoreError on NaN or Inf output."""
        x, t = self.prepare(x, t)
        out = self._shape_checked(x, t)
        require_finite(out, x, t)
        return out

    def _shape_checked(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self._evaluate(x, t)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputShapeError(
                f"{self!r} returned {shape} for x of shape {tuple(x.shape)}; a score must "
                "return a tensor of x's shape"
            )
        return out

    def compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype the score computes in when called with points of ``dtype``."""
        return dtype

    @abstractmethod
    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The score at checked x (..., d) and t (...,)."""


class ExactScore(Score):
    """The exact score of a Gaussian mixture noised by a forward process.

    ``ExactScore(mixture, process)(x, t)`` with x of shape (n, d) and t a float or a tensor
    of shape (n,) returns grad log p_t(x), shape (n, d), where
    p_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 S_k + sigma_t^2 I). Also gives log p_t and the
    exact divergence of the score.
    """

    def __init__(self, mixture: GaussianMixture, process: ForwardProcess | None = None) -> None:
        self.mixture = mixture
        self.process = process if process is not None else OU()
        self.dim = mixture.dim

    def __repr__(self) -> str:
        return f"ExactScore({self.mixture!r}, {self.process!r})"

    def evaluate(self, x: Any, t: Any) -> MixtureEvaluation:
        """log p_t(x), s_t(x) and div s_t(x) in one pass."""
        x, t = self.prepare(x, t)
        return self.mixture.evaluate(x, self.process.alpha(t), self.process.sigma(t))

    def log_prob(self, x: Any, t: Any) -> torch.Tensor:
        """log p_t(x) in nats, shape x.shape[:-1]."""
        return self.evaluate(x, t).log_prob

    def divergence(self, x: Any, t: Any) -> torch.Tensor:
        """Exact div s_t(x) = Laplacian log p_t(x), shape x.shape[:-1]."""
        return self.evaluate(x, t).divergence

    def marginal(self, t: float) -> GaussianMixture:
        """p_t as a :class:`GaussianMixture` (t a float)."""
        return self.mixture.marginal(self.process, t)

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.mixture.evaluate(x, self.process._alpha(t), self.process._sigma(t)).score


class ModelScore(Score):
    """A score read from a callable or torch module ``model(x, c)``.

    The model receives x of shape (..., d) and a conditioning tensor c of shape x.shape[:-1]:
    c = t, sigma_t or log-SNR lambda_t (``time_input``). Its output, of x's shape, is read as
    ``kind``: the score itself, an epsilon-prediction (s = -eps / sigma_t) or an
    x0-prediction / denoiser (s = (alpha_t D - x) / sigma_t^2). The eps and x0 kinds need
    sigma_t > 0. A torch module whose parameters have another dtype receives x and c cast to
    it; the score is returned in x's dtype.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        kind: ScoreKind = "score",
        process: ForwardProcess | None = None,
        time_input: TimeInput = "t",
        dim: int | None = None,
    ) -> None:
        if kind not in ("score", "eps", "x0"):
            raise ValueError(f"kind must be 'score', 'eps' or 'x0'; got {kind!r}")
        if time_input not in ("t", "sigma", "log_snr"):
            raise ValueError(f"time_input must be 't', 'sigma' or 'log_snr'; got {time_input!r}")
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t); got {type(model).__name__}")
        self.model, self.kind, self.time_input, self.dim = model, kind, time_input, dim
        self.process = process if process is not None else OU()

    def __repr__(self) -> str:
        name = getattr(self.model, "__name__", type(self.model).__name__)
        return f"ModelScore({name}, kind={self.kind!r}, process={self.process!r})"

    def compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of a torch module's parameters, else ``dtype``."""
        if isinstance(self.model, torch.nn.Module):
            for p in self.model.parameters():
                return p.dtype
        return dtype

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        proc = self.process
        sigma = proc._sigma(t)
        if self.kind != "score" and bool((sigma <= 0).any()):
            raise TimeRangeError(
                f"kind={self.kind!r} divides by sigma_t, which is 0 at t = "
                f"{float(t[sigma <= 0].flatten()[0])}; evaluate at t > {proc.t_min}"
            )
        cond = {"t": t, "sigma": sigma, "log_snr": 2.0 * (torch.log(proc._alpha(t)) - torch.log(sigma))}
        cond = cond[self.time_input]
        dtype = self.compute_dtype(x.dtype)
        out = self.model(x.to(dtype), cond.to(dtype))
        if not isinstance(out, torch.Tensor):
            raise InputShapeError(f"{self!r}: the model returned {type(out).__name__}, not a tensor")
        out = out.to(x.dtype)
        if self.kind == "eps":
            return -out / sigma[..., None]
        if self.kind == "x0":
            return (proc._alpha(t)[..., None] * out - x) / (sigma**2)[..., None]
        return out


def as_score(
    model: Score | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    kind: ScoreKind = "score",
    process: ForwardProcess | None = None,
    time_input: TimeInput = "t",
    dim: int | None = None,
) -> Score:
    """Wrap a callable or torch module ``model(x, c)`` as a :class:`Score`.

    A :class:`Score` is returned unchanged (then kind must be "score" and no process or
    dim may be given). See :class:`ModelScore` for the conventions of ``kind`` and
    ``time_input``; the process defaults to :class:`OU`.
    """
    if isinstance(model, Score):
        if kind != "score" or process is not None or dim is not None or time_input != "t":
            raise ValueError("as_score: a Score is already a score; pass it without options")
        return model
    return ModelScore(model, kind=kind, process=process, time_input=time_input, dim=dim)
