"""A torch module around an exact score: a "learned" model (Score.learned is True) with a known answer."""

from __future__ import annotations

from typing import Any

import torch


class ScoreNetwork(torch.nn.Module):
    """forward(x, t) = score(x, t): the toolkit treats it as a fitted network."""

    def __init__(self, score: Any) -> None:
        super().__init__()
        self.score = score

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.score(x, t)
