"""Denoising score matching for low-dimensional data, and checkpoints of the trained scores.

A small MLP predicts the noise eps of X_t = alpha_t X_0 + sigma_t Z (THEORY section 1) and is
read as a score through ``ModelScore(mlp, kind="eps")``: s_t(x) = -eps_theta(x, t) / sigma_t.

Preconditioning (EDM-style, Karras et al. 2022). With m and v the per-coordinate mean and
variance of the training data and V_t = alpha_t^2 v + sigma_t^2 the variance of X_t,

    eps_theta(x, t) = sigma_t (x - alpha_t m) / V_t + N((x - alpha_t m) / sqrt(V_t), e(lambda_t)),

i.e. the exact epsilon of the Gaussian N(m, diag v) plus a learned residual N (an MLP with
SiLU activations whose output layer starts at zero). The network sees unit-variance inputs
at every t and only has to learn the non-Gaussian part of the data, which vanishes as t
grows. The time enters through the log-SNR lambda_t = log(alpha_t^2 / sigma_t^2), mapped
affinely to u in [-1, 1] over the training range and embedded as e = [u, sin(k pi u / 2),
cos(k pi u / 2), k = 1..n_freq]; it shifts the first layer and scales its response to x
(see :class:`MLPScore`).

Checkpoints hold plain data only (a format tag, a version, the config of plain Python types
and the state_dict) and are read with ``torch.load(weights_only=True)``, so loading one never
runs code from the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..common.errors import CheckpointError, InputShapeError
from ..common.files import atomic_write
from ..common.validation import check_points
from .interface import ModelScore
from .processes import OU, ForwardProcess, process_from_config

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "MLPScore", "load_score", "save_score", "train_dsm"]

CHECKPOINT_FORMAT = "scorehamiltonian.mlp_score"
CHECKPOINT_VERSION = 1
_CHECKPOINT_KEYS = {"format", "version", "config", "training", "state_dict"}
_CONFIG_KEYS = (
    "dim", "hidden", "depth", "process_config", "data_mean", "data_std",
    "log_snr_min", "log_snr_max", "n_freq",
)
_LOG_REL_SNR_FLOOR = -6.0


class MLPScore(torch.nn.Module):
    """Epsilon-predicting MLP eps_theta(x, t) for the forward process of ``process_config``.

    ``forward(x, t)`` takes x of shape (..., d) (in the parameters' dtype) and t of shape
    x.shape[:-1] (the process's own time, any floating dtype) and returns the predicted noise,
    shape (..., d), dimensionless (units of Z):

        eps_theta(x, t) = sigma_t c_in y + W_out h_depth + b_out,
        y = c_in (x - alpha_t m),   c_in = (alpha_t^2 v + sigma_t^2)^{-1/2}   (per coordinate),
        h_1 = SiLU( (W_x y) * exp(G e) + W_e e + b_1 ),   h_{l+1} = SiLU(W_l h_l + b_l),

    with e the time embedding of the module docstring. The first term is the exact epsilon of
    the Gaussian N(m, diag v); the network learns the rest. The gain exp(G e) lets each first
    layer unit sharpen or flatten its response to y with t (the posterior over x0 turns from
    smooth to step-like as the noise falls). G and the output layer start at zero, so the
    untrained module is the Gaussian baseline.

    The schedule alpha_t, sigma_t, lambda_t is computed in float64 from t clamped to
    [t_min, t_max] (float32 rounding of a valid t stays valid); u is clamped to [-1, 1], so
    outside [log_snr_min, log_snr_max] the network sees the embedding of the nearest end.
    Range checks and the sigma_t > 0 requirement are left to :class:`ModelScore`, which wraps
    the module as the score s = -eps / sigma_t.

    Parameters (plain values only, so that ``MLPScore(**mlp.config)`` rebuilds the module)
    ----------
    dim : dimension d of x.
    hidden : width of the hidden layers.
    depth : number of hidden layers, >= 1.
    process_config : ``ForwardProcess.config()`` of the process (OU when None).
    data_mean, data_std : per-coordinate mean m and standard deviation sqrt(v) of the data
        (units of x; length d, or length 1 to broadcast). Defaults 0 and 1.
    log_snr_min, log_snr_max : the lambda range mapped to u in [-1, 1].
    n_freq : number of sine/cosine pairs in the time embedding.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 32,
        depth: int = 3,
        process_config: dict[str, Any] | None = None,
        data_mean: Sequence[float] | None = None,
        data_std: Sequence[float] | None = None,
        log_snr_min: float = -10.0,
        log_snr_max: float = 10.0,
        n_freq: int = 2,
    ) -> None:
        super().__init__()
        dim = _int_at_least("dim", dim, 1)
        hidden = _int_at_least("hidden", hidden, 1)
        depth = _int_at_least("depth", depth, 1)
        n_freq = _int_at_least("n_freq", n_freq, 0)
        process_config = process_config if process_config is not None else OU().config()
        self.process = process_from_config(process_config)
        mean = [float(v) for v in (data_mean if data_mean is not None else [0.0])]
        std = [float(v) for v in (data_std if data_std is not None else [1.0])]
        for name, values in (("data_mean", mean), ("data_std", std)):
            if len(values) not in (1, dim) or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must hold 1 or dim = {dim} finite numbers; got {values}")
        if min(std) < 0:
            raise ValueError(f"data_std must be non-negative; got {std}")
        log_snr_min, log_snr_max = float(log_snr_min), float(log_snr_max)
        if not (math.isfinite(log_snr_min) and math.isfinite(log_snr_max) and log_snr_min < log_snr_max):
            raise ValueError(f"need finite log_snr_min < log_snr_max; got {log_snr_min}, {log_snr_max}")
        self.config: dict[str, Any] = {
            "dim": dim,
            "hidden": hidden,
            "depth": depth,
            "process_config": process_config,
            "data_mean": mean,
            "data_std": std,
            "log_snr_min": log_snr_min,
            "log_snr_max": log_snr_max,
            "n_freq": n_freq,
        }
        self.training_config: dict[str, Any] | None = None
        self.dim, self.hidden = dim, hidden
        self.register_buffer("data_mean", torch.tensor(mean, dtype=torch.float64), persistent=False)
        self.register_buffer("data_var", torch.tensor(std, dtype=torch.float64) ** 2, persistent=False)
        self.register_buffer(
            "freqs", 0.5 * math.pi * torch.arange(1, n_freq + 1, dtype=torch.float64), persistent=False
        )
        self.x_layer = torch.nn.Linear(dim, hidden, bias=False)
        self.time_layer = torch.nn.Linear(1 + 2 * n_freq, 2 * hidden)
        with torch.no_grad():
            self.time_layer.weight[hidden:].zero_()
            self.time_layer.bias[hidden:].zero_()
        self.hidden_layers = torch.nn.ModuleList(torch.nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = torch.nn.Linear(hidden, dim)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t (float64, shape of t) and the embedding e, shape t.shape + (1 + 2 n_freq,).

        e = [u, sin(k pi u / 2), cos(k pi u / 2) for k = 1..n_freq] with
        u = (2 lambda_t - log_snr_max - log_snr_min) / (log_snr_max - log_snr_min) clamped to
        [-1, 1], lambda_t = log(alpha_t^2 / sigma_t^2).
        """
        proc = self.process
        t = t.to(dtype=torch.float64).clamp(proc.t_min, proc.t_max)
        alpha, sigma = proc._alpha(t), proc._sigma(t)
        lam = 2.0 * (torch.log(alpha) - torch.log(sigma))
        lo, hi = self.config["log_snr_min"], self.config["log_snr_max"]
        u = ((2.0 * lam - (hi + lo)) / (hi - lo)).clamp(-1.0, 1.0)[..., None]
        phase = u * self.freqs
        return alpha, sigma, torch.cat([u, torch.sin(phase), torch.cos(phase)], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise eps_theta(x, t), shape of x, in x's dtype."""
        alpha, sigma, emb = self.embed_time(t)
        alpha, sigma = alpha[..., None], sigma[..., None]
        c_in = torch.rsqrt(alpha**2 * self.data_var + sigma**2).to(x.dtype)
        y = (x - (alpha * self.data_mean).to(x.dtype)) * c_in
        shift, log_gain = self.time_layer(emb.to(x.dtype)).split(self.hidden, dim=-1)
        h = torch.nn.functional.silu(self.x_layer(y) * torch.exp(log_gain) + shift)
        for layer in self.hidden_layers:
            h = torch.nn.functional.silu(layer(h))
        return sigma.to(x.dtype) * c_in * y + self.out(h)


def train_dsm(
    samples: Any,
    process: ForwardProcess | None = None,
    *,
    hidden: int = 32,
    depth: int = 3,
    n_freq: int = 2,
    steps: int = 1200,
    batch_size: int = 2048,
    lr: float = 1.5e-2,
    t_min: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> ModelScore:
    """Fit an :class:`MLPScore` to ``samples`` by denoising score matching; return it as a score.

    Minimises the epsilon-prediction loss (Ho et al. 2020)

        L(theta) = E_{x0, t, z} [ |eps_theta(alpha_t x0 + sigma_t z, t) - z|^2 ] / d,

    x0 drawn uniformly from the rows of ``samples`` (n, d), z ~ N(0, I_d). Its minimiser is
    eps* = -sigma_t s_t (Vincent 2011), so the returned ``ModelScore(mlp, kind="eps")``
    evaluates s_t(x) = -eps_theta(x, t) / sigma_t.

    Time distribution: t is drawn through its log-SNR, lambda uniform on [lambda_lo, lambda_hi],
    t = lambda^{-1}(lambda), so every decade of signal-to-noise ratio gets the same effort.
    lambda_hi = lambda(t_min); lambda_lo = max(lambda(t_max), -6 - log v_max), v_max the
    largest per-coordinate data variance, i.e. times where the signal variance alpha_t^2 v_max
    is below e^{-6} (0.25 %) of the noise variance sigma_t^2 are not drawn (unless that would
    leave no range). There p_t differs from a Gaussian by relative terms of order
    (alpha_t^2 v / sigma_t^2)^{3/2} < e^{-9} times the data's skewness (Edgeworth), so the
    network's Gaussian baseline term is already the exact epsilon to that order; the time
    embedding holds its value at lambda_lo there (see :class:`MLPScore`). Uniform t, or
    uniform lambda down to lambda(t_max), would spend most steps on such marginals (for the
    OU default, T = 10, lambda(T) = -20).

    Optimiser: Adam with learning rate ``lr`` decayed to zero along a half cosine,
    lr_k = lr (1 + cos(pi k / steps)) / 2. Float32 parameters. The data mean and standard
    deviation per coordinate and [lambda_lo, lambda_hi] go into the preconditioning (see the
    module docstring).

    Reproducibility: ``seed`` sets the initialisation (torch.manual_seed inside a forked RNG
    state, so the global RNG is left untouched) and a torch.Generator that draws every
    batch, time and noise; on CPU two runs with the same arguments and thread count give
    bit-identical parameters.

    Parameters
    ----------
    samples : (n, d) tensor or array of data points x0, n >= 2, finite.
    process : forward process (default ``OU()``); t ranges over [t_min, process.t_max].
    hidden, depth, n_freq : MLP width, number of hidden layers, Fourier pairs of the embedding.
    steps, batch_size, lr : optimisation length, minibatch size, peak Adam learning rate.
    t_min : smallest training time (process units); sigma_{t_min} must be > 0.
    seed : random seed (integer >= 0).
    progress : show a tqdm bar over the steps with the running loss.
    device : where to train; default the device of ``samples`` (CPU for arrays).

    Returns
    -------
    ModelScore with ``.model`` the trained MLPScore (in eval mode); ``.model.config``
    rebuilds the architecture and ``.model.training_config`` records steps, batch_size, lr,
    t_min, seed, the number of samples and the final running loss (exponential average over
    about 50 steps, in units of the loss above).
    """
    process = process if process is not None else OU()
    x0 = check_points(samples, name="samples")
    if x0.ndim != 2:
        raise InputShapeError(f"samples must have shape (n, d); got {tuple(x0.shape)}")
    n, d = x0.shape
    if n < 2:
        raise InputShapeError(f"need at least 2 samples to train on; got n = {n}")
    if not bool(torch.isfinite(x0).all()):
        raise InputShapeError("samples contain NaN or Inf")
    steps = _int_at_least("steps", steps, 1)
    batch_size = _int_at_least("batch_size", batch_size, 1)
    seed = _int_at_least("seed", seed, 0)
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number; got {lr!r}")
    t_min = float(process.time(float(t_min)))
    if not (float(process.sigma(t_min)) > 0 and t_min < process.t_max):
        raise ValueError(
            f"t_min = {t_min} must satisfy sigma_t > 0 and t_min < t_max = {process.t_max} "
            f"for {process!r}"
        )
    device = torch.device(device) if device is not None else x0.device
    x64 = x0.to(dtype=torch.float64, device="cpu")
    lam_lo, lam_hi = _training_log_snr_range(process, t_min, float(x64.var(0).max()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = MLPScore(
            d, hidden=hidden, depth=depth, process_config=process.config(),
            data_mean=x64.mean(0).tolist(), data_std=x64.std(0).tolist(),
            log_snr_min=lam_lo, log_snr_max=lam_hi, n_freq=n_freq,
        )
    mlp.to(device)
    data = x64.to(dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    running = None
    bar = tqdm(range(steps), desc="train_dsm", disable=not progress)
    for k in bar:
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * k / steps))
        x_batch = data[torch.randint(n, (batch_size,), generator=gen, device=device)]
        lam = torch.rand(batch_size, generator=gen, device=device, dtype=torch.float64)
        t = process.log_snr_to_t(lam_lo + (lam_hi - lam_lo) * lam).clamp(t_min, process.t_max)
        z = torch.randn(batch_size, d, generator=gen, device=device)
        x_t = process.perturb(x_batch.double(), t, z.double()).float()
        loss = torch.mean((mlp(x_t, t) - z) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.detach()
        running = value if running is None else 0.98 * running + 0.02 * value
        if progress and (k % 50 == 0 or k == steps - 1):
            bar.set_postfix(loss=f"{float(running):.4f}")
    mlp.eval()
    mlp.training_config = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "t_min": t_min, "seed": seed,
        "n_samples": n, "final_loss": float(running),
    }
    return ModelScore(mlp, kind="eps", process=process, dim=d)


def _training_log_snr_range(process: ForwardProcess, t_min: float, var_max: float) -> tuple[float, float]:
    """[lambda_lo, lambda_hi] of :func:`train_dsm` (see its docstring)."""
    lam_hi = float(process.log_snr(t_min))
    lam_full = float(process.log_snr(process.t_max))
    lam_lo = max(lam_full, _LOG_REL_SNR_FLOOR - math.log(var_max)) if var_max > 0 else lam_full
    return (lam_lo if lam_lo < lam_hi else lam_full), lam_hi


def save_score(score: ModelScore, path: str | os.PathLike[str]) -> None:
    """Write ``score`` (a ModelScore wrapping an MLPScore, kind "eps") to a checkpoint file.

    The file is ``torch.save`` of a dict of plain data: ``format`` = CHECKPOINT_FORMAT,
    ``version`` = CHECKPOINT_VERSION, ``config`` (the MLPScore constructor arguments, with the
    process config), ``training`` (the training record or None) and ``state_dict`` (CPU
    tensors). It is written to a temporary file in the target folder and moved into place
    with os.replace, so a failure never leaves a partial file at ``path``.
    """
    if not (isinstance(score, ModelScore) and isinstance(score.model, MLPScore) and score.kind == "eps"):
        raise TypeError(
            f"save_score needs a ModelScore of kind 'eps' wrapping an MLPScore (as returned "
            f"by train_dsm or load_score); got {score!r}"
        )
    mlp = score.model
    if score.process != mlp.process:
        raise ValueError(
            f"the score's process {score.process!r} differs from the one the MLP was built "
            f"for, {mlp.process!r}"
        )
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": mlp.config,
        "training": mlp.training_config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in mlp.state_dict().items()},
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load_score(path: str | os.PathLike[str], device: torch.device | str | None = None) -> ModelScore:
    """Read a checkpoint written by :func:`save_score`; return ``ModelScore(mlp, kind="eps")``.

    Loads with ``torch.load(weights_only=True)`` (plain data and tensors only; no code from
    the file runs), onto ``device`` (CPU by default). Raises :class:`CheckpointError` when
    the file is missing, unreadable or not a checkpoint (including one holding pickled
    objects), has another format tag or version, lacks keys, or its config or tensors do not
    fit an MLPScore. The process is rebuilt with ``process_from_config``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path!r}")
    map_location = torch.device(device) if device is not None else torch.device("cpu")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path!r} is not a readable scorehamiltonian checkpoint (torch.load with "
            f"weights_only=True failed: {type(exc).__name__}: {first_line})"
        ) from exc
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if not (isinstance(fmt, str) and fmt == CHECKPOINT_FORMAT):
        found = repr(fmt) if isinstance(payload, dict) else f"a {type(payload).__name__}, not a dict"
        raise CheckpointError(f"{path!r} is not a {CHECKPOINT_FORMAT!r} checkpoint (found format {found})")
    version = payload.get("version")
    if not (type(version) is int and version == CHECKPOINT_VERSION):
        raise CheckpointError(
            f"{path!r} has checkpoint version {version!r}; this code reads version {CHECKPOINT_VERSION}"
        )
    missing = _CHECKPOINT_KEYS - set(payload)
    if missing:
        raise CheckpointError(f"{path!r} lacks the keys {sorted(missing)}")
    config, state, training = payload["config"], payload["state_dict"], payload["training"]
    plain = isinstance(config, dict) and isinstance(state, dict)
    if not (plain and (training is None or isinstance(training, dict))):
        raise CheckpointError(
            f"{path!r}: 'config' and 'state_dict' must be dicts and 'training' a dict or None"
        )
    if set(config) != set(_CONFIG_KEYS):
        raise CheckpointError(
            f"{path!r}: config keys {sorted(config)} differ from the MLPScore keys {sorted(_CONFIG_KEYS)}"
        )
    try:
        process = process_from_config(config["process_config"])
        mlp = MLPScore(**config)
        mlp.load_state_dict(state)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path!r}: config or weights do not fit an MLPScore: {exc}") from exc
    mlp.training_config = training
    mlp.to(map_location).eval()
    return ModelScore(mlp, kind="eps", process=process, dim=mlp.dim)


def _int_at_least(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)
