"""Model errors of energies, free-energy differences and state free energies (issue 21, item 1).

The known answer: an ensemble whose members are exact scores of slightly different Gaussian
mixtures. Each member's readout is then known exactly (its -log p, its Delta F, its basin
masses), so the members' spread of the readout, the model error's target, is known exactly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import ndtr

from scorehamiltonian import OU, ExactScore, GaussianMixture, ScoreEnsemble, as_score
from scorehamiltonian.sampling.schedules import standard_schedule
from scorehamiltonian.spectral.solution import ConvergenceWarning
from scorehamiltonian.thermo.energy import energy
from scorehamiltonian.thermo.states import state_free_energies

PROCESS = OU()
#: Members: the bimodal mixture with the weights and the right mode's mean moved.
MEMBERS = [GaussianMixture([0.4 + dw, 0.6 - dw], [-1.5, 1.5 + dm], [0.3, 0.4])
           for dw, dm in [(0.0, 0.0), (0.05, -0.1), (-0.04, 0.08), (0.02, 0.15)]]


class _ExactNetwork(torch.nn.Module):
    """A torch module that returns an exact mixture score: a "learned" model with a known answer."""

    def __init__(self, mixture: GaussianMixture) -> None:
        super().__init__()
        self.exact = ExactScore(mixture, PROCESS)
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scale * self.exact(x, t)


def _points() -> torch.Tensor:
    return torch.linspace(-3.0, 3.0, 9, dtype=torch.float64)[:, None]


def test_energy_model_error_is_the_members_exact_spread():
    """model_error = std_k E_k(x) of the members' PF-ODE energies + the largest member's own
    error bar e_k on the grid (model_numerical_error, the bar of the member's own energy on
    that grid). Each E_k is within e_k of -log p_k, and std is Lipschitz
    (|std(a) - std(b)| <= sqrt(K / (K - 1)) max |a - b|), so the spread part lies within
    sqrt(K / (K - 1)) max_k e_k of the exact spread std_k(-log p_k)."""
    members = MEMBERS[:3]
    ensemble = ScoreEnsemble([ExactScore(m, PROCESS) for m in members])
    x = _points()
    schedule = standard_schedule("edm", 128, PROCESS.t_max, PROCESS.t_min, PROCESS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = energy(ensemble, None, x, schedule, atol=1.0)
        alone = [energy(ExactScore(m, PROCESS), None, x, schedule) for m in members]
    bars = torch.stack([r.error for r in alone])
    torch.testing.assert_close(result.model_numerical_error, bars.max(0).values)
    exact = torch.stack([-m.log_prob(x) for m in members]).std(0, correction=1)
    K = len(members)
    tolerance = math.sqrt(K / (K - 1)) * bars.max(0).values
    spread = result.model_error - result.model_numerical_error
    assert bool(((spread - exact).abs() <= tolerance).all())
    assert float(exact.min()) > 10 * float(tolerance.max())  # the spread is resolved, not noise
    torch.testing.assert_close(result.total_error, result.error + result.model_error)
    assert bool((result.reached == (result.total_error <= result.requested)).all())
    assert bool((result.converged == (result.trusted & result.reached)).all())
    assert result.nfe_model == K * (4 * (128 + 64 + 32) + 1)  # RK4 on the grid and its companions, the law at T
    assert "model_unresolved" not in result.flags
    tight = energy(ensemble, None, x, schedule, atol=1e-3)
    assert "model_spread" in tight.flags and not bool(tight.converged.any())


def test_energy_model_error_under_refinement_and_of_exact_scores():
    """Under refinement each member is read on each point's own grid (with its step-doubling
    companions, 1.75 x the point's solve: the grids run together, padded with steps of length
    0 that are not counted; and one evaluation at T for the reference law's error). The
    members are as smooth as their mean, so their errors on
    its grid are of the size of its bar: allowed, 3 times its largest bar (times the Lipschitz
    constant of std). An exact score has model error 0."""
    ensemble = ScoreEnsemble([ExactScore(m, PROCESS) for m in MEMBERS[:3]])
    x = _points()[::4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = energy(ensemble, None, x, atol=1e-3)
    exact = torch.stack([-m.log_prob(x) for m in MEMBERS[:3]]).std(0, correction=1)
    tolerance = math.sqrt(3 / 2) * 3 * float(result.error.max())
    assert bool(((result.model_error - exact).abs() <= tolerance).all())
    assert len(set(result.n_steps.tolist())) > 1
    own = result.nfe_solve_per_point
    assert bool((4 * result.nfe_model_per_point == 3 * (7 * own + 4)).all())  # 3 members x (1.75, law at T)
    alone = energy(ExactScore(MEMBERS[0], PROCESS), None, x, atol=1e-3)
    assert bool((alone.model_error == 0).all()) and alone.flags == () and bool(alone.converged.all())


def test_the_members_start_error_is_not_model_error():
    """Read from t_start > t_min, every member's value is -log p_{k, t_start}, and its start
    error bounds the distance to t_min, not an error of that value: the members' bars in the
    model error are their integrator, reference and Hutchinson parts only (the mean's own start
    error stays in its ``error``)."""
    members = MEMBERS[:3]
    ensemble = ScoreEnsemble([ExactScore(m, PROCESS) for m in members])
    x = _points()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = energy(ensemble, None, x, n_steps=64, t_start=0.05)
        alone = [energy(ExactScore(m, PROCESS), None, x, n_steps=64, t_start=0.05) for m in members]
    starts = torch.stack([r.start_error for r in alone])
    assert float(starts.min()) > 0 and float(result.start_error.min()) > 0
    torch.testing.assert_close(result.model_numerical_error, torch.stack([r.error for r in alone]).sub(starts).max(0).values)
    assert bool((result.model_numerical_error < starts.max(0).values).all())
    torch.testing.assert_close(result.error, result.integrator_error + result.reference_error
                               + result.divergence_error + result.start_error)


def test_a_member_the_grid_does_not_resolve_widens_the_model_error_and_is_flagged():
    """A member far stiffer than its partner (a mode of width 0.02): on a 16-step grid its PF-ODE
    energy is off by several nats, which std_k E_k alone would report as the members'
    disagreement. The model error adds the member's own error bar, which then dominates, covers the
    exact spread and is flagged model_unresolved; on 256 steps the members are resolved, the
    flag is gone and the model error is the exact spread to the members' bars."""
    smooth = GaussianMixture([0.4, 0.6], [-1.5, 1.5], [0.3, 0.4])
    sharp = GaussianMixture([0.4, 0.6], [-1.5, 1.5], [0.02, 0.4])
    ensemble = ScoreEnsemble([ExactScore(smooth, PROCESS), ExactScore(sharp, PROCESS)])
    x = torch.tensor([[-1.6], [-1.5], [-1.4], [0.0]], dtype=torch.float64)
    exact = torch.stack([-smooth.log_prob(x), -sharp.log_prob(x)]).std(0, correction=1)
    coarse = standard_schedule("edm", 16, PROCESS.t_max, PROCESS.t_min, PROCESS)
    with pytest.warns(ConvergenceWarning, match="model_unresolved"):
        rough = energy(ensemble, None, x, coarse, atol=1.0)
    spread = rough.model_error - rough.model_numerical_error
    assert "model_unresolved" in rough.flags and bool((rough.model_numerical_error > spread).all())
    assert bool((rough.model_error >= exact).all()) and not bool(rough.converged.any())
    fine = standard_schedule("edm", 256, PROCESS.t_max, PROCESS.t_min, PROCESS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolved = energy(ensemble, None, x, fine, atol=1.0)
    assert "model_unresolved" not in resolved.flags
    tolerance = math.sqrt(2) * resolved.error.max() + resolved.model_numerical_error
    assert bool(((resolved.model_error - exact).abs() <= tolerance).all())
    assert float(resolved.model_numerical_error.max()) < 1e-2 * float(exact.min())


def test_a_single_learned_model_is_never_converged():
    single = as_score(_ExactNetwork(MEMBERS[0]), process=PROCESS, dim=1)
    assert single.learned
    with pytest.warns(ConvergenceWarning, match="model_unknown"):
        result = energy(single, None, _points()[:3], n_steps=64, closure=False)
    assert bool(result.model_error.isnan().all()) and "model_unknown" in result.flags
    assert not bool(result.converged.any()) and not bool(result.reached.any())


def test_state_free_energies_model_error_rule():
    """States x < 0 and x >= 0 of the bimodal members: each member's F_A = -log P_k(A) is a sum of
    normal CDFs. The ensemble reads each member on the same states, so its model error is the
    members' spread of their own readouts (to round-off), and that lies within the Lipschitz
    constant of std times the members' numerical bars of the exact spread. An exact score has
    no model error; a single learned model has NaN and is never converged; with atol below the
    spread the result is flagged model_spread."""
    box = ([-6.0], [7.0])
    states = [lambda y: y[:, 0] < 0, lambda y: y[:, 0] >= 0]
    members = MEMBERS[:3]
    ensemble = ScoreEnsemble([ExactScore(m, PROCESS) for m in members])
    result = state_free_energies(ensemble, states, box=box, t=0.0)
    singles = [state_free_energies(ExactScore(m, PROCESS), states, box=box, t=0.0) for m in members]
    np.testing.assert_allclose(result.model_error, np.std([s.free_energy for s in singles], axis=0, ddof=1),
                               rtol=1e-10)
    below = [float((m.weights.numpy() * ndtr(-m.means[:, 0].numpy() / m.covs[:, 0, 0].sqrt().numpy())).sum()) for m in members]
    exact = np.std([[-math.log(p), -math.log1p(-p)] for p in below], axis=0, ddof=1)
    bound = math.sqrt(3 / 2) * np.max([s.numerical for s in singles], axis=0)
    assert np.all(np.abs(result.model_error - exact) <= bound)
    assert float(exact.min()) > 10 * float(bound.max())
    assert np.all(singles[0].model_error == 0) and singles[0].converged
    np.testing.assert_allclose(result.total_error, result.numerical + result.model_error)
    with pytest.warns(ConvergenceWarning, match="model_spread"):
        strict = state_free_energies(ensemble, states, box=box, t=0.0, atol=0.5 * float(exact.min()))
    assert not strict.converged and strict.flags[0].startswith("model_spread")
    single = as_score(_ExactNetwork(members[0]), process=PROCESS, dim=1)
    with pytest.warns(ConvergenceWarning, match="model_unknown"):
        alone = state_free_energies(single, box=box, t=1e-3, draws=1 << 12, steps=16)
    assert np.all(np.isnan(alone.model_error)) and not alone.converged
    assert alone.flags[0].startswith("model_unknown")


class _EnergyEnsemble:
    """An energy ensemble with a known answer: members U_k(x) = x^2 / (2 s_k^2), whose Delta F
    from N(0, 1) (Z_0 = 1) is -log(sqrt(2 pi) s_k); the ensemble's own energy is their mean."""

    def __init__(self, widths: list[float]) -> None:
        self.members = [lambda x, s=s: (x**2).sum(-1) / (2 * s**2) for s in widths]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def test_free_energy_model_error_is_the_members_spread_of_delta_f():
    """Zwanzig from N(0, 1) to an ensemble of unnormalised Gaussians of widths s_k: the model error
    is the spread of the members' estimates, each run from the same seed (equal to running each
    member alone to round-off); each member's estimate lies within 4 of its standard errors of
    -log(sqrt(2 pi) s_k), so the model error lies within sqrt(K / (K - 1)) times 4 of the largest
    standard error of the exact spread std_k log s_k."""
    from scorehamiltonian.thermo.free_energy import free_energy_difference

    widths = [0.9, 1.0, 1.1, 1.2]
    start = GaussianMixture([1.0], [0.0], [1.0])
    result = free_energy_difference(start, _EnergyEnsemble(widths), "zwanzig", n_samples=4000)
    alone = [free_energy_difference(start, m, "zwanzig", n_samples=4000) for m in _EnergyEnsemble(widths).members]
    assert result.model_error == pytest.approx(float(np.std([r.value for r in alone], ddof=1)), rel=1e-12)
    exact = [-math.log(math.sqrt(2 * math.pi) * s) for s in widths]
    assert all(abs(r.value - e) <= 4 * r.error + 1e-12 for r, e in zip(alone, exact))  # s = 1: W = const
    largest = max(r.error for r in alone)
    assert abs(result.model_error - float(np.std(exact, ddof=1))) <= math.sqrt(4 / 3) * 4 * largest
    assert result.total_error == pytest.approx(result.error + result.systematic_error + result.model_error)
    assert result.converged
    with pytest.warns(ConvergenceWarning, match="exceeds atol"):
        strict = free_energy_difference(start, _EnergyEnsemble(widths), "zwanzig", n_samples=4000, atol=0.05)
    assert not strict.converged
    exact_pair = free_energy_difference(start, _EnergyEnsemble(widths).members[0], "zwanzig", n_samples=4000)
    assert exact_pair.model_error == 0.0


def test_free_energy_of_a_single_learned_model_is_never_converged():
    from scorehamiltonian.thermo.free_energy import free_energy_difference
    from scorehamiltonian.thermo.path import ScoreEnergy

    single = ScoreEnergy(as_score(_ExactNetwork(MEMBERS[0]), process=PROCESS, dim=1), n_steps=32)
    x0 = MEMBERS[0].sample(100, torch.Generator().manual_seed(0))
    with pytest.warns(ConvergenceWarning, match="model_unknown"):
        result = free_energy_difference(single, MEMBERS[0], "zwanzig", n_samples=100, samples_0=x0)
    assert math.isnan(result.model_error) and not result.converged
    assert result.flags[-1].startswith("model_unknown")


@pytest.mark.slow
def test_an_ensemble_end_state_reads_its_members_once_per_estimate():
    """A ScoreEnsemble as an end state: the main estimate's energies skip their members
    (model_error=False: NaN and "model_skipped", no warning), the K member estimates give the
    model error; both end states normalised, so every member's Delta F is 0 up to its PF-ODE
    error and the spread stays within the energies' own systematic bound."""
    from scorehamiltonian.thermo.free_energy import free_energy_difference
    from scorehamiltonian.thermo.path import ScoreEnergy

    ensemble = ScoreEnsemble([ExactScore(m, PROCESS) for m in MEMBERS[:2]])
    x = _points()[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*cannot be trusted")
        skipped = energy(ensemble, None, x, n_steps=32, closure=False, model_error=False)
    assert bool(skipped.model_error.isnan().all()) and "model_skipped" in skipped.flags
    x0 = MEMBERS[0].sample(60, torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = free_energy_difference(MEMBERS[0], ScoreEnergy(ensemble, n_steps=64), "zwanzig", n_samples=60,
                                        samples_0=x0)
    assert math.isfinite(result.model_error) and not any(f.startswith("model_unknown") for f in result.flags)
    assert result.model_error <= result.systematic_error
