"""Every model kind through a report configuration: the score the report builds is the model's.

A Gaussian data law N(m, v I) whose exact score, epsilon, x0 or denoiser is computed by test
modules (tests/score/adapter_models.py): loaded through each kind of ``[model]``, the resolved
score must equal the exact score to round-off, and a kind's missing or misnamed field is a
ConfigError naming it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorehamiltonian import EDM, OU, ExactScore, GaussianMixture, save_score, train_dsm
from scorehamiltonian.app.config import validate_config
from scorehamiltonian.app.subjects import resolve_subject
from scorehamiltonian.common.errors import ConfigError

from ..score.adapter_models import GaussianNet

DIM = 2


def _weights(tmp_path, kind: str, time_input: str, process) -> str:
    net = GaussianNet(DIM, kind, time_input, process.config())
    with torch.no_grad():
        net.mean.copy_(torch.tensor([0.5, -1.0], dtype=torch.float64))
        net.log_var.fill_(0.3)
    path = tmp_path / f"{kind}-{time_input}.pt"
    torch.save(net.state_dict(), path)
    return str(path)


def _exact(process) -> ExactScore:
    law = GaussianMixture([1.0], [[0.5, -1.0]], [[math.exp(0.3)] * DIM])
    return ExactScore(law, process)


def _check(config: dict, tmp_path, process) -> None:
    score, reference, info = resolve_subject(validate_config(config, tmp_path), progress=False)
    x = torch.randn(5, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (0.3, 1.5):
        torch.testing.assert_close(score(x, t), _exact(process)(x, t), rtol=1e-10, atol=1e-10)
    assert info["kind"] == config["model"]["kind"] and reference.dim == DIM


def test_module_and_k_diffusion_kinds_give_the_models_score(tmp_path):
    factory_kwargs = {"dim": DIM, "time_input": "t", "process": OU().config()}
    reference = {"samples": _samples(tmp_path)}
    module = {"kind": "module", "factory": "tests.score.adapter_models:GaussianNet", "prediction": "eps",
              "weights": _weights(tmp_path, "eps", "t", OU()), "kwargs": {**factory_kwargs, "kind": "eps"}}
    _check({"model": module, "reference": reference}, tmp_path, OU())
    edm = EDM(80.0)
    denoiser = {"kind": "k-diffusion", "factory": "tests.score.adapter_models:GaussianNet",
                "weights": _weights(tmp_path, "x0", "sigma", edm), "sigma_min": 0.01, "sigma_max": 80.0,
                "kwargs": {"dim": DIM, "kind": "x0", "time_input": "sigma", "process": edm.config()}}
    _check({"model": denoiser, "reference": reference}, tmp_path, edm)


def test_torchscript_and_file_kinds(tmp_path):
    net = GaussianNet(DIM, "score", "t", OU().config())
    with torch.no_grad():
        net.mean.copy_(torch.tensor([0.5, -1.0], dtype=torch.float64))
        net.log_var.fill_(0.3)
    torch.jit.save(torch.jit.script(_Wrapped(net)), tmp_path / "net.pt")
    reference = {"samples": _samples(tmp_path)}
    _check({"model": {"kind": "torchscript", "path": "net.pt"}, "reference": reference}, tmp_path, OU())
    trained = train_dsm(torch.randn(200, DIM, dtype=torch.float64), steps=5, batch_size=32, progress=False)
    save_score(trained, tmp_path / "mlp.pt")
    score, _, _ = resolve_subject(validate_config({"model": {"kind": "file", "path": "mlp.pt"},
                                                   "reference": reference}, tmp_path), progress=False)
    x = torch.zeros(3, DIM, dtype=torch.float64)
    torch.testing.assert_close(score(x, 0.5), trained(x, 0.5), rtol=0, atol=0)


class _Wrapped(torch.nn.Module):
    """GaussianNet's score under OU as a TorchScript-able module (alpha = e^-t, sigma^2 = 1 - e^-2t)."""

    def __init__(self, net: GaussianNet) -> None:
        super().__init__()
        self.mean = net.mean
        self.var = net.log_var.detach().exp()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(-t)[:, None]
        sigma2 = -torch.expm1(-2.0 * t)[:, None]
        return -(x - alpha * self.mean) / (alpha**2 * self.var + sigma2)


def _samples(tmp_path) -> str:
    path = tmp_path / "heldout.npy"
    np.save(path, _exact(OU()).sample(300, 0.0, torch.Generator().manual_seed(1)).numpy())
    return str(path)


@pytest.mark.parametrize("model, field", [
    ({"kind": "module", "factory": "tests.score.adapter_models:GaussianNet"}, "model.weights"),
    ({"kind": "k-diffusion", "factory": "a.b:c", "weights": "w.pt", "sigma_min": 0.1}, "model.sigma_max"),
    ({"kind": "torchscript"}, "model.path"),
    ({"kind": "torchscript", "path": "missing.pt"}, "model.path"),
    ({"kind": "mlp", "factory": "a.b:c"}, "model.factory"),
    ({"kind": "diffusers", "path": "no-folder"}, "model.path"),
])
def test_a_kind_names_its_missing_or_misplaced_field(tmp_path, model, field):
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config({"model": model, "reference": {"samples": _samples(tmp_path)}}, tmp_path)


def test_diffusers_kind_reads_a_saved_model_folder(tmp_path):
    """A tiny diffusers UNet2DModel (8 x 8, d = 64) and its DDIM scheduler saved with
    save_pretrained: the config's kind "diffusers" gives the score of from_diffusers on the
    objects, bit for bit."""
    diffusers = pytest.importorskip("diffusers")
    from scorehamiltonian import from_diffusers

    from ..score.test_diffusers_adapter import _unet

    unet, scheduler = _unet(), diffusers.DDIMScheduler(clip_sample=False)
    unet.save_pretrained(tmp_path / "model")
    scheduler.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "images.npy", np.random.default_rng(0).normal(size=(50, 64)))
    config = {"model": {"kind": "diffusers", "path": "model"}, "reference": {"samples": "images.npy"}}
    score, reference, _ = resolve_subject(validate_config(config, tmp_path), progress=False)
    direct = from_diffusers(unet.float(), scheduler)
    x = torch.randn(2, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(score(x, 0.4), direct(x, 0.4), rtol=0, atol=0)
    assert reference.dim == 64 and score.dim == 64
