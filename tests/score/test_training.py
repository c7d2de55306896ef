"""Denoising score matching and checkpoints (scorehamiltonian.score.training).

The trained score is judged against the exact score of the Gaussian mixture it was trained
on, by the p_t-weighted relative L2 error sqrt( int p_t |s_theta - s|^2 dx / int p_t |s|^2 dx )
computed by quadrature on a fine grid.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scorehamiltonian.common.errors import CheckpointError, InputDtypeError, InputShapeError
from scorehamiltonian.score.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_score, save_score
from scorehamiltonian.score.interface import ExactScore, ModelScore
from scorehamiltonian.score.mixture import GaussianMixture
from scorehamiltonian.score.processes import EDM, OU, VE, VPLinear
from scorehamiltonian.score.training import MLPScore, train_dsm

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _two_modes() -> GaussianMixture:
    return GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.25, 0.25])


@pytest.fixture(scope="module")
def trained() -> tuple[ModelScore, GaussianMixture, float]:
    """The default DSM training on 10^4 draws of the two-mode mixture (trained once)."""
    mixture = _two_modes()
    samples = mixture.sample(10_000, generator=torch.Generator().manual_seed(1234))
    start = time.perf_counter()
    score = train_dsm(samples, OU(), progress=False)
    return score, mixture, time.perf_counter() - start


def _relative_score_error(score: ModelScore, exact: ExactScore, t: float) -> float:
    x = torch.linspace(-10.0, 10.0, 8001, dtype=torch.float64)[:, None]
    dx = float(x[1, 0] - x[0, 0])
    density = exact.log_prob(x, t).exp()
    mass = float(density.sum()) * dx
    assert abs(mass - 1.0) < 1e-8, f"the grid misses mass at t = {t}: {mass}"
    assert float(density[[0, -1]].max()) < 1e-12
    truth = exact(x, t)
    with torch.no_grad():
        learned = score(x, t)
    num = (density * ((learned - truth) ** 2).sum(-1)).sum()
    den = (density * (truth**2).sum(-1)).sum()
    return float(torch.sqrt(num / den))


def test_dsm_score_matches_exact_mixture_score(trained):
    score, mixture, seconds = trained
    exact = ExactScore(mixture, OU())
    errors = {t: _relative_score_error(score, exact, t) for t in TIMES}
    print(f"\ntrain_dsm defaults on 10^4 samples: {seconds:.1f} s; final loss "
          f"{score.model.training_config['final_loss']:.4f}")
    for t, err in errors.items():
        print(f"  t = {t:4}: relative L2 score error (p_t-weighted) = {100 * err:.2f} %")
    assert all(err < 0.10 for err in errors.values()), errors


def test_trained_score_is_model_score_with_config(trained):
    score, _, _ = trained
    assert isinstance(score, ModelScore) and score.kind == "eps"
    assert isinstance(score.model, MLPScore) and score.dim == 1
    assert score.process == OU()
    assert score.model.config["process_config"] == OU().config()
    assert score.model.training_config["n_samples"] == 10_000
    out = score(torch.zeros(3, 4, 1, dtype=torch.float64), 0.5)
    assert out.shape == (3, 4, 1) and out.dtype == torch.float64


def test_same_seed_gives_bit_identical_parameters():
    samples = _two_modes().sample(500, generator=torch.Generator().manual_seed(7))
    rng_before = torch.random.get_rng_state()
    runs = [
        train_dsm(samples, steps=40, batch_size=128, seed=seed, progress=False).model
        for seed in (3, 3, 4)
    ]
    assert torch.equal(torch.random.get_rng_state(), rng_before), "the global RNG was touched"
    first, again, other = (dict(m.named_parameters()) for m in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_two_dimensional_numpy_samples():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(300, 2)) * [1.0, 3.0] + [0.5, -1.0]
    score = train_dsm(samples, steps=20, batch_size=64, progress=False)
    assert score.dim == 2
    assert score.model.config["data_mean"] == pytest.approx(samples.mean(0).tolist())
    assert score(torch.zeros(5, 2, dtype=torch.float64), 1.0).shape == (5, 2)


@pytest.mark.parametrize(
    "proc", [VPLinear(), VE(sigma_min=0.01, sigma_max=20.0), EDM(sigma_max=40.0)], ids=repr
)
def test_other_processes_train_and_round_trip(proc, tmp_path):
    samples = _two_modes().sample(500, generator=torch.Generator().manual_seed(3))
    score = train_dsm(samples, proc, steps=30, batch_size=128, t_min=0.05 * proc.t_max, progress=False)
    path = tmp_path / "score.pt"
    save_score(score, path)
    loaded = load_score(path)
    assert loaded.process == proc
    x = torch.linspace(-3.0, 3.0, 7, dtype=torch.float64)[:, None]
    times = torch.linspace(0.05, 1.0, 7, dtype=torch.float64) * proc.t_max
    with torch.no_grad():
        assert torch.equal(loaded(x, times), score(x, times))
        assert bool(torch.isfinite(score(x, times)).all())


def test_save_load_round_trip(trained, tmp_path):
    score, _, _ = trained
    path = tmp_path / "score.pt"
    save_score(score, path)
    loaded = load_score(path)
    assert isinstance(loaded, ModelScore) and isinstance(loaded.model, MLPScore)
    assert loaded.kind == "eps" and loaded.process == score.process and loaded.dim == score.dim
    assert loaded.model.config == score.model.config
    assert loaded.model.training_config == score.model.training_config
    x = torch.linspace(-4.0, 4.0, 41, dtype=torch.float64)[:, None]
    for t in (0.05, 0.5, 3.0):
        with torch.no_grad():
            assert torch.equal(loaded(x, t), score(x, t))
    assert [p.name for p in tmp_path.iterdir()] == ["score.pt"], "a temporary file was left behind"


def test_checkpoint_loads_in_fresh_process(trained, tmp_path):
    score, _, _ = trained
    path = tmp_path / "score.pt"
    save_score(score, str(path))
    x = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)[:, None]
    with torch.no_grad():
        expected = score(x, 0.3)[:, 0].tolist()
    code = (
        "import json, sys, torch\n"
        "from scorehamiltonian.score.checkpoints import load_score\n"
        "score = load_score(sys.argv[1])\n"
        "x = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)[:, None]\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(score(x, 0.3)[:, 0].tolist()))\n"
        "print(type(score).__name__, type(score.model).__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    values, names = result.stdout.strip().splitlines()
    assert json.loads(values) == expected
    assert names == "ModelScore MLPScore"


def test_failed_save_leaves_no_file(trained, tmp_path, monkeypatch):
    score, _, _ = trained
    path = tmp_path / "score.pt"
    path.write_bytes(b"previous contents")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_score(score, path)
    assert path.read_bytes() == b"previous contents"
    assert [p.name for p in tmp_path.iterdir()] == ["score.pt"]


def test_save_score_refuses_other_scores(tmp_path):
    with pytest.raises(TypeError, match="MLPScore"):
        save_score(ExactScore(_two_modes()), tmp_path / "a.pt")
    with pytest.raises(TypeError, match="MLPScore"):
        save_score(ModelScore(lambda x, t: x, kind="eps"), tmp_path / "b.pt")
    assert not list(tmp_path.iterdir())


class _Payload:
    """Unpickling this object runs os.mkdir(marker): code a checkpoint must never execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _valid_payload(score: ModelScore) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": dict(score.model.config),
        "training": None,
        "state_dict": score.model.state_dict(),
    }


