"""k-diffusion denoisers in (scorehamiltonian.score.adapters.from_k_diffusion), against the real library.

A denoiser D(x, sigma) (EDM convention) is read as a score on EDM (t = sigma):
s = (D(x, sigma) - x) / sigma^2. Checked three ways, all in float64 (agreement to a few
float64 roundings: ROUND = 64 u, u = 2^-53, times the largest term):

- exact: the denoiser of a Gaussian N(m, v I), D = (v x + sigma^2 m) / (v + sigma^2), gives the
  exact score of the noised Gaussian;
- the library's sampler: k_diffusion.sampling.sample_euler, run with tiny randomly initialised
  models wrapped by k_diffusion.external.DiscreteEpsDDPMDenoiser (a discrete DDPM eps-model)
  and VDenoiser (a continuous v-model), reports at each step the denoised estimate and moves x
  by to_d(x, sigma, denoised) = (x - D) / sigma; both must be those the adapted score implies,
  D = x + sigma^2 s and d = -sigma s;
- across adapters: the same eps-model read by from_diffusers (x on DiscreteVP) and through
  DiscreteEpsDDPMDenoiser by from_k_diffusion (x / alpha on EDM) gives, at the table's noise
  levels sigma_k = sigma_n / alpha_n, s_k(y) = alpha_n s_n(alpha_n y).

How the real package is loaded: k-diffusion 0.1.1.post1 pins torchvision, clip, clean-fid and
more, so the test command installs it with ``pip install --no-deps`` (installing its
dependencies would replace the CPU torch). Its ``__init__`` imports every submodule (training,
evaluation, CLIP), so the fixture below registers an empty ``k_diffusion`` package object with
the installed package's path and imports only ``k_diffusion.sampling`` and
``k_diffusion.external``, the sampler code under test, unchanged. They import
``k_diffusion.utils``, whose first lines import ``torchvision.transforms.functional`` for two
PIL-image helpers that sampling never calls; where torchvision is not installed an empty
module stands in for it while those two modules are imported and is removed from
``sys.modules`` right after (the k_diffusion entries go when this module's tests end). Their
other imports (torchsde, torchdiffeq, scipy, tqdm, PIL, safetensors) are real: torchsde and
safetensors come with the test extras, the rest with the toolkit's own dependencies.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch

from scorehamiltonian.common.errors import TimeRangeError
from scorehamiltonian.score import AdaptedScore, from_diffusers, from_k_diffusion
from scorehamiltonian.score.adapters import RANGE_SLACK
from scorehamiltonian.score.interface import ExactScore
from scorehamiltonian.score.mixture import GaussianMixture
from scorehamiltonian.score.processes import EDM

ROUND = 64 * 2.0**-53
SHAPE = (1, 4, 4)
INSTALL = "pip install --no-deps k-diffusion==0.1.1.post1 (README's test command does)"


@pytest.fixture(scope="module")
def kd():
    """k_diffusion.sampling and k_diffusion.external, imported without the package's __init__."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip(f"k-diffusion is not installed: {INSTALL}")
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "k_diffusion"}
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    stubs = ()
    if importlib.util.find_spec("torchvision") is None:
        stubs = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
        modules = [types.ModuleType(name) for name in stubs]
        modules[0].transforms, modules[1].functional = modules[1], modules[2]
        sys.modules.update(zip(stubs, modules))
    try:
        loaded = types.SimpleNamespace(sampling=importlib.import_module("k_diffusion.sampling"),
                                       external=importlib.import_module("k_diffusion.external"))
    finally:  # the stand-in lives only while k_diffusion.utils is imported (diffusers probes torchvision)
        for name in stubs:
            del sys.modules[name]
    yield loaded
    for name in [name for name in sys.modules if name.split(".")[0] == "k_diffusion"]:
        del sys.modules[name]
    sys.modules.update(saved)


