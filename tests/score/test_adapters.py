"""Models in (scorehamiltonian.score.adapters): TorchScript files and the user's own modules.

Against exact truth: the test models of ``tests/score/adapter_models.py`` predict the exact
score, epsilon, x0 or v of a Gaussian N(m, v I) (THEORY section 1), so every adapted score
must equal :class:`ExactScore` of that Gaussian to round-off, for every output kind, every
conditioning (t, sigma_t, log-SNR) and every process. The only loss is the cancellation of
reading x0 and v back into a score, of order |x| u / sigma_t^2 (u = 2^-53), below 1e-13
relative at the times used; the tolerance is 1e-11. Bad input: each error names the file or
the factory string, and a failed load writes nothing.
"""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch

from scorehamiltonian.common.errors import CheckpointError, ConfigError, InputShapeError
from scorehamiltonian.score import AdaptedScore, load_module, load_torchscript
from scorehamiltonian.score.interface import ExactScore
from scorehamiltonian.score.mixture import GaussianMixture
from scorehamiltonian.score.processes import EDM, OU, VE, VPLinear

from .adapter_models import OUEpsNet, WrongShapeNet

FACTORY = "tests.score.adapter_models:GaussianNet"
MEAN = [0.5, -1.0, 2.0]
LOG_VAR = -0.7
RTOL = 1e-11


def _gaussian_weights(tmp_path, name="gauss.pt"):
    path = tmp_path / name
    torch.save({"mean": torch.tensor(MEAN, dtype=torch.float64),
                "log_var": torch.tensor(LOG_VAR, dtype=torch.float64)}, path)
    return path


def _exact(process, mean=MEAN, var=None):
    var = math.exp(LOG_VAR) if var is None else var
    d = len(mean)
    return ExactScore(GaussianMixture([1.0], [mean], [var * torch.eye(d, dtype=torch.float64)]), process)


def _points(d, n=7, seed=0):
    return 2.0 * torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _times(process):
    # Not near t_max: there sigma_t of the VP processes saturates at 1, and the test model's own
    # inversion c = sigma_t -> t (time_input "sigma") loses digits.
    return [process.t_min + f * (process.t_max - process.t_min) for f in (0.02, 0.1, 0.3)]


def _assert_close(got, want, rtol=RTOL):
    torch.testing.assert_close(got, want, rtol=0.0, atol=rtol * float(want.abs().max()))


def _snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.parametrize("process", [OU(), VPLinear(), VE(0.01, 20.0), EDM(40.0)], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("kind", ["score", "eps", "x0", "v"])
def test_module_of_every_kind_and_conditioning_is_the_exact_score(tmp_path, process, kind):
    weights = _gaussian_weights(tmp_path)
    exact = _exact(process)
    x = _points(3)
    for time_input in ("t", "sigma", "log_snr"):
        kwargs = {"dim": 3, "kind": kind, "time_input": time_input, "process": process.config()}
        score = load_module(FACTORY, weights, kind, process, time_input, kwargs=kwargs)
        assert isinstance(score, AdaptedScore) and score.process == process and score.prediction == kind
        assert score.kind == ("eps" if kind == "v" else kind) and score.source == FACTORY
        for t in _times(process):
            with torch.no_grad():
                _assert_close(score(x, t), exact(x, t))


def test_points_keep_their_batch_shape_and_time_may_vary(tmp_path):
    process = VPLinear()
    kwargs = {"dim": 3, "kind": "eps", "time_input": "t", "process": process.config()}
    score = load_module(FACTORY, _gaussian_weights(tmp_path), "eps", process, kwargs=kwargs)
    x = _points(3, n=8).reshape(2, 4, 3)
    t = torch.linspace(0.1, 0.9, 8, dtype=torch.float64).reshape(2, 4)
    with torch.no_grad():
        _assert_close(score(x, t), _exact(process)(x.reshape(8, 3), t.reshape(8)).reshape(2, 4, 3))


def test_safetensors_and_nested_state_dict_weights(tmp_path):
    from safetensors.torch import save_file

    kwargs = {"dim": 3, "kind": "score", "time_input": "t", "process": OU().config()}
    state = {"mean": torch.tensor(MEAN, dtype=torch.float64), "log_var": torch.tensor(LOG_VAR, dtype=torch.float64)}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state, "step": torch.tensor(3)}, tmp_path / "nested.pt")
    x = _points(3)
    for name in ("w.safetensors", "nested.pt"):
        score = load_module(FACTORY, tmp_path / name, kwargs=kwargs)
        with torch.no_grad():
            _assert_close(score(x, 0.4), _exact(OU())(x, 0.4))


