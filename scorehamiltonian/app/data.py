"""Reading a user's data file: samples of p_0 as an (N, d) float64 tensor.

Formats, by extension: ``.npy`` (one array), ``.npz`` (one array, or the one named after a
colon: ``data.npz:train``), ``.pt`` / ``.pth`` (a tensor, or a dict holding exactly one
tensor, or the one named after a colon; read with ``weights_only=True``, so no code from the
file runs), ``.csv`` (numbers separated by commas; a first line that is not numeric is a
header and skipped). A 1D array is read as N points in one dimension. Every failure raises
:class:`DataError` naming the file: unreadable, not numeric, not 1D or 2D, fewer than 2 rows,
or rows with NaN or Inf (the count and the first such row are given; nothing is dropped
silently).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..common.errors import DataError
from ..common.validation import nonfinite_rows, real_array

__all__ = ["DATA_FORMATS", "load_data"]

#: The file extensions :func:`load_data` reads.
DATA_FORMATS = (".npy", ".npz", ".pt", ".pth", ".csv")


def load_data(path: str | os.PathLike[str], dim: int | None = None) -> torch.Tensor:
    """The samples in ``path`` (module docstring) as an (N, d) float64 tensor; ``dim``, when
    given, is the dimension the caller needs (a mismatch raises :class:`DataError`)."""
    spec = os.fspath(path)
    file, _, key = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    extension = os.path.splitext(file)[1].lower()
    if extension not in DATA_FORMATS:
        raise DataError(f"{file!r}: unknown data format {extension!r}; use one of {', '.join(DATA_FORMATS)}")
    if not os.path.isfile(file):
        raise DataError(f"no data file at {file!r}")
    try:
        array = _read(file, extension, key)
    except DataError:
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"{file!r} cannot be read as {extension} data: {type(exc).__name__}: {first_line}") from exc
    return _checked(array, file, dim)


def _read(file: str, extension: str, key: str) -> Any:
    if extension == ".npy":
        return np.load(file, allow_pickle=False)
    if extension == ".npz":
        with np.load(file, allow_pickle=False) as archive:
            return _one(dict(archive), key, file)
    if extension in (".pt", ".pth"):
        loaded = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(loaded, dict):
            loaded = _one({k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}, key, file)
        return loaded
    with open(file) as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    if lines and not _numeric(lines[0]):
        lines = lines[1:]
    return np.array([[float(v) for v in line.split(",")] for line in lines], dtype=np.float64)


def _numeric(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


def _one(arrays: dict[str, Any], key: str, file: str) -> Any:
    """The array named ``key``, or the only one when no key is given."""
    if key:
        if key not in arrays:
            raise DataError(f"{file!r} holds no array {key!r}; it holds {sorted(arrays)}")
        return arrays[key]
    if len(arrays) != 1:
        raise DataError(f"{file!r} holds {len(arrays)} arrays {sorted(arrays)}; name one as '{file}:NAME'")
    return next(iter(arrays.values()))


def _checked(array: Any, file: str, dim: int | None) -> torch.Tensor:
    array = real_array(array, repr(file), DataError)
    x = torch.as_tensor(array, dtype=torch.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise DataError(f"{file!r} holds an array of shape {tuple(array.shape)}; expected (N, d) or (N,)")
    if x.shape[0] < 2:
        raise DataError(f"{file!r} holds {x.shape[0]} rows; at least 2 samples are needed")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{file!r} holds points of dimension {x.shape[1]}; the model needs {dim}")
    problem = nonfinite_rows(x)
    if problem:
        raise DataError(f"{file!r} has {problem}; remove or fix them")
    return x
