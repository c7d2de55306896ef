"""Ensembles of scores: the mean, the members' spread, training on bootstrap resamples, checkpoints."""

from __future__ import annotations

import pytest
import torch

from scorehamiltonian import OU, VE, ExactScore, GaussianMixture, InputShapeError, ScoreEnsemble, as_score
from scorehamiltonian.score.checkpoints import ENSEMBLE_FORMAT, load_score, save_score
from scorehamiltonian.score.ensemble import train_ensemble

from ..conftest import random_mixture


def test_ensemble_is_the_mean_and_its_spread_the_members_standard_deviation():
    """Members s + c_k (constant shifts c_k): the ensemble is s + mean(c) exactly and its spread
    is sqrt(sum_k |c_k - mean c|^2 / (K - 1)) at every point."""
    exact = ExactScore(random_mixture(2), OU())
    shifts = torch.tensor([[0.3, -0.1], [-0.2, 0.4], [0.5, 0.0]], dtype=torch.float64)
    members = [as_score(lambda x, t, c=c: exact(x, t) + c, process=OU(), dim=2) for c in shifts]
    ensemble = ScoreEnsemble(members)
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ensemble(x, 0.3), exact(x, 0.3) + shifts.mean(0), rtol=1e-14, atol=1e-14)
    want = ((shifts - shifts.mean(0)) ** 2).sum() / 2
    torch.testing.assert_close(ensemble.spread(x, 0.3), want.sqrt().expand(7), rtol=1e-13, atol=1e-13)
    assert ensemble.member_scores(x, 0.3).shape == (3, 7, 2) and len(ensemble) == 3


def test_members_must_agree_on_process_and_dimension():
    one = as_score(lambda x, t: -x, process=OU(), dim=2)
    with pytest.raises(ValueError, match="at least 2"):
        ScoreEnsemble([one])
    with pytest.raises(ValueError, match="process"):
        ScoreEnsemble([one, as_score(lambda x, t: -x, process=VE(), dim=2)])
    with pytest.raises(InputShapeError, match="dimension"):
        ScoreEnsemble([one, as_score(lambda x, t: -x, process=OU(), dim=3)])


def test_trained_members_differ_share_the_split_and_round_trip(tmp_path):
    """train_ensemble: member k has seed seed + k, a bootstrap resample of the same training rows
    (the held-out rows are common, so n_train is the same), different parameters; the checkpoint
    of the ensemble loads back to the same scores bit for bit, and t_trained is the members'."""
    mixture = GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.25, 0.25])
    samples = mixture.sample(300, generator=torch.Generator().manual_seed(3))
    ensemble = train_ensemble(samples, 3, steps=20, batch_size=64, progress=False, seed=5)
    records = [m.model.training_config for m in ensemble.members]
    assert [r["seed"] for r in records] == [5, 6, 7] and len({r["n_train"] for r in records}) == 1
    params = [torch.cat([p.flatten() for p in m.model.parameters()]) for m in ensemble.members]
    assert not torch.equal(params[0], params[1])
    assert ensemble.t_trained == pytest.approx(1e-2)
    path = tmp_path / "ensemble.pt"
    save_score(ensemble, path)
    assert torch.load(path, weights_only=True)["format"] == ENSEMBLE_FORMAT
    loaded = load_score(path)
    assert isinstance(loaded, ScoreEnsemble) and len(loaded) == 3
    x = torch.linspace(-3, 3, 9, dtype=torch.float64)[:, None]
    with torch.no_grad():
        assert torch.equal(loaded(x, 0.5), ensemble(x, 0.5))
        assert bool((ensemble.spread(x, 0.5) > 0).all())
    with pytest.raises(ValueError, match="bootstrap"):
        train_ensemble(samples, 2, bootstrap=False)
