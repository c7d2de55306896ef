"""One score interface: ``score(x, t) -> tensor`` with s_t(x) = grad_x log p_t(x).

x has shape (..., d); t is a float or a tensor broadcastable to x.shape[:-1]; the result has
x's shape, dtype and device. Every :class:`Score` checks its input (shape, dtype, t inside the
process's time range) and its output (shape, finiteness: NaN or Inf raises
:class:`NonFiniteScoreError` naming the first x and t where it appeared).

What a score may know beyond itself, each said one way:

- an exact log-density: the score is a :class:`DensityScore` (``log_prob``, ``divergence``
  and ``evaluate``), as :class:`ExactScore` (a Gaussian mixture) and :class:`AnalyticScore`
  (any log p_t(x) written as a torch function, ``as_score(log_prob=...)``) are;
- samples: ``score.sample(n, t, generator)`` draws from p_t; an exact score samples its
  marginal, any other score samples the data attached with ``as_score(..., data=x0)``
  (samples of p_0, noised to t by the process), and without either raises
  :class:`SamplesRequiredError` naming ``data=``.

Network conventions (THEORY section 1), for X_t = alpha_t X_0 + sigma_t Z:
  epsilon-prediction  eps(x, c):  s = -eps / sigma_t
  x0-prediction       D(x, c):    s = (alpha_t D - x) / sigma_t^2
(k-diffusion / EDM denoisers D(x, sigma) are x0-predictors for an alpha = 1 process such as
:class:`EDM`, conditioned on ``time_input="sigma"``.)
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import torch

from ..common.errors import InputShapeError, SamplesRequiredError, TimeRangeError
from ..common.validation import as_float_tensor, broadcast_time, check_points, nonfinite_rows, require_finite
from .mixture import GaussianMixture, MixtureEvaluation
from .processes import OU, ForwardProcess

__all__ = ["AnalyticScore", "DensityScore", "ExactScore", "ExtrapolationWarning", "ModelScore", "Score", "as_score"]

ScoreKind = Literal["score", "eps", "x0"]
TimeInput = Literal["t", "sigma", "log_snr"]


class ExtrapolationWarning(UserWarning):
    """A learned score is evaluated where it was not trained (below its training t_min)."""


class Score(ABC):
    """Base class: a (possibly learned) score s_t(x) of a forward process.

    Attributes
    ----------
    process : the forward process whose times the score accepts.
    dim : the dimension d, or None when the score accepts any d.
    data : (N, d) samples of p_0 attached with ``as_score(..., data=x0)``, or None; what
        :meth:`sample` draws from when the score cannot sample its own marginal.
    t_trained : the smallest time a learned score was trained at (None: valid over the
        process's whole range); evaluating a :class:`ModelScore` below it warns
        (:class:`ExtrapolationWarning`).
    """

    process: ForwardProcess
    dim: int | None = None
    data: torch.Tensor | None = None
    t_trained: float | None = None

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

    @property
    def can_sample(self) -> bool:
        """Whether :meth:`sample` can draw from p_t (an exact marginal, or attached data)."""
        return self.data is not None

    @property
    def learned(self) -> bool:
        """Whether the score is a fitted model (a torch module), whose results carry a model error
        beside the numerical one; an analytic score (a log-density, a formula) is not."""
        return False

    def sample(self, n: int, t: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples of p_t, shape (n, d): rows of the attached ``data`` (drawn with replacement
        by ``generator``) noised to t, alpha_t x_0 + sigma_t z. Without data it raises
        :class:`SamplesRequiredError`: attach samples of p_0 with ``as_score(score, data=x0)``."""
        if self.data is None:
            raise SamplesRequiredError(
                f"{self!r} cannot sample p_t: attach samples of the data p_0 with as_score(score, data=x0) "
                "(an (N, d) tensor), or pass samples= to the function that needs them"
            )
        t = float(self.process.time(float(t)))
        x0 = self.data[torch.randint(0, self.data.shape[0], (int(n),), generator=generator)]
        noise = torch.randn(x0.shape, dtype=x0.dtype, generator=generator)
        return self.process.perturb(x0, t, noise)

    @abstractmethod
    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The score at checked x (..., d) and t (...,)."""


class DensityScore(Score):
    """A score whose log-density is known exactly: the one way a score says so.

    Subclasses implement :meth:`evaluate`, returning log p_t(x) (nats), s_t(x) and
    div s_t(x) in one pass. ``normalised``: whether log p_t integrates to one; when False it
    is exact up to a constant in x at each t (enough for the ground-state form of the
    operator and for energy differences, not for absolute energies).
    """

    normalised: bool = True

    @abstractmethod
    def evaluate(self, x: Any, t: Any) -> MixtureEvaluation:
        """log p_t(x) (...,), s_t(x) (..., d) and div s_t(x) (...,) in one pass."""

    def log_prob(self, x: Any, t: Any) -> torch.Tensor:
        """log p_t(x) in nats, shape x.shape[:-1] (up to a constant when not ``normalised``)."""
        return self.evaluate(x, t).log_prob

    def divergence(self, x: Any, t: Any) -> torch.Tensor:
        """Exact div s_t(x) = Laplacian log p_t(x), shape x.shape[:-1]."""
        return self.evaluate(x, t).divergence


class ExactScore(DensityScore):
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

    def marginal(self, t: float) -> GaussianMixture:
        """p_t as a :class:`GaussianMixture` (t a float)."""
        return self.mixture.marginal(self.process, t)

    @property
    def can_sample(self) -> bool:
        """Always: the marginal mixture is sampled exactly."""
        return True

    def sample(self, n: int, t: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws of p_t (its marginal mixture), shape (n, d)."""
        return self.marginal(float(t)).sample(int(n), generator)

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.mixture.evaluate(x, self.process._alpha(t), self.process._sigma(t)).score


class AnalyticScore(DensityScore):
    """The score of a log-density written as a torch function: ``log_prob(x, t)`` -> log p_t(x).

    ``log_prob`` takes x of shape (n, d) and t of shape (n,) and returns (n,), differentiable
    by autograd; the score is its gradient and the divergence its Laplacian (the trace of
    the Hessian, d backward passes: exact). It must be the log-density of the noised
    marginal p_t at every t it is asked for: a log-density known only for the data (t = 0)
    is the score of p_0 alone, to be asked at t_min only. ``normalised``:
    whether it integrates to one (default False: exact up to a constant in x).
    """

    def __init__(self, log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 process: ForwardProcess | None = None, dim: int | None = None, normalised: bool = False) -> None:
        if not callable(log_prob):
            raise TypeError(f"log_prob must be callable as log_prob(x, t); got {type(log_prob).__name__}")
        self.function, self.dim, self.normalised = log_prob, dim, bool(normalised)
        self.process = process if process is not None else OU()

    def __repr__(self) -> str:
        name = getattr(self.function, "__name__", type(self.function).__name__)
        return f"AnalyticScore({name}, process={self.process!r})"

    def _log_prob_and_score(self, x: torch.Tensor, t: torch.Tensor, create_graph: bool
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat, times = x.reshape(-1, x.shape[-1]), t.reshape(-1)
        with torch.enable_grad():
            leaf = flat.detach().requires_grad_(True)
            log_p = self._call(leaf, times)
            if not log_p.requires_grad:
                raise InputShapeError(f"{self!r}: log_prob does not depend differentiably on x (no autograd graph)")
            (score,) = torch.autograd.grad(log_p.sum(), leaf, create_graph=create_graph)
        return leaf, log_p, score

    def evaluate(self, x: Any, t: Any) -> MixtureEvaluation:
        """log p_t(x), s_t(x) = grad log p_t and div s_t(x) = trace of the Hessian, by autograd
        (a score that does not depend on x, log p linear in x, has divergence 0)."""
        x, t = self.prepare(x, t)
        leaf, log_p, score = self._log_prob_and_score(x, t, create_graph=True)
        div = torch.zeros(leaf.shape[0], dtype=leaf.dtype, device=leaf.device)
        if score.requires_grad:
            with torch.enable_grad():
                for i in range(leaf.shape[1]):
                    (row,) = torch.autograd.grad(score[:, i].sum(), leaf, retain_graph=True, allow_unused=True)
                    div = div if row is None else div + row[:, i]
        shape = x.shape[:-1]
        return MixtureEvaluation(log_p.detach().reshape(shape), score.detach().reshape(x.shape),
                                 div.detach().reshape(shape))

    def log_prob(self, x: Any, t: Any) -> torch.Tensor:
        """log p_t(x) from the function alone (no derivatives), shape x.shape[:-1]."""
        x, t = self.prepare(x, t)
        with torch.no_grad():
            return self._call(x.reshape(-1, x.shape[-1]), t.reshape(-1)).reshape(x.shape[:-1])

    def _call(self, flat: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """The function at points (n, d) and times (n,), checked to return (n,)."""
        log_p = self.function(flat, times)
        if not isinstance(log_p, torch.Tensor) or log_p.shape != times.shape:
            shape = tuple(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
            raise InputShapeError(f"{self!r}: log_prob returned {shape} for x of shape {tuple(flat.shape)}; "
                                  f"expected ({flat.shape[0]},)")
        return log_p

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._log_prob_and_score(x, t, create_graph=x.requires_grad)[2].reshape(x.shape)


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

    @property
    def learned(self) -> bool:
        """A torch module is a fitted model; a plain callable is taken as an analytic score."""
        return isinstance(self.model, torch.nn.Module)

    def compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of a torch module's parameters, else ``dtype``."""
        if isinstance(self.model, torch.nn.Module):
            for p in self.model.parameters():
                return p.dtype
        return dtype

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        proc = self.process
        if self.t_trained is not None and bool((t < self.t_trained * (1 - 1e-12)).any()):
            warnings.warn(f"{self!r} is evaluated below its training t_min = {self.t_trained:g}: the model never "
                          "saw those times and its score there is an extrapolation", ExtrapolationWarning,
                          stacklevel=4)
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
    model: Score | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    kind: ScoreKind = "score",
    process: ForwardProcess | None = None,
    time_input: TimeInput = "t",
    dim: int | None = None,
    *,
    log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    normalised: bool = False,
    data: Any = None,
) -> Score:
    """Wrap a callable or torch module ``model(x, c)``, or a log-density, as a :class:`Score`.

    - ``model``: a network or callable read by :class:`ModelScore` (see it for ``kind`` and
      ``time_input``); the process defaults to :class:`OU`.
    - ``log_prob=`` instead of a model: an :class:`AnalyticScore` (log p_t(x) as a torch
      function of (x, t); ``normalised`` says whether it integrates to one).
    - A :class:`Score` is returned unchanged (then kind must be "score" and no process, dim
      or log_prob may be given).

    ``data``: (N, d) samples of p_0 attached to the score (a copy of a given :class:`Score`),
    from which :meth:`Score.sample` draws samples of p_t where the score has no sampler of
    its own. NaN or infinite rows, or a dimension other than the score's, raise
    :class:`InputShapeError`.
    """
    if log_prob is not None:
        if model is not None or kind != "score" or time_input != "t":
            raise ValueError("as_score: pass either a model or log_prob=, not both")
        score: Score = AnalyticScore(log_prob, process, dim, normalised)
    elif isinstance(model, Score):
        if kind != "score" or process is not None or dim is not None or time_input != "t":
            raise ValueError("as_score: a Score is already a score; pass it without options (data= excepted)")
        score = copy.copy(model) if data is not None else model
    elif model is None:
        raise TypeError("as_score needs a model (a callable or torch module) or log_prob=")
    else:
        score = ModelScore(model, kind=kind, process=process, time_input=time_input, dim=dim)
    if data is not None:
        score.data = _checked_data(data, score.dim)
    return score


def _checked_data(data: Any, dim: int | None) -> torch.Tensor:
    """Samples of p_0 as a float tensor (N, d), finite, of the score's dimension."""
    x = as_float_tensor(data, "data")
    if x.ndim != 2 or x.shape[0] < 1 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, d)"
        raise InputShapeError(f"data must have shape {want}; got {tuple(x.shape)}")
    problem = nonfinite_rows(x)
    if problem:
        raise InputShapeError(f"data contain {problem}")
    return x