@pytest.fixture
def scripted(tmp_path):
    with warnings.catch_warnings():  # torch.jit.script / load are deprecated (DeprecationWarning) in torch 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        path = tmp_path / "ou_eps.pt"
        torch.jit.script(OUEpsNet()).save(str(path))
        yield path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_file_in_its_own_sample_shape(scripted):
    score = load_torchscript(scripted, kind="eps", process=OU(), sample_shape=(2, 3))
    assert score.dim == 6 and score.source == str(scripted)
    exact = _exact(OU(), mean=(torch.arange(6, dtype=torch.float64) / 6).tolist(), var=1.0)
    x = _points(6, n=5).reshape(5, 1, 6)  # any batch shape: the model sees (5, 2, 3)
    for t in (0.02, 0.5, 3.0):
        with torch.no_grad():
            _assert_close(score(x, t), exact(x.reshape(5, 6), t).reshape(5, 1, 6))


def test_float32_model_gets_float32_inputs_and_float64_conditioning_math(tmp_path):
    process = VPLinear()
    kwargs = {"dim": 3, "kind": "eps", "time_input": "sigma", "process": process.config()}
    score = load_module(FACTORY, _gaussian_weights(tmp_path), "eps", process, "sigma", kwargs=kwargs)
    seen = {}
    score.model.model.register_forward_pre_hook(lambda module, args: seen.update(x=args[0], c=args[1]))
    score.model.model.float()
    x = _points(3)
    assert score.compute_dtype(torch.float64) == torch.float32
    with torch.no_grad():
        out = score(x, 0.3)
    assert out.dtype == torch.float64 and seen["x"].dtype == seen["c"].dtype == torch.float32
    # sigma_t is computed in float64, then rounded once: the model sees float32(sigma_t(0.3)).
    assert torch.equal(seen["c"], process.sigma(torch.full((7,), 0.3, dtype=torch.float64)).float())
    _assert_close(out, _exact(process)(x, 0.3), rtol=1e-5)


def test_adapted_score_pickles(tmp_path):
    kwargs = {"dim": 3, "kind": "x0", "time_input": "log_snr", "process": OU().config()}
    score = load_module(FACTORY, _gaussian_weights(tmp_path), "x0", OU(), "log_snr", kwargs=kwargs)
    copy = pickle.loads(pickle.dumps(score))
    x = _points(3)
    with torch.no_grad():
        assert torch.equal(copy(x, 0.7), score(x, 0.7))


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the file or the string; nothing written.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory, match", [
    ("tests.score.adapter_models.GaussianNet", "must have the form"),
    ("1tests.score:GaussianNet", "must have the form"),
    ("tests.score.no_such_module:make", "cannot import 'tests.score.no_such_module'"),
    ("tests.score.adapter_models:Missing", "has no attribute 'Missing'"),
    ("tests.score.adapter_models:NOT_CALLABLE", "not callable"),
    ("tests.score.adapter_models:broken_factory", "failed when called .*this factory always fails"),
    ("tests.score.adapter_models:not_a_module", "returned a object, not a torch.nn.Module"),
])
def test_factory_that_does_not_resolve(tmp_path, factory, match):
    weights = _gaussian_weights(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match=match) as err:
        load_module(factory, weights)
    assert repr(factory) in str(err.value)
    assert _snapshot(tmp_path) == before


