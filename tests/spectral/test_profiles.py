"""gap_profile and adiabatic_speed: exact references, reproducibility, kill-and-resume."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import scorehamiltonian
import scorehamiltonian.spectral.profiles as gap_profile_module
from scorehamiltonian import EDM, OU, VE, CheckpointError, ExactScore, GaussianMixture, VPLinear, as_score
from scorehamiltonian.common.errors import SamplesRequiredError
from scorehamiltonian.common.seeds import seeded_rng, time_seed
from scorehamiltonian.spectral.gap import spectral_gap
from scorehamiltonian.spectral.grid import box_from_mixture
from scorehamiltonian.spectral.profiles import GapProfile, gap_profile
from scorehamiltonian.spectral.solution import ConvergenceWarning
from scorehamiltonian.spectral.speed import adiabatic_speed

matplotlib.use("Agg")

BIMODAL = ([0.5, 0.5], [-2.0, 2.0], [0.25, 0.25])
#: The adaptive sweep shared by several tests (and rerun in a subprocess for kill-and-resume).
ADAPTIVE = {
    "t_range": (0.05, 3.0), "n_initial": 4, "max_solves": 8, "rtol": 1e-4, "n_samples": 4000, "progress": False,
}


@pytest.fixture(scope="module")
def bimodal() -> ExactScore:
    return ExactScore(GaussianMixture(*BIMODAL), OU())


@pytest.fixture(scope="module")
def adaptive(bimodal) -> GapProfile:
    return gap_profile(bimodal, **ADAPTIVE)


def _same(a: GapProfile, b: GapProfile) -> None:
    """Field by field identity (NaN equal to NaN)."""
    for name in gap_profile_module._ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert a.failures == b.failures
    assert a.settings == b.settings


# --------------------------------------------------------------------------- adiabatic speed


def _gaussian_speed(process, mean: torch.Tensor, cov: torch.Tensor, t: float) -> float:
    """Closed form for p_t = N(m_t, C_t), m_t = alpha m, C_t = alpha^2 S + sigma^2 I.

    With y = x - m_t, d/dt log p = -tr(C^-1 C')/2 + y.C^-1 m' + y.C^-1 C' C^-1 y / 2; in
    u = C^{-1/2} y ~ N(0, I) that is u.M u / 2 - tr M / 2 + b.u with M = C^{-1/2} C' C^{-1/2},
    b = C^{-1/2} m', so E[(d/dt log p)^2] = Var(u.M u) / 4 + |b|^2 = tr(M^2) / 2 + m'.C^-1 m'.
    """
    a, da = float(process.alpha(t)), float(process.dalpha(t))
    s, ds = float(process.sigma(t)), float(process.dsigma(t))
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    c = a**2 * cov + s**2 * eye
    dc = 2 * a * da * cov + 2 * s * ds * eye
    dm = da * mean
    k = torch.linalg.solve(c, dc)
    second = 0.5 * torch.trace(k @ k) + dm @ torch.linalg.solve(c, dm)
    return 0.5 * math.sqrt(float(second))


GAUSS_MEAN = torch.tensor([0.7, -0.4], dtype=torch.float64)
GAUSS_COV = torch.tensor([[0.5, 0.2], [0.2, 1.2]], dtype=torch.float64)


@pytest.mark.parametrize("process", [OU(), VPLinear(), VE(sigma_min=0.01, sigma_max=20.0), EDM(sigma_max=40.0)],
                         ids=lambda p: type(p).__name__)
def test_gaussian_speed_matches_closed_form_within_its_stderr(process):
    score = ExactScore(GaussianMixture([1.0], GAUSS_MEAN[None], GAUSS_COV[None]), process)
    t = 0.3 * process.t_max
    want = _gaussian_speed(process, GAUSS_MEAN, GAUSS_COV, t)
    got = adiabatic_speed(score, t, n_samples=40000, generator=torch.Generator().manual_seed(1))
    assert got.divergence_method == "exact"
    assert abs(got.value - want) <= 4 * got.stderr, (got, want)
    assert got.stderr <= 0.05 * want
    assert abs(got.mean) <= 4 * got.mean_stderr


def test_speed_stderr_is_calibrated_over_seeds():
    process = OU()
    score = ExactScore(GaussianMixture([1.0], GAUSS_MEAN[None], GAUSS_COV[None]), process)
    want = _gaussian_speed(process, GAUSS_MEAN, GAUSS_COV, 0.2)
    z, zm = [], []
    for seed in range(60):
        got = adiabatic_speed(score, 0.2, n_samples=3000, generator=torch.Generator().manual_seed(seed))
        z.append((got.value - want) / got.stderr)
        zm.append(got.mean / got.mean_stderr)
    for scores in (np.array(z), np.array(zm)):
        assert abs(scores.mean()) < 0.5 and 0.7 < scores.std() < 1.3, scores


def _speed_by_quadrature(score: ExactScore, t: float) -> tuple[float, float]:
    """(A from central differences in t of sqrt(p_t), A from the score formula), both by
    trapezoidal quadrature on a fine grid covering all but 1e-14 of the mass."""
    lo, hi = box_from_mixture(score.marginal(t), 1e-14)
    x = torch.linspace(lo[0] - 1.0, hi[0] + 1.0, 40001, dtype=torch.float64)[:, None]
    dx = float(x[1, 0] - x[0, 0])
    h = 1e-4 * min(t, 1.0)
    root = [torch.exp(0.5 * score.log_prob(x, tt)) for tt in (t - h, t + h)]
    d_root = (root[1] - root[0]) / (2 * h)
    fd = math.sqrt(float(torch.trapezoid(d_root**2, dx=dx)))
    ev = score.evaluate(x, t)
    s, div = ev.score[:, 0], ev.divergence
    q = 1.0 + x[:, 0] * s + (div + s**2)  # OU: f = -1, g^2 = 2, d = 1
    formula = 0.5 * math.sqrt(float(torch.trapezoid(torch.exp(ev.log_prob) * q**2, dx=dx)))
    return fd, formula


@pytest.mark.parametrize("t", [0.05, 0.5, 2.0])
def test_mixture_speed_against_finite_differences_of_the_ground_state(t):
    score = ExactScore(GaussianMixture([0.3, 0.7], [-2.0, 1.5], [0.16, 0.36]), OU())
    fd, formula = _speed_by_quadrature(score, t)
    assert abs(fd - formula) <= 1e-7 * fd  # the Fokker-Planck formula itself
    got = adiabatic_speed(score, t, n_samples=40000, generator=torch.Generator().manual_seed(2))
    assert abs(got.value - fd) <= 4 * got.stderr, (got, fd)
    assert got.stderr <= 0.02 * fd
    assert abs(got.mean) <= 4 * got.mean_stderr


def test_speed_of_a_learned_style_score_needs_samples_and_agrees():
    exact = ExactScore(GaussianMixture([0.3, 0.7], [-2.0, 1.5], [0.16, 0.36]), OU())
    opaque = as_score(lambda x, t: exact(x, t), dim=1)
    with pytest.raises(SamplesRequiredError, match="samples"):
        adiabatic_speed(opaque, 0.5)
    x = exact.marginal(0.5).sample(5000, torch.Generator().manual_seed(3))
    want = adiabatic_speed(exact, 0.5, samples=x)
    for method in ("autograd", "fd", "hutchinson"):  # 1D Hutchinson is exact: v^2 = 1
        got = adiabatic_speed(opaque, 0.5, samples=x, divergence=method)
        assert got.divergence_method == method
        assert abs(got.value - want.value) <= 1e-6 * want.value
        assert abs(got.stderr - want.stderr) <= 1e-5 * want.stderr


# --------------------------------------------------------------------------- gap_profile


def test_explicit_times_match_individual_calls_exactly(bimodal):
    times = [0.3, 0.05, 2.0]
    prof = gap_profile(bimodal, times=times, rtol=1e-4, n_samples=4000, progress=False)
    assert prof.times.tolist() == sorted(times)
    assert prof.solve_order.tolist() == [1, 0, 2]
    assert prof.failures == () and prof.converged.all()
    for i, t in enumerate(prof.times):
        with seeded_rng(time_seed(0, t)):
            ref = spectral_gap(bimodal, t, rtol=1e-4, k=3)
        assert prof.gap[i] == ref.value and prof.gap_error[i] == ref.error
        assert prof.eigenvalues[i].tolist() == ref.eigenvalues.tolist()
        assert (prof.lambda0[i], prof.lambda1[i]) == tuple(ref.eigenvalues[:2].tolist())
        speed = adiabatic_speed(bimodal, t, n_samples=4000, generator=torch.Generator().manual_seed(time_seed(0, t)))
        assert (prof.speed[i], prof.speed_stderr[i]) == (speed.value, speed.stderr)
        assert (prof.speed_mean[i], prof.speed_mean_stderr[i]) == (speed.mean, speed.mean_stderr)
    # The band runs over [min, max] of the times and contains them; the GP interpolates.
    assert np.isin(prof.times, prof.band_times).all()
    at = np.searchsorted(prof.band_times, prof.times)
    assert np.allclose(prof.band_log_gap_mean[at], np.log(prof.gap), atol=1e-3)


def test_per_time_failures_are_recorded(bimodal):
    options = {"max_unknowns": 100, "raise_on_failure": True}  # one grid only: never converged
    with pytest.warns(ConvergenceWarning, match="2 failures"):
        prof = gap_profile(bimodal, times=[0.1, 1.0], n_samples=1000, progress=False, gap_options=options)
    assert [t for t, _ in prof.failures] == [0.1, 1.0]
    assert all(msg.startswith("spectral_gap: ConvergenceError") for _, msg in prof.failures)
    assert np.isnan(prof.gap).all() and not prof.converged.any()
    assert np.isfinite(prof.speed).all()  # the other part still ran
    assert isinstance(prof.plot(), Figure)


def test_bad_arguments_are_refused(bimodal):
    with pytest.raises(ValueError, match="either times or t_range"):
        gap_profile(bimodal, times=[0.1], t_range=(0.1, 1.0), progress=False)
    with pytest.raises(ValueError, match="gap_options must not set"):
        gap_profile(bimodal, times=[0.1], gap_options={"rtol": 1e-3}, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        gap_profile(bimodal, times=[0.1, 0.1], progress=False)
    with pytest.raises(SamplesRequiredError):
        gap_profile(as_score(lambda x, t: bimodal(x, t), dim=1), times=[0.1], progress=False)


def test_adaptive_times_and_band(adaptive):
    lo, hi = ADAPTIVE["t_range"]
    t = adaptive.times
    assert len(t) == ADAPTIVE["max_solves"] and np.unique(t).size == len(t)
    assert ((t >= lo) & (t <= hi)).all() and t[0] == lo and t[-1] == pytest.approx(hi, rel=1e-14)
    assert adaptive.converged.all() and adaptive.failures == ()
    chosen = adaptive.solve_order >= ADAPTIVE["n_initial"]
    assert chosen.sum() == ADAPTIVE["max_solves"] - ADAPTIVE["n_initial"]
    assert np.isnan(adaptive.proposal_gap_std[~chosen]).all()
    at = np.searchsorted(adaptive.band_times, t)
    assert np.array_equal(adaptive.band_times[at], t)  # every solved time is a band node
    # The band shrank where points were added ...
    before = np.fmax(adaptive.proposal_gap_std, adaptive.proposal_speed_std)[chosen]
    after = np.fmax(adaptive.band_log_gap_std, adaptive.band_log_speed_std)[at][chosen]
    assert (after < 0.5 * before).all(), (before, after)
    assert (adaptive.band_log_gap_std[at] < adaptive.proposal_gap_std)[chosen].all()
    # ... the gap GP interpolates log lambda_1 (tiny relative errors) and the speed GP stays
    # within its Monte Carlo noise.
    assert np.abs(adaptive.band_log_gap_mean[at] - np.log(adaptive.gap)).max() < 1e-3
    assert adaptive.band_log_gap_std[at].max() < 1e-3
    rel = adaptive.speed_stderr / adaptive.speed
    assert (np.abs(adaptive.band_log_speed_mean[at] - np.log(adaptive.speed)) < 4 * rel).all()
    # The speed's mass-conservation check holds at every time.
    assert (np.abs(adaptive.speed_mean) <= 4 * adaptive.speed_mean_stderr).all()


def _n_records(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["records"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_kill_and_resume_gives_the_identical_result(bimodal, adaptive, tmp_path, monkeypatch):
    checkpoint = tmp_path / "sweep.json"
    # The child pauses 0.3 s after each checkpoint write, so that a busy machine cannot let
    # it run to the end before the parent sees the file.
    script = (
        "import time, torch\n"
        "torch.set_num_threads(1)\n"
        "from scorehamiltonian import ExactScore, GaussianMixture, OU\n"
        "import scorehamiltonian.spectral.profiles as m\n"
        "write = m.write_json\n"
        "m.write_json = lambda path, data: (write(path, data), time.sleep(0.3))\n"
        "from scorehamiltonian.spectral.profiles import gap_profile\n"
        f"gap_profile(ExactScore(GaussianMixture(*{BIMODAL!r}), OU()), checkpoint={str(checkpoint)!r}, "
        f"**{ADAPTIVE!r})\n"
    )
    root = str(Path(scorehamiltonian.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        # Kill once the sweep is past its initial times (so a GP-chosen time came from the child).
        while _n_records(checkpoint) <= ADAPTIVE["n_initial"]:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the sweep wrote no checkpoint in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = json.loads(checkpoint.read_text())["records"]
    assert ADAPTIVE["n_initial"] < len(written) < ADAPTIVE["max_solves"]

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1])
        return spectral_gap(*args, **kwargs)

    monkeypatch.setattr(gap_profile_module, "spectral_gap", counted)
    resumed = gap_profile(bimodal, checkpoint=checkpoint, **ADAPTIVE)
    assert len(calls) == ADAPTIVE["max_solves"] - len(written)
    assert json.loads(checkpoint.read_text())["records"][: len(written)] == written
    _same(resumed, adaptive)
    # A finished checkpoint solves nothing more.
    calls.clear()
    _same(gap_profile(bimodal, checkpoint=checkpoint, **ADAPTIVE), adaptive)
    assert calls == []
    # Different settings refuse to mix, naming what differs.
    with pytest.raises(CheckpointError, match=r"different settings \(differing: rtol, seed\)"):
        gap_profile(bimodal, checkpoint=checkpoint, **{**ADAPTIVE, "rtol": 1e-5}, seed=1)
    other = ExactScore(GaussianMixture([0.4, 0.6], [-2.0, 2.0], [0.25, 0.25]), OU())
    with pytest.raises(CheckpointError, match="differing: score"):
        gap_profile(other, checkpoint=checkpoint, **ADAPTIVE)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a"):
        gap_profile(bimodal, checkpoint=tmp_path / "other.json", **ADAPTIVE)


def test_save_load_round_trip_and_plot(adaptive, tmp_path):
    path = tmp_path / "profile.json"
    adaptive.save(path)
    _same(GapProfile.load(path), adaptive)
    with pytest.raises(CheckpointError):
        GapProfile.load(tmp_path / "missing.json")
    fig = adaptive.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    fig.savefig(io.BytesIO(), format="png")
    ax = Figure().subplots()
    assert adaptive.plot(ax) is ax.figure and len(ax.figure.axes) == 2


def test_the_ritz_route_profiles_a_score_in_high_dimension():
    """A 5-d Gaussian (gap 1 / nu_max(t) exactly): route "auto" takes ritz_gap above d = 3; with the
    linear basis every gap is within 4 standard errors of the exact one, lambda_0 is 0 and the
    sweep is flagged converged."""
    variances = torch.tensor([3.0, 1.0, 0.5, 0.5, 0.2], dtype=torch.float64)
    score = ExactScore(GaussianMixture([1.0], torch.zeros(1, 5, dtype=torch.float64), variances[None]), OU())
    times = [0.1, 1.0]
    profile = gap_profile(score, times=times, n_samples=6000, progress=False, k=3,
                          gap_options={"basis": "polynomial", "degree": 1})
    assert profile.settings["route"] == "ritz" and profile.converged.all()
    exact = [1.0 / (math.exp(-2 * t) * 3.0 - math.expm1(-2 * t)) for t in times]
    assert np.all(np.abs(profile.gap - exact) < 4 * profile.gap_error)
    assert np.all(profile.lambda0 == 0.0) and np.all(np.isfinite(profile.speed))


def test_the_sweep_does_not_return_to_a_gap_it_cannot_resolve():
    """A Ritz gap at the smallest time lies within its error of 0 (-0.02 +- 0.025): with the
    other four times resolved and A known to 1 %, the next time is not put beside it (before,
    the GP of log gap, blind there, sent three of eight solves to t = 0.010 - 0.011)."""
    times = np.geomspace(0.01, 5.0, 5)
    gaps = [-0.02, 0.3, 0.8, 1.0, 1.0]
    records = [{"t": float(t), "gap": g, "gap_error": 0.025, "gap_model_error": 0.002,
                "speed": 20.0 / (1 + t) ** 2, "speed_stderr": 0.2 / (1 + t) ** 2} for t, g in zip(times, gaps)]
    band = np.geomspace(0.01, 5.0, 200)
    t_next, _, _ = gap_profile_module._propose(records, band, {"kernel": "matern52", "band_tol": 0.05})
    assert np.abs(np.log(t_next) - np.log(times)).argmin() != 0, t_next
    records[0]["gap"] = 0.05  # resolved: then the gap's GP is blind below the second time and goes there
    t_next, _, _ = gap_profile_module._propose(records, band, {"kernel": "matern52", "band_tol": 0.05})
    assert np.abs(np.log(t_next) - np.log(times)).argmin() == 0, t_next
