"""File reading and writing shared by checkpoints and results (private).

Writes are atomic (temporary file, fsync, rename) and raise :class:`OutputError` with the
path and the reason when the folder is missing, unwritable or full; reads of JSON files
raise :class:`CheckpointError` when the file is missing, unreadable or not an object.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

from .errors import CheckpointError, OutputError


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file in the target's folder, fsync it, then os.replace it
    onto ``path``: readers see the old file or the new one, never a partial one, and a
    failure leaves no temporary file behind."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"cannot write {path!r}: {err.strerror or err}") from err
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"cannot write {path!r}: {err.strerror or err}") from err
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """``json.dumps(data)`` to ``path`` through :func:`atomic_write`."""
    text = json.dumps(data).encode()
    atomic_write(path, lambda f: f.write(text))


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`CheckpointError` if missing, unreadable or not an object."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise CheckpointError(f"no file at {os.fspath(path)!r}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read {os.fspath(path)!r}: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{os.fspath(path)!r} does not hold a JSON object")
    return data
