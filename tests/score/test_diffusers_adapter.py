"""diffusers models in (scorehamiltonian.score.adapters.from_diffusers), against the real library.

A tiny randomly initialised ``UNet2DModel`` (8 x 8 images, one channel, d = 64) in float64
is read as a score on :class:`DiscreteVP`; at the grid times t_n = n / (N - 1) that score must
drive each of the library's samplers (DDPM, DDIM, Euler-discrete, DPM-Solver multistep) to the
very point the library's own ``step`` computes from the model's raw output, for every
``prediction_type``. From the score s at timestep n (alpha, sigma of the process there):

    x0_hat = (x + sigma^2 s) / alpha,   eps_hat = -sigma s,

- DDIM (eta = 0) and DPM-Solver++'s first, first-order step: x' = alpha' x0_hat + sigma' eps_hat;
- DDPM: the posterior mean of Ho et al. (2020, eq. 7),
  sqrt(abar') beta / (1 - abar) x0_hat + sqrt(1 - beta) (1 - abar') / (1 - abar) x, plus
  sqrt(beta (1 - abar') / (1 - abar)) z with z drawn from the same seeded generator
  (diffusers draws its variance noise as torch.randn(shape, generator) on the CPU);
- Euler-discrete works on y = x / alpha with noise level sigma_k = sigma / alpha and feeds the
  model scale_model_input(y) = y / sqrt(sigma_k^2 + 1) (which must be alpha y = x); its ODE
  derivative (y - D) / sigma_k is eps_hat, so y' = y + eps_hat (sigma_k' - sigma_k).

Round-off: the library keeps alphas_cumprod and the Euler / DPM sigmas in float32 and Euler
rounds y to float32, so every coefficient carries a relative error of a few u = 2^-24; the
results agree to ROUND = 16 u times the largest term involved (measured: at most 2 u; a time
map off by one timestep is off by 1e-4 to 3e-2 relative).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from scorehamiltonian.common.errors import CheckpointError, ConfigError, InputShapeError
from scorehamiltonian.score import AdaptedScore, DiscreteVP, from_diffusers

diffusers = pytest.importorskip("diffusers")
# diffusers' own schedulers call np.array(tensor, copy=False) (a numpy 2 DeprecationWarning).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ROUND = 16 * 2.0**-24
PREDICTIONS = ["epsilon", "v_prediction", "sample"]
SCHEDULERS = ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler"]


def _unet(out_channels=1, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = diffusers.UNet2DModel(
            sample_size=8, in_channels=1, out_channels=out_channels, layers_per_block=1,
            block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    return model.double().eval()


@pytest.fixture(scope="module")
def unet():
    return _unet()


def _scheduler(name, prediction, **config):
    if name in ("DDPMScheduler", "DDIMScheduler"):
        config.setdefault("clip_sample", False)  # clipping x0 is a sampler option, not the score
    return getattr(diffusers, name)(prediction_type=prediction, **config)


def _images(n=3, seed=0):
    return torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _raw(model, x, timestep):
    with torch.no_grad():
        return model(x, timestep).sample


def _score_view(score, x, timestep):
    """alpha, sigma of the process at timestep n, and x0_hat, eps_hat from the adapted score at x."""
    t = score.process.timestep_to_t(float(timestep))
    alpha, sigma = score.process.alpha(t), score.process.sigma(t)
    with torch.no_grad():
        s = score(x.reshape(x.shape[0], -1), t).reshape(x.shape)
    return alpha, sigma, (x + sigma**2 * s) / alpha, -sigma * s


def _close(got, want, *terms):
    scale = max(float(v.abs().max()) for v in (got, want, *terms))
    torch.testing.assert_close(got, want, rtol=0.0, atol=ROUND * scale)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULERS)
def test_sampler_steps_are_the_ones_the_score_implies(unet, name, prediction):
    sched = _scheduler(name, prediction)
    score = from_diffusers(unet, sched)
    assert isinstance(score, AdaptedScore) and isinstance(score.process, DiscreteVP) and score.dim == 64
    assert score.prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]
    process = score.process
    sched.set_timesteps(10)
    steps = sched.timesteps
    for i in range(3):
        n, n_next = steps[i], steps[i + 1]
        t_next = process.timestep_to_t(float(n_next))
        alpha_next, sigma_next = process.alpha(t_next), process.sigma(t_next)
        x = _images(seed=i)
        if name == "EulerDiscreteScheduler":
            alpha, sigma, x0_hat, eps_hat = _score_view(score, x, n)
            y = x / alpha
            model_input = sched.scale_model_input(y, n)
            _close(model_input, x, y)
            out = sched.step(_raw(unet, model_input, n), n, y)
            _close(out.pred_original_sample, x0_hat, y)
            _close(out.prev_sample, y + eps_hat * (sigma_next / alpha_next - sigma / alpha), y, eps_hat)
            continue
        alpha, sigma, x0_hat, eps_hat = _score_view(score, x, n)
        raw = _raw(unet, x, n)
        if name == "DDIMScheduler":
            out = sched.step(raw, n, x, eta=0.0)
            _close(out.pred_original_sample, x0_hat, x, raw)
            _close(out.prev_sample, alpha_next * x0_hat + sigma_next * eps_hat, x0_hat, eps_hat)
        elif name == "DDPMScheduler":
            out = sched.step(raw, n, x, generator=torch.Generator().manual_seed(i))
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=x.dtype)
            abar, abar_next = alpha**2, alpha_next**2
            beta = 1 - abar / abar_next
            mean = (abar_next.sqrt() * beta * x0_hat + (1 - beta).sqrt() * (1 - abar_next) * x) / (1 - abar)
            _close(out.pred_original_sample, x0_hat, x, raw)
            _close(out.prev_sample, mean + (beta * (1 - abar_next) / (1 - abar)).sqrt() * z, x0_hat, x, z)
        else:  # DPM-Solver++ (2M): the data prediction it stores, and its first (first-order) step
            out = sched.step(raw, n, x)
            _close(sched.model_outputs[-1], x0_hat, x, raw)
            if i == 0:
                _close(out.prev_sample, alpha_next * x0_hat + sigma_next * eps_hat, x0_hat, eps_hat)


def test_learned_variance_model_is_read_by_its_first_channels():
    unet = _unet(out_channels=2, seed=1)
    sched = _scheduler("DDPMScheduler", "epsilon", variance_type="learned_range")
    score = from_diffusers(unet, sched)
    sched.set_timesteps(10)
    x, n = _images(), sched.timesteps[2]
    out = sched.step(_raw(unet, x, n), n, x, generator=torch.Generator().manual_seed(0))
    _close(out.pred_original_sample, _score_view(score, x, n)[2], x)


def test_process_is_the_table_and_the_model_sees_fractional_timesteps(unet):
    sched = _scheduler("DDIMScheduler", "epsilon", beta_schedule="squaredcos_cap_v2")
    score = from_diffusers(unet, sched)
    process = score.process
    n = torch.arange(1000, dtype=torch.float64)
    # alpha^2 = exp(-L) at the knots L_n = -log abar_n: the table up to (a few + L_n) float64 roundings
    table = sched.alphas_cumprod.double()
    relative = (process.alpha(process.timestep_to_t(n)) ** 2 - table).abs() / table
    assert bool((relative <= (4 - table.log()) * 2.0**-53).all())
    x = _images()
    for timestep in (0.0, 17.37, 480.5, 998.9):
        t = process.timestep_to_t(timestep)
        with torch.no_grad():
            s = score(x.reshape(3, 64), t).reshape(x.shape)
        eps = _raw(unet, x, torch.tensor(timestep, dtype=torch.float64))
        torch.testing.assert_close(s, -eps / process.sigma(t), rtol=1e-13, atol=0.0)


def test_save_pretrained_round_trip(tmp_path, unet):
    sched = _scheduler("EulerDiscreteScheduler", "v_prediction")
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    sched.save_pretrained(tmp_path / "pipe" / "scheduler")
    unet.save_pretrained(tmp_path / "flat")
    sched.save_pretrained(tmp_path / "flat")
    x = _images().reshape(3, 64)
    with torch.no_grad():
        want = from_diffusers(unet, sched)(x, 0.4)
        for model, scheduler in [(tmp_path / "pipe", None), (tmp_path / "pipe" / "unet", None),
                                 (tmp_path / "flat", None), (str(tmp_path / "pipe" / "unet"), tmp_path / "pipe"),
                                 (tmp_path / "flat", tmp_path / "pipe" / "scheduler" / "scheduler_config.json")]:
            loaded = from_diffusers(model, scheduler, dtype=torch.float64)
            assert loaded.prediction == "v" and loaded.process == from_diffusers(unet, sched).process
            assert torch.equal(loaded(x, 0.4), want)
    float32 = from_diffusers(tmp_path / "flat")  # diffusers' default dtype
    assert float32.compute_dtype(torch.float64) == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(float32(x, 0.4), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the folder, file or field; nothing written.
# ---------------------------------------------------------------------------------------------


def _tree(folder):
    return {os.path.relpath(os.path.join(root, f), folder): os.stat(os.path.join(root, f)).st_mtime_ns
            for root, _, files in os.walk(folder) for f in files}


def test_folders_without_a_scheduler_or_a_model(tmp_path, unet):
    unet.save_pretrained(tmp_path / "unet")
    (tmp_path / "empty").mkdir()
    before = _tree(tmp_path)
    unet_dir = str(tmp_path / "unet")
    with pytest.raises(CheckpointError, match="no scheduler config for") as err:
        from_diffusers(tmp_path / "unet")
    assert repr(unet_dir) in str(err.value)
    assert repr(os.path.join(unet_dir, "scheduler_config.json")) in str(err.value)
    assert repr(os.path.join(str(tmp_path), "scheduler", "scheduler_config.json")) in str(err.value)
    with pytest.raises(CheckpointError, match="no scheduler config for") as err:
        from_diffusers(unet, tmp_path / "empty")
    assert repr(os.path.join(str(tmp_path / "empty"), "scheduler_config.json")) in str(err.value)
    with pytest.raises(CheckpointError, match="holds no config.json"):
        from_diffusers(tmp_path / "empty", diffusers.DDIMScheduler())
    with pytest.raises(CheckpointError, match="no folder at"):
        from_diffusers(tmp_path / "absent", diffusers.DDIMScheduler())
    with pytest.raises(TypeError, match="pass scheduler="):
        from_diffusers(unet)
    assert _tree(tmp_path) == before


def _write_config(folder, name, **fields):
    folder.mkdir(exist_ok=True)
    config = {"_class_name": "DDIMScheduler", **fields}
    (folder / name).write_text(json.dumps(config))
    return folder / name


def test_config_fields_that_cannot_be_read(tmp_path, unet):
    cases = [
        ({"_class_name": "NotAScheduler"}, "field '_class_name' = 'NotAScheduler'"),
        ({"_class_name": "UNet2DModel"}, "field '_class_name' = 'UNet2DModel' is not a diffusers SchedulerMixin"),
        ({"prediction_type": "flow_prediction"}, "field 'prediction_type' = 'flow_prediction'"),
        ({"rescale_betas_zero_snr": True}, "alphas_cumprod\\[999\\] = 0.0.*|field 'rescale_betas_zero_snr'"),
        ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}, "field 'timestep_type'"),
    ]
    for i, (fields, match) in enumerate(cases):
        path = _write_config(tmp_path / f"s{i}", "scheduler_config.json", **fields)
        before = _tree(tmp_path)
        with pytest.raises(ConfigError, match=match) as err:
            from_diffusers(unet, path.parent)
        assert repr(str(path)) in str(err.value)
        assert _tree(tmp_path) == before
    with pytest.raises(ConfigError, match="rescale_betas_zero_snr"):
        from_diffusers(unet, diffusers.DDPMScheduler(rescale_betas_zero_snr=True))
    with pytest.raises(ConfigError, match="has no alphas_cumprod"):
        from_diffusers(unet, diffusers.FlowMatchEulerDiscreteScheduler())
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*broken.json"):
        from_diffusers(unet, tmp_path / "broken.json")


def test_model_folders_that_do_not_load(tmp_path, unet):
    unet.save_pretrained(tmp_path / "m")
    diffusers.DDIMScheduler().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match="UNet2DModel.from_pretrained failed") as err:
        from_diffusers(tmp_path / "m")
    assert repr(str(tmp_path / "m")) in str(err.value)
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "config.json").write_text(json.dumps({**config, "_class_name": "os.system"}))
    with pytest.raises(ConfigError, match="config.json'?: field '_class_name' = 'os.system'"):
        from_diffusers(tmp_path / "n", diffusers.DDIMScheduler())
    assert _tree(tmp_path) == {**before, "n/config.json": _tree(tmp_path)["n/config.json"]}


def test_model_whose_output_shape_is_wrong(tmp_path):
    unet = _unet(out_channels=3)
    score = from_diffusers(unet, diffusers.DDIMScheduler())
    with pytest.raises(InputShapeError, match="UNet2DModel: the model returned shape \\(3, 3, 8, 8\\) for an input "
                                              "of shape \\(3, 1, 8, 8\\)"):
        score(_images().reshape(3, 64), 0.5)
    unet.save_pretrained(tmp_path / "m")
    diffusers.DDIMScheduler().save_pretrained(tmp_path / "m")
    with pytest.raises(InputShapeError, match=f"{tmp_path / 'm'}: the model returned shape"):
        from_diffusers(tmp_path / "m")(_images().reshape(3, 64).float(), 0.5)
    with pytest.raises(ConfigError, match="pass sample_shape="):
        from_diffusers(torch.nn.Linear(4, 4), diffusers.DDIMScheduler())
    with pytest.raises(InputShapeError, match="x has shape"):
        from_diffusers(_unet(), diffusers.DDIMScheduler())(torch.zeros(2, 63, dtype=torch.float64), 0.5)