def test_load_score_errors(trained, tmp_path):
    score, _, _ = trained
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_score(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_score(tmp_path)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(64) + b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_score(garbage)

    cases = {
        "not a dict": ([1.0, 2.0], "not a dict"),
        "other format": ({**_valid_payload(score), "format": "someone.else"}, "found format 'someone.else'"),
        "tensor format": ({**_valid_payload(score), "format": torch.zeros(1)}, "found format"),
        "newer version": ({**_valid_payload(score), "version": CHECKPOINT_VERSION + 1}, "version"),
        "missing keys": ({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}, "lacks the keys"),
        "config keys": (
            {**_valid_payload(score), "config": {"dim": 1}}, "config keys"
        ),
        "bad process": (
            {**_valid_payload(score), "config": {**score.model.config, "process_config": {"name": "Nope"}}},
            "do not fit",
        ),
        "wrong weights": (
            {**_valid_payload(score), "state_dict": {"out.weight": torch.zeros(3, 3)}}, "do not fit"
        ),
    }
    for name, (payload, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match=message):
            load_score(path)


def test_load_score_never_unpickles_code(trained, tmp_path):
    score, _, _ = trained
    marker = tmp_path / "code-ran"
    path = tmp_path / "malicious.pt"
    torch.save({**_valid_payload(score), "training": {"x": _Payload(marker)}}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_score(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists(), "control: the payload does run code when unpickled without weights_only"


@pytest.mark.parametrize(
    ("samples", "error", "message"),
    [
        (np.zeros(10), InputShapeError, "shape"),
        (np.zeros((4, 3, 1)), InputShapeError, "shape"),
        (np.float64(1.0), InputShapeError, "scalar"),
        (np.zeros((1, 2)), ValueError, "at least 2"),
        (np.array([[0.0], [np.nan], [1.0]]), ValueError, "NaN"),
        (np.array([[0.0], [np.inf], [1.0]]), ValueError, "NaN or Inf"),
        (torch.zeros(5, 1, dtype=torch.int64), InputDtypeError, "dtype"),
    ],
)
def test_train_dsm_rejects_bad_samples(samples, error, message):
    with pytest.raises(error, match=message):
        train_dsm(samples, steps=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"t_min": 0.0}, "t_min"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_train_dsm_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_dsm(np.zeros((10, 1)), progress=False, **kwargs)


def test_held_out_rows_and_early_stopping():
    """validation=f holds out round(f n) rows that are never trained on and checks the loss on
    them every check_every steps; the kept model's recorded held-out loss is its loss on the
    same fixed draws (recomputed here), and validation=0 keeps the last parameters."""
    from scorehamiltonian.score.training import _HELD_OUT_DRAWS, _losses, _split

    samples = _two_modes().sample(400, generator=torch.Generator().manual_seed(5))
    score = train_dsm(samples, steps=60, batch_size=64, check_every=20, validation=0.25, seed=2, progress=False)
    record = score.model.training_config
    assert record["n_samples"] == 400 and record["n_train"] == 300 and record["best_step"] in (20, 40, 60)
    train, held = _split(400, 0.25, 2)
    assert held.numel() == 100 and not set(train.tolist()) & set(held.tolist())
    assert score.t_trained == record["t_min"] == pytest.approx(1e-2)
    everything = train_dsm(samples, steps=60, batch_size=64, validation=0.0, seed=2, progress=False)
    assert everything.model.training_config["n_train"] == 400
    assert everything.model.training_config["held_out_loss"] is None
    assert _HELD_OUT_DRAWS >= 1000 and math.isfinite(record["held_out_loss"])
    held_loss = float(_losses(score.model, *_held_draws(samples, held, score)).mean())
    assert held_loss == pytest.approx(record["held_out_loss"], rel=1e-6)


def test_an_earlier_check_wins_only_by_a_significant_margin():
    """The final parameters stay unless an earlier check's per-draw held-out losses lie below
    them by more than EARLY_STOP_Z paired standard errors: with 4096 draws of spread 0.1 the
    standard error of the mean difference is 0.1 / 64 = 1.6e-3, so a margin of 1e-3 is noise
    and one of 1e-2 is an over-fit."""
    from scorehamiltonian.score.training import EARLY_STOP_Z, _significantly_lower

    earlier = 1.0 + torch.rand(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = 0.1 * torch.randn(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert EARLY_STOP_Z == 2.0
    assert not _significantly_lower(earlier, earlier + 1e-3 + noise)
    assert _significantly_lower(earlier, earlier + 1e-2 + noise)
    assert not _significantly_lower(earlier, earlier - 1e-2 + noise)


@pytest.mark.slow  # 7 s
def test_a_network_that_memorises_its_rows_is_stopped_early():
    """20 training rows, 128 hidden units, 1000 steps: the held-out loss climbs significantly
    once the network memorises its rows, and an earlier check's parameters are kept (measured:
    step 700)."""
    samples = _two_modes().sample(40, generator=torch.Generator().manual_seed(5))
    score = train_dsm(samples, steps=1000, hidden=128, batch_size=128, check_every=50, validation=0.5, seed=2,
                      progress=False)
    assert score.model.training_config["best_step"] < 1000


def _held_draws(samples, held, score):
    """The held-out draws train_dsm made for seed 2 (the same recipe, re-run)."""
    from scorehamiltonian.score.training import _HELD_OUT_DRAWS, _training_log_snr_range

    process, record = score.process, score.model.training_config
    x64 = torch.as_tensor(samples, dtype=torch.float64)
    lam_lo, lam_hi = _training_log_snr_range(process, record["t_min"], float(x64.var(0).max()))
    gen = torch.Generator().manual_seed(record["seed"] + 1)
    rows = x64[held].float()
    x_batch = rows[torch.randint(rows.shape[0], (_HELD_OUT_DRAWS,), generator=gen)]
    lam = torch.rand(_HELD_OUT_DRAWS, generator=gen, dtype=torch.float64)
    t = process.log_snr_to_t(lam_lo + (lam_hi - lam_lo) * lam).clamp(record["t_min"], process.t_max)
    z = torch.randn(_HELD_OUT_DRAWS, 1, generator=gen)
    return process.perturb(x_batch.double(), t, z.double()).float(), t, z


def test_default_sizes_follow_the_dimension_and_the_data():
    from scorehamiltonian.score.training import default_size

    assert default_size(1, 10_000) == (32, 4, 1200) and default_size(2, 50_000) == (32, 4, 1200)
    assert default_size(8, 50_000) == (64, 3, 1200)
    assert default_size(32, 50_000) == (256, 3, 2263)
    assert default_size(64, 1797) == (169, 3, 3200)


def test_a_model_warns_below_its_training_time():
    from scorehamiltonian import ExtrapolationWarning

    samples = _two_modes().sample(200, generator=torch.Generator().manual_seed(1))
    score = train_dsm(samples, steps=5, batch_size=32, t_min=0.05, progress=False)
    x = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.warns(ExtrapolationWarning, match="training t_min = 0.05"):
        score(x, 0.01)
    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.simplefilter("error", ExtrapolationWarning)
        score(x, 0.05)
        score(x, 1.0)


def test_the_residual_fades_below_the_training_range():
    """Below log_snr_min the learned residual is damped by exp(3/2 (lambda - log_snr_min)): at the
    same network input y (the embedding is held at the range's end there) the residual is exactly
    that fraction of its value at the end of the range (without the damping the digits
    ensemble's probability-flow ODE grew to |x| = 1e8 between t = 3 and 10)."""
    torch.manual_seed(0)
    mlp = MLPScore(dim=2, hidden=8, log_snr_min=-4.0, log_snr_max=6.0, data_mean=[0.5, -1.0], data_std=[2.0, 0.5])
    torch.nn.init.normal_(mlp.out.weight)
    mlp = mlp.double()
    proc = OU()
    y = torch.tensor([[0.3, -1.2], [2.0, 0.4]], dtype=torch.float64)

    def residual(lam: float) -> torch.Tensor:
        t = proc.log_snr_to_t(torch.tensor(lam, dtype=torch.float64))
        alpha, sigma = float(proc.alpha(t)), float(proc.sigma(t))
        c_in = (alpha**2 * mlp.data_var + sigma**2).rsqrt()
        x = y / c_in + alpha * mlp.data_mean
        return mlp(x, t.expand(2)) - sigma * c_in * y

    end = residual(-4.0)
    assert end.abs().max() > 0.1
    for lam in (-5.0, -8.0, -14.0):
        torch.testing.assert_close(residual(lam), math.exp(1.5 * (lam + 4.0)) * end, rtol=1e-9, atol=1e-15)
