"""The mean of independent replicates and its standard error, shared by every Monte Carlo judge.

For values v_1 .. v_n of independent, identically distributed replicates (batches, seeds,
paired differences), the mean v_bar and its standard error std(v; ddof = 1) / sqrt(n), in the
values' own units; one replicate has no spread to measure, so its standard error is infinite.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["mean_and_stderr"]


def mean_and_stderr(values: Any) -> tuple[float, float]:
    """(mean, std(ddof = 1) / sqrt(n)) of n >= 1 replicates (a sequence, array or tensor, any
    shape, flattened); the standard error is inf for n = 1."""
    array = (values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor)
             else np.asarray(values, dtype=np.float64)).reshape(-1)
    if array.size == 0:
        raise ValueError("mean_and_stderr needs at least one value")
    if array.size == 1:
        return float(array[0]), math.inf
    return float(array.mean()), float(array.std(ddof=1)) / math.sqrt(array.size)
