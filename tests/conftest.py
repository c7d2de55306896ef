"""Shared fixtures: processes and reference mixtures."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from threadpoolctl import threadpool_limits

from scorehamiltonian import EDM, OU, VE, GaussianMixture, VPLinear

# Hypothesis: a fixed, derandomised profile so that CI is fast and deterministic; set
# HYPOTHESIS_PROFILE=thorough for a longer local search.
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One BLAS and one torch thread: the test problems are small, and on a busy 2-core machine
    dense LAPACK calls and OpenMP spin-waits are up to 50 times slower with thread pools than
    without (the dask test's workers and the resume test's child process run with one too,
    so their bits agree with the serial run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Trained models are cached in a folder of the test session, never in the user's home."""
    folder = tmp_path_factory.mktemp("model-cache")
    before = os.environ.get("SCOREHAMILTONIAN_CACHE")
    os.environ["SCOREHAMILTONIAN_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["SCOREHAMILTONIAN_CACHE"]
    else:
        os.environ["SCOREHAMILTONIAN_CACHE"] = before


PROCESSES = [OU(), VPLinear(), VE(sigma_min=0.01, sigma_max=20.0), EDM(sigma_max=40.0)]


@pytest.fixture(params=PROCESSES, ids=lambda p: type(p).__name__)
def process(request):
    return request.param


def random_mixture(d: int, k: int = 3, seed: int = 0) -> GaussianMixture:
    """A mixture with full, moderately conditioned covariances (eigenvalues in [0.05, ~2])."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(k, d, d, dtype=torch.float64, generator=gen)
    covs = a @ a.transpose(-1, -2) / d + 0.05 * torch.eye(d, dtype=torch.float64)
    w = torch.rand(k, dtype=torch.float64, generator=gen) + 0.2
    means = 2.0 * torch.randn(k, d, dtype=torch.float64, generator=gen)
    return GaussianMixture(w / w.sum(), means, covs)


def interior_times(process, n: int = 7) -> torch.Tensor:
    """Times spread over the process's range, including t_min."""
    frac = torch.tensor([0.0, 1e-3, 0.01, 0.05, 0.2, 0.5, 1.0], dtype=torch.float64)[:n]
    return process.t_min + frac * (process.t_max - process.t_min)
