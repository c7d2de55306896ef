"""The extrapolation map, the held-out denoising loss and the PF-ODE / line-integral disagreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from scorehamiltonian import OU, ExactScore, GaussianMixture, ScoreEnsemble, as_score
from scorehamiltonian.score.extrapolation import denoising_loss, extrapolation_map, nearest_distance

TRUTH = GaussianMixture([1.0], [0.0], [1.0])


def _member(k: int):
    """The exact N(0, 1) score plus a wiggle a_k sin(w_k x + phi_k) scaled by exp(|x| - 2): the
    members agree to about 1 % where the data are (|x| < 2) and disagree by up to 55x that away."""
    gen = torch.Generator().manual_seed(k)
    a, w, phi = (float(torch.rand((), generator=gen, dtype=torch.float64)) for _ in range(3))
    exact = ExactScore(TRUTH, OU())

    def score(x, t):
        return exact(x, t) + 0.05 * (a - 0.3) * torch.sin((1 + 2 * w) * x + 6 * phi) * torch.exp(x.abs() - 2)

    return as_score(score, process=OU(), dim=1)


def test_the_map_ranks_the_far_points_highest():
    """Spearman of the map's figure against the true error of the ensemble's mean score
    |s_bar - s| over 30 points on [-6, 6] is above 0.7 (the issue's target; measured 0.83 with
    these 5 members, 0.69 against the relative error |s_bar - s| / |s|, which the mean of 5
    wiggles makes noisy), and the distance is in units of the data's nearest-neighbour gap
    (checked against a direct search)."""
    data = TRUTH.sample(1000, torch.Generator().manual_seed(0))
    ensemble = ScoreEnsemble([_member(k) for k in range(5)])
    x = torch.linspace(-6.0, 6.0, 30, dtype=torch.float64)[:, None]
    result = extrapolation_map(ensemble, x, 0.01, data=data)
    exact = ExactScore(TRUTH, OU())
    true = (ensemble(x, 0.01) - exact(x, 0.01)).norm(dim=-1)
    assert spearmanr(result.figure.numpy(), true.numpy()).statistic > 0.7
    gaps = (data[:, None, 0] - data[None, :, 0]).abs() + torch.eye(1000, dtype=torch.float64) * 1e9
    assert result.data_scale == pytest.approx(float(gaps.min(1).values.median()), rel=1e-12)
    direct = (x[:, None, 0] - data[None, :, 0]).abs().min(1).values / result.data_scale
    torch.testing.assert_close(result.distance, direct)
    assert float(result.distance[0]) > 100 and float(result.distance.min()) < 1


def test_a_single_model_is_mapped_by_distance_alone_and_nearest_distance():
    data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    x = torch.tensor([[3.0, 4.0], [1.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(nearest_distance(x, data), torch.tensor([math.hypot(3, 2), 0.5], dtype=torch.float64))
    torch.testing.assert_close(nearest_distance(data, data, exclude_self=True),
                               torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))
    single = as_score(lambda y, t: -y, process=OU(), dim=2)
    result = extrapolation_map(single, x, 0.1, data=data)
    assert bool(result.disagreement.isnan().all())
    torch.testing.assert_close(result.figure, result.distance)
    assert result.data_scale == 1.0


def test_held_out_denoising_loss_is_lowest_for_the_exact_score():
    """For the exact score the loss is E|sigma s + z|^2 = 1 - E[sigma^2 |s|^2] / d (Vincent), below
    1; a score off by a constant shift c adds sigma^2 c^2 on average: a larger loss, beyond the
    standard errors of both (common draws)."""
    x0 = TRUTH.sample(2000, torch.Generator().manual_seed(1))
    exact = ExactScore(TRUTH, OU())
    shifted = as_score(lambda y, t: exact(y, t) + 1.0, process=OU(), dim=1)
    good = denoising_loss(exact, x0, t_range=(0.01, 10.0), generator=torch.Generator().manual_seed(2))
    bad = denoising_loss(shifted, x0, t_range=(0.01, 10.0), generator=torch.Generator().manual_seed(2))
    assert good.value < 1.0 and bad.value - good.value > 3 * (good.stderr + bad.stderr)
    with pytest.raises(ValueError, match="sigma_t is 0"):
        denoising_loss(exact, x0, t_range=(0.0, 1.0))


def test_pf_ode_and_line_integral_energies_agree_for_a_true_score():
    """readout_disagreement: for exact energies of an exact score it is within the line integral's
    own numerical error; for energies shifted at one point by 0.3 nats it shows 0.3 there."""
    from scorehamiltonian.thermo.line_energy import readout_disagreement

    mixture = GaussianMixture([0.3, 0.7], [-1.0, 1.5], [0.2, 0.3])
    score = ExactScore(mixture, OU())
    x = torch.linspace(-2.0, 2.5, 7, dtype=torch.float64)[:, None]
    energies = -mixture.log_prob(x)
    result = readout_disagreement(score, x, energies, 0.0, n_nodes=64)
    assert bool((result.value <= result.numerical + 1e-10).all())
    assert result.anchor == int(np.argmin(energies.numpy()))
    shifted = energies.clone()
    k = (result.anchor + 2) % 7
    shifted[k] += 0.3
    moved = readout_disagreement(score, x, shifted, 0.0, n_nodes=64)
    assert float(moved.value[k]) == pytest.approx(0.3, abs=1e-6)
