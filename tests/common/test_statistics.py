"""mean_and_stderr (scorehamiltonian.common.statistics) against its formula and a known law."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorehamiltonian.common.statistics import mean_and_stderr


def test_mean_and_stderr_is_the_formula_for_every_input_kind():
    values = [1.0, 2.0, 4.0, 7.0]
    expected = (3.5, math.sqrt(((1 - 3.5) ** 2 + (2 - 3.5) ** 2 + (4 - 3.5) ** 2 + (7 - 3.5) ** 2) / 3) / 2)
    for given in (values, np.array(values), torch.tensor(values), torch.tensor(values).reshape(2, 2)):
        assert mean_and_stderr(given) == pytest.approx(expected, rel=1e-14)


def test_the_stderr_is_the_spread_of_the_mean_over_replicates():
    # 400 means of 50 standard normals: their spread is 1 / sqrt(50); each call's stderr estimates it.
    generator = torch.Generator().manual_seed(0)
    draws = torch.randn(400, 50, generator=generator, dtype=torch.float64)
    results = np.array([mean_and_stderr(row) for row in draws])
    assert results[:, 0].std(ddof=1) == pytest.approx(1 / math.sqrt(50), rel=0.1)
    assert results[:, 1].mean() == pytest.approx(1 / math.sqrt(50), rel=0.05)


def test_one_value_has_no_error_and_none_is_refused():
    assert mean_and_stderr([2.5]) == (2.5, math.inf)
    with pytest.raises(ValueError, match="at least one"):
        mean_and_stderr([])