class _Marker:
    """Unpickling this would create a file: weights_only=True must refuse it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_weights_that_do_not_load_or_do_not_fit(tmp_path):
    kwargs = {"dim": 3, "kind": "score", "time_input": "t", "process": OU().config()}
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save(_Marker(str(tmp_path / "marker")), tmp_path / "pickled.pt")
    torch.save([torch.ones(3)], tmp_path / "list.pt")
    torch.save({"mean": torch.zeros(3, dtype=torch.float64)}, tmp_path / "missing.pt")
    torch.save({"mean": torch.zeros(4, dtype=torch.float64), "log_var": torch.zeros(())}, tmp_path / "shape.pt")
    torch.save({"mean": torch.zeros(3), "log_var": torch.zeros(()), "extra": torch.zeros(1)}, tmp_path / "extra.pt")
    before = _snapshot(tmp_path)
    cases = [("absent.pt", "no weights file at"), ("text.pt", "not a weights file"),
             ("pickled.pt", "not a weights file"), ("list.pt", "not a state_dict"),
             ("missing.pt", "do not fit .*log_var"), ("shape.pt", "do not fit .*size mismatch"),
             ("extra.pt", "do not fit .*extra")]
    for name, match in cases:
        with pytest.raises(CheckpointError, match=match) as err:
            load_module(FACTORY, tmp_path / name, kwargs=kwargs)
        assert repr(str(tmp_path / name)) in str(err.value)
    assert _snapshot(tmp_path) == before and not (tmp_path / "marker").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_file_that_is_not_one(tmp_path):
    (tmp_path / "text.pt").write_text("not TorchScript")
    torch.save({"w": torch.ones(2)}, tmp_path / "state.pt")
    before = _snapshot(tmp_path)
    for name, match in (("absent.pt", "no TorchScript file at"), ("text.pt", "is not a TorchScript file"),
                        ("state.pt", "is not a TorchScript file")):
        with pytest.raises(CheckpointError, match=match) as err:
            load_torchscript(tmp_path / name)
        assert repr(str(tmp_path / name)) in str(err.value)
    assert _snapshot(tmp_path) == before


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_model_whose_output_shape_is_wrong(tmp_path):
    torch.save(WrongShapeNet().state_dict(), tmp_path / "wrong.pt")
    factory = "tests.score.adapter_models:WrongShapeNet"
    score = load_module(factory, tmp_path / "wrong.pt")
    with pytest.raises(InputShapeError, match=f"{factory}: the model returned shape \\(7,\\) for an input of shape"):
        score(_points(3), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(WrongShapeNet()).save(str(tmp_path / "wrong_script.pt"))
    score = load_torchscript(tmp_path / "wrong_script.pt", sample_shape=(3,))
    with pytest.raises(InputShapeError, match="wrong_script.pt: the model returned shape"):
        score(_points(3), 0.5)


def test_bad_arguments(tmp_path):
    weights = _gaussian_weights(tmp_path)
    kwargs = {"dim": 3, "kind": "score", "time_input": "t", "process": OU().config()}
    for shape in ((), (2, 0), 6, (2.5, 2), (True, 3)):
        with pytest.raises(InputShapeError, match="sample_shape"):
            load_module(FACTORY, weights, kwargs=kwargs, sample_shape=shape)
    with pytest.raises(InputShapeError, match="dim = 4 differs from prod\\(sample_shape\\) = 3"):
        load_module(FACTORY, weights, dim=4, kwargs=kwargs, sample_shape=(3,))
    with pytest.raises(ValueError, match="kind must be one of"):
        load_module(FACTORY, weights, kind="noise", kwargs=kwargs)
    with pytest.raises(ValueError, match="time_input must be one of"):
        load_module(FACTORY, weights, time_input="step", kwargs=kwargs)
