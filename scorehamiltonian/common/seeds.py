"""Seeds: handed on from a caller's random generator, derived per time, and scoped to a block.

:func:`draw_seed` hands a seed from a caller's generator to work done elsewhere;
:func:`time_seed` derives the seed of one time of a sweep from the sweep's seed alone; and
:func:`seeded_rng` seeds the global torch and numpy generators inside a block only.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["draw_seed", "seeded_rng", "time_seed"]


def draw_seed(generator: torch.Generator | None) -> int:
    """An integer seed in [0, 2^62) drawn from ``generator`` (torch's global generator when
    None): work seeded with it elsewhere (a worker process, a fresh generator, a forked RNG)
    is reproduced by the caller's seed."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


def time_seed(seed: int, t: float) -> int:
    """The seed :func:`gap_profile` uses at time t: the first 63 bits of sha256("seed:t.hex()").

    It depends only on the sweep's ``seed`` and the exact float t, not on the order in which
    times are solved, so a resumed or re-ordered sweep draws the same random numbers at t.
    """
    digest = hashlib.sha256(f"{int(seed)}:{float(t).hex()}".encode()).digest()
    return struct.unpack("<Q", digest[:8])[0] >> 1


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed the global torch and numpy RNGs with ``seed`` inside the block, restoring both after.

    :func:`spectral_gap` draws the eigen-solver's random start columns from torch (numpy's
    is seeded too, for a user's score that draws from it); :func:`gap_profile` runs it at
    time t inside ``seeded_rng(time_seed(seed, t))``, which is how a single time is
    reproduced.
    """
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)
