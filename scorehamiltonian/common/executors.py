"""Running independent tasks of a sweep on an executor: serial, a process pool, or dask.

A sweep (the times of :func:`~scorehamiltonian.spectral.profiles.gap_profile`, the cases of a
benchmark, batches of energies) is a list of inputs and one pure function of an input.
:func:`map_tasks` runs it on any ``concurrent.futures.Executor``, hands the outcomes back
in input order (so the caller's bookkeeping, checkpoints included, is the same as in a
serial run) and turns an exception of one task into a :class:`TaskFailure` that names
its input, instead of ending the sweep.

Engines (:func:`executor_from`): ``None`` (serial, in this process), ``"dask"`` (a
``dask.distributed.LocalCluster`` of ``n_workers`` single-threaded worker processes, shut
down afterwards), a ``dask.distributed.Client`` (its executor: point the client at a real
cluster with ``Client("tcp://scheduler:8786")``, and every worker needs scorehamiltonian
installed), or any ``concurrent.futures.Executor`` (e.g. a ProcessPoolExecutor). The
function and its inputs must pickle for the parallel engines.

Bit-identical results: a task's output depends only on its input (seeds derive from the
input), so only the floating-point environment can differ between engines. Dask's worker
processes run with one BLAS/OpenMP thread; a serial run gives the same bits when torch
also uses one thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["TaskFailure", "executor_from", "map_tasks"]

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class TaskFailure:
    """An input whose task raised: the input, the exception's type name, message and traceback."""

    input: Any
    error: str
    message: str
    traceback: str

    def __str__(self) -> str:
        return f"task {self.input!r} failed: {self.error}: {self.message}"


def _failure(item: Any, err: BaseException) -> TaskFailure:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return TaskFailure(item, type(err).__name__, str(err), text)


@contextlib.contextmanager
def executor_from(engine: Any = None, n_workers: int = 2) -> Iterator[Executor | None]:
    """The executor for ``engine`` (module docstring); a cluster it starts is closed on exit.

    ``n_workers``: worker processes of the LocalCluster started for ``engine="dask"``.
    Raises ValueError for an unknown engine and ImportError (with the pip line) when dask
    is asked for but not installed.
    """
    if engine is None or isinstance(engine, Executor):
        yield engine
        return
    if engine == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:
            raise ImportError("engine='dask' needs dask.distributed: pip install 'dask[distributed]'") from err
        with LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client.get_executor()
        return
    get_executor = getattr(engine, "get_executor", None)
    if callable(get_executor):
        yield get_executor()
        return
    raise ValueError(f"executor must be None, 'dask', a dask Client or a concurrent.futures.Executor; "
                     f"got {engine!r}")


def map_tasks(function: Callable[[In], Out], items: Sequence[In] | Iterable[In],
              executor: Executor | None = None) -> Iterator[tuple[In, Out | TaskFailure]]:
    """(item, function(item) or its :class:`TaskFailure`) for every item, in input order.

    With an executor all items are submitted at once and each outcome is yielded as soon as
    it and all earlier ones are done; without one they run here, one after another. A task
    that raises (or whose worker dies) yields a TaskFailure; KeyboardInterrupt propagates.
    """
    items = list(items)
    if executor is None:
        for item in items:
            try:
                yield item, function(item)
            except Exception as err:  # noqa: BLE001 - one failed task must not end the sweep
                yield item, _failure(item, err)
        return
    futures = [executor.submit(function, item) for item in items]
    try:
        for item, future in zip(items, futures):
            try:
                yield item, future.result()
            except Exception as err:  # noqa: BLE001 - as above, including a lost worker
                yield item, _failure(item, err)
    finally:
        for future in futures:
            future.cancel()