class TinyNet(torch.nn.Module):
    """A small random conv net f(x, c) on (n, 1, 4, 4) images, conditioned on c (a timestep or
    time) through a sinusoidal embedding: the stand-in for an eps- or v-model."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 1, 3, padding=1)
            self.embed = torch.nn.Linear(4, 8)
        self.double()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = c.to(x.dtype)[:, None] * torch.tensor([1e-3, 1e-2, 1e-1, 1.0], dtype=x.dtype)
        emb = self.embed(torch.cat([torch.sin(c[:, :2]), torch.cos(c[:, 2:])], dim=1))
        return self.conv2(torch.nn.functional.silu(self.conv1(x) + emb[:, :, None, None]))


def _table(n: int = 1000) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, n, dtype=torch.float64), 0)


def _close(got, want, *terms):
    scale = max(float(v.abs().max()) for v in (got, want, *terms))
    torch.testing.assert_close(got, want, rtol=0.0, atol=ROUND * scale)


def test_gaussian_denoiser_gives_the_exact_score():
    mean, var = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3

    def gaussian_denoiser(x, sigma):
        sigma2 = sigma[:, None] ** 2
        return (var * x + sigma2 * mean) / (var + sigma2)

    score = from_k_diffusion(gaussian_denoiser, sigma_min=0.002, sigma_max=80.0)
    assert isinstance(score, AdaptedScore) and score.time_range == (0.002, 80.0)
    assert score.process == EDM(80.0 * (1 + RANGE_SLACK))
    exact = ExactScore(GaussianMixture([1.0], [mean.tolist()], [var * torch.eye(2, dtype=torch.float64)]), EDM(80.0))
    x = 3 * torch.randn(4, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.002, 0.1, 1.0, 80.0):
        want = exact(x.reshape(20, 2), sigma).reshape(4, 5, 2)
        _close(score(x, sigma), want, x / sigma**2)


def _check_euler_run(kd, denoiser, score, sigmas):
    """sample_euler's own denoised estimates and steps against the adapted score's."""
    x = sigmas[0] * torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seen = []
    final = kd.sampling.sample_euler(denoiser, x, sigmas, callback=seen.append, disable=True)
    assert len(seen) == len(sigmas) - 1
    for i, step in enumerate(seen):
        x_i, sigma = step["x"], float(step["sigma"])
        with torch.no_grad():
            s = score(x_i.reshape(3, -1), sigma).reshape(x_i.shape)
        _close(step["denoised"], x_i + sigma**2 * s, x_i)
        _close(kd.sampling.to_d(x_i, step["sigma"], step["denoised"]), -sigma * s, x_i / sigma)
        x_next = seen[i + 1]["x"] if i + 1 < len(seen) else final
        _close(x_next, x_i - sigma * s * (float(sigmas[i + 1]) - sigma), x_i, x_next)


def test_euler_sampler_of_a_discrete_eps_denoiser(kd):
    denoiser = kd.external.DiscreteEpsDDPMDenoiser(TinyNet(), _table(), quantize=False)
    score = from_k_diffusion(denoiser, sample_shape=SHAPE)  # sigma_min, sigma_max: the denoiser's
    assert score.time_range == (float(denoiser.sigma_min), float(denoiser.sigma_max)) and score.dim == 16
    _check_euler_run(kd, denoiser, score, denoiser.get_sigmas(8))


def test_euler_sampler_of_a_continuous_v_denoiser(kd):
    denoiser = kd.external.VDenoiser(TinyNet(seed=3))
    sigmas = kd.sampling.get_sigmas_karras(8, 0.01, 80.0, device="cpu").double()  # computed in float32
    score = from_k_diffusion(denoiser, sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]), sample_shape=SHAPE)
    _check_euler_run(kd, denoiser, score, sigmas)


def test_the_same_eps_model_through_diffusers_and_k_diffusion(kd):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler()
    model = TinyNet(seed=5)
    vp = from_diffusers(model, scheduler, sample_shape=SHAPE)
    denoiser = kd.external.DiscreteEpsDDPMDenoiser(model, scheduler.alphas_cumprod.double(), quantize=False)
    k = from_k_diffusion(denoiser, sample_shape=SHAPE)
    y = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for n in (0, 1, 250, 998, 999):
        sigma_k = float(denoiser.sigmas[n])
        t = vp.process.timestep_to_t(n)
        alpha = float(vp.process.alpha(t))
        with torch.no_grad():
            want = alpha * vp(alpha * y * sigma_k, t)
            _close(k(y * sigma_k, sigma_k), want, y / sigma_k)


def test_noise_levels_outside_the_denoiser_range(kd):
    denoiser = kd.external.DiscreteEpsDDPMDenoiser(TinyNet(), _table(), quantize=False)
    score = from_k_diffusion(denoiser, sample_shape=SHAPE)
    x = torch.zeros(4, 16, dtype=torch.float64)
    lo, hi = score.time_range
    with torch.no_grad():  # the ends, and a sampler's rounding of them, are inside
        score(x, torch.tensor([lo, hi, lo * (1 - 0.5 * RANGE_SLACK), hi * (1 + 0.5 * RANGE_SLACK)], dtype=torch.float64))
    for bad in (0.5 * lo, lo * (1 - 2 * RANGE_SLACK)):
        with pytest.raises(TimeRangeError, match=f"lies outside \\[{lo}, {hi}\\], the range DiscreteEpsDDPMDenoiser"):
            score(x, bad)
    for bad in (2 * hi, hi * (1 + 2 * RANGE_SLACK)):  # beyond the process EDM(sigma_max (1 + slack))
        with pytest.raises(TimeRangeError, match="outside the valid time range"):
            score(x, bad)
    with pytest.raises(ValueError, match="pass sigma_max="):
        from_k_diffusion(lambda x, sigma: x, sigma_min=0.1)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        from_k_diffusion(denoiser, sigma_min=200.0)
    with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
        from_k_diffusion(denoiser, sigma_min=0.0, sigma_max=math.inf)
