"""Input checks shared by every public entry point (private: not part of the API)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import InputDtypeError, InputShapeError, NonFiniteScoreError, TimeRangeError

DEFAULT_DTYPE = torch.float64


def as_float_tensor(
    value: Any,
    name: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return ``value`` as a floating tensor.

    Python numbers, lists and numpy arrays become tensors of ``dtype`` (float64 when not
    given). A torch tensor keeps its dtype unless ``dtype`` is given; an integer, bool or
    complex tensor raises :class:`InputDtypeError`, since silently rounding or dropping an
    imaginary part would hide a bug in the caller.
    """
    if isinstance(value, torch.Tensor):
        if not torch.is_floating_point(value):
            raise InputDtypeError(
                f"{name} has dtype {value.dtype}; pass a real floating tensor "
                f"(float64 recommended, e.g. {name}.double())"
            )
        return value.to(dtype=dtype or value.dtype, device=device or value.device)
    return torch.as_tensor(real_array(value, name), dtype=dtype or DEFAULT_DTYPE, device=device)


def real_array(value: Any, name: str, error: type[Exception] = InputDtypeError) -> np.ndarray:
    """``value`` (a number, sequence, numpy array or tensor of any shape) as a numpy array of real
    numbers (float, int or unsigned kinds), else ``error`` naming ``name`` and the dtype found."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise error(f"{name} has dtype {array.dtype}; expected real numbers")
    return array


def check_points(x: Any, dim: int | None = None, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a floating tensor of shape (..., d), with d == ``dim`` if given."""
    x = as_float_tensor(x, name)
    if x.ndim == 0:
        raise InputShapeError(f"{name} must have shape (..., d); got a scalar")
    if dim is not None and x.shape[-1] != dim:
        raise InputShapeError(
            f"{name} has shape {tuple(x.shape)}: its last axis must be the dimension d = {dim}"
        )
    return x


def nonfinite_rows(x: torch.Tensor) -> str | None:
    """For an (n, d) tensor, "NaN or Inf in k of n rows (first: row i)", or None when every row
    is finite: the one wording of the checks of samples and data."""
    bad = ~torch.isfinite(x).all(dim=1)
    if not bool(bad.any()):
        return None
    return f"NaN or Inf in {int(bad.sum())} of {x.shape[0]} rows (first: row {int(torch.nonzero(bad)[0])})"


def broadcast_time(t: Any, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Return ``t`` as a tensor of shape x.shape[:-1] with x's dtype and device.

    ``t`` may be a float or a tensor broadcastable to the batch shape x.shape[:-1].
    """
    t = as_float_tensor(t, name, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(t, x.shape[:-1])
    except RuntimeError:
        raise InputShapeError(
            f"{name} has shape {tuple(t.shape)}, which does not broadcast to the batch shape "
            f"{tuple(x.shape[:-1])} of x (shape {tuple(x.shape)})"
        ) from None


def checked_times(process: Any, times: Any, positive: str | None = None) -> list[float]:
    """``times`` as floats: a non-empty 1D sequence (:class:`InputShapeError`) of finite,
    distinct times inside ``process``'s range (:class:`TimeRangeError`, also from
    ``process.time``); with ``positive`` (the reason, quoted in the error) also > 0."""
    t = as_float_tensor(times, "times", dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise InputShapeError(f"times must be a non-empty 1D sequence; got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise TimeRangeError(f"times must be finite; got {t.tolist()}")
    if positive is not None and not bool((t > 0).all()):
        raise TimeRangeError(f"times must be positive ({positive}); got {t.tolist()}")
    values = [float(v) for v in t]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise TimeRangeError(f"times must be distinct; {repeated} appear more than once")
    process.time(t)
    return values


def require_finite(
    values: torch.Tensor, x: torch.Tensor, t: torch.Tensor, what: str = "score"
) -> None:
    """Raise :class:`NonFiniteScoreError` naming the first (x, t) where ``values`` is not finite.

    ``values`` has shape (..., k) with batch shape x.shape[:-1]; ``t`` has that batch shape.
    """
    bad = ~torch.isfinite(values)
    if values.ndim == x.ndim:
        bad = bad.any(dim=-1)
    if not bool(bad.any()):
        return
    n_bad = int(bad.sum())
    index = tuple(int(i) for i in torch.nonzero(bad)[0])
    raise NonFiniteScoreError(
        f"{what} is not finite at {n_bad} of {bad.numel()} points; first at batch index "
        f"{index}: x = {x[index].detach().cpu().tolist()}, t = {float(t[index])}, "
        f"value = {values[index].detach().cpu().tolist()}"
    )
