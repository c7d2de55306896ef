"""design_steps (scorehamiltonian.sampling.steps): never worse than its start, max_time holds, any d."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch

from scorehamiltonian import OU, ExactScore, GaussianMixture, as_score, example
from scorehamiltonian.common.errors import ScheduleError, TimeRangeError
from scorehamiltonian.sampling import PROCESS_BASELINES, baseline_schedule, judge_solver, sample
from scorehamiltonian.sampling.solvers import prior_samples
from scorehamiltonian.sampling.steps import (
    design_steps,
    energy_objective,
    exact_objective,
    reference_log_density,
    trajectory_objective,
)


@pytest.fixture(scope="module")
def trimodal():
    return ExactScore(example("trimodal"), OU())


@pytest.mark.parametrize(("solver", "nfe"), [("dpmpp-2m", 10), ("euler", 8)])
def test_exact_objective_is_the_judge_where_the_map_is_one_to_one(trimodal, solver, nfe):
    # Both are quadratures of the same integral (the objective in x_0, the judge in x_N); with
    # 2001 / ~1e4 nodes over the laws their O(h^2) errors are below 1e-3 of the TV here.
    schedule = baseline_schedule("log-snr", OU(), nfe, solver, 5.0, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        judged = judge_solver(trimodal, None, schedule, solver)
    assert judged.resolved
    assert exact_objective(trimodal, schedule, solver) == pytest.approx(judged.tv, rel=5e-3)
    assert exact_objective(trimodal, schedule, solver, metric="kl") == pytest.approx(judged.kl, rel=5e-3)


def test_design_is_never_worse_than_its_start_under_the_judge(trimodal):
    result = design_steps(trimodal, nfe=8, solver="dpmpp-2m", t_max=5.0, t_min=1e-3, max_time=8.0)
    assert result.start in result.baselines and result.baselines[result.start] == min(result.baselines.values())
    assert result.value <= result.start_value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert judge_solver(trimodal, None, result.schedule, "dpmpp-2m").tv == pytest.approx(result.value, rel=1e-12)
    schedule = result.schedule
    assert schedule.n_levels == 8 and schedule.times[0] == 5.0 and schedule.times[-1] == 1e-3
    assert np.all(np.diff(schedule.times) < 0)
    # dpmpp-2m at 8 steps on the trimodal target: the search finds a schedule the judge ranks better.
    assert result.improved and result.value < 0.9 * result.start_value


@pytest.mark.parametrize("judge", [False, True])
def test_max_time_holds(trimodal, judge):
    started = time.perf_counter()
    schedule = baseline_schedule("stepoptim", OU(), 20, "heun", 5.0, 1e-3)
    baseline = time.perf_counter() - started
    started = time.perf_counter()
    exact_objective(trimodal, schedule, "heun")
    evaluation = time.perf_counter() - started
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        judge_solver(trimodal, None, schedule, "heun")
    judgement = time.perf_counter() - started - evaluation
    started = time.perf_counter()
    result = design_steps(trimodal, nfe=20, solver="heun", t_max=5.0, t_min=1e-3, max_time=2.0, judge=judge)
    elapsed = time.perf_counter() - started
    # The clock is read before every evaluation and every starting baseline; past it run on at most
    # one baseline (StepOptim the costliest), one evaluation and the final measurement: two
    # evaluations without the judge, one judgement with it (timings vary with the machine's load:
    # factor 2).
    assert not result.converged and result.seconds <= elapsed
    final = judgement if judge else 2 * evaluation
    assert elapsed < 2.0 + 2 * (baseline + evaluation + final)
    assert result.notes == () if judge else "not judged" in result.notes[0]


def _callable_score_in_d8():
    mixture = GaussianMixture([0.3, 0.7], torch.stack([torch.full((8,), -1.5), torch.full((8,), 1.0)]),
                              [0.2, 0.5])
    exact = ExactScore(mixture, OU())
    return as_score(lambda x, t: exact(x, t), process=OU(), dim=8)


def test_trajectory_objective_is_zero_on_the_reference_and_designs_in_d8():
    score = _callable_score_in_d8()
    x0 = prior_samples(OU(), 5.0, 64, 8, torch.Generator().manual_seed(3))
    fine = baseline_schedule("log-snr", OU(), 40, "euler", 5.0, 1e-2)
    with torch.no_grad():
        reference = sample("heun", score, x0, fine).x
    value, error = trajectory_objective(score, fine, "heun", x0, reference)
    assert value == 0.0 and error == 0.0

    result = design_steps(score, nfe=10, solver="heun", t_max=5.0, t_min=1e-2, metric="trajectory", max_time=6.0,
                          n_samples=128, teacher_steps=60)
    assert result.metric == "trajectory" and result.value <= result.start_value
    assert math.isfinite(result.error) and 0 < result.error < result.value
    assert result.schedule.n_levels == 5


def _narrow_and_wide_in_d8():
    """Two components whose variances run from 0.02 to 1 across the axes (errors across the narrow
    axes cost far more log-density than the same distance along the wide ones): the exact score,
    and the same as an opaque callable, as a network meets design_steps."""
    variances = torch.logspace(math.log10(0.02), 0.0, 8, dtype=torch.float64)
    means = torch.stack([torch.full((8,), -1.0), torch.full((8,), 1.0)]).to(torch.float64)
    exact = ExactScore(GaussianMixture([0.6, 0.4], means, torch.stack([variances, variances.flip(0)])), OU())
    return exact, as_score(lambda x, t: exact(x, t), process=OU(), dim=8)


def _reference_run(score, n: int, seed: int, steps: int):
    """n prior draws (``seed``), the fine log-SNR schedule of ``steps`` levels and the draws' DPM-Solver++(2M)
    run along it: design_steps' reference run for that seed, n_samples and teacher_steps."""
    x0 = prior_samples(OU(), 5.0, n, 8, torch.Generator().manual_seed(seed))
    fine = baseline_schedule("log-snr", OU(), steps, "euler", 5.0, 1e-2)
    with torch.no_grad():
        return x0, fine, sample("dpmpp-2m", score, x0, fine).x


