"""Forward (noising) processes X_t = alpha_t X_0 + sigma_t Z, Z ~ N(0, I) (THEORY section 1).

The SDE is dX = f(t) X dt + g(t) dW with f = d(log alpha)/dt and
g^2 = d(sigma^2)/dt - 2 f sigma^2. Every method takes t as a float or a tensor (any shape,
any device) and returns a tensor of the same shape, float64 unless t is a tensor of another
floating dtype. Times outside [t_min, t_max] (or NaN) raise :class:`TimeRangeError`.

The log signal-to-noise ratio is lambda(t) = log(alpha_t^2 / sigma_t^2); "sigma" in the
conversions is the process's own sigma_t (for variance-preserving processes the k-diffusion
/ EDM noise level of the rescaled variable x / alpha_t is sigma_t / alpha_t = exp(-lambda/2)).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from ..common.errors import TimeRangeError
from ..common.validation import as_float_tensor

__all__ = ["EDM", "OU", "PROCESS_NAMES", "VE", "ForwardProcess", "VPLinear", "process_from_config"]


class ForwardProcess(ABC):
    """A linear Gaussian noising process with closed-form alpha_t and sigma_t.

    Subclasses set ``t_min`` and ``t_max`` and implement the closed forms. Units: t is the
    process's own time (dimensionless); sigma_t is in the units of x.
    """

    t_min: float = 0.0
    t_max: float

    def time(self, t: Any) -> torch.Tensor:
        """``t`` as a float tensor, checked to lie in [t_min, t_max]."""
        t = as_float_tensor(t, "t")
        outside = ~((t >= self.t_min) & (t <= self.t_max))
        if bool(outside.any()):
            bad = float(t[outside].flatten()[0])
            raise TimeRangeError(
                f"t = {bad!r} lies outside the valid time range [{self.t_min}, {self.t_max}] "
                f"of {self!r}"
            )
        return t

    def alpha(self, t: Any) -> torch.Tensor:
        """Signal scale alpha_t (dimensionless)."""
        return self._alpha(self.time(t))

    def sigma(self, t: Any) -> torch.Tensor:
        """Noise scale sigma_t (units of x)."""
        return self._sigma(self.time(t))

    def dalpha(self, t: Any) -> torch.Tensor:
        """d alpha_t / dt."""
        return self._dalpha(self.time(t))

    def dsigma(self, t: Any) -> torch.Tensor:
        """d sigma_t / dt (infinite at t = 0 for the variance-preserving processes)."""
        return self._dsigma(self.time(t))

    def f(self, t: Any) -> torch.Tensor:
        """Drift coefficient f(t) = d(log alpha_t)/dt of dX = f X dt + g dW."""
        return self._f(self.time(t))

    def g2(self, t: Any) -> torch.Tensor:
        """Squared diffusion coefficient g(t)^2 = d(sigma_t^2)/dt - 2 f(t) sigma_t^2."""
        return self._g2(self.time(t))

    def df(self, t: Any) -> torch.Tensor:
        """d f / dt."""
        return self._df(self.time(t))

    def dg2(self, t: Any) -> torch.Tensor:
        """d g^2 / dt."""
        return self._dg2(self.time(t))

    def log_snr(self, t: Any) -> torch.Tensor:
        """Log signal-to-noise ratio lambda(t) = log(alpha_t^2 / sigma_t^2), decreasing in t."""
        t = self.time(t)
        return 2.0 * (torch.log(self._alpha(t)) - torch.log(self._sigma(t)))

    def sigma_to_t(self, sigma: Any) -> torch.Tensor:
        """The time t at which sigma_t equals ``sigma`` (inverse of :meth:`sigma`)."""
        sigma = as_float_tensor(sigma, "sigma")
        lo, hi = self._sigma(torch.tensor([self.t_min, self.t_max], dtype=sigma.dtype))
        rel = 1e-12
        if bool((~((sigma >= lo * (1 - rel)) & (sigma <= hi * (1 + rel)))).any()):
            raise TimeRangeError(
                f"sigma must lie in [{float(lo)}, {float(hi)}] for {self!r}; got values outside it"
            )
        return self._sigma_to_t(sigma).clamp(self.t_min, self.t_max)

    def log_snr_to_t(self, log_snr: Any) -> torch.Tensor:
        """The time t at which log_snr(t) equals ``log_snr`` (inverse of :meth:`log_snr`)."""
        lam = as_float_tensor(log_snr, "log_snr")
        if bool(torch.isnan(lam).any()):
            raise TimeRangeError("log_snr contains NaN")
        t = self._log_snr_to_t(lam)
        tol = 1e-12 * max(1.0, abs(self.t_max))
        if bool(((t < self.t_min - tol) | (t > self.t_max + tol)).any()):
            raise TimeRangeError(
                f"log_snr values map outside the time range [{self.t_min}, {self.t_max}] "
                f"of {self!r}"
            )
        return t.clamp(self.t_min, self.t_max)

    def perturb(self, x0: torch.Tensor, t: Any, noise: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t noise, with t of shape x0.shape[:-1] or broadcastable."""
        t = self.time(as_float_tensor(t, "t", dtype=x0.dtype, device=x0.device))
        return self._alpha(t)[..., None] * x0 + self._sigma(t)[..., None] * noise

    def config(self) -> dict[str, Any]:
        """Plain-data description (name and parameters) from which the process is rebuilt."""
        return {"name": type(self).__name__, "params": dict(self._params())}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ForwardProcess) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(repr(self))

    @abstractmethod
    def _params(self) -> list[tuple[str, float]]: ...

    @abstractmethod
    def _alpha(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _dalpha(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _dsigma(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _f(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _g2(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _df(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _dg2(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _log_snr_to_t(self, lam: torch.Tensor) -> torch.Tensor: ...


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return value


class OU(ForwardProcess):
    """Ornstein-Uhlenbeck (variance-preserving, unit rate): the toolkit's default.

    alpha_t = e^{-t}, sigma_t = sqrt(1 - e^{-2t}), f = -1, g^2 = 2, t in [0, T].
    lambda(t) = -log(e^{2t} - 1).
    """

    def __init__(self, T: float = 10.0) -> None:
        self.t_max = _positive("T", T)

    def _params(self) -> list[tuple[str, float]]:
        return [("T", self.t_max)]

    def _alpha(self, t):
        return torch.exp(-t)

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(-2.0 * t))

    def _dalpha(self, t):
        return -torch.exp(-t)

    def _dsigma(self, t):
        return torch.exp(-2.0 * t) / self._sigma(t)

    def _f(self, t):
        return torch.full_like(t, -1.0)

    def _g2(self, t):
        return torch.full_like(t, 2.0)

    def _df(self, t):
        return torch.zeros_like(t)

    def _dg2(self, t):
        return torch.zeros_like(t)

    def log_snr(self, t: Any) -> torch.Tensor:
        return -torch.log(torch.expm1(2.0 * self.time(t)))

    def _sigma_to_t(self, sigma):
        return -0.5 * torch.log1p(-(sigma**2))

    def _log_snr_to_t(self, lam):
        return 0.5 * torch.nn.functional.softplus(-lam)


class VPLinear(ForwardProcess):
    """Variance-preserving process with a linear beta schedule (Song et al. 2021).

    beta(t) = b_min + t (b_max - b_min), B(t) = int_0^t beta = b_min t + (b_max - b_min) t^2 / 2,
    alpha_t = e^{-B/2}, sigma_t = sqrt(1 - e^{-B}), f = -beta/2, g^2 = beta, t in [0, T].
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        self.beta_min = _positive("beta_min", beta_min)
        self.beta_max = _positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")
        self.t_max = _positive("T", T)

    def _params(self) -> list[tuple[str, float]]:
        return [("beta_min", self.beta_min), ("beta_max", self.beta_max), ("T", self.t_max)]

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _integral(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _alpha(self, t):
        return torch.exp(-0.5 * self._integral(t))

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._integral(t)))

    def _dalpha(self, t):
        return -0.5 * self._beta(t) * self._alpha(t)

    def _dsigma(self, t):
        return 0.5 * self._beta(t) * torch.exp(-self._integral(t)) / self._sigma(t)

    def _f(self, t):
        return -0.5 * self._beta(t)

    def _g2(self, t):
        return self._beta(t)

    def _df(self, t):
        return torch.full_like(t, -0.5 * (self.beta_max - self.beta_min))

    def _dg2(self, t):
        return torch.full_like(t, self.beta_max - self.beta_min)

    def log_snr(self, t: Any) -> torch.Tensor:
        return -torch.log(torch.expm1(self._integral(self.time(t))))

    def _time_of_integral(self, integral):
        # Root of (b_max - b_min)/2 t^2 + b_min t - B = 0 in the cancellation-free form.
        slope = self.beta_max - self.beta_min
        return 2.0 * integral / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * slope * integral))

    def _sigma_to_t(self, sigma):
        return self._time_of_integral(-torch.log1p(-(sigma**2)))

    def _log_snr_to_t(self, lam):
        return self._time_of_integral(torch.nn.functional.softplus(-lam))


class VE(ForwardProcess):
    """Variance-exploding process: alpha_t = 1, sigma_t = s_min (s_max / s_min)^t, t in [0, 1].

    f = 0, g^2 = d(sigma^2)/dt = 2 sigma_t^2 log(s_max / s_min). Note sigma_0 = s_min > 0.
    """

    t_max = 1.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        self.sigma_min = _positive("sigma_min", sigma_min)
        self.sigma_max = _positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min})")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _params(self) -> list[tuple[str, float]]:
        return [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)]

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return self.sigma_min * torch.exp(self._log_ratio * t)

    def _dalpha(self, t):
        return torch.zeros_like(t)

    def _dsigma(self, t):
        return self._log_ratio * self._sigma(t)

    def _f(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        return 2.0 * self._log_ratio * self._sigma(t) ** 2

    def _df(self, t):
        return torch.zeros_like(t)

    def _dg2(self, t):
        return 4.0 * self._log_ratio**2 * self._sigma(t) ** 2

    def _sigma_to_t(self, sigma):
        return torch.log(sigma / self.sigma_min) / self._log_ratio

    def _log_snr_to_t(self, lam):
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio


class EDM(ForwardProcess):
    """The EDM process (Karras et al. 2022): alpha_t = 1, sigma_t = t, t in [0, sigma_max].

    f = 0, g^2 = 2 t, so time and noise level coincide and a denoiser D(x, sigma) is
    conditioned directly on t.
    """

    def __init__(self, sigma_max: float = 80.0) -> None:
        self.t_max = _positive("sigma_max", sigma_max)

    def _params(self) -> list[tuple[str, float]]:
        return [("sigma_max", self.t_max)]

    def _alpha(self, t):
        return torch.ones_like(t)

    def _sigma(self, t):
        return t.clone()

    def _dalpha(self, t):
        return torch.zeros_like(t)

    def _dsigma(self, t):
        return torch.ones_like(t)

    def _f(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        return 2.0 * t

    def _df(self, t):
        return torch.zeros_like(t)

    def _dg2(self, t):
        return torch.full_like(t, 2.0)

    def _sigma_to_t(self, sigma):
        return sigma.clone()

    def _log_snr_to_t(self, lam):
        return torch.exp(-0.5 * lam)


_PROCESSES = {cls.__name__: cls for cls in (OU, VPLinear, VE, EDM)}
#: The processes by the short names of the command line and of report configurations
#: (each built with its default parameters).
PROCESS_NAMES: dict[str, type[ForwardProcess]] = {"ou": OU, "vp-linear": VPLinear, "ve": VE, "edm": EDM}


def process_from_config(config: dict[str, Any]) -> ForwardProcess:
    """Rebuild a process from :meth:`ForwardProcess.config` output."""
    try:
        cls = _PROCESSES[config["name"]]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown process config {config!r}; expected a name in {sorted(_PROCESSES)}"
        ) from None
    return cls(**config.get("params", {}))
