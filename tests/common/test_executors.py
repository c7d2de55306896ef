"""Sweeps on executors (serial, threads, dask) and checkpoints that cannot be written."""

from __future__ import annotations

import errno
import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import scorehamiltonian.common.files as io_module
from scorehamiltonian import OU, ExactScore, GaussianMixture
from scorehamiltonian.common.errors import OutputError
from scorehamiltonian.common.executors import TaskFailure, executor_from, map_tasks
from scorehamiltonian.spectral.profiles import GapProfile, gap_profile

SWEEP = {"times": [0.05, 0.4, 2.0], "rtol": 1e-4, "n_samples": 2000, "progress": False}


@pytest.fixture(scope="module")
def bimodal() -> ExactScore:
    return ExactScore(GaussianMixture([0.5, 0.5], [-2.0, 2.0], [0.25, 0.25]), OU())


def _fragile(x: int) -> int:
    if x == 3:
        raise ArithmeticError("three is not allowed")
    return x * x


@pytest.mark.parametrize("pool", [None, "threads"])
def test_map_tasks_keeps_order_and_reports_failures_with_their_input(pool):
    executor = ThreadPoolExecutor(2) if pool else None
    with executor_from(executor) as ex:
        out = list(map_tasks(_fragile, range(6), ex))
    assert [item for item, _ in out] == list(range(6))
    assert [r for _, r in out if not isinstance(r, TaskFailure)] == [0, 1, 4, 16, 25]
    failure = out[3][1]
    assert isinstance(failure, TaskFailure) and failure.input == 3
    assert failure.error == "ArithmeticError" and "three is not allowed" in str(failure)
    assert "_fragile" in failure.traceback
    if executor:
        executor.shutdown()


def test_unknown_engines_are_refused():
    with pytest.raises(ValueError, match="executor must be"), executor_from("spark"):
        pass


def _same_bits(a: GapProfile, b: GapProfile) -> None:
    for name in ("times", "eigenvalues", "gap", "gap_error", "speed", "speed_stderr", "speed_mean"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.tobytes() == y.tobytes(), name
    assert a.failures == b.failures == ()


def test_dask_local_cluster_sweep_matches_the_serial_one_bit_for_bit(bimodal, tmp_path):
    pytest.importorskip("distributed")
    serial = gap_profile(bimodal, **SWEEP)
    parallel = gap_profile(bimodal, executor="dask", n_workers=2, checkpoint=tmp_path / "sweep.json", **SWEEP)
    _same_bits(parallel, serial)
    assert serial.converged.all()
    # The checkpoint holds the records in the planned order, so a rerun resumes with no work.
    records = json.loads((tmp_path / "sweep.json").read_text())["records"]
    assert [r["t"] for r in records] == SWEEP["times"]


def test_an_unwritable_checkpoint_folder_fails_before_any_work(bimodal, tmp_path, monkeypatch):
    from scorehamiltonian.spectral import profiles

    calls = []
    monkeypatch.setattr(profiles, "_solve", lambda *args: calls.append(args) or {})
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write .*a_file/sweep.json"):
        gap_profile(bimodal, checkpoint=blocker / "sweep.json", **SWEEP)
    assert calls == []


def test_a_full_disk_mid_sweep_loses_nothing(bimodal, tmp_path, monkeypatch):
    checkpoint = tmp_path / "sweep.json"
    real = io_module.atomic_write
    writes = []

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    def filling(path, write):
        writes.append(path)
        real(path, full if len(writes) == 3 else write)  # the start, the first time, then full

    monkeypatch.setattr(io_module, "atomic_write", filling)
    with pytest.raises(OutputError, match="No space left on device.*2 times solved so far") as caught:
        gap_profile(bimodal, checkpoint=checkpoint, **SWEEP)
    partial = caught.value.profile
    assert partial.times.tolist() == SWEEP["times"][:2]
    assert [r["t"] for r in json.loads(checkpoint.read_text())["records"]] == SWEEP["times"][:1]
    assert list(tmp_path.iterdir()) == [checkpoint]  # no temporary file left behind
    monkeypatch.setattr(io_module, "atomic_write", real)
    resumed = gap_profile(bimodal, checkpoint=checkpoint, **SWEEP)
    assert np.array_equal(resumed.gap[:2], partial.gap)


@pytest.mark.slow  # 12 s: a dask cluster; the sweep test above covers dask in the default run
def test_batched_energies_on_dask_match_the_serial_batches_bit_for_bit():
    """Energies in batches of rows on a dask LocalCluster equal the same batches run serially,
    to the last bit, Hutchinson probes included (seeded per batch from one generator draw);
    and the batched values agree with one unbatched call within their errors."""
    pytest.importorskip("distributed")
    from scorehamiltonian import energy, example
    from scorehamiltonian.thermo.energy import default_schedule

    score = ExactScore(example("asymmetric"), OU())
    x = score.mixture.sample(7, torch.Generator().manual_seed(0))
    options = {"divergence": "hutchinson", "n_probes": 4, "batch_size": 3, "schedule": default_schedule(score.process, 32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = energy(score, None, x, generator=torch.Generator().manual_seed(1), **options)
        parallel = energy(score, None, x, executor="dask", n_workers=2, generator=torch.Generator().manual_seed(1),
                          **options)
        whole = energy(score, None, x, schedule=options["schedule"])
    for name in ("value", "error", "divergence_error", "converged", "x_T"):
        assert torch.equal(getattr(parallel, name), getattr(serial, name)), name
    assert parallel.failures == () and parallel.nfe == whole.nfe
    assert bool(((parallel.value - whole.value).abs() <= parallel.error + whole.error).all())


def test_a_failed_energy_batch_is_reported_with_its_rows_and_the_rest_kept():
    """A score that returns NaN beyond x = 3 fails the batch holding such a row: its rows are
    NaN with an infinite error, ``failures`` names them, a warning says so, and the other
    batches equal an unbatched run on their rows. Every batch failing raises."""
    from scorehamiltonian import ScoreHamiltonianError, as_score, energy, example

    exact = ExactScore(example("bimodal"), OU())

    def fragile(x, t):
        s = exact(x, t)
        return torch.where(x > 3.0, torch.nan, s)

    score = as_score(fragile, process=OU(), dim=1)
    x = torch.tensor([[-1.0], [0.5], [1.0], [3.5], [0.0], [2.0]], dtype=torch.float64)
    with ThreadPoolExecutor(2) as pool, pytest.warns(RuntimeWarning, match="1 of 3 batches failed"):
        res = energy(score, None, x, executor=pool, batch_size=2, closure=False)
    assert res.failures[0][:2] == (2, 4) and "NonFiniteScoreError" in res.failures[0][2]
    assert torch.isnan(res.value[2:4]).all() and torch.isinf(res.error[2:4]).all() and not res.converged[2:4].any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rest = energy(score, None, x[[0, 1, 4, 5]], closure=False)
    assert torch.equal(res.value[[0, 1, 4, 5]], rest.value)
    with pytest.raises(ScoreHamiltonianError, match="every batch failed"):
        energy(score, None, x[3:4], executor=ThreadPoolExecutor(1), batch_size=1, closure=False)