def test_energy_objective_is_the_distance_between_the_exact_log_density_laws():
    exact, score = _narrow_and_wide_in_d8()
    x0, fine, reference = _reference_run(score, 256, 5, 60)
    coarse = baseline_schedule("edm", OU(), 8, "dpmpp-2m", 5.0, 1e-2)
    with torch.no_grad():
        out = sample("dpmpp-2m", score, x0, coarse).x
        l_ref, l_out = exact.log_prob(reference, 1e-2), exact.log_prob(out, 1e-2)
    # The reference's log-densities from one anchor, refined where the quadrature estimate exceeds
    # 1e-2 nats: exact to round-off on the lines within a component, within the tolerance on those
    # that cross between them (largest error measured 1.3e-3 for these draws).
    level = reference_log_density(score, reference, 1e-2)
    anchor = int(((reference - reference.mean(0)) ** 2).sum(-1).argmin())
    error = (level - (l_ref - l_ref[anchor])).abs()
    assert float(error.median()) < 1e-10 and float(error.max()) < 1e-2

    value, error = energy_objective(score, coarse, "dpmpp-2m", x0, reference)
    w1 = float((l_ref.sort().values - l_out.sort().values).abs().mean())
    # The segments' 4-node quadrature is exact within one component (s . d linear), so e_i is the
    # exact difference to round-off but for segments that feel both components: 1e-3 allows them.
    assert value == pytest.approx(w1, rel=1e-3)
    excess = l_ref - l_out
    assert abs(float(excess.mean())) <= value <= float(excess.abs().mean())  # |CE excess| <= W_1 <= E |e|
    resampled = []
    generator = torch.Generator().manual_seed(11)
    for _ in range(400):
        i = torch.randint(256, (256,), generator=generator)
        resampled.append(float((l_ref[i].sort().values - l_out[i].sort().values).abs().mean()))
    # Two bootstrap estimates of one standard error (200 and 400 resamples): each within ~5 % (1 / sqrt(2B)).
    assert error == pytest.approx(float(np.std(resampled, ddof=1)), rel=0.25)
    assert energy_objective(score, fine, "dpmpp-2m", x0, reference) == (0.0, 0.0)


def test_the_energy_objective_compares_laws_not_draws():
    """Draws that end at other points of the reference run's law cost nothing (the paired E |e_i|
    charges them in full); a shift of every log-density by c costs |c|."""
    from scorehamiltonian.sampling.steps import _term

    level = torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    swapped = level - level[torch.randperm(500, generator=torch.Generator().manual_seed(1))]
    assert float(swapped.abs().mean()) > 0.5
    assert _term("energy", swapped, level) < 1e-15  # zero to the round-off of level - swapped
    assert _term("energy", torch.full((500,), 0.3, dtype=torch.float64), level) == pytest.approx(0.3, rel=1e-12)
    assert _term("energy", torch.full((500,), math.inf, dtype=torch.float64), level) == math.inf


