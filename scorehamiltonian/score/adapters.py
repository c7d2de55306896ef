"""Models in: TorchScript files, the user's own modules, diffusers and k-diffusion models as scores.

THEORY section 1 (the network conventions). Every loader returns an :class:`AdaptedScore`, a
:class:`ModelScore` whose network (:class:`AdaptedNetwork`) calls the model on its own terms:

- layout: the toolkit's points x of shape (..., d) become (n, *sample_shape), n the number of
  points and d = prod(sample_shape) (default sample_shape = (d,)); the output goes back to
  (..., d);
- conditioning: c = t, sigma_t or lambda_t (``time_input``) of the process, computed in the
  points' dtype (float64: exact grid times), then mapped where the model counts time its own
  way (diffusers: the timestep n = t (N - 1) of :class:`DiscreteVP`) and only then cast, with
  x, to the model's dtype and device; the output is cast back to x's;
- output: "score"; "eps", s = -eps / sigma_t; "x0", s = (alpha_t D - x) / sigma_t^2; or "v",
  v = alpha_t eps - sigma_t x0 for X_t = alpha_t x0 + sigma_t eps, so that
  alpha_t v + sigma_t x = (alpha_t^2 + sigma_t^2) eps, read as
  eps = (alpha_t v + sigma_t x) / (alpha_t^2 + sigma_t^2) (= alpha_t v + sigma_t x for
  variance-preserving processes) and then as "eps".

Entry points: :func:`load_torchscript` (a ``torch.jit.save`` file), :func:`load_module` (the
user's ``"package.module:factory"`` and a weights file read with ``weights_only=True``),
:func:`from_diffusers` (a diffusers model and its scheduler: the discrete ``alphas_cumprod`` on
:class:`DiscreteVP`) and :func:`from_k_diffusion` (a denoiser D(x, sigma), the EDM convention).
Loaders check their inputs and raise :class:`CheckpointError` (a file missing or unreadable),
:class:`ConfigError` (a factory string or a config field) or :class:`InputShapeError` (a model
output of the wrong shape), each naming the file, string or field; none writes anything.
diffusers is imported inside :func:`from_diffusers` only, and k-diffusion never: a denoiser is
any callable.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from ..common.errors import CheckpointError, ConfigError, InputShapeError, TimeRangeError
from ..common.files import read_json
from ..common.imports import resolve
from .interface import ModelScore, TimeInput
from .processes import EDM, OU, DiscreteVP, ForwardProcess

__all__ = [
    "AdaptedNetwork",
    "AdaptedScore",
    "from_diffusers",
    "from_k_diffusion",
    "load_module",
    "load_torchscript",
    "module_from",
]

Prediction = Literal["score", "eps", "x0", "v"]
_PREDICTIONS = ("score", "eps", "x0", "v")
_TIME_INPUTS = ("t", "sigma", "log_snr")
#: diffusers' ``prediction_type`` names and the toolkit's.
_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: Relative slack of ``time_range`` (and of the EDM range of a k-diffusion denoiser): a sampler's
#: own rounding of its end noise levels (k-diffusion's exp(log sigma)) stays inside.
RANGE_SLACK = 1e-12


class AdaptedNetwork(torch.nn.Module):
    """A model called in its own layout, conditioning and dtype: ``forward(x, t)`` -> its prediction.

    x has shape (..., d) and t (the process's time) shape x.shape[:-1]; the model receives
    x as (n, *sample_shape) and the conditioning c (t, sigma_t or lambda_t, then ``condition(c)``
    where given) as (n,), both in the dtype and on the device of its first parameter or buffer
    (x's where it has none). Its output (a tensor, an object with ``.sample`` as diffusers
    returns, or a tuple whose first item is one) must have the input's shape, except that with
    ``split_variance`` an output of twice the channels (axis 1: a learned-variance model) is
    cut to its first half. The result has x's shape, dtype and device; a "v" output is
    returned as eps = (alpha_t v + sigma_t x) / (alpha_t^2 + sigma_t^2) (module docstring).

    ``source`` names the model in every error (its file, factory string or class).
    """

    def __init__(self, model: Callable[..., Any], source: str, process: ForwardProcess,
                 time_input: TimeInput = "t", sample_shape: tuple[int, ...] | None = None,
                 condition: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 prediction: Prediction = "score", split_variance: bool = False) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"{source}: the model must be callable; got {type(model).__name__}")
        if prediction not in _PREDICTIONS:
            raise ValueError(f"kind must be one of {_PREDICTIONS}; got {prediction!r}")
        if time_input not in _TIME_INPUTS:
            raise ValueError(f"time_input must be one of {_TIME_INPUTS}; got {time_input!r}")
        self.model, self.source, self.process = model, source, process
        self.time_input, self.condition, self.prediction = time_input, condition, prediction
        self.sample_shape, self.split_variance = sample_shape, bool(split_variance)

    def placement(self, x: torch.Tensor) -> tuple[torch.dtype, torch.device]:
        """The dtype and device the model computes in (those of x for a model without tensors)."""
        if isinstance(self.model, torch.nn.Module):
            for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
                if tensor.is_floating_point():
                    return tensor.dtype, tensor.device
        return x.dtype, x.device

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's prediction at points x (..., d) and times t (x.shape[:-1]), in x's layout."""
        if self.time_input == "t":
            cond = t
        else:
            cond = self.process.sigma(t) if self.time_input == "sigma" else self.process.log_snr(t)
        if self.condition is not None:
            cond = self.condition(cond)
        shape = self.sample_shape if self.sample_shape is not None else tuple(x.shape[-1:])
        inputs = x.reshape(-1, *shape)
        dtype, device = self.placement(x)
        out = self.model(inputs.to(device=device, dtype=dtype), cond.reshape(-1).to(device=device, dtype=dtype))
        if not isinstance(out, torch.Tensor):
            out = getattr(out, "sample", out)
            out = out[0] if isinstance(out, (tuple, list)) and out else out
        if not isinstance(out, torch.Tensor):
            raise InputShapeError(f"{self.source}: the model returned a {type(out).__name__}, not a tensor")
        if self.split_variance and out.ndim >= 2 and out.shape[0] == inputs.shape[0] \
                and out.shape[1] == 2 * inputs.shape[1] and out.shape[2:] == inputs.shape[2:]:
            out = out[:, : inputs.shape[1]]
        if out.shape != inputs.shape:
            raise InputShapeError(
                f"{self.source}: the model returned shape {tuple(out.shape)} for an input of shape "
                f"{tuple(inputs.shape)} (sample_shape {shape}); its output must have the input's shape"
            )
        out = out.to(device=x.device, dtype=x.dtype).reshape(x.shape)
        if self.prediction == "v":
            alpha, sigma = self.process.alpha(t)[..., None], self.process.sigma(t)[..., None]
            out = (alpha * out + sigma * x) / (alpha**2 + sigma**2)
        return out


class AdaptedScore(ModelScore):
    """The score of an :class:`AdaptedNetwork` (what every loader of this module returns).

    A :class:`ModelScore` (``model`` is the network, ``kind`` "score", "eps" or "x0": a "v"
    model is read as eps) whose network receives x and t uncast, in the points' dtype, and
    casts them itself after computing its conditioning (so that float64 points give exact
    grid times). ``compute_dtype`` is still the model's (finite-difference steps follow its
    precision). Beyond ModelScore's attributes: ``source`` (the file, factory or class),
    ``prediction`` (the model's own convention, "score", "eps", "x0" or "v") and
    ``time_range`` (the times the model was made for, (lo, hi) inside the process's range:
    outside it, beyond a relative ``RANGE_SLACK`` = 1e-12 for rounding, the score raises
    :class:`TimeRangeError`; None for the process's whole range).
    """

    def __init__(self, network: AdaptedNetwork, dim: int | None = None,
                 time_range: tuple[float, float] | None = None) -> None:
        kind = "eps" if network.prediction == "v" else network.prediction
        super().__init__(network, kind=kind, process=network.process, time_input=network.time_input, dim=dim)
        self.source, self.prediction, self.time_range = network.source, network.prediction, time_range
        # The conversion eps / x0 -> score is ModelScore's; a bound method is not a torch module,
        # so this reader passes x and t to the network without casting them.
        self._reader = ModelScore(network.__call__, kind=kind, process=network.process, dim=dim)

    def __repr__(self) -> str:
        return f"AdaptedScore({self.source!r}, prediction={self.prediction!r}, process={self.process!r})"

    def prepare(self, x: Any, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """ModelScore's checks, and t inside ``time_range``."""
        x, times = super().prepare(x, t)
        if self.time_range is not None:
            lo, hi = self.time_range
            outside = (times < lo * (1 - RANGE_SLACK)) | (times > hi * (1 + RANGE_SLACK))
            if bool(outside.any()):
                raise TimeRangeError(f"t = {float(times[outside].flatten()[0])!r} lies outside [{lo}, {hi}], "
                                     f"the range {self.source} was made for")
        return x, times

    def _evaluate(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._reader.raw(x, t)


def load_torchscript(path: str | os.PathLike[str], kind: Prediction = "score", process: ForwardProcess | None = None,
                     time_input: TimeInput = "t", dim: int | None = None, *,
                     sample_shape: tuple[int, ...] | None = None,
                     device: torch.device | str | None = None) -> AdaptedScore:
    """A TorchScript file (``torch.jit.save``) as a score: the module's ``forward(x, c)`` gets
    x of shape (n, *sample_shape) and c of shape (n,) (``time_input``: t, sigma_t or lambda_t
    of ``process``, default :class:`OU`; sample_shape defaults to (d,)) and returns ``kind``
    ("score", "eps", "x0" or "v"; module docstring), of x's shape. Loaded onto ``device`` (CPU
    by default) in eval mode.

    A TorchScript file carries its own compiled code (TorchScript, not Python pickle): load
    files you trust. :class:`CheckpointError` names the file when it is missing or not
    TorchScript; :class:`InputShapeError` names it when the module's output has another shape.
    """
    path = _existing_file(path, "TorchScript file")
    try:
        model = torch.jit.load(path, map_location=torch.device(device) if device is not None else "cpu")
    except Exception as exc:
        raise CheckpointError(f"{path!r} is not a TorchScript file ({_reason(exc)})") from exc
    return _adapted(model.eval(), path, kind, process, time_input, dim, sample_shape)


def load_module(factory: str, weights: str | os.PathLike[str], kind: Prediction = "score",
                process: ForwardProcess | None = None, time_input: TimeInput = "t", dim: int | None = None, *,
                sample_shape: tuple[int, ...] | None = None, kwargs: Mapping[str, Any] | None = None,
                device: torch.device | str | None = None) -> AdaptedScore:
    """The user's own ``torch.nn.Module``, built by ``factory`` and given the weights in ``weights``.

    ``factory`` = ``"package.module:name"`` (``name`` may be dotted, ``Class`` or
    ``make_net``): the one module named is imported (with its parent packages, as Python
    does), nothing else, and ``name(**kwargs)`` must return a ``torch.nn.Module``. ``weights``
    is a state_dict (or a dict whose ``"state_dict"`` entry is one) read with
    ``torch.load(weights_only=True)`` (no code from the file runs), or a ``.safetensors`` file;
    it must fit the module exactly (``load_state_dict(strict=True)``). The module then runs in
    eval mode on ``device`` and is read as in :func:`load_torchscript` (forward(x, c), x of
    shape (n, *sample_shape), c of shape (n,), output ``kind``).

    Errors: :class:`ConfigError` naming the factory string when it is malformed, its module
    cannot be imported, the name is missing or not callable, the call fails or returns no
    module; :class:`CheckpointError` naming the weights file when it is missing, unreadable,
    not a state_dict or does not fit the module (missing, unexpected or mis-shaped entries).
    """
    model = module_from(factory, weights, kwargs, device)
    return _adapted(model, factory, kind, process, time_input, dim, sample_shape)


def module_from(factory: str, weights: str | os.PathLike[str], kwargs: Mapping[str, Any] | None = None,
                device: torch.device | str | None = None) -> torch.nn.Module:
    """The module ``factory(**kwargs)`` with the state_dict of ``weights`` (strict), in eval mode
    on ``device``: the first half of :func:`load_module` (same checks and errors), for a module
    read otherwise (a k-diffusion denoiser for :func:`from_k_diffusion`)."""
    model = _build(factory, dict(kwargs or {}))
    path = _existing_file(weights, "weights file")
    state = _read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path!r}: the weights do not fit the module of {factory!r} ({_reason(exc)})") from exc
    if device is not None:
        model.to(torch.device(device))
    return model.eval()


def from_diffusers(model: Any, scheduler: Any = None, *, sample_shape: tuple[int, ...] | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AdaptedScore:
    """A diffusers model and its scheduler as a score on :class:`DiscreteVP` (the time / timestep map
    of :mod:`~scorehamiltonian.score.processes`: t = n / (N - 1), abar(t_n) = alphas_cumprod[n]).

    ``model``: a diffusers model object (or any module called as ``model(sample, timestep)``),
    or a folder written by its ``save_pretrained`` (``config.json`` and weights; the class named
    by the config's ``_class_name`` must be a diffusers model class), or a pipeline folder
    holding ``unet/``. Folders are read with ``local_files_only=True``, in ``dtype`` (default
    diffusers' float32) onto ``device`` (default CPU); a model object is used as it is (put it
    in eval mode).

    ``scheduler``: a diffusers scheduler object (its ``alphas_cumprod`` and ``config``), a
    ``scheduler_config.json`` or a folder holding one (or a ``scheduler/`` folder with one).
    Default: beside the model folder, ``FOLDER/scheduler_config.json`` or
    ``FOLDER/../scheduler/scheduler_config.json``. The scheduler class (``_class_name``) only
    computes the table: DDPM, DDIM, Euler-discrete, DPM-Solver multistep and the other
    discrete variance-preserving schedulers give the same score for the same table.

    The model is conditioned on the (fractional) timestep n = t (N - 1) and its output read by
    the config's ``prediction_type``: "epsilon" (s = -eps / sigma_t), "v_prediction"
    (eps = alpha_t v + sigma_t x) or "sample" (x0). Clipping and thresholding of x0 are
    sampler options, not part of the score, and are ignored; a learned-variance model
    (``variance_type`` "learned" / "learned_range") is read by the first half of its channels.
    ``sample_shape`` (the model's input shape without the batch axis) defaults, for 2D models
    (class names with "2D"), to (in_channels, sample_size, sample_size) of the model config;
    d = prod(sample_shape). Unconditional models only (no class labels or text).

    Errors: :class:`CheckpointError` naming the folder and the file expected (a folder without
    ``config.json``, or no scheduler config where it was looked for, or weights that do not
    load); :class:`ConfigError` naming the file (or scheduler class) and the field
    (``_class_name``, ``prediction_type``, ``timestep_type``, ``use_flow_sigmas``, a table
    with zero terminal SNR, ``rescale_betas_zero_snr``); :class:`InputShapeError` naming the
    model when its output has another shape than its input.
    """
    folder = None
    if isinstance(model, (str, os.PathLike)):
        folder = _model_folder(model)
        model = _diffusers_model(folder, device, dtype)
        source = folder
    else:
        source = type(model).__name__
    if scheduler is None or isinstance(scheduler, (str, os.PathLike)):
        if scheduler is None and folder is None:
            raise TypeError("from_diffusers: pass scheduler= (a scheduler or its folder) with a model object")
        config_file = (_scheduler_file(folder, beside_model=True) if scheduler is None
                       else _scheduler_file(os.fspath(scheduler), beside_model=False))
        where, scheduler = repr(config_file), _diffusers_from_config(config_file)
    else:
        where = f"the scheduler {type(scheduler).__name__}"
    process, prediction, split = _discrete_schedule(scheduler, where)
    shape = _sample_shape(model, sample_shape, source)
    network = AdaptedNetwork(model, source, process, "t", shape, condition=process.t_to_timestep,
                             prediction=prediction, split_variance=split)
    return AdaptedScore(network, math.prod(shape))


def from_k_diffusion(denoiser: Callable[..., Any], sigma_min: float | None = None, sigma_max: float | None = None,
                     *, sample_shape: tuple[int, ...] | None = None) -> AdaptedScore:
    """A k-diffusion denoiser D(x, sigma) (the EDM convention: x = x0 + sigma z, D the x0
    estimate) as a score on :class:`EDM` (t = sigma, alpha = 1): s = (D(x, sigma) - x) / sigma^2.

    ``denoiser`` is called as D(x, sigma) with x of shape (n, *sample_shape) (default (d,))
    and sigma of shape (n,), as k-diffusion's samplers call it (``k_diffusion.layers.Denoiser``,
    the ``k_diffusion.external`` wrappers, or any callable). ``sigma_min`` and ``sigma_max``
    (defaults: the denoiser's own ``sigma_min`` / ``sigma_max``, as its ``DiscreteSchedule``
    wrappers have) bound the noise levels it was made for: the process is
    ``EDM(sigma_max (1 + RANGE_SLACK))`` and the score raises :class:`TimeRangeError` outside
    [sigma_min, sigma_max] (beyond that relative slack of 1e-12, left for a sampler's rounding).
    For a model of a variance-preserving process in k-diffusion's scaling, x_k = x / alpha_t
    and sigma_k = sigma_t / alpha_t, this is the score of x_k: s_k(x_k) = alpha_t s_t(alpha_t x_k).
    """
    bounds = []
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        value = getattr(denoiser, name, None) if value is None else value
        if value is None:
            raise ValueError(f"from_k_diffusion: pass {name}= (the denoiser has no {name} attribute)")
        bounds.append(float(value))
    lo, hi = bounds
    if not (math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"from_k_diffusion: need 0 < sigma_min < sigma_max < inf; got {lo}, {hi}")
    source = getattr(denoiser, "__name__", type(denoiser).__name__)
    shape = _checked_shape(sample_shape) if sample_shape is not None else None
    network = AdaptedNetwork(denoiser, source, EDM(hi * (1 + RANGE_SLACK)), "sigma", shape, prediction="x0")
    return AdaptedScore(network, math.prod(shape) if shape is not None else None, time_range=(lo, hi))


def _adapted(model: Callable[..., Any], source: str, kind: Prediction, process: ForwardProcess | None,
             time_input: TimeInput, dim: int | None, sample_shape: tuple[int, ...] | None) -> AdaptedScore:
    """The score of a model of one of the toolkit's conventions (load_torchscript, load_module)."""
    shape = _checked_shape(sample_shape) if sample_shape is not None else None
    if shape is not None:
        if dim is not None and dim != math.prod(shape):
            raise InputShapeError(f"dim = {dim} differs from prod(sample_shape) = {math.prod(shape)}")
        dim = math.prod(shape)
    network = AdaptedNetwork(model, source, process if process is not None else OU(), time_input, shape,
                             prediction=kind)
    return AdaptedScore(network, dim)


def _checked_shape(sample_shape: Any) -> tuple[int, ...]:
    sizes = tuple(sample_shape) if isinstance(sample_shape, (tuple, list, torch.Size)) else ()
    if not sizes or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in sizes):
        raise InputShapeError(f"sample_shape must be a non-empty tuple of positive integers; got {sample_shape!r}")
    return tuple(int(n) for n in sizes)


def _reason(exc: BaseException) -> str:
    """'Type: message' of an exception on one line (at most 400 characters), for wrapping it in
    a toolkit error."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {message[:400]}"


def _existing_file(path: str | os.PathLike[str], what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no {what} at {path!r}")
    return path


def _build(factory: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """Import the module of ``"package.module:name"`` and call ``name(**kwargs)``."""
    target = resolve(factory, "factory")
    attribute = factory.partition(":")[2]
    if not callable(target):
        raise ConfigError(f"factory {factory!r}: {attribute!r} is a {type(target).__name__}, not callable")
    try:
        model = target(**kwargs)
    except Exception as exc:
        raise ConfigError(f"factory {factory!r} failed when called with {kwargs!r} ({_reason(exc)})") from exc
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"factory {factory!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from a torch.save file (weights_only=True) or a .safetensors file."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path!r} is not a weights file: it holds Python objects besides tensors, which "
                              "torch.load(weights_only=True) does not run (save model.state_dict())") from exc
    except Exception as exc:
        raise CheckpointError(f"{path!r} is not a weights file that torch.load(weights_only=True) "
                              f"or safetensors can read ({_reason(exc)})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"{path!r} holds a {type(state).__name__}, not a state_dict (a dict of tensors)")
    return state


def _model_folder(path: str | os.PathLike[str]) -> str:
    """The save_pretrained folder at ``path`` (or its unet/ in a pipeline folder)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"no folder at {path!r} (a diffusers model saved with save_pretrained)")
    for folder in (path, os.path.join(path, "unet")):
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    raise CheckpointError(f"{path!r} holds no config.json (nor unet/config.json): not a diffusers model folder")


def _scheduler_file(path: str, beside_model: bool) -> str:
    """The scheduler_config.json at ``path`` (a file or a folder), or beside a model folder."""
    name = "scheduler_config.json"
    if not beside_model and os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"no scheduler config file or folder at {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    places = [os.path.join(path, name),
              os.path.join(parent if beside_model else path, "scheduler", name)]
    for place in places:
        if os.path.isfile(place):
            return place
    raise CheckpointError(f"no scheduler config for {path!r}: expected {' or '.join(map(repr, places))}; "
                          "pass scheduler= (a diffusers scheduler, its folder or its scheduler_config.json)")


