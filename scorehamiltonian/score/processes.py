"""Forward (noising) processes X_t = alpha_t X_0 + sigma_t Z, Z ~ N(0, I) (THEORY section 1).

The SDE is dX = f(t) X dt + g(t) dW with f = d(log alpha)/dt and
g^2 = d(sigma^2)/dt - 2 f sigma^2. Every method takes t as a float or a tensor (any shape,
any device) and returns a tensor of the same shape, float64 unless t is a tensor of another
floating dtype. Times outside [t_min, t_max] (or NaN) raise :class:`TimeRangeError`.

The log signal-to-noise ratio is lambda(t) = log(alpha_t^2 / sigma_t^2); "sigma" in the
conversions is the process's own sigma_t (for variance-preserving processes the k-diffusion
/ EDM noise level of the rescaled variable x / alpha_t is sigma_t / alpha_t = exp(-lambda/2)).

Discrete schedules (diffusers, DDPM-style tables): a network trained on timesteps n = 0 .. N-1
with x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) z (abar = ``alphas_cumprod``) is read on
:class:`DiscreteVP`, whose time is t = n / (N - 1) in [0, 1] (timestep n = t (N - 1)), with
alpha_t^2 = abar(t) and sigma_t^2 = 1 - abar(t). At the grid times t_n = n / (N - 1) the
process is the table exactly; between them -log abar is interpolated by the monotone cubic
of Fritsch and Carlson in t (see the class), and the network is conditioned on the fractional
timestep t (N - 1). t = 0 is the first timestep, not the clean data: sigma_0 = sqrt(1 - abar_0) > 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from ..common.errors import TimeRangeError
from ..common.validation import as_float_tensor

__all__ = ["EDM", "OU", "PROCESS_NAMES", "VE", "DiscreteVP", "ForwardProcess", "VPLinear", "process_from_config"]


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


class DiscreteVP(ForwardProcess):
    """The variance-preserving process of a discrete table abar_n = ``alphas_cumprod[n]``, n = 0 .. N-1.

    Time t = n / (N - 1) in [0, 1] (timestep n = t (N - 1), :meth:`t_to_timestep`). With
    L(t) = -log abar(t), the monotone piecewise cubic Hermite interpolant through the knots
    (t_n, -log abar_n) with the slopes of Fritsch and Carlson (PCHIP: the harmonic mean of the
    two adjacent secants) at inner knots and the adjacent secant at the two ends (positive,
    where PCHIP's three-point end rule can give 0):

        alpha_t = exp(-L / 2),  sigma_t = sqrt(1 - exp(-L)),  f = -L' / 2,  g^2 = L',
        df = -L'' / 2,  dg^2 = L'',  lambda(t) = -log(e^L - 1),

    so alpha_t^2 + sigma_t^2 = 1 and g^2 is the continuous beta(t) (about (N - 1) beta_n of
    the table). At the knots alpha and sigma are the table's exactly; L' is continuous and
    positive (every slope lies in (0, 2 x secant], inside the Fritsch-Carlson monotonicity
    region), L'' jumps at the knots (there the value of the interval to the right is
    returned). L is strictly increasing, so sigma_to_t and log_snr_to_t invert it (by bisection
    in the knot interval, to float64 resolution). Tables come from diffusers schedulers
    (``scheduler.alphas_cumprod``), DDPM code or k-diffusion's ``DiscreteSchedule``.

    Parameters
    ----------
    alphas_cumprod : N >= 2 numbers, 0 < abar_n <= 1, strictly decreasing (a zero terminal
        SNR, abar_{N-1} = 0, has no finite log-SNR and is refused).
    """

    t_max = 1.0

    def __init__(self, alphas_cumprod: Any) -> None:
        table = as_float_tensor(alphas_cumprod, "alphas_cumprod", dtype=torch.float64, device="cpu")
        if table.ndim != 1 or table.numel() < 2:
            raise ValueError(f"alphas_cumprod must be a 1D table of N >= 2 values; got shape {tuple(table.shape)}")
        bad = ~(torch.isfinite(table) & (table > 0) & (table <= 1))
        if bool(bad.any()):
            n = int(torch.nonzero(bad)[0])
            raise ValueError(f"alphas_cumprod[{n}] = {float(table[n])!r}: every entry must lie in (0, 1]")
        flat = table[1:] >= table[:-1]
        if bool(flat.any()):
            n = int(torch.nonzero(flat)[0]) + 1
            raise ValueError(f"alphas_cumprod must decrease strictly; alphas_cumprod[{n}] = {float(table[n])!r} "
                             f">= alphas_cumprod[{n - 1}] = {float(table[n - 1])!r}")
        self.alphas_cumprod = tuple(float(v) for v in table)
        self._knots = -torch.log(table)
        step = self._knots[1:] - self._knots[:-1]  # > 0: the secants, per timestep
        inner = 2 * step[:-1] * step[1:] / (step[:-1] + step[1:])
        self._slopes = torch.cat([step[:1], inner, step[-1:]])

    @property
    def num_train_timesteps(self) -> int:
        """N, the length of the table."""
        return len(self.alphas_cumprod)

    def t_to_timestep(self, t: Any) -> torch.Tensor:
        """The (fractional) timestep n = t (N - 1) of time t."""
        return self.time(t) * (self.num_train_timesteps - 1)

    def timestep_to_t(self, timestep: Any) -> torch.Tensor:
        """The time t = n / (N - 1) of timestep n in [0, N - 1] (checked)."""
        return self.time(as_float_tensor(timestep, "timestep") / (self.num_train_timesteps - 1))

    def _params(self) -> list[tuple[str, Any]]:
        return [("alphas_cumprod", list(self.alphas_cumprod))]

    def __repr__(self) -> str:
        table = self.alphas_cumprod
        return f"DiscreteVP(N={len(table)}, alphas_cumprod=[{table[0]!r}, ..., {table[-1]!r}])"

    def _hermite(self, k: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L and its first two derivatives in the timestep n, at n = k + u (u in [0, 1])."""
        knots, slopes = self._knots.to(u), self._slopes.to(u)
        l0, m0, m1 = knots[k], slopes[k], slopes[k + 1]
        rise = knots[k + 1] - l0
        c2, c3 = 3 * rise - 2 * m0 - m1, m0 + m1 - 2 * rise
        return l0 + u * (m0 + u * (c2 + u * c3)), m0 + u * (2 * c2 + 3 * u * c3), 2 * c2 + 6 * u * c3

    def _curve(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L(t), L'(t), L''(t)."""
        scale = self.num_train_timesteps - 1
        n = t * scale
        k = torch.floor(n.detach()).clamp(0, scale - 1).long()
        value, d1, d2 = self._hermite(k, n - k.to(n))
        return value, d1 * scale, d2 * scale**2

    def _alpha(self, t):
        return torch.exp(-0.5 * self._curve(t)[0])

    def _sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._curve(t)[0]))

    def _dalpha(self, t):
        value, d1, _ = self._curve(t)
        return -0.5 * d1 * torch.exp(-0.5 * value)

    def _dsigma(self, t):
        value, d1, _ = self._curve(t)
        return 0.5 * d1 * torch.exp(-value) / torch.sqrt(-torch.expm1(-value))

    def _f(self, t):
        return -0.5 * self._curve(t)[1]

    def _g2(self, t):
        return self._curve(t)[1]

    def _df(self, t):
        return -0.5 * self._curve(t)[2]

    def _dg2(self, t):
        return self._curve(t)[2]

    def log_snr(self, t: Any) -> torch.Tensor:
        return -torch.log(torch.expm1(self._curve(self.time(t))[0]))

    def _time_of_curve(self, target: torch.Tensor) -> torch.Tensor:
        """The t with L(t) = target: bisection in the knot interval; beyond the table, the
        end secants continue L linearly (giving times outside [0, 1] for the range checks)."""
        knots = self._knots.to(target)
        scale = self.num_train_timesteps - 1
        k = (torch.searchsorted(knots, target.contiguous(), right=True) - 1).clamp(0, scale - 1)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(60):  # 2^-60 of an interval: below float64 resolution of t
            mid = 0.5 * (lo + hi)
            below = self._hermite(k, mid)[0] < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        n = k + 0.5 * (lo + hi)
        n = torch.where(target < knots[0], (target - knots[0]) / (knots[1] - knots[0]), n)
        n = torch.where(target > knots[-1], scale + (target - knots[-1]) / (knots[-1] - knots[-2]), n)
        return n / scale

    def _sigma_to_t(self, sigma):
        return self._time_of_curve(-torch.log1p(-(sigma**2)))

    def _log_snr_to_t(self, lam):
        return self._time_of_curve(torch.nn.functional.softplus(-lam))


_PROCESSES = {cls.__name__: cls for cls in (OU, VPLinear, VE, EDM, DiscreteVP)}
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