def test_the_combined_objective_is_both_terms_in_units_of_their_baseline_medians():
    _, score = _narrow_and_wide_in_d8()
    options = {"nfe": 8, "solver": "dpmpp-2m", "t_max": 5.0, "t_min": 1e-2, "n_samples": 128, "teacher_steps": 40}
    energy = design_steps(score, max_time=2.0, **options)
    assert energy.metric == "energy"  # the model-only default
    result = design_steps(score, metric="combined", max_time=4.0, **options)
    assert result.metric == "combined" and set(result.baselines) == set(PROCESS_BASELINES)
    x0, _, reference = _reference_run(score, 128, 0, 40)  # design_steps' seed 0
    terms = {name: (energy_objective(score, s, "dpmpp-2m", x0, reference)[0],
                    trajectory_objective(score, s, "dpmpp-2m", x0, reference)[0])
             for name, s in ((n, baseline_schedule(n, OU(), 8, "dpmpp-2m", 5.0, 1e-2)) for n in PROCESS_BASELINES)}
    energy_scale, distance_scale = np.median([e for e, _ in terms.values()]), np.median([d for _, d in terms.values()])
    for name, (e, d) in terms.items():
        assert result.baselines[name] == pytest.approx(e / energy_scale + d / distance_scale, rel=1e-10)
    assert result.start == min(result.baselines, key=result.baselines.get)
    # The start (and the design) are measured on fresh draws: the seed's second set, with its own run.
    generator = torch.Generator().manual_seed(0)
    fresh = [prior_samples(OU(), 5.0, 128, 8, generator) for _ in range(2)][1]
    fine = baseline_schedule("log-snr", OU(), 40, "euler", 5.0, 1e-2)
    with torch.no_grad():
        fresh_reference = sample("dpmpp-2m", score, fresh, fine).x
    start = baseline_schedule(result.start, OU(), 8, "dpmpp-2m", 5.0, 1e-2)
    fresh_value = (energy_objective(score, start, "dpmpp-2m", fresh, fresh_reference)[0] / energy_scale
                   + trajectory_objective(score, start, "dpmpp-2m", fresh, fresh_reference)[0] / distance_scale)
    assert result.start_value == pytest.approx(fresh_value, rel=1e-10)
    assert result.value <= result.start_value

    # The energy design notes a run that ends farther from the reference than its start's (on the
    # fresh draws), exactly when the paired increase of E |x_N - x_ref|^2 exceeds two of its
    # standard errors.
    assert energy.improved
    with torch.no_grad():
        moved = ((sample("dpmpp-2m", score, fresh, energy.schedule).x - fresh_reference) ** 2).sum(-1) - (
            (sample("dpmpp-2m", score, fresh, baseline_schedule(energy.start, OU(), 8, "dpmpp-2m", 5.0, 1e-2)).x
             - fresh_reference) ** 2).sum(-1)
    farther = float(moved.mean()) > 2 * float(moved.std()) / math.sqrt(128)
    assert any("farther from the reference run" in note for note in energy.notes) == farther


def test_the_distance_note_fires_when_the_runs_move_away_from_the_reference():
    from scorehamiltonian.sampling.steps import _distance_note

    _, score = _narrow_and_wide_in_d8()
    x0, fine, reference = _reference_run(score, 128, 2, 40)
    coarse = baseline_schedule("edm", OU(), 4, "dpmpp-2m", 5.0, 1e-2)
    (note,) = _distance_note(score, coarse, fine, "dpmpp-2m", x0, reference, "t_min")  # 4 steps against 40
    assert "farther from the reference run" in note and "against 0," in note  # the start is the reference
    assert _distance_note(score, fine, coarse, "dpmpp-2m", x0, reference, "t_min") == ()
    assert _distance_note(score, coarse, coarse, "dpmpp-2m", x0, reference, "t_min") == ()  # no change: no note


def test_bad_input_is_refused(trimodal):
    with pytest.raises(ScheduleError):
        design_steps(trimodal, nfe=3, solver="heun", t_max=5.0, t_min=1e-3)  # one Heun step: nothing to design
    with pytest.raises(ScheduleError):
        design_steps(trimodal, nfe=1, solver="heun", t_max=5.0, t_min=1e-3)
    with pytest.raises(TimeRangeError):
        design_steps(trimodal, nfe=10, solver="heun", t_max=50.0, t_min=1e-3)  # OU's T is 10
    with pytest.raises(TimeRangeError):
        design_steps(trimodal, nfe=10, solver="heun", t_max=5.0, t_min=6.0)
    with pytest.raises(ValueError, match="ODE solvers"):
        design_steps(trimodal, nfe=10, solver="ancestral", t_max=5.0, t_min=1e-3)
    with pytest.raises(ValueError, match="d <= 2"):
        design_steps(_callable_score_in_d8(), nfe=10, solver="heun", t_max=5.0, t_min=1e-2, metric="tv")
    with pytest.raises(ValueError, match="process"):
        design_steps(example("trimodal"), nfe=10)
