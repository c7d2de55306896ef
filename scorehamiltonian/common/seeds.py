"""Seeds handed on from a caller's random generator."""

from __future__ import annotations

import torch

__all__ = ["draw_seed"]


def draw_seed(generator: torch.Generator | None) -> int:
    """An integer seed in [0, 2^62) drawn from ``generator`` (torch's global generator when
    None): work seeded with it elsewhere (a worker process, a fresh generator, a forked RNG)
    is reproduced by the caller's seed."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
