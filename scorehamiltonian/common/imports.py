"""Resolving ``"package.module:name"`` strings: the one way a configuration names the user's code.

Only the named module is imported (with its parent packages, as Python does); ``name`` may be
dotted (``Class.method``). Every failure raises :class:`ConfigError` naming the string.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from .errors import ConfigError

__all__ = ["resolve"]

_SPEC = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def resolve(spec: str, what: str = "object") -> Any:
    """The object named by ``spec`` = ``"package.module:name"`` (``what`` names it in errors)."""
    match = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(f"{what} {spec!r} must have the form 'package.module:name'")
    module_name, attribute = match.groups()
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{what} {spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target
