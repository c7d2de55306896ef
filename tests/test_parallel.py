"""Sweeps on executors (serial, threads, dask) and checkpoints that cannot be written."""

from __future__ import annotations

import errno
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import scorehamiltonian._io as io_module
from scorehamiltonian import OU, ExactScore, GaussianMixture
from scorehamiltonian.errors import OutputError
from scorehamiltonian.parallel import TaskFailure, executor_from, map_tasks
from scorehamiltonian.profiles import GapProfile, gap_profile

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
    from scorehamiltonian import profiles

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
