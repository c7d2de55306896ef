"""Subjects of the report: built-in systems as references and training data, and the model cache."""

from __future__ import annotations

import pytest
import torch

from scorehamiltonian import OU
from scorehamiltonian.app import subjects
from scorehamiltonian.app.config import validate_config
from scorehamiltonian.score.systems import system


def test_a_data_set_trains_on_its_training_rows_and_is_measured_on_its_held_out_rows(monkeypatch):
    seen = {}

    def fake_trained(samples, process, ensemble, options, progress):
        seen.update(samples=samples, ensemble=ensemble)
        return subjects.as_score(lambda x, t: -x, process=process, dim=samples.shape[1], data=samples)

    monkeypatch.setattr(subjects, "_trained", fake_trained)
    config = validate_config({"model": {"system": "two-moons", "kind": "mlp", "ensemble": 2}})
    score, reference, info = subjects.resolve_subject(config, progress=False)
    moons = system("two-moons")
    assert seen["samples"] is moons.train and seen["ensemble"] == 2
    assert reference.data is moons.held_out and reference.exact is None and reference.dim == 2
    assert info["reference"] == "system 'two-moons'" and score.data is moons.train


def test_a_density_system_gives_its_exact_score_and_independent_draws():
    config = validate_config({"model": {"system": "mueller-brown"}, "seed": 3})
    score, reference, _ = subjects.resolve_subject(config, progress=False)
    mb = system("mueller-brown")
    assert score is reference.exact and reference.normalised
    n = config["model"]["train_samples"]
    assert reference.training.shape == reference.data.shape == (n, 2)
    assert not torch.equal(reference.training, reference.data)
    assert torch.equal(reference.training, mb.sample(n, torch.Generator().manual_seed(3)))
    x = reference.data[:5]
    assert torch.allclose(reference.log_density(x), mb.log_prob(x) - mb.log_z)


def test_a_trained_model_is_read_back_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SCOREHAMILTONIAN_CACHE", str(tmp_path))
    samples = torch.randn(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    options = {"steps": 20, "seed": 0}
    first = subjects._trained(samples, OU(), 2, options, progress=False)
    assert len(list(tmp_path.iterdir())) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of reading the cache")

    monkeypatch.setattr(subjects, "train_ensemble", no_training)
    again = subjects._trained(samples, OU(), 2, options, progress=False)
    x = torch.randn(7, 2, dtype=torch.float64)
    assert torch.equal(first(x, 0.3), again(x, 0.3)) and torch.equal(again.data, samples)
    assert torch.equal(first.data, samples)  # a fresh ensemble samples p_t too (the digits report failed without)
    with pytest.raises(AssertionError, match="trained again"):
        subjects._trained(samples + 1e-9, OU(), 2, options, progress=False)
    monkeypatch.setenv("SCOREHAMILTONIAN_CACHE", "off")
    with pytest.raises(AssertionError, match="trained again"):
        subjects._trained(samples, OU(), 2, options, progress=False)