def _diffusers_class(config_file: str, config: Mapping[str, Any], base: str) -> Any:
    """The diffusers class named by the config's ``_class_name``, checked to derive from ``base``."""
    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, getattr(diffusers, base))):
        raise ConfigError(f"{config_file!r}: field '_class_name' = {name!r} is not a diffusers "
                          f"{base} class (load the object yourself and pass it)")
    return cls


def _diffusers_model(folder: str, device: torch.device | str | None, dtype: torch.dtype | None) -> Any:
    config_file = os.path.join(folder, "config.json")
    cls = _diffusers_class(config_file, read_json(config_file), "ModelMixin")
    try:
        model = cls.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False, torch_dtype=dtype)
    except Exception as exc:
        raise CheckpointError(f"{folder!r}: {cls.__name__}.from_pretrained failed ({_reason(exc)})") from exc
    if device is not None:
        model.to(torch.device(device))
    return model.eval()


def _diffusers_from_config(config_file: str) -> Any:
    config = read_json(config_file)
    cls = _diffusers_class(config_file, config, "SchedulerMixin")
    try:
        return cls.from_config(config)
    except Exception as exc:
        raise ConfigError(f"{config_file!r}: {cls.__name__} rejects the config ({_reason(exc)})") from exc


def _discrete_schedule(scheduler: Any, where: str) -> tuple[DiscreteVP, Prediction, bool]:
    """The process, prediction and learned-variance flag of a discrete VP scheduler."""
    config = getattr(scheduler, "config", None)
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: a diffusers scheduler (with a config) is needed; got {type(scheduler).__name__}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _DIFFUSERS_PREDICTIONS:
        raise ConfigError(f"{where}: field 'prediction_type' = {prediction!r}; expected one of "
                          f"{sorted(_DIFFUSERS_PREDICTIONS)}")
    if config.get("timestep_type", "discrete") != "discrete":
        raise ConfigError(f"{where}: field 'timestep_type' = {config['timestep_type']!r}; only models "
                          "conditioned on the discrete timestep are read")
    if config.get("use_flow_sigmas"):
        raise ConfigError(f"{where}: field 'use_flow_sigmas' is set: a flow-matching model, not a discrete VP one")
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is None:
        raise ConfigError(f"{where}: {type(scheduler).__name__} has no alphas_cumprod (not a discrete "
                          "variance-preserving scheduler)")
    try:
        process = DiscreteVP(table.detach().cpu() if isinstance(table, torch.Tensor) else table)
    except ValueError as exc:
        field = " (field 'rescale_betas_zero_snr' is set)" if config.get("rescale_betas_zero_snr") else ""
        raise ConfigError(f"{where}: its alphas_cumprod cannot define the process{field}: {exc}") from exc
    split = config.get("variance_type") in ("learned", "learned_range")
    return process, _DIFFUSERS_PREDICTIONS[prediction], split


def _sample_shape(model: Any, sample_shape: Any, source: str) -> tuple[int, ...]:
    """``sample_shape``, or (in_channels, size, size) from a 2D diffusers model's config."""
    if sample_shape is not None:
        return _checked_shape(sample_shape)
    config = getattr(model, "config", None)
    config = config if isinstance(config, Mapping) else {}
    size, channels = config.get("sample_size"), config.get("in_channels")
    if "2D" in type(model).__name__ and size is not None and channels is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        return _checked_shape((channels, *size))
    raise ConfigError(f"{source}: pass sample_shape= (the model's input shape without the batch axis); "
                      "it is read from the config ('in_channels', 'sample_size') of 2D models only")
