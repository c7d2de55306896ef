"""Denoising score matching: a small MLP score fitted to samples of the data.

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

Checkpoints of the trained scores are written and read by :mod:`.checkpoints`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..common.errors import InputShapeError
from ..common.validation import check_points
from .interface import ModelScore
from .processes import OU, ForwardProcess, process_from_config

__all__ = ["CONFIG_KEYS", "MLPScore", "as_model_score", "default_size", "train_dsm"]

#: The constructor arguments of :class:`MLPScore`, as stored in its checkpoint.
CONFIG_KEYS = (
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
        """Predicted noise eps_theta(x, t), shape of x, in x's dtype.

        Below the training range (lambda_t < log_snr_min) the residual is damped by
        exp(3/2 (lambda_t - log_snr_min)), the Edgeworth order at which p_t's non-Gaussian part
        vanishes (:func:`train_dsm`): the network never saw those times, and its residual, held
        at its value on the range's end, made the probability-flow ODE (neutrally stable there
        for a Gaussian) grow without bound from t = 3 to 10 on the digits data.
        """
        alpha, sigma, emb = self.embed_time(t)
        alpha, sigma = alpha[..., None], sigma[..., None]
        c_in = torch.rsqrt(alpha**2 * self.data_var + sigma**2).to(x.dtype)
        y = (x - (alpha * self.data_mean).to(x.dtype)) * c_in
        shift, log_gain = self.time_layer(emb.to(x.dtype)).split(self.hidden, dim=-1)
        h = torch.nn.functional.silu(self.x_layer(y) * torch.exp(log_gain) + shift)
        for layer in self.hidden_layers:
            h = torch.nn.functional.silu(layer(h))
        below = (2.0 * (torch.log(alpha) - torch.log(sigma)) - self.config["log_snr_min"]).clamp(max=0.0)
        return sigma.to(x.dtype) * c_in * y + torch.exp(1.5 * below).to(x.dtype) * self.out(h)


def default_size(dim: int, n: int) -> tuple[int, int, int]:
    """The default (hidden width, depth, steps) of :func:`train_dsm` for ``n`` rows of dimension
    ``dim``.

    Width: 32 up to d = 4; above, 8 d, at most 256 and at most sqrt(n d) / 2 (but not below
    32), so that a small data set does not get a network with many more parameters than
    numbers (d = 8: 64; d = 32 with 50000 rows: 256; d = 64 with 1797 rows: 169). Depth: 4
    hidden layers up to d = 4, where the width is small, 3 above (Mueller-Brown, 50000 rows,
    3 members, 3-4 seeds: the free energy of its rarest basin read 5.65 +- 0.04 k_B T with depth
    4 and 5.57 +- 0.03 with depth 3, seeds' mean +- standard deviation, exact 5.693; twice
    the steps at depth 3 gave 5.77 and 5.58). Steps: 1200 up to d = 2, 400 sqrt(d) above
    (d = 8: 1200, d = 32: 2263, d = 64: 3200); early stopping on the held-out rows guards small
    data sets against over-fitting.
    """
    hidden = 32 if dim <= 4 else max(32, min(256, 8 * dim, int(math.sqrt(n * dim) / 2)))
    depth = 4 if dim <= 4 else 3
    steps = 1200 if dim <= 2 else max(1200, round(400 * math.sqrt(dim)))
    return hidden, depth, steps


def train_dsm(
    samples: Any,
    process: ForwardProcess | None = None,
    *,
    hidden: int | None = None,
    depth: int | None = None,
    n_freq: int = 2,
    steps: int | None = None,
    batch_size: int = 2048,
    lr: float = 1.5e-2,
    t_min: float = 1e-2,
    seed: int = 0,
    validation: float = 0.1,
    check_every: int = 50,
    bootstrap: bool = False,
    split_seed: int | None = None,
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

    Held-out rows and early stopping: a fraction ``validation`` of the rows (a seeded
    permutation, ``split_seed``, default ``seed``) is not trained on; every ``check_every``
    steps and at the end the same loss is evaluated on them with fixed draws of (x0, t, z)
    (4096 triples, drawn once). The final parameters are kept unless the check of the lowest
    held-out loss lies below the final one by more than ``EARLY_STOP_Z`` = 2 standard errors
    of the paired per-draw differences (an over-fit the held-out rows can see). The loss of
    4096 draws is noisy, and its plain argmin picked iterates from mid-training, where the
    learning rate is still high and the weights noisy: on Mueller-Brown (50000 rows, depth 3, 5
    members) the free energy of basin B read 3.68 +- 0.15 k_B T (members' mean +- standard
    deviation) with the argmin and 3.72 +- 0.07 with this rule (3.75 +- 0.06 with
    validation=0), for the exact 3.776 and the data's count 3.720.
    ``validation=0`` trains on every row and keeps the last parameters. ``bootstrap``:
    train on a resample with replacement of the training rows (the members of an ensemble,
    :func:`~.ensemble.train_ensemble`).

    Units: the data stay in the user's units. The network standardises internally (the
    preconditioning above, with the mean and standard deviation of all rows, stored in the
    checkpoint), so the returned score, its process and everything computed from it are
    in the units of ``samples``.

    Reproducibility: ``seed`` sets the initialisation (torch.manual_seed inside a forked RNG
    state, so the global RNG is left untouched) and a torch.Generator that draws every
    batch, time and noise; on CPU two runs with the same arguments and thread count give
    bit-identical parameters.

    Parameters
    ----------
    samples : (n, d) tensor or array of data points x0, n >= 2, finite.
    process : forward process (default ``OU()``); t ranges over [t_min, process.t_max].
    hidden, depth, n_freq : MLP width, number of hidden layers, Fourier pairs of the embedding
        (``hidden`` and ``depth`` default from :func:`default_size`).
    steps, batch_size, lr : optimisation length (default from :func:`default_size`),
        minibatch size, peak Adam learning rate.
    t_min : smallest training time (process units); sigma_{t_min} must be > 0. Evaluating the
        score below it warns (the model never saw those times).
    seed : random seed (integer >= 0).
    validation, check_every, bootstrap, split_seed : held-out fraction in [0, 0.5], steps
        between its checks, bootstrap resampling of the training rows, seed of the split.
    progress : show a tqdm bar over the steps with the running and the held-out loss.
    device : where to train; default the device of ``samples`` (CPU for arrays).

    Returns
    -------
    ModelScore with ``.model`` the trained MLPScore (in eval mode) and ``t_trained`` = t_min;
    ``.model.config`` rebuilds the architecture and ``.model.training_config`` records
    steps, batch_size, lr, t_min, seed, the number of samples and of training rows, the
    final running loss (exponential average over about 50 steps, in units of the loss
    above), the held-out fraction, the best held-out loss and the step it was reached.
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
    default_hidden, default_depth, default_steps = default_size(d, n)
    hidden = _int_at_least("hidden", default_hidden if hidden is None else hidden, 1)
    depth = _int_at_least("depth", default_depth if depth is None else depth, 1)
    steps = _int_at_least("steps", default_steps if steps is None else steps, 1)
    batch_size = _int_at_least("batch_size", batch_size, 1)
    seed = _int_at_least("seed", seed, 0)
    check_every = _int_at_least("check_every", check_every, 1)
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number; got {lr!r}")
    validation = float(validation)
    if not 0.0 <= validation <= 0.5:
        raise ValueError(f"validation must lie in [0, 0.5]; got {validation!r}")
    t_min = float(process.time(float(t_min)))
    if not (float(process.sigma(t_min)) > 0 and t_min < process.t_max):
        raise ValueError(
            f"t_min = {t_min} must satisfy sigma_t > 0 and t_min < t_max = {process.t_max} "
            f"for {process!r}"
        )
    device = torch.device(device) if device is not None else x0.device
    x64 = x0.to(dtype=torch.float64, device="cpu")
    train, held = _split(n, validation, seed if split_seed is None else int(split_seed))
    if bootstrap:
        train = train[torch.randint(train.numel(), (train.numel(),), generator=torch.Generator().manual_seed(seed))]
    lam_lo, lam_hi = _training_log_snr_range(process, t_min, float(x64.var(0).max()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = MLPScore(
            d, hidden=hidden, depth=depth, process_config=process.config(),
            data_mean=x64.mean(0).tolist(), data_std=x64.std(0).tolist(),
            log_snr_min=lam_lo, log_snr_max=lam_hi, n_freq=n_freq,
        )
    mlp.to(device)
    data = x64[train].to(dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def draw(rows: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(x_t, t, z) for ``count`` draws of the loss on ``rows`` (float32 x_t and z)."""
        x_batch = rows[torch.randint(rows.shape[0], (count,), generator=generator, device=device)]
        lam = torch.rand(count, generator=generator, device=device, dtype=torch.float64)
        t = process.log_snr_to_t(lam_lo + (lam_hi - lam_lo) * lam).clamp(t_min, process.t_max)
        z = torch.randn(count, d, generator=generator, device=device)
        return process.perturb(x_batch.double(), t, z.double()).float(), t, z

    check = None
    if held.numel():
        check = draw(x64[held].to(dtype=torch.float32, device=device), _HELD_OUT_DRAWS,
                     torch.Generator(device=device).manual_seed(seed + 1))
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    running, best, last = None, (math.inf, steps, None, None), None
    bar = tqdm(range(steps), desc="train_dsm", disable=not progress)
    for k in bar:
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * k / steps))
        x_t, t, z = draw(data, batch_size, gen)
        loss = torch.mean((mlp(x_t, t) - z) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.detach()
        running = value if running is None else 0.98 * running + 0.02 * value
        if check is not None and ((k + 1) % check_every == 0 or k == steps - 1):
            last = _losses(mlp, *check)
            if float(last.mean()) < best[0]:
                best = (float(last.mean()), k + 1, copy.deepcopy(mlp.state_dict()), last)
        if progress and (k % 50 == 0 or k == steps - 1):
            bar.set_postfix(loss=f"{float(running):.4f}", held_out=f"{best[0]:.4f}")
    held_loss, kept = None, steps
    if check is not None:
        held_loss = float(last.mean())
        if best[1] != steps and _significantly_lower(best[3], last):
            mlp.load_state_dict(best[2])
            held_loss, kept = best[0], best[1]
    mlp.eval()
    mlp.training_config = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "t_min": t_min, "seed": seed,
        "n_samples": n, "n_train": int(train.numel()), "final_loss": float(running), "validation": validation,
        "held_out_loss": held_loss, "best_step": kept,
    }
    return as_model_score(mlp, process)


#: Fixed (x0, t, z) draws of the held-out loss.
_HELD_OUT_DRAWS = 4096
#: An earlier check's parameters replace the final ones only where their held-out loss is lower
#: by more than this many paired standard errors.
EARLY_STOP_Z = 2.0


def _split(n: int, validation: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, held-out rows): a seeded permutation, round(validation n) rows held out
    (at least one when validation > 0, and at least two rows kept for training)."""
    held = min(n - 2, max(1, round(validation * n))) if validation > 0 else 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


def _losses(mlp: MLPScore, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The per-draw epsilon-prediction losses |eps_theta - z|^2 / d on fixed draws, float64 (n,)."""
    with torch.no_grad():
        return ((mlp(x_t, t) - z) ** 2).mean(-1).double()


def _significantly_lower(earlier: torch.Tensor, final: torch.Tensor) -> bool:
    """Whether the earlier parameters' held-out loss lies below the final ones' by more than
    EARLY_STOP_Z standard errors of the paired per-draw differences."""
    diff = final - earlier
    return bool(diff.mean() > EARLY_STOP_Z * diff.std(correction=1) / math.sqrt(diff.numel()))


def as_model_score(mlp: MLPScore, process: ForwardProcess) -> ModelScore:
    """``ModelScore(mlp, kind="eps")`` with ``t_trained`` from the training record."""
    score = ModelScore(mlp, kind="eps", process=process, dim=mlp.dim)
    record = mlp.training_config or {}
    score.t_trained = record.get("t_min")
    return score


def _training_log_snr_range(process: ForwardProcess, t_min: float, var_max: float) -> tuple[float, float]:
    """[lambda_lo, lambda_hi] of :func:`train_dsm` (see its docstring)."""
    lam_hi = float(process.log_snr(t_min))
    lam_full = float(process.log_snr(process.t_max))
    lam_lo = max(lam_full, _LOG_REL_SNR_FLOOR - math.log(var_max)) if var_max > 0 else lam_full
    return (lam_lo if lam_lo < lam_hi else lam_full), lam_hi


def _int_at_least(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)
